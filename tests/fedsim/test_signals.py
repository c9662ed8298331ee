"""SIGTERM / SIGINT / SIGKILL of a whole `fedsim run`, then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedsim.tracking import TIMING, read_metrics
from tests.fixtures import QUICKSTART, REPO

# Whole `fedsim run` processes, killed and resumed: end to end, so slow.
pytestmark = pytest.mark.slow


def start_run(
    tmp_path: Path, *args: str, mark: str = "", wrapper: list[str] | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "FEDSIM_TEST_MARK": mark or uuid.uuid4().hex}
    cmd = [
        *(wrapper or []),
        sys.executable,
        "-m",
        "fedsim",
        "run",
        str(QUICKSTART),
        "data.num_clients=6",
        "server.clients_per_round=3",
        "client.epochs=1",
        "log.progress=false",
        f"log.root={tmp_path}",
        "--run-dir",
        str(tmp_path / "run"),
        *args,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run did not reach its rounds in time")


def rows(run_dir: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)
    ]


def processes_marked(mark: str) -> list[int]:
    """Pids whose environment carries ``mark`` (Ray's processes inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"FEDSIM_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def resume(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return resume_dir(tmp_path / "run", *args)


def resume_dir(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--resume", str(run_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_exits_and_resumes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc = start_run(
        tmp_path, "rounds=40", "log.checkpoint_every=100", "--backend", "local"
    )
    wait_for_rows(tmp_path / "run", 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name} after round" in err
    assert f"resume with: fedsim run --resume {tmp_path / 'run'}" in err
    assert "Traceback" not in err
    done = len(read_metrics(tmp_path / "run"))
    assert done >= 2
    finished = resume(tmp_path, f"rounds={done + 2}", "--backend", "local")
    assert finished.returncode == 0, finished.stderr
    assert [r["round"] for r in rows(tmp_path / "run")] == list(range(done + 2))


def test_sigkill_loses_at_most_the_rounds_since_the_checkpoint(tmp_path: Path) -> None:
    over = ["rounds=12", "model.param=pfedpara", "data.partition=shards"]
    reference = tmp_path / "reference"
    straight = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(QUICKSTART), *over,
         "data.num_clients=6", "server.clients_per_round=3", "client.epochs=1",
         "log.progress=false", "--run-dir", str(reference), "--backend", "local"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr
    proc = start_run(tmp_path, *over, "log.checkpoint_every=3", "--backend", "local")
    wait_for_rows(tmp_path / "run", 5, proc)  # checkpoint at 3, killed at 5 or later
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    finished = resume(tmp_path, "--backend", "local")
    assert finished.returncode == 0, finished.stderr
    assert rows(tmp_path / "run") == rows(reference)
    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert a["final_personal_accuracy"] == b["final_personal_accuracy"]


def test_sigterm_on_ray_leaves_no_ray_process(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    proc = start_run(tmp_path, "rounds=40", "log.checkpoint_every=100", mark=mark)
    try:
        wait_for_rows(tmp_path / "run", 1, proc)
        assert len(processes_marked(mark)) > 1  # Ray's processes carry the mark
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "resume with" in err
    deadline = time.monotonic() + 30
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_marked(mark) == []
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_sigterm_stops_a_sweep_resumably(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    cmd = [
        sys.executable, "-m", "fedsim", "sweep", str(QUICKSTART),
        "--grid", "model.gamma=0.3,0.5", "--backend", "local",
        "--run-dir", str(first), "--run-dir", str(second),
        "rounds=40", "data.num_clients=6", "server.clients_per_round=3",
        "client.epochs=1", "log.progress=false", "log.checkpoint_every=100",
        f"log.root={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_rows(first, 2, proc)  # the runs are driven in a worker thread
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "sweep stopped by SIGTERM: 0 of 2 runs finished" in err
    assert f"resume with: fedsim run --resume {first}" in err
    assert "not started: quickstart_0.5" in err
    assert "Traceback" not in err and not second.exists()
    done = len(read_metrics(first))
    assert (first / "checkpoints" / "last.pt").is_file()  # written at the stop
    finished = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--resume", str(first),
         f"rounds={done + 1}", "--backend", "local"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert [r["round"] for r in read_metrics(first)] == list(range(done + 1))


def test_sigterm_stops_a_compare_resumably(tmp_path: Path) -> None:
    # Variants run as a sweep: stopped the same way, each resumable.
    cmd = [
        sys.executable, "-m", "fedsim", "compare", str(QUICKSTART),
        "--variants", "original,fedpara", "--backend", "local",
        "rounds=40", "data.num_clients=6", "server.clients_per_round=3",
        "client.epochs=1", "log.progress=false", "log.checkpoint_every=100",
        f"log.root={tmp_path}", "--out", str(tmp_path / "report"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not (runs := list((tmp_path / "quickstart_original").glob("*"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    (first,) = runs
    wait_for_rows(first, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "compare stopped by SIGTERM: 0 of 2 runs finished" in err
    assert f"resume with: fedsim run --resume {first}" in err
    assert "not started: quickstart_fedpara" in err
    assert "Traceback" not in err and not (tmp_path / "quickstart_fedpara").exists()
    assert (first / "checkpoints" / "last.pt").is_file()  # written at the stop
    assert not (tmp_path / "report").exists()  # no report of a stopped set


def test_group_sigterm_through_timeout_on_ray_checkpoints_and_resumes(
    tmp_path: Path,
) -> None:
    # `timeout`, scancel and systemd signal the whole process group: Ray's own
    # processes must not die under the run, even with checkpoints off.
    mark = uuid.uuid4().hex
    over = ["log.checkpoint_every=0", "rounds=200"]
    proc = start_run(tmp_path, *over, mark=mark, wrapper=["timeout", "600"])
    try:
        wait_for_rows(tmp_path / "run", 2, proc)
        proc.send_signal(signal.SIGTERM)  # timeout passes it on to its group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"resume with: fedsim run --resume {tmp_path / 'run'}" in err, err
    assert "Traceback" not in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    deadline = time.monotonic() + 30
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_marked(mark) == []
    done = len(read_metrics(tmp_path / "run"))
    finished = resume(tmp_path, f"rounds={done + 2}", "--backend", "local")
    assert finished.returncode == 0, finished.stderr
    assert [r["round"] for r in rows(tmp_path / "run")] == list(range(done + 2))


def test_group_sigterm_through_timeout_stops_a_ray_sweep_resumably(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    cmd = [
        "timeout", "600", sys.executable, "-m", "fedsim", "sweep", str(QUICKSTART),
        "--grid", "model.gamma=0.3,0.5", "--max-concurrent", "1",
        "--run-dir", str(first), "--run-dir", str(second),
        "rounds=200", "data.num_clients=6", "server.clients_per_round=3",
        "client.epochs=1", "log.progress=false", "log.checkpoint_every=0",
        f"log.root={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_rows(first, 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "sweep stopped by SIGTERM: 0 of 2 runs finished" in err
    assert f"resume with: fedsim run --resume {first}" in err
    assert "Traceback" not in err
    done = len(read_metrics(first))
    finished = resume_dir(first, f"rounds={done + 1}", "--backend", "local")
    assert finished.returncode == 0, finished.stderr
    assert [r["round"] for r in read_metrics(first)] == list(range(done + 1))
