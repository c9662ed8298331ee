"""The ``fedsim`` command line.

    fedsim run CONFIG [key=value ...] [--run-dir DIR] [--address ADDR]
               [--backend ray|local]
    fedsim run --resume RUN_DIR [key=value ...]
    fedsim params CONFIG [key=value ...] [--json]
    fedsim data download NAME --root DIR
    fedsim report RUN_DIR [RUN_DIR ...] --out DIR [--target 0.8]
               [--metric auto|global|personal] [--uplink-mbps X --downlink-mbps Y]
    fedsim compare CONFIG [key=value ...] [--variants original,lowrank,fedpara]
               [--max-concurrent N] [--out DIR] [--target 0.8] [--backend ray|local]
               [--address ADDR] [--uplink-mbps X --downlink-mbps Y]
    fedsim sweep CONFIG [key=value ...] --grid KEY=V1,V2 [KEY=V1,V2 ...]
               [--max-concurrent N] [--out DIR] [--target 0.8] [--backend ray|local]
               [--address ADDR] [--run-dir DIR ...]
    fedsim sweep CONFIG [key=value ...] --grid KEY=V1,V2 [...] --submit
               [--address http://HEAD:8265] [--no-wait] [--max-concurrent N]
               [--out /ABSOLUTE/DIR] [--target 0.8]
    fedsim submit CONFIG [key=value ...] --address http://HEAD:8265
    fedsim status|logs|stop JOB_ID --address http://HEAD:8265

Config and data mistakes (and a model that cannot take the data) exit with code 2
before Ray or torch start; ``key=value`` overrides may come anywhere on the line.

One module per command group: :mod:`~fedsim.cli.run` (run, resume),
:mod:`~fedsim.cli.params`, :mod:`~fedsim.cli.data` (download),
:mod:`~fedsim.cli.report`, :mod:`~fedsim.cli.sweep` (compare, sweep) and
:mod:`~fedsim.cli.jobs` (submit, status, logs, stop); what they share is in
:mod:`~fedsim.cli.common`. None imports torch or Ray at import time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from fedsim.backend.cluster import ClusterError
from fedsim.cli import data, jobs, params, report, run, sweep
from fedsim.cli.common import EXIT_USAGE, is_override
from fedsim.config import ConfigError
from fedsim.data import DataError
from fedsim.loop import RunStopped
from fedsim.rundir import INPUT_ERRNOS, os_problem

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run.command,
    "params": params.command,
    "data": data.command,
    "report": report.command,
    "compare": sweep.compare,
    "sweep": sweep.sweep,
    "submit": jobs.submit,
    "status": jobs.job_command,
    "logs": jobs.job_command,
    "stop": jobs.job_command,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedsim",
        description="Federated learning with FedPara models on Ray or in one "
        "process: run experiments, count a model's parameters and bytes, compare "
        "runs, and submit runs as Ray jobs.",
        epilog="key=value overrides (values parsed as YAML) may come before or "
        "after the options of run, params, compare and submit.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    params.add_parser(sub)
    data.add_parser(sub)
    report.add_parser(sub)
    sweep.add_parsers(sub)
    jobs.add_parsers(sub)
    return p


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides before or after options.

    argparse fills the ``overrides`` positional only up to the first option, so
    ``fedsim run CFG --backend local rounds=3`` leaves ``rounds=3`` over; such
    words are appended to ``overrides`` in command-line order. Anything else left
    over (an unknown ``--flag``, a stray word) is still a usage error, exit 2.
    """
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    late = [a for a in extras if takes_overrides and is_override(a)]
    unknown = [a for a in extras if not (takes_overrides and is_override(a))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = [*(args.overrides or []), *late]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedsim`` console script."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunStopped as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a path or the disk, in plain words
        print(f"fedsim: error: {os_problem(exc, '')}", file=sys.stderr)
        return EXIT_USAGE if exc.errno in INPUT_ERRNOS else 1
    except KeyboardInterrupt:  # a second Ctrl-C, during start-up or teardown
        print("fedsim: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
