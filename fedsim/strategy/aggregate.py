"""Averaging math as plain functions and a running weighted sum.

Example
-------
>>> import torch
>>> mean = WeightedMean()
>>> mean.add({"w": torch.tensor([1.0, 3.0])}, weight=1)
>>> mean.add({"w": torch.tensor([4.0, 0.0])}, weight=2)
>>> mean.result()["w"].tolist()
[3.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedsim.messages import ClientUpdate
from fedsim.registry import Weighting


def client_weight(update: ClientUpdate, weighting: Weighting) -> float:
    """``update``'s weight in a mean over a round's clients (``server.weighting``).

    ``examples``: its training examples; ``uniform``: 1.
    """
    return float(update.num_examples) if weighting == "examples" else 1.0


class AggregationError(ValueError):
    """Updates that cannot be averaged (no clients, mismatched tensors)."""


class WeightedMean:
    """Running weighted mean of named tensors, tensor by tensor.

    Each tensor (every FedPara factor, core, bias, norm parameter) is averaged on
    its own. The sum is kept in float64 so that the result depends only on the
    order of :meth:`add` calls, which the driver fixes (sorted client ids).
    Non-floating tensors (counters) keep the first client's value.
    """

    def __init__(self) -> None:
        self._sum: dict[str, Tensor] = {}
        self._first: dict[str, Tensor] = {}
        self._weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, Tensor], weight: float) -> None:
        """Fold one client's tensors into the sum."""
        if weight <= 0:
            raise AggregationError(f"client weight must be > 0, got {weight}")
        # Replies were checked against the round's plan before they got here
        # (fedsim.strategy.replies), so every client sends the same names.
        if not self.count:
            self._first = dict(tensors)
            self._sum = {
                name: t.detach().to(torch.float64) * weight
                for name, t in tensors.items()
                if t.is_floating_point()
            }
        else:
            for name, total in self._sum.items():
                total.add_(tensors[name].detach().to(torch.float64), alpha=weight)
        self._weight += weight
        self.count += 1

    def result(self) -> dict[str, Tensor]:
        """The weighted mean, each tensor in its original dtype."""
        if not self.count:
            raise AggregationError("no client update to aggregate")
        out: dict[str, Tensor] = {}
        for name, first in self._first.items():
            if name in self._sum:
                out[name] = (self._sum[name] / self._weight).to(first.dtype)
            else:
                out[name] = first.clone()
        return out
