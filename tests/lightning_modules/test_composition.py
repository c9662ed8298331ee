"""The matrix-product composition against the einsum form it replaced.

Every factorized layer of every model the zoo builds (each shape the models
use) composes its weight, forward and backward, as the three-operand einsum
composition did: equal to float64 rounding, and within 1e-6 of the weight's
scale in float32. The einsum form is written out here as the reference.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
from torch import Tensor, nn

from lightning_modules.layers import (
    FactorizedLayer,
    FedParaConv2d,
    FedParaLinear,
    LowRankConv2d,
    LowRankLinear,
    composed_once,
)
from lightning_modules.models import build_model
from lightning_modules.spec import ModelSpec


def _einsum_tucker(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The composition as it was: ``einsum("abzw,ao,bc->oczw")``."""
    return torch.einsum("abzw,ao,bc->oczw", t, x, y)


def _reference(layer: FactorizedLayer) -> Tensor:
    """The layer's weight through the einsum form and the paper's combine rules."""
    if isinstance(layer, LowRankConv2d):
        return _einsum_tucker(layer.t, layer.x, layer.y)
    if isinstance(layer, LowRankLinear):
        return layer.x @ layer.y.T
    if isinstance(layer, FedParaConv2d):
        w1 = _einsum_tucker(layer.t1, layer.x1, layer.y1)
        w2 = _einsum_tucker(layer.t2, layer.x2, layer.y2)
    else:
        assert isinstance(layer, FedParaLinear)
        w1, w2 = layer.x1 @ layer.y1.T, layer.x2 @ layer.y2.T
    if layer.nonlinear:
        w1, w2 = torch.tanh(w1), torch.tanh(w2)
    return w1 * (w2 + 1) if layer.personalized else w1 * w2


IMAGE = (3, 32, 32)
SPECS = {
    "vgg16_fedpara_paper_0.1": ModelSpec("vgg16", 10, IMAGE, "fedpara", 0.1),
    "vgg16_fedpara_official_0.4": ModelSpec(
        "vgg16", 100, IMAGE, "fedpara", 0.4, rank_rule="official"
    ),
    "vgg16_pfedpara_tanh": ModelSpec(
        "vgg16", 10, IMAGE, "pfedpara", 0.1, nonlinear=True
    ),
    "vgg16_lowrank": ModelSpec("vgg16", 10, IMAGE, "lowrank", 0.1),
    "cnn_fedpara": ModelSpec("cnn", 62, (1, 28, 28), "fedpara", 0.5),
    "cnn_lowrank": ModelSpec("cnn", 62, (1, 28, 28), "lowrank", 0.5),
    "mlp_pfedpara": ModelSpec("mlp", 10, (1, 28, 28), "pfedpara", 0.5),
    "mlp_digits_tanh": ModelSpec(
        "mlp_digits", 10, (1, 8, 8), "fedpara", 0.5, nonlinear=True
    ),
    "lstm_fedpara": ModelSpec("lstm", 80, (80,), "fedpara", 0.5),
    "lstm_lowrank": ModelSpec("lstm", 80, (80,), "lowrank", 0.5),
}


def _factorized(model: nn.Module) -> list[tuple[str, FactorizedLayer]]:
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, FactorizedLayer)
    ]
    assert layers, "the spec builds no factorized layer"
    return layers


@functools.cache
def _distinct_layers(name: str) -> tuple[tuple[str, FactorizedLayer], ...]:
    """One layer per distinct (kind, factor shapes, options) of the spec's model."""
    torch.manual_seed(0)
    seen: dict[object, tuple[str, FactorizedLayer]] = {}
    for layer_name, layer in _factorized(build_model(SPECS[name])):
        shapes = tuple((n, tuple(p.shape)) for n, p in layer.named_parameters())
        key = (type(layer), shapes, getattr(layer, "nonlinear", None))
        seen.setdefault(key, (layer_name, layer))
    return tuple(seen.values())


def _rel(a: Tensor, b: Tensor) -> float:
    """Relative error in the Frobenius norm, ``||a - b|| / ||b||``."""
    a, b = a.detach(), b.detach()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float64, 1e-13), (torch.float32, 1e-6)]
)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_composition_and_gradients_equal_the_einsum_form(
    name: str, dtype: torch.dtype, tolerance: float
) -> None:
    torch.manual_seed(1)
    for layer_name, shared in _distinct_layers(name):
        layer = copy.deepcopy(shared).to(dtype)
        names = [n for n, _ in layer.named_parameters() if n != "bias"]
        params = [layer.get_parameter(n) for n in names]
        new = layer.composed_weight()
        ref = _reference(layer)
        assert new.shape == ref.shape
        assert new.is_contiguous(), f"{layer_name}: the kernel must be NCHW"
        assert _rel(new, ref) <= tolerance, layer_name
        upstream = torch.randn_like(ref)  # one random cotangent for both
        grads_new = torch.autograd.grad(new, params, upstream)
        grads_ref = torch.autograd.grad(ref, params, upstream)
        for pname, g_new, g_ref in zip(names, grads_new, grads_ref, strict=True):
            assert _rel(g_new, g_ref) <= tolerance, f"{layer_name}.{pname}"


def test_composed_once_gives_the_same_outputs_and_refuses_training() -> None:
    torch.manual_seed(0)
    model = build_model(SPECS["cnn_fedpara"]).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        per_batch = model(x)
    calls = []
    for _, layer in _factorized(model):
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    with composed_once(model):
        once = model(x)
        model(x)  # a second batch reuses the composed weights
        with torch.enable_grad(), pytest.raises(RuntimeError, match="no gradient"):
            model(x)
    torch.testing.assert_close(once, per_batch, rtol=0, atol=0)
    assert all(layer._fixed_weight is None for _, layer in _factorized(model))
    assert calls  # the layers ran; the weights they used were composed once


def test_composed_once_composes_each_weight_once() -> None:
    torch.manual_seed(0)
    spec = dataclasses.replace(SPECS["lstm_fedpara"], input_shape=(5,))
    model = build_model(spec).eval()
    counts: dict[str, int] = {}
    for layer_name, layer in _factorized(model):
        original = layer.composed_weight

        def counted(original=original, layer_name=layer_name) -> Tensor:
            counts[layer_name] = counts.get(layer_name, 0) + 1
            return original()

        layer.composed_weight = counted  # type: ignore[method-assign]
    tokens = torch.randint(0, 80, (3, 5))
    with composed_once(model):
        for _ in range(3):
            model(tokens)
    assert counts and set(counts.values()) == {1}
