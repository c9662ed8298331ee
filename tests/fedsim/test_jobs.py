"""`fedsim submit | status | logs | stop`: what a job uploads, how failures read,
and the README's cluster recipe against a real Ray head on 127.0.0.1."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedsim.backend import jobs
from fedsim.backend.cluster import ClusterError
from fedsim.cli import main
from fedsim.config import load_config
from tests.fixtures import QUICKSTART, REPO

VENV_BIN = Path(sys.executable).parent
TOP = ("fedsim", "lightning_modules", "ray_jobs", "configs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Head:
    """A `ray start --head --block` process on loopback."""

    dashboard: str  # http://127.0.0.1:PORT, for the job commands
    gcs: str  # 127.0.0.1:PORT, for fedsim run
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the head through its process group (idempotent)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # --block stops its children
        try:  # graceful stops can take half a minute; the files are written
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[Head]:
    """`ray start --head --block` on loopback; stopped, pass or fail."""
    port, dash, agent = free_port(), free_port(), free_port()
    # Short: Ray's socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="fedsim-ray-", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # The README's `source .venv/bin/activate`: `ray` and the job's `python`.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Not the default 52365: another Ray on this machine may hold it,
            # and then the head takes no job ("No available agent").
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--disable-usage-stats",
            # Its own temp dir: the head's address file must not outlive the test
            # (a bare ray.init() elsewhere would try to join the dead head).
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        start_new_session=True,
        stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    head = Head(f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}", process)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", dash)) == 0:
                    break
            assert process.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.slow  # starts a Ray head, runs three jobs and one joined run (~2 min)
def test_the_readme_cluster_recipe_on_loopback(
    ray_head: Head,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray's token auth is on by default
    monkeypatch.setenv("RAY_ADDRESS", ray_head.dashboard)  # the README's export
    monkeypatch.chdir(tmp_path)  # relative paths below are the user's, from here
    shared = tmp_path / "shared"
    small = ["data.num_clients=6", "server.clients_per_round=3", "client.epochs=1"]
    small.append("log.progress=false")

    # An unknown job id: one line, not a 404 traceback.
    assert main(["status", "raysubmit_nope"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("fedsim: error: no job raysubmit_nope")

    # A dataset missing on the cluster: the job's own check says where and how
    # to fetch it, and the job's exit code comes back.
    missing = ["data.name=mnist", "data.root=nodata", "log.root=shared"]
    code = main(["submit", str(QUICKSTART), *missing])
    out, err = capsys.readouterr()
    assert code == 2, out[-3000:]
    assert error_lines(err)[-1].startswith("fedsim: error: job ")
    assert f"MNIST not found in {tmp_path / 'nodata'}" in err
    assert f"fedsim data download mnist --root {tmp_path / 'nodata'}" in err

    # The quickstart, one round: where its results go is printed first.
    code = main(["submit", str(QUICKSTART), "rounds=1", *small, "log.root=shared"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    first = out.splitlines()[0]
    assert first.startswith("run directory: ") and "(written by the job)" in first
    run_dir = Path(first.split()[2])
    assert run_dir.parent == shared / "quickstart"
    job_id = out.split("submitted ")[1].split()[0]
    assert f"job {job_id}: SUCCEEDED" in out
    assert f"run directory: {run_dir}" in out  # the job's own summary

    assert main(["status", job_id]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["logs", job_id]) == 0
    assert "final global accuracy" in capsys.readouterr().out
    assert main(["stop", job_id]) == 0
    assert capsys.readouterr().out.strip() == "not running"

    # A grid as one job: its runs' directories and its report's, printed first.
    grid = ["--grid", "model.param=original,fedpara", "--submit"]
    code = main(
        ["sweep", str(QUICKSTART), *grid, "rounds=1", *small, "log.root=shared"]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    before = out.split("\nsubmitted ")[0].splitlines()
    sweep_dirs = [Path(line.split()[2]) for line in before[:-1]]
    assert [d.parent.name for d in sweep_dirs] == [
        "quickstart_original",
        "quickstart_fedpara",
    ]
    assert before[-1].startswith("report:        ")
    report_dir = Path(before[-1].split()[1])
    assert (
        {d.parent.parent for d in sweep_dirs} == {shared} == {report_dir.parent.parent}
    )
    sweep_id = out.split("submitted ")[1].split()[0]
    assert f"job {sweep_id}: SUCCEEDED" in out

    # `fedsim run` joins the same cluster at its GCS address (RAY_ADDRESS still
    # names the dashboard, which --address overrides).
    proc = subprocess.run(
        [
            str(VENV_BIN / "fedsim"),
            "run",
            str(QUICKSTART),
            "rounds=1",
            *small,
            "log.root=joined",
            "--address",
            ray_head.gcs,
        ],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    joined = Path(proc.stdout.split("run directory:")[1].split()[0])
    assert joined.parent == tmp_path / "joined" / "quickstart"

    ray_head.stop()  # the results outlive the cluster
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0]
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 1
    saved = load_config(run_dir / "config.yaml")
    assert saved.log.root == str(shared)
    assert (run_dir / "tb").is_dir() and (joined / "summary.json").is_file()
    for sweep_dir in sweep_dirs:
        assert json.loads((sweep_dir / "summary.json").read_text())["rounds"] == 1
    with (report_dir / "report.csv").open() as table:
        names = [row[0] for row in csv.reader(table)][1:]
    assert names == ["quickstart_original", "quickstart_fedpara"]


# Fast: no Ray head.


def test_submit_refuses_a_bad_config_before_the_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["submit", str(QUICKSTART), "model.gama=1", "--address", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "did you mean model.gamma" in capsys.readouterr().err


def test_submit_refuses_the_default_log_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 9 answers nothing: the refusal comes before any connection.
    assert main(["submit", str(QUICKSTART), "--address", "http://127.0.0.1:9"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("fedsim: error: log.root is the default 'runs'")
    assert "filesystem that every node can write" in line


def test_job_commands_need_a_dashboard_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["status", "raysubmit_x"]) == 2
    assert "pass --address http://HOST:8265" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    for argv in (["logs", "raysubmit_x"], ["submit", str(QUICKSTART), "log.root=/s"]):
        assert main(argv) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert "RAY_ADDRESS=127.0.0.1:6379 is a cluster (GCS" in line
        assert "http://HOST:8265" in line


def source_tree_files() -> set[str]:
    """What git tracks (or would) under the four uploaded folders."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *TOP],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {path for path in listed if (REPO / path).is_file()}


def test_a_job_uploads_exactly_the_code_and_the_configs() -> None:
    files = jobs.upload_files()
    assert set(files) == source_tree_files()
    assert "fedsim/data/partition.py" in files  # a folder named data is code too
    assert all(path.is_relative_to(REPO) for path in files.values())


def test_a_regular_install_uploads_its_packages_and_nothing_beside_them(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site-packages"  # what `pip install .` would leave
    for name in ("fedsim", "lightning_modules", "ray_jobs"):
        shutil.copytree(
            REPO / name, site / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    (site / "otherpkg").mkdir()
    (site / "otherpkg" / "__init__.py").write_text("")
    (site / "runs").mkdir()
    (site / "runs" / "x.txt").write_text("")
    (site / "fedsim" / "__pycache__").mkdir()
    (site / "fedsim" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"")
    code = (
        "import json; from fedsim.backend import jobs; "
        "print(json.dumps({k: str(v) for k, v in jobs.upload_files().items()}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # not the checkout
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    files = json.loads(proc.stdout)
    assert all(Path(src).is_relative_to(site) for src in files.values())
    in_checkout = {p for p in source_tree_files() if not p.startswith("configs/")}
    assert set(files) == in_checkout  # no configs/ beside site-packages, no runs/


def test_the_package_holds_the_resolved_config(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, ["rounds=1", "log.root=/shared/runs"])
    jobs.build_package(cfg, tmp_path)
    assert load_config(tmp_path / jobs.JOB_CONFIG) == cfg
    assert (tmp_path / "ray_jobs" / "train.py").is_file()
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".venv").exists()
    assert jobs.entrypoint("train", ["--run-dir", "/shared/runs/q 1"]) == (
        "python -m ray_jobs.train job.yaml --run-dir '/shared/runs/q 1'"
    )


class NoAgent:
    """A head whose job agent is not up; each submit takes ``took`` seconds."""

    def __init__(self, clock: list[float], took: float, succeed_on: int = 0) -> None:
        self.clock, self.took, self.succeed_on, self.calls = clock, took, succeed_on, 0

    def submit_job(self, **kwargs: Any) -> str:
        self.calls += 1
        self.clock[0] += self.took
        if self.calls == self.succeed_on:
            return "raysubmit_ok"
        raise RuntimeError("Request failed with status code 500: No available agent")


def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(jobs, "_now", lambda: clock[0])
    monkeypatch.setattr(jobs, "_sleep", sleep)
    return clock


def test_waiting_for_the_job_agent_is_bounded_in_wall_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = fake_clock(monkeypatch)
    slow = NoAgent(clock, took=10.0)  # each POST times out after ~10 s
    with pytest.raises(ClusterError, match="has no job agent after") as info:
        jobs._submit_waiting_for_agent(slow, "http://h:8265", entrypoint="x")
    assert slow.calls == 2 and clock[0] == 21.0  # not 20 tries of 10 s
    assert "restart the head" in str(info.value)

    clock[0] = 0.0
    quick = NoAgent(clock, took=0.1, succeed_on=3)  # the agent comes up
    assert jobs._submit_waiting_for_agent(quick, "u", entrypoint="x") == "raysubmit_ok"


@pytest.mark.parametrize(
    ("logs", "message", "code", "says"),
    [
        (
            "fedsim: error: CIFAR-10 not found in /d. Fetch it with: fedsim data ...\n",
            "",
            2,
            "job j FAILED: CIFAR-10 not found in /d. Fetch it with",
        ),
        (
            "ModuleNotFoundError: No module named 'torch'\n",
            "Job entrypoint command failed with exit code 1",
            1,
            "the cluster's python has no module torch; start Ray on every node",
        ),
        (
            "/bin/sh: 1: python: not found\n",
            "",
            127,
            "the cluster has no `python` command; start Ray on every node",
        ),
        ("", "Runtime env setup failed: boom\nmore", None, "j FAILED: Runtime env"),
    ],
)
def test_a_failed_job_is_one_line_that_says_what_to_fix(
    logs: str, message: str, code: int | None, says: str
) -> None:
    text = jobs.why_failed("j", "FAILED", logs, message, code)
    assert says in text and "\n" not in text


class Cluster:
    """The SDK's client, answering like a real head for one scripted case."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure

    def get_job_status(self, job_id: str) -> str:
        if self.failure:
            raise self.failure
        return "RUNNING"

    async def tail_job_logs(self, job_id: str) -> Any:
        yield "ModuleNotFoundError: No module named 'yaml'\n"

    def get_job_info(self, job_id: str) -> Any:
        class Info:
            status, message, driver_exit_code = "FAILED", "exit code 1", 1

        return Info()


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (
            RuntimeError("Request failed with status code 404: Job x does not exist."),
            "no job raysubmit_x on the cluster at http://h:8265",
        ),
        (ConnectionError("Failed to connect"), "no Ray dashboard answers at"),
    ],
)
def test_cluster_errors_are_one_line(
    failure: Exception,
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = Cluster(failure)
    monkeypatch.setattr(jobs, "_client", lambda address: (client, "http://h:8265"))
    assert main(["status", "raysubmit_x", "--address", "http://h:8265"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("fedsim: error: ") and says in line


def test_a_missing_token_says_to_set_the_auth_mode() -> None:
    from ray.exceptions import AuthenticationError

    with (
        pytest.raises(ClusterError, match="export RAY_AUTH_MODE=token"),
        jobs._talking_to("http://h:8265"),
    ):
        raise AuthenticationError("Missing authentication token")


def test_following_a_job_that_cannot_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_client", lambda address: (Cluster(), "http://h"))
    with pytest.raises(ClusterError, match="no module yaml; start Ray") as info:
        jobs.follow("raysubmit_x", "http://h")
    assert info.value.exit_code == 1
    assert "job raysubmit_x: FAILED" in capsys.readouterr().out
