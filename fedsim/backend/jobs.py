"""``fedsim submit | status | logs | stop``: runs as Ray jobs on a cluster.

What travels is the project's code and the resolved config, nothing else: the
job's working directory is a package built here from ``fedsim/``,
``lightning_modules/`` and ``ray_jobs/`` (found where Python imports them
from, so an editable and a regular install upload the same files),
``configs/`` (when the packages sit in a source checkout) and ``job.yaml``,
the config with every override applied and its paths made absolute. The
entry point is a script of ``ray_jobs`` run on ``job.yaml``: ``python -m
ray_jobs.train job.yaml --run-dir RUN_DIR`` for ``fedsim submit``, ``python
-m ray_jobs.sweep job.yaml --grid ... --run-dir RUN_DIR ...`` for ``fedsim
sweep --submit``. The cluster's ``python`` must have fedsim's dependencies
(start Ray from the project's virtual environment), and datasets are read
from ``data.root`` on the cluster's nodes.

Ray's token authentication is on by default: the SDK then needs
``RAY_AUTH_MODE=token`` in the environment (the token is read from
``~/.ray/auth_token``). Whatever goes wrong on the way (no dashboard, no
token, no job agent, a job that cannot start, an unknown job id) is raised as
a :class:`~fedsim.backend.cluster.ClusterError` whose one line says what to
fix.

Example
-------
>>> sorted({path.split("/")[0] for path in upload_files()})
['configs', 'fedsim', 'lightning_modules', 'ray_jobs']
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedsim.backend.cluster import ClusterError, dashboard_address
from fedsim.config import Config, dump_config

PACKAGES = ("fedsim", "lightning_modules", "ray_jobs")
JOB_CONFIG = "job.yaml"
AGENT_WAIT_S = 20.0
"""How long submitting waits, in all, for a head whose job agent is not up."""
STOP_GRACE_S = 600
"""How long a stopped job may take to finish its round and checkpoint."""

_now = time.monotonic  # tests replace these two
_sleep = time.sleep
_ENV_FIX = (
    "start Ray on every node from an environment with fedsim installed "
    "(`source .venv/bin/activate` before `ray start`), so that the job's "
    "`python` is that environment's"
)


def _package_dir(name: str) -> Path:
    """The folder Python imports package ``name`` from (without importing it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError(f"cannot find the {name} package to upload")
    return Path(next(iter(spec.submodule_search_locations)))


def _skipped(rel: Path) -> bool:
    return rel.suffix in (".pyc", ".pyo") or any(
        part.startswith(".") or part == "__pycache__" or part.endswith(".egg-info")
        for part in rel.parts
    )


def upload_files() -> dict[str, Path]:
    """What a job uploads besides ``job.yaml``: path in the package -> file here.

    Every file of the packages (no caches), and ``configs/`` when the packages
    live in a source checkout (a ``pyproject.toml`` beside them).
    """
    roots = {name: _package_dir(name) for name in PACKAGES}
    checkout = roots["fedsim"].parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        roots["configs"] = checkout / "configs"
    files: dict[str, Path] = {}
    for name, root in roots.items():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not _skipped(rel):
                files[f"{name}/{rel.as_posix()}"] = path
    return files


def build_package(cfg: Config, dest: Path) -> None:
    """Write the job's working directory into ``dest``: code, configs, job.yaml."""
    for rel, src in upload_files().items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    dump_config(cfg, dest / JOB_CONFIG)


def entrypoint(script: str, args: Sequence[str]) -> str:
    """The job's command line, run in the uploaded package: ``ray_jobs.<script>``.

    >>> entrypoint("train", ["--run-dir", "/shared/runs/q/1"])
    'python -m ray_jobs.train job.yaml --run-dir /shared/runs/q/1'
    """
    words = ["python", "-m", f"ray_jobs.{script}", JOB_CONFIG, *args]
    return " ".join(shlex.quote(w) for w in words)


@contextlib.contextmanager
def _talking_to(url: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the SDK's errors into one-line :class:`ClusterError`s."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        raise ClusterError(
            f"the Ray cluster at {url} wants its token: export RAY_AUTH_MODE=token "
            "before running fedsim (Ray reads the token from ~/.ray/auth_token, "
            "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN; copy the head's there)"
        ) from None
    except ConnectionError:
        raise ClusterError(
            f"no Ray dashboard answers at {url}: is the head running "
            "(`ray start --head`; its dashboard listens on port 8265 unless "
            "--dashboard-port says otherwise)?"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if job_id is not None and "404" in text:
            raise ClusterError(
                f"no job {job_id} on the cluster at {url} (fedsim submit prints "
                "the id of each job it submits; `ray job list` lists them)"
            ) from None
        raise ClusterError(f"the cluster at {url}: {_first_line(text)}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _client(address: str | None) -> tuple[Any, str]:
    url = dashboard_address(address)
    from ray.job_submission import JobSubmissionClient

    # The SDK's INFO lines (packaging, uploading, websockets) are not news.
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)

    with _talking_to(url):
        return JobSubmissionClient(url), url


def _submit_waiting_for_agent(client: Any, url: str, **kwargs: Any) -> str:
    """Submit; while the head's job agent is not up, retry for AGENT_WAIT_S."""
    start = _now()
    while True:
        try:
            job_id: str = client.submit_job(**kwargs)
            return job_id
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            # No new try after AGENT_WAIT_S (a try itself may take ~10 s).
            if _now() - start + 1.0 >= AGENT_WAIT_S:
                raise ClusterError(
                    f"the Ray head at {url} has no job agent after "
                    f"{_now() - start:.0f} s: its dashboard agent did not start "
                    "(is another Ray on the head node holding port 52365? see "
                    "dashboard_agent.log in the head's session logs); restart "
                    "the head (`ray stop`, then `ray start --head ...`)"
                ) from None
            _sleep(1.0)


def submit(cfg: Config, command: str, address: str | None) -> str:
    """Submit ``command`` (see :func:`entrypoint`) on ``cfg``; the job id.

    ``cfg`` is resolved (absolute paths); it travels as ``job.yaml``.
    """
    client, url = _client(address)
    with tempfile.TemporaryDirectory(prefix="fedsim-job-") as tmp:
        package = Path(tmp)
        build_package(cfg, package)
        runtime_env = {
            "working_dir": str(package),
            "env_vars": {
                "PYTHONUNBUFFERED": "1",
                # `fedsim stop`: the run finishes its round and checkpoints
                # (fedsim.loop) before Ray kills it; Ray's default grace is 3 s.
                "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
            },
        }
        with _talking_to(url):
            return _submit_waiting_for_agent(
                client, url, entrypoint=command, runtime_env=runtime_env
            )


def follow(job_id: str, address: str | None) -> int:
    """Print the job's logs as they come, then its end; 0 if it succeeded.

    Raises
    ------
    ClusterError
        The job failed or was stopped; the message says why and what to fix,
        and its ``exit_code`` is the job's own when the job ran.
    """
    client, url = _client(address)
    seen: list[str] = []

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()
            seen.append(lines)

    with _talking_to(url, job_id):
        asyncio.run(tail())
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    print(f"job {job_id}: {status}")
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    raise ClusterError(
        why_failed(job_id, status, "".join(seen), info.message or "", code),
        code if isinstance(code, int) and code > 0 else 1,
    )


_FEDSIM_LINE = re.compile(r"^fedsim: (?:error: )?(.*)$", re.MULTILINE)
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


def why_failed(
    job_id: str, status: str, logs: str, message: str, exit_code: int | None
) -> str:
    """One line on why a job ended without success, and what to fix."""
    said = _FEDSIM_LINE.findall(logs)
    if said:  # the job's own `fedsim run` said what was wrong
        return f"job {job_id} {status}: {said[-1].strip()}"
    missing = _NO_MODULE.search(logs) or _NO_MODULE.search(message)
    if missing:
        return (
            f"job {job_id} {status}: the cluster's python has no module "
            f"{missing.group(1)}; {_ENV_FIX}"
        )
    if exit_code == 127 or "python: not found" in logs + message:
        return f"job {job_id} {status}: the cluster has no `python` command; {_ENV_FIX}"
    return (
        f"job {job_id} {status}: {_first_line(message)} "
        f"(fedsim logs {job_id} shows the whole log)"
    )


def status(job_id: str, address: str | None) -> str:
    """The job's state: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    client, url = _client(address)
    with _talking_to(url, job_id):
        state = client.get_job_status(job_id)
    return str(getattr(state, "value", state))


def logs(job_id: str, address: str | None) -> str:
    """Everything the job printed so far."""
    client, url = _client(address)
    with _talking_to(url, job_id):
        text: str = client.get_job_logs(job_id)
    return text


def stop(job_id: str, address: str | None) -> bool:
    """Ask the job to stop (SIGTERM: it checkpoints); False if it was not running."""
    client, url = _client(address)
    with _talking_to(url, job_id):
        stopped: bool = client.stop_job(job_id)
    return stopped
