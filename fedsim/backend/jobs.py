"""``fedsim submit | status | logs | stop``: runs as Ray jobs on a cluster.

The job's entry point is ``python -m ray_jobs.train CONFIG [overrides]``; the
project folder travels as the job's working directory (without .venv, runs/,
data/ and .git), so the cluster needs only the dependencies installed. Datasets
are read from ``data.root`` on the cluster's nodes.

Ray's token authentication is on by default: the SDK then needs
``RAY_AUTH_MODE=token`` in the environment (the token is read from
``~/.ray/auth_token``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError, load_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [
    ".venv",
    "runs",
    "data",
    ".git",
    ".whl",
    "**/__pycache__",
    ".mypy_cache",
    ".ruff_cache",
]


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError(
            "no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    return JobSubmissionClient(address)


def _retry_no_agent(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Just after `ray start --head` the job agent may not be up for a few seconds.
    for attempt in range(20):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or attempt == 19:
                raise
            time.sleep(1.0)
    return None  # pragma: no cover


def submit(config: str, overrides: list[str], address: str | None) -> str:
    """Validate the config here, then submit it; returns the job id."""
    load_config(config, overrides)  # fail fast, before anything reaches the cluster
    entry = " ".join(
        shlex.quote(a) for a in ["python", "-m", "ray_jobs.train", config, *overrides]
    )
    runtime_env = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES,
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    client = _client(address)
    job_id: str = _retry_no_agent(
        client.submit_job, entrypoint=entry, runtime_env=runtime_env
    )
    return job_id


def dispatch(args: argparse.Namespace) -> int:
    """Run the job sub-command in ``args``."""
    if args.command == "submit":
        job_id = submit(args.config, args.overrides, args.address)
        print(f"submitted {job_id}")
        if args.no_wait:
            return 0
        return _follow(job_id, args.address)
    client = _client(args.address)
    if args.command == "status":
        print(client.get_job_status(args.job_id))
    elif args.command == "logs":
        print(client.get_job_logs(args.job_id), end="")
    elif args.command == "stop":
        print("stopped" if client.stop_job(args.job_id) else "not running")
    return 0


def _follow(job_id: str, address: str | None) -> int:
    import asyncio

    client = _client(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)

    asyncio.run(tail())
    status = str(client.get_job_status(job_id))
    print(f"job {job_id}: {status}")
    return 0 if status.endswith("SUCCEEDED") else 1
