"""Resident memory of client actors: the dataset is shared, not copied per actor.

Starts Ray on loopback, builds pools of 1, 2 and 4 actors over CIFAR-shaped
synthetic data (50,000 images, 153.6 MB) and, for comparison, over a tiny
dataset (100 images). Every actor reads every byte of the training images
(so a per-actor copy could not hide), then the summed resident (RSS), unique
(USS) and proportional (PSS) memory of the actors is read from /proc.

growth_per_actor_fraction = (summed USS slope per added actor with the big
dataset - the same slope with the tiny dataset) / dataset bytes: the private
memory each added actor spends on the data. A per-actor copy gives about 1.0;
zero-copy sharing gives about 0. A control run whose actors do copy the data
must come out near 1.0 (``control_copy_fraction``). RSS counts shared pages in
every process that touches them, so it is printed but does not measure copies.

    .venv/bin/python benchmarks/memory.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray

from fedsim.backend.ray_pool import pool_for, start_ray
from fedsim.config import load_config
from fedsim.model import checked_model
from fedsim.strategy import state_layout

ACTORS = (1, 2, 4)


def memory_of(pids: list[int]) -> dict[str, float]:
    """Summed RSS, USS (private pages) and PSS in MB, from /proc/PID/smaps_rollup."""
    total = {"rss": 0.0, "uss": 0.0, "pss": 0.0}
    for pid in pids:
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            fields[key] = float(value.split()[0]) / 1e3  # kB -> MB
        total["rss"] += fields["Rss"]
        total["pss"] += fields["Pss"]
        total["uss"] += fields["Private_Clean"] + fields["Private_Dirty"]
    return total


def measure(n_train: int, actors: int, private_copy: bool = False) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            "data.name=synthetic_cifar",
            f"data.synthetic_train={n_train}",
            "data.synthetic_test=100",
            "data.num_clients=10",
            "data.partition=iid",
            "model.arch=cnn",
            f"resources.num_actors={actors}",
            "resources.cpus_per_client=0.25",
            "log.progress=false",
        ],
    )
    data, part = cfg.data_request()()
    layout = state_layout(cfg, checked_model(cfg))
    with pool_for(cfg).attach(data, part, layout) as pool:
        ray.get([a.touch_data.remote(private_copy) for a in pool.actors])
        pids = [p["pid"] for p in pool.placements()]
        mem = memory_of(pids)
    mem["dataset_mb"] = data.x_train.nbytes / 1e6
    return mem


def slope(rows: dict[int, dict[str, float]], key: str) -> float:
    return (rows[ACTORS[-1]][key] - rows[ACTORS[0]][key]) / (ACTORS[-1] - ACTORS[0])


def main() -> None:
    start_ray(None, num_cpus=2)
    try:
        big = {k: measure(50_000, k) for k in ACTORS}
        tiny = {k: measure(100, k) for k in ACTORS}
        # Control: actors that do copy the data must come out near 1.0.
        copied = {k: measure(50_000, k, private_copy=True) for k in ACTORS}
    finally:
        ray.shutdown()
    dataset_mb = big[1]["dataset_mb"]
    print(f"dataset: {dataset_mb:.1f} MB of training images")
    cols = ("RSS MB", "USS MB", "PSS MB", "tiny RSS", "tiny USS", "copy USS")
    print(f"{'actors':>6} " + " ".join(f"{c:>9}" for c in cols))
    for k in ACTORS:
        b, t, c = big[k], tiny[k], copied[k]
        values = (b["rss"], b["uss"], b["pss"], t["rss"], t["uss"], c["uss"])
        print(f"{k:>6} " + " ".join(f"{v:>9.1f}" for v in values))
    growth = slope(big, "uss") - slope(tiny, "uss")
    control = slope(copied, "uss") - slope(tiny, "uss")
    result = {
        "dataset_mb": round(dataset_mb, 1),
        "uss_per_actor_mb": round(slope(big, "uss"), 1),
        "uss_per_actor_tiny_mb": round(slope(tiny, "uss"), 1),
        "rss_per_actor_mb": round(slope(big, "rss"), 1),
        "pss_per_actor_mb": round(slope(big, "pss"), 1),
        "growth_per_actor_mb": round(growth, 1),
        "growth_per_actor_fraction": round(growth / dataset_mb, 4),
        "control_copy_fraction": round(control / dataset_mb, 4),
    }
    print(
        f"data-attributable growth per added actor: {growth:.1f} MB "
        f"= {100 * growth / dataset_mb:.1f}% of the dataset (goal < 10%)"
    )
    print(f"control, actors that copy the data: {100 * control / dataset_mb:.1f}%")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
