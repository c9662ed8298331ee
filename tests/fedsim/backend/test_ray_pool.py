"""The Ray backend on a local loopback cluster: placement, determinism, failures."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsim.checkpoint import load_checkpoint
from fedsim.config import load_config
from fedsim.experiment import run_experiment
from fedsim.tracking import read_metrics
from tests.fixtures import QUICKSTART, load_data, run_model, tiny_config

# The pool-sizing tests below need no Ray and run in the fast tier; every test
# that starts Ray is marked slow on its own.


def test_pool_size_from_each_node() -> None:
    from fedsim.backend.placement import pool_size
    from fedsim.config import ConfigError, ResourcesConfig

    quarter = ResourcesConfig(gpus_per_client=0.25)
    assert pool_size(quarter, 10, [{"CPU": 16, "GPU": 2}]) == 8
    assert pool_size(quarter, 10, [{"CPU": 3, "GPU": 2}]) == 3
    one_cpu = ResourcesConfig()
    assert pool_size(one_cpu, 4, [{"CPU": 64}]) == 4  # never more actors than a cohort
    fixed = ResourcesConfig(num_actors=5)
    assert pool_size(fixed, 10, [{"CPU": 3}, {"CPU": 2}]) == 5
    with pytest.raises(ConfigError, match=r"holds 1 client actors"):
        pool_size(fixed, 10, [{"CPU": 1}])


def test_gpu_slice_without_gpus_falls_back_to_cpu() -> None:
    from fedsim.backend.placement import fit_slice

    cfg = load_config(QUICKSTART, ["resources.gpus_per_client=0.25"])
    assert fit_slice(cfg.resources, [{"CPU": 2.0}]).gpus_per_client == 0.0
    kept = fit_slice(cfg.resources, [{"CPU": 2.0}, {"CPU": 16.0, "GPU": 1.0}])
    assert kept.gpus_per_client == 0.25


def test_slice_no_node_can_hold_is_a_config_error() -> None:
    from fedsim.backend.placement import fit_slice
    from fedsim.config import ConfigError

    cfg = load_config(QUICKSTART, ["resources.cpus_per_client=4"])
    with pytest.raises(ConfigError, match=r"largest node has 2\.0 CPU"):
        fit_slice(cfg.resources, [{"CPU": 2.0}, {"CPU": 1.0}])
    gpu = load_config(QUICKSTART, ["resources.gpus_per_client=2"])
    with pytest.raises(ConfigError, match=r"lower resources\.cpus_per_client"):
        fit_slice(gpu.resources, [{"CPU": 8.0, "GPU": 1.0}])


@pytest.mark.slow
def test_same_seed_same_results_with_1_and_2_actors(
    tmp_path: Path, ray_session: object
) -> None:
    runs, configs = [], []
    for actors in (1, 2):
        cfg = tiny_config(
            tmp_path / str(actors),
            "rounds=3",
            f"resources.num_actors={actors}",
            "server.clients_per_round=4",
        )
        configs.append(cfg)
        runs.append(run_experiment(cfg, backend="ray"))
    configs.append(
        tiny_config(tmp_path / "local", "rounds=3", "server.clients_per_round=4")
    )
    local = run_experiment(configs[-1], backend="local")
    acc = [[r["accuracy"] for r in read_metrics(run.run_dir)] for run in (*runs, local)]
    assert acc[0] == acc[1] == acc[2]
    states = [
        load_checkpoint(run.run_dir, cfg.to_dict()).global_tensors
        for run, cfg in zip((*runs, local), configs, strict=True)
    ]
    for name, tensor in states[0].items():
        torch.testing.assert_close(tensor, states[1][name], rtol=0, atol=0)
        torch.testing.assert_close(tensor, states[2][name], rtol=0, atol=0)


@pytest.mark.slow
def test_fractional_gpu_actors_placed_four_per_gpu(tmp_path: Path) -> None:
    import ray

    from fedsim.backend.cluster import start_ray
    from fedsim.backend.ray_pool import pool_for
    from fedsim.checkpoint import ServerState
    from fedsim.driver import Cohort, Driver
    from fedsim.params import StateLayout, initial_state
    from fedsim.state import ClientStateStore
    from fedsim.strategy import strategy_settings
    from fedsim.strategy.fedavg import FedAvg
    from fedsim.tracking import Tracker

    # Ray accepts declared GPUs on a CPU-only machine: placement is testable here.
    start_ray(None, num_cpus=8, num_gpus=2)
    try:
        cfg = tiny_config(
            tmp_path,
            "rounds=1",
            "data.num_clients=8",
            "server.clients_per_round=8",
            "resources.gpus_per_client=0.25",
            "resources.cpus_per_client=1",
        )
        data, part = load_data(cfg)

        model = run_model(cfg)
        layout = StateLayout.of(model)
        with pool_for(cfg).attach(data, part, layout) as pool:
            placements = pool.placements()
            assert len(placements) == 8
            per_gpu = Counter(tuple(p["gpu_ids"]) for p in placements)
            assert per_gpu == {("0",): 4, ("1",): 4}
            for p in placements:
                assert p["cuda_visible_devices"] == p["gpu_ids"][0]
                expected = "cuda:0" if torch.cuda.is_available() else "cpu"
                assert p["device"] == expected
            assert len({p["pid"] for p in placements}) == 8
            tracker = Tracker(
                tmp_path / "run",
                cfg.log,
                config=cfg.to_dict(),
                strategy=cfg.server.strategy,
            )
            driver = Driver(
                cohort=Cohort(seed=0, num_clients=8, size=8),
                backend=pool,
                strategy=FedAvg(strategy_settings(cfg)),
                tracker=tracker,
                store=ClientStateStore(tmp_path / "run" / "client_state"),
                eval_batch_size=64,
            )
            state, metrics = driver.run_round(
                ServerState(round=0, global_tensors=initial_state(model, layout))
            )
            tracker.close()
            assert metrics.num_failed == 0 and metrics.num_clients == 8
            assert state.round == 1
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_dead_actor_is_replaced_and_client_retried(
    tmp_path: Path, ray_session: object
) -> None:
    import ray

    from fedsim.backend.ray_pool import pool_for
    from fedsim.messages import MODEL, ClientUpdate
    from fedsim.params import StateLayout, initial_state
    from tests.fixtures import tiny_task

    cfg = tiny_config(
        tmp_path, "resources.num_actors=1", "resources.max_client_retries=1"
    )
    data, part = load_data(cfg)
    model = run_model(cfg)
    layout = StateLayout.of(model)
    payload = {MODEL: initial_state(model, layout)}
    with pool_for(cfg).attach(data, part, layout) as pool:
        victim = pool.actors[0]
        ray.kill(victim, no_restart=True)
        tasks = [tiny_task(c) for c in (0, 1)]
        results = list(pool.train(tasks, payload, lambda _: {}))
        assert [type(r) for r in results] == [ClientUpdate, ClientUpdate]
        assert pool.actors[0] is not victim


@pytest.mark.slow
def test_driver_actor_reports_config_errors_as_themselves(
    tmp_path: Path, ray_session: object
) -> None:
    from fedsim.config import ConfigError

    cfg = tiny_config(tmp_path, "model.arch=vgg16")  # 8x8 digits cannot feed VGG16
    with pytest.raises(
        ConfigError, match=r"cannot be built for data\.name=digits"
    ) as info:
        run_experiment(cfg, backend="ray")
    assert "Traceback" not in str(info.value)


@pytest.mark.slow
def test_data_is_loaded_into_the_object_store_once(
    tmp_path: Path, ray_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.backend.ray_pool import pool_for
    from fedsim.data import DataError, FederatedData, Partition
    from fedsim.messages import MODEL, ClientUpdate
    from fedsim.params import StateLayout, initial_state
    from tests.fixtures import tiny_task

    put_types: list[type] = []
    real_put = ray_session.put

    def spy_put(value: Any, **kwargs: Any) -> Any:
        put_types.append(type(value))
        return real_put(value, **kwargs)

    monkeypatch.setattr(ray_session, "put", spy_put)
    from fedsim.backend.ray_pool import LOAD_IN_TASK_BYTES

    n = LOAD_IN_TASK_BYTES // (3 * 32 * 32) + 1  # just large enough for a task
    cfg = tiny_config(
        tmp_path,
        "resources.num_actors=1",
        "data.name=synthetic_cifar",
        f"data.synthetic_train={n}",
        "data.synthetic_test=10",
        "data.num_clients=100",
        "model.arch=cnn",
    )
    model = run_model(cfg)
    layout = StateLayout.of(model)
    with pool_for(cfg) as pool:
        request = cfg.data_request()
        assert request.approx_bytes() >= LOAD_IN_TASK_BYTES
        data, part = pool.load(request)
        expected, expected_part = load_data(cfg)
        assert (data.x_train == expected.x_train).all()
        assert (part.train.flat == expected_part.train.flat).all()
        # mapped from the object store, not a copy in this process
        assert not data.x_train.flags.writeable
        pool.attach(data, part, layout)
        payload = {MODEL: initial_state(model, layout)}
        (result,) = pool.train([tiny_task(0)], payload, lambda _: {})
        assert isinstance(result, ClientUpdate)
        assert FederatedData not in put_types and Partition not in put_types
        too_many = replace(request, spec=replace(request.spec, num_clients=n + 1))
        with pytest.raises(DataError, match=f"num_clients={n + 1} exceeds"):
            pool.load(too_many)  # the loader's own error, not a Ray traceback
