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
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedsim.backend.base import Backend
from fedsim.checkpoint import ServerState
from fedsim.comm import RoundTraffic
from fedsim.compress import Wire, without_residual
from fedsim.config import CommConfig
from fedsim.messages import (
    Channels,
    ClientEval,
    ClientFailure,
    ClientTask,
    ClientUpdate,
)
from fedsim.params import Tensors
from fedsim.state import ClientStateStore
from fedsim.strategy import Aggregate, EvalMetrics, Strategy, TrainPlan
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
    """Every reply of one attempt at a round, collected before aggregation.

    Bytes are counted for every upload that arrived, accepted or rejected
    (they travelled); kept states wait here until the round aggregates.
    """

    updates: list[ClientUpdate] = field(default_factory=list)  # accepted, sorted
    failures: list[ClientFailure] = field(default_factory=list)
    rejected: list[ClientFailure] = field(default_factory=list)  # subset: bad replies
    kept: dict[int, Channels] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    up_by_channel: dict[str, int] = field(default_factory=dict)

    def train_loss(self) -> float | None:
        """Example-weighted mean of the accepted clients' training losses."""
        total = sum(u.num_examples for u in self.updates)
        if not total:
            return None
        return sum(u.train_loss * u.num_examples for u in self.updates) / total

    def sum_of(self, field_name: str) -> Any:
        """A field of the accepted updates, summed (seconds, steps)."""
        return sum(getattr(u, field_name) for u in self.updates)


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
            f"round {server_round}: {len(outcome.updates)} of {cohort} clients "
            "succeeded "
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
        wire: Wire | None = None,
    ) -> None:
        self.min_clients = min_clients
        self.max_round_retries = max_round_retries
        self.cohort = cohort
        self.backend = backend
        self.strategy = strategy
        self.tracker = tracker
        self.store = store
        self.eval_batch_size = eval_batch_size
        self.wire = wire or Wire(CommConfig(), seed=cohort.seed)

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundMetrics]:
        """One round from ``state``: returns the next state and its metrics.

        A round with fewer than ``min_clients`` usable replies (or none the
        strategy can aggregate) is not aggregated; it runs again with the same
        cohort (and seeds) at most ``max_round_retries`` times, then
        :class:`RoundFailed` is raised. Every attempt's bytes count: they
        travelled. What clients keep is committed only for the attempt that
        aggregated.
        """
        t0, started_at = time.perf_counter(), time.time()
        r, c = state.round, self.cohort
        # --- sample and configure -----------------------------------------
        cohort = sample_cohort(c.seed, r, c.num_clients, c.size)
        plan = self.strategy.configure_train(
            r, state.global_tensors, state.strategy_state, cohort
        )
        tasks = self._tasks(r, cohort, plan)
        # What travels down is encoded once (a client's own channels for it);
        # clients get the decoded values.
        payload, shared_sizes, down_residual = self.wire.download(
            r, plan.payload, state.downlink_residual
        )
        down, down_by_channel = {}, Counter[str]()
        for i, t in enumerate(tasks):
            own, own_sizes = self.wire.download_own(r, t.client_id, t.payload)
            tasks[i] = replace(t, payload=own)
            sizes = {**shared_sizes, **own_sizes}
            down[t.client_id] = sum(sizes.values())
            down_by_channel.update(sizes)
        # --- execute and aggregate, again while too few clients succeed ---
        traffic, up_by_channel = RoundTraffic(r, {}, {}), Counter[str]()
        for attempt in range(self.max_round_retries + 1):
            outcome = self._collect(plan, payload, tasks)
            traffic = traffic.add(down, outcome.up)
            up_by_channel.update(outcome.up_by_channel)
            aggregate = self._aggregate(r, state, outcome)
            if aggregate is not None:
                break
            log.warning(
                "round %d (try %d): %d of %d clients succeeded, fewer than "
                "server.min_clients=%d",
                r,
                attempt + 1,
                len(outcome.updates),
                len(cohort),
                self.min_clients,
            )
        else:
            raise RoundFailed(r, len(cohort), self.min_clients, attempt + 1, outcome)
        for client_id, kept in outcome.kept.items():
            self.store.put(client_id, r, kept)
        trained = state.trained | {u.client_id for u in outcome.updates}
        # --- evaluate -------------------------------------------------------
        t_eval = time.perf_counter()
        evaluation = self._evaluate(r, aggregate, trained)
        eval_seconds = time.perf_counter() - t_eval
        # --- account and log --------------------------------------------------
        ledger = state.ledger.record(traffic)
        by_channel = {
            ch: {"down": n * (attempt + 1), "up": up_by_channel[ch]}
            for ch, n in down_by_channel.items()
        }
        for ch, n in up_by_channel.items():  # channels the server never sent
            by_channel.setdefault(ch, {"down": 0, "up": n})
        metrics = RoundMetrics(
            round=r,
            **RoundMetrics.evaluated(evaluation),
            train_loss=outcome.train_loss(),
            bytes_up=traffic.bytes_up,
            bytes_down=traffic.bytes_down,
            cumulative_bytes=ledger.total_bytes,
            bytes_by_channel=by_channel,
            num_clients=len(outcome.updates),
            num_failed=len(cohort) - len(outcome.updates),
            lr=plan.hparams.lr,
            strategy=dict(aggregate.metrics),
            round_seconds=time.perf_counter() - t0,
            eval_seconds=eval_seconds,
            train_seconds=outcome.sum_of("train_seconds"),
            setup_seconds=outcome.sum_of("setup_seconds"),
            steps=outcome.sum_of("steps"),
            started_at=started_at,
        )
        self.tracker.log_round(
            metrics, traffic, _client_rows(r, outcome, aggregate.client_metrics)
        )
        next_state = state.advance(
            global_tensors=aggregate.global_tensors,
            strategy_state=aggregate.state,
            ledger=ledger,
            evaluation=evaluation,
            downlink_residual=down_residual,
            trained=frozenset(trained),
        )
        return next_state, metrics

    def _tasks(
        self, server_round: int, cohort: Sequence[int], plan: TrainPlan
    ) -> list[ClientTask]:
        """Each client's task: the plan's settings (or its own) and its seed."""
        tasks = []
        for cid in cohort:
            own = plan.clients.get(cid)
            tasks.append(
                ClientTask(
                    client_id=cid,
                    round=server_round,
                    seed=client_seed(self.cohort.seed, server_round, cid),
                    hparams=own.hparams if own and own.hparams else plan.hparams,
                    algorithm=own.algorithm
                    if own and own.algorithm
                    else plan.algorithm,
                    payload=dict(own.payload) if own else {},
                )
            )
        return tasks

    def _collect(
        self, plan: TrainPlan, payload: Channels, tasks: Sequence[ClientTask]
    ) -> RoundOutcome:
        """Every reply of one attempt: decoded, counted, checked, kept states held."""
        outcome = RoundOutcome()
        by_id = {t.client_id: t for t in tasks}
        for result in self.backend.train(tasks, payload, self._kept):
            if isinstance(result, ClientUpdate):
                # Measured on the encoded upload, not on what the client claims.
                task = by_id[result.client_id]
                own = plan.clients.get(task.client_id)
                result, sizes = self.wire.receive(
                    task.round,
                    result,
                    {**plan.payload, **(own.payload if own else {})},
                    {**payload, **task.payload},
                    self.store.get,
                )
                outcome.up[result.client_id] = sum(sizes.values())
                for ch, n in sizes.items():
                    outcome.up_by_channel[ch] = outcome.up_by_channel.get(ch, 0) + n
                reason = reply_problem(result, plan.upload)
                if reason is None:
                    if result.keep:
                        outcome.kept[result.client_id] = result.keep
                    outcome.updates.append(replace(result, keep={}))
                    continue
                result = ClientFailure(client_id=result.client_id, reason=reason)
                outcome.rejected.append(result)
            log.warning("client %d failed: %s", result.client_id, result.reason)
            outcome.failures.append(result)
        return outcome

    def _kept(self, client_id: int) -> Channels:
        """What a client reads of its kept state (the codec's residual is not)."""
        return without_residual(self.store.get(client_id))

    def _aggregate(
        self, server_round: int, state: ServerState, outcome: RoundOutcome
    ) -> Aggregate | None:
        """The strategy's aggregate, or None with too few usable replies."""
        if len(outcome.updates) < self.min_clients:
            return None
        return self.strategy.aggregate_train(
            server_round, state.global_tensors, state.strategy_state, outcome.updates
        )

    def _evaluate(
        self, server_round: int, aggregate: Aggregate, trained: Set[int]
    ) -> EvalMetrics | None:
        """The round's evaluations; never-trained clients unscored if planned so."""
        plan = self.strategy.configure_evaluate(server_round)
        if not plan.any:
            return None
        global_tensors = aggregate.global_tensors
        global_result, extra = None, {}
        if plan.global_model:
            global_result = self.backend.evaluate(global_tensors, self.eval_batch_size)
            extra = {
                name: self.backend.evaluate(tensors, self.eval_batch_size)
                for name, tensors in self.strategy.extra_models(aggregate.state).items()
            }
        clients = plan.personal_clients
        if plan.trained_only:
            clients = tuple(c for c in clients if c in trained)
        personal = self._evaluate_clients(clients, global_tensors)
        untrained = len(plan.personal_clients) - len(clients)
        return self.strategy.aggregate_evaluate(
            server_round, global_result, personal, untrained, extra
        )

    def _evaluate_clients(
        self, clients: Sequence[int], global_tensors: Tensors
    ) -> list[ClientEval]:
        if not clients:
            return []
        personal: list[ClientEval] = []
        for result in self.backend.evaluate_clients(
            clients, global_tensors, self._kept, self.eval_batch_size
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


def _client_rows(
    server_round: int,
    outcome: RoundOutcome,
    strategy_metrics: Mapping[int, Mapping[str, float]],
) -> list[dict[str, Any]]:
    """clients.jsonl rows: each client's result, diagnostics, or failure."""
    rows: list[dict[str, Any]] = []
    for u in outcome.updates:
        rows.append(
            {
                "round": server_round,
                "client": u.client_id,
                "status": "ok",
                "num_examples": u.num_examples,
                "steps": u.steps,
                "train_loss": u.train_loss,
                "train_seconds": u.train_seconds,
                "setup_seconds": u.setup_seconds,
                **dict(u.metrics),
                **dict(strategy_metrics.get(u.client_id, {})),
            }
        )
    rejected = {id(f) for f in outcome.rejected}
    for f in outcome.failures:
        status = "rejected" if id(f) in rejected else "failed"
        rows.append(
            {
                "round": server_round,
                "client": f.client_id,
                "status": status,
                "reason": f.reason,
            }
        )
    return sorted(rows, key=lambda row: row["client"])
