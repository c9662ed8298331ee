"""``fedsim params``: parameters and bytes of a config's model."""

from __future__ import annotations

import argparse
import json

from fedsim.cli.common import add_config_arguments
from fedsim.config import load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim params``."""
    params = sub.add_parser("params", help="parameters and bytes of a config's model")
    add_config_arguments(params)
    params.add_argument("--json", action="store_true", help="print one JSON object")


def command(args: argparse.Namespace) -> int:
    """Print the model report (see :mod:`fedsim.params_report`)."""
    from fedsim.params_report import format_report, model_report

    report = model_report(load_config(args.config, args.overrides))
    print(json.dumps(report) if args.json else format_report(report))
    return 0
