"""The round loop: sample -> configure -> execute -> aggregate -> evaluate -> log.

The driver owns the loop; the strategy makes the decisions and the backend runs
the clients. Server state is a frozen value replaced every round, so a
checkpoint is just that value, and a resumed run replays the same cohorts
because each cohort is derived from ``(seed, round)`` alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsim.backend.base import Backend, ClientResult
from fedsim.checkpoint import ServerState
from fedsim.comm import RoundTraffic
from fedsim.messages import ClientEval, ClientFailure, ClientTask, ClientUpdate
from fedsim.params import Tensors, payload_nbytes
from fedsim.state import ClientStateStore
from fedsim.strategy import (
    AggregationError,
    EvalMetrics,
    Strategy,
    StrategyState,
    TrainPlan,
)
from fedsim.strategy.replies import reply_problem
from fedsim.tracking import RoundMetrics, Tracker

log = logging.getLogger(__name__)


def sample_cohort(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """The sorted client ids of a round, a pure function of ``(seed, round)``.

    >>> sample_cohort(0, 3, 10, 4) == sample_cohort(0, 3, 10, 4)
    True
    """
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """A client's training seed, a pure function of ``(seed, round, client)``."""
    state = np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)
    return int(state[0])


@dataclass(frozen=True, kw_only=True)
class Cohort:
    """Who trains each round: ``size`` of ``num_clients``, drawn from ``seed``."""

    seed: int
    num_clients: int
    size: int


@dataclass
class RoundOutcome:
    """What one round's replies left behind, gathered while aggregating."""

    failures: list[ClientFailure] = field(default_factory=list)
    up: dict[int, int] = field(default_factory=dict)
    up_by_channel: dict[str, int] = field(default_factory=dict)
    losses: list[tuple[float, int]] = field(default_factory=list)
    train_seconds: float = 0.0  # summed over the clients
    setup_seconds: float = 0.0
    steps: int = 0

    def train_loss(self) -> float | None:
        """Example-weighted mean of the clients' training losses."""
        total = sum(n for _, n in self.losses)
        return sum(loss * n for loss, n in self.losses) / total if total else None


class RoundFailed(RuntimeError):
    """A round kept getting fewer usable replies than ``server.min_clients``."""

    def __init__(
        self,
        server_round: int,
        cohort: int,
        min_clients: int,
        tries: int,
        outcome: RoundOutcome,
    ) -> None:
        reasons = sorted({f.reason for f in outcome.failures})[:3]
        super().__init__(
            f"round {server_round}: {len(outcome.up)} of {cohort} clients succeeded "
            f"in each of {tries} tries, fewer than server.min_clients={min_clients} "
            f"(failures: {'; '.join(reasons) or 'none'})"
        )


class Driver:
    """Runs one round at a time: the strategy decides, the backend executes."""

    def __init__(
        self,
        *,
        cohort: Cohort,
        backend: Backend,
        strategy: Strategy,
        tracker: Tracker,
        store: ClientStateStore,
        eval_batch_size: int,
        min_clients: int = 1,
        max_round_retries: int = 0,
    ) -> None:
        self.min_clients = min_clients
        self.max_round_retries = max_round_retries
        self.cohort = cohort
        self.backend = backend
        self.strategy = strategy
        self.tracker = tracker
        self.store = store
        self.eval_batch_size = eval_batch_size

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundMetrics]:
        """One round from ``state``: returns the next state and its metrics.

        A round with fewer than ``min_clients`` usable replies is not
        aggregated; it runs again with the same cohort (and seeds) at most
        ``max_round_retries`` times, then :class:`RoundFailed` is raised. Every
        attempt's bytes count: they travelled.
        """
        t0, started_at = time.perf_counter(), time.time()
        r, c = state.round, self.cohort
        # --- sample and configure -----------------------------------------
        cohort = sample_cohort(c.seed, r, c.num_clients, c.size)
        plan = self.strategy.configure_train(
            r, state.global_tensors, state.strategy_state, cohort
        )
        tasks = self._tasks(r, cohort, plan)
        down_by_channel = {ch: payload_nbytes(t) for ch, t in plan.payload.items()}
        # --- execute and aggregate, again while too few clients succeed ---
        traffic, up_by_channel = RoundTraffic(r, {}, {}), Counter[str]()
        for attempt in range(self.max_round_retries + 1):
            outcome = RoundOutcome()
            aggregated = self._train(r, state, plan, tasks, outcome)
            traffic = traffic.add(
                dict.fromkeys(cohort, sum(down_by_channel.values())), outcome.up
            )
            up_by_channel.update(outcome.up_by_channel)
            if aggregated is not None:
                break
            self.store.rollback(r)  # what this attempt's clients kept is void
            log.warning(
                "round %d (try %d): %d of %d clients succeeded, fewer than "
                "server.min_clients=%d",
                r,
                attempt + 1,
                len(outcome.up),
                len(cohort),
                self.min_clients,
            )
        else:
            raise RoundFailed(r, len(cohort), self.min_clients, attempt + 1, outcome)
        new_global, strategy_state = aggregated
        # --- evaluate -------------------------------------------------------
        t_eval = time.perf_counter()
        evaluation = self._evaluate(r, new_global)
        eval_seconds = time.perf_counter() - t_eval
        # --- account and log --------------------------------------------------
        ledger = state.ledger.record(traffic)
        by_channel = {
            ch: {"down": n * len(cohort) * (attempt + 1), "up": up_by_channel[ch]}
            for ch, n in down_by_channel.items()
        }
        metrics = RoundMetrics(
            round=r,
            **RoundMetrics.evaluated(evaluation),
            train_loss=outcome.train_loss(),
            bytes_up=traffic.bytes_up,
            bytes_down=traffic.bytes_down,
            cumulative_bytes=ledger.total_bytes,
            bytes_by_channel=by_channel,
            num_clients=len(outcome.up),
            num_failed=len(cohort) - len(outcome.up),
            lr=plan.hparams.lr,
            round_seconds=time.perf_counter() - t0,
            eval_seconds=eval_seconds,
            train_seconds=outcome.train_seconds,
            setup_seconds=outcome.setup_seconds,
            steps=outcome.steps,
            started_at=started_at,
        )
        self.tracker.log_round(metrics, traffic)
        next_state = state.advance(
            global_tensors=new_global,
            strategy_state=strategy_state,
            ledger=ledger,
            evaluation=evaluation,
        )
        return next_state, metrics

    def _tasks(
        self, server_round: int, cohort: Sequence[int], plan: TrainPlan
    ) -> list[ClientTask]:
        """Each client's task: the plan's settings and its own seed."""
        return [
            ClientTask(
                client_id=cid,
                round=server_round,
                seed=client_seed(self.cohort.seed, server_round, cid),
                hparams=plan.hparams,
                algorithm=plan.algorithm,
            )
            for cid in cohort
        ]

    def _train(
        self,
        server_round: int,
        state: ServerState,
        plan: TrainPlan,
        tasks: Sequence[ClientTask],
        outcome: RoundOutcome,
    ) -> tuple[Tensors, StrategyState] | None:
        """One attempt: the aggregate, or None with too few usable replies."""
        results = self.backend.train(tasks, plan.payload, self.store.get)
        updates = self._accepted(server_round, results, plan, outcome)
        try:
            aggregated = self.strategy.aggregate_train(
                server_round, state.global_tensors, state.strategy_state, updates
            )
        except AggregationError:
            if outcome.up:  # some updates were accepted: a real error
                raise
            return None
        return aggregated if len(outcome.up) >= self.min_clients else None

    def _accepted(
        self,
        server_round: int,
        results: Iterable[ClientResult],
        plan: TrainPlan,
        outcome: RoundOutcome,
    ) -> Iterator[ClientUpdate]:
        """Split replies into usable updates and recorded failures."""
        for result in results:
            if isinstance(result, ClientUpdate):
                reason = reply_problem(result, plan.payload)
                if reason is None:
                    self._account(server_round, result, outcome)
                    yield result
                    continue
                result = ClientFailure(client_id=result.client_id, reason=reason)
            log.warning("client %d failed: %s", result.client_id, result.reason)
            outcome.failures.append(result)

    def _account(
        self, server_round: int, update: ClientUpdate, outcome: RoundOutcome
    ) -> None:
        # Measured on what arrived, not on what the client claims.
        sizes = {ch: payload_nbytes(t) for ch, t in update.upload.items()}
        outcome.up[update.client_id] = sum(sizes.values())
        for ch, n in sizes.items():
            outcome.up_by_channel[ch] = outcome.up_by_channel.get(ch, 0) + n
        outcome.losses.append((update.train_loss, update.num_examples))
        outcome.train_seconds += update.train_seconds
        outcome.setup_seconds += update.setup_seconds
        outcome.steps += update.steps
        if update.keep:
            self.store.put(update.client_id, server_round, update.keep)

    def _evaluate(
        self, server_round: int, global_tensors: Tensors
    ) -> EvalMetrics | None:
        plan = self.strategy.configure_evaluate(server_round)
        if not plan.any:
            return None
        global_result = (
            self.backend.evaluate(global_tensors, self.eval_batch_size)
            if plan.global_model
            else None
        )
        personal = self._evaluate_clients(plan.personal_clients, global_tensors)
        return self.strategy.aggregate_evaluate(server_round, global_result, personal)

    def _evaluate_clients(
        self, clients: Sequence[int], global_tensors: Tensors
    ) -> list[ClientEval]:
        if not clients:
            return []
        kept = self.store.get
        personal: list[ClientEval] = []
        for result in self.backend.evaluate_clients(
            clients, global_tensors, kept, self.eval_batch_size
        ):
            if isinstance(result, ClientFailure):
                log.warning(
                    "client %d: personal evaluation failed: %s",
                    result.client_id,
                    result.reason,
                )
            else:
                personal.append(result)
        return personal
