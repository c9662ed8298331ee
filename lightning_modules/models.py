"""Model zoo: one definition per architecture, four parameterizations.

``build_model(ModelSpec(...))`` returns a plain ``nn.Module``. ``param`` picks the
form of the reparameterizable layers:

- ``"original"``: ``nn.Linear`` / ``nn.Conv2d``;
- ``"fedpara"``: :class:`FedParaLinear` / :class:`FedParaConv2d` with inner rank from
  ``gamma`` and ``rank_rule`` (see :mod:`lightning_modules.rank`);
- ``"pfedpara"``: the same, personalized (``W1 ⊙ (W2 + 1)``);
- ``"lowrank"``: :class:`LowRankLinear` / :class:`LowRankConv2d` at the parameter
  budget of the FedPara layer.

Which layers are reparameterized:

- ``vgg16``: the 13 convs, always (as in the Flower VGG16-GN build the reference
  counts are taken from, even where a rule-B layer outgrows its dense form); the
  classifier stays dense.
- ``mlp``, ``mlp_digits``, ``cnn``, ``lstm``: a layer is reparameterized only when
  its FedPara weight count is below the dense one; otherwise it stays dense in
  every form. Tiny layers (e.g. a narrow classifier) gain nothing from FedPara.
  The LSTM's embedding and output head are always dense.

Dense layers in reparameterizable slots get He-normal weights and zero biases, the
scale every factorized layer is initialized to, so all forms start alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import get_args

import torch
from torch import Tensor, nn

from lightning_modules.layers import (
    FedParaConv2d,
    FedParaLinear,
    LowRankConv2d,
    LowRankLinear,
    RankRule,
    count_params,
    dense_weight,
    dense_weight_count,
    fedpara_rank,
    fedpara_weight_count,
    lowrank_rank_matching,
)
from lightning_modules.spec import (
    ARCHS,
    ModelSpec,
    ParamKind,
    input_problem,
)

_VGG16_CFG: tuple[int | str, ...] = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
)
_GN_GROUPS = 2
_LSTM_EMBED, _LSTM_HIDDEN, _LSTM_LAYERS = 8, 256, 2
_CNN_HIDDEN = 256


# ----------------------------------------------------------------------------
# Layer factory
# ----------------------------------------------------------------------------
def _dense(in_f: int, out_f: int, k: int, padding: int, bias: bool) -> nn.Module:
    """He-normal dense linear (``k == 0``) or conv layer with zero bias."""
    layer: nn.Linear | nn.Conv2d
    if k == 0:
        layer = nn.Linear(in_f, out_f, bias=bias)
    else:
        layer = nn.Conv2d(in_f, out_f, k, padding=padding, bias=bias)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _make(
    spec: ModelSpec,
    in_f: int,
    out_f: int,
    k: int = 0,
    padding: int = 0,
    bias: bool = True,
    always: bool = False,
) -> nn.Module:
    """Build one reparameterizable layer; ``k == 0`` means linear.

    Unless ``always``, the layer stays dense when FedPara would not save weights.
    """
    size = max(k, 1)  # rank rules treat kernel side 1 as linear
    if spec.param == "original":
        return _dense(in_f, out_f, k, padding, bias)
    rank = fedpara_rank(out_f, in_f, size, spec.gamma, spec.rank_rule)
    saves = fedpara_weight_count(out_f, in_f, size, rank) < dense_weight_count(
        out_f, in_f, size
    )
    if not (always or saves):
        return _dense(in_f, out_f, k, padding, bias)
    if spec.param == "lowrank":
        low = lowrank_rank_matching(out_f, in_f, size, rank)
        if k == 0:
            return LowRankLinear(in_f, out_f, low, bias=bias)
        return LowRankConv2d(in_f, out_f, k, low, padding=padding, bias=bias)
    nonlinear, personalized = spec.nonlinear, spec.param == "pfedpara"
    if k == 0:
        return FedParaLinear(in_f, out_f, rank, bias, nonlinear, personalized)
    return FedParaConv2d(
        in_f, out_f, k, rank, 1, padding, bias, nonlinear, personalized
    )


# ----------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------
class FeaturesClassifier(nn.Module):
    """``classifier(flatten(features(x)))``: the VGG / CNN skeleton.

    Parameters
    ----------
    features, classifier : nn.Module
        Convolutional trunk and head.
    """

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        h: Tensor = self.features(x)  # (B, C', H', W')
        logits: Tensor = self.classifier(h.flatten(1))  # (B, C'H'W') -> (B, classes)
        return logits


def _image_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """Validate and return ``(C, H, W)``."""
    _check_input(spec)
    shape = spec.input_shape
    return shape[0], shape[1], shape[2]


def _check_input(spec: ModelSpec) -> None:
    problem = input_problem(spec)
    if problem is not None:
        raise ValueError(problem)


def _vgg16(spec: ModelSpec) -> nn.Module:
    """VGG16-GN: 13 conv3x3 + GroupNorm(2) + ReLU, dense 512-512-classes head."""
    channels, height, width = _image_shape(spec)
    layers: list[nn.Module] = []
    for v in _VGG16_CFG:
        if isinstance(v, str):  # "M"
            layers.append(nn.MaxPool2d(2))
            continue
        conv = _make(spec, channels, v, k=3, padding=1, always=True)
        layers += [conv, nn.GroupNorm(_GN_GROUPS, v), nn.ReLU(inplace=True)]
        channels = v
    flat = channels * (height // 32) * (width // 32)
    classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(flat, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, spec.num_classes),
    )
    return FeaturesClassifier(nn.Sequential(*layers), classifier)


def _mlp(spec: ModelSpec, hidden: tuple[int, ...]) -> nn.Module:
    """Flatten, then ``Linear -> ReLU`` per hidden size, then a linear classifier."""
    _check_input(spec)
    sizes = (math.prod(spec.input_shape), *hidden, spec.num_classes)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(_make(spec, n_in, n_out))
        if i < len(hidden):
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _cnn_side(side: int) -> int:
    """Spatial side after two (conv5x5, no padding; maxpool 2) blocks."""
    return ((side - 4) // 2 - 4) // 2


def _cnn(spec: ModelSpec) -> nn.Module:
    """Small McMahan-style CNN: two conv5x5 + maxpool blocks, two linear layers."""
    channels, height, width = _image_shape(spec)
    features = nn.Sequential(
        _make(spec, channels, 32, k=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        _make(spec, 32, 64, k=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    flat = 64 * _cnn_side(height) * _cnn_side(width)
    classifier = nn.Sequential(
        _make(spec, flat, _CNN_HIDDEN),
        nn.ReLU(inplace=True),
        _make(spec, _CNN_HIDDEN, spec.num_classes),
    )
    return FeaturesClassifier(features, classifier)


class LSTMLayer(nn.Module):
    """One LSTM layer built from two (possibly factorized) linear maps.

    Gates are ordered i, f, g, o as in ``nn.LSTM``; the forget-gate bias starts at 1.

    Parameters
    ----------
    input_size, hidden_size : int
        Input and hidden sizes ``I``, ``H``.
    spec : ModelSpec
        Picks the parameterization of ``ih`` (4H x I) and ``hh`` (4H x H).
    """

    def __init__(self, input_size: int, hidden_size: int, spec: ModelSpec) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = _make(spec, input_size, 4 * hidden_size)  # carries the bias
        self.hh = _make(spec, hidden_size, 4 * hidden_size, bias=False)
        for name, p in self.ih.named_parameters():
            if name == "bias":
                nn.init.constant_(p[hidden_size : 2 * hidden_size], 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Run over time: ``(B, T, I) -> (B, T, H)``."""
        batch, steps, _ = x.shape
        gates_x: Tensor = self.ih(x)  # (B, T, 4H), all steps at once
        w_hh = dense_weight(self.hh)  # (4H, H), composed once per sequence
        h = x.new_zeros(batch, self.hidden_size)  # (B, H)
        c = x.new_zeros(batch, self.hidden_size)  # (B, H)
        outputs = []
        for t in range(steps):
            gates = gates_x[:, t] + h @ w_hh.T  # (B, 4H)
            i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
            h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
            outputs.append(h)
        return torch.stack(outputs, dim=1)  # (B, T, H)


class CharLSTM(nn.Module):
    """Next-character model: Embedding(8) -> 2-layer LSTM(256) -> Linear.

    Parameters
    ----------
    spec : ModelSpec
        ``num_classes`` is the vocabulary size; ``input_shape`` is ``(seq_len,)``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(spec.num_classes, _LSTM_EMBED)
        sizes = (_LSTM_EMBED,) + (_LSTM_HIDDEN,) * _LSTM_LAYERS
        self.layers = nn.ModuleList(
            LSTMLayer(n_in, n_out, spec) for n_in, n_out in itertools.pairwise(sizes)
        )
        self.head = nn.Linear(_LSTM_HIDDEN, spec.num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Map char ids ``(B, T)`` (int64) to next-char logits ``(B, num_classes)``."""
        h: Tensor = self.embed(tokens)  # (B, T, 8)
        for layer in self.layers:
            h = layer(h)  # (B, T, H)
        logits: Tensor = self.head(h[:, -1])  # (B, H) -> (B, classes)
        return logits


def _lstm(spec: ModelSpec) -> nn.Module:
    """Build :class:`CharLSTM` after checking ``input_shape``."""
    _check_input(spec)
    return CharLSTM(spec)


# ----------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------
def _check_spec(spec: ModelSpec) -> None:
    """Raise ``ValueError`` with the allowed values on an invalid spec."""
    if spec.arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {spec.arch!r}")
    if spec.param not in get_args(ParamKind):
        raise ValueError(
            f"param must be one of {get_args(ParamKind)}, got {spec.param!r}"
        )
    if spec.rank_rule not in get_args(RankRule):
        raise ValueError(
            f"rank_rule must be one of {get_args(RankRule)}, got {spec.rank_rule!r}"
        )
    if not 0.0 <= spec.gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {spec.gamma!r}")
    if isinstance(spec.num_classes, bool) or spec.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {spec.num_classes!r}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model described by ``spec`` (plain ``nn.Module``, CPU, float32).

    Raises
    ------
    ValueError
        On an unknown arch, param or rank rule, a gamma outside [0, 1], or an
        ``input_shape`` the architecture cannot take.

    Examples
    --------
    >>> spec = ModelSpec("vgg16", 10, (3, 32, 32), param="fedpara", gamma=0.1)
    >>> count_params(build_model(spec))
    1546844
    """
    _check_spec(spec)
    if spec.arch == "vgg16":
        return _vgg16(spec)
    if spec.arch == "mlp":
        return _mlp(spec, (200, 200))
    if spec.arch == "mlp_digits":
        return _mlp(spec, (128, 128))
    if spec.arch == "cnn":
        return _cnn(spec)
    return _lstm(spec)


def num_params_original(spec: ModelSpec) -> int:
    """Parameter count of ``spec``'s model with ``param="original"``.

    The model is built on the CPU (the meta device costs seconds on first use)
    with the global RNG state saved and restored, so callers' seeding is kept.

    Examples
    --------
    >>> num_params_original(ModelSpec("vgg16", 10, (3, 32, 32)))
    15253578
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(dataclasses.replace(spec, param="original"))
    return count_params(model)
