"""The ``fedsim`` command line.

    fedsim run CONFIG [key=value ...] [--run-dir DIR] [--address ADDR]
               [--backend ray|local]
    fedsim run --resume RUN_DIR [key=value ...]
    fedsim params CONFIG [key=value ...] [--json]
    fedsim data download NAME --root DIR
    fedsim report RUN_DIR [RUN_DIR ...] [--target 0.8] [--plot out.png]
    fedsim submit CONFIG [key=value ...] --address http://HEAD:8265
    fedsim status|logs|stop JOB_ID --address http://HEAD:8265

Config and data mistakes exit with code 2 before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedsim.config import Config, ConfigError, load_config
from fedsim.data import DataError, check_available, download
from fedsim.loop import RunResult

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a federated experiment")
    run.add_argument(
        "config", nargs="?", help="YAML config (see configs/); omitted: the defaults"
    )
    run.add_argument("overrides", nargs="*", help="key=value overrides")
    run.add_argument(
        "--run-dir", type=Path, help="where to write (default runs/NAME/TIME)"
    )
    run.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local one)"
    )
    run.add_argument("--backend", choices=["ray", "local"], default="ray")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint",
    )

    params = sub.add_parser("params", help="parameters and bytes of a config's model")
    params.add_argument("config")
    params.add_argument("overrides", nargs="*")
    params.add_argument("--json", action="store_true", help="print one JSON object")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch a dataset (needs internet)")
    dl.add_argument("name")
    dl.add_argument("--root", required=True, type=Path)

    rep = sub.add_parser("report", help="compare runs: accuracy against GB sent")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument(
        "--target", type=float, default=0.8, help="accuracy for 'GB to target'"
    )
    rep.add_argument("--plot", type=Path, help="write accuracy-vs-GB PNG here")

    submit = sub.add_parser("submit", help="submit a run as a Ray job")
    submit.add_argument("config")
    submit.add_argument("overrides", nargs="*")
    submit.add_argument("--address", help="Ray dashboard address (default RAY_ADDRESS)")
    submit.add_argument(
        "--no-wait", action="store_true", help="return after submitting"
    )
    for verb in ("status", "logs", "stop"):
        job = sub.add_parser(verb, help=f"{verb} of a submitted job")
        job.add_argument("job_id")
        job.add_argument(
            "--address", help="Ray dashboard address (default RAY_ADDRESS)"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedsim`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "params":
            return _params(args)
        if args.command == "report":
            from fedsim.report import report

            print(report(args.run_dirs, args.target, args.plot))
            return 0
        if args.command == "data":
            print(f"{args.name} is in {download(args.name, args.root)}")
            return 0
        from fedsim.backend import jobs

        return jobs.dispatch(args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


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
    return run_and_report(
        cfg, args.backend, run_dir, args.address, args.resume is not None
    )


def _split_config(
    config: str | None, overrides: list[str]
) -> tuple[str | None, list[str]]:
    """Allow ``fedsim run key=value ...`` with no file: the defaults plus overrides."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


def _run_backend(
    cfg: Config, backend: str, run_dir: Path | None, resume: bool
) -> RunResult:
    if backend == "ray":
        from fedsim.backend.ray_driver import run_on_ray

        return run_on_ray(cfg, run_dir, resume)
    from fedsim.experiment import run_experiment

    return run_experiment(cfg, backend="local", run_dir=run_dir, resume=resume)


def run_and_report(
    cfg: Config, backend: str, run_dir: Path | None, address: str | None, resume: bool
) -> int:
    """Start Ray if needed, run, print the summary paragraph; stop what we started.

    With Ray, this process only shows progress: the driver actor imports torch,
    checks that the model fits the data and runs the rounds.
    """
    # Before Ray starts; the model check runs where the model is built
    # (Experiment: in this process, or in the driver actor).
    check_available(cfg.data.name, cfg.data.root)
    started = False
    if backend == "ray":
        if not (address or os.environ.get("RAY_ADDRESS")):
            # An embedded instance is private to this run: keep it on loopback.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from fedsim.backend.ray_pool import start_ray

        started = start_ray(address or cfg.resources.address)
    try:
        result = _run_backend(cfg, backend, run_dir, resume)
    finally:
        if started:
            import ray

            ray.shutdown()
    s = result.summary
    print(
        f"\n{cfg.name}: {s['rounds']} rounds of {cfg.server.clients_per_round} clients "
        f"({cfg.model.param} {cfg.model.arch}, "
        f"{s['num_params_travelling']:,} parameters "
        f"travelling) reached a final global accuracy of {s['final_accuracy']:.4f} "
        f"(best {s['best_accuracy']:.4f}) after {s['total_bytes'] / 1e9:.4f} GB of "
        f"traffic in {s['wall_seconds']:.1f} s.\n"
        f"run directory: {result.run_dir}\n"
        f"TensorBoard:   tensorboard --logdir {result.run_dir / 'tb'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
