"""The ``fedsim`` command line.

    fedsim run CONFIG [key=value ...] [--run-dir DIR] [--address ADDR]
               [--backend ray|local]
    fedsim run --resume RUN_DIR [key=value ...]
    fedsim params CONFIG [key=value ...] [--json]
    fedsim data download NAME --root DIR
    fedsim report RUN_DIR [RUN_DIR ...] --out DIR [--target 0.8]
               [--metric auto|global|personal] [--uplink-mbps X --downlink-mbps Y]
    fedsim compare CONFIG [key=value ...] [--variants original,lowrank,fedpara]
               [--out DIR] [--target 0.8] [--backend ray|local]
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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from fedsim.backend.base import Backend
from fedsim.backend.cluster import ClusterError, dashboard_address
from fedsim.config import Config, ConfigError, LogConfig, load_config
from fedsim.data import DataError, check_available, download
from fedsim.launch import BackendName, absolute_dir, launch, ray_cluster, resolve_paths
from fedsim.loop import Run, RunResult, RunStopped
from fedsim.model import check_model_fits

EXIT_USAGE = 2
OVERRIDES_HELP = "overrides such as rounds=3 (YAML values), before or after options"


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

    run = sub.add_parser("run", help="run a federated experiment")
    run.add_argument(
        "config", nargs="?", help="YAML config (see configs/); omitted: the defaults"
    )
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    run.add_argument(
        "--run-dir", type=Path, help="where to write (default runs/NAME/TIME)"
    )
    run.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local one)"
    )
    run.add_argument(
        "--backend",
        choices=["ray", "local"],
        default="ray",
        help="where clients train: 'ray' (default) runs a pool of actors on Ray; "
        "'local' trains them one after another in this process, without Ray",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint",
    )

    params = sub.add_parser("params", help="parameters and bytes of a config's model")
    params.add_argument("config")
    params.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP
    )
    params.add_argument("--json", action="store_true", help="print one JSON object")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch a dataset (needs internet)")
    dl.add_argument("name")
    dl.add_argument("--root", required=True, type=Path)

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
    rep.add_argument(
        "--target",
        type=float,
        default=0.8,
        metavar="ACC",
        help="accuracy for 'GB to target' (default 0.8)",
    )
    rep.add_argument(
        "--metric",
        choices=["auto", "global", "personal"],
        default="auto",
        help="score runs on the global model's accuracy, the clients' own "
        "models' (personal) accuracy, or auto: global where a run has it",
    )
    _add_link_options(rep)

    cmp = sub.add_parser(
        "compare",
        help="run variants of one config one after another (same seed, same "
        "partition), then report",
    )
    cmp.add_argument("config", help="YAML config (see configs/)")
    cmp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    cmp.add_argument(
        "--variants",
        default="original,lowrank,fedpara",
        metavar="A,B,...",
        help="comma-separated: original, lowrank, fedpara, pfedpara (model.param); "
        "fedavg, fedprox, scaffold, feddyn, fedadam, fedyogi, fedadagrad, fedper, "
        "local (server.strategy); default original,lowrank,fedpara",
    )
    _add_run_set_options(cmp)
    _add_link_options(cmp)

    swp = sub.add_parser(
        "sweep",
        help="run a grid of experiments sharing the cluster (several at once on "
        "Ray), then report",
    )
    swp.add_argument("config", help="YAML config (see configs/)")
    swp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    swp.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="one axis per key: every combination of the values is one run",
    )
    swp.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        metavar="N",
        help="runs at once on Ray (the cluster's client slots are shared among "
        "them); in-process runs go one after another (default 2)",
    )
    _add_run_set_options(
        swp,
        address_help="Ray cluster to join (default: RAY_ADDRESS or a local one); "
        "with --submit, its dashboard, http://HEAD:8265",
    )
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

    submit = sub.add_parser("submit", help="submit a run as a Ray job")
    submit.add_argument("config")
    submit.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP
    )
    submit.add_argument("--address", help="Ray dashboard address (default RAY_ADDRESS)")
    submit.add_argument(
        "--no-wait", action="store_true", help="return after submitting"
    )
    for verb, what in (
        ("status", "print the state of a submitted job"),
        ("logs", "print the logs of a submitted job"),
        ("stop", "stop a submitted job"),
    ):
        job = sub.add_parser(verb, help=what)
        job.add_argument("job_id")
        job.add_argument(
            "--address", help="Ray dashboard address (default RAY_ADDRESS)"
        )
    return p


def _add_run_set_options(
    p: argparse.ArgumentParser,
    address_help: str = "Ray cluster to join (default: RAY_ADDRESS or a local one)",
) -> None:
    """Options of the commands that run several experiments and report them."""
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the report goes (default reports/NAME)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=0.8,
        metavar="ACC",
        help="accuracy for 'GB to target' (default 0.8)",
    )
    p.add_argument(
        "--backend",
        choices=["ray", "local"],
        default="ray",
        help="'ray' (default): each run on a pool of Ray actors; 'local': in this "
        "process, without Ray",
    )
    p.add_argument("--address", help=address_help)


def _add_link_options(p: argparse.ArgumentParser) -> None:
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


def _is_override(token: str) -> bool:
    """Whether a command-line word is a ``key=value`` override (not an option)."""
    return "=" in token and not token.startswith("-")


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
    late = [a for a in extras if takes_overrides and _is_override(a)]
    unknown = [a for a in extras if not (takes_overrides and _is_override(a))]
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
        if args.command == "run":
            return _run(args)
        if args.command == "params":
            return _params(args)
        if args.command == "report":
            from fedsim.report import make_link, write_report

            link = make_link(args.uplink_mbps, args.downlink_mbps)
            result = write_report(
                args.run_dirs, args.out, args.target, link, args.metric
            )
            print(result.markdown)
            print("\n".join(f"wrote {path}" for path in result.paths))
            return 0
        if args.command == "compare":
            return _compare(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "data":
            print(f"{args.name} is in {download(args.name, args.root)}")
            return 0
        return _job_command(args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunStopped as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return exc.exit_code


def _compare(args: argparse.Namespace) -> int:
    """Run the variants one after another (see fedsim.compare), then report."""
    from fedsim.compare import PERSONAL_VARIANTS, run_variants, variant_configs
    from fedsim.report import make_link, write_report

    link = make_link(args.uplink_mbps, args.downlink_mbps)  # checked before running
    configs = variant_configs(args.config, args.overrides, args.variants)
    variants = {name for name, _ in configs}
    variant, first = configs[0]
    out = args.out or Path("reports") / first.name.removesuffix(f"_{variant}")
    check_available(first.data.name, first.data.root)
    one_ray = (  # one Ray for every variant
        ray_cluster(args.address or first.resources.address)
        if args.backend == "ray"
        else contextlib.nullcontext()
    )
    with one_ray:
        results = run_variants(
            configs,
            args.backend,
            on_result=lambda _, cfg, result: print(summary_paragraph(cfg, result)),
        )
    metric = "personal" if PERSONAL_VARIANTS.intersection(variants) else "auto"
    report = write_report([r.run_dir for r in results], out, args.target, link, metric)
    print()
    print(report.markdown)
    print("\n".join(f"wrote {path}" for path in report.paths))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Run the grid (see fedsim.sweep), several at once on Ray, then report.

    With ``--submit``, the same as one Ray job (see :func:`_submit_sweep`).
    """
    from fedsim.report import write_report
    from fedsim.sweep import given_run_dirs, run_sweep, sweep_configs

    # `--grid a=1,2 rounds=3`: argparse gives rounds=3 to --grid; a one-value
    # axis is an override.
    grid = [g for g in args.grid if "," in g]
    overrides = [*args.overrides, *(g for g in args.grid if "," not in g)]
    if args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    configs = sweep_configs(args.config, overrides, grid)
    for cfg in configs:
        check_model_fits(cfg)
    if args.submit:
        return _submit_sweep(args, grid, overrides, configs)
    if args.no_wait:
        raise ConfigError("--no-wait goes with --submit")
    run_dirs = given_run_dirs(configs, args.run_dir)
    first = configs[0]
    check_available(first.data.name, first.data.root)
    slots = None
    with (
        ray_cluster(args.address or first.resources.address)
        if args.backend == "ray"
        else contextlib.nullcontext()
    ):
        if args.backend == "ray":
            from fedsim.backend.placement import cluster_slots

            slots = cluster_slots(first)
        results = run_sweep(configs, args.backend, args.max_concurrent, slots, run_dirs)
    for cfg, result in zip(configs, results, strict=True):
        print(summary_paragraph(cfg, result))
    out = args.out or Path("reports") / load_config(args.config, overrides).name
    report = write_report([r.run_dir for r in results], out, args.target)
    print()
    print(report.markdown)
    print("\n".join(f"wrote {path}" for path in report.paths))
    return 0


def _params(args: argparse.Namespace) -> int:
    from fedsim.params_report import format_report, model_report

    report = model_report(load_config(args.config, args.overrides))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        from fedsim.experiment import resume_config

        overrides = [args.config, *args.overrides] if args.config else args.overrides
        cfg = resume_config(args.resume, overrides)
        run_dir: Path | None = args.resume
    else:
        config, overrides = _split_config(args.config, args.overrides)
        cfg = load_config(config, overrides)
        run_dir = args.run_dir
    # The user's paths are relative to here, wherever the driver runs.
    return run_and_report(
        resolve_paths(cfg),
        args.backend,
        absolute_dir(run_dir),
        args.address,
        args.resume is not None,
    )


def _split_config(
    config: str | None, overrides: list[str]
) -> tuple[str | None, list[str]]:
    """Allow ``fedsim run key=value ...`` with no file: the defaults plus overrides.

    A word is taken for the config file when it names an existing file or its part
    before ``=`` looks like a path, so a mistyped ``dir/a=b.yaml`` says that the
    file does not exist.
    """
    if (
        config is not None
        and _is_override(config)
        and not Path(config).exists()
        and not any(sep in config.partition("=")[0] for sep in "/\\")
    ):
        return None, [config, *overrides]
    return config, overrides


def _new_experiment(
    cfg: Config, run_dir: Path | None, resume: bool, pool: Backend
) -> Run:
    """The run of ``fedsim run``, made around its client pool.

    Picklable by reference, and it imports the experiment (and torch) only
    when called: in the driver actor on Ray, so this process stays light.
    """
    from fedsim.experiment import Experiment

    return Experiment(cfg, pool, run_dir, resume)


def run_and_report(
    cfg: Config, backend: str, run_dir: Path | None, address: str | None, resume: bool
) -> int:
    """Check the data, run (see :func:`fedsim.launch.launch`), print the summary.

    ``cfg``'s paths and ``run_dir`` should be absolute already. With Ray, this
    process only shows progress: the driver actor imports torch and runs the
    rounds.
    """
    # Before Ray or torch start: the data is there and the model can take it.
    check_available(cfg.data.name, cfg.data.root)
    check_model_fits(cfg)
    where: BackendName = "local" if backend == "local" else "ray"
    new_run = partial(_new_experiment, cfg, run_dir, resume)
    result = launch(cfg, new_run, backend=where, address=address)
    print(summary_paragraph(cfg, result))
    return 0


def _job_command(args: argparse.Namespace) -> int:
    """``submit``, ``status``, ``logs``, ``stop``: Ray jobs, through the dashboard."""
    from fedsim.backend import jobs

    if args.command == "submit":
        return _submit(args)
    if args.command == "status":
        print(jobs.status(args.job_id, args.address))
    elif args.command == "logs":
        print(jobs.logs(args.job_id, args.address), end="")
    else:
        print("stopped" if jobs.stop(args.job_id, args.address) else "not running")
    return 0


def _job_config(cfg: Config, address: str | None) -> Config:
    """``cfg`` as it travels in a job, checked before the cluster is asked.

    ``log.root`` must not be the default (a folder of this machine); paths are
    made absolute; the job joins the cluster it runs on (Ray Jobs sets
    RAY_ADDRESS there); ``address`` must name a dashboard.
    """
    if cfg.log.root == LogConfig().root:
        raise ConfigError(
            f"log.root is the default {cfg.log.root!r}, a folder of this machine, "
            "but a job writes on the cluster: set log.root to a folder on a "
            "filesystem that every node can write and you can read, e.g. "
            "log.root=/shared/fedsim/runs"
        )
    cfg = resolve_paths(cfg)
    cfg = replace(cfg, resources=replace(cfg.resources, address=None))
    dashboard_address(address)  # the right kind of address, before printing
    return cfg


def _submit(args: argparse.Namespace) -> int:
    """Check the config here, say where its results go, submit, follow."""
    from fedsim.backend import jobs
    from fedsim.tracking import new_run_dir

    # Fails before the cluster; the resolved config is what travels.
    cfg = _job_config(load_config(args.config, args.overrides), args.address)
    run_dir = new_run_dir(cfg)
    print(f"run directory: {run_dir} (written by the job)")
    command = jobs.entrypoint("train", ["--run-dir", str(run_dir)])
    return _submitted(jobs.submit(cfg, command, args.address), args)


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
    base = _job_config(load_config(args.config, overrides), args.address)
    run_dirs = [new_run_dir(resolve_paths(cfg)) for cfg in configs]
    out = args.out or new_run_dir(replace(base, name=f"{base.name}_sweep"))
    for run_dir in run_dirs:
        print(f"run directory: {run_dir} (written by the job)")
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
    return _submitted(jobs.submit(base, command, args.address), args)


def _submitted(job_id: str, args: argparse.Namespace) -> int:
    """After submitting: follow the job to its end (its exit status), or say how."""
    from fedsim.backend import jobs

    print(f"submitted {job_id}")
    if args.no_wait:
        print(f"follow it with: fedsim logs {job_id}; fedsim status {job_id}")
        return 0
    try:
        return jobs.follow(job_id, args.address)  # the job prints where its files are
    except KeyboardInterrupt:
        print(
            f"\nstopped following; job {job_id} goes on "
            f"(fedsim logs {job_id}, fedsim stop {job_id})",
            file=sys.stderr,
        )
        return 130


def summary_paragraph(cfg: Config, result: RunResult) -> str:
    """What a finished run prints: accuracies, traffic, where its files are."""
    s = result.summary
    reached = []
    if s["final_accuracy"] is not None:
        reached.append(
            f"a final global accuracy of {s['final_accuracy']:.4f} "
            f"(best {s['best_accuracy']:.4f})"
        )
    if s.get("final_personal_accuracy") is not None:
        reached.append(
            f"a final personal accuracy of {s['final_personal_accuracy']:.4f} "
            f"(best {s['best_personal_accuracy']:.4f})"
        )
    rounds = f"{s['rounds']} round{'s' if s['rounds'] != 1 else ''}"
    return (
        f"\n{cfg.name}: {rounds} of {cfg.server.clients_per_round} clients "
        f"({cfg.model.param} {cfg.model.arch}, {cfg.server.strategy}, "
        f"{s['num_params_travelling']:,} parameters travelling) reached "
        f"{' and '.join(reached) or 'no evaluation'} after "
        f"{s['total_bytes'] / 1e9:.4f} GB of traffic in {s['wall_seconds']:.1f} s.\n"
        f"run directory: {result.run_dir}\n"
        f"TensorBoard:   tensorboard --logdir {result.run_dir / 'tb'} --host 127.0.0.1"
    )


if __name__ == "__main__":
    raise SystemExit(main())
