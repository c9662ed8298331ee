"""``fedsim data download``: fetch a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim.data import download


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim data`` and its one subcommand, ``download``."""
    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch a dataset (needs internet)")
    dl.add_argument("name")
    dl.add_argument("--root", required=True, type=Path)


def command(args: argparse.Namespace) -> int:
    """Download the dataset, say where it is."""
    print(f"{args.name} is in {download(args.name, args.root)}")
    return 0
