"""Inner-rank rules for FedPara layers and parameter counts of factorized layers.

FedPara builds a weight from two low-rank halves, ``W = W1 ⊙ W2``. Its size is set
by the inner rank ``R``, which the paper derives from a scalar ``gamma`` in [0, 1].
The paper leaves the exact rule open, so two rules exist (see
``shared/reference/fedpara.md`` §1.3):

- ``"paper"`` (rule A, Flower baseline): ``gamma`` interpolates between
  ``r_min = min(ceil(sqrt(O)), ceil(sqrt(I)))`` and ``r_max``, the largest rank whose
  FedPara layer is not bigger than the dense one.
- ``"official"`` (rule B, official notebook): ``gamma`` is the target *fraction of
  the dense parameter count*, floored at ``max(ceil(sqrt(O)), ceil(sqrt(I)))``.

Parameter counts (bias excluded), with ``O`` outputs, ``I`` inputs, kernel ``k``:

- dense: ``O I k^2``
- FedPara linear: ``2R(O + I)``; FedPara conv: ``2R(O + I + R k^2)``
- low-rank linear: ``r(O + I)``; low-rank (Tucker) conv: ``r^2 k^2 + r(O + I)``

Throughout this module ``kernel_size == 1`` means a *linear* layer (the FedPara
linear cost has no ``R^2`` term).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

RankRule = Literal["paper", "official"]

# Decimals kept before ``ceil`` so float noise such as 0.9*8 + 0.1*38 =
# 11.000000000000002 does not bump the rank to 12.
_ROUND_DECIMALS = 9


def check_positive_int(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1.

    Examples
    --------
    >>> check_positive_int("rank", 3)
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_sizes(out_features: int, in_features: int, kernel_size: int) -> None:
    """Raise ``ValueError`` unless all layer sizes are positive integers."""
    check_positive_int("out_features", out_features)
    check_positive_int("in_features", in_features)
    check_positive_int("kernel_size", kernel_size)


def _check_gamma(gamma: float) -> None:
    """Raise ``ValueError`` unless ``0 <= gamma <= 1`` (rejects NaN)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")


def _ceil(value: float) -> int:
    """Ceil after rounding away float noise."""
    return math.ceil(round(value, _ROUND_DECIMALS))


def _max_int_root(a: int, b: int, c: int) -> int:
    """Return the largest integer ``x >= 0`` with ``a x^2 + b x <= c`` (a, b >= 0).

    Exact integer arithmetic: floor of the positive root of ``a x^2 + b x = c``.
    """
    if a == 0:
        return c // b
    x = (math.isqrt(b * b + 4 * a * c) - b) // (2 * a)
    while a * (x + 1) ** 2 + b * (x + 1) <= c:
        x += 1
    while x > 0 and a * x * x + b * x > c:
        x -= 1
    return x


def dense_weight_count(out_features: int, in_features: int, kernel_size: int) -> int:
    """Weight count of a dense layer, ``O I k^2`` (bias excluded).

    Examples
    --------
    >>> dense_weight_count(256, 256, 3)
    589824
    """
    return out_features * in_features * kernel_size * kernel_size


def fedpara_weight_count(
    out_features: int, in_features: int, kernel_size: int, rank: int
) -> int:
    """Weight count of a FedPara layer (bias excluded).

    Linear (``kernel_size == 1``): ``2R(O + I)``; conv: ``2R(O + I + R k^2)``.

    Examples
    --------
    >>> fedpara_weight_count(256, 256, 3, 36)
    60192
    >>> fedpara_weight_count(200, 784, 1, 10)
    19680
    """
    if kernel_size == 1:
        return 2 * rank * (out_features + in_features)
    return 2 * rank * (out_features + in_features + rank * kernel_size**2)


def lowrank_weight_count(
    out_features: int, in_features: int, kernel_size: int, rank: int
) -> int:
    """Weight count of a low-rank layer (bias excluded).

    Linear (``kernel_size == 1``): ``r(O + I)``; Tucker conv: ``r^2 k^2 + r(O + I)``.

    Examples
    --------
    >>> lowrank_weight_count(64, 48, 1, 10)
    1120
    """
    if kernel_size == 1:
        return rank * (out_features + in_features)
    return rank * rank * kernel_size**2 + rank * (out_features + in_features)


def _rank_paper(o: int, i: int, k: int, gamma: float) -> int:
    """Rule A: ``R = ceil((1 - gamma) r_min + gamma r_max)``."""
    r_min = min(math.isqrt(o - 1) + 1, math.isqrt(i - 1) + 1)  # ceil(sqrt(.))
    if k == 1:
        r_max = (o * i) // (2 * (o + i))  # floor root of 2R(O+I) = O I
    else:  # floor root of 2 k^2 R^2 + 2 (O+I) R = O I k^2
        r_max = _max_int_root(2 * k * k, 2 * (o + i), o * i * k * k)
    return _ceil((1.0 - gamma) * r_min + gamma * r_max)


def _rank_official(o: int, i: int, k: int, gamma: float) -> int:
    """Rule B: ``R = max(ceil(sqrt(O)), ceil(sqrt(I)), ceil(r_t))``."""
    target = gamma * o * i * k * k  # FedPara weight count aimed at
    if k == 1:
        r_t = target / (2.0 * (o + i))  # root of 2R(O+I) = gamma O I
    else:  # positive root of 2 k^2 R^2 + 2 (O+I) R - target = 0
        a, b = 2.0 * k * k, 2.0 * (o + i)
        r_t = (-b + math.sqrt(b * b + 4.0 * a * target)) / (2.0 * a)
    return max(math.isqrt(o - 1) + 1, math.isqrt(i - 1) + 1, _ceil(r_t))


def fedpara_rank(
    out_features: int,
    in_features: int,
    kernel_size: int,
    gamma: float,
    rule: RankRule,
) -> int:
    """Inner rank ``R`` of a FedPara layer for a given ``gamma``.

    Parameters
    ----------
    out_features, in_features : int
        Output and input size (channels for a conv layer).
    kernel_size : int
        Square kernel side of a conv layer; 1 means a linear layer.
    gamma : float
        In [0, 1]. Interpolation weight between r_min and r_max (``"paper"``) or
        target fraction of the dense parameter count (``"official"``).
    rule : {"paper", "official"}
        Which rank rule ``gamma`` refers to; see the module docstring.

    Returns
    -------
    int
        The inner rank ``R >= 1``.

    Raises
    ------
    ValueError
        If a size is not a positive integer, ``gamma`` is outside [0, 1], or
        ``rule`` is unknown.

    Examples
    --------
    >>> fedpara_rank(256, 256, 3, 0.1, "paper")
    30
    >>> fedpara_rank(256, 256, 3, 0.1, "official")
    36
    """
    _check_sizes(out_features, in_features, kernel_size)
    _check_gamma(gamma)
    if rule == "paper":
        rank = _rank_paper(out_features, in_features, kernel_size, gamma)
    elif rule == "official":
        rank = _rank_official(out_features, in_features, kernel_size, gamma)
    else:
        raise ValueError(f"rule must be one of {get_args(RankRule)}, got {rule!r}")
    return max(rank, 1)


def lowrank_rank_matching(
    out_features: int, in_features: int, kernel_size: int, fedpara_rank: int
) -> int:
    """Rank of a low-rank layer with the parameter budget of a FedPara layer.

    The largest ``r >= 1`` whose low-rank weight count does not exceed the FedPara
    count with inner rank ``fedpara_rank``. Linear: ``r(m+n) = 2R(m+n)`` gives
    ``r = 2R``; Tucker conv: ``r^2 k^2 + r(O+I) <= 2R(O + I + R k^2)``.

    Parameters
    ----------
    out_features, in_features : int
        Output and input size (channels for a conv layer).
    kernel_size : int
        Square kernel side of a conv layer; 1 means a linear layer.
    fedpara_rank : int
        Inner rank ``R`` of the FedPara layer to match.

    Returns
    -------
    int
        The matching low-rank ``r``.

    Raises
    ------
    ValueError
        If a size or the rank is not a positive integer.

    Examples
    --------
    >>> lowrank_rank_matching(64, 48, 1, 5)
    10
    >>> lowrank_rank_matching(32, 16, 3, 4)
    6
    """
    _check_sizes(out_features, in_features, kernel_size)
    check_positive_int("fedpara_rank", fedpara_rank)
    budget = fedpara_weight_count(out_features, in_features, kernel_size, fedpara_rank)
    if kernel_size == 1:
        return 2 * fedpara_rank
    rank = _max_int_root(kernel_size**2, out_features + in_features, budget)
    return max(rank, 1)
