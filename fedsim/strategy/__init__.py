"""Aggregation strategies: decisions and their state, no knowledge of how clients run.

Each module holds one algorithm's server half (a :class:`Strategy`) and, where
the algorithm changes local training, its client half (a
:class:`~fedsim.algorithm.ClientAlgorithm`) side by side. Which module serves
which ``server.strategy`` is :mod:`fedsim.registry`'s business: the concrete
strategies are not exported here, and nothing outside this package imports
them.
"""

from fedsim.strategy.aggregate import AggregationError, WeightedMean
from fedsim.strategy.base import (
    Aggregate,
    ClientPlan,
    Strategy,
    StrategySettings,
    StrategyState,
    TrainPlan,
    UploadSpec,
    build_strategy,
    shapes,
    state_layout,
    strategy_settings,
)
from fedsim.strategy.evaluate import EvalMetrics, EvalPlan, EvalSchedule
from fedsim.strategy.replies import reply_problem

__all__ = [
    "Aggregate",
    "AggregationError",
    "ClientPlan",
    "EvalMetrics",
    "EvalPlan",
    "EvalSchedule",
    "Strategy",
    "StrategySettings",
    "StrategyState",
    "TrainPlan",
    "UploadSpec",
    "WeightedMean",
    "build_strategy",
    "reply_problem",
    "shapes",
    "state_layout",
    "strategy_settings",
]
