"""A run directory belongs to one run: reuse, duplicates, concurrent resumes, disk."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim.cli import main
from fedsim.config import ConfigError
from fedsim.experiment import Experiment, run_experiment
from fedsim.launch import local_pool
from fedsim.rundir import RunDirError, claim
from fedsim.sweep import given_run_dirs, sweep_configs
from fedsim.tracking import read_metrics
from tests.fedsim.test_resume import crash_after, rows_without_timing
from tests.fixtures import QUICKSTART, REPO, TINY, tiny_config


def test_a_finished_run_directory_is_not_reused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "rounds=1")
    first = run_experiment(cfg, backend="local")
    before = (first.run_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="is not empty: resume it with"):
        run_experiment(cfg, backend="local", run_dir=first.run_dir)
    assert (first.run_dir / "metrics.jsonl").read_text() == before


def test_a_directory_of_the_users_own_files_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "my results"
    mine.mkdir()
    (mine / "config.yaml").write_text("precious: true\n")
    argv = ["run", str(QUICKSTART), *TINY, f"log.root={tmp_path}", "--backend"]
    code = main([*argv, "local", "--run-dir", str(mine)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fedsim: error: run directory")
    assert f"'{mine}'" in err  # shell-quoted: the name has a space
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "precious: true\n"


def test_an_empty_existing_directory_is_taken(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "rounds=1")
    result = run_experiment(cfg, backend="local", run_dir=tmp_path / "empty")
    assert [r["round"] for r in read_metrics(result.run_dir)] == [0]


def test_a_sweep_refuses_one_directory_for_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = sweep_configs(QUICKSTART, [], ["model.gamma=0.3,0.5"])
    with pytest.raises(RunDirError, match="is given 2 times"):
        given_run_dirs(configs, [tmp_path / "x", tmp_path / "x"])
    argv = ["sweep", str(QUICKSTART), *TINY, "--grid", "model.gamma=0.3,0.5"]
    code = main([*argv, "--backend", "local", *["--run-dir", str(tmp_path / "y")] * 2])
    assert code == 2
    assert "is given 2 times" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_a_second_resume_of_a_directory_in_use_is_refused(tmp_path: Path) -> None:
    over = ("rounds=3",)
    run_dir = crash_after(tmp_path, 1, *over)
    cfg = tiny_config(tmp_path, *over)
    first = Experiment(cfg, local_pool(cfg), run_dir, resume=True)
    try:
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()} on"):
            run_experiment(cfg, backend="local", run_dir=run_dir, resume=True)
    finally:
        first.close()
    # Released with the run: the directory can be resumed now.
    result = run_experiment(cfg, backend="local", run_dir=run_dir, resume=True)
    assert [r["round"] for r in read_metrics(result.run_dir)] == [0, 1, 2]


def test_the_lock_names_another_process_that_holds_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from fedsim.rundir import claim; "
            "held = claim(Path(sys.argv[1]), resume=False); print('held', flush=True); "
            "sys.stdin.read()",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid} on"):
            claim(tmp_path / "run", resume=True)
    finally:
        holder.communicate("")  # EOF: it exits, and the kernel drops its lock
    claim(tmp_path / "run", resume=True).release()


def test_client_state_stays_bounded_without_checkpoints(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, "server.strategy=scaffold", "rounds=40", "log.checkpoint_every=0"
    )
    result = run_experiment(cfg, backend="local")
    files = list((result.run_dir / "client_state").iterdir())
    assert 0 < len(files) <= cfg.data.num_clients * 2


def test_client_state_pruned_between_sparse_checkpoints_resumes_exactly(
    tmp_path: Path,
) -> None:
    over = ("server.strategy=scaffold", "rounds=8", "log.checkpoint_every=4")
    full = run_experiment(tiny_config(tmp_path / "full", *over), backend="local")
    run_dir = crash_after(tmp_path / "cut", 7, *over)  # rounds 4..6 lost
    assert len(list((run_dir / "client_state").iterdir())) <= 6 * 2
    cfg = tiny_config(tmp_path / "cut", *over)
    run_experiment(cfg, backend="local", run_dir=run_dir, resume=True)
    assert rows_without_timing(run_dir) == rows_without_timing(full.run_dir)


def test_a_cut_last_metrics_line_is_dropped_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    over = ("rounds=4", "log.checkpoint_every=2")
    full = run_experiment(tiny_config(tmp_path / "full", *over), backend="local")
    run_dir = crash_after(tmp_path / "cut", 3, *over)
    for name in ("metrics.jsonl", "comm.jsonl"):
        text = (run_dir / name).read_text()
        (run_dir / name).write_text(text[:-30])  # killed in the middle of a row
    with caplog.at_level(logging.WARNING, logger="fedsim.tracking"):
        cfg = tiny_config(tmp_path / "cut", *over)
        run_experiment(cfg, backend="local", run_dir=run_dir, resume=True)
    assert caplog.text.count("dropped its cut-off last line") == 2
    assert rows_without_timing(run_dir) == rows_without_timing(full.run_dir)


def test_a_broken_line_before_the_last_is_refused(tmp_path: Path) -> None:
    run_dir = crash_after(tmp_path, 3, "rounds=4", "log.checkpoint_every=2")
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows[1] = rows[1][:20]
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    saved = (run_dir / "config.yaml").read_text()
    cfg = tiny_config(tmp_path, "rounds=5")
    with pytest.raises(ConfigError, match=r"metrics\.jsonl line 2 is not a JSON row"):
        run_experiment(cfg, backend="local", run_dir=run_dir, resume=True)
    assert (run_dir / "config.yaml").read_text() == saved  # nothing recorded


def test_resume_with_fewer_rounds_than_done_is_refused(tmp_path: Path) -> None:
    first = run_experiment(tiny_config(tmp_path, "rounds=3"), backend="local")
    saved = (first.run_dir / "config.yaml").read_text()
    fewer = tiny_config(tmp_path, "rounds=1")
    with pytest.raises(ConfigError, match="give rounds=3 or more"):
        run_experiment(fewer, backend="local", run_dir=first.run_dir, resume=True)
    assert (first.run_dir / "config.yaml").read_text() == saved


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda blob: blob["global"].popitem(), "does not fit the model .*missing"),
        (
            lambda blob: blob["global"].update(
                {k: torch.zeros(1) for k in list(blob["global"])[:1]}
            ),
            r"does not fit the model .*wrong shape",
        ),
        (lambda blob: blob.pop("ledger"), "not a complete fedsim checkpoint"),
    ],
    ids=["missing-tensor", "wrong-shape", "no-ledger"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_at_load(
    tmp_path: Path, tamper: object, message: str
) -> None:
    first = run_experiment(tiny_config(tmp_path, "rounds=1"), backend="local")
    path = first.run_dir / "checkpoints" / "last.pt"
    blob = torch.load(path, weights_only=True)
    tamper(blob)  # type: ignore[operator]
    torch.save(blob, path)
    cfg = tiny_config(tmp_path, "rounds=2")
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, backend="local", run_dir=first.run_dir, resume=True)


@pytest.mark.parametrize(
    "overrides",
    [("server.strategy=scaffold",), ("model.param=pfedpara", "data.partition=shards")],
    ids=["scaffold", "pfedpara"],
)
def test_params_gives_the_client_state_a_run_writes(
    tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    from fedsim.params_report import model_report

    cfg = tiny_config(tmp_path, "rounds=1", *overrides)
    expected = model_report(cfg)["bytes_client_state"]
    result = run_experiment(cfg, backend="local")
    sizes = [p.stat().st_size for p in (result.run_dir / "client_state").iterdir()]
    assert sizes and expected > 0
    # The tensors' bytes plus torch.save's own bookkeeping (names, zip headers).
    assert all(expected <= size <= 1.1 * expected + 8192 for size in sizes), sizes


def test_runs_started_in_the_same_second_get_their_own_directories(
    tmp_path: Path,
) -> None:
    from fedsim.rundir import claim_new

    base = tmp_path / "quickstart" / "20261205-071500"
    first, first_lock = claim_new(base)
    second, second_lock = claim_new(base)  # the first has not written yet
    assert (first, second) == (base, base.with_name("20261205-071500-1"))
    first_lock.release()
    second_lock.release()
