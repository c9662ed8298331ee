"""FedDyn (Acar et al., 2021): dynamic regularization towards a common optimum.

Each client keeps ``g_i``, its last local gradient ``grad L_i(theta_i)`` (kept
namespace ``"feddyn"``, zeros at a client's first participation), and minimizes
over its travelling parameters, each FedPara factor on its own::

    L_i(theta) - <g_i, theta> + alpha/2 * ||theta - theta_g||^2

then sets ``g_i <- g_i - alpha * (theta_i - theta_g)`` (the first-order
condition of that minimization). The server keeps ``h`` (state ``"h"``) and,
with ``N`` all clients and ``S`` the round's accepted clients::

    h     <- h - alpha / N * sum_{i in S} (theta_i - theta)
    theta <- (1/|S|) sum_{i in S} theta_i - h / alpha

Both means are *uniform* over the accepted clients, as in the paper.
``alpha`` is ``server.settings.alpha``. ``server.weighting`` names the
objective: ``uniform`` (the paper's, ``(1/m) sum L_i``) runs the above;
``examples`` gives client ``i`` the regularizer ``alpha / w_i`` with ``w_i =
n_i / mean n`` over all clients (the authors' code, ``utils_methods.py``), so
``h`` is the mean of ``w_i g_i`` and the fixed point is the example-weighted
optimum; the server update is unchanged. ``server.settings.max_grad_norm``
clips every local gradient (the authors' stabilizer).
``server.settings.all_client_mean`` keeps every client's last model (state
``"client/<id>"``, their sum ``"client_sum"``, the initial model ``"init"``)
and evaluates their mean (``extra_accuracy/all_client_mean``). Only the model channel
travels (FedAvg's bytes); every floating tensor of it, buffers included, gets
the server correction.

Since ``h`` and the ``g_i`` start at zero and move by the same amounts, ``h`` is
always the mean of all ``N`` clients' ``g_i``. At a fixed point where every
client returns the model it received, ``h`` must be 0 and each ``g_i`` is
``grad L_i(theta)``: the gradients of the global objective sum to zero, however
heterogeneous the clients and however many local steps they take.

Example
-------
>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([2.0]))
>>> algo = FedDynClient(alpha=0.5)
>>> state = algo.begin({"w": w}, payload={"model": {"w": torch.tensor([2.0])}},
...                    kept={"feddyn": {"w": torch.tensor([1.0])}})
>>> algo.loss(state, {"w": w}, torch.tensor(0.0)).item()  # -<1, 2> + 0
-2.0
>>> with torch.no_grad():
...     _ = w.fill_(4.0)  # training moved w from 2 to 4
>>> algo.end(state, {"w": w}, steps=1, lr=0.1).keep["feddyn"]["w"].tolist()
[0.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from fedsim.algorithm import AlgoState, ClientAlgorithm, ClientOutcome
from fedsim.messages import MODEL, ClientUpdate
from fedsim.params import Tensors
from fedsim.strategy.aggregate import WeightedMean
from fedsim.strategy.base import (
    Aggregate,
    ClientPlan,
    Strategy,
    StrategyState,
    TrainPlan,
)

if TYPE_CHECKING:
    from fedsim.algorithm import Channels, Grads, Params

KEPT = "feddyn"
"""The kept-state namespace of a client's gradient term ``g_i``."""

ANCHOR, G_I, ALPHA = "anchor", "g_i", "alpha"
"""State namespaces on the parameters' device: ``theta_g``, ``g_i`` and the
client's ``alpha`` (a tensor, so a captured step serves every client's value)."""


@dataclass(frozen=True)
class FedDynClient(ClientAlgorithm):
    """FedDyn's client half: linear and quadratic terms, then the ``g_i`` update.

    Its state: ``"anchor"`` (``theta_g``), ``"g_i"`` and ``"alpha"`` on the
    parameters' device for the steps, ``"kept"`` (``g_i`` as kept, CPU) for
    ``end``. ``alpha`` is left out of equality: clients that differ only in
    it (examples weighting) share one captured training step.

    Parameters
    ----------
    alpha
        The regularizer (``server.settings.alpha`` over the client's weight),
        > 0.
    max_grad_norm
        Clip each step's gradient to this norm; None: no clipping.
    """

    alpha: float = field(compare=False)
    max_grad_norm: float | None = None
    step_state: ClassVar[tuple[str, ...]] = (ANCHOR, G_I, ALPHA)

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(
                f"FedDyn alpha must be > 0 (server.settings.alpha): {self.alpha}"
            )

    def begin(self, params: Params, payload: Channels, kept: Channels) -> AlgoState:
        """Load ``g_i`` (zeros at first) and snapshot ``theta_g``."""
        mine = kept.get(KEPT)
        g_i = (
            dict(mine)
            if mine is not None
            else {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
        )
        device = next((p.device for p in params.values()), torch.device("cpu"))
        return {
            "kept": g_i,
            ANCHOR: {name: p.detach().clone() for name, p in params.items()},
            G_I: {name: g_i[name].to(p.device, p.dtype) for name, p in params.items()},
            ALPHA: {"alpha": torch.tensor(self.alpha, device=device)},
        }

    def loss(self, state: AlgoState, params: Params, loss: Tensor) -> Tensor:
        """``loss - <g_i, theta> + alpha/2 * ||theta - theta_g||^2``."""
        linear = loss.new_zeros(())
        quadratic = loss.new_zeros(())
        for name, theta_g in state[ANCHOR].items():
            theta = params[name]
            linear = linear + (state[G_I][name] * theta).sum()
            quadratic = quadratic + (theta - theta_g).square().sum()
        return loss - linear + (state[ALPHA]["alpha"] / 2) * quadratic

    def gradients(self, state: AlgoState, grads: Grads) -> Grads:
        """``grads`` scaled to norm at most ``max_grad_norm`` (as PyTorch clips).

        The scale stays on the device (no host sync per step).
        """
        if self.max_grad_norm is None or not grads:
            return grads
        norm = torch.stack([g.detach().square().sum() for g in grads.values()])
        scale = (self.max_grad_norm / (norm.sum().sqrt() + 1e-6)).clamp(max=1.0)
        return {name: g * scale.to(g.dtype) for name, g in grads.items()}

    def end(
        self, state: AlgoState, params: Params, steps: int, lr: float
    ) -> ClientOutcome:
        """Keep ``g_i - alpha * (theta_i - theta_g)`` under ``"feddyn"``."""
        new_g_i: Tensors = {}
        for name, g_i in state["kept"].items():
            theta_g = state[ANCHOR][name].to("cpu", torch.float64)
            theta = params[name].detach().to("cpu", torch.float64)
            step = g_i.to(torch.float64) - self.alpha * (theta - theta_g)
            new_g_i[name] = step.to(g_i.dtype)
        return ClientOutcome(keep={KEPT: new_g_i})


ALL_CLIENT_MEAN = "all_client_mean"
"""The name of the all-client mean model in ``extra_accuracy``."""


class FedDyn(Strategy):
    """FedDyn's server half: uniform mean corrected by the drift state ``h``."""

    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """``{"h": zeros}`` for every floating tensor of the model.

        With ``all_client_mean``: also ``"init"`` (the initial model) and
        ``"client_sum"``, ``N`` times it (every client starts there).
        """
        floating = {
            name: t for name, t in global_tensors.items() if t.is_floating_point()
        }
        state: StrategyState = {
            "h": {
                name: torch.zeros_like(t, device="cpu") for name, t in floating.items()
            }
        }
        if self.settings.options.all_client_mean:
            clients = self.settings.num_clients
            state["init"] = {
                name: t.detach().cpu().clone() for name, t in global_tensors.items()
            }
            state["client_sum"] = {
                name: t.detach().cpu().double() * clients
                for name, t in floating.items()
            }
        return state

    def extra_models(self, state: StrategyState) -> Mapping[str, Tensors]:
        """With ``all_client_mean``: the mean of every client's last model."""
        if "client_sum" not in state:
            return {}
        n = self.settings.num_clients
        init, total = state["init"], state["client_sum"]
        mean = {
            name: (total[name] / n).to(t.dtype) if name in total else t
            for name, t in init.items()
        }
        return {ALL_CLIENT_MEAN: mean}

    def _track_clients(
        self, state: StrategyState, updates: Sequence[ClientUpdate]
    ) -> StrategyState:
        """``state`` with each update's model as its client's last one."""
        total = {name: t.clone() for name, t in state["client_sum"].items()}
        out = dict(state)
        for update in updates:
            key = f"client/{update.client_id}"
            old, new = state.get(key, state["init"]), update.upload[MODEL]
            for name, t in total.items():
                t += new[name].detach().cpu().double() - old[name].double()
            out[key] = {name: new[name].detach().cpu().clone() for name in total}
        out["client_sum"] = total
        return out

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """:class:`FedDynClient` with ``alpha = server.settings.alpha``."""
        o = self.settings.options
        return FedDynClient(alpha=o.alpha, max_grad_norm=o.max_grad_norm)

    def configure_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        cohort: Sequence[int],
    ) -> TrainPlan:
        """FedAvg's plan; with examples weighting, client ``i`` gets ``alpha/w_i``."""
        plan = super().configure_train(server_round, global_tensors, state, cohort)
        s = self.settings
        if s.weighting == "uniform":
            return plan
        o = s.options
        clients = {
            cid: ClientPlan(
                algorithm=FedDynClient(
                    alpha=o.alpha / s.population_weight(cid),
                    max_grad_norm=o.max_grad_norm,
                )
            )
            for cid in cohort
        }
        return dataclasses.replace(plan, clients=clients)

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """Update ``h`` from the clients' drift, then ``theta = mean - h/alpha``."""
        if not updates:
            return None
        mean = WeightedMean()
        for update in updates:
            mean.add(update.upload[MODEL], weight=1.0)  # uniform, as the paper
        new = mean.result()
        alpha = self.settings.options.alpha
        # sum_{i in S} (theta_i - theta) = |S| * (mean - theta)
        share = mean.count / self.settings.num_clients  # |S| / N
        h_new: Tensors = {}
        for name, h in state["h"].items():
            theta = global_tensors[name].to(torch.float64)
            drift = new[name].to(torch.float64) - theta
            h64 = h.to(torch.float64) - alpha * share * drift
            h_new[name] = h64.to(h.dtype)
            new[name] = (new[name].to(torch.float64) - h64 / alpha).to(new[name].dtype)
        next_state = {**state, "h": h_new}
        if "client_sum" in state:
            next_state = self._track_clients(next_state, updates)
        return Aggregate(global_tensors=new, state=next_state)
