"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates against drift.

The server keeps a control variate ``c`` and each client its own ``c_i`` (kept
namespace ``"scaffold"``, zeros at a client's first participation), one tensor
per floating tensor of the model channel, each FedPara factor on its own. Every
local step follows the corrected gradient ``g - c_i + c``. After ``K`` steps of
learning rate ``lr`` from the global ``x`` to ``y_i``, option II sets::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and the client uploads its model and ``dc_i = c_i+ - c_i`` (channel
``"control"``). The server, with global step size 1 as FedAvg::

    x <- example-weighted mean of y_i
    c <- c + |S| / N * (uniform mean of dc_i)      # N = all clients

Both channels travel both ways (``c`` down, ``dc_i`` up), so a round costs about
twice FedAvg's bytes. Floating tensors that are not trained parameters (buffers)
get a zero ``dc_i`` and an unchanged ``c_i``. The option II estimate assumes
plain SGD; with momentum or weight decay it is the same formula on the actual
displacement.

Example
-------
>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0]))
>>> payload = {"model": {"w": torch.tensor([1.0])},
...            "control": {"w": torch.tensor([0.5])}}
>>> algo = ScaffoldClient()
>>> algo.begin({"w": w}, payload, kept={})  # first participation: c_i = 0
>>> w.grad = torch.tensor([2.0])
>>> algo.after_backward({"w": w})
>>> w.grad.tolist()  # 2 - 0 + 0.5
[2.5]
>>> with torch.no_grad():
...     _ = w.sub_(0.1 * w.grad)  # one SGD step, lr 0.1: w = 0.75
>>> upload, keep = algo.end({"w": w}, steps=1, lr=0.1)
>>> keep["scaffold"]["w"].tolist(), upload["control"]["w"].tolist()  # 0 - .5 + 2.5
([2.0], [2.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedsim.algorithm import ClientAlgorithm
from fedsim.messages import MODEL, ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.aggregate import WeightedMean
from fedsim.strategy.base import Strategy, StrategyState, TrainPlan

if TYPE_CHECKING:
    from fedsim.algorithm import Channels, Params

CONTROL = "control"
"""The channel of ``c`` (down) and of ``dc_i`` (up)."""

KEPT = "scaffold"
"""The kept-state namespace of a client's ``c_i``."""


def _zeros(like: Mapping[str, Tensor]) -> Tensors:
    """CPU zeros for every floating tensor of ``like``."""
    return {
        name: torch.zeros_like(t, device="cpu")
        for name, t in like.items()
        if t.is_floating_point()
    }


class ScaffoldClient(ClientAlgorithm):
    """SCAFFOLD's client half: corrected gradients, option II control update."""

    def __init__(self) -> None:
        self._c: Tensors = {}
        self._c_i: Tensors = {}
        self._x: Tensors = {}
        self._correction: dict[str, Tensor] = {}

    def begin(self, params: Params, payload: Channels, kept: Channels) -> None:
        """Load ``c`` and ``c_i``; snapshot the global ``x`` of the parameters."""
        # Assigned, never mutated: the object is a shallow copy per client.
        self._c = {name: t.detach().cpu() for name, t in payload[CONTROL].items()}
        mine = kept.get(KEPT)
        self._c_i = dict(mine) if mine is not None else _zeros(self._c)
        self._x = {name: p.detach().to("cpu", copy=True) for name, p in params.items()}
        self._correction = {
            name: (self._c[name] - self._c_i[name]).to(p.device, p.dtype)
            for name, p in params.items()
        }

    def after_backward(self, params: Params) -> None:
        """``g <- g - c_i + c`` on every travelling parameter that has a gradient."""
        for name, correction in self._correction.items():
            grad = params[name].grad
            if grad is not None:
                grad.add_(correction)

    def end(
        self, params: Params, steps: int, lr: float
    ) -> tuple[dict[str, Tensors], dict[str, Tensors]]:
        """Upload ``dc_i`` on ``"control"``, keep ``c_i+`` under ``"scaffold"``."""
        new_c_i: Tensors = {}
        for name, c_i in self._c_i.items():
            if name in params and steps > 0:
                y = params[name].detach().to("cpu", torch.float64)
                x = self._x[name].to(torch.float64)
                c = self._c[name].to(torch.float64)
                step = (x - y) / (steps * lr)
                new_c_i[name] = (c_i.to(torch.float64) - c + step).to(c_i.dtype)
            else:  # a buffer, or no step taken: nothing learned about the drift
                new_c_i[name] = c_i.clone()
        delta = {name: new_c_i[name] - c_i for name, c_i in self._c_i.items()}
        return {CONTROL: delta}, {KEPT: new_c_i}


class Scaffold(Strategy):
    """SCAFFOLD's server half: weighted model mean and the control update."""

    name = "scaffold"

    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """``{"c": zeros}`` for every floating tensor of the model."""
        return {"c": _zeros(global_tensors)}

    def configure_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        cohort: Sequence[int],
    ) -> TrainPlan:
        """Send ``{"model": x, "control": c}`` with :class:`ScaffoldClient`."""
        plan = super().configure_train(server_round, global_tensors, state, cohort)
        return dataclasses.replace(
            plan, payload={MODEL: global_tensors, CONTROL: state["c"]}
        )

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """:class:`ScaffoldClient`: corrects gradients by ``c - c_i``."""
        return ScaffoldClient()

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Iterable[ClientUpdate],
    ) -> tuple[Tensors, StrategyState]:
        """``x <- weighted mean of y_i``; ``c <- c + |S|/N * mean dc_i``."""
        models, controls = WeightedMean(), WeightedMean()
        for update in updates:
            models.add(update.upload[MODEL], weight=float(update.num_examples))
            controls.add(update.upload[CONTROL], weight=1.0)
        new_x = models.result()
        mean_dc = controls.result()
        share = controls.count / self.settings.num_clients  # |S| / N
        new_c = {
            name: (c.to(torch.float64) + share * mean_dc[name].to(torch.float64)).to(
                c.dtype
            )
            for name, c in state["c"].items()
        }
        return new_x, {**state, "c": new_c}
