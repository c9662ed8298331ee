"""The driver's side of the protocol, on the boring backend (milliseconds each)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fedsim.checkpoint import load_checkpoint, save_checkpoint
from fedsim.driver import RoundFailed
from fedsim.messages import MODEL, ClientFailure, ClientTask, ClientUpdate
from fedsim.registry import STRATEGIES
from fedsim.strategy import ClientPlan
from tests.fedsim.fakes import COUNT, BoringBackend, boring_driver

MODEL_BYTES = 2 * 4 + 3 * 4 + 8  # w (2 floats), b (3 floats), n (one int64)


def clients_rows(tmp_path: Path) -> list[dict]:
    path = tmp_path / "run" / "clients.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_round_counts_every_channel_and_keeps_states_after_aggregating(
    tmp_path: Path,
) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend)
    state, metrics = driver.run_round(state)
    cohort = [t.client_id for t in backend.tasks]
    assert metrics.bytes_down == metrics.bytes_up == 3 * MODEL_BYTES
    assert metrics.bytes_by_channel == {
        "model": {"down": 3 * MODEL_BYTES, "up": 3 * MODEL_BYTES}
    }
    # FedAvg of w + 0.1 (i + 1), weighted by 10 (i + 1) examples
    weights = [10 * (c + 1) for c in cohort]
    mean = sum(w * 0.1 * (c + 1) for w, c in zip(weights, cohort, strict=True))
    torch.testing.assert_close(
        state.global_tensors["w"], torch.full((2,), mean / sum(weights))
    )
    assert int(state.global_tensors["n"]) == 5  # a counter is not averaged
    for c in cohort:
        assert driver.store.get(c)[COUNT]["n"].item() == 1
    rows = clients_rows(tmp_path)
    assert [r["client"] for r in rows] == cohort
    assert all(r["status"] == "ok" and r["steps"] == r["client"] + 1 for r in rows)


def test_a_rejected_reply_counts_its_bytes_but_neither_its_model_nor_its_state(
    tmp_path: Path,
) -> None:
    def poison_first(task: ClientTask, result):  # type: ignore[no-untyped-def]
        if task is backend.tasks[0]:
            bad = {
                k: torch.full_like(v, float("nan"))
                for k, v in result.upload[MODEL].items()
                if k != "n"
            }
            return dataclasses.replace(
                result, upload={MODEL: {**result.upload[MODEL], **bad}}
            )
        return result

    backend = BoringBackend(poison_first)
    driver, state = boring_driver(tmp_path, backend)
    state, metrics = driver.run_round(state)
    first = backend.tasks[0].client_id
    assert metrics.bytes_up == 3 * MODEL_BYTES  # it travelled
    assert (metrics.num_clients, metrics.num_failed) == (2, 1)
    assert torch.isfinite(state.global_tensors["w"]).all()
    assert driver.store.get(first) == {}
    (row,) = [r for r in clients_rows(tmp_path) if r["client"] == first]
    assert row["status"] == "rejected" and "non-finite" in row["reason"]


def test_what_a_failed_attempt_kept_is_never_committed(tmp_path: Path) -> None:
    tries: list[int] = []

    def first_attempt_loses_one(task: ClientTask, result):  # type: ignore[no-untyped-def]
        tries.append(task.client_id)
        if len(tries) == 1:
            return ClientFailure(client_id=task.client_id, reason="lost")
        return result

    backend = BoringBackend(first_attempt_loses_one)
    driver, state = boring_driver(tmp_path, backend, "server.min_clients=3")
    _, metrics = driver.run_round(state)
    assert tries[:3] == tries[3:]  # the same cohort, twice
    assert metrics.bytes_down == 2 * 3 * MODEL_BYTES
    assert metrics.bytes_up == (2 + 3) * MODEL_BYTES
    for c in tries[:3]:  # one participation each: the first attempt's is void
        assert driver.store.get(c)[COUNT]["n"].item() == 1


def test_nothing_to_aggregate_runs_the_round_again_then_stops(tmp_path: Path) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend, "server.max_round_retries=1")
    real = driver.strategy.aggregate_train
    calls: list[list[ClientUpdate]] = []

    def declines_once(r, g, s, updates):  # type: ignore[no-untyped-def]
        calls.append(list(updates))
        return None if len(calls) == 1 else real(r, g, s, updates)

    driver.strategy.aggregate_train = declines_once  # type: ignore[method-assign]
    _, metrics = driver.run_round(state)
    assert len(calls) == 2 and metrics.num_clients == 3
    assert all(u.keep == {} for u in calls[0])  # kept state stays with the driver
    driver.strategy.aggregate_train = lambda *a: None  # type: ignore[method-assign]
    with pytest.raises(RoundFailed, match="2 tries"):
        driver.run_round(state)


def test_per_client_instructions_reach_their_client_and_their_bytes(
    tmp_path: Path,
) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend)
    configure = driver.strategy.configure_train
    hint = {"hint": {"h": torch.zeros(4)}}  # 16 bytes, for one client only

    def per_client(r, g, s, cohort):  # type: ignore[no-untyped-def]
        plan = configure(r, g, s, cohort)
        special = ClientPlan(
            hparams=dataclasses.replace(plan.hparams, lr=0.5), payload=hint
        )
        return dataclasses.replace(plan, clients={cohort[1]: special})

    driver.strategy.configure_train = per_client  # type: ignore[method-assign]
    _, metrics = driver.run_round(state)
    tasks = backend.tasks
    assert [t.hparams.lr for t in tasks] == [0.05, 0.5, 0.05]
    assert [set(t.payload) for t in tasks] == [set(), {"hint"}, set()]
    assert metrics.bytes_down == 3 * MODEL_BYTES + 16
    assert metrics.bytes_by_channel["hint"] == {"down": 16, "up": 0}


@pytest.mark.parametrize(
    ("strategy", "channel", "up_bytes", "metric"),
    [
        ("scaffold", "control", 3 * (2 + 3) * 4, "control_norm"),
        ("fednova", "steps", 3 * 4, "tau_eff"),
    ],
)
def test_extra_channels_and_strategy_metrics(
    tmp_path: Path, strategy: str, channel: str, up_bytes: int, metric: str
) -> None:
    driver, state = boring_driver(
        tmp_path, BoringBackend(), f"server.strategy={strategy}"
    )
    state, metrics = driver.run_round(state)
    assert metrics.bytes_by_channel[channel]["up"] == up_bytes
    assert metric in metrics.strategy and metrics.strategy[metric] > 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["strategy"] == metrics.strategy


def test_every_kind_of_bad_reply_is_that_clients_failure(tmp_path: Path) -> None:
    """A NaN kept state, a missing tensor, a crash: recorded, never absorbed."""

    def bad(task: ClientTask, result):  # type: ignore[no-untyped-def]
        i = [t.client_id for t in backend.tasks].index(task.client_id)
        if i == 0:  # a clean upload, but a NaN in what it keeps
            nan = {COUNT: {"n": torch.tensor(float("nan"))}}
            return dataclasses.replace(result, keep=nan)
        if i == 1:
            model = {k: v for k, v in result.upload[MODEL].items() if k != "b"}
            return dataclasses.replace(result, upload={MODEL: model})
        return ClientFailure(client_id=task.client_id, reason="simulated crash")

    backend = BoringBackend(bad)
    driver, state = boring_driver(tmp_path, backend, "server.max_round_retries=0")
    with pytest.raises(RoundFailed, match="0 of 3") as info:
        driver.run_round(state)
    assert "simulated crash" in str(info.value)
    assert all(driver.store.get(t.client_id) == {} for t in backend.tasks)
    # The same replies beside a good one: the round aggregates the good one alone.
    backend = BoringBackend(lambda t, r: bad(t, r) if t.client_id != 5 else r)
    driver, state = boring_driver(tmp_path / "again", backend)
    state, metrics = driver.run_round(state)
    rows = {r["client"]: r for r in clients_rows(tmp_path / "again")}
    statuses = sorted(r["status"] for r in rows.values())
    assert metrics.num_clients == 1 and statuses == ["ok", "rejected", "rejected"]
    assert any(
        "non-finite values in kept state" in r.get("reason", "") for r in rows.values()
    )
    assert any("missing ['b']" in r.get("reason", "") for r in rows.values())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_rounds_through_the_driver(
    tmp_path: Path, strategy: str
) -> None:
    """Two rounds of each strategy: the plan, the replies and the state hold up."""
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend, f"server.strategy={strategy}")
    spec = STRATEGIES[strategy]
    for _ in range(2):
        state, metrics = driver.run_round(state)
        assert metrics.num_clients == 3 and metrics.num_failed == 0
        sends = strategy != "local_only"  # the one strategy that sends nothing
        expected = {"model", *spec.channels} if sends else set()
        assert set(metrics.bytes_by_channel) == expected
        assert all(
            torch.isfinite(t.double()).all() for t in state.global_tensors.values()
        )
    assert state.round == 2
    kept = driver.store.get(backend.tasks[-1].client_id)
    assert kept[COUNT]["n"].item() >= 1  # what clients keep reaches the store


@pytest.mark.parametrize("trained_only", [True, False])
def test_personal_accuracy_scores_only_clients_that_trained_and_counts_the_rest(
    tmp_path: Path, trained_only: bool
) -> None:
    # Prepare: 6 clients, 3 per round, every client evaluated after each round.
    backend = BoringBackend()
    driver, state = boring_driver(
        tmp_path,
        backend,
        "server.evaluate=personal",
        "data.client_test_fraction=0.2",
        f"server.personal_eval_trained_only={str(trained_only).lower()}",
    )
    # Execute: two rounds
    state, first = driver.run_round(state)
    state, second = driver.run_round(state)
    # Assert: the clients scored are those aggregated so far (or all six)
    trained = sorted({t.client_id for t in backend.tasks})
    assert state.trained == frozenset(trained)
    if trained_only:
        assert (first.personal_clients, first.personal_untrained) == (3, 3)
        assert (second.personal_clients, second.personal_untrained) == (
            len(trained),
            6 - len(trained),
        )
    else:
        assert (first.personal_clients, first.personal_untrained) == (6, 0)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["personal_clients"] + row["personal_untrained"] == 6
    # the set survives a checkpoint
    config = {"name": "any"}
    save_checkpoint(tmp_path / "run", state, config)
    assert load_checkpoint(tmp_path / "run", config).trained == state.trained


def test_a_strategys_extra_model_is_evaluated_and_logged(tmp_path: Path) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(
        tmp_path,
        backend,
        "server.strategy=feddyn",
        "server.settings.all_client_mean=true",
    )
    _, metrics = driver.run_round(state)
    # the boring backend scores every model 1 of 2 right
    assert metrics.extra_accuracy == {"all_client_mean": 0.5}
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["extra_accuracy"] == {"all_client_mean": 0.5}
