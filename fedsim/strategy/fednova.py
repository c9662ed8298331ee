"""FedNova (Wang et al., 2020): normalized averaging of heterogeneous local work.

Clients that take more local steps move further; FedAvg's mean then leans
towards them and optimizes a skewed objective. FedNova divides each client's
change by the norm of its local "aggregation vector" ``a_i`` and rescales the
weighted mean by the weighted mean norm. With ``tau_i`` the client's local
steps, ``rho`` the clients' momentum and ``p_i = n_i / sum n`` (examples, the
paper's; ``server.weighting: uniform`` sets ``p_i = 1/|S|``)::

    ||a_i||_1 = tau_i                                          (plain SGD)
    ||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)   (momentum)
    tau_eff   = sum_i p_i ||a_i||_1
    x        <- x - tau_eff * sum_i p_i (x - y_i) / ||a_i||_1

Every client uploads its step count on channel ``"steps"`` (``{"tau": ()}``,
a channel the server never sends), counted in the bytes like every channel;
an int32 count, so no codec touches it.
With equal ``tau_i`` it is FedAvg. Weight decay is not part of ``a_i``.

Example
-------
>>> tau_norm(4, momentum=0.0), round(tau_norm(2, momentum=0.5), 6)
(4.0, 2.5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedsim.algorithm import AlgoState, ClientAlgorithm, ClientOutcome
from fedsim.messages import MODEL, ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.base import Aggregate, Strategy, StrategyState, TrainPlan

if TYPE_CHECKING:
    from fedsim.algorithm import Params

STEPS = "steps"
"""The upload channel of a client's local step count ``{"tau": ()}``."""


def tau_norm(tau: int, *, momentum: float) -> float:
    """``||a_i||_1`` of ``tau`` local SGD steps with ``momentum``."""
    if not momentum:
        return float(tau)
    rho = momentum
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


@dataclass(frozen=True)
class FedNovaClient(ClientAlgorithm):
    """FedAvg's local training; uploads its step count as well."""

    def end(
        self, state: AlgoState, params: Params, steps: int, lr: float
    ) -> ClientOutcome:
        """``{"steps": {"tau": steps}}`` beside the model."""
        tau = torch.tensor(steps, dtype=torch.int32)  # a count: travels raw
        return ClientOutcome(
            upload={STEPS: {"tau": tau}}, metrics={"tau": float(steps)}
        )


class FedNova(Strategy):
    """Normalized averaging: each change divided by its client's local work."""

    def configure_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        cohort: Sequence[int],
    ) -> TrainPlan:
        """FedAvg's plan; every client also uploads ``{"steps": {"tau": ()}}``."""
        plan = super().configure_train(server_round, global_tensors, state, cohort)
        return dataclasses.replace(plan, upload={**plan.upload, STEPS: {"tau": ()}})

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """:class:`FedNovaClient`."""
        return FedNovaClient()

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """``x - tau_eff * sum p_i (x - y_i) / ||a_i||_1``."""
        if not updates:
            return None
        rho = self.client_hparams(server_round).momentum
        weight = {u.client_id: self.settings.weight(u) for u in updates}
        total = sum(weight.values())
        norms = {
            u.client_id: tau_norm(int(u.upload[STEPS]["tau"].item()), momentum=rho)
            for u in updates
        }
        tau_eff = sum(weight[c] / total * norms[c] for c in norms)
        new: Tensors = {}
        for name, x in global_tensors.items():
            if not x.is_floating_point():
                new[name] = updates[0].upload[MODEL][name].clone()
                continue
            x64 = x.to(torch.float64)
            direction = torch.zeros_like(x64)
            for u in updates:
                p = weight[u.client_id] / total
                y = u.upload[MODEL][name].to(torch.float64)
                direction += p * (x64 - y) / max(norms[u.client_id], 1e-12)
            new[name] = (x64 - tau_eff * direction).to(x.dtype)
        return Aggregate(
            global_tensors=new,
            state=state,
            metrics={"tau_eff": tau_eff},
            client_metrics={cid: {"a_norm": n} for cid, n in norms.items()},
        )
