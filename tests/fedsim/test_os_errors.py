"""Operating-system and path faults: one `fedsim: error:` line, before Ray starts."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.loop import RunStopped
from fedsim.rundir import CHECKPOINT, os_problem
from tests.fixtures import QUICKSTART, TINY


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("fedsim: error: "), err
    return err


def run(*args: str) -> int:
    return main(["run", str(QUICKSTART), *TINY, "--backend", "local", *args])


def test_log_root_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("")
    assert run(f"log.root={tmp_path / 'f' / 'runs'}") == 2
    assert "is a file, not a directory" in one_error_line(capsys)


def test_run_dir_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("mine")
    assert run(f"log.root={tmp_path}", "--run-dir", str(tmp_path / "f")) == 2
    assert "exists and is not a directory" in one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "mine"


def test_a_name_longer_than_a_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(f"log.root={tmp_path}", f"name={'n' * 300}") == 2
    assert "name: names a folder, at most 255 bytes; got 300" in one_error_line(capsys)
    # Without a config file too: the long word is an override, not a path.
    assert main(["run", f"name={'n' * 300}", "--backend", "local"]) == 2
    assert "at most 255 bytes" in one_error_line(capsys)


def test_no_ray_at_the_address_is_one_line_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    code = main(
        [
            "run",
            str(QUICKSTART),
            *TINY,
            f"log.root={tmp_path}",
            "--address",
            "127.0.0.1:1",
        ]
    )
    assert code == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in one_error_line(capsys)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("code", "plain"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.ENAMETOOLONG, "file name too long"),
    ],
)
def test_os_errors_in_plain_words(code: int, plain: str) -> None:
    exc = OSError(code, "cryptic", "/runs/my run/x")
    assert os_problem(exc, "").startswith(f"'/runs/my run/x': {plain}")


def test_resume_line_only_with_a_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "my run"
    stopped = RunStopped("the driver actor died in round 7", run_dir)
    assert "cannot be resumed" in str(stopped) and "--resume" not in str(stopped)
    (run_dir / CHECKPOINT).parent.mkdir(parents=True)
    (run_dir / CHECKPOINT).touch()
    assert str(stopped).endswith(f"resume with: fedsim run --resume '{run_dir}'")


@pytest.mark.parametrize(
    ("raised", "code", "name"),
    [(SystemExit(15), 143, "SIGTERM"), (KeyboardInterrupt(), 130, "SIGINT")],
)
def test_a_signal_while_ray_starts_is_one_line_and_stops_ray(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    code: int,
    name: str,
) -> None:
    from fedsim.backend import cluster

    stopped = []

    def interrupted_start(address: str | None) -> bool:
        raise raised  # ray.init's SIGTERM handler exits with the signal number

    monkeypatch.setattr(cluster, "start_ray", interrupted_start)
    monkeypatch.setattr(cluster, "stop_ray", lambda: stopped.append(True))
    assert main(["run", str(QUICKSTART), *TINY, f"log.root={tmp_path}"]) == code
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fedsim: stopped by {name} while Ray was starting: no round ran, "
        "nothing to resume"
    )
    assert stopped == [True]


def test_a_full_disk_is_one_line_and_the_checkpoint_survives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fedsim.test_resume import crash_after

    run_dir = crash_after(tmp_path, 3, "rounds=4", "log.checkpoint_every=2")
    before = (run_dir / CHECKPOINT).read_bytes()
    # The next checkpoint's temporary file lands on a device that is always full.
    (run_dir / CHECKPOINT).with_suffix(".tmp").symlink_to("/dev/full")
    assert main(["run", "--resume", str(run_dir), "--backend", "local"]) == 1
    err = one_error_line(capsys)
    assert "no space left on device: free some space" in err, err
    assert (run_dir / CHECKPOINT).read_bytes() == before
    assert not (run_dir / CHECKPOINT).with_suffix(".tmp").exists()


def test_synthetic_data_larger_than_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    over = ("data.name=synthetic_cifar", f"data.synthetic_train={10**12}")
    assert run(f"log.root={tmp_path}", *over) == 2
    assert "GB of memory, more than the" in one_error_line(capsys)


def test_a_second_ctrl_c_during_teardown_keeps_the_stop_line(tmp_path: Path) -> None:
    import signal

    from fedsim.loop import drive
    from fedsim.tracking import RoundMetrics
    from tests.fixtures import tiny_config

    class SecondCtrlCInClose:
        run_dir = tmp_path
        rounds_done = 0

        def next_round(self) -> int:
            return self.rounds_done

        def step(self) -> RoundMetrics:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the round
            self.rounds_done += 1
            return RoundMetrics(round=0, bytes_up=0, bytes_down=0, cumulative_bytes=0)

        def checkpoint(self) -> None:
            (tmp_path / CHECKPOINT).parent.mkdir(exist_ok=True)
            (tmp_path / CHECKPOINT).touch()

        def finish(self) -> None:
            raise AssertionError("a stopped run does not finish")

        def close(self) -> None:
            raise KeyboardInterrupt  # the second Ctrl-C, while tearing down

    with pytest.raises(RunStopped) as stopped:
        drive(SecondCtrlCInClose(), tiny_config(tmp_path, "rounds=5"))  # type: ignore[arg-type]
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        f"stopped by SIGINT after round 0; resume with: fedsim run --resume {tmp_path}"
    )
