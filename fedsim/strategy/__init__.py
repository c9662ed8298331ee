"""Aggregation strategies: decisions and their state, no knowledge of how clients run.

Each module holds one algorithm's server half (a :class:`Strategy`) and, where
the algorithm changes local training, its client half (a
:class:`~fedsim.algorithm.ClientAlgorithm`) side by side.
"""

from fedsim.strategy.aggregate import AggregationError, WeightedMean
from fedsim.strategy.base import (
    Strategy,
    StrategySettings,
    StrategyState,
    TrainPlan,
)
from fedsim.strategy.evaluate import EvalMetrics, EvalPlan, EvalSchedule
from fedsim.strategy.fedavg import FedAvg, FedPer, LocalOnly
from fedsim.strategy.feddyn import FedDyn, FedDynClient
from fedsim.strategy.fedopt import SECOND_MOMENT, FedOpt, ServerOptimizer
from fedsim.strategy.fedprox import FedProx, FedProxClient
from fedsim.strategy.replies import reply_problem
from fedsim.strategy.scaffold import Scaffold, ScaffoldClient

STRATEGIES: dict[str, type[Strategy]] = {
    **{cls.name: cls for cls in (FedAvg, FedPer, LocalOnly, FedProx, Scaffold, FedDyn)},
    # One class, its second-moment rule picked by server.strategy.
    **dict.fromkeys(SECOND_MOMENT, FedOpt),
}


def build_strategy(settings: StrategySettings) -> Strategy:
    """Instantiate ``settings.server.strategy`` (see ``STRATEGIES``)."""
    name = settings.server.strategy
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None
    return cls(settings)


__all__ = [
    "STRATEGIES",
    "AggregationError",
    "EvalMetrics",
    "EvalPlan",
    "EvalSchedule",
    "FedAvg",
    "FedDyn",
    "FedDynClient",
    "FedOpt",
    "FedPer",
    "FedProx",
    "FedProxClient",
    "LocalOnly",
    "Scaffold",
    "ScaffoldClient",
    "ServerOptimizer",
    "Strategy",
    "StrategySettings",
    "StrategyState",
    "TrainPlan",
    "WeightedMean",
    "build_strategy",
    "reply_problem",
]
