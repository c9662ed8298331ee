"""A boring backend and a driver around it: the round loop without training.

``BoringBackend`` answers every task at once, without torch training: each
client "trains" by adding ``0.1 * (client id + 1)`` to every floating tensor it
received, runs the client half's ``begin`` and ``end`` (so SCAFFOLD, FedNova and
FedDyn reply with what they really upload and keep), and keeps a counter of its
participations. ``rewrite`` can turn any reply into something else. Driver tests
built on it run in milliseconds; the slow tests keep the real paths end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedsim.backend.base import Backend, ClientResult, KeptStates, read_kept
from fedsim.checkpoint import ServerState
from fedsim.compress import Wire
from fedsim.config import load_config
from fedsim.data import FederatedData, Partition
from fedsim.driver import Cohort, Driver
from fedsim.messages import MODEL, ClientEval, ClientTask, ClientUpdate, EvalResult
from fedsim.state import ClientStateStore
from fedsim.strategy import build_strategy, strategy_settings
from fedsim.tracking import Tracker

Rewrite = Callable[[ClientTask, ClientResult], ClientResult]

COUNT = "boring"
"""Kept namespace of the boring client's participation counter."""


class BoringBackend(Backend):
    """Clients that add a known offset instead of training."""

    def __init__(self, rewrite: Rewrite | None = None) -> None:
        self.num_workers = 1
        self.rewrite = rewrite
        self.tasks: list[ClientTask] = []  # every task it was given, in order

    def attach(self, data: FederatedData, partition: Partition, layout: Any) -> Backend:
        return self

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Mapping[str, Any]],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        for task in tasks:
            self.tasks.append(task)
            state = read_kept(kept, task.client_id)
            assert isinstance(state, Mapping)
            result = self._train(task, {**payload, **task.payload}, state)
            yield self.rewrite(task, result) if self.rewrite else result

    def _train(
        self, task: ClientTask, payload: Mapping[str, Any], kept: Mapping[str, Any]
    ) -> ClientUpdate:
        offset = 0.1 * (task.client_id + 1)
        model = payload.get(MODEL, {})
        params = {
            name: torch.nn.Parameter(t.clone())
            for name, t in model.items()
            if t.is_floating_point()
        }
        algo = task.algorithm
        state = algo.begin(params, payload, kept)
        with torch.no_grad():
            for p in params.values():
                p.add_(offset)
        steps = task.client_id + 1  # clients do different amounts of work
        outcome = algo.end(state, params, steps, task.hparams.lr)
        seen = kept.get(COUNT, {}).get("n", torch.tensor(0))
        trained = {n: p.detach().clone() for n, p in params.items()}
        upload = {MODEL: {**model, **trained}}  # counters travel as they came
        return ClientUpdate(
            client_id=task.client_id,
            upload={**upload, **outcome.upload} if MODEL in payload else outcome.upload,
            keep={COUNT: {"n": seen + 1}, **outcome.keep},
            num_examples=10 * (task.client_id + 1),
            train_loss=float(task.client_id),
            train_seconds=0.0,
            steps=steps,
            metrics=outcome.metrics,
        )

    def evaluate(self, glob: Mapping[str, Any], batch_size: int) -> EvalResult:
        return EvalResult(1.0, 1, 2)

    def evaluate_clients(
        self,
        clients: Sequence[int],
        glob: Mapping[str, Any],
        kept: KeptStates,
        batch_size: int,
    ) -> Iterator[ClientEval]:
        for cid in clients:
            yield ClientEval(client_id=cid, result=EvalResult(1.0, 1, 1))

    def shutdown(self) -> None:
        pass


def boring_driver(
    tmp_path: Path, backend: BoringBackend, *overrides: str
) -> tuple[Driver, ServerState]:
    """A Driver over ``backend`` and a 3-tensor "model", and its first state."""
    cfg = load_config(
        None,
        [
            "data.num_clients=6",
            "server.clients_per_round=3",
            "log.tensorboard=false",
            f"log.root={tmp_path}",
            *overrides,
        ],
    )
    strategy = build_strategy(strategy_settings(cfg))
    glob = {"w": torch.zeros(2), "b": torch.ones(3), "n": torch.tensor(5)}
    driver = Driver(
        cohort=Cohort(seed=cfg.seed, num_clients=6, size=3),
        backend=backend,
        strategy=strategy,
        tracker=Tracker(
            tmp_path / "run",
            cfg.log,
            config=cfg.to_dict(),
            strategy=cfg.server.strategy,
        ),
        store=ClientStateStore(tmp_path / "run" / "client_state"),
        eval_batch_size=8,
        min_clients=cfg.server.min_clients,
        max_round_retries=cfg.server.max_round_retries,
        wire=Wire(cfg.comm, seed=cfg.seed),
    )
    return driver, ServerState(
        round=0, global_tensors=glob, strategy_state=strategy.init(glob)
    )
