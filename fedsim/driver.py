"""The round loop: sample -> configure -> execute -> aggregate -> evaluate -> log.

The driver owns the loop; the strategy makes the decisions and the backend runs
the clients. Server state is a frozen value replaced every round, so a
checkpoint is just that value, and a resumed run replays the same cohorts
because each cohort is derived from ``(seed, round)`` alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.backend.base import Backend, ClientResult
from fedsim.comm import Ledger, RoundTraffic
from fedsim.config import Config
from fedsim.messages import (
    ClientFailure,
    ClientTask,
    ClientUpdate,
    EvalResult,
    RoundMetrics,
)
from fedsim.params import StateLayout, Tensors, is_finite, payload_nbytes
from fedsim.state import ClientStateStore
from fedsim.strategy import AggregationError, Strategy
from fedsim.tracking import Tracker

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


@dataclass(frozen=True)
class ServerState:
    """Everything needed to continue a run: replaced, never edited, each round."""

    round: int
    global_tensors: Tensors
    ledger: Ledger = field(default_factory=Ledger)
    best_accuracy: float = 0.0
    last_eval: EvalResult | None = None


@dataclass
class RoundOutcome:
    """What one round's updates left behind, gathered while aggregating."""

    failures: list[ClientFailure] = field(default_factory=list)
    up: dict[int, int] = field(default_factory=dict)
    losses: list[tuple[float, int]] = field(default_factory=list)

    def train_loss(self) -> float:
        """Example-weighted mean of the clients' training losses."""
        total = sum(n for _, n in self.losses)
        return (
            sum(loss * n for loss, n in self.losses) / total if total else float("nan")
        )


class Driver:
    """Runs rounds until ``cfg.rounds``, logging and checkpointing as it goes."""

    def __init__(
        self,
        cfg: Config,
        backend: Backend,
        strategy: Strategy,
        layout: StateLayout,
        tracker: Tracker,
        store: ClientStateStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.strategy = strategy
        self.layout = layout
        self.tracker = tracker
        self.store = store

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundMetrics]:
        """One round from ``state``: returns the next state and its metrics."""
        t0, started_at = time.perf_counter(), time.time()
        cfg, r = self.cfg, state.round
        # --- sample and configure -----------------------------------------
        cohort = sample_cohort(
            cfg.seed, r, cfg.data.num_clients, cfg.server.clients_per_round
        )
        lr = self.strategy.client_lr(r, cfg.client)
        tasks = [
            ClientTask(
                c,
                r,
                client_seed(cfg.seed, r, c),
                lr,
                cfg.client.epochs,
                cfg.client.batch_size,
            )
            for c in cohort
        ]
        payload = state.global_tensors
        down = dict.fromkeys(cohort, payload_nbytes(payload))
        # --- execute and aggregate (a running sum over sorted clients) -----
        outcome = RoundOutcome()
        results = self.backend.train(tasks, payload, self._local_state)
        updates = self._accepted(results, outcome)
        try:
            new_global = self.strategy.aggregate_train(payload, updates)
        except AggregationError:
            if outcome.up:  # some updates were accepted: a real error
                raise
            log.warning("round %d: every client failed; global model unchanged", r)
            new_global = dict(payload)
        # --- evaluate -------------------------------------------------------
        evaluation = state.last_eval
        if (r + 1) % cfg.server.eval_every == 0 or r + 1 == cfg.rounds:
            evaluation = self.backend.evaluate(new_global)
        traffic = RoundTraffic(r, down, outcome.up)
        ledger = state.ledger.record(traffic)
        acc = evaluation.accuracy if evaluation else float("nan")
        metrics = RoundMetrics(
            round=r,
            accuracy=acc,
            loss=evaluation.loss if evaluation else float("nan"),
            train_loss=outcome.train_loss(),
            bytes_up=sum(outcome.up.values()),
            bytes_down=sum(down.values()),
            cumulative_bytes=ledger.total_bytes,
            num_clients=len(cohort) - len(outcome.failures),
            num_failed=len(outcome.failures),
            lr=lr,
            round_seconds=time.perf_counter() - t0,
            started_at=started_at,
        )
        self.tracker.log_round(metrics, traffic)
        best = max(state.best_accuracy, acc) if evaluation else state.best_accuracy
        return (
            ServerState(r + 1, new_global, ledger, best, evaluation),
            metrics,
        )

    def _local_state(self, client_id: int) -> Tensors | None:
        return self.store.get(client_id) if self.store is not None else None

    def _accepted(
        self, results: Iterable[ClientResult], outcome: RoundOutcome
    ) -> Iterator[ClientUpdate]:
        """Split replies into usable updates and recorded failures."""
        for result in results:
            if isinstance(result, ClientFailure):
                log.warning("client %d failed: %s", result.client_id, result.reason)
                outcome.failures.append(result)
                continue
            reason = self._reject(result)
            if reason:
                log.warning("client %d: %s", result.client_id, reason)
                outcome.failures.append(ClientFailure(result.client_id, reason))
                continue
            # Measured on what arrived, not on what the client claims.
            outcome.up[result.client_id] = payload_nbytes(result.tensors)
            outcome.losses.append((result.train_loss, result.num_examples))
            if self.store is not None and result.local_state:
                self.store.put(result.client_id, result.local_state)
            yield result

    def _reject(self, update: ClientUpdate) -> str | None:
        """Why an update cannot be aggregated, or None when it can."""
        if set(update.tensors) != set(self.layout.global_names):
            return "update tensors do not match the global model"
        if update.num_examples <= 0:
            return "update trained on no examples"
        if not is_finite(update.tensors):
            return "non-finite update"
        return None

    def maybe_checkpoint(self, state: ServerState) -> None:
        """Save ``state`` every ``log.checkpoint_every`` rounds and at the end."""
        every = self.cfg.log.checkpoint_every
        if every and (state.round % every == 0 or state.round == self.cfg.rounds):
            save_checkpoint(self.tracker.run_dir, state)


def save_checkpoint(run_dir: Path, state: ServerState) -> Path:
    """Write ``checkpoints/last.pt`` atomically and return its path."""
    path = run_dir / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"server_state": state}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> ServerState:
    """Read the server state saved by :func:`save_checkpoint`."""
    blob: dict[str, Any] = torch.load(
        run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False
    )
    state: ServerState = blob["server_state"]
    return replace(state)
