"""The strategy protocol: Flower's four verbs over FedJAX's values.

A strategy owns the decisions of a round and its own state; the driver owns the
loop and the backend runs the clients. The state is a value (namespaced tensors)
kept in the server state, so a checkpoint holds it and a resumed run continues
it exactly.

``init(global) -> state``
    the strategy's state from the initial global tensors.
``configure_train(round, global, state, cohort) -> TrainPlan``
    what travels down (channels), the client hyperparameters, the client half
    of the algorithm.
``aggregate_train(round, global, state, updates) -> (global, state)``
    the next global tensors and state from the round's accepted updates
    (sorted by client id, one at a time).
``configure_evaluate(round) -> EvalPlan`` / ``aggregate_evaluate``
    global evaluation, personalized evaluation, or both (see
    :mod:`fedsim.strategy.evaluate`).

Concrete strategies override ``aggregate_train`` and whichever other verb their
algorithm changes; composition (``WeightedMean``, ``ServerOptimizer``) rather
than inheritance chains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from fedsim.algorithm import ClientAlgorithm
from fedsim.config import ClientConfig, ServerConfig
from fedsim.messages import MODEL, ClientEval, ClientHParams, ClientUpdate, EvalResult
from fedsim.params import Tensors
from fedsim.strategy.evaluate import EvalMetrics, EvalPlan, EvalSchedule

StrategyState = dict[str, Tensors]
"""Namespaced tensors (``{"m": {...}, "v": {...}}``): plain enough to checkpoint."""


@dataclass(frozen=True, kw_only=True)
class StrategySettings:
    """The parts of a config a strategy reads, and nothing else."""

    client: ClientConfig
    server: ServerConfig
    num_clients: int
    schedule: EvalSchedule


@dataclass(frozen=True, kw_only=True)
class TrainPlan:
    """One round's client work: the same for every client of the cohort.

    ``payload`` is what travels down, by channel; a client must send back the
    same channels with the same tensor names and shapes (what the driver checks,
    see :func:`fedsim.strategy.replies.reply_problem`).
    """

    payload: Mapping[str, Tensors]
    hparams: ClientHParams
    algorithm: ClientAlgorithm


class Strategy(ABC):
    """Configure each round's client work, aggregate the replies, evaluate."""

    name: ClassVar[str]

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings

    # ------------------------------------------------------------ what stays
    def local_names(self, model: nn.Module) -> frozenset[str]:
        """State-dict names this strategy keeps on the client, beyond pFedPara's.

        FedAvg keeps nothing more; FedPer keeps the head, local-only everything.
        """
        return frozenset()

    # ------------------------------------------------------------ training
    def init(self, global_tensors: Mapping[str, Tensor]) -> StrategyState:
        """The strategy's state before round 0 (FedAvg has none)."""
        return {}

    def client_hparams(self, server_round: int) -> ClientHParams:
        """Local-training settings of ``server_round`` (lr ``lr * lr_decay**round``)."""
        c = self.settings.client
        return ClientHParams(
            lr=c.lr * c.lr_decay**server_round,
            epochs=c.epochs,
            batch_size=c.batch_size,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
        )

    def configure_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        cohort: Sequence[int],
    ) -> TrainPlan:
        """Send the model to every client of the cohort, with the client half."""
        return TrainPlan(
            payload={MODEL: global_tensors},
            hparams=self.client_hparams(server_round),
            algorithm=self.client_algorithm(server_round),
        )

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """The client half of the algorithm (FedAvg's changes nothing)."""
        return ClientAlgorithm()

    @abstractmethod
    def aggregate_train(
        self,
        server_round: int,
        global_tensors: Tensors,
        state: StrategyState,
        updates: Iterable[ClientUpdate],
    ) -> tuple[Tensors, StrategyState]:
        """Return the next global tensors and strategy state.

        ``updates`` are accepted replies in sorted client order, one at a time,
        so an implementation can keep a running sum instead of every update.
        Raises :class:`~fedsim.strategy.aggregate.AggregationError` when there
        is nothing to aggregate.
        """

    # ------------------------------------------------------------ evaluation
    def configure_evaluate(self, server_round: int) -> EvalPlan:
        """Which evaluations run after ``server_round``."""
        return self.settings.schedule.plan(server_round)

    def aggregate_evaluate(
        self,
        server_round: int,
        global_result: EvalResult | None,
        personal: Sequence[ClientEval],
    ) -> EvalMetrics:
        """Combine the round's evaluations into its metrics."""
        return EvalMetrics.of(global_result, personal)
