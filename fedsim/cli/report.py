"""``fedsim report``: tables and figures of finished (or running) runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim.cli.common import add_link_options, add_target_option, print_report


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim report``."""
    rep = sub.add_parser(
        "report", help="compare runs: accuracy against GB sent, tables and figures"
    )
    rep.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="runs/NAME/TIME"
    )
    rep.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="write report.md, report.csv and accuracy_vs_{gb,rounds}.{png,svg} here",
    )
    add_target_option(rep)
    rep.add_argument(
        "--metric",
        choices=["auto", "global", "personal"],
        default="auto",
        help="score runs on the global model's accuracy, the clients' own "
        "models' (personal) accuracy, or auto: global where a run has it",
    )
    add_link_options(rep)


def command(args: argparse.Namespace) -> int:
    """Write the report (see :mod:`fedsim.report`), print it."""
    from fedsim.report import make_link, write_report

    link = make_link(args.uplink_mbps, args.downlink_mbps)
    print_report(write_report(args.run_dirs, args.out, args.target, link, args.metric))
    return 0
