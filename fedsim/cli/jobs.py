"""``fedsim submit``, ``status``, ``logs``, ``stop``: Ray jobs, through the dashboard.

:func:`job_config` and :func:`follow_submitted` also serve ``fedsim sweep
--submit`` (:mod:`fedsim.cli.sweep`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from fedsim.backend.cluster import dashboard_address
from fedsim.cli.common import add_config_arguments
from fedsim.config import Config, ConfigError, LogConfig, load_config
from fedsim.launch import resolve_paths
from fedsim.quote import quoted

DASHBOARD_HELP = "Ray dashboard address (default RAY_ADDRESS)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim submit``, then ``status``, ``logs`` and ``stop``."""
    submit = sub.add_parser("submit", help="submit a run as a Ray job")
    add_config_arguments(submit)
    submit.add_argument("--address", help=DASHBOARD_HELP)
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
        job.add_argument("--address", help=DASHBOARD_HELP)


def submit(args: argparse.Namespace) -> int:
    """Check the config here, say where its results go, submit, follow."""
    from fedsim.backend import jobs
    from fedsim.tracking import new_run_dir

    # Fails before the cluster; the resolved config is what travels.
    cfg = job_config(load_config(args.config, args.overrides), args.address)
    run_dir = new_run_dir(cfg)
    print(f"run directory: {quoted(run_dir)} (written by the job)")
    command = jobs.entrypoint("train", ["--run-dir", str(run_dir)])
    return follow_submitted(jobs.submit(cfg, command, args.address), args)


def job_command(args: argparse.Namespace) -> int:
    """``status``, ``logs``, ``stop`` of a submitted job."""
    from fedsim.backend import jobs

    if args.command == "status":
        print(jobs.status(args.job_id, args.address))
    elif args.command == "logs":
        print(jobs.logs(args.job_id, args.address), end="")
    else:
        print("stopped" if jobs.stop(args.job_id, args.address) else "not running")
    return 0


def job_config(cfg: Config, address: str | None) -> Config:
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


def follow_submitted(job_id: str, args: argparse.Namespace) -> int:
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
