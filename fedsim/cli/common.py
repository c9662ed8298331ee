"""What several commands share: option groups and what they print.

Torch-free, like every module of :mod:`fedsim.cli`: heavy modules are imported
inside the commands that need them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.config import Config
from fedsim.launch import BackendName
from fedsim.loop import RunResult
from fedsim.quote import quoted

if TYPE_CHECKING:
    from fedsim.report import ReportOutput

EXIT_USAGE = 2
OVERRIDES_HELP = "overrides such as rounds=3 (YAML values), before or after options"
ADDRESS_HELP = "Ray cluster to join (default: RAY_ADDRESS or a local one)"


def is_override(token: str) -> bool:
    """Whether a command-line word is a ``key=value`` override (not an option).

    >>> is_override("rounds=3"), is_override("--out=x"), is_override("cfg.yaml")
    (True, False, False)
    """
    return "=" in token and not token.startswith("-")


def add_config_arguments(
    p: argparse.ArgumentParser, config_help: str | None = None
) -> None:
    """The config file and its ``key=value`` overrides."""
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def add_run_set_options(
    p: argparse.ArgumentParser, address_help: str = ADDRESS_HELP
) -> None:
    """Options of the commands that run several experiments and report them."""
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        metavar="N",
        help="runs at once on Ray (the cluster's client slots are shared among "
        "them); in-process runs go one after another (default 2)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the report goes (default reports/NAME)",
    )
    add_target_option(p)
    p.add_argument(
        "--backend",
        choices=["ray", "local"],
        default="ray",
        help="'ray' (default): each run on a pool of Ray actors; 'local': in this "
        "process, without Ray",
    )
    p.add_argument("--address", help=address_help)


def add_target_option(p: argparse.ArgumentParser) -> None:
    """``--target``: the accuracy of the report's 'GB to target'."""
    p.add_argument(
        "--target",
        type=float,
        default=0.8,
        metavar="ACC",
        help="accuracy for 'GB to target' (default 0.8)",
    )


def add_link_options(p: argparse.ArgumentParser) -> None:
    """``--uplink-mbps`` and ``--downlink-mbps``: a simulated client link."""
    p.add_argument(
        "--uplink-mbps",
        type=float,
        metavar="X",
        help="simulated client uplink in Mbit/s (with --downlink-mbps): link seconds",
    )
    p.add_argument(
        "--downlink-mbps",
        type=float,
        metavar="Y",
        help="simulated client downlink in Mbit/s (with --uplink-mbps)",
    )


def backend_of(args: argparse.Namespace) -> BackendName:
    """``--backend`` (argparse allows only these two), as the launch layer names it."""
    return "local" if args.backend == "local" else "ray"


def print_report(report: ReportOutput) -> None:
    """The report's markdown table, then every file it wrote."""
    print(report.markdown)
    print("\n".join(f"wrote {path}" for path in report.paths))


def summary_paragraph(cfg: Config, result: RunResult) -> str:
    """What a finished run prints: accuracies, traffic, where its files are."""
    s = result.summary
    reached = []
    if s.final_accuracy is not None:
        reached.append(
            f"a final {s.global_view} accuracy of {s.final_accuracy:.4f} "
            f"(best {s.best_accuracy:.4f})"
        )
    if s.final_personal_accuracy is not None:
        reached.append(
            f"a final personal accuracy of {s.final_personal_accuracy:.4f} "
            f"(best {s.best_personal_accuracy:.4f})"
        )
    if s.scored_on == "personal":  # the accuracy it is compared on comes first
        reached.reverse()
    rounds = f"{s.rounds} round{'s' if s.rounds != 1 else ''}"
    return (
        f"\n{cfg.name}: {rounds} of {cfg.server.clients_per_round} clients "
        f"({cfg.model.param} {cfg.model.arch}, {cfg.server.strategy}, "
        f"{s.num_params_travelling:,} parameters travelling) reached "
        f"{' and '.join(reached) or 'no evaluation'} after "
        f"{s.total_bytes / 1e9:.4f} GB of traffic in {s.wall_seconds:.1f} s.\n"
        f"run directory: {quoted(result.run_dir)}\n"
        f"TensorBoard:   tensorboard --logdir {quoted(result.run_dir / 'tb')} "
        "--host 127.0.0.1"
    )
