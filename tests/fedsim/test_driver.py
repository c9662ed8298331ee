"""The round loop on the in-process backend: bytes, logs, failures, resume."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsim.backend.base import ClientResult, LocalStates
from fedsim.backend.local import LocalBackend
from fedsim.client import build_classifier
from fedsim.driver import client_seed, load_checkpoint, sample_cohort
from fedsim.experiment import make_backend, run_experiment
from fedsim.messages import ClientFailure, ClientTask, ClientUpdate
from fedsim.tracking import SCALARS, read_metrics
from tests.fixtures import tiny_config


def test_cohort_is_a_function_of_seed_and_round() -> None:
    a = sample_cohort(7, 3, 100, 10)
    assert a == sample_cohort(7, 3, 100, 10)
    assert a == sorted(a) and len(set(a)) == 10
    assert a != sample_cohort(7, 4, 100, 10)
    assert a != sample_cohort(8, 3, 100, 10)
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2) != client_seed(0, 1, 3)


def test_measured_bytes_equal_the_oracle(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=fedpara")
    result = run_experiment(cfg, backend="local")
    # Oracle, independent of the ledger: every parameter of a FedPara model travels.
    model = build_classifier(cfg, 10, (1, 8, 8)).model
    per_client = sum(p.numel() for p in model.parameters()) * 4
    expected = cfg.server.clients_per_round * per_client
    rows = read_metrics(result.run_dir)
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        assert row["bytes_down"] == row["bytes_up"] == expected
    assert rows[-1]["cumulative_bytes"] == 2 * expected * cfg.rounds
    assert result.summary["total_bytes"] == 2 * expected * cfg.rounds
    comm = (result.run_dir / "comm.jsonl").read_text().splitlines()
    assert len(comm) == cfg.rounds * cfg.server.clients_per_round
    assert {json.loads(line)["up"] for line in comm} == {per_client}


def test_pfedpara_sends_only_global_factors(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=pfedpara", "rounds=1")
    result = run_experiment(cfg, backend="local")
    model = build_classifier(cfg, 10, (1, 8, 8)).model
    local = {
        n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in {"x2", "y2"}
    }
    assert local, "pfedpara model must have local factors"
    travelling = sum(p.numel() for n, p in model.named_parameters() if n not in local)
    row = read_metrics(result.run_dir)[0]
    assert row["bytes_up"] == cfg.server.clients_per_round * travelling * 4
    saved = sorted((result.run_dir / "client_state").glob("*.pt"))
    assert len(saved) == cfg.server.clients_per_round
    assert set(torch.load(saved[0], weights_only=True)) == local


def test_run_directory_and_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, "rounds=3")
    result = run_experiment(cfg, backend="local")
    run_dir = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "partition.json"):
        assert (run_dir / name).is_file(), name
    rows = read_metrics(run_dir)
    required = {
        "round",
        "accuracy",
        "loss",
        "train_loss",
        "bytes_up",
        "bytes_down",
        "cumulative_bytes",
        "num_clients",
        "num_failed",
        "round_seconds",
    }
    assert all(required <= row.keys() for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {
        "final_accuracy",
        "best_accuracy",
        "rounds",
        "total_bytes",
        "num_params",
    } <= summary.keys()
    assert summary["rounds"] == 3
    assert summary["final_accuracy"] == rows[-1]["accuracy"]

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in SCALARS:
        assert tag in tags, tag
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1, 2], tag
        assert [e.value for e in events] == pytest.approx(
            [row[tag] for row in rows], rel=1e-6
        ), tag
    vs_bytes = acc.Scalars("accuracy_vs_cumulative_kB")
    assert [e.step for e in vs_bytes] == [
        round(r["cumulative_bytes"] / 1e3) for r in rows
    ]
    assert "data/label_distribution" in acc.Tags()["images"]
    hparams = run_dir / "tb"
    assert any(hparams.iterdir())


class FlakyBackend(LocalBackend):
    """Per round: the first update is NaN, the second lacks a tensor, the last fails."""

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Any],
        local_state: LocalStates,
    ) -> Iterator[ClientResult]:
        for i, result in enumerate(super().train(tasks, payload, local_state)):
            if i == len(tasks) - 1:
                yield ClientFailure(result.client_id, "simulated crash")
            elif i == 0 and isinstance(result, ClientUpdate):
                bad = {
                    k: torch.full_like(v, float("nan"))
                    for k, v in result.tensors.items()
                }
                yield ClientUpdate(
                    result.client_id, bad, result.num_examples, 0, 0.0, 0.0
                )
            elif i == 1 and isinstance(result, ClientUpdate):
                partial = dict(list(result.tensors.items())[1:])
                yield ClientUpdate(result.client_id, partial, 5, 0, 0.0, 0.0)
            else:
                yield result


def test_failures_are_recorded_not_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedsim.experiment as experiment

    monkeypatch.setattr(experiment, "make_backend", lambda name, cfg: FlakyBackend(cfg))
    cfg = tiny_config(tmp_path, "server.clients_per_round=4")
    result = run_experiment(cfg, backend="local")
    for row in read_metrics(result.run_dir):
        assert row["num_failed"] == 3
        assert row["num_clients"] == 1
        assert row["accuracy"] == row["accuracy"]  # NaN never reached the model
    state = load_checkpoint(result.run_dir)
    assert all(torch.isfinite(t).all() for t in state.global_tensors.values())


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    full = run_experiment(tiny_config(tmp_path / "a", "rounds=3"), backend="local")
    part = run_experiment(tiny_config(tmp_path / "b", "rounds=2"), backend="local")
    resumed = run_experiment(
        tiny_config(tmp_path / "b", "rounds=3"),
        backend="local",
        run_dir=part.run_dir,
        resume=True,
    )
    a = read_metrics(full.run_dir)
    b = read_metrics(resumed.run_dir)
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert [r["cumulative_bytes"] for r in a] == [r["cumulative_bytes"] for r in b]
    sa, sb = load_checkpoint(full.run_dir), load_checkpoint(resumed.run_dir)
    for name, tensor in sa.global_tensors.items():
        torch.testing.assert_close(tensor, sb.global_tensors[name], rtol=0, atol=0)


def test_make_backend_local(tmp_path: Path) -> None:
    from fedsim.experiment import load_data

    cfg = tiny_config(tmp_path)
    data, part = load_data(cfg)
    with make_backend("local", cfg).attach(data, part) as backend:
        assert backend.num_workers == 1
        ev = backend.evaluate(
            {
                k: v
                for k, v in build_classifier(cfg, 10, (1, 8, 8))
                .model.state_dict()
                .items()
            }
        )
        assert 0.0 <= ev.accuracy <= 1.0 and ev.num_examples == len(data.y_test)


class DownBackend(LocalBackend):
    """Every client fails."""

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Any],
        local_state: LocalStates,
    ) -> Iterator[ClientResult]:
        for task in tasks:
            yield ClientFailure(task.client_id, "network down")


def test_a_round_where_every_client_fails_keeps_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedsim.experiment as experiment

    monkeypatch.setattr(experiment, "make_backend", lambda name, cfg: DownBackend(cfg))
    cfg = tiny_config(tmp_path, "rounds=1")
    result = run_experiment(cfg, backend="local")
    row = read_metrics(result.run_dir)[0]
    assert (row["num_failed"], row["num_clients"], row["bytes_up"]) == (3, 0, 0)
    initial = build_classifier(cfg, 10, (1, 8, 8)).model.state_dict()
    final = load_checkpoint(result.run_dir).global_tensors
    for name, tensor in final.items():
        torch.testing.assert_close(tensor, initial[name], rtol=0, atol=0)
