"""A Ray cluster of several nodes on this machine: placement, data, results, loss.

``ray.cluster_utils.Cluster`` starts a head without CPUs (the test driver and
the run's driver actor, which asks for none, live there) and two worker nodes
that each declare 4 CPUs and 1 GPU (Ray accepts declared GPUs on a machine
without one; the clients then train on CPU), all on 127.0.0.1. One cluster
serves the module; the test that removes a worker node runs last.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedsim.experiment import run_experiment
from fedsim.model import checked_model
from fedsim.strategy import state_layout
from fedsim.tracking import read_metrics
from tests.fixtures import tiny_config

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"
WORKERS = 2
WORKER = {"num_cpus": 4, "num_gpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head with 0 CPUs and two 4-CPU, 1-GPU workers; Ray stopped pass or fail."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        cluster.add_node(  # the first node added is the head
            num_cpus=0,
            node_ip_address=LOOPBACK,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
        )
        for _ in range(WORKERS):
            cluster.add_node(node_ip_address=LOOPBACK, **WORKER)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _shm_mappings(pid: int) -> dict[str, int]:
    """Resident bytes of ``pid`` in each shared-memory file (Ray's object store)."""
    out: dict[str, int] = Counter()
    key = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            path = " ".join(fields[5:])
            key = f"{fields[3]}:{fields[4]}" if "/dev/shm/" in path else None
        elif key is not None and fields[0] == "Rss:":
            out[key] += int(fields[1]) * 1024
    return dict(out)


def test_pool_spans_both_workers_four_per_gpu_one_data_copy_per_node(
    tmp_path: Path, cluster: Any
) -> None:
    import ray
    from ray.experimental import get_object_locations

    from fedsim.backend.ray_pool import LOAD_IN_TASK_BYTES, pool_for

    images = LOAD_IN_TASK_BYTES // (3 * 32 * 32) + 1  # 64 MiB: loaded by a task
    cfg = tiny_config(
        tmp_path,
        "data.name=synthetic_cifar",
        f"data.synthetic_train={images}",
        "data.synthetic_test=100",
        "data.num_clients=8",
        "server.clients_per_round=8",
        "model.arch=cnn",
        "resources.gpus_per_client=0.25",
        "resources.cpus_per_client=1",
    )
    workers = {n.node_id for n in cluster.worker_nodes}
    head = ray.get_runtime_context().get_node_id()
    with pool_for(cfg) as pool:
        # On the head, which has no CPU: the loader task asks for none.
        data, part = pool.load(cfg.data_request())
        pool.attach(data, part, state_layout(cfg, checked_model(cfg)))
        # (a) 8 actors: four on each worker's one GPU.
        placements = pool.placements()
        per_gpu = Counter((p["node_id"], tuple(p["gpu_ids"])) for p in placements)
        assert per_gpu == {(node, ("0",)): 4 for node in workers}
        assert all(p["device"] == "cpu" for p in placements)  # no CUDA here

        # (b) the dataset: one object, one copy in each worker's object store
        # (and the driver's, where the loader task wrote it), and every actor
        # reads it from its own node's shared memory rather than from a copy.
        data_ref = pool._refs[0]  # what attach() shares: (data, partition, layout)
        located = get_object_locations([data_ref])[data_ref]
        assert workers | {head} == set(located["node_ids"])
        assert len(located["node_ids"]) == len(set(located["node_ids"]))
        ray.get([a.touch_data.remote() for a in pool.actors])
        stores: dict[str, set[str]] = {node: set() for node in workers}
        for p in placements:
            mapped = _shm_mappings(p["pid"])
            # The store is one file per node; this actor has read the whole
            # dataset out of it.
            assert len(mapped) == 1, mapped
            ((store, resident),) = mapped.items()
            assert resident >= data.x_train.nbytes
            stores[p["node_id"]].add(store)
        assert all(len(s) == 1 for s in stores.values())  # one store per node
        assert len(set.union(*stores.values())) == WORKERS  # not shared across


def test_run_survives_a_lost_worker_node_results_on_the_driver_node(
    tmp_path: Path, cluster: Any
) -> None:
    import ray

    rounds = 10
    cfg = tiny_config(
        tmp_path,
        f"rounds={rounds}",
        "data.num_clients=8",
        "server.clients_per_round=4",
        "resources.cpus_per_client=4",  # one actor per worker node
        "resources.gpus_per_client=0.25",
        "log.checkpoint_every=0",
    )
    here = ray.get_runtime_context().get_node_id()
    victim = next(n for n in cluster.worker_nodes if n.node_id != here)
    lost_at: list[float] = []
    done = threading.Event()

    def remove_after_first_round() -> None:
        while not done.wait(0.05):
            metrics = [p / "metrics.jsonl" for p in tmp_path.glob("*/*")]
            if any(m.exists() and m.stat().st_size for m in metrics):
                cluster.remove_node(victim)
                lost_at.append(time.time())
                return

    killer = threading.Thread(target=remove_after_first_round, daemon=True)
    killer.start()
    try:
        result = run_experiment(cfg, backend="ray")
    finally:
        done.set()
        killer.join(timeout=60)
    assert lost_at, "the run ended before the worker node was removed"

    # (c) the results are on the driver's node: this machine's run directory,
    # written by a driver actor pinned to the node of this process.
    assert result.run_dir.is_dir() and str(result.run_dir).startswith(str(tmp_path))
    assert (result.run_dir / "summary.json").is_file()
    drivers = [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == "DriverActor"
    ]
    assert [a["Address"]["NodeID"] for a in drivers] == [here]

    # (d) every round ran with its whole cohort, rounds started after the node
    # was gone included: the lost actor's clients ran on the remaining node.
    rows = read_metrics(result.run_dir)
    assert [r["round"] for r in rows] == list(range(rounds))
    assert all(r["num_clients"] == 4 and r["num_failed"] == 0 for r in rows)
    assert rows[-1]["started_at"] > lost_at[0]
    assert result.summary.rounds == rounds
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    assert len(alive) == WORKERS - 1
