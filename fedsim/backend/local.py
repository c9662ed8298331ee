"""In-process backend: the same round loop without Ray, for tests and debugging.

Example
-------
>>> from fedsim.config import load_config
>>> from fedsim.data import PartitionSpec, load_dataset, make_partition
>>> cfg = load_config(None, ["data.num_clients=3", "server.clients_per_round=1"])
>>> data = load_dataset("digits", None)
>>> part = make_partition(data.y_train, PartitionSpec("iid", 3), seed=0)
>>> with LocalBackend(cfg).attach(data, part) as backend:
...     backend.num_workers
1
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fedsim.backend.base import Backend, ClientResult, LocalStates
from fedsim.client import ClientRunner
from fedsim.config import Config
from fedsim.data import FederatedData, Partition
from fedsim.messages import ClientFailure, ClientTask, EvalResult


class LocalBackend(Backend):
    """One :class:`ClientRunner` in this process, clients run sequentially."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.num_workers = 1
        self._runner: ClientRunner | None = None

    def attach(self, data: FederatedData, partition: Partition) -> LocalBackend:
        """Build the runner in this process."""
        self._runner = ClientRunner(self.cfg, data, partition)
        return self

    @property
    def runner(self) -> ClientRunner:
        """The in-process runner (after :meth:`attach`)."""
        if self._runner is None:
            raise RuntimeError("call attach(data, partition) first")
        return self._runner

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Any],
        local_state: LocalStates,
    ) -> Iterator[ClientResult]:
        """Train each task in turn; an exception becomes a ClientFailure."""
        for task in tasks:
            try:
                yield self.runner.train(task, payload, local_state(task.client_id))
            except Exception as exc:  # a failed client is data, not a crash
                reason = "".join(traceback.format_exception_only(exc)).strip()
                yield ClientFailure(task.client_id, reason)

    def evaluate(self, payload: Mapping[str, Any]) -> EvalResult:
        """Evaluate in this process."""
        return self.runner.evaluate(payload, self.cfg.server.eval_batch_size)

    def shutdown(self) -> None:
        """Nothing to release."""
