"""Aggregation strategies: pure decisions, no knowledge of how clients run."""

from fedsim.strategy.aggregate import AggregationError, WeightedMean
from fedsim.strategy.base import Strategy
from fedsim.strategy.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def build_strategy(name: str) -> Strategy:
    """Instantiate the strategy called ``name`` (see ``STRATEGIES``)."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


__all__ = ["STRATEGIES", "AggregationError", "FedAvg", "Strategy", "WeightedMean"]
