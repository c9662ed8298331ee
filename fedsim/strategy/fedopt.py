"""Adaptive server optimizers (Reddi et al., 2021): FedAdam, FedYogi, FedAdagrad.

The clients train as in FedAvg; the server treats ``d = mean - x`` (the mean of
the uploaded models, weighted by ``server.weighting``: uniform in Reddi et al.'s
Algorithm 2, examples in Flower, minus the global model) as a pseudo-gradient
and takes one adaptive step, factor by factor on every floating tensor of the
model channel (each FedPara factor on its own)::

    m <- beta1 * m + (1 - beta1) * d
    v <- rule(v, d)                    # adam, yogi or adagrad, below
    x <- x + lr_t * m / (sqrt(v) + tau)

with ``lr``, ``beta1``, ``beta2``, ``tau`` from ``server.settings``, ``m``
starting at 0 and ``v`` at ``tau**2`` (Reddi's ``v_{-1} >= tau^2``; Flower
starts at 0). ``lr_t = lr`` (Reddi et al.: no bias correction), or with
``server.settings.bias_correction`` Flower's FedAdam correction::

    lr_t = lr * sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))

where ``t`` is Flower's round number, from 1 (fedsim's round + 1; Kingma and
Ba's Adam would use ``t``). The
three algorithms differ only in the second-moment rule, a plain function
(:data:`SECOND_MOMENT`); one strategy, :class:`FedOpt`, composes the weighted
mean with a :class:`ServerOptimizer` holding the rule chosen by
``server.strategy``. The state ``{"m": ..., "v": ...}`` is all a resumed run
needs to continue exactly. Only the model channel travels (FedAvg's bytes).

Example
-------
>>> import torch
>>> opt = ServerOptimizer(adam_second_moment, lr=1.0, beta1=0.0, beta2=0.0, tau=0.5)
>>> x = {"w": torch.tensor([1.0])}
>>> state = opt.init(x)  # m = 0, v = tau**2 = 0.25
>>> new, state = opt.step(x, {"w": torch.tensor([3.0])}, state)
>>> round(new["w"].item(), 6)  # d = 2, m = 2, v = 4: 1 + 2 / (2 + 0.5)
1.8
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.messages import ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.base import Aggregate, Strategy, StrategySettings, StrategyState
from fedsim.strategy.fedavg import fedavg_aggregate

SecondMoment = Callable[[Tensor, Tensor, float], Tensor]
"""``rule(v, d, beta2) -> new v``, elementwise on one tensor."""


def adam_second_moment(v: Tensor, d: Tensor, beta2: float) -> Tensor:
    """FedAdam: ``v = beta2 * v + (1 - beta2) * d^2``."""
    return beta2 * v + (1 - beta2) * d.square()


def yogi_second_moment(v: Tensor, d: Tensor, beta2: float) -> Tensor:
    """FedYogi: ``v = v - (1 - beta2) * d^2 * sign(v - d^2)``."""
    d2 = d.square()
    return v - (1 - beta2) * d2 * torch.sign(v - d2)


def adagrad_second_moment(v: Tensor, d: Tensor, beta2: float) -> Tensor:
    """FedAdagrad: ``v = v + d^2`` (``beta2`` unused)."""
    return v + d.square()


SECOND_MOMENT: dict[str, SecondMoment] = {
    "fedadam": adam_second_moment,
    "fedyogi": yogi_second_moment,
    "fedadagrad": adagrad_second_moment,
}
"""``server.strategy`` -> its second-moment rule."""


def _state_dtype(t: Tensor) -> torch.dtype:
    # Moments of half-precision tensors in float32: tau**2 = 1e-6 is subnormal
    # in float16.
    return torch.promote_types(t.dtype, torch.float32)


@dataclass(frozen=True)
class ServerOptimizer:
    """One adaptive step per round on named tensors; its state is a value."""

    rule: SecondMoment
    lr: float
    beta1: float
    beta2: float
    tau: float
    bias_correction: bool = False

    def rate(self, t: int) -> float:
        """``lr_t`` of Flower's round ``t`` (from 1): ``lr`` without correction.

        >>> opt = ServerOptimizer(adam_second_moment, 1.0, 0.9, 0.99, 1e-3, True)
        >>> round(opt.rate(1), 6)  # sqrt(1 - 0.99**2) / (1 - 0.9**2)
        0.74246
        """
        if not self.bias_correction:
            return self.lr
        k = t + 1
        return float(self.lr * math.sqrt(1 - self.beta2**k) / (1 - self.beta1**k))

    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """``m = 0`` and ``v = tau^2`` for every floating tensor."""
        floating = {n: t for n, t in global_tensors.items() if t.is_floating_point()}
        return {
            "m": {
                n: torch.zeros_like(t, dtype=_state_dtype(t), device="cpu")
                for n, t in floating.items()
            },
            "v": {
                n: torch.full_like(t, self.tau**2, dtype=_state_dtype(t), device="cpu")
                for n, t in floating.items()
            },
        }

    def step(
        self,
        x: Mapping[str, Tensor],
        target: Mapping[str, Tensor],
        state: StrategyState,
        t: int = 1,
    ) -> tuple[Tensors, StrategyState]:
        """Move ``x`` towards ``target`` (the clients' mean); new tensors and state.

        ``t``: Flower's round number (from 1), read with bias correction only.
        Tensors without moments (non-floating) take ``target``'s value.
        """
        new_x, new_m, new_v = dict(target), {}, {}
        lr = self.rate(t)
        for name, m in state["m"].items():
            x64 = x[name].to(torch.float64)
            d = target[name].to(torch.float64) - x64
            m64 = self.beta1 * m.to(torch.float64) + (1 - self.beta1) * d
            v64 = self.rule(state["v"][name].to(torch.float64), d, self.beta2)
            x64 = x64 + lr * m64 / (v64.sqrt() + self.tau)
            new_x[name] = x64.to(x[name].dtype)
            new_m[name] = m64.to(m.dtype)
            new_v[name] = v64.to(state["v"][name].dtype)
        return new_x, {"m": new_m, "v": new_v}


class FedOpt(Strategy):
    """FedAdam, FedYogi or FedAdagrad: the second-moment rule of ``server.strategy``.

    Raises
    ------
    ValueError
        When ``server.strategy`` is not one of :data:`SECOND_MOMENT`.
    """

    def __init__(self, settings: StrategySettings) -> None:
        super().__init__(settings)
        name, o = settings.server.strategy, settings.options
        if name not in SECOND_MOMENT:
            raise ValueError(
                f"FedOpt needs server.strategy in {', '.join(SECOND_MOMENT)}, "
                f"got {name!r}"
            )
        self.optimizer = ServerOptimizer(
            SECOND_MOMENT[name],
            lr=o.lr,
            beta1=o.beta1,
            beta2=o.beta2,
            tau=o.tau,
            bias_correction=o.bias_correction,
        )

    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """``{"m": zeros, "v": tau^2}`` for every floating tensor of the model."""
        return self.optimizer.init(global_tensors)

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """One server step towards the weighted mean of the updates."""
        if not updates:
            return None
        mean = fedavg_aggregate(updates, self.settings.weighting)
        new, new_state = self.optimizer.step(
            global_tensors, mean, state, t=server_round + 1
        )
        return Aggregate(
            global_tensors=new,
            state=new_state,
            metrics={"step_norm": step_norm(global_tensors, new)},
        )


def step_norm(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> float:
    """``||after - before||`` over the floating tensors (the server's step).

    >>> step_norm({"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])})
    5.0
    """
    total = 0.0
    for name, t in before.items():
        if t.is_floating_point():
            total += float((after[name].double() - t.double()).square().sum())
    return float(total**0.5)
