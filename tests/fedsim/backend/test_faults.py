"""Faults in the Ray pool: dead and hung actors, evaluation, reservations.

The faults are injected through the tasks themselves: a task carries its
:class:`~fedsim.algorithm.ClientAlgorithm` to the actor (cloudpickle ships the
test-only subclasses below), whose ``begin`` can sleep or end the actor's
process while it is busy with that very task. Every slow test shares one
2-CPU Ray (``ray_module``) and stops its pool pass or fail.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fedsim.algorithm import ClientAlgorithm
from fedsim.backend.placement import node_capacity, pool_size
from fedsim.config import Config, ConfigError, ResourcesConfig, load_config
from fedsim.messages import ClientFailure, ClientTask, ClientUpdate
from tests.fixtures import QUICKSTART, run_model, tiny_config, tiny_task

# ------------------------------------------------------------------ no Ray


def test_each_node_holds_whole_slices_only() -> None:
    two_cpus = ResourcesConfig(cpus_per_client=2)
    # Cluster totals (6 CPUs) would say 3; each 3-CPU node holds one.
    assert [node_capacity(two_cpus, {"CPU": 3})] * 2 == [1, 1]
    assert pool_size(two_cpus, 10, [{"CPU": 3}, {"CPU": 3}]) == 2
    # A 0.4 slice fits twice in one GPU: 2 x 1-GPU nodes hold 4, not 5.
    frac = load_config(QUICKSTART, ["resources.gpus_per_client=0.4"])
    assert pool_size(frac.resources, 10, [{"CPU": 8, "GPU": 1}] * 2) == 4
    assert node_capacity(frac.resources, {"CPU": 8, "GPU": 2}) == 4
    assert node_capacity(frac.resources, {"CPU": 3, "GPU": 2}) == 3
    whole = ResourcesConfig(gpus_per_client=2)
    assert node_capacity(whole, {"CPU": 16, "GPU": 5}) == 2
    assert node_capacity(ResourcesConfig(cpus_per_client=0.1), {"CPU": 1}) == 10


def test_more_actors_than_the_nodes_hold_is_refused_with_the_fix() -> None:
    cfg = load_config(QUICKSTART, ["resources.num_actors=5"])
    with pytest.raises(ConfigError) as info:
        pool_size(cfg.resources, cfg.server.clients_per_round, [{"CPU": 1}, {"CPU": 1}])
    message = str(info.value)
    assert "holds 2 client actors of 1 CPU and 0 GPU each (per node: 1, 1)" in message
    assert "not 5; lower resources.num_actors" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("resources.client_timeout_s=0", "resources.client_timeout_s"),
        ("resources.placement_timeout_s=-1", "resources.placement_timeout_s"),
    ],
)
def test_timeouts_must_be_positive(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be > 0 seconds"):
        load_config(QUICKSTART, [override])
    assert load_config(QUICKSTART, ["resources.client_timeout_s=null"])


# ------------------------------------------------------------------ injected faults


class Sleep(ClientAlgorithm):
    """Test only: the client sleeps ``seconds`` before training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def begin(self, params: Any, payload: Any, kept: Any) -> None:
        time.sleep(self.seconds)


class DieOnce(ClientAlgorithm):
    """Test only: the first time, the client ends its actor's process mid-task."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def begin(self, params: Any, payload: Any, kept: Any) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)


def with_algo(task: ClientTask, algorithm: ClientAlgorithm) -> ClientTask:
    return replace(task, algorithm=algorithm)


@pytest.fixture
def pool_of(ray_module: Any) -> Iterator[Any]:
    """``pool_of(cfg, **options) -> (pool, payload)``: attached, shut down after."""
    from fedsim.backend.ray_pool import RayPool, pool_for
    from fedsim.messages import MODEL
    from fedsim.params import StateLayout, initial_state
    from tests.fixtures import load_data

    pools: list[RayPool] = []

    def make(cfg: Config, **options: Any) -> tuple[RayPool, Mapping[str, Any]]:
        data, part = load_data(cfg)
        model = run_model(cfg)
        layout = StateLayout.of(model)
        pools.append(pool_for(cfg, **options))
        return pools[-1].attach(data, part, layout), {
            MODEL: initial_state(model, layout)
        }

    try:
        yield make
    finally:
        for pool in pools:
            pool.shutdown()


def failures(results: list[Any]) -> dict[int, str]:
    return {r.client_id: r.reason for r in results if isinstance(r, ClientFailure)}


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_dead_actor_mid_round_costs_only_its_own_client(
    tmp_path: Path, pool_of: Any, retries: int
) -> None:
    cfg = tiny_config(
        tmp_path, "resources.num_actors=2", f"resources.max_client_retries={retries}"
    )
    pool, payload = pool_of(cfg)
    # Actor 0 is busy with client 0 (the head of the round) while actor 1
    # dies under client 1: before the fix, clients 2-5 drained onto the dead
    # actor and each of their failures started another actor.
    tasks = [
        with_algo(tiny_task(0), Sleep(3.0)),
        with_algo(tiny_task(1), DieOnce(tmp_path / "died")),
        *(tiny_task(c) for c in range(2, 6)),
    ]
    results = list(pool.train(tasks, payload, lambda _: {}))
    assert [r.client_id for r in results] == list(range(6))
    assert failures(results) == ({} if retries else {1: "its client actor died"})
    assert all(isinstance(r, ClientUpdate) for r in results if r.client_id != 1)
    assert pool.replacements == 1


@pytest.mark.slow
def test_hung_client_fails_with_its_reason_and_its_actor_is_replaced(
    tmp_path: Path, pool_of: Any
) -> None:
    cfg = tiny_config(
        tmp_path, "resources.num_actors=2", "resources.client_timeout_s=5"
    )
    pool, payload = pool_of(cfg)
    tasks = [tiny_task(0), with_algo(tiny_task(1), Sleep(600)), tiny_task(2)]
    started = time.monotonic()
    results = list(pool.train(tasks, payload, lambda _: {}))
    assert time.monotonic() - started < 60
    assert failures(results) == {1: "timed out after 5 s"}
    assert [type(r) for r in results] == [ClientUpdate, ClientFailure, ClientUpdate]
    assert pool.replacements == 1


@pytest.mark.slow
def test_no_actor_left_fails_the_tasks_instead_of_hanging(
    tmp_path: Path, pool_of: Any
) -> None:
    import ray

    cfg = tiny_config(
        tmp_path, "resources.num_actors=1", "resources.replacement_timeout_s=0.5"
    )
    # A replacement imports torch and Lightning (seconds): it cannot be ready
    # within 0.5 s, so the round must give up on it, not wait. (The
    # reservation keeps its own resources.placement_timeout_s.)
    pool, payload = pool_of(cfg)
    ray.kill(pool.actors[0], no_restart=True)
    results = list(pool.train([tiny_task(0), tiny_task(1)], payload, lambda _: {}))
    reason = "no client actor alive: 1 replacement(s) not ready within 0.5 s"
    assert failures(results) == {0: reason, 1: reason}
    assert pool.replacements == 1


@pytest.mark.slow
def test_dead_actor_during_evaluation_is_rerun_elsewhere(
    tmp_path: Path, pool_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    cfg = tiny_config(
        tmp_path, "resources.num_actors=2", "data.client_test_fraction=0.2"
    )
    put = spy_on_puts(ray, monkeypatch)
    pool, payload = pool_of(cfg)
    glob, clients = payload["model"], list(range(6))
    clean = pool.evaluate(glob, 64)
    clean_personal = list(pool.evaluate_clients(clients, glob, lambda _: {}, 64))
    ray.kill(pool.actors[1], no_restart=True)  # its shard moves to actor 0
    assert pool.evaluate(glob, 64) == clean
    # Now no actor is alive: the groups wait for the replacements, then run.
    ray.kill(pool.actors[0], no_restart=True)
    personal = list(pool.evaluate_clients(clients, glob, lambda _: {}, 64))
    assert personal == clean_personal
    assert all(r.result.num_examples > 0 for r in personal)
    assert pool.replacements == 2
    # Shutdown lets go of the dataset, the partition and the payload (B11).
    assert len(put) == 3  # the dataset, the partition, the boxed model
    assert held_elsewhere(put) == 3  # the pool holds all three while it lives
    pool.shutdown()
    assert held_elsewhere(put) == 0


def spy_on_puts(ray: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The refs of every ``ray.put`` from now on, in a list (which holds them)."""
    refs: list[Any] = []
    real_put = ray.put

    def put(value: Any, **kwargs: Any) -> Any:
        refs.append(real_put(value, **kwargs))
        return refs[-1]

    monkeypatch.setattr(ray, "put", put)
    return refs


def held_elsewhere(refs: list[Any]) -> int:
    """How many of ``refs`` something besides the list itself still holds."""
    gc.collect()  # exceptions of dead actors' tasks sit in reference cycles
    # getrefcount counts the list, the loop's name and its own argument.
    return sum(sys.getrefcount(ref) > 3 for ref in refs)


@pytest.mark.slow
def test_pool_larger_than_the_cluster_is_refused_at_once(
    tmp_path: Path, ray_module: Any
) -> None:
    from fedsim.backend.ray_pool import pool_for

    cfg = tiny_config(
        tmp_path,
        "resources.num_actors=5",
        "resources.cpus_per_client=1",
        "resources.placement_timeout_s=5",
    )
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"holds 2 client actors .* not 5"):
        pool_for(cfg)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_two_pools_at_once_one_reserves_the_other_is_refused(
    tmp_path: Path, ray_module: Any
) -> None:
    from ray.util import placement_group_table

    from fedsim.backend.ray_pool import RayPool, pool_for

    # Each asks for the whole 2-CPU cluster: a reservation is all or nothing,
    # so one gets it and the other is refused after its timeout (no deadlock).
    cfg = tiny_config(
        tmp_path, "resources.num_actors=2", "resources.placement_timeout_s=3"
    )

    def attempt(_: int) -> RayPool | ConfigError:
        try:
            return pool_for(cfg)
        except ConfigError as exc:
            return exc

    with ThreadPoolExecutor(2) as threads:
        outcomes = list(threads.map(attempt, range(2), timeout=60))
    pools = [o for o in outcomes if isinstance(o, RayPool)]
    try:
        refused = [str(o) for o in outcomes if isinstance(o, ConfigError)]
        assert len(pools) == 1 and len(refused) == 1
        assert (
            "could not be reserved within resources.placement_timeout_s=3"
            in (refused[0])
        )
    finally:
        for pool in pools:
            pool.shutdown()
    pool_for(cfg).shutdown()  # the reservation was released: it fits again
    assert {g["state"] for g in placement_group_table().values()} == {"REMOVED"}
