"""`fedsim submit | status | logs | stop` against a real Ray head on 127.0.0.1."""

from __future__ import annotations

import contextlib
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
from pathlib import Path

import pytest

from fedsim.cli import main
from tests.fixtures import QUICKSTART

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """`ray start --head --block` on loopback; stopped through its process group."""
    port, dash = free_port(), free_port()
    # Short: Ray's socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="fedsim-ray-", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python`
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
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
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", dash)) == 0:
                    break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops its children
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_follow_status_logs_stop(
    ray_head: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray's token auth is on by default
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runs = tmp_path / "runs"
    code = main(
        [
            "submit",
            str(QUICKSTART),
            "rounds=2",
            "data.num_clients=6",
            "server.clients_per_round=3",
            "client.epochs=1",
            "log.progress=false",
            f"log.root={runs}",
            "--address",
            ray_head,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.split("submitted ")[1].split()[0]
    assert "final global accuracy" in out
    assert f"job {job_id}: SUCCEEDED" in out

    run_dirs = list(runs.glob("quickstart/*"))
    assert len(run_dirs) == 1
    rows = [
        json.loads(x) for x in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rows] == [0, 1]

    assert main(["status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["logs", job_id, "--address", ray_head]) == 0
    assert "run directory:" in capsys.readouterr().out
    assert main(["stop", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "not running"


def test_submit_refuses_a_bad_config_before_the_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["submit", str(QUICKSTART), "model.gama=1", "--address", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "did you mean model.gamma" in capsys.readouterr().err


def test_job_commands_need_an_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["status", "raysubmit_x"]) == 2
    assert "pass --address" in capsys.readouterr().err
