"""The step forms: padded batches, the captured SGD rule, compiled = eager."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from fedsim.algorithm import ClientAlgorithm
from fedsim.client import ClientRunner
from fedsim.messages import MODEL
from fedsim.model import build_backbone, worker_spec
from fedsim.params import StateLayout, initial_state
from fedsim.strategy.feddyn import FedDynClient
from fedsim.strategy.fedprox import FedProxClient
from fedsim.strategy.scaffold import ScaffoldClient
from fedsim.train_step import EagerRecorder, sgd_update
from lightning_modules.classifier import Classifier
from lightning_modules.layers import FedParaConv2d, FedParaLinear
from tests.fixtures import load_data, tiny_config, tiny_task


def _per_sample_net() -> nn.Module:
    """FedPara conv + GroupNorm + max-pool + FedPara linear: per-example layers."""
    return nn.Sequential(
        FedParaConv2d(3, 8, 3, 2, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        FedParaLinear(8 * 4 * 4, 5, 3),
    )


def test_a_padded_masked_batch_has_the_loss_and_gradients_of_the_real_rows() -> None:
    torch.manual_seed(0)
    module = Classifier(_per_sample_net(), num_classes=5)
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 5, (5,))
    loss = module.training_step((x, y), 0)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    filler = torch.zeros(11, 3, 8, 8)  # padded to 16 rows
    weight = torch.cat([torch.full((5,), 1 / 5), torch.zeros(11)])
    batch = (torch.cat([x, filler]), torch.cat([y, torch.zeros(11, dtype=y.dtype)]))
    padded = module.training_step((*batch, weight), 0)
    padded_grads = torch.autograd.grad(padded, list(module.parameters()))
    torch.testing.assert_close(padded, loss, rtol=1e-6, atol=0)
    for g_pad, g in zip(padded_grads, grads, strict=True):
        torch.testing.assert_close(g_pad, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0, 0), (0.9, 0), (0.9, 5e-4)])
def test_the_captured_sgd_rule_is_torch_sgd(
    momentum: float, weight_decay: float
) -> None:
    torch.manual_seed(0)
    ref = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]
    ours = [p.detach().clone() for p in ref]
    opt = torch.optim.SGD(ref, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    buffers = [torch.zeros_like(p) for p in ours]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(ref, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        lr = torch.tensor(-0.1)
        sgd_update(
            ours, grads, buffers, lr, momentum=momentum, weight_decay=weight_decay
        )
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def _runner(tmp_path: Path, *overrides: str) -> tuple[ClientRunner, dict]:
    cfg = tiny_config(tmp_path, *overrides)
    data, part = load_data(cfg)
    layout = StateLayout.of(build_backbone(cfg, 10, (1, 8, 8)))
    runner = ClientRunner(worker_spec(cfg), data, part, layout)
    return runner, {MODEL: initial_state(runner.module.model, layout)}


def test_the_numeric_policy_is_applied_and_recorded(tmp_path: Path) -> None:
    from fedsim.config import dump_config

    before = torch.get_float32_matmul_precision()
    try:
        runner, _ = _runner(
            tmp_path, "resources.matmul_precision=high", "resources.cuda_graph=true"
        )
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
        assert not runner.engine.capture  # no CUDA here: steps run uncaptured
        path = tmp_path / "config.yaml"
        dump_config(tiny_config(tmp_path, "resources.matmul_precision=high"), path)
        resources = yaml.safe_load(path.read_text())["resources"]
        assert resources["matmul_precision"] == "high"
        assert {"compile", "cuda_graph", "cudnn_benchmark"} <= resources.keys()
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.slow
def test_a_compiled_client_trains_to_the_eager_tensors(tmp_path: Path) -> None:
    eager, payload = _runner(tmp_path)
    compiled, _ = _runner(tmp_path, "resources.compile=default")
    assert compiled.engine.padded and not eager.engine.padded
    want = eager.train(tiny_task(1), payload, {})
    got = compiled.train(tiny_task(1), payload, {})
    assert got.steps == want.steps > 1 and got.setup_seconds > 0
    assert want.setup_seconds == 0
    again = compiled.train(tiny_task(2), payload, {})
    assert again.setup_seconds == 0  # compiled once per worker
    for name, tensor in want.upload[MODEL].items():
        rel = (got.upload[MODEL][name] - tensor).norm() / tensor.norm().clamp_min(1e-12)
        assert rel <= 1e-5, name
    assert got.train_loss == pytest.approx(want.train_loss, rel=1e-5)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_the_captured_step_trains_as_the_eager_step(tmp_path: Path) -> None:
    """The captured step's machinery, replayed eagerly on the CPU.

    Static inputs, the tensor learning rate, momentum and weight decay in
    place, the loss summed on the device, and a warm-up that must not move
    the weights: two clients in a row (another learning rate, momentum reset)
    end where the eager Fabric step ends, to float rounding.
    """
    eager, payload = _runner(tmp_path)
    captured, _ = _runner(tmp_path, "resources.cuda_graph=true")
    captured.engine.capture = True  # as on a GPU, recorded by EagerRecorder
    captured.engine.recorder = EagerRecorder()
    assert captured.engine.padded
    hp = {"momentum": 0.9, "weight_decay": 1e-3}
    for client, lr in ((1, 0.05), (2, 0.02)):
        want = eager.train(tiny_task(client, lr=lr, **hp), payload, {})
        got = captured.train(tiny_task(client, lr=lr, **hp), payload, {})
        assert got.steps == want.steps
        assert got.train_loss == pytest.approx(want.train_loss, rel=1e-5)
        for name, tensor in want.upload[MODEL].items():
            assert _rel(got.upload[MODEL][name], tensor) <= 1e-5, (client, name)
    assert captured.engine._graph is not None  # recorded once, for both clients


@pytest.mark.parametrize(
    "algorithm",
    [FedProxClient(mu=0.5), ScaffoldClient(), FedDynClient(alpha=0.1)],
    ids=["fedprox", "scaffold", "feddyn"],
)
def test_algorithm_hooks_are_recorded_with_their_state_refilled_per_client(
    tmp_path: Path, algorithm: ClientAlgorithm
) -> None:
    """Step hooks read static copies of their state, refilled for each client.

    Two clients in a row with different kept states (and SCAFFOLD's control
    variate) end where the eager step ends, and each client's kept state and
    extra uploads agree too.
    """
    eager, payload = _runner(tmp_path)
    captured, _ = _runner(tmp_path, "resources.cuda_graph=true")
    captured.engine.capture = True
    captured.engine.recorder = EagerRecorder()
    gen = torch.Generator().manual_seed(3)
    floating = {n: t for n, t in payload[MODEL].items() if t.is_floating_point()}
    full = {
        **payload,
        "control": {
            n: 0.01 * torch.randn(t.shape, generator=gen) for n, t in floating.items()
        },
    }
    kept: dict = {}
    for client in (1, 2):
        task = dataclasses.replace(tiny_task(client), algorithm=algorithm)
        want = eager.train(task, full, kept)
        got = captured.train(task, full, kept)
        for channel, tensors in want.upload.items():
            for name, tensor in tensors.items():
                assert _rel(got.upload[channel][name], tensor) <= 1e-4, (channel, name)
        for ns, tensors in want.keep.items():
            for name, tensor in tensors.items():
                assert _rel(got.keep[ns][name], tensor) <= 1e-4, (ns, name)
        kept = dict(want.keep)  # the next client starts from a nonzero state
    assert captured.engine._graph is not None  # recorded once, hooks included


def test_feddyn_clients_of_different_alpha_share_one_captured_step(
    tmp_path: Path,
) -> None:
    """Examples weighting gives each client its own alpha (and clipping may be
    on): alpha is step state, so one recorded step serves both clients and
    each ends where its eager step ends."""
    eager, payload = _runner(tmp_path)
    captured, _ = _runner(tmp_path, "resources.cuda_graph=true")
    captured.engine.capture = True
    captured.engine.recorder = EagerRecorder()
    kept: dict = {}
    graphs = []
    for client, alpha in ((1, 0.05), (2, 0.4)):
        algorithm = FedDynClient(alpha=alpha, max_grad_norm=1.0)
        task = dataclasses.replace(tiny_task(client), algorithm=algorithm)
        want = eager.train(task, payload, kept)
        got = captured.train(task, payload, kept)
        for name, tensor in want.upload[MODEL].items():
            assert _rel(got.upload[MODEL][name], tensor) <= 1e-4, (client, name)
        for name, tensor in want.keep["feddyn"].items():
            assert _rel(got.keep["feddyn"][name], tensor) <= 1e-4, (client, name)
        graphs.append(captured.engine._graph)
        kept = dict(want.keep)
    assert graphs[0] is not None and graphs[0] is graphs[1]  # recorded once
