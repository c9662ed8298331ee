"""The CUDA paths, checked on a machine with a GPU (prints figures; not a test).

1. ``prepare_batch`` on CUDA matches the CPU result for the same generator
   (same crops and flips; equal up to float rounding).
2. A :class:`ClientRunner` with a 0.25 GPU slice: the per-process memory cap
   holds (an allocation above the slice fails, one below succeeds), and one
   client round of VGG16-FedPara trains in fp32, bf16-mixed and fp16-mixed.
3. Ray with the real GPU: a pool of 0.25-GPU actors lands four per GPU, every
   actor trains on ``cuda:0`` of its own view, and a short VGG16-FedPara run on
   synthetic CIFAR completes; seconds per round for FedPara and original.

    python benchmarks/gpu_check.py [--out DIR]

The last line is one JSON object. Without CUDA it runs the CPU fallbacks only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from fedsim.config import load_config
from fedsim.data import dataset_info
from fedsim.data.transforms import prepare_batch
from fedsim.model import worker_spec

CUDA = torch.cuda.is_available()
SMALL = [
    "data.name=synthetic_cifar",
    "data.synthetic_train=4000",
    "data.synthetic_test=1000",
    "data.num_clients=16",
    "data.partition=iid",
    f"model.arch={'vgg16' if CUDA else 'cnn'}",  # CPU dry runs stay short
    "model.param=fedpara",
    "model.gamma=0.1",
    "client.epochs=1",
    "client.batch_size=64",
    "client.lr=0.1",
    "server.clients_per_round=8",
    "log.progress=false",
    "log.checkpoint_every=0",
]


def check_transforms() -> dict[str, Any]:
    info = dataset_info("cifar10")
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cpu = prepare_batch(x, info, train=True, generator=torch.Generator().manual_seed(0))
    if not CUDA:
        return {"transforms_cuda_close": None}
    gpu = prepare_batch(
        x.cuda(), info, train=True, generator=torch.Generator().manual_seed(0)
    ).cpu()
    # Same crops and flips; the float division may round differently on the GPU.
    return {
        "transforms_cuda_close": bool(torch.allclose(cpu, gpu, rtol=0, atol=1e-5)),
        "transforms_max_abs_diff": float((cpu - gpu).abs().max()),
    }


def check_runner() -> dict[str, Any]:
    from fedsim.client import ClientRunner
    from fedsim.driver import client_seed
    from fedsim.messages import MODEL, ClientHParams, ClientTask
    from fedsim.model import checked_model
    from fedsim.params import initial_state
    from fedsim.strategy import state_layout

    out: dict[str, Any] = {}
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        cfg = load_config(
            None,
            [
                *SMALL,
                "resources.gpus_per_client=0.25",
                f"resources.precision={precision}",
            ],
        )
        data, part = cfg.data_request()()
        layout = state_layout(cfg, checked_model(cfg))
        runner = ClientRunner(worker_spec(cfg), data, part, layout)
        payload = {MODEL: initial_state(runner.module.model, layout)}
        task = ClientTask(
            client_id=0,
            round=0,
            seed=client_seed(0, 0, 0),
            hparams=ClientHParams(lr=0.1, epochs=1, batch_size=64),
        )
        runner.train(task, payload, {})  # warm-up (cuDNN autotune, allocator)
        if CUDA:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        update = runner.train(task, payload, {})
        if CUDA:
            torch.cuda.synchronize()
        ev = runner.evaluate(update.upload[MODEL], 500)
        out[precision] = {
            "device": str(runner.device),
            "client_round_s": round(time.perf_counter() - t0, 4),
            "train_loss": update.train_loss,
            "eval_accuracy": ev.accuracy,
            "finite": bool(update.train_loss == update.train_loss),
        }
    if CUDA:
        total = torch.cuda.get_device_properties(0).total_memory
        used = torch.cuda.memory_reserved(0)
        try:
            blob = torch.empty(int(0.30 * total), dtype=torch.uint8, device="cuda")
            del blob
            out["cap_blocks_over_slice"] = False
        except torch.OutOfMemoryError:
            out["cap_blocks_over_slice"] = True
        torch.cuda.empty_cache()
        ok = torch.empty(int(0.20 * total) - used, dtype=torch.uint8, device="cuda")
        out["cap_allows_under_slice"] = ok.numel() > 0
        del ok
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def check_ray(out_dir: Path) -> dict[str, Any]:
    import ray

    from fedsim.backend.ray_pool import pool_for, start_ray
    from fedsim.experiment import run_experiment
    from fedsim.model import checked_model
    from fedsim.strategy import state_layout

    result: dict[str, Any] = {}
    gpus = torch.cuda.device_count() if CUDA else 2  # declared GPUs on a CPU machine
    # A CPU dry run declares a CPU per slice too, so that four fit on each GPU.
    start_ray(None, num_gpus=gpus, num_cpus=None if CUDA else 4 * gpus)
    try:
        cfg = load_config(
            None,
            [*SMALL, "resources.gpus_per_client=0.25", "resources.cpus_per_client=1"],
        )
        data, part = cfg.data_request()()
        layout = state_layout(cfg, checked_model(cfg))
        with pool_for(cfg).attach(data, part, layout) as pool:
            placements = pool.placements()
        result["placements"] = [
            {k: p[k] for k in ("gpu_ids", "cuda_visible_devices", "device")}
            for p in placements
        ]
        per_gpu = Counter(",".join(p["gpu_ids"]) for p in placements)
        result["actors_per_gpu"] = dict(sorted(per_gpu.items()))
        for param in ("fedpara", "original"):
            cfg = load_config(
                None,
                [
                    *SMALL,
                    "rounds=4",
                    f"model.param={param}",
                    "resources.gpus_per_client=0.25",
                    "resources.cpus_per_client=1",
                    f"log.root={out_dir}",
                ],
            )
            run = run_experiment(cfg, backend="ray")
            rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").open()]
            result[param] = {
                "round_seconds": [round(r["round_seconds"], 3) for r in rows],
                "accuracy": [round(r["accuracy"], 4) for r in rows],
                "bytes_per_round": rows[0]["bytes_up"] + rows[0]["bytes_down"],
                "failed": sum(r["num_failed"] for r in rows),
            }
    finally:
        ray.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp())
    report: dict[str, Any] = {"cuda": CUDA, "torch": torch.__version__}
    for name, check in (
        ("transforms", check_transforms),
        ("runner", check_runner),
        ("ray", lambda: check_ray(out_dir)),
    ):
        t0 = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # report every check, even after one fails
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - t0:.1f} s {report[name]}", flush=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
