"""Factor-wise FedAvg (McMahan et al., 2017), and the two personalization baselines.

FedAvg averages every travelling tensor (each FedPara factor X1, Y1, X2, Y2,
T1, T2, each bias and norm parameter) on its own, weighted by the clients'
training examples (``server.weighting: examples``, McMahan's ``n_k / n``) or
uniformly. FedPer (Arivazhagan et al., 2019) is FedAvg with the last
``server.settings.layers`` layers kept on each client; local-only training keeps
everything on the client and sends nothing.

Example
-------
>>> import torch
>>> from fedsim.messages import ClientUpdate
>>> def up(cid, n, x):
...     return ClientUpdate(client_id=cid, upload={"model": {"x1": x}},
...                         num_examples=n, train_loss=0.0, train_seconds=0.0)
>>> ups = [up(0, 1, torch.ones(2)), up(1, 3, torch.zeros(2))]
>>> fedavg_aggregate(ups)["x1"].tolist()
[0.25, 0.25]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from fedsim.messages import MODEL, ClientUpdate
from fedsim.params import Tensors, last_layer_names
from fedsim.registry import Weighting
from fedsim.strategy.aggregate import WeightedMean, client_weight
from fedsim.strategy.base import Aggregate, Strategy, StrategyState, TrainPlan


def fedavg_aggregate(
    updates: Iterable[ClientUpdate], weighting: Weighting = "examples"
) -> Tensors:
    """Weighted mean of the updates' model channel (at least one)."""
    mean = WeightedMean()
    for update in updates:
        mean.add(update.upload[MODEL], weight=client_weight(update, weighting))
    return mean.result()


class FedAvg(Strategy):
    """Average every travelling tensor on its own (``server.weighting``)."""

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """Weighted mean of the updates (sorted client order)."""
        if not updates:
            return None
        mean = fedavg_aggregate(updates, self.settings.weighting)
        return Aggregate(global_tensors=mean, state=state)


class FedPer(FedAvg):
    """FedAvg whose last ``server.settings.layers`` layers stay on each client."""

    def local_names(self, model: nn.Module) -> frozenset[str]:
        """The parameters of the model's last layer(s)."""
        return last_layer_names(model, self.settings.options.layers)


class LocalOnly(Strategy):
    """Every client trains its own model and sends nothing (no communication)."""

    def local_names(self, model: nn.Module) -> frozenset[str]:
        """Everything stays on the client."""
        return frozenset(model.state_dict())

    def configure_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        cohort: Sequence[int],
    ) -> TrainPlan:
        """Nothing travels either way (0 bytes)."""
        plan = super().configure_train(server_round, global_tensors, state, cohort)
        return TrainPlan(
            payload={}, hparams=plan.hparams, algorithm=plan.algorithm, upload={}
        )

    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """Nothing to average: the clients' models are their kept state."""
        if not updates:
            return None
        return Aggregate(global_tensors=global_tensors, state=state)
