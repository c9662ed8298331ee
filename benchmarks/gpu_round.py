"""The paper's CIFAR-10 round on one GPU: plain PyTorch against fedsim, mode by mode.

Workload (the paper's CIFAR-10 round): VGG16-GN, FedPara gamma 0.1 and the
original, batch 64, 16 clients x 5 epochs x 500 images = 640 steps a round,
synthetic CIFAR-shaped data (IID, so every client has 500 images), SGD lr 0.1.

Parts (``--parts``, comma-separated; all by default):

``proxies``
    CPU proxies any machine measures: ATen ops and kernel ops (ATen ops that
    are not views) per training step (forward, backward, SGD) of the original
    and the FedPara model, counted with a dispatch mode; host milliseconds per
    step at tiny widths (channels / 16, batch 1, one thread), where compute
    vanishes and what is left is the framework's cost per op; the compiled
    step's graph breaks (``torch._dynamo.explain``).
``plain``
    The shortest honest PyTorch loop of the same round (sequential clients,
    data on the device, crops and flips there, SGD, FedAvg) in each mode.
``client``
    fedsim's client path, :class:`fedsim.client.ClientRunner`, in each mode:
    ``eager`` (Fabric), ``compile`` (``resources.compile=default``),
    ``reduce-overhead``, ``graph`` (``resources.cuda_graph=true``) and
    ``compile+graph``. Figures: ms per client step (the clients'
    ``train_seconds`` summed over their steps, after one warm-up client),
    kernels and GPU-busy ms per step (``torch.profiler`` over one client), the
    projected seconds per round (ms/step x 640), the ratio to the plain loop in
    the same mode, and how far each mode's trained tensors are from eager's.
``run``
    ``fedsim run`` of ``configs/cifar10_vgg16_fedpara.yaml`` (synthetic data,
    IID, 100 clients of 500) at 1, 4 and 8 actors per GPU in the fastest mode
    the client part found; evaluation (10k test images) every other round, so
    one run gives the steady round time with and without evaluation (median of
    rounds 2 and later).

``vectorized``
    Training clients together (``resources.clients_per_actor``): one cohort
    of 16 clients with Dirichlet(0.5) sizes, trained one after another by
    ``ClientRunner`` (``sequential``), then K = 4, 8, 16 at a time by
    :class:`fedsim.cohort.CohortTrainer`, eager and with the step recorded
    as a CUDA graph (``+graph``, CUDA only). Figures: ms per client step
    (the call's wall time over the clients' real steps, after one warm-up
    call), slot occupancy (the share of slot-steps that trained a client),
    kernel ops per client step (the dispatch-mode count of the proxies, over
    a whole call: the CPU proxy of launches; a replayed graph is one op
    there, so ``+graph`` rows count only with the profiler), and on CUDA the
    profiler's kernels and GPU-busy ms per client step. Every row states how
    far its trained tensors are from sequential training's.

``--baseline DIR`` measures an earlier fedsim (``git archive REV | tar -x -C
DIR``) in a subprocess: its eager client path and its proxies, as "today".
``--tiny`` keeps the paper's workload at tiny widths (channels / 16): the
vectorized part's CPU proxies at the paper's step counts,

    .venv/bin/python benchmarks/gpu_round.py --tiny --parts vectorized

``--smoke`` runs every part on the CPU at tiny sizes in under a minute (a test
runs it, so this script cannot rot); figures from it mean nothing.

    .venv/bin/python benchmarks/gpu_round.py --smoke
    python3 benchmarks/gpu_round.py --baseline .dev/baseline --out $OUT

Progress goes to stderr; each part prints one JSON line as it ends, and the last
line is one JSON object with everything (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
MODES = ("eager", "compile", "reduce-overhead", "graph", "compile+graph")
MODE_OVERRIDES = {
    "eager": [],
    "compile": ["resources.compile=default"],
    "reduce-overhead": ["resources.compile=reduce-overhead"],
    "graph": ["resources.cuda_graph=true"],
    "compile+graph": ["resources.compile=default", "resources.cuda_graph=true"],
}
PARAMS = ("fedpara", "original")
VECTOR_SLOTS = (4, 8, 16)
VECTOR_COHORT = 16  # clients of the vectorized part's cohort (Dirichlet sizes)
ROUND_STEPS = 640  # 16 clients x 5 epochs x ceil(500 / 64) = 8 batches


@dataclass(frozen=True)
class Workload:
    """What one measurement trains."""

    tiny: bool  # VGG16 with every channel count / 16
    per_client: int
    epochs: int
    batch: int
    measured_clients: int  # the first one warms up
    rounds: int  # of each `fedsim run`
    actors: tuple[int, ...]

    @property
    def steps_per_client(self) -> int:
        return self.epochs * math.ceil(self.per_client / self.batch)


PAPER = Workload(False, 500, 5, 64, 3, 6, (1, 4, 8))
SMOKE = Workload(True, 24, 1, 8, 2, 2, (1,))
TINY_PAPER = Workload(True, 500, 5, 64, 3, 6, (1, 4, 8))  # the CPU proxy's cohort


def log(msg: str) -> None:
    print(f"[gpu_round {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def use_tiny_widths() -> None:
    """Every VGG16 channel count / 16 (same ops, almost no compute); once."""
    import lightning_modules.models as models

    if getattr(models, "_tiny_widths", False):
        return
    models._tiny_widths = True  # type: ignore[attr-defined]
    models._VGG16_CFG = tuple(  # type: ignore[attr-defined]
        v if isinstance(v, str) else max(4, v // 16)
        for v in models._VGG16_CFG  # type: ignore[attr-defined]
    )


def set_precision(precision: str) -> None:
    import torch

    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rel_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest ``||a - b|| / ||b||`` over the floating tensors of two states."""
    worst = 0.0
    for name, ref in b.items():
        if not ref.is_floating_point():
            continue
        diff = (a[name].double() - ref.double()).norm() / ref.double().norm()
        worst = max(worst, float(diff) if ref.norm() > 0 else 0.0)
    return worst


# ------------------------------------------------------------------ profiling


def profile_steps(fn: Callable[[], int]) -> dict[str, float]:
    """Kernels and GPU-busy ms per step of ``fn()`` (which returns its steps)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return {}
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        steps = fn()
        sync()
    kernels, busy_us = 0, 0.0
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if evt.name.startswith(("Memcpy", "Memset")):
            continue
        kernels += 1
        busy_us += evt.device_time
    return {
        "kernels_per_step": round(kernels / steps, 1),
        "gpu_busy_ms_per_step": round(busy_us / 1000 / steps, 3),
    }


# ------------------------------------------------------------------ proxies


def _metadata_ops() -> frozenset[Any]:
    import torch

    return frozenset({torch.ops.aten._unsafe_view.default})


class OpCounter:
    """ATen ops seen by a dispatch mode: all, and those that are not views."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        metadata = _metadata_ops()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                counter.ops += 1
                counter.kernels += not func.is_view
                # _unsafe_view is a view without the alias annotation: no kernel
                counter.launches += not func.is_view and func not in metadata
                return func(*args, **(kwargs or {}))

        self.ops = self.kernels = self.launches = 0
        self.mode = Mode()


def sgd_step(module: Any) -> Callable[[], None]:
    """One eager training step of ``module`` on a fixed batch of one image."""
    import torch

    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    batch = (torch.randn(1, 3, 32, 32), torch.randint(0, 10, (1,)))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        opt.step()

    step.module, step.batch = module, batch  # type: ignore[attr-defined]
    return step


def proxies(include_graph_breaks: bool, timed_steps: int = 40) -> dict[str, Any]:
    import torch

    from lightning_modules.classifier import Classifier
    from lightning_modules.models import build_model
    from lightning_modules.spec import ModelSpec

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for param in PARAMS:
        torch.manual_seed(0)
        spec = ModelSpec("vgg16", 10, (3, 32, 32), param, 0.1)
        step = sgd_step(Classifier(build_model(spec), 10))
        for _ in range(5):
            step()
        counter = OpCounter()
        with counter.mode:
            step()
        times = []
        for _ in range(timed_steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        row: dict[str, Any] = {
            "aten_ops_per_step": counter.ops,
            "kernel_ops_per_step": counter.kernels,
            "host_ms_per_step_tiny": round(1000 * statistics.median(times), 3),
            "host_ms_per_step_tiny_min": round(1000 * min(times), 3),
        }
        if include_graph_breaks:
            module, batch = step.module, step.batch  # type: ignore[attr-defined]
            explained = torch._dynamo.explain(module.training_step)(batch, 0)
            row["graph_breaks"] = explained.graph_break_count
            row["graphs"] = explained.graph_count
        out[param] = row
        log(f"proxies {param}: {row}")
    for key in ("kernel_ops_per_step", "host_ms_per_step_tiny"):
        out[f"fedpara_over_original_{key}"] = round(
            out["fedpara"][key] / out["original"][key], 2
        )
    return out


# ------------------------------------------------------------------ plain loop


def synthetic(w: Workload, clients: int) -> tuple[Any, Any]:
    from fedsim.data import load_dataset

    data = load_dataset(
        "synthetic_cifar",
        None,
        synthetic_train=clients * w.per_client,
        synthetic_test=10,
    )
    return data.x_train, data.y_train


def plain(w: Workload, param: str, mode: str) -> dict[str, Any]:
    """The same clients as the client part, as a hand-written loop."""
    import torch
    import torch.nn.functional as F

    from fedsim.data import dataset_info
    from fedsim.data.transforms import CropFlip, prepare_batch
    from lightning_modules.models import build_model
    from lightning_modules.spec import ModelSpec

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    info = dataset_info("synthetic_cifar")
    x_np, y_np = synthetic(w, w.measured_clients + 1)
    xs, ys = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg16", 10, (3, 32, 32), param, 0.1)).to(dev)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    padded = mode != "eager"

    def loss_of(x: Any, y: Any, weight: Any) -> Any:
        return (F.cross_entropy(model(x), y, reduction="none") * weight).sum()

    loss_fn: Callable[..., Any] = loss_of
    if mode in ("compile", "compile+graph"):
        loss_fn = torch.compile(loss_of)
    elif mode == "reduce-overhead":
        loss_fn = torch.compile(loss_of, mode="reduce-overhead")
    b = w.batch
    static = (
        torch.zeros(b, 3, 32, 32, device=dev),
        torch.zeros(b, dtype=torch.long, device=dev),
        torch.full((b,), 1 / b, device=dev),
    )

    def eager_step(x: Any, y: Any, weight: Any) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y, weight).backward()
        opt.step()

    step: Callable[[Any, Any, Any], None] = eager_step
    setup_s = 0.0
    if mode in ("graph", "compile+graph"):
        if not cuda:
            return {"skipped": "needs CUDA"}
        t0 = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.cuda.stream(side):
            for _ in range(3):
                eager_step(*static)
        torch.cuda.current_stream().wait_stream(side)
        model.load_state_dict(saved)
        opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss_fn(*static).backward()
            opt.step()
        setup_s = time.perf_counter() - t0

        def captured(x: Any, y: Any, weight: Any) -> None:
            static[0].copy_(x)
            static[1].copy_(y)
            static[2].copy_(weight)
            graph.replay()

        step = captured

    def client(c: int) -> int:
        model.load_state_dict(global_state)
        lo = c * w.per_client
        x_c, y_c = xs[lo : lo + w.per_client], ys[lo : lo + w.per_client]
        n, steps = len(y_c), 0
        for _ in range(w.epochs):
            order = torch.randperm(n, device=dev)
            for s in range(0, n, b):
                idx = order[s : s + b]
                m = len(idx)
                draws = CropFlip(
                    torch.randint(0, 9, (m,), device=dev),
                    torch.randint(0, 9, (m,), device=dev),
                    torch.rand(m, device=dev) < 0.5,
                )
                x = prepare_batch(x_c[idx], info, train=True, draws=draws)
                y, weight = y_c[idx], torch.full((m,), 1 / m, device=dev)
                if padded and m < b:
                    pad = b - m
                    x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
                    y = torch.cat([y, y.new_zeros(pad)])
                    weight = torch.cat([weight, weight.new_zeros(pad)])
                step(x, y, weight)
                steps += 1
        uploads.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return steps

    uploads: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    client(0)  # warm-up: compiles, autotunes
    sync()
    setup_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    steps = sum(client(c) for c in range(1, w.measured_clients))
    sync()
    elapsed = time.perf_counter() - t0
    # FedAvg of the uploads (what the round ends with)
    avg = {k: sum(u[k].float() for u in uploads) / len(uploads) for k in uploads[0]}
    assert all(torch.isfinite(v).all() for v in avg.values())
    row = {
        "ms_per_step": round(1000 * elapsed / steps, 3),
        "setup_s": round(setup_s, 1),
        **profile_steps(lambda: client(w.measured_clients)),
    }
    row["round_s_projected"] = round(row["ms_per_step"] * ROUND_STEPS / 1000, 2)
    return row


# ------------------------------------------------------------------ fedsim client


def base_overrides(w: Workload, param: str, clients: int) -> list[str]:
    import torch

    gpus = 1 if torch.cuda.is_available() else 0
    return [
        "data.name=synthetic_cifar",
        f"data.synthetic_train={clients * w.per_client}",
        "data.synthetic_test=1000",
        f"data.num_clients={clients}",
        f"server.clients_per_round={clients}",
        "data.partition=iid",
        "model.arch=vgg16",
        f"model.param={param}",
        "model.gamma=0.1",
        f"client.epochs={w.epochs}",
        f"client.batch_size={w.batch}",
        "client.lr=0.1",
        f"resources.gpus_per_client={gpus}",
        "resources.cap_gpu_memory=false",
    ]


def fedsim_client(
    w: Workload, param: str, mode: str, precision: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """ms per client step of ClientRunner in ``mode``; also client 1's upload."""
    import torch

    from fedsim.client import ClientRunner
    from fedsim.config import load_config
    from fedsim.driver import client_seed

    try:  # this tree
        from fedsim.model import checked_model
        from fedsim.strategy import state_layout as model_layout

        def load_data(cfg: Any) -> Any:
            return cfg.data_request()()

    except ImportError:  # an earlier tree (--baseline)
        from fedsim.experiment import (  # type: ignore[attr-defined,no-redef]
            checked_model,
            load_data,
            model_layout,
        )
    from fedsim.messages import MODEL, ClientHParams, ClientTask
    from fedsim.params import initial_state

    clients = w.measured_clients + 1
    extra = [f"resources.matmul_precision={precision}"] if precision else []
    cfg = load_config(
        None, [*base_overrides(w, param, clients), *MODE_OVERRIDES[mode], *extra]
    )
    data, part = load_data(cfg)
    layout = model_layout(cfg, checked_model(cfg))
    try:  # this tree; an earlier one (--baseline) took the whole config
        from fedsim.model import worker_spec

        runner = ClientRunner(worker_spec(cfg), data, part, layout)
    except ImportError:
        runner = ClientRunner(cfg, data, part, layout)
    payload = {MODEL: initial_state(runner.module.model, layout)}
    hp = ClientHParams(lr=0.1, epochs=w.epochs, batch_size=w.batch)

    def task(c: int) -> ClientTask:
        return ClientTask(client_id=c, round=0, seed=client_seed(0, 0, c), hparams=hp)

    updates = [runner.train(task(c), payload, {}) for c in range(w.measured_clients)]
    timed = updates[1:]
    steps = sum(getattr(u, "steps", 0) or w.steps_per_client for u in timed)
    row: dict[str, Any] = {
        "ms_per_step": round(1000 * sum(u.train_seconds for u in timed) / steps, 3),
        "setup_s": round(sum(getattr(u, "setup_seconds", 0.0) for u in updates), 1),
        "device": str(runner.device),
    }
    row.update(
        profile_steps(
            lambda: (
                getattr(runner.train(task(w.measured_clients), payload, {}), "steps", 0)
                or w.steps_per_client
            )
        )
    )
    row["round_s_projected"] = round(row["ms_per_step"] * ROUND_STEPS / 1000, 2)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row, dict(updates[1].upload[MODEL])


def variant_order(smoke: bool) -> tuple[list[str], list[str]]:
    """(before the runs, after them): FedPara's modes first, fastest to set up."""
    import torch

    if smoke:  # compiling VGG16 takes minutes on a CPU; a slow test compiles
        return ["fedpara/eager", "original/eager"], []
    if not torch.cuda.is_available():
        return ["fedpara/eager", "original/eager", "fedpara/compile"], []
    first = [f"fedpara/{m}" for m in ("eager", "graph", "compile+graph", "compile")]
    later = [f"original/{m}" for m in ("eager", "graph", "compile+graph", "compile")]
    return first, [*later, "fedpara/reduce-overhead", "original/reduce-overhead"]


class Deadline:
    """Seconds left of the script's budget; a variant past it is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def variants(
    keys: list[str],
    w: Workload,
    precision: str,
    parts: set[str],
    out: dict[str, Any],
    deadline: Deadline,
) -> None:
    """Plain loop and fedsim's client path for each ``param/mode`` in ``keys``."""
    for key in keys:
        param, mode = key.split("/")
        for name in ("client", "plain"):
            if name not in parts:
                continue
            if mode == "reduce-overhead" and name == "plain":
                continue  # a plain loop would compile it the same way
            needed = 120 if "compile" in mode or mode == "reduce-overhead" else 30
            if deadline.left() < needed:  # a compile takes a minute or two
                out.setdefault(name, {})[key] = {"skipped": "deadline"}
                continue
            if name == "plain":
                row = guarded(plain, w, param, mode)
            else:
                res = guarded(fedsim_client, w, param, mode, precision)
                row = res[0] if isinstance(res, tuple) else res
                if isinstance(res, tuple):
                    uploads = out.setdefault("_uploads", {})
                    uploads[key] = res[1]
                    eager = uploads.get(f"{param}/eager")
                    if mode != "eager" and eager is not None:
                        row["rel_diff_vs_eager"] = f"{rel_diff(res[1], eager):.2e}"
            out.setdefault(name, {})[key] = row
            log(f"{name} {key}: {row}")
        client = out.get("client", {}).get(key, {})
        base = out.get("plain", {}).get(key, {})
        if "ms_per_step" in client and "ms_per_step" in base:
            client["vs_plain"] = round(client["ms_per_step"] / base["ms_per_step"], 3)


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``{"error": ...}``: one failing mode does not stop the rest."""
    try:
        return fn(*args)
    except Exception as exc:  # report and go on
        log(f"error: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


# ------------------------------------------------------------------ vectorized


def vector_cohort(w: Workload, param: str, slots: int, graph: bool) -> Any:
    """A runner and the 16-client Dirichlet cohort of the vectorized part."""
    from fedsim.client import ClientRunner
    from fedsim.config import load_config
    from fedsim.driver import client_seed
    from fedsim.messages import MODEL, ClientHParams, ClientTask
    from fedsim.model import checked_model, worker_spec
    from fedsim.params import initial_state
    from fedsim.strategy import state_layout

    overrides = [
        *base_overrides(w, param, VECTOR_COHORT),
        "data.partition=dirichlet",
        "data.alpha=0.5",
        f"resources.clients_per_actor={slots}",
        *(MODE_OVERRIDES["graph"] if graph else []),
    ]
    cfg = load_config(None, overrides)
    data, part = cfg.data_request()()
    layout = state_layout(cfg, checked_model(cfg))
    runner = ClientRunner(worker_spec(cfg), data, part, layout)
    payload = {MODEL: initial_state(runner.module.model, layout)}
    hp = ClientHParams(lr=0.1, epochs=w.epochs, batch_size=w.batch)
    jobs = [
        (ClientTask(client_id=c, round=0, seed=client_seed(0, 0, c), hparams=hp), {})
        for c in range(VECTOR_COHORT)
    ]
    return runner, payload, jobs


def timed_cohort(
    train: Callable[[], list[Any]], step_of: Callable[[], tuple[Any, str]]
) -> tuple[dict[str, Any], list[Any]]:
    """ms and kernel ops per client step of ``train()``, a call over the cohort.

    ``step_of()`` names, after a warm-up call, the object and method that run
    one step (of one client, or of every slot): its ops are also counted
    alone, on the call's first step.
    """
    train()  # warm-up (and the recording of a captured step)
    step_owner, attr = step_of()
    sync()
    t0 = time.perf_counter()
    updates = train()
    sync()
    seconds = time.perf_counter() - t0
    steps = sum(u.steps for u in updates)
    counter, first = OpCounter(), OpCounter()
    real_step = getattr(step_owner, attr)

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        if first.ops:  # the first step only
            return real_step(*args, **kwargs)
        with first.mode:
            return real_step(*args, **kwargs)

    setattr(step_owner, attr, counted_step)
    try:
        with counter.mode:
            train()
    finally:
        delattr(step_owner, attr)  # the class's method again
    row: dict[str, Any] = {
        "client_steps": steps,
        "ms_per_client_step": round(1000 * seconds / steps, 3),
        "kernel_ops_per_client_step": round(counter.kernels / steps, 1),
        "launch_ops_per_client_step": round(counter.launches / steps, 1),
        "step_kernel_ops": first.kernels,
        "step_launch_ops": first.launches,
    }
    row.update(profile_steps(lambda: sum(u.steps for u in train())))
    row["round_s_projected"] = round(row["ms_per_client_step"] * ROUND_STEPS / 1000, 2)
    return row, updates


def one_by_one(runner: Any, payload: Any, jobs: list[Any]) -> list[Any]:
    """The cohort trained by ``runner``, one client after another."""
    return [runner.train(task, payload, kept) for task, kept in jobs]


def vectorized(
    w: Workload,
    smoke: bool,
    deadline: Deadline,
    slot_counts: tuple[int, ...] = VECTOR_SLOTS,
) -> dict[str, Any]:
    """The sequential cohort, then K at a time, eager and recorded.

    ``step_kernel_ops_per_client_step`` divides one full step's ops by the
    clients it trains (K for the vectorized step, whose first step has every
    slot full).
    """
    import torch

    from fedsim.messages import MODEL

    out: dict[str, Any] = {}
    cuda = torch.cuda.is_available()
    for param in ("fedpara",) if smoke else PARAMS:
        runner, payload, jobs = vector_cohort(w, param, 1, graph=False)

        row, reference = timed_cohort(
            functools.partial(one_by_one, runner, payload, jobs),
            functools.partial(lambda r: (r.engine, "step"), runner),
        )
        row["step_kernel_ops_per_client_step"] = row.pop("step_kernel_ops")
        row["step_launch_ops_per_client_step"] = row.pop("step_launch_ops")
        out[f"{param}/sequential"] = row
        log(f"vectorized {param}/sequential: {row}")
        want = {u.client_id: u.upload[MODEL] for u in reference}
        for slots in slot_counts:
            for graph in (False, True):
                key = f"{param}/k{slots}{'+graph' if graph else ''}"
                if graph and not cuda:
                    out[key] = {"skipped": "needs CUDA"}
                    continue
                if deadline.left() < 60:
                    out[key] = {"skipped": "deadline"}
                    continue
                out[key] = row = guarded(
                    together_row,
                    w,
                    param,
                    slots,
                    graph,
                    out[f"{param}/sequential"],
                    want,
                )
                log(f"vectorized {key}: {row}")
                torch.cuda.empty_cache() if cuda else None
    return out


def together_row(
    w: Workload,
    param: str,
    slots: int,
    graph: bool,
    sequential: dict[str, Any],
    want: dict[int, Any],
) -> dict[str, Any]:
    """One vectorized variant's row (see :func:`vectorized`)."""
    from fedsim.cohort import CohortTrainer
    from fedsim.messages import MODEL

    runner, payload, jobs = vector_cohort(w, param, slots, graph)
    together = CohortTrainer(runner, slots)
    row, updates = timed_cohort(
        lambda: together.train_in_order(jobs, payload),
        lambda: (together._step, "_run"),  # every slot's step, recorded or not
    )
    for name in ("kernel", "launch"):  # the first step has every slot full
        ops = row.pop(f"step_{name}_ops")
        row[f"step_{name}_ops_per_client_step"] = round(ops / slots, 1)
    row["slot_occupancy"] = round(together.last_run.occupancy(slots), 3)
    row["setup_s"] = round(together.last_run.setup_seconds, 1)
    worst = max(
        rel_diff(dict(u.upload[MODEL]), dict(want[u.client_id])) for u in updates
    )
    row["rel_diff_vs_sequential"] = f"{worst:.2e}"  # dropout draws differ
    for name in (
        "kernel_ops_per_client_step",
        "launch_ops_per_client_step",
        "step_kernel_ops_per_client_step",
        "step_launch_ops_per_client_step",
    ):
        row[f"{name}_vs_sequential"] = round(row[name] / sequential[name], 4)
    return row


# ------------------------------------------------------------------ fedsim run


def fedsim_runs(
    w: Workload, mode: str, precision: str, smoke: bool, deadline: Deadline
) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"mode": mode, "precision": precision}
    cuda = torch.cuda.is_available()
    for actors in w.actors:
        if deadline.left() < 90:
            out[f"actors_{actors}"] = {"skipped": "deadline"}
            continue
        root = Path(tempfile.mkdtemp(prefix="gpu_round_"))
        overrides = [
            f"rounds={w.rounds}",
            "server.eval_every=2",
            "log.progress=false",
            "log.tensorboard=false",
            "log.checkpoint_every=0",
            f"log.root={root}",
            *MODE_OVERRIDES[mode],
            f"resources.matmul_precision={precision}",
        ]
        if smoke:
            overrides += [
                "data.name=synthetic_cifar",
                "data.synthetic_train=160",
                "data.synthetic_test=40",
                "data.num_clients=4",
                "server.clients_per_round=2",
                "model.arch=cnn",
                "client.epochs=1",
                "client.batch_size=16",
                "server.eval_batch_size=20",
            ]
            backend = ["--backend", "local"]
        else:
            overrides += [
                "data.name=synthetic_cifar",
                "data.root=null",
                "data.partition=iid",
                f"resources.num_actors={actors}",
                f"resources.gpus_per_client={1 / actors if cuda else 0}",
                "resources.cpus_per_client=1",
            ]
            backend = []
        cmd = [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            str(HERE / "configs" / "cifar10_vgg16_fedpara.yaml"),
            *overrides,
            *backend,
        ]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=min(300, max(30, deadline.left())),
            )
        except subprocess.TimeoutExpired:
            out[f"actors_{actors}"] = {"error": "timed out"}
            continue
        wall = time.perf_counter() - t0
        rows = [
            json.loads(line)
            for path in root.glob("*/*/metrics.jsonl")
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        if proc.returncode != 0 or not rows:
            out[f"actors_{actors}"] = {
                "error": f"exit {proc.returncode}",
                "stderr": proc.stderr[-800:],
            }
            log(f"run {actors} actors failed: {proc.stderr[-800:]}")
            continue
        steady = rows[2:] or rows[1:] or rows
        with_eval = [
            r["round_seconds"] for r in steady if r.get("accuracy") is not None
        ]
        without = [r["round_seconds"] for r in steady if r.get("accuracy") is None]
        res = {
            "rounds": len(rows),
            "round_s_with_eval": round(statistics.median(with_eval), 3)
            if with_eval
            else None,
            "round_s_without_eval": round(statistics.median(without), 3)
            if without
            else None,
            "eval_s": round(
                statistics.median(r.get("eval_seconds", 0) for r in steady), 3
            ),
            "steps_per_round": rows[-1].get("steps"),
            "setup_s_first_round": round(rows[0].get("setup_seconds", 0.0), 1),
            "first_round_s": round(rows[0]["round_seconds"], 1),
            "wall_s": round(wall, 1),
            "accuracy_last": rows[-1].get("accuracy"),
        }
        out[f"actors_{actors}"] = res
        log(f"run {actors} actors: {res}")
    return out


def fastest_mode(client: dict[str, Any]) -> str:
    best, best_ms = "eager", math.inf
    for key, row in client.items():
        param, mode = key.split("/")
        ms = row.get("ms_per_step")
        if param == "fedpara" and isinstance(ms, float) and ms < best_ms:
            best, best_ms = mode, ms
    return best


# ------------------------------------------------------------------ baseline


def baseline(
    path: Path, smoke: bool, precision: str, parts: set[str]
) -> dict[str, Any]:
    """This script against an earlier fedsim tree, in a subprocess."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--as-baseline",
        str(path.resolve()),
        "--precision",
        precision,
        "--parts",
        ",".join(sorted(parts & {"proxies", "client"})),
    ]
    if smoke:
        cmd.append("--smoke")
    env = {**os.environ, "PYTHONPATH": str(path.resolve())}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=600, cwd=path
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    sys.stderr.write(proc.stderr[-3000:])
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-800:]}


def as_baseline(
    w: Workload, smoke: bool, precision: str, parts: set[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "proxies" in parts:
        out["proxies"] = guarded(proxies_tiny, smoke)
    if "client" in parts:
        set_precision(precision)
        for param in PARAMS:
            res = guarded(fedsim_client, w, param, "eager", None)
            out[f"client/{param}/eager"] = res[0] if isinstance(res, tuple) else res
            log(f"baseline client {param}: {out[f'client/{param}/eager']}")
    return out


def proxies_tiny(smoke: bool) -> dict[str, Any]:
    use_tiny_widths()
    return proxies(include_graph_breaks=not smoke, timed_steps=10 if smoke else 40)


# ------------------------------------------------------------------ main


@contextlib.contextmanager
def part(name: str, report: dict[str, Any]) -> Iterator[None]:
    t0 = time.perf_counter()
    log(f"part {name} ...")
    try:
        yield
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    report.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    shown = ("client", "plain") if name.startswith("client") else (name,)
    print(json.dumps({k: report.get(k) for k in shown}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the paper's workload at tiny widths (CPU proxies at full step counts)",
    )
    parser.add_argument(
        "--slots",
        default=",".join(map(str, VECTOR_SLOTS)),
        help="the vectorized part's K values (comma-separated)",
    )
    parser.add_argument("--parts", default="proxies,plain,client,run,vectorized")
    parser.add_argument("--baseline", type=Path, help="an earlier fedsim tree")
    parser.add_argument("--precision", default=None, help="matmul precision")
    parser.add_argument("--out", type=Path, help="folder for gpu_round.json")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=3600,
        help="skip the variants and runs that would start after this many seconds",
    )
    parser.add_argument("--as-baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    w = SMOKE if args.smoke else TINY_PAPER if args.tiny else PAPER
    if args.as_baseline:
        sys.path.insert(0, str(args.as_baseline))
        if w.tiny:
            use_tiny_widths()
        result = as_baseline(w, args.smoke, args.precision or "highest", parts)
        print(json.dumps(result), flush=True)
        return
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import torch

    cuda = torch.cuda.is_available()
    precision = args.precision or ("high" if cuda else "highest")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "precision": precision,
        "workload": w.__dict__,
        "opt_einsum": torch.backends.opt_einsum.is_available(),
    }
    t_start = time.perf_counter()
    deadline = Deadline(args.deadline_s)

    def save() -> None:
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        if args.out:  # after every part: a run cut short keeps what it measured
            args.out.mkdir(parents=True, exist_ok=True)
            shown = {k: v for k, v in report.items() if not k.startswith("_")}
            (args.out / "gpu_round.json").write_text(json.dumps(shown, indent=2))

    if args.baseline and parts & {"proxies", "client"}:
        with part("baseline", report):
            report["baseline"] = baseline(args.baseline, args.smoke, precision, parts)
        save()
    if "proxies" in parts:
        with part("proxies", report):
            # Tiny widths patch the model zoo of the process: a subprocess keeps
            # them from the client part's full widths (the smoke mode is tiny
            # throughout, so it measures here).
            if args.smoke:
                report["proxies"] = proxies_tiny(smoke=True)
            else:
                report["proxies"] = proxies_in_subprocess(args.smoke)
        save()
    if w.tiny:
        use_tiny_widths()
    set_precision(precision)
    first, later = variant_order(args.smoke)
    if parts & {"plain", "client"}:
        with part("client", report):
            variants(first, w, precision, parts, report, deadline)
        save()
    if "run" in parts:
        with part("run", report):
            mode = fastest_mode(report.get("client", {})) if not args.smoke else "eager"
            report["run"] = fedsim_runs(w, mode, precision, args.smoke, deadline)
        save()
    if "vectorized" in parts:
        with part("vectorized", report):
            slots = tuple(int(k) for k in args.slots.split(","))
            report["vectorized"] = vectorized(w, args.smoke, deadline, slots)
        save()
    if later and parts & {"plain", "client"}:
        with part("client_more", report):
            variants(later, w, precision, parts, report, deadline)
        save()
    report.pop("_uploads", None)
    save()
    print(json.dumps(report), flush=True)


def proxies_in_subprocess(smoke: bool) -> dict[str, Any]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "sys.argv = sys.argv[:1]; import benchmarks.gpu_round as g; "
        f"print(json.dumps(g.proxies_tiny(smoke={smoke})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(HERE)],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=600,
    )
    sys.stderr.write(proc.stderr[-2000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
