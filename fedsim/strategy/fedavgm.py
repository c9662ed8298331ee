"""FedAvgM (Hsu et al., 2019): FedAvg's mean as a pseudo-gradient, server momentum.

The clients train as in FedAvg. The server treats ``d = x - mean`` (the global
model minus the example-weighted mean of the uploaded models) as a gradient
and takes one SGD step with momentum, factor by factor on every floating
tensor (Flower's ``FedAvgM`` form, no Nesterov)::

    v <- momentum * v + d
    x <- x - lr * v

``lr`` and ``momentum`` are ``server.settings``; with ``lr = 1`` and
``momentum = 0`` it is FedAvg. The state ``{"v": ...}`` starts at zero and is
all a resumed run needs. Only the model channel travels (FedAvg's bytes).

Example
-------
>>> import torch
>>> x, v = {"w": torch.tensor([1.0])}, {"w": torch.zeros(1)}
>>> new, v = momentum_step(x, {"w": torch.tensor([0.5])}, v, lr=1.0, momentum=0.9)
>>> new["w"].tolist(), v["w"].tolist()  # d = 0.5, v = 0.5, x = 1 - 0.5
([0.5], [0.5])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedsim.messages import ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.base import Aggregate, Strategy, StrategyState
from fedsim.strategy.fedavg import fedavg_aggregate
from fedsim.strategy.fedopt import step_norm


def momentum_step(
    x: Mapping[str, Tensor],
    mean: Mapping[str, Tensor],
    v: Mapping[str, Tensor],
    *,
    lr: float,
    momentum: float,
) -> tuple[Tensors, Tensors]:
    """One server SGD-with-momentum step from ``x`` towards ``mean``: (x, v).

    Tensors without a velocity (non-floating) take ``mean``'s value.
    """
    new_x, new_v = dict(mean), {}
    for name, vel in v.items():
        x64 = x[name].to(torch.float64)
        d = x64 - mean[name].to(torch.float64)
        v64 = momentum * vel.to(torch.float64) + d
        new_x[name] = (x64 - lr * v64).to(x[name].dtype)
        new_v[name] = v64.to(vel.dtype)
    return new_x, new_v


class FedAvgM(Strategy):
    """FedAvg's clients, a momentum SGD step on the server."""

    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """``{"v": zeros}`` (float32 or wider) for every floating tensor."""
        return {
            "v": {
                name: torch.zeros_like(
                    t, dtype=torch.promote_types(t.dtype, torch.float32), device="cpu"
                )
                for name, t in global_tensors.items()
                if t.is_floating_point()
            }
        }

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """``v <- momentum v + (x - mean)``, ``x <- x - lr v``."""
        if not updates:
            return None
        o = self.settings.options
        new, v = momentum_step(
            global_tensors,
            fedavg_aggregate(updates, self.settings.weighting),
            state["v"],
            lr=o.lr,
            momentum=o.momentum,
        )
        return Aggregate(
            global_tensors=new,
            state={**state, "v": v},
            metrics={"step_norm": step_norm(global_tensors, new)},
        )
