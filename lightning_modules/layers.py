"""FedPara, pFedPara and low-rank layers (plain torch).

Every layer here keeps thin factors as parameters and rebuilds the dense weight on
each forward pass. All share one interface:

- ``composed_weight()``: the dense weight, ``(out, in)`` or ``(O, I, k, k)``,
  contiguous, built with plain matrix products;
- ``forward_weight()``: the weight ``forward`` uses: composed on each call, or
  once for a whole evaluation inside :func:`composed_once`;
- ``num_params``: own parameter count, bias included;
- ``rank``: the inner rank;
- ``forward``: ``F.linear`` / ``F.conv2d`` with the composed weight.

FedPara (Hyeon-Woo et al., ICLR 2022) uses ``W = W1 ⊙ W2`` with two low-rank halves;
pFedPara uses ``W = W1 ⊙ (W2 + 1)``, where ``W1`` is global and ``W2`` stays on the
client (see :func:`local_state_names`).

Initialization
--------------
Factor stds are chosen in closed form so that the *composed* weight has the
He-normal std ``sqrt(2 / fan_in)`` (``fan_in = I k^2``). With zero-mean independent
factors of std ``s``:

- linear half ``X Y^T``: ``Var = R s^4`` (a sum of R products of two factors);
- conv half (Tucker): ``Var = R^2 s_T^2 s_X^2 s_Y^2`` (a sum of R^2 triple products);
- Hadamard product of independent zero-mean halves: ``Var(W1 ⊙ W2) = Var1 Var2``;
- pFedPara: ``Var(W1 ⊙ (W2 + 1)) = Var1 (1 + Var2)``.

So FedPara gives each half variance ``sqrt(2 / fan_in)``; pFedPara gives the local
half ``W2`` a small but nonzero std (``LOCAL_HALF_STD``, so gradients reach its
factors) and lets ``W1`` carry the He scale. Within a half all factors get the same
std. That fixes the expected scale, but a small layer's realized scale scatters
widely (3 input channels, R = 3: 0.2x to 2.9x He over seeds), so each half's factors
are then rescaled once so that the half's mean square hits its target exactly (its
Frobenius norm comes cheaply from R x R Gram matrices). The tanh variant applies
the same rule to ``tanh(W_i)``: the variance of ``W_i`` is the one whose
``E[tanh(W_i)^2]`` hits the target, found by Gauss-Hermite quadrature and bisection.
The official notebook's per-factor fan-in rule is not used: it yields composed
weights about 100x below He scale (reference §1.5).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.rank import (
    RankRule,
    check_positive_int,
    dense_weight_count,
    fedpara_rank,
    fedpara_weight_count,
    lowrank_rank_matching,
    lowrank_weight_count,
)

__all__ = [
    "LOCAL_FACTORS",
    "LOCAL_HALF_STD",
    "FactorizedLayer",
    "FedParaConv2d",
    "FedParaLinear",
    "LowRankConv2d",
    "LowRankLinear",
    "RankRule",
    "composed_once",
    "count_params",
    "dense_weight",
    "dense_weight_count",
    "fedpara_rank",
    "fedpara_weight_count",
    "local_state_names",
    "lowrank_rank_matching",
    "lowrank_weight_count",
]

# Parameter names of the local half W2 of a personalized FedPara layer.
LOCAL_FACTORS = ("x2", "y2", "t2")
# Std of the composed local half W2 of pFedPara at init: W2 + 1 starts near 1.
LOCAL_HALF_STD = 0.1

_HERMITE_X, _HERMITE_W = np.polynomial.hermite.hermgauss(64)
_TANH_MAX_VAR = 16.0  # cap on a half's variance for the tanh variant


# ----------------------------------------------------------------------------
# Initialization
# ----------------------------------------------------------------------------
def _tanh_second_moment(var: float) -> float:
    """``E[tanh(z)^2]`` for ``z ~ N(0, var)`` by Gauss-Hermite quadrature."""
    z = math.sqrt(2.0 * var) * _HERMITE_X
    return float(np.sum(_HERMITE_W * np.tanh(z) ** 2) / math.sqrt(math.pi))


def _tanh_preimage(moment: float) -> float:
    """Variance ``v`` with ``E[tanh(z)^2] = moment``, ``z ~ N(0, v)`` (bisection)."""
    low, high = 0.0, _TANH_MAX_VAR
    if _tanh_second_moment(high) <= moment:
        return high  # tanh^2 < 1 cannot reach the target; take the cap
    for _ in range(60):
        mid = 0.5 * (low + high)
        if _tanh_second_moment(mid) < moment:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _half_variances(
    fan_in: int, nonlinear: bool, personalized: bool
) -> tuple[float, float]:
    """Variances of the halves ``W1``, ``W2`` giving a He-scale composed weight."""
    target = 2.0 / fan_in  # He-normal variance of the composed weight
    if personalized:  # Var(W1) (1 + Var(W2)) = target
        m2 = LOCAL_HALF_STD**2
        m1 = target / (1.0 + m2)
    else:  # Var(W1) Var(W2) = target, split evenly
        m1 = m2 = math.sqrt(target)
    if nonlinear:  # the moments above are those of tanh(W_i)
        return _tanh_preimage(m1), _tanh_preimage(m2)
    return m1, m2


def _factor(shape: tuple[int, ...], std: float) -> nn.Parameter:
    """Draw a new factor parameter from ``N(0, std^2)``."""
    return nn.Parameter(torch.randn(shape) * std)


def _matrix_half(
    out_features: int, in_features: int, rank: int, half_var: float
) -> tuple[nn.Parameter, nn.Parameter]:
    """Return factors X ``(out, R)``, Y ``(in, R)`` of a half of variance half_var."""
    std = (half_var / rank) ** 0.25  # Var(X Y^T) = R s^4
    x = _factor((out_features, rank), std)  # (out, R)
    y = _factor((in_features, rank), std)  # (in, R)
    _rescale_matrix_half(x, y, half_var)
    return x, y


def _tucker_half(
    out_channels: int, in_channels: int, kernel_size: int, rank: int, half_var: float
) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Return factors T ``(R, R, k, k)``, X ``(R, O)``, Y ``(R, I)`` of a half."""
    std = (half_var / rank**2) ** (1.0 / 6.0)  # Var = R^2 s_T^2 s_X^2 s_Y^2 = R^2 s^6
    t = _factor((rank, rank, kernel_size, kernel_size), std)  # (R, R, k, k)
    x = _factor((rank, out_channels), std)  # (R, O)
    y = _factor((rank, in_channels), std)  # (R, I)
    _rescale_tucker_half(t, x, y, half_var)
    return t, x, y


@torch.no_grad()
def _rescale_matrix_half(x: Tensor, y: Tensor, half_var: float) -> None:
    """Scale X, Y in place so that ``mean((X Y^T)^2) == half_var`` exactly."""
    gram = (x.T @ x) * (y.T @ y)  # (R, R); its sum is ||X Y^T||_F^2
    mean_sq = gram.sum() / (x.shape[0] * y.shape[0])
    scale = (half_var / mean_sq) ** 0.25  # W scales with scale^2
    x.mul_(scale)
    y.mul_(scale)


@torch.no_grad()
def _rescale_tucker_half(t: Tensor, x: Tensor, y: Tensor, half_var: float) -> None:
    """Scale T, X, Y in place so that the Tucker half has mean square ``half_var``."""
    gx, gy = x @ x.T, y @ y.T  # (R, R) Gram matrices of the output/input factors
    core = torch.einsum("ac,cbzw,bd->adzw", gx, t, gy)  # (R, R, k, k)
    numel = x.shape[1] * y.shape[1] * t.shape[2] * t.shape[3]  # O I k^2
    mean_sq = (core * t).sum() / numel  # ||T x1 X x2 Y||_F^2 / (O I k^2)
    scale = (half_var / mean_sq) ** (1.0 / 6.0)  # W scales with scale^3
    for factor in (t, x, y):
        factor.mul_(scale)


# ----------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------
def _tucker(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``W[o,c,z,w] = sum_{a,b} T[a,b,z,w] X[a,o] Y[b,c]`` as two matrix products.

    Contracts ``a`` first, then ``b``, the order in which ``torch.einsum`` did
    before, so the result equals that form to rounding. Two plain products
    instead of a three-operand einsum: about a third of the ATen operations
    (forward and backward), no contraction-path search in Python when
    ``opt_einsum`` is installed, and a contiguous NCHW kernel (the einsum's
    came out channels-last, which sent every convolution through cuDNN's NHWC
    path with layout copies around it).
    """
    rank, _, kh, kw = t.shape  # (R, R, k, k)
    out_c, in_c = x.shape[1], y.shape[1]  # X (R, O), Y (R, I)
    # M[o, b, zw] = sum_a X[a, o] T[a, b, zw]: one (O, R) @ (R, R k^2) product.
    m = (x.T @ t.reshape(rank, rank * kh * kw)).view(out_c, rank, kh * kw)
    # W[o, c, zw] = sum_b Y[b, c] M[o, b, zw]: Y^T shared by the O batches
    # (expand is a stride-0 view, not a copy); bmm writes (O, I, k^2) contiguous.
    w = torch.bmm(y.T.expand(out_c, in_c, rank), m)
    return w.view(out_c, in_c, kh, kw)  # (O, I, k, k)


def _hadamard(w1: Tensor, w2: Tensor, nonlinear: bool, personalized: bool) -> Tensor:
    """Combine the halves: ``s(W1) ⊙ s(W2)`` or ``s(W1) ⊙ (s(W2) + 1)``, s = tanh|id."""
    if nonlinear:
        w1, w2 = torch.tanh(w1), torch.tanh(w2)
    if personalized:
        return w1 * (w2 + 1.0)  # same shape as w1
    return w1 * w2  # same shape as w1


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------
class FactorizedLayer(nn.Module, ABC):
    """Base of every factorized layer: a dense weight rebuilt from factors."""

    rank: int
    bias: nn.Parameter | None
    # Set by :func:`composed_once` for an evaluation (no autograd), else None.
    _fixed_weight: Tensor | None = None

    @abstractmethod
    def composed_weight(self) -> Tensor:
        """Return the dense weight, ``(out, in)`` or ``(O, I, k, k)``."""

    def forward_weight(self) -> Tensor:
        """The weight a forward pass uses: composed now, or once per evaluation."""
        fixed = self._fixed_weight
        if fixed is None:
            return self.composed_weight()
        if torch.is_grad_enabled():
            raise RuntimeError(
                "a weight composed by composed_once() carries no gradient; "
                "train outside the composed_once() block"
            )
        return fixed

    @property
    def num_params(self) -> int:
        """Number of parameters of this layer, bias included."""
        return sum(p.numel() for p in self.parameters())

    def _make_bias(self, out_features: int, bias: bool) -> None:
        """Register a zero-initialized bias, or ``None`` when ``bias`` is False."""
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)


class _FactorizedLinear(FactorizedLayer):
    """Sizes, bias and forward shared by the factorized linear layers."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("rank", rank)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``F.linear`` with the composed weight: ``(..., in) -> (..., out)``."""
        return F.linear(x, self.forward_weight(), self.bias)

    def extra_repr(self) -> str:
        """Summarize sizes."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


class _FactorizedConv2d(FactorizedLayer):
    """Sizes, bias and forward shared by the factorized conv layers."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        rank: int,
        stride: int,
        padding: int,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("rank", rank),
            ("stride", stride),
        ):
            check_positive_int(name, value)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.rank = kernel_size, rank
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with the composed kernel: ``(B, I, H, W) -> (B, O, H', W')``."""
        weight = self.forward_weight()  # (O, I, k, k)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        """Summarize sizes."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )


class FedParaLinear(_FactorizedLinear):
    """FedPara linear layer, ``W = (X1 Y1^T) ⊙ (X2 Y2^T)``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output size.
    rank : int
        Inner rank ``R``; ``W`` can reach rank ``min(R^2, out, in)``.
    bias : bool
        Add a zero-initialized bias.
    nonlinear : bool
        Use ``tanh(W1) ⊙ tanh(W2)``.
    personalized : bool
        pFedPara: ``W = W1 ⊙ (W2 + 1)``; ``x2``, ``y2`` are local to a client.

    Examples
    --------
    >>> layer = FedParaLinear(48, 64, rank=5)
    >>> layer.composed_weight().shape, layer.num_params
    (torch.Size([64, 48]), 1184)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        nonlinear: bool = False,
        personalized: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, rank)
        self.nonlinear, self.personalized = nonlinear, personalized
        var1, var2 = _half_variances(in_features, nonlinear, personalized)
        self.x1, self.y1 = _matrix_half(out_features, in_features, rank, var1)
        self.x2, self.y2 = _matrix_half(out_features, in_features, rank, var2)
        self._make_bias(out_features, bias)

    def composed_weight(self) -> Tensor:
        """Return the dense ``(out, in)`` weight."""
        w1 = self.x1 @ self.y1.T  # (out, R) @ (R, in) -> (out, in)
        w2 = self.x2 @ self.y2.T  # (out, R) @ (R, in) -> (out, in)
        return _hadamard(w1, w2, self.nonlinear, self.personalized)  # (out, in)

    def extra_repr(self) -> str:
        """Summarize sizes and options."""
        return (
            f"{super().extra_repr()}, nonlinear={self.nonlinear}, "
            f"personalized={self.personalized}"
        )


class FedParaConv2d(_FactorizedConv2d):
    """FedPara conv layer: Hadamard product of two Tucker-form kernels.

    ``W_i[o,c,z,w] = sum_{a,b} T_i[a,b,z,w] X_i[a,o] Y_i[b,c]`` and ``W = W1 ⊙ W2``
    (``W1 ⊙ (W2 + 1)`` when personalized).

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    kernel_size : int
        Square kernel side ``k``.
    rank : int
        Inner rank ``R``.
    stride, padding : int
        As in ``nn.Conv2d``.
    bias : bool
        Add a zero-initialized bias.
    nonlinear : bool
        Use ``tanh(W1) ⊙ tanh(W2)``.
    personalized : bool
        pFedPara: ``W = W1 ⊙ (W2 + 1)``; ``t2``, ``x2``, ``y2`` are local.

    Examples
    --------
    >>> layer = FedParaConv2d(16, 32, 3, rank=4, padding=1)
    >>> layer(torch.zeros(1, 16, 8, 8)).shape
    torch.Size([1, 32, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        rank: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        nonlinear: bool = False,
        personalized: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, rank, stride, padding)
        self.nonlinear, self.personalized = nonlinear, personalized
        fan_in = in_channels * kernel_size**2
        var1, var2 = _half_variances(fan_in, nonlinear, personalized)
        sizes = (out_channels, in_channels, kernel_size, rank)
        self.t1, self.x1, self.y1 = _tucker_half(*sizes, var1)  # T, X, Y of W1
        self.t2, self.x2, self.y2 = _tucker_half(*sizes, var2)  # T, X, Y of W2
        self._make_bias(out_channels, bias)

    def composed_weight(self) -> Tensor:
        """Return the dense ``(O, I, k, k)`` kernel."""
        w1 = _tucker(self.t1, self.x1, self.y1)  # (O, I, k, k)
        w2 = _tucker(self.t2, self.x2, self.y2)  # (O, I, k, k)
        return _hadamard(w1, w2, self.nonlinear, self.personalized)  # (O, I, k, k)

    def extra_repr(self) -> str:
        """Summarize sizes and options."""
        return (
            f"{super().extra_repr()}, nonlinear={self.nonlinear}, "
            f"personalized={self.personalized}"
        )


class LowRankLinear(_FactorizedLinear):
    """Low-rank linear layer, ``W = X Y^T`` (the "traditional low-rank" baseline).

    Parameters
    ----------
    in_features, out_features : int
        Input and output size.
    rank : int
        Rank ``r`` of the weight.
    bias : bool
        Add a zero-initialized bias.

    Examples
    --------
    >>> LowRankLinear(48, 64, rank=10).num_params
    1184
    """

    def __init__(
        self, in_features: int, out_features: int, rank: int, bias: bool = True
    ) -> None:
        super().__init__(in_features, out_features, rank)
        he_var = 2.0 / in_features
        self.x, self.y = _matrix_half(out_features, in_features, rank, he_var)
        self._make_bias(out_features, bias)

    def composed_weight(self) -> Tensor:
        """Return the dense ``(out, in)`` weight."""
        return self.x @ self.y.T  # (out, r) @ (r, in) -> (out, in)


class LowRankConv2d(_FactorizedConv2d):
    """Low-rank (Tucker) conv layer, ``W = T x1 X x2 Y``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    kernel_size : int
        Square kernel side ``k``.
    rank : int
        Tucker rank ``r`` of the output and input modes.
    stride, padding : int
        As in ``nn.Conv2d``.
    bias : bool
        Add a zero-initialized bias.

    Examples
    --------
    >>> LowRankConv2d(16, 32, 3, rank=6).composed_weight().shape
    torch.Size([32, 16, 3, 3])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        rank: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, rank, stride, padding)
        he_var = 2.0 / (in_channels * kernel_size**2)
        sizes = (out_channels, in_channels, kernel_size, rank)
        self.t, self.x, self.y = _tucker_half(*sizes, he_var)  # (r,r,k,k), (r,O), (r,I)
        self._make_bias(out_channels, bias)

    def composed_weight(self) -> Tensor:
        """Return the dense ``(O, I, k, k)`` kernel."""
        return _tucker(self.t, self.x, self.y)  # (O, I, k, k)


# ----------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------
def dense_weight(module: nn.Module) -> Tensor:
    """Dense weight of a factorized layer or of an ``nn.Linear``/``nn.Conv2d``.

    Raises
    ------
    TypeError
        If ``module`` has no dense weight.

    Examples
    --------
    >>> dense_weight(nn.Linear(3, 2)).shape
    torch.Size([2, 3])
    """
    if isinstance(module, FactorizedLayer):
        return module.forward_weight()
    if isinstance(module, nn.Linear | nn.Conv2d):
        return module.weight
    raise TypeError(f"no dense weight for {type(module).__name__}")


@contextlib.contextmanager
def composed_once(model: nn.Module) -> Iterator[None]:
    """Compose every factorized weight of ``model`` once for the whole block.

    For evaluation: the factors do not change between batches, so composing
    each weight per batch repeats the same products. Inside the block autograd
    is off and a forward pass that needs gradients raises.

    Examples
    --------
    >>> net = nn.Sequential(FedParaLinear(4, 3, 2))
    >>> with composed_once(net):
    ...     net(torch.ones(5, 4)).shape
    torch.Size([5, 3])
    """
    layers = [m for m in model.modules() if isinstance(m, FactorizedLayer)]
    with torch.no_grad():
        try:
            for layer in layers:
                layer._fixed_weight = layer.composed_weight()
            yield
        finally:
            for layer in layers:
                layer._fixed_weight = None


def local_state_names(model: nn.Module) -> frozenset[str]:
    """State-dict keys of the local factors (W2) of every pFedPara layer.

    Biases and normalization parameters are global; so is every parameter of a
    non-personalized model (the result is then empty).

    Examples
    --------
    >>> net = nn.Sequential(FedParaLinear(4, 3, 2, personalized=True))
    >>> sorted(local_state_names(net))
    ['0.x2', '0.y2']
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, FedParaLinear | FedParaConv2d):
            continue
        if not module.personalized:
            continue
        for name, _ in module.named_parameters(recurse=False):
            if name in LOCAL_FACTORS:
                names.add(f"{prefix}.{name}" if prefix else name)
    return frozenset(names)


def count_params(model: nn.Module) -> int:
    """Total number of parameters of ``model``.

    Examples
    --------
    >>> count_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())
