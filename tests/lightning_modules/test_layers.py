"""Rank rules, parity, rank reach, gradients and init of the factorized layers."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.layers import (
    LOCAL_HALF_STD,
    FactorizedLayer,
    FedParaConv2d,
    FedParaLinear,
    LowRankConv2d,
    LowRankLinear,
    count_params,
    dense_weight,
    fedpara_rank,
    fedpara_weight_count,
    local_state_names,
    lowrank_rank_matching,
    lowrank_weight_count,
)

# ----------------------------------------------------------------------------
# Rank rules: oracles from shared/reference/fedpara.md §1.3 and vgg16-gn-ranks.md
# ----------------------------------------------------------------------------
# 256 -> 256 3x3, rule B (official notebook): ratio, R, FedPara params.
OFFICIAL_256 = [
    (0.1, 36, 60_192),
    (0.3, 75, 178_050),
    (0.5, 103, 296_434),
    (0.7, 126, 414_792),
    (0.9, 146, 533_192),
]
# (I, O, gamma, r_min, r_max, R, params): rule A, 3x3, 256 and 512 oracles.
PAPER_SQUARE = [
    (256, 256, 0.1, 16, 154, 30, 46_920),
    (256, 256, 0.4, 16, 154, 72, 167_040),
    (512, 512, 0.1, 23, 309, 52, 155_168),
    (512, 512, 0.4, 23, 309, 138, 625_416),
]
# vgg16-gn-ranks.md, one row per distinct conv:
# (I, O, gamma, r_min, r_max, R_A, params_A, R_B, params_B)
VGG_ROWS = [
    (3, 64, 0.1, 2, 6, 3, 564, 8, 2_224),
    (64, 64, 0.1, 8, 38, 11, 4_994, 9, 3_762),
    (64, 128, 0.1, 8, 54, 13, 8_034, 13, 8_034),
    (128, 128, 0.1, 12, 77, 19, 16_226, 18, 15_048),
    (128, 256, 0.1, 12, 108, 22, 25_608, 25, 30_450),
    (256, 256, 0.1, 16, 154, 30, 46_920, 36, 60_192),
    (256, 512, 0.1, 16, 216, 36, 78_624, 49, 118_482),
    (512, 512, 0.1, 23, 309, 52, 155_168, 71, 236_146),
    (3, 64, 0.4, 2, 6, 4, 824, 8, 2_224),
    (64, 64, 0.4, 8, 38, 20, 12_320, 23, 15_410),
    (64, 128, 0.4, 8, 54, 27, 23_490, 32, 30_720),
    (128, 128, 0.4, 12, 77, 38, 45_448, 45, 59_490),
    (128, 256, 0.4, 12, 108, 51, 85_986, 63, 119_826),
    (256, 256, 0.4, 16, 154, 72, 167_040, 90, 237_960),
    (256, 512, 0.4, 16, 216, 96, 313_344, 125, 473_250),
    (512, 512, 0.4, 23, 309, 138, 625_416, 180, 951_840),
]


@pytest.mark.parametrize(("ratio", "rank", "params"), OFFICIAL_256)
def test_official_rule_256_table(ratio: float, rank: int, params: int) -> None:
    assert fedpara_rank(256, 256, 3, ratio, "official") == rank
    assert fedpara_weight_count(256, 256, 3, rank) == params


@pytest.mark.parametrize(
    ("i", "o", "gamma", "r_min", "r_max", "rank", "params"), PAPER_SQUARE
)
def test_paper_rule_square_tables(
    i: int, o: int, gamma: float, r_min: int, r_max: int, rank: int, params: int
) -> None:
    assert fedpara_rank(o, i, 3, 0.0, "paper") == r_min  # gamma 0 -> r_min
    assert fedpara_rank(o, i, 3, 1.0, "paper") == r_max  # gamma 1 -> r_max
    assert fedpara_rank(o, i, 3, gamma, "paper") == rank
    assert fedpara_weight_count(o, i, 3, rank) == params


@pytest.mark.parametrize("row", VGG_ROWS, ids=lambda r: f"{r[0]}-{r[1]}-g{r[2]}")
def test_vgg16_rank_rows(row: tuple[int, ...]) -> None:
    i, o, gamma, r_min, r_max, rank_a, params_a, rank_b, params_b = row
    assert fedpara_rank(o, i, 3, 0.0, "paper") == r_min
    assert fedpara_rank(o, i, 3, 1.0, "paper") == r_max
    assert fedpara_rank(o, i, 3, gamma, "paper") == rank_a
    assert fedpara_rank(o, i, 3, gamma, "official") == rank_b
    layer_a = FedParaConv2d(i, o, 3, rank_a, padding=1, bias=False)
    layer_b = FedParaConv2d(i, o, 3, rank_b, padding=1, bias=False)
    assert layer_a.num_params == fedpara_weight_count(o, i, 3, rank_a) == params_a
    assert layer_b.num_params == fedpara_weight_count(o, i, 3, rank_b) == params_b


@pytest.mark.parametrize(
    ("o", "i", "k", "gamma", "r_min", "r_max", "rank"),
    [
        (4, 256, 3, 0.4, 2, 12, 6),  # 0.6 * 2 + 0.4 * 12 = 6.000000000000001
        (9, 64, 3, 0.9, 3, 13, 12),  # 0.1 * 3 + 0.9 * 13 = 12.000000000000002
        (7, 42, 1, 0.2, 3, 3, 3),  # 0.8 * 3 + 0.2 * 3 = 3.0000000000000004
    ],
)
def test_paper_rule_rounds_away_float_noise(
    o: int, i: int, k: int, gamma: float, r_min: int, r_max: int, rank: int
) -> None:
    assert (1 - gamma) * r_min + gamma * r_max > rank  # the float noise is real
    assert fedpara_rank(o, i, k, 0.0, "paper") == r_min
    assert fedpara_rank(o, i, k, 1.0, "paper") == r_max
    assert fedpara_rank(o, i, k, gamma, "paper") == rank


def test_linear_rules_hand_computed() -> None:
    # 784 -> 200: r_min = min(15, 28) = 15, r_max = floor(156800 / 1968) = 79.
    assert fedpara_rank(200, 784, 1, 0.0, "paper") == 15
    assert fedpara_rank(200, 784, 1, 1.0, "paper") == 79
    assert fedpara_rank(200, 784, 1, 0.1, "paper") == 22  # ceil(13.5 + 7.9)
    # Rule B: r_t = 0.1 * 156800 / 1968 = 7.97 -> 8, floored at ceil(sqrt(784)).
    assert fedpara_rank(200, 784, 1, 0.1, "official") == 28
    assert fedpara_rank(200, 784, 1, 0.9, "official") == 72  # ceil(71.7)
    assert fedpara_weight_count(200, 784, 1, 22) == 2 * 22 * 984  # no R^2 term


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": -0.1}, r"gamma must be in \[0, 1\]"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"gamma": float("nan")}, r"gamma must be in \[0, 1\]"),
        ({"rule": "flower"}, r"rule must be one of \('paper', 'official'\)"),
        ({"out_features": 0}, "out_features must be a positive integer"),
        ({"in_features": -3}, "in_features must be a positive integer"),
        ({"kernel_size": 0}, "kernel_size must be a positive integer"),
    ],
)
def test_fedpara_rank_rejects_bad_input(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "out_features": 64,
        "in_features": 64,
        "kernel_size": 3,
        "gamma": 0.1,
        "rule": "paper",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        fedpara_rank(**args)  # type: ignore[arg-type]


def test_lowrank_rank_matching_linear_is_two_r() -> None:
    assert lowrank_rank_matching(64, 48, 1, 5) == 10
    assert lowrank_weight_count(64, 48, 1, 10) == fedpara_weight_count(64, 48, 1, 5)


@pytest.mark.parametrize("row", VGG_ROWS, ids=lambda r: f"{r[0]}-{r[1]}-g{r[2]}")
def test_lowrank_rank_matching_conv_is_closest_below(row: tuple[int, ...]) -> None:
    i, o, rank = row[0], row[1], row[5]
    budget = fedpara_weight_count(o, i, 3, rank)
    r = lowrank_rank_matching(o, i, 3, rank)
    assert lowrank_weight_count(o, i, 3, r) <= budget
    assert lowrank_weight_count(o, i, 3, r + 1) > budget


def test_lowrank_rank_matching_hand_computed() -> None:
    # 9 r^2 + 67 r <= 2 * 3 * (67 + 27) = 564: r = 5 gives 560, r = 6 gives 726.
    assert lowrank_rank_matching(64, 3, 3, 3) == 5
    # Budget below one rank-1 layer still gives rank 1.
    assert lowrank_rank_matching(1, 1, 7, 1) == 1
    with pytest.raises(ValueError, match="fedpara_rank must be a positive integer"):
        lowrank_rank_matching(8, 8, 3, 0)


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------
LayerFactory = Callable[[bool], FactorizedLayer]

LINEAR_FACTORIES: dict[str, LayerFactory] = {
    "fedpara": lambda b: FedParaLinear(7, 5, 2, bias=b),
    "pfedpara": lambda b: FedParaLinear(7, 5, 2, bias=b, personalized=True),
    "tanh": lambda b: FedParaLinear(7, 5, 2, bias=b, nonlinear=True),
    "pfedpara_tanh": lambda b: FedParaLinear(
        7, 5, 2, bias=b, nonlinear=True, personalized=True
    ),
    "lowrank": lambda b: LowRankLinear(7, 5, 3, bias=b),
}
CONV_FACTORIES: dict[str, LayerFactory] = {
    "fedpara": lambda b: FedParaConv2d(4, 6, 3, 2, stride=2, padding=1, bias=b),
    "pfedpara": lambda b: FedParaConv2d(
        4, 6, 3, 2, stride=2, padding=1, bias=b, personalized=True
    ),
    "tanh": lambda b: FedParaConv2d(
        4, 6, 3, 2, stride=2, padding=1, bias=b, nonlinear=True
    ),
    "pfedpara_tanh": lambda b: FedParaConv2d(
        4, 6, 3, 2, stride=2, padding=1, bias=b, nonlinear=True, personalized=True
    ),
    "lowrank": lambda b: LowRankConv2d(4, 6, 3, 3, stride=2, padding=1, bias=b),
}


def _tucker_by_loops(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W[o,c,z,w] = sum_{a,b} T[a,b,z,w] X[a,o] Y[b,c], written out."""
    rank, out_c, in_c, k = x.shape[0], x.shape[1], y.shape[1], t.shape[2]
    w = torch.zeros(out_c, in_c, k, k, dtype=t.dtype)
    for o in range(out_c):
        for c in range(in_c):
            for a in range(rank):
                for b in range(rank):
                    w[o, c] += t[a, b] * x[a, o] * y[b, c]
    return w


def _redraw(layer: FactorizedLayer) -> None:
    """Draw every factor and the bias from N(0, 1), far from the init scale.

    At unit scale tanh is far from linear and ``W2 + 1`` far from 1, so each of
    the four combination rules gives a clearly different weight.
    """
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


def _matrix_by_loops(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``W[o, i] = sum_r X[o, r] Y[i, r]`` (X ``(out, R)``, Y ``(in, R)``)."""
    w = torch.zeros(x.shape[0], y.shape[0], dtype=x.dtype)
    for o in range(x.shape[0]):
        for i in range(y.shape[0]):
            w[o, i] = sum(x[o, r] * y[i, r] for r in range(x.shape[1]))
    return w


# The paper's rules for combining the halves W1, W2 (FedPara, pFedPara and their
# tanh variants), written out independently of the layers' code.
COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "fedpara": lambda w1, w2: w1 * w2,
    "pfedpara": lambda w1, w2: w1 * (w2 + 1),
    "tanh": lambda w1, w2: torch.tanh(w1) * torch.tanh(w2),
    "pfedpara_tanh": lambda w1, w2: torch.tanh(w1) * (torch.tanh(w2) + 1),
}


def _reference_linear_weight(kind: str, layer: FactorizedLayer) -> torch.Tensor:
    """Dense ``(5, 7)`` weight from the raw factors; checks their documented shapes."""
    p = dict(layer.named_parameters())
    if kind == "lowrank":  # X (out, r), Y (in, r), r = 3
        assert p["x"].shape == (5, 3) and p["y"].shape == (7, 3)
        return _matrix_by_loops(p["x"], p["y"])
    for name, shape in {"x1": (5, 2), "y1": (7, 2), "x2": (5, 2), "y2": (7, 2)}.items():
        assert p[name].shape == shape, name  # X_i (out, R), Y_i (in, R), R = 2
    w1 = _matrix_by_loops(p["x1"], p["y1"])
    w2 = _matrix_by_loops(p["x2"], p["y2"])
    return COMBINE[kind](w1, w2)


def _reference_conv_weight(kind: str, layer: FactorizedLayer) -> torch.Tensor:
    """Dense ``(6, 4, 3, 3)`` kernel from the raw factors; checks their shapes."""
    p = dict(layer.named_parameters())
    if kind == "lowrank":  # T (r, r, k, k), X (r, O), Y (r, I), r = 3
        assert p["t"].shape == (3, 3, 3, 3)
        assert p["x"].shape == (3, 6) and p["y"].shape == (3, 4)
        return _tucker_by_loops(p["t"], p["x"], p["y"])
    for i in "12":  # T_i (R, R, k, k), X_i (R, O), Y_i (R, I), R = 2
        assert p[f"t{i}"].shape == (2, 2, 3, 3), i
        assert p[f"x{i}"].shape == (2, 6) and p[f"y{i}"].shape == (2, 4), i
    w1 = _tucker_by_loops(p["t1"], p["x1"], p["y1"])
    w2 = _tucker_by_loops(p["t2"], p["x2"], p["y2"])
    return COMBINE[kind](w1, w2)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", sorted(LINEAR_FACTORIES))
def test_linear_forward_matches_a_dense_reference(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    layer = LINEAR_FACTORIES[kind](bias).double()
    _redraw(layer)
    assert (layer.bias is not None) == bias
    x = torch.randn(3, 2, 7, dtype=torch.float64)
    with torch.no_grad():
        weight = _reference_linear_weight(kind, layer)
        # y[..., o] = sum_i x[..., i] W[o, i] + b[o], without F.linear.
        expected = torch.einsum("bsi,oi->bso", x, weight)
        if bias:
            expected = expected + layer.bias
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", sorted(CONV_FACTORIES))
def test_conv_forward_matches_a_dense_reference(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    layer = CONV_FACTORIES[kind](bias).double()
    _redraw(layer)
    assert (layer.bias is not None) == bias
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        weight = _reference_conv_weight(kind, layer)
        expected = F.conv2d(x, weight, layer.bias, stride=2, padding=1)
        assert expected.shape == (2, 6, 5, 5)
        torch.testing.assert_close(layer(x), expected)


def test_composed_weights_follow_the_formulas() -> None:
    torch.manual_seed(1)
    conv = FedParaConv2d(2, 3, 2, 2).double()
    pconv = FedParaConv2d(2, 3, 2, 2, personalized=True, nonlinear=True).double()
    lin = FedParaLinear(3, 4, 2, personalized=True).double()
    with torch.no_grad():
        w1 = _tucker_by_loops(conv.t1, conv.x1, conv.y1)
        w2 = _tucker_by_loops(conv.t2, conv.x2, conv.y2)
        torch.testing.assert_close(conv.composed_weight(), w1 * w2)
        w1 = torch.tanh(_tucker_by_loops(pconv.t1, pconv.x1, pconv.y1))
        w2 = torch.tanh(_tucker_by_loops(pconv.t2, pconv.x2, pconv.y2))
        torch.testing.assert_close(pconv.composed_weight(), w1 * (w2 + 1))
        w1, w2 = lin.x1 @ lin.y1.T, lin.x2 @ lin.y2.T
        torch.testing.assert_close(lin.composed_weight(), w1 * w2 + w1)


def test_fedpara_linear_reaches_r_squared_lowrank_does_not() -> None:
    torch.manual_seed(0)
    fedpara = FedParaLinear(48, 64, 5, bias=False).double()
    full = FedParaLinear(48, 64, 7, bias=False).double()  # 49 >= 48
    personal = FedParaLinear(48, 64, 5, bias=False, personalized=True).double()
    r = lowrank_rank_matching(64, 48, 1, 5)
    lowrank = LowRankLinear(48, 64, r, bias=False).double()
    assert lowrank.num_params == fedpara.num_params
    rank_of = torch.linalg.matrix_rank
    with torch.no_grad():
        assert rank_of(fedpara.composed_weight()) == 25  # min(R^2, 64, 48)
        assert rank_of(full.composed_weight()) == 48
        assert rank_of(personal.composed_weight()) == 30  # W1 ⊙ (W2 + 1): R(R+1)
        assert rank_of(lowrank.composed_weight()) == 2 * 5


def test_fedpara_conv_unfoldings_reach_r_squared() -> None:
    torch.manual_seed(0)
    out_c, in_c, k, rank = 32, 24, 3, 4
    fedpara = FedParaConv2d(in_c, out_c, k, rank, bias=False).double()
    r = lowrank_rank_matching(out_c, in_c, k, rank)
    lowrank = LowRankConv2d(in_c, out_c, k, r, bias=False).double()
    assert lowrank.num_params <= fedpara.num_params
    rank_of = torch.linalg.matrix_rank
    with torch.no_grad():
        w = fedpara.composed_weight()  # (O, I, k, k)
        assert rank_of(w.reshape(out_c, -1)) == rank**2  # mode-1 (O, I k^2)
        assert rank_of(w.transpose(0, 1).reshape(in_c, -1)) == rank**2  # mode-2
        w_low = lowrank.composed_weight()
        assert rank_of(w_low.reshape(out_c, -1)) == r == 6


@pytest.mark.parametrize("kind", sorted(LINEAR_FACTORIES))
def test_gradients_reach_every_linear_factor(kind: str) -> None:
    torch.manual_seed(0)
    layer = LINEAR_FACTORIES[kind](True)
    layer(torch.randn(4, 7)).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", sorted(CONV_FACTORIES))
def test_gradients_reach_every_conv_factor(kind: str) -> None:
    torch.manual_seed(0)
    layer = CONV_FACTORIES[kind](True)
    layer(torch.randn(2, 4, 9, 9)).pow(2).sum().backward()
    names = {name for name, _ in layer.named_parameters()}
    if kind.startswith("pfedpara"):
        assert {"t2", "x2", "y2"} <= names
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


INIT_FACTORIES: dict[str, Callable[[], FactorizedLayer]] = {
    "fedpara_linear": lambda: FedParaLinear(300, 100, 8),
    "tanh_linear": lambda: FedParaLinear(300, 100, 8, nonlinear=True),
    "pfedpara_linear": lambda: FedParaLinear(300, 100, 8, personalized=True),
    "lowrank_linear": lambda: LowRankLinear(300, 100, 16),
    "fedpara_conv": lambda: FedParaConv2d(64, 64, 3, 11),
    "tanh_conv": lambda: FedParaConv2d(64, 64, 3, 11, nonlinear=True),
    "pfedpara_tanh_conv": lambda: FedParaConv2d(
        64, 64, 3, 11, personalized=True, nonlinear=True
    ),
    "lowrank_conv": lambda: LowRankConv2d(64, 64, 3, 12),
}


@pytest.mark.parametrize("kind", sorted(INIT_FACTORIES))
def test_init_matches_he_std(kind: str) -> None:
    torch.manual_seed(0)
    layer = INIT_FACTORIES[kind]()
    with torch.no_grad():
        w = layer.composed_weight()
    he_std = math.sqrt(2.0 / w[0].numel())  # fan_in = I k^2
    assert 0.8 < w.std().item() / he_std < 1.25


def test_pfedpara_local_half_is_small_but_nonzero() -> None:
    torch.manual_seed(0)
    layer = FedParaLinear(300, 100, 8, personalized=True)
    with torch.no_grad():
        w2 = layer.x2 @ layer.y2.T  # (out, in)
    assert 0.8 * LOCAL_HALF_STD < w2.std().item() < 1.2 * LOCAL_HALF_STD


def test_num_params_and_count_params() -> None:
    layer = FedParaConv2d(16, 32, 3, 4)
    assert layer.num_params == 2 * 4 * (32 + 16 + 4 * 9) + 32 == count_params(layer)
    assert FedParaLinear(48, 64, 5, bias=False).num_params == 2 * 5 * (64 + 48)
    assert LowRankConv2d(16, 32, 3, 6).num_params == 36 * 9 + 6 * 48 + 32


def test_local_state_names_selects_w2_factors() -> None:
    net = nn.Sequential(
        FedParaConv2d(3, 8, 3, 2, personalized=True),
        nn.GroupNorm(2, 8),
        nn.Sequential(FedParaLinear(4, 3, 2, personalized=True)),
        FedParaLinear(3, 2, 2),  # not personalized: all global
        nn.Linear(2, 2),
    )
    assert local_state_names(net) == {
        "0.t2",
        "0.x2",
        "0.y2",
        "2.0.x2",
        "2.0.y2",
    }
    assert local_state_names(net) <= set(net.state_dict())
    assert local_state_names(FedParaLinear(4, 3, 2, personalized=True)) == {
        "x2",
        "y2",
    }
    assert local_state_names(nn.Sequential(FedParaLinear(4, 3, 2))) == frozenset()


def test_dense_weight_dispatch() -> None:
    assert dense_weight(nn.Linear(3, 2)).shape == (2, 3)
    assert dense_weight(FedParaConv2d(3, 4, 3, 2)).shape == (4, 3, 3, 3)
    with pytest.raises(TypeError, match="no dense weight"):
        dense_weight(nn.ReLU())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FedParaLinear(0, 3, 2), "in_features must be a positive integer"),
        (lambda: FedParaLinear(3, 3, 0), "rank must be a positive integer"),
        (lambda: LowRankLinear(3, -1, 2), "out_features must be a positive integer"),
        (lambda: FedParaConv2d(3, 3, 3, 2, stride=0), "stride must be a positive"),
        (lambda: LowRankConv2d(3, 3, 3, 2, padding=-1), "padding must be a non-neg"),
    ],
)
def test_layers_reject_bad_sizes(make: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
