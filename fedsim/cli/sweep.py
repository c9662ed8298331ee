"""``fedsim compare`` and ``fedsim sweep``: several runs of one config, one report.

Both expand the config into a list of runs (:mod:`fedsim.compare`'s variants,
one axis; :mod:`fedsim.sweep`'s grid, any number) and hand it to
:func:`run_all`: one engine, :func:`fedsim.sweep.run_sweep`, runs them (several
at once on Ray, sharing the cluster's client slots; stopped resumably by
SIGINT/SIGTERM), then every summary and the report are printed.
``fedsim sweep --submit`` runs the same as one Ray job.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.cli.common import (
    ADDRESS_HELP,
    add_config_arguments,
    add_link_options,
    add_run_set_options,
    backend_of,
    print_report,
    summary_paragraph,
)
from fedsim.cli.jobs import follow_submitted, job_config
from fedsim.compare import DEFAULT_VARIANTS, ENCODINGS, PARAM_VARIANTS
from fedsim.config import Config, ConfigError, load_config
from fedsim.data import check_available
from fedsim.launch import ray_cluster, resolve_paths
from fedsim.model import check_model_fits
from fedsim.quote import quoted
from fedsim.registry import STRATEGIES

if TYPE_CHECKING:
    from fedsim.report import Link

CONFIG_HELP = "YAML config (see configs/)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim compare``, then ``fedsim sweep``."""
    cmp = sub.add_parser(
        "compare",
        help="run variants of one config (same seed, same partition; several at "
        "once on Ray), then report",
    )
    add_config_arguments(cmp, CONFIG_HELP)
    cmp.add_argument(
        "--variants",
        default="original,lowrank,fedpara",
        metavar="A,B,...",
        help="comma-separated: "
        f"{', '.join(PARAM_VARIANTS)} (model.param), each also as PARAM+ENCODING "
        f"with ENCODING one of {', '.join(ENCODINGS)} (comm.*, e.g. fedpara+int8); "
        f"{', '.join(STRATEGIES)} (server.strategy); "
        f"default {','.join(DEFAULT_VARIANTS)}",
    )
    add_run_set_options(cmp)
    add_link_options(cmp)

    swp = sub.add_parser(
        "sweep",
        help="run a grid of experiments sharing the cluster (several at once on "
        "Ray), then report",
    )
    add_config_arguments(swp, CONFIG_HELP)
    swp.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="one axis per key: every combination of the values is one run",
    )
    dashboard = "with --submit, its dashboard, http://HEAD:8265"
    add_run_set_options(swp, address_help=f"{ADDRESS_HELP}; {dashboard}")
    swp.add_argument(
        "--run-dir",
        type=Path,
        action="append",
        metavar="DIR",
        help="where a run writes, once per run in grid order (the job of "
        "--submit gets those it printed); default LOG_ROOT/NAME/TIME",
    )
    swp.add_argument(
        "--submit",
        action="store_true",
        help="run the grid and its report as one Ray job on the cluster (like "
        "fedsim submit): log.root must be shared, --out absolute (default "
        "LOG_ROOT/NAME_sweep/TIME)",
    )
    swp.add_argument(
        "--no-wait", action="store_true", help="with --submit: return after submitting"
    )


def compare(args: argparse.Namespace) -> int:
    """The variants (see :mod:`fedsim.compare`) as a one-axis sweep, then report."""
    from fedsim.compare import report_metric, variant_configs
    from fedsim.report import make_link

    link = make_link(args.uplink_mbps, args.downlink_mbps)  # checked before running
    named = variant_configs(args.config, args.overrides, args.variants)
    configs = [cfg for _, cfg in named]
    _check_runs(args, configs)
    variant, first = named[0]
    out = args.out or Path("reports") / first.name.removesuffix(f"_{variant}")
    metric = report_metric([name for name, _ in named])
    return run_all(args, configs, out, link=link, metric=metric, what="compare")


def sweep(args: argparse.Namespace) -> int:
    """Run the grid (see :mod:`fedsim.sweep`), then report.

    With ``--submit``, the same as one Ray job (see :func:`_submit_sweep`).
    """
    from fedsim.sweep import given_run_dirs, sweep_configs

    # `--grid a=1,2 rounds=3`: argparse gives rounds=3 to --grid; a one-value
    # axis is an override.
    grid = [g for g in args.grid if "," in g]
    overrides = [*args.overrides, *(g for g in args.grid if "," not in g)]
    configs = sweep_configs(args.config, overrides, grid)
    _check_runs(args, configs)
    if args.submit:
        return _submit_sweep(args, grid, overrides, configs)
    if args.no_wait:
        raise ConfigError("--no-wait goes with --submit")
    run_dirs = given_run_dirs(configs, args.run_dir)
    out = args.out or Path("reports") / load_config(args.config, overrides).name
    return run_all(args, configs, out, run_dirs=run_dirs)


def _check_runs(args: argparse.Namespace, configs: Sequence[Config]) -> None:
    """Before anything runs: the options, and every model against its data."""
    if args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    for cfg in configs:
        check_model_fits(cfg)


def run_all(
    args: argparse.Namespace,
    configs: Sequence[Config],
    out: Path,
    *,
    run_dirs: Sequence[Path | None] | None = None,
    link: Link | None = None,
    metric: str = "auto",
    what: str = "sweep",
) -> int:
    """Run ``configs`` with :func:`fedsim.sweep.run_sweep`, print, report.

    On Ray, one cluster (joined, or started here) serves every run, and its
    client slots are divided among the runs at once (``--max-concurrent``).
    """
    from fedsim.report import write_report
    from fedsim.sweep import run_sweep

    first = configs[0]
    check_available(first.data.name, first.data.root)
    backend = backend_of(args)
    slots = None
    with (
        ray_cluster(args.address or first.resources.address)
        if backend == "ray"
        else contextlib.nullcontext()
    ):
        if backend == "ray":
            from fedsim.backend.placement import cluster_slots

            slots = cluster_slots(first.resources)
        results = run_sweep(
            configs, backend, args.max_concurrent, slots, run_dirs, what=what
        )
    for cfg, result in zip(configs, results, strict=True):
        print(summary_paragraph(cfg, result))
    report = write_report([r.run_dir for r in results], out, args.target, link, metric)
    print()
    print_report(report)
    return 0


def _submit_sweep(
    args: argparse.Namespace,
    grid: list[str],
    overrides: list[str],
    configs: list[Config],
) -> int:
    """``fedsim sweep --submit``: say where every run and the report go, submit.

    The job gets the base config (every override applied, paths absolute) and
    the grid, and runs ``fedsim sweep`` on them there (``ray_jobs/sweep.py``):
    the same runs in the same order, so each writes the directory printed here.
    """
    from fedsim.backend import jobs
    from fedsim.sweep import check_grid_can_travel
    from fedsim.tracking import new_run_dir

    if args.backend == "local":
        raise ConfigError(
            "--submit runs the grid on the cluster's Ray: drop --backend local"
        )
    if args.run_dir:
        raise ConfigError(
            "--submit puts each run under log.root itself: drop --run-dir"
        )
    if args.out is not None and not args.out.is_absolute():
        raise ConfigError(
            f"--out {args.out} is relative, but the job writes the report on the "
            "cluster: give a folder on a filesystem that every node can write "
            "and you can read, e.g. --out /shared/fedsim/reports/NAME, or leave "
            "--out out (LOG_ROOT/NAME_sweep/TIME)"
        )
    check_grid_can_travel(grid)
    base = job_config(load_config(args.config, overrides), args.address)
    run_dirs = [new_run_dir(resolve_paths(cfg)) for cfg in configs]
    out = args.out or new_run_dir(replace(base, name=f"{base.name}_sweep"))
    for run_dir in run_dirs:
        print(f"run directory: {quoted(run_dir)} (written by the job)")
    print(f"report:        {out} (written by the job)")
    command = jobs.entrypoint(
        "sweep",
        [
            "--grid",
            *grid,
            "--max-concurrent",
            str(args.max_concurrent),
            "--target",
            str(args.target),
            "--out",
            str(out),
            *(word for d in run_dirs for word in ("--run-dir", str(d))),
        ],
    )
    return follow_submitted(jobs.submit(base, command, args.address), args)
