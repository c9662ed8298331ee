"""Model zoo: exact VGG16-GN sizes, shapes, init scale, pFedPara split, errors."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import pytest
import torch
from torch import nn

from lightning_modules.layers import (
    FactorizedLayer,
    FedParaConv2d,
    FedParaLinear,
    LowRankConv2d,
    LowRankLinear,
    count_params,
    dense_weight_count,
    fedpara_weight_count,
    local_state_names,
)
from lightning_modules.models import (
    ARCHS,
    CharLSTM,
    ModelSpec,
    ParamKind,
    build_model,
    num_params_original,
)

PARAMS: tuple[ParamKind, ...] = ("original", "lowrank", "fedpara", "pfedpara")
C10 = ModelSpec("vgg16", 10, (3, 32, 32))
C100 = ModelSpec("vgg16", 100, (3, 32, 32))
MNIST = ModelSpec("mlp", 10, (1, 28, 28))
# Example of each arch, for shape checks.
EXAMPLES = {
    "vgg16": C10,
    "mlp": MNIST,
    "mlp_digits": ModelSpec("mlp_digits", 10, (1, 8, 8), gamma=0.5),
    "cnn": ModelSpec("cnn", 10, (3, 32, 32)),
    "lstm": ModelSpec("lstm", 80, (10,)),
}
# Index of each conv in VGG16-GN's ``features``: conv, GroupNorm, ReLU; pool = 1.
VGG_CONV_INDICES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)


@functools.cache
def built(spec: ModelSpec) -> nn.Module:
    """Build ``spec`` once, seeded; callers must not modify the model."""
    torch.manual_seed(0)
    return build_model(spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (C10, 1_546_844),  # rule A, gamma 0.1 (reference §4.2)
        (dataclasses.replace(C10, rank_rule="official"), 2_022_228),
        (dataclasses.replace(C100, gamma=0.4), 4_531_856),
        (dataclasses.replace(C100, gamma=0.4, rank_rule="official"), 6_525_324),
    ],
    ids=["c10-A-0.1", "c10-B-0.1", "c100-A-0.4", "c100-B-0.4"],
)
def test_vgg16_fedpara_sizes_are_exact(spec: ModelSpec, expected: int) -> None:
    assert count_params(built(spec)) == expected


def test_vgg16_original_sizes_are_exact() -> None:
    original = built(dataclasses.replace(C10, param="original"))
    assert count_params(original) == 15_253_578
    assert num_params_original(C100) == 15_299_748  # any param: counts "original"


def test_vgg16_reparameterizes_exactly_the_13_convs() -> None:
    cases: list[tuple[ParamKind, type[nn.Module]]] = [
        ("original", nn.Conv2d),
        ("lowrank", LowRankConv2d),
        ("fedpara", FedParaConv2d),
        ("pfedpara", FedParaConv2d),
    ]
    for param, conv_type in cases:
        model = built(dataclasses.replace(C10, param=param))
        features = model.get_submodule("features")
        convs = [
            i for i, m in enumerate(features.children()) if isinstance(m, conv_type)
        ]
        assert tuple(convs) == VGG_CONV_INDICES, param
        classifier = model.get_submodule("classifier")
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == 3, param  # the classifier always stays dense
        assert not any(isinstance(m, FactorizedLayer) for m in classifier.modules())


def test_vgg16_lowrank_stays_within_fedpara_budget() -> None:
    fedpara = count_params(built(C10))
    lowrank = count_params(built(dataclasses.replace(C10, param="lowrank")))
    assert 0.95 * fedpara < lowrank <= fedpara


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch: str, param: ParamKind) -> None:
    torch.manual_seed(0)
    spec = dataclasses.replace(EXAMPLES[arch], param=param)
    model = built(spec)
    model.eval()  # dropout off; harmless to other users of the cached model
    if arch == "lstm":
        x = torch.randint(0, spec.num_classes, (2, *spec.input_shape))
    else:
        x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()


def _he_ratios(model: nn.Module) -> dict[str, float]:
    """Composed-weight std over He std for every factorized layer."""
    ratios = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, FactorizedLayer):
                w = module.composed_weight()
                he_std = math.sqrt(2.0 / w[0].numel())  # fan_in = I k^2
                ratios[name] = w.std().item() / he_std
    return ratios


INIT_VARIANTS: list[tuple[ParamKind, bool]] = [
    ("fedpara", False),
    ("pfedpara", False),
    ("lowrank", False),
    ("fedpara", True),  # tanh variant
    ("pfedpara", True),
]
INIT_SPECS = {
    f"{name}-{param}{'-tanh' if tanh else ''}": dataclasses.replace(
        spec, param=param, nonlinear=tanh
    )
    for name, spec in [
        ("vgg16-0.1", C10),
        ("vgg16-0.4", dataclasses.replace(C100, gamma=0.4)),
        ("mlp", MNIST),
    ]
    for param, tanh in INIT_VARIANTS
    if not (tanh and name == "vgg16-0.4")  # tanh: one VGG size is enough
}


@pytest.mark.parametrize("key", sorted(INIT_SPECS))
def test_init_std_close_to_he(key: str) -> None:
    spec = INIT_SPECS[key]
    ratios = _he_ratios(built(spec))
    assert len(ratios) == (13 if spec.arch == "vgg16" else 3)
    bad = {name: r for name, r in ratios.items() if not 0.5 <= r <= 2.0}
    assert not bad


def test_local_state_names_pfedpara_vgg16() -> None:
    model = built(dataclasses.replace(C10, param="pfedpara"))
    expected = {
        f"features.{i}.{factor}"
        for i in VGG_CONV_INDICES
        for factor in ("t2", "x2", "y2")
    }
    names = local_state_names(model)
    assert names == expected and len(names) == 39
    assert names <= set(model.state_dict())
    assert local_state_names(built(C10)) == frozenset()


def test_local_state_names_pfedpara_mlp() -> None:
    model = build_model(dataclasses.replace(MNIST, param="pfedpara"))
    assert local_state_names(model) == {
        f"{i}.{factor}" for i in (1, 3, 5) for factor in ("x2", "y2")
    }
    for param in ("original", "lowrank", "fedpara"):
        spec = dataclasses.replace(MNIST, param=param)
        assert local_state_names(build_model(spec)) == frozenset()


def test_small_layers_stay_dense_when_fedpara_would_not_save() -> None:
    # Rule B at 0.5: 128 -> 10 gets R = max(4, 12, 5) = 12, 3312 weights > 1280.
    spec = ModelSpec("mlp_digits", 10, (1, 8, 8), gamma=0.5, rank_rule="official")
    layers = [
        m
        for m in build_model(spec).children()
        if isinstance(m, nn.Linear | FactorizedLayer)
    ]
    assert [type(m) for m in layers] == [FedParaLinear, FedParaLinear, nn.Linear]
    params: tuple[ParamKind, ...] = ("lowrank", "pfedpara")
    for param in params:
        model = build_model(dataclasses.replace(spec, param=param))
        assert isinstance(list(model.children())[-1], nn.Linear)


@pytest.mark.parametrize("arch", ["mlp", "mlp_digits", "cnn", "lstm"])
def test_every_reparameterized_layer_saves(arch: str) -> None:
    for rule in ("paper", "official"):
        spec = dataclasses.replace(EXAMPLES[arch], rank_rule=rule)
        for module in build_model(spec).modules():
            if isinstance(module, FedParaLinear):
                o, i, k = module.out_features, module.in_features, 1
            elif isinstance(module, FedParaConv2d):
                o, i, k = module.out_channels, module.in_channels, module.kernel_size
            else:
                continue
            saved = fedpara_weight_count(o, i, k, module.rank)
            assert saved < dense_weight_count(o, i, k)


def test_lstm_original_matches_torch_lstm() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("lstm", 20, (7,), param="original")
    model = build_model(spec).double()
    assert isinstance(model, CharLSTM)
    reference = nn.LSTM(8, 256, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for k, layer in enumerate(model.layers):
            ih, hh = layer.get_submodule("ih"), layer.get_submodule("hh")
            assert isinstance(ih, nn.Linear) and isinstance(hh, nn.Linear)
            getattr(reference, f"weight_ih_l{k}").copy_(ih.weight)
            getattr(reference, f"bias_ih_l{k}").copy_(ih.bias)
            getattr(reference, f"weight_hh_l{k}").copy_(hh.weight)
            getattr(reference, f"bias_hh_l{k}").zero_()
        tokens = torch.randint(0, 20, (3, 7))
        hidden, _ = reference(model.embed(tokens))  # (B, T, H)
        expected = model.head(hidden[:, -1])
        torch.testing.assert_close(model(tokens), expected)


@pytest.mark.parametrize("param", ["lowrank", "fedpara", "pfedpara"])
def test_lstm_factorizes_both_matrices_of_each_layer(param: ParamKind) -> None:
    model = build_model(dataclasses.replace(EXAMPLES["lstm"], param=param))
    expected = LowRankLinear if param == "lowrank" else FedParaLinear
    factorized = [m for m in model.modules() if isinstance(m, FactorizedLayer)]
    assert len(factorized) == 4
    assert all(isinstance(m, expected) for m in factorized)
    original = build_model(dataclasses.replace(EXAMPLES["lstm"], param="original"))
    assert count_params(model) < count_params(original)


def test_cnn_is_small() -> None:
    original = num_params_original(EXAMPLES["cnn"])
    assert 100_000 <= original <= 600_000
    assert count_params(build_model(EXAMPLES["cnn"])) < original


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "resnet"}, "arch must be one of .*vgg16.*lstm"),
        ({"param": "lora"}, "param must be one of .*original.*pfedpara"),
        ({"rank_rule": "flower"}, "rank_rule must be one of .*paper.*official"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"input_shape": (3, 16, 16)}, r"vgg16 needs input_shape \(C, H, W\)"),
        ({"input_shape": (32, 32)}, r"vgg16 needs input_shape \(C, H, W\)"),
    ],
)
def test_build_model_rejects_bad_specs(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(dataclasses.replace(C10, **changes))


def test_lstm_and_cnn_reject_bad_input_shapes() -> None:
    with pytest.raises(ValueError, match=r"lstm needs input_shape \(seq_len,\)"):
        build_model(dataclasses.replace(EXAMPLES["lstm"], input_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match=r"cnn needs input_shape \(C, H, W\)"):
        build_model(dataclasses.replace(EXAMPLES["cnn"], input_shape=(3, 8, 8)))
