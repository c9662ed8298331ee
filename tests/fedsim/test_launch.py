"""Where a run lives: paths resolved by the caller, addresses told apart, one
launch layer that imports neither the experiment nor Ray."""

from __future__ import annotations

import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from fedsim import cli
from fedsim.backend.cluster import address_kind, cluster_address, dashboard_address
from fedsim.cli.run import new_experiment
from fedsim.config import ConfigError, load_config
from fedsim.launch import absolute_dir, launch, resolve_paths
from fedsim.loop import RunResult
from tests.fixtures import QUICKSTART, tiny_config


def test_paths_are_resolved_where_the_command_runs(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, ["data.root=data/x", "log.root=../runs"])
    resolved = resolve_paths(cfg, cwd=tmp_path / "here")
    assert resolved.data.root == str(tmp_path / "here" / "data" / "x")
    assert resolved.log.root == str(tmp_path / "runs")
    assert resolve_paths(resolved, cwd=Path("/elsewhere")) == resolved  # idempotent
    assert resolve_paths(load_config(QUICKSTART)).data.root is None  # digits
    home = resolve_paths(load_config(QUICKSTART, ["log.root=~/runs"]))
    assert home.log.root == str(Path.home() / "runs")
    assert absolute_dir(Path("r/1"), tmp_path) == tmp_path / "r" / "1"
    assert absolute_dir(None) is None


def test_fedsim_run_writes_under_the_callers_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["run", str(QUICKSTART), "rounds=1", "data.num_clients=6"]
    argv += ["server.clients_per_round=3", "client.epochs=1", "log.progress=false"]
    assert cli.main([*argv, "log.root=out", "--backend", "local"]) == 0
    run_dir = Path(capsys.readouterr().out.split("run directory: ")[1].split()[0])
    assert run_dir.is_absolute() and run_dir.parent == tmp_path / "out" / "quickstart"
    saved = load_config(run_dir / "config.yaml")
    assert saved.log.root == str(tmp_path / "out")  # what travels is resolved


def test_addresses_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    assert address_kind("https://head:8265") == "dashboard"
    assert address_kind("ray://head:10001") == "client"
    assert address_kind("head:6379") == "gcs"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert cluster_address(None) == "10.1.2.3:6379"
    assert cluster_address("ray://h:10001") == "ray://h:10001"  # --address first
    assert dashboard_address("http://h:8265/") == "http://h:8265"
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=10.1.2.3:6379 is a cluster"):
        dashboard_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://10.1.2.3:8265")
    with pytest.raises(ConfigError, match=r"is a Ray dashboard address.*HOST:6379"):
        cluster_address(None)
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(None) is None  # an embedded local Ray


def test_fedsim_run_with_a_dashboard_address_says_which_to_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's `export RAY_ADDRESS=http://...` for jobs, then a plain run:
    # one line, before Ray starts (nothing listens on port 9).
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")
    assert cli.main(["run", str(QUICKSTART), "rounds=1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fedsim: error: RAY_ADDRESS=http://127.0.0.1:9 is a Ray")
    assert "--address HOST:6379" in line and "unset RAY_ADDRESS" in line


def test_the_cli_run_factory_unpickles_without_torch(
    tmp_path: Path,
) -> None:
    # What Ray sends to the driver actor: another process unpickles it without
    # importing torch (the caller never has), and gets the same config back.
    cfg = tiny_config(tmp_path, "rounds=1")
    factory = partial(new_experiment, cfg, None, False)
    code = (
        "import pickle, sys\n"
        "factory = pickle.loads(sys.stdin.buffer.read())\n"
        "print('torch' in sys.modules, factory.func.__module__)\n"
        "print(repr(factory.args[0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(factory),
        capture_output=True,
        check=True,
    ).stdout.decode()
    first, second = out.splitlines()
    assert first.split() == ["False", "fedsim.cli.run"]
    assert second == repr(cfg)


def test_launch_runs_a_local_run_on_the_pool_it_is_given(tmp_path: Path) -> None:
    made: list[str] = []

    class Run:
        run_dir = tmp_path

        def next_round(self) -> int:
            return 2  # done already: drive() only finishes it

        def step(self) -> object:
            raise AssertionError("no round is left to run")

        def checkpoint(self) -> None:
            pass

        def finish(self) -> RunResult:
            return RunResult(tmp_path, {"rounds": 2})  # type: ignore[arg-type]

        def close(self) -> None:
            made.append("closed")

    def pool(cfg: object) -> str:
        made.append("pool")
        return "pool"

    cfg = tiny_config(tmp_path, "rounds=2")
    result = launch(cfg, lambda p: Run(), backend="local", make_pool=pool)  # type: ignore[arg-type]
    assert result.run_dir == tmp_path and made == ["pool", "closed"]


def test_the_caller_of_a_ray_run_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, fedsim.cli, fedsim.launch, fedsim.backend.cluster; "
        "print(sorted(m for m in ('torch', 'ray', 'fedsim.experiment') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
