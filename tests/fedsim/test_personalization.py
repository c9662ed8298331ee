"""Personalized evaluation: each client's own model on its own test split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsim.backend.local import LocalBackend
from fedsim.client import ClientRunner
from fedsim.data.transforms import prepare_batch
from fedsim.experiment import run_experiment
from fedsim.messages import LOCAL, MODEL
from fedsim.model import build_backbone, worker_spec
from fedsim.params import StateLayout, initial_state
from fedsim.tracking import read_metrics
from tests.fixtures import load_data, tiny_config

SHARDS = ["data.partition=shards", "data.num_clients=6", "server.clients_per_round=3"]


class ReadSpy(np.ndarray):
    """An array that records every index array it is read with, by phase."""

    reads: list[tuple[str, np.ndarray]]
    phase: list[str]

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, np.ndarray):
            self.reads.append((self.phase[0], idx.copy()))
        return np.asarray(self).__getitem__(idx)


def test_personal_splits_are_evaluated_and_never_trained_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(
        tmp_path,
        "model.param=pfedpara",
        "rounds=2",
        "server.personal_eval_trained_only=false",  # every client, trained or not
        *SHARDS,
    )
    data, partition = load_data(cfg)
    spy = np.asarray(data.x_train).view(ReadSpy)
    spy.reads, spy.phase = [], ["other"]

    class SpiedPool(LocalBackend):
        def load(self, request: Any) -> Any:  # the run's data, read through the spy
            return replace(data, x_train=spy), partition

    for method, phase in (("train", "train"), ("evaluate_client", "personal")):
        original = getattr(ClientRunner, method)

        def wrapped(self: Any, *a: Any, _o: Any = original, _p: str = phase) -> Any:
            spy.phase[0] = _p
            try:
                return _o(self, *a)
            finally:
                spy.phase[0] = "other"

        monkeypatch.setattr(ClientRunner, method, wrapped)

    pool = lambda cfg: SpiedPool(worker_spec(cfg))  # noqa: E731
    result = run_experiment(cfg, backend="local", make_pool=pool)

    test_indices = set(np.concatenate(partition.test).tolist())
    assert test_indices, "pFedPara runs carve personal test splits by default"
    trained = {int(i) for phase, idx in spy.reads if phase == "train" for i in idx}
    evaluated = [idx for phase, idx in spy.reads if phase == "personal"]
    assert trained and not trained & test_indices
    # Every evaluated round reads each client's personal split exactly once.
    assert sorted(np.concatenate(evaluated).tolist()) == sorted(
        list(test_indices) * cfg.rounds
    )
    rows = read_metrics(result.run_dir)
    assert all(r["personal_clients"] == cfg.data.num_clients for r in rows)
    assert all(r["personal_accuracy"] is not None for r in rows)


def test_pfedpara_global_model_is_w1_alone(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=pfedpara", *SHARDS)
    data, partition = load_data(cfg)
    model = build_backbone(cfg, 10, (1, 8, 8))
    layout = StateLayout.of(model)
    runner = ClientRunner(worker_spec(cfg), data, partition, layout)
    glob = initial_state(model, layout)
    ev = runner.evaluate(glob, 64)
    # Reference: W2's factors set to zero, so W = W1 ⊙ (0 + 1) = W1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in layout.local_names:
                p.zero_()
        x = prepare_batch(torch.tensor(data.x_test), data.info, train=False)
        predicted = model(x).argmax(dim=1).numpy()
    assert ev.correct == int((predicted == data.y_test).sum())
    assert layout.local_names, "pFedPara keeps W2 local"


def test_personal_evaluation_uses_the_clients_own_local_part(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=pfedpara", *SHARDS)
    data, partition = load_data(cfg)
    model = build_backbone(cfg, 10, (1, 8, 8))
    layout = StateLayout.of(model)
    runner = ClientRunner(worker_spec(cfg), data, partition, layout)
    glob = initial_state(model, layout)
    from tests.fixtures import tiny_task

    update = runner.train(tiny_task(2, epochs=3), {MODEL: glob}, {})
    own = runner.evaluate_client(2, update.upload[MODEL], update.keep, 64)
    # Reference: the trained client's full model, applied directly.
    with torch.no_grad():
        model.load_state_dict({**update.upload[MODEL], **update.keep[LOCAL]})
        idx = partition.test[2]
        x = prepare_batch(torch.tensor(data.x_train[idx]), data.info, train=False)
        predicted = model(x).argmax(dim=1).numpy()
    assert own.num_examples == len(idx) > 0
    assert own.correct == int((predicted == data.y_train[idx]).sum())


def test_personal_evaluation_samples_clients_per_round(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        "model.param=pfedpara",
        "server.personal_eval_clients=2",
        "rounds=3",
        *SHARDS,
    )
    rows = read_metrics(run_experiment(cfg, backend="local").run_dir)
    # two sampled per round: scored if they trained, else counted as untrained
    assert [r["personal_clients"] + r["personal_untrained"] for r in rows] == [2] * 3


@pytest.mark.parametrize(
    ("overrides", "modes"),
    [
        ((), (True, False)),
        (("model.param=pfedpara",), (True, True)),
        (("server.strategy=fedper",), (False, True)),
        (("server.strategy=local_only",), (False, True)),
        (("server.evaluate=both", "data.client_test_fraction=0.1"), (True, True)),
    ],
)
def test_evaluation_modes(
    tmp_path: Path, overrides: tuple[str, ...], modes: tuple[bool, bool]
) -> None:
    cfg = tiny_config(tmp_path, *overrides)
    assert cfg.evaluates == modes
    local_state = cfg.model.param == "pfedpara" or cfg.server.strategy != "fedavg"
    if "data.client_test_fraction=0.1" not in overrides:
        assert cfg.personal_test_fraction == (0.2 if local_state else 0.0)


def test_personal_evaluation_without_personal_data_is_refused(tmp_path: Path) -> None:
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.client_test_fraction"):
        tiny_config(tmp_path, "server.evaluate=personal")


@pytest.mark.slow
def test_pfedpara_personalizes_beyond_the_global_fedpara_model(tmp_path: Path) -> None:
    from fedsim.config import load_config
    from tests.fixtures import REPO

    runs = {}
    for name in ("fedavg", "pfedpara"):
        cfg = load_config(
            REPO / "configs" / "personalization" / f"quickstart_{name}.yaml",
            [f"log.root={tmp_path}", "log.progress=false", "log.tensorboard=false"],
        )
        runs[name] = run_experiment(cfg, backend="local")
    fedavg, pfedpara = (runs[n].summary for n in ("fedavg", "pfedpara"))
    # The same split for both: 2 label shards per client, 20% personal test data.
    assert pfedpara.final_personal_accuracy > fedavg.final_accuracy
    ratio = pfedpara.total_bytes / fedavg.total_bytes
    assert 0.45 < ratio < 0.55, ratio  # W2's factors never travel
