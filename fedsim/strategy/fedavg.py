"""Factor-wise FedAvg (McMahan et al., 2017) on FedPara factors.

Example
-------
>>> import torch
>>> from fedsim.messages import ClientUpdate
>>> ups = [
...     ClientUpdate(0, {"x1": torch.ones(2)}, 1, 8, 0.0, 0.0),
...     ClientUpdate(1, {"x1": torch.zeros(2)}, 3, 8, 0.0, 0.0),
... ]
>>> FedAvg().aggregate_train({"x1": torch.ones(2)}, ups)["x1"].tolist()
[0.25, 0.25]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from fedsim.messages import ClientUpdate
from fedsim.strategy.aggregate import AggregationError, WeightedMean
from fedsim.strategy.base import Strategy


class FedAvg(Strategy):
    """Average every travelling tensor on its own, weighted by examples."""

    name = "fedavg"

    def aggregate_train(
        self,
        global_tensors: Mapping[str, Tensor],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, Tensor]:
        """Example-weighted mean of the updates (sorted client order)."""
        mean = WeightedMean()
        for update in updates:
            if set(update.tensors) != set(global_tensors):
                raise AggregationError(
                    f"client {update.client_id} sent tensors that do not match the "
                    "global model"
                )
            mean.add(update.tensors, weight=float(update.num_examples))
        return mean.result()
