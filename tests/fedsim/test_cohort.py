"""Training clients together: K clients per vectorized step = K clients in turn."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsim.algorithm import ClientAlgorithm
from fedsim.cli import main
from fedsim.client import ClientRunner
from fedsim.cohort import SLOT_OCCUPANCY, CohortTrainer, occupancy_of
from fedsim.config import ConfigError
from fedsim.data import Partition
from fedsim.messages import (
    LOCAL,
    MODEL,
    Channels,
    ClientTask,
    ClientUpdate,
    EvalResult,
)
from fedsim.model import build_backbone, check_slots_fit, worker_spec
from fedsim.params import StateLayout, initial_state, last_layer_names
from fedsim.strategy.feddyn import FedDynClient
from fedsim.strategy.fednova import FedNovaClient
from fedsim.strategy.fedprox import FedProxClient
from fedsim.strategy.scaffold import ScaffoldClient
from fedsim.train_step import EagerRecorder
from tests.fixtures import QUICKSTART, TINY, load_data, tiny_config, tiny_task

ALGORITHMS = {
    "fedavg": ClientAlgorithm(),
    "fedprox": FedProxClient(mu=0.5),
    "scaffold": ScaffoldClient(),
    "feddyn": FedDynClient(alpha=0.1),
    "fednova": FedNovaClient(),  # its step count, from each slot's own steps
}
MODELS = {  # the quickstart's digits MLP; a small CNN with FedPara convolutions
    "digits_mlp": (),
    "fedpara_cnn": (
        "data.name=synthetic_cifar",
        "data.synthetic_train=96",
        "data.synthetic_test=8",
        "model.arch=cnn",
        "model.gamma=0.1",
    ),
}


def _runner(cfg_overrides: tuple[str, ...], tmp_path: Path) -> ClientRunner:
    cfg = tiny_config(tmp_path, *cfg_overrides)
    data, part = load_data(cfg)
    info = data.info
    model = build_backbone(cfg, info.num_classes, info.input_shape)
    return ClientRunner(worker_spec(cfg), data, part, StateLayout.of(model))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _assert_same(got: ClientUpdate, want: ClientUpdate, rtol: float = 1e-5) -> None:
    """Same steps, uploads and kept state, to ``rtol`` relative.

    Model tensors (sent and kept) are compared one by one; the algorithms'
    channels (SCAFFOLD's ``dc_i``, its ``c_i``, FedDyn's ``g_i``) are
    differences of displacements, where a tensor that barely moved is float
    noise on both sides: those are compared by the channel's whole norm;
    integer channels (FedNova's step counts) exactly.
    """
    assert got.client_id == want.client_id
    assert np.isfinite(want.train_loss)  # a diverged reference compares nothing
    assert got.steps == want.steps and got.num_examples == want.num_examples
    assert got.train_loss == pytest.approx(want.train_loss, rel=rtol)
    for side in ("upload", "keep"):
        mine, theirs = getattr(got, side), getattr(want, side)
        assert mine.keys() == theirs.keys(), side
        for channel, tensors in theirs.items():
            assert mine[channel].keys() == tensors.keys(), (side, channel)
            if channel in (MODEL, LOCAL):
                for name, t in tensors.items():
                    assert _rel(mine[channel][name], t) <= rtol, (side, channel, name)
                continue
            a = torch.cat([mine[channel][n].flatten() for n in tensors])
            b = torch.cat([t.flatten() for t in tensors.values()])
            if not b.is_floating_point():  # counts (FedNova's steps): exactly
                assert torch.equal(a, b) and b.sum() > 0, (side, channel)
                continue
            assert b.norm() > 0 and _rel(a, b) <= rtol, (side, channel)


def _control(payload: Channels, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: 0.01 * torch.randn(t.shape, generator=gen)
        for n, t in payload[MODEL].items()
        if t.is_floating_point()
    }


def _own(name: str, client: int) -> ClientAlgorithm:
    """Client ``client``'s algorithm: FedDyn's alpha differs by client (as
    with ``server.weighting=examples``), which the vectorized step shares."""
    if name == "feddyn":
        return FedDynClient(alpha=0.05 * (1 + client))
    return ALGORITHMS[name]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_four_clients_at_once_reply_as_one_at_a_time(
    tmp_path: Path, model: str, name: str
) -> None:
    """Six clients, four slots (two refills): per client the uploads and kept
    state of sequential training, with momentum and weight decay, from kept
    states that are not zero (each client's second round)."""
    runner = _runner(MODELS[model], tmp_path)
    layout = runner.layout
    payload: Channels = {MODEL: initial_state(runner.module.model, layout)}
    payload = {**payload, "control": _control(payload, 1)}
    hp = {"momentum": 0.5, "weight_decay": 1e-3}
    tasks = [
        dataclasses.replace(
            tiny_task(c, lr=0.02 + 0.005 * c, **hp), algorithm=_own(name, c)
        )
        for c in range(6)
    ]
    first = {t.client_id: runner.train(t, payload, {}) for t in tasks}
    kept = {c: dict(u.keep) for c, u in first.items()}
    # The next round starts elsewhere, so SCAFFOLD's dc_i is not 0 + noise.
    payload = {MODEL: dict(first[0].upload[MODEL]), "control": _control(payload, 2)}
    want = [runner.train(t, payload, kept[t.client_id]) for t in tasks]

    together = CohortTrainer(runner, 4)
    got = together.train_in_order([(t, kept[t.client_id]) for t in tasks], payload)
    for mine, theirs in zip(got, want, strict=True):
        assert isinstance(mine, ClientUpdate), mine
        _assert_same(mine, theirs)
        assert mine.metrics[SLOT_OCCUPANCY] == together.last_run.occupancy(4)
    assert len({u.steps for u in want}) > 1  # unequal clients: refill was exercised


def test_pfedpara_local_parts_are_rows_of_their_own(tmp_path: Path) -> None:
    """pFedPara: W2 stays per client (kept), W1 travels; both as sequential."""
    runner = _runner(("model.param=pfedpara",), tmp_path)
    layout = runner.layout
    assert layout.local_names  # W2 factors are kept, not sent
    payload: Channels = {MODEL: initial_state(runner.module.model, layout)}
    tasks = [tiny_task(c) for c in range(5)]
    first = {t.client_id: runner.train(t, payload, {}) for t in tasks}
    kept = {c: dict(u.keep) for c, u in first.items()}
    assert all(LOCAL in k for k in kept.values())
    want = [runner.train(t, payload, kept[t.client_id]) for t in tasks]
    got = CohortTrainer(runner, 4).train_in_order(
        [(t, kept[t.client_id]) for t in tasks], payload
    )
    for mine, theirs in zip(got, want, strict=True):
        assert isinstance(mine, ClientUpdate), mine
        _assert_same(mine, theirs)


@pytest.mark.parametrize("kind", ["fedper", "local_only"])
def test_kept_heads_and_local_models_are_rows_of_their_own(
    tmp_path: Path, kind: str
) -> None:
    """FedPer's head and a local-only model stay per client, as sequential."""
    cfg = tiny_config(tmp_path)
    data, part = load_data(cfg)
    model = build_backbone(cfg, 10, (1, 8, 8))
    head = last_layer_names(model, 1)
    layout = StateLayout.of(
        model, head if kind == "fedper" else frozenset(model.state_dict())
    )
    runner = ClientRunner(worker_spec(cfg), data, part, layout)
    payload: Channels = {MODEL: initial_state(model, layout)}
    assert bool(payload[MODEL]) == (kind == "fedper")
    tasks = [tiny_task(c) for c in range(5)]
    first = {t.client_id: runner.train(t, payload, {}) for t in tasks}
    kept = {c: dict(u.keep) for c, u in first.items()}
    want = [runner.train(t, payload, kept[t.client_id]) for t in tasks]
    got = CohortTrainer(runner, 4).train_in_order(
        [(t, kept[t.client_id]) for t in tasks], payload
    )
    for mine, theirs in zip(got, want, strict=True):
        assert isinstance(mine, ClientUpdate), mine
        assert set(mine.keep[LOCAL]) >= head
        _assert_same(mine, theirs)


def _sized_runner(tmp_path: Path, sizes: list[int]) -> ClientRunner:
    """A runner whose clients hold ``sizes`` examples (batch 16: steps = size/16)."""
    runner = _runner((), tmp_path)
    offsets = np.cumsum([0, *sizes])
    train = tuple(np.arange(lo, hi) for lo, hi in itertools.pairwise(offsets))
    runner.partition = Partition(train, tuple(np.array([], int) for _ in sizes))
    return runner


def test_unequal_clients_with_slot_refill_train_exactly_their_own_steps(
    tmp_path: Path,
) -> None:
    """Clients of 3, 11 and 3 steps on two slots: the 11-step one (queued
    first, longest first) takes a slot, the 3-step ones the other in turn.

    That slot then idles for 5 masked steps: momentum and weight decay must
    leave it where it was. Every client ends where it ends alone.
    """
    runner = _sized_runner(tmp_path, [48, 176, 40])  # 3, 11, 3 steps of 16
    payload: Channels = {MODEL: initial_state(runner.module.model, runner.layout)}
    hp = {"momentum": 0.9, "weight_decay": 1e-2}
    tasks = [tiny_task(c, **hp) for c in range(3)]
    want = [runner.train(t, payload, {}) for t in tasks]
    assert [u.steps for u in want] == [3, 11, 3]
    together = CohortTrainer(runner, 2)
    got = together.train_in_order([(t, {}) for t in tasks], payload)
    for mine, theirs in zip(got, want, strict=True):
        assert isinstance(mine, ClientUpdate), mine
        _assert_same(mine, theirs)
    assert together.last_run.steps_run == 11  # the refill ran beside the long one
    assert together.last_run.occupancy(2) == pytest.approx(17 / 22)


def test_the_same_cohort_and_k_repeat_exactly(tmp_path: Path) -> None:
    runner = _runner((), tmp_path)
    payload: Channels = {MODEL: initial_state(runner.module.model, runner.layout)}
    jobs = [(tiny_task(c), {}) for c in range(5)]
    first = CohortTrainer(runner, 3).train_in_order(jobs, payload)
    again = CohortTrainer(runner, 3).train_in_order(jobs, payload)
    for a, b in zip(first, again, strict=True):
        assert isinstance(a, ClientUpdate) and isinstance(b, ClientUpdate)
        for name, t in a.upload[MODEL].items():
            assert torch.equal(t, b.upload[MODEL][name]), name


def test_a_client_whose_state_does_not_fit_fails_alone(tmp_path: Path) -> None:
    runner = _runner((), tmp_path)
    payload: Channels = {MODEL: initial_state(runner.module.model, runner.layout)}
    name = next(iter(payload[MODEL]))
    bad: ClientTask = dataclasses.replace(
        tiny_task(1), payload={MODEL: {**payload[MODEL], name: torch.zeros(1)}}
    )
    got = CohortTrainer(runner, 2).train_in_order(
        [(tiny_task(0), {}), (bad, {}), (tiny_task(2), {})], payload
    )
    assert [type(r).__name__ for r in got] == [
        "ClientUpdate",
        "ClientFailure",
        "ClientUpdate",
    ]
    assert "size mismatch" in getattr(got[1], "reason", "")


def test_occupancy_counts_the_slot_steps_that_trained() -> None:
    assert occupancy_of([4, 4], slots=2, steps_run=4) == 1.0
    assert occupancy_of([3, 11], slots=2, steps_run=11) == pytest.approx(14 / 22)


def test_a_k_that_cannot_fit_the_declared_slice_is_refused(tmp_path: Path) -> None:
    slice_ = ("resources.gpus_per_client=0.5", "resources.gpu_memory_gb=0.01")
    cfg = tiny_config(tmp_path, "resources.clients_per_actor=4", *slice_)
    model = build_backbone(cfg, 10, (1, 8, 8))
    check_slots_fit(cfg, model)  # 4 quickstart clients fit in 5 MiB
    too_many = tiny_config(tmp_path, "resources.clients_per_actor=4096", *slice_)
    with pytest.raises(ConfigError, match=r"clients_per_actor.*at most \d+"):
        check_slots_fit(too_many, model)
    cpu = tiny_config(tmp_path, "resources.clients_per_actor=4096")
    check_slots_fit(cpu, model)  # a CPU slice has no GPU memory to check


def _rows(run_dir: Path, file: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / file).read_text().splitlines() if x]


def test_fedsim_run_trains_k_clients_per_actor_end_to_end(tmp_path: Path) -> None:
    """`fedsim run ... resources.clients_per_actor=4` (in process), pFedPara: the
    driver, strategy, kept-state store and personal evaluation see the same
    replies as with K=1, with the occupancy beside."""
    argv = ["run", str(QUICKSTART), "--backend", "local", *TINY, "rounds=2"]
    common = [
        *argv,
        f"log.root={tmp_path}",
        "server.clients_per_round=6",
        "model.param=pfedpara",
    ]
    assert main([*common, "name=k1"]) == 0
    assert main([*common, "name=k4", "resources.clients_per_actor=4"]) == 0
    (k1,), (k4,) = (tmp_path / "k1").iterdir(), (tmp_path / "k4").iterdir()
    one, four = _rows(k1, "clients.jsonl"), _rows(k4, "clients.jsonl")
    assert [r["client"] for r in four] == [r["client"] for r in one]
    assert all(0 < r[SLOT_OCCUPANCY] <= 1 for r in four)
    assert all(SLOT_OCCUPANCY not in r for r in one)
    for a, b in zip(four, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for want, got in zip(
        _rows(k1, "metrics.jsonl"), _rows(k4, "metrics.jsonl"), strict=True
    ):
        assert got["personal_clients"] == want["personal_clients"] > 0
        for key in ("accuracy", "personal_accuracy"):  # a test example or two
            assert got[key] == pytest.approx(want[key], abs=2 / 360), key


def test_fedsim_run_refuses_a_k_that_cannot_fit_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", str(QUICKSTART), "--backend", "local", *TINY, f"log.root={tmp_path}"]
    slice_ = ["resources.gpus_per_client=0.5", "resources.gpu_memory_gb=0.01"]
    assert main([*argv, *slice_, "resources.clients_per_actor=4096"]) == 2
    assert (
        "resources.clients_per_actor: 4096 clients at once" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_ray_actors_train_their_clients_together(
    tmp_path: Path, ray_session: object
) -> None:
    """Two Ray actors, two clients at once each: the global model of K=1."""
    from fedsim.checkpoint import load_checkpoint
    from fedsim.experiment import run_experiment

    base = ("rounds=2", "server.clients_per_round=4")
    together = tiny_config(
        tmp_path / "ray",
        *base,
        "resources.num_actors=2",
        "resources.clients_per_actor=2",
    )
    alone = tiny_config(tmp_path / "local", *base)
    runs = [
        run_experiment(together, backend="ray"),
        run_experiment(alone, backend="local"),
    ]
    got, want = (
        load_checkpoint(run.run_dir, cfg.to_dict()).global_tensors
        for run, cfg in zip(runs, (together, alone), strict=True)
    )
    for name, t in want.items():
        if t.is_floating_point():
            assert _rel(got[name], t) <= 1e-5, name
    rows = _rows(runs[0].run_dir, "clients.jsonl")
    assert len(rows) == 8 and all(SLOT_OCCUPANCY in r for r in rows)


@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
def test_the_recorded_vectorized_step_trains_as_the_eager_one(
    tmp_path: Path, name: str
) -> None:
    """``resources.cuda_graph``'s machinery, replayed eagerly on the CPU.

    The step is recorded once (warm-up on empty slots must move nothing),
    then replayed over static batch tensors for two calls in a row: every
    client ends where it ends alone.
    """
    runner = _runner((), tmp_path)
    payload: Channels = {MODEL: initial_state(runner.module.model, runner.layout)}
    payload = {**payload, "control": _control(payload, 1)}
    algorithm = ALGORITHMS[name]
    hp = {"momentum": 0.9, "weight_decay": 1e-3}
    tasks = [
        dataclasses.replace(tiny_task(c, **hp), algorithm=algorithm) for c in range(5)
    ]
    want = [runner.train(t, payload, {}) for t in tasks]
    runner.engine.capture = True  # as on a GPU, recorded by EagerRecorder
    runner.engine.recorder = EagerRecorder()
    together = CohortTrainer(runner, 3)
    for _ in range(2):  # recorded on the first call, replayed on the second
        got = together.train_in_order([(t, {}) for t in tasks], payload)
        for mine, theirs in zip(got, want, strict=True):
            assert isinstance(mine, ClientUpdate), mine
            _assert_same(mine, theirs)
    assert together._step is not None and together._step._replay is not None


def test_personal_evaluation_k_at_a_time_scores_as_one_at_a_time(
    tmp_path: Path,
) -> None:
    """pFedPara clients' own models on their own test splits (unequal sizes,
    refilled slots, batches padded): the sums of the sequential evaluation."""
    runner = _runner(
        ("model.param=pfedpara", "data.client_test_fraction=0.3"), tmp_path
    )
    glob = initial_state(runner.module.model, runner.layout)
    payload: Channels = {MODEL: glob}
    clients = list(range(6))
    kept = {c: dict(runner.train(tiny_task(c), payload, {}).keep) for c in clients}
    kept[5] = {}  # never trained: scored with the initial local part
    sizes = {len(runner.partition.test[c]) for c in clients}
    assert len(sizes) > 1 and max(sizes) > 7  # unequal, and more than one batch
    want = [runner.evaluate_client(c, glob, kept[c], batch_size=7) for c in clients]
    got = CohortTrainer(runner, 4).evaluate_clients(
        [(c, kept[c]) for c in clients], glob, batch_size=7
    )
    for mine, theirs in zip(got, want, strict=True):
        assert isinstance(mine, EvalResult), mine
        assert (mine.correct, mine.num_examples) == (
            theirs.correct,
            theirs.num_examples,
        )
        assert mine.loss_sum == pytest.approx(theirs.loss_sum, rel=1e-5)


@pytest.mark.slow
def test_a_compiled_vectorized_step_trains_as_the_eager_one(tmp_path: Path) -> None:
    """``resources.compile=default``: vmap over grad compiles as one graph,
    once per worker (about a minute on two cores), to the eager tensors."""
    eager = _runner((), tmp_path)
    compiled = _runner(("resources.compile=default",), tmp_path)
    payload: Channels = {MODEL: initial_state(eager.module.model, eager.layout)}
    jobs = [
        (dataclasses.replace(tiny_task(c), algorithm=ALGORITHMS["fedprox"]), {})
        for c in range(5)
    ]
    want = CohortTrainer(eager, 4).train_in_order(jobs, payload)
    together = CohortTrainer(compiled, 4)
    for call in range(2):
        got = together.train_in_order(jobs, payload)
        assert (together.last_run.setup_seconds > 0) == (call == 0)  # compiled once
        for mine, theirs in zip(got, want, strict=True):
            assert isinstance(mine, ClientUpdate) and isinstance(theirs, ClientUpdate)
            _assert_same(mine, theirs)
