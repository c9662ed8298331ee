"""The round loop on the in-process backend: bytes, logs, failures, resume."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fedsim.backend.base import ClientResult, KeptStates
from fedsim.backend.local import LocalBackend
from fedsim.checkpoint import ServerState, load_checkpoint
from fedsim.config import Config
from fedsim.data.transforms import prepare_batch
from fedsim.driver import client_seed, sample_cohort
from fedsim.experiment import run_experiment
from fedsim.launch import local_pool
from fedsim.messages import ClientFailure, ClientTask, ClientUpdate
from fedsim.model import worker_spec
from fedsim.params import StateLayout
from fedsim.tracking import SCALARS, read_metrics
from tests.fixtures import run_model, tiny_config


def final_state(run_dir: Path) -> ServerState:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return load_checkpoint(run_dir, cfg)


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
    model = run_model(cfg)
    per_client = sum(p.numel() for p in model.parameters()) * 4
    expected = cfg.server.clients_per_round * per_client
    rows = read_metrics(result.run_dir)
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        assert row["bytes_down"] == row["bytes_up"] == expected
    assert rows[-1]["cumulative_bytes"] == 2 * expected * cfg.rounds
    assert result.summary.total_bytes == 2 * expected * cfg.rounds
    comm = (result.run_dir / "comm.jsonl").read_text().splitlines()
    assert len(comm) == cfg.rounds * cfg.server.clients_per_round
    assert {json.loads(line)["up"] for line in comm} == {per_client}


def test_pfedpara_sends_only_global_factors(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=pfedpara", "rounds=1")
    result = run_experiment(cfg, backend="local")
    model = run_model(cfg)
    local = {
        n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in {"x2", "y2"}
    }
    assert local, "pfedpara model must have local factors"
    travelling = sum(p.numel() for n, p in model.named_parameters() if n not in local)
    row = read_metrics(result.run_dir)[0]
    assert row["bytes_up"] == cfg.server.clients_per_round * travelling * 4
    saved = sorted((result.run_dir / "client_state").glob("*@0.pt"))
    assert len(saved) == cfg.server.clients_per_round
    kept = torch.load(saved[0], weights_only=True)
    assert set(kept) == {f"local/{name}" for name in local}


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
        if rows[0][tag] is None:  # not evaluated in this run: no events either
            assert tag not in tags and all(r[tag] is None for r in rows), tag
            continue
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


Rewrite = Callable[[int, int, ClientResult], ClientResult]


class FakeBackend(LocalBackend):
    """The in-process backend with each reply passed through ``rewrite``.

    ``rewrite(index, number_of_tasks, result)`` returns what the driver sees;
    ``accepted`` records the replies it left alone.
    """

    def __init__(self, cfg: Config, rewrite: Rewrite) -> None:
        super().__init__(worker_spec(cfg))
        self.rewrite = rewrite
        self.kept_alone: list[ClientUpdate] = []
        self.delivered: list[ClientUpdate] = []  # every update that arrived

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Any],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        for i, result in enumerate(super().train(tasks, payload, kept)):
            out = self.rewrite(i, len(tasks), result)
            if out is result and isinstance(result, ClientUpdate):
                self.kept_alone.append(result)
            if isinstance(out, ClientUpdate):
                self.delivered.append(out)
            yield out


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
    sa, sb = final_state(full.run_dir), final_state(resumed.run_dir)
    for name, tensor in sa.global_tensors.items():
        torch.testing.assert_close(tensor, sb.global_tensors[name], rtol=0, atol=0)


def test_global_evaluation_counts_correct_predictions(tmp_path: Path) -> None:
    from tests.fixtures import load_data

    cfg = tiny_config(tmp_path)
    data, part = load_data(cfg)
    model = run_model(cfg)
    layout = StateLayout.of(model)
    with local_pool(cfg).attach(data, part, layout) as backend:
        ev = backend.evaluate(dict(model.state_dict()), 64)
    # Reference: the same weights applied directly, without the runner.
    with torch.no_grad():
        x = prepare_batch(torch.tensor(data.x_test), data.info, train=False)
        predicted = model(x).argmax(dim=1).numpy()
    assert ev.num_examples == len(data.y_test)
    assert ev.correct == int((predicted == data.y_test).sum())


def every_client_fails(i: int, n: int, result: ClientResult) -> ClientResult:
    return ClientFailure(client_id=result.client_id, reason="network down")


def test_a_round_that_keeps_failing_stops_the_run_resumably(tmp_path: Path) -> None:
    from fedsim.loop import RunStopped

    cfg = tiny_config(tmp_path, "rounds=1", "server.max_round_retries=1")
    with pytest.raises(RunStopped, match=r"round 0: 0 of 3 clients .* 2 tries") as info:
        run_experiment(
            cfg,
            backend="local",
            make_pool=lambda cfg: FakeBackend(cfg, every_client_fails),
        )
    assert "network down" in str(info.value)
    assert "resume with: fedsim run --resume" in str(info.value)
    run_dir = info.value.run_dir
    assert run_dir is not None and read_metrics(run_dir) == []
    initial = run_model(cfg).state_dict()
    saved = final_state(run_dir)
    assert saved.round == 0
    for name, tensor in saved.global_tensors.items():
        torch.testing.assert_close(tensor, initial[name], rtol=0, atol=0)


def test_rounds_without_evaluation_log_null(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, "rounds=5", "server.eval_every=2")
    result = run_experiment(cfg, backend="local")
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # strict JSON: no NaN
    assert "NaN" not in "".join(lines)
    evaluated = [r["round"] for r in rows if r["accuracy"] is not None]
    assert evaluated == [1, 3, 4]  # every 2nd round and the last
    assert all(r["loss"] is None for r in rows if r["round"] not in evaluated)
    acc = EventAccumulator(str(result.run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy")] == evaluated
    assert result.summary.final_accuracy == rows[-1]["accuracy"]


def test_a_corrupt_client_state_file_fails_only_that_client(tmp_path: Path) -> None:
    over = ("model.param=pfedpara", "data.num_clients=3", "server.clients_per_round=3")
    first = run_experiment(tiny_config(tmp_path, "rounds=1", *over), backend="local")
    (first.run_dir / "client_state" / "1@0.pt").write_bytes(b"not a tensor file")
    resumed = run_experiment(
        tiny_config(tmp_path, "rounds=2", *over),
        backend="local",
        run_dir=first.run_dir,
        resume=True,
    )
    row = read_metrics(resumed.run_dir)[1]
    assert (row["num_failed"], row["num_clients"]) == (1, 2)
