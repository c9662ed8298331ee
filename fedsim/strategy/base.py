"""The strategy protocol: Flower's four verbs over FedJAX's values.

A strategy owns the decisions of a round and its own state; the driver owns the
loop and the backend runs the clients. The state is a value (namespaced tensors)
kept in the server state, so a checkpoint holds it and a resumed run continues
it exactly.

``init(global) -> state``
    the strategy's state from the initial global tensors.
``configure_train(round, global, state, cohort) -> TrainPlan``
    what travels down (channels), what must come back (the upload's
    layout), the client hyperparameters (per client where needed), the
    client half of the algorithm.
``aggregate_train(round, global, state, updates) -> Aggregate | None``
    the next global tensors, state and round metrics from the round's
    accepted updates (sorted by client id), or None: nothing to aggregate.
    A pure function of its arguments: the driver has already counted every
    reply's bytes and holds what each client keeps, and commits that only
    for a round that aggregated.
``configure_evaluate(round) -> EvalPlan`` / ``aggregate_evaluate``
    global evaluation, personalized evaluation, or both (see
    :mod:`fedsim.strategy.evaluate`).

Concrete strategies override ``aggregate_train`` and whichever other verb their
algorithm changes; composition (``WeightedMean``, ``ServerOptimizer``) rather
than inheritance chains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from fedsim.algorithm import ClientAlgorithm
from fedsim.config import ClientConfig, Config, ServerConfig
from fedsim.messages import MODEL, ClientEval, ClientHParams, ClientUpdate, EvalResult
from fedsim.params import StateLayout, Tensors
from fedsim.registry import Weighting
from fedsim.strategy.aggregate import client_weight
from fedsim.strategy.evaluate import EvalMetrics, EvalPlan, EvalSchedule

StrategyState = dict[str, Tensors]
"""Namespaced tensors (``{"m": {...}, "v": {...}}``): plain enough to checkpoint."""

UploadSpec = Mapping[str, Mapping[str, tuple[int, ...]]]
"""What each client sends back: channel -> tensor name -> shape."""


def shapes(tensors: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of ``tensors`` (to declare an upload).

    >>> import torch
    >>> shapes({"w": torch.zeros(2, 3), "n": torch.tensor(1)})
    {'w': (2, 3), 'n': ()}
    """
    return {name: tuple(t.shape) for name, t in tensors.items()}


@dataclass(frozen=True, kw_only=True)
class StrategySettings:
    """The parts of a config a strategy reads, and nothing else.

    ``client_examples``: every client's training examples, by client id (the
    partition's, after the personal carve), for the strategies whose
    examples weighting needs the whole population's sizes (SCAFFOLD's
    control variate, FedDyn's per-client alpha); None where no partition
    exists (reading a layout).
    """

    client: ClientConfig
    server: ServerConfig
    num_clients: int
    schedule: EvalSchedule
    client_examples: tuple[int, ...] | None = None

    @property
    def options(self) -> Any:
        """The strategy's own typed settings (``server.settings``)."""
        return self.server.settings

    @property
    def weighting(self) -> Weighting:
        """``server.weighting``, or the strategy's default when unset."""
        return self.server.weighting or self.server.spec.weighting

    def weight(self, update: ClientUpdate) -> float:
        """``update``'s weight in a mean over the round's clients."""
        return client_weight(update, self.weighting)

    def population_weight(self, client_id: int) -> float:
        """``w_i``: 1 (uniform), or ``n_i / mean n`` over all ``N`` clients.

        ``(1/N) sum_i w_i x_i`` is then the mean of ``x_i`` under the
        weighting, over the whole population, as Acar et al.'s code weights
        FedDyn and SCAFFOLD.

        Raises
        ------
        ValueError
            With examples weighting and no ``client_examples``.
        """
        if self.weighting == "uniform":
            return 1.0
        sizes = self.client_examples
        if sizes is None:
            raise ValueError(
                f"{self.server.strategy} with server.weighting=examples needs every "
                "client's training examples (StrategySettings.client_examples)"
            )
        return sizes[client_id] * len(sizes) / sum(sizes)


@dataclass(frozen=True, kw_only=True)
class ClientPlan:
    """One client's own instructions beside the round's shared plan.

    ``hparams`` and ``algorithm`` replace the plan's for this client (FedDyn's
    per-client alpha); ``payload`` holds channels only this client receives
    (merged with the shared payload, counted in its download bytes).
    """

    hparams: ClientHParams | None = None
    algorithm: ClientAlgorithm | None = None
    payload: Mapping[str, Tensors] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainPlan:
    """One round's client work.

    Attributes
    ----------
    payload
        What travels down to every client, by channel (put once).
    hparams
        Every client's training settings, unless ``clients`` says otherwise.
    algorithm
        The client half of the algorithm.
    upload
        What each client must send back (channel -> name -> shape): the one
        reply check compares replies with it (see
        :func:`fedsim.strategy.replies.reply_problem`), so a client may upload
        a channel it never received (FedNova's step counts).
    clients
        Per-client instructions, by client id (Flower's per-node messages).
    """

    payload: Mapping[str, Tensors]
    hparams: ClientHParams
    algorithm: ClientAlgorithm
    upload: UploadSpec
    clients: Mapping[int, ClientPlan] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    """What a strategy makes of a round's updates.

    Attributes
    ----------
    global_tensors, state
        The next global tensors and strategy state.
    metrics
        Round metrics of the strategy (metrics.jsonl, TensorBoard under the
        strategy's name).
    client_metrics
        Per-client diagnostics, by client id (clients.jsonl).
    """

    global_tensors: Tensors
    state: StrategyState
    metrics: Mapping[str, float] = field(default_factory=dict)
    client_metrics: Mapping[int, Mapping[str, float]] = field(default_factory=dict)


class Strategy(ABC):
    """Configure each round's client work, aggregate the replies, evaluate."""

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings

    @property
    def name(self) -> str:
        """``server.strategy``."""
        return self.settings.server.strategy

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
        """Send the model to every client of the cohort and expect it back."""
        return TrainPlan(
            payload={MODEL: global_tensors},
            hparams=self.client_hparams(server_round),
            algorithm=self.client_algorithm(server_round),
            upload={MODEL: shapes(global_tensors)},
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
        updates: Sequence[ClientUpdate],
    ) -> Aggregate | None:
        """The next global tensors and state, or None: nothing to aggregate.

        ``updates`` are the round's accepted replies in sorted client order;
        the driver has already counted their bytes and holds what they keep.
        """

    # ------------------------------------------------------------ evaluation
    def extra_models(self, state: StrategyState) -> Mapping[str, Tensors]:
        """Models to evaluate beside the global one, by name (none by default).

        Evaluated on the global test split whenever the global model is; their
        accuracy goes to ``extra_accuracy`` (FedDyn's all-client mean).
        """
        return {}

    def configure_evaluate(self, server_round: int) -> EvalPlan:
        """Which evaluations run after ``server_round``."""
        return self.settings.schedule.plan(server_round)

    def aggregate_evaluate(
        self,
        server_round: int,
        global_result: EvalResult | None,
        personal: Sequence[ClientEval],
        untrained: int = 0,
        extra: Mapping[str, EvalResult] | None = None,
    ) -> EvalMetrics:
        """Combine the round's evaluations into its metrics.

        ``untrained``: clients of the plan left unscored (never trained);
        ``extra``: the results of :meth:`extra_models`.
        """
        return EvalMetrics.of(global_result, personal, untrained, extra)


def strategy_settings(
    cfg: Config, client_examples: Sequence[int] | None = None
) -> StrategySettings:
    """The config sections a strategy reads, and its evaluation schedule.

    ``client_examples``: every client's training examples (see
    :class:`StrategySettings`).
    """
    global_model, personal = cfg.evaluates
    schedule = EvalSchedule(
        every=cfg.server.eval_every,
        rounds=cfg.rounds,
        global_model=global_model,
        personal=personal,
        personal_clients=cfg.server.personal_eval_clients,
        num_clients=cfg.data.num_clients,
        seed=cfg.seed,
        trained_only=cfg.server.personal_eval_trained_only,
    )
    return StrategySettings(
        client=cfg.client,
        server=cfg.server,
        num_clients=cfg.data.num_clients,
        schedule=schedule,
        client_examples=None if client_examples is None else tuple(client_examples),
    )


def state_layout(cfg: Config, model: nn.Module) -> StateLayout:
    """What travels and what each client keeps, for ``cfg``'s model and strategy."""
    strategy = build_strategy(strategy_settings(cfg))
    return StateLayout.of(model, strategy.local_names(model))


def build_strategy(settings: StrategySettings) -> Strategy:
    """The strategy ``settings.server.strategy`` names (see :mod:`fedsim.registry`)."""
    strategy: Strategy = settings.server.spec.build(settings)
    return strategy
