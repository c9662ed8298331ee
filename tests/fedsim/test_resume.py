"""Exact resume: strategy state and per-client state continue as if never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedsim.checkpoint import load_checkpoint
from fedsim.config import ConfigError
from fedsim.experiment import Experiment, run_experiment
from fedsim.launch import local_pool
from fedsim.state import ClientStateStore
from fedsim.tracking import TIMING, read_metrics
from tests.fixtures import tiny_config


def rows_without_timing(run_dir: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in row.items() if k not in TIMING}
        for row in read_metrics(run_dir)
    ]


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return load_checkpoint(run_dir, cfg).global_tensors


def crash_after(cfg_dir: Path, rounds_done: int, *overrides: str) -> Path:
    """Run ``rounds_done`` rounds, then stop as a killed process would."""
    cfg = tiny_config(cfg_dir, *overrides)
    exp = Experiment(cfg, local_pool(cfg))
    for _ in range(rounds_done):
        exp.step()
    exp.close()  # no summary, no checkpoint beyond the last due one
    return exp.run_dir


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.param=pfedpara", "data.partition=shards"),
        ("server.strategy=fedadam",),
        ("server.strategy=scaffold",),
        (
            "model.param=pfedpara",
            "data.partition=shards",
            "comm.uplink.codec=int8",
            "comm.uplink.stochastic=true",
            "comm.uplink.error_feedback=true",
            "comm.downlink.codec=int8",
            "comm.downlink.error_feedback=true",
        ),
        (  # controls encoded both ways: residuals per channel on both sides
            "server.strategy=scaffold",
            "comm.uplink.codec=int8",
            "comm.uplink.stochastic=true",
            "comm.uplink.error_feedback=true",
            "comm.downlink.codec=int8",
            "comm.downlink.error_feedback=true",
        ),
    ],
    ids=["pfedpara", "fedadam", "scaffold", "pfedpara-int8", "scaffold-int8"],
)
def test_crash_between_checkpoints_resumes_exactly(
    tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    over = ["rounds=5", "log.checkpoint_every=3", *overrides]
    full = run_experiment(tiny_config(tmp_path / "full", *over), backend="local")
    run_dir = crash_after(tmp_path / "cut", 4, *over)  # checkpoint at 3, lost 4th
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]
    resumed = run_experiment(
        tiny_config(tmp_path / "cut", *over),
        backend="local",
        run_dir=run_dir,
        resume=True,
    )
    assert rows_without_timing(resumed.run_dir) == rows_without_timing(full.run_dir)
    a, b = final_tensors(full.run_dir), final_tensors(resumed.run_dir)
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=0, atol=0)
    # Per-client state: every client's newest version is the same.
    sa = ClientStateStore(full.run_dir / "client_state")
    sb = ClientStateStore(resumed.run_dir / "client_state")
    for client in range(6):
        ka, kb = sa.get(client), sb.get(client)
        assert ka.keys() == kb.keys()
        for ns in ka:
            for name, tensor in ka[ns].items():
                torch.testing.assert_close(tensor, kb[ns][name], rtol=0, atol=0)


def test_tensorboard_has_each_round_once_after_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    over = ("rounds=4", "log.checkpoint_every=2")
    run_dir = crash_after(tmp_path, 3, *over)
    run_experiment(
        tiny_config(tmp_path, *over), backend="local", run_dir=run_dir, resume=True
    )
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy")] == [0, 1, 2, 3]
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    comm_rounds = [
        yaml.safe_load(line)["round"]
        for line in (run_dir / "comm.jsonl").read_text().splitlines()
    ]
    assert comm_rounds == sorted(comm_rounds) and set(comm_rounds) == {0, 1, 2, 3}


def test_resume_with_a_different_model_is_refused(tmp_path: Path) -> None:
    first = run_experiment(tiny_config(tmp_path, "rounds=1"), backend="local")
    changed = tiny_config(tmp_path, "rounds=2", "model.gamma=0.3")
    with pytest.raises(ConfigError, match=r"model\.gamma \(0\.5 -> 0\.3\)"):
        run_experiment(changed, backend="local", run_dir=first.run_dir, resume=True)


def test_a_tampered_checkpoint_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": 2, "evil": Payload()}, path)
    with pytest.raises(ConfigError, match="not a fedsim checkpoint"):
        load_checkpoint(tmp_path, {"seed": 0})
    assert not marker.exists()


def test_resumed_run_keeps_its_history(tmp_path: Path) -> None:
    first = run_experiment(tiny_config(tmp_path, "rounds=2"), backend="local")
    resumed = run_experiment(
        tiny_config(tmp_path, "rounds=3"),
        backend="local",
        run_dir=first.run_dir,
        resume=True,
    )
    # The wall time covers both sessions; config.yaml records the new rounds.
    assert resumed.summary.wall_seconds > first.summary.wall_seconds
    saved = yaml.safe_load((first.run_dir / "config.yaml").read_text())
    assert saved["rounds"] == 3
