"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates against drift.

The server keeps a control variate ``c`` and each client its own ``c_i`` (kept
namespace ``"scaffold"``, zeros at a client's first participation), one tensor
per floating tensor of the model channel, each FedPara factor on its own. Every
local step follows the corrected gradient ``g - c_i + c``. After ``K`` steps of
learning rate ``lr`` from the global ``x`` to ``y_i``, option II sets::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and the client uploads its model and ``dc_i = c_i+ - c_i`` (channel
``"control"``). The server, with global step size ``eta_g`` =
``server.settings.lr`` (1 by default) and ``N`` all clients::

    x <- x + eta_g * sum_{i in S} p_i (y_i - x)    # p_i: weights summing to 1
    c <- c + 1/N * sum_{i in S} w_i dc_i           # w_i = 1, or n_i / mean n

``server.weighting`` names both: ``uniform`` (the paper's, objective
``(1/N) sum f_i``) gives ``p_i = 1/|S|`` and ``w_i = 1``; ``examples`` gives
``p_i = n_i / sum_S n`` and ``w_i = n_i N / sum_all n``, so ``c`` stays the
example-weighted mean of all clients' ``c_i`` and the fixed point is the
example-weighted optimum (Flower's niid_bench weights both by examples over
the cohort only).

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
>>> state = algo.begin({"w": w}, payload, kept={})  # first participation: c_i = 0
>>> grads = algo.gradients(state, {"w": torch.tensor([2.0])})
>>> grads["w"].tolist()  # 2 - 0 + 0.5
[2.5]
>>> with torch.no_grad():
...     _ = w.sub_(0.1 * grads["w"])  # one SGD step, lr 0.1: w = 0.75
>>> out = algo.end(state, {"w": w}, steps=1, lr=0.1)
>>> out.keep["scaffold"]["w"].tolist(), out.upload["control"]["w"].tolist()
([2.0], [2.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from fedsim.algorithm import AlgoState, ClientAlgorithm, ClientOutcome
from fedsim.messages import MODEL, ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.aggregate import WeightedMean
from fedsim.strategy.base import (
    Aggregate,
    Strategy,
    StrategyState,
    TrainPlan,
    shapes,
)

if TYPE_CHECKING:
    from fedsim.algorithm import Channels, Grads, Params

CONTROL = "control"
"""The channel of ``c`` (down) and of ``dc_i`` (up)."""

KEPT = "scaffold"
"""The kept-state namespace of a client's ``c_i``."""

CORRECTION = "correction"
"""State namespace: ``c - c_i`` on the parameters' device, added to every gradient."""


def _zeros(like: Mapping[str, Tensor]) -> Tensors:
    """CPU zeros for every floating tensor of ``like``."""
    return {
        name: torch.zeros_like(t, device="cpu")
        for name, t in like.items()
        if t.is_floating_point()
    }


@dataclass(frozen=True)
class ScaffoldClient(ClientAlgorithm):
    """SCAFFOLD's client half: corrected gradients, option II control update.

    Its state: ``"correction"`` (``c - c_i`` by parameter, on their device)
    for the steps; ``"c"``, ``"c_i"`` and the global ``"x"`` (CPU) for ``end``.
    """

    step_state: ClassVar[tuple[str, ...]] = (CORRECTION,)

    def begin(self, params: Params, payload: Channels, kept: Channels) -> AlgoState:
        """Load ``c`` and ``c_i``; snapshot the global ``x`` of the parameters."""
        c = {name: t.detach().cpu() for name, t in payload[CONTROL].items()}
        mine = kept.get(KEPT)
        c_i = dict(mine) if mine is not None else _zeros(c)
        return {
            "c": c,
            "c_i": c_i,
            "x": {n: p.detach().to("cpu", copy=True) for n, p in params.items()},
            CORRECTION: {
                name: (c[name] - c_i[name]).to(p.device, p.dtype)
                for name, p in params.items()
            },
        }

    def gradients(self, state: AlgoState, grads: Grads) -> Grads:
        """``g - c_i + c`` for every travelling parameter that has a gradient."""
        correction = state[CORRECTION]
        return {
            name: g + correction[name] if name in correction else g
            for name, g in grads.items()
        }

    def end(
        self, state: AlgoState, params: Params, steps: int, lr: float
    ) -> ClientOutcome:
        """Upload ``dc_i`` on ``"control"``, keep ``c_i+`` under ``"scaffold"``."""
        c_all, x_all = state["c"], state["x"]
        new_c_i: Tensors = {}
        for name, c_i in state["c_i"].items():
            if name in params and steps > 0:
                y = params[name].detach().to("cpu", torch.float64)
                x = x_all[name].to(torch.float64)
                c = c_all[name].to(torch.float64)
                step = (x - y) / (steps * lr)
                new_c_i[name] = (c_i.to(torch.float64) - c + step).to(c_i.dtype)
            else:  # a buffer, or no step taken: nothing learned about the drift
                new_c_i[name] = c_i.clone()
        delta = {name: new_c_i[name] - c_i for name, c_i in state["c_i"].items()}
        return ClientOutcome(upload={CONTROL: delta}, keep={KEPT: new_c_i})


class Scaffold(Strategy):
    """SCAFFOLD's server half: the global step on x and the control update."""

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
        """Send ``{"model": x, "control": c}``; expect the model and ``dc_i`` back."""
        plan = super().configure_train(server_round, global_tensors, state, cohort)
        return dataclasses.replace(
            plan,
            payload={MODEL: global_tensors, CONTROL: state["c"]},
            upload={**plan.upload, CONTROL: shapes(state["c"])},
        )

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """:class:`ScaffoldClient`: corrects gradients by ``c - c_i``."""
        return ScaffoldClient()

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """``x <- x + lr * mean (y_i - x)``; ``c <- c + 1/N * sum w_i dc_i``."""
        if not updates:
            return None
        s = self.settings
        models = WeightedMean()
        dc_sum = {
            name: torch.zeros_like(c, dtype=torch.float64)
            for name, c in state["c"].items()
        }
        for update in updates:
            models.add(update.upload[MODEL], weight=s.weight(update))
            w_i = s.population_weight(update.client_id)
            for name, total in dc_sum.items():
                total.add_(update.upload[CONTROL][name].to(torch.float64), alpha=w_i)
        mean = models.result()
        eta_g = s.options.lr
        new_x = {
            name: (x.double() + eta_g * (mean[name].double() - x.double())).to(x.dtype)
            if x.is_floating_point()
            else mean[name]
            for name, x in global_tensors.items()
        }
        new_c = {
            name: (c.double() + dc_sum[name] / s.num_clients).to(c.dtype)
            for name, c in state["c"].items()
        }
        norm = sum(float(t.double().square().sum()) for t in new_c.values()) ** 0.5
        return Aggregate(
            global_tensors=new_x,
            state={**state, "c": new_c},
            metrics={"control_norm": norm},
        )
