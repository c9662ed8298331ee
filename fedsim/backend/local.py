"""In-process backend: the same round loop without Ray, for tests and debugging.

Example
-------
>>> from fedsim.config import load_config
>>> from fedsim.data import PartitionSpec, load_dataset, make_partition
>>> from fedsim.model import build_backbone, worker_spec
>>> from fedsim.params import StateLayout
>>> cfg = load_config(None, ["data.num_clients=3", "server.clients_per_round=1"])
>>> data = load_dataset("digits", None)
>>> part = make_partition(data.y_train, PartitionSpec("iid", 3), seed=0)
>>> layout = StateLayout.of(build_backbone(cfg, 10, (1, 8, 8)))
>>> with LocalBackend(worker_spec(cfg)).attach(data, part, layout) as backend:
...     backend.num_workers
1
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fedsim.backend.base import (
    Backend,
    ClientResult,
    EvalOutcome,
    KeptStates,
    failure,
    read_kept,
)
from fedsim.client import ClientRunner
from fedsim.cohort import CohortTrainer
from fedsim.data import FederatedData, Partition
from fedsim.messages import ClientEval, ClientFailure, ClientTask, EvalResult
from fedsim.model import WorkerSpec
from fedsim.params import StateLayout


class LocalBackend(Backend):
    """One :class:`ClientRunner` in this process, clients run sequentially.

    With ``resources.clients_per_actor`` K > 1 they run K at a time, as one
    vectorized step (:class:`~fedsim.cohort.CohortTrainer`).
    """

    def __init__(self, worker: WorkerSpec) -> None:
        self.worker = worker
        self.num_workers = 1
        self._runner: ClientRunner | None = None
        self._together: CohortTrainer | None = None

    def attach(
        self, data: FederatedData, partition: Partition, layout: StateLayout
    ) -> LocalBackend:
        """Build the runner in this process."""
        self._runner = ClientRunner(self.worker, data, partition, layout)
        slots = self.worker.resources.clients_per_actor
        if slots > 1:
            self._together = CohortTrainer(self._runner, slots)
        return self

    @property
    def runner(self) -> ClientRunner:
        """The in-process runner (after :meth:`attach`)."""
        if self._runner is None:
            raise RuntimeError("call attach(data, partition, layout) first")
        return self._runner

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Mapping[str, Any]],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        """Train each task in turn; an exception becomes a ClientFailure."""
        if self._together is not None:
            yield from self._train_together(tasks, payload, kept)
            return
        for task in tasks:
            state = read_kept(kept, task.client_id)
            if isinstance(state, ClientFailure):
                yield state
                continue
            try:
                yield self.runner.train(task, payload, state)
            except Exception as exc:  # a failed client is data, not a crash
                yield failure(task.client_id, exc)

    def _train_together(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Mapping[str, Any]],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        assert self._together is not None
        states = {t.client_id: read_kept(kept, t.client_id) for t in tasks}
        jobs = [
            (t, state)
            for t in tasks
            if not isinstance(state := states[t.client_id], ClientFailure)
        ]
        try:
            replies = self._together.train_in_order(jobs, payload)
        except Exception as exc:  # every client of the call fails, not the run
            replies = [failure(task.client_id, exc) for task, _ in jobs]
        done = {r.client_id: r for r in replies}
        for task in tasks:
            state = states[task.client_id]
            yield state if isinstance(state, ClientFailure) else done[task.client_id]

    def evaluate(self, glob: Mapping[str, Any], batch_size: int) -> EvalResult:
        """Evaluate in this process."""
        return self.runner.evaluate(glob, batch_size)

    def evaluate_clients(
        self,
        clients: Sequence[int],
        glob: Mapping[str, Any],
        kept: KeptStates,
        batch_size: int,
    ) -> Iterator[EvalOutcome]:
        """Evaluate each client's own model in turn (K at a time with K > 1)."""
        if self._together is not None:
            states = {c: read_kept(kept, c) for c in clients}
            jobs = [
                (c, s) for c in clients if not isinstance(s := states[c], ClientFailure)
            ]
            try:
                scored = self._together.evaluate_clients(jobs, glob, batch_size)
            except Exception as exc:  # every client of the call fails
                scored = [failure(c, exc) for c, _ in jobs]
            done = dict(zip([c for c, _ in jobs], scored, strict=True))
            for client_id in clients:
                state, result = states[client_id], done.get(client_id)
                if isinstance(state, ClientFailure):
                    yield state
                elif isinstance(result, EvalResult):
                    yield ClientEval(client_id=client_id, result=result)
                else:
                    assert result is not None
                    yield result
            return
        for client_id in clients:
            state = read_kept(kept, client_id)
            if isinstance(state, ClientFailure):
                yield state
                continue
            try:
                result = self.runner.evaluate_client(client_id, glob, state, batch_size)
                yield ClientEval(client_id=client_id, result=result)
            except Exception as exc:
                yield failure(client_id, exc)

    def shutdown(self) -> None:
        """Nothing to release."""
