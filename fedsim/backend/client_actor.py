"""The Ray actor that trains and evaluates virtual clients, one after another.

It imports torch and Lightning when it starts, builds its model and its view of
the dataset once (:meth:`ClientActor.setup`), then runs whatever the pool sends.
A client's exception comes back as its :class:`~fedsim.messages.ClientFailure`;
only the actor's own death is a Ray error, which the pool handles.

Start-up: Lightning imports torchmetrics whole, and torchmetrics imports every
optional integration it finds installed: scipy.signal, torchvision's model zoo
and matplotlib, half of an actor's import time after torch's own
(``python -X importtime``), for a metric (multiclass accuracy) that needs none
of them. :func:`lean_import` imports torchmetrics with those three hidden, then
hands them back to the process. ``FEDSIM_LEAN_IMPORTS=0`` in the environment of
the Ray workers turns this off (``benchmarks/startup.py`` compares both).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import ray

from fedsim.backend.base import ClientResult, EvalOutcome, failure
from fedsim.data import FederatedData, Partition
from fedsim.messages import MODEL, Channels, ClientEval, ClientTask, EvalResult

if TYPE_CHECKING:
    from fedsim.client import ClientRunner
    from fedsim.cohort import CohortTrainer
    from fedsim.model import WorkerSpec
    from fedsim.params import StateLayout

log = logging.getLogger(__name__)

# Installed, but of no use to a client's torchmetrics (accuracy only).
OPTIONAL_INTEGRATIONS = ("scipy", "torchvision", "matplotlib")


def lean_import(hidden: tuple[str, ...] = OPTIONAL_INTEGRATIONS) -> None:
    """Import torchmetrics without its optional integrations ``hidden``.

    torchmetrics asks lightning_utilities whether each integration is
    installed (``package_available``, ``RequirementCache``) and imports those
    that are. While it imports, ``hidden`` read as absent: ``sys.modules``
    holds None for them (``find_spec`` says "not found") and their versions
    are not found. Afterwards they are importable again and the availability
    caches are cleared; torchmetrics alone keeps them off (its image, audio
    and plotting extras then say the package is missing, if ever called).
    Should a torchmetrics or lightning_utilities release change this, the
    plain import runs instead. A no-op once torchmetrics is imported.
    """
    if "torchmetrics" in sys.modules or os.environ.get("FEDSIM_LEAN_IMPORTS") == "0":
        return
    try:
        with _absent(hidden):
            import torchmetrics  # noqa: F401
    except Exception as exc:  # a changed internal: pay the full import instead
        log.debug("lean torchmetrics import failed (%s); importing it whole", exc)
        for name in [m for m in sys.modules if m.split(".")[0] == "torchmetrics"]:
            del sys.modules[name]


@contextlib.contextmanager
def _absent(names: tuple[str, ...]) -> Iterator[None]:
    from importlib.metadata import PackageNotFoundError

    import lightning_utilities.core.imports as lu

    namespace = vars(lu)  # RequirementCache reads versions through its _version
    real_version = namespace["_version"]
    hidden = [n for n in names if n not in sys.modules]

    def version(name: str) -> str:
        if name in hidden:
            raise PackageNotFoundError(name)
        return str(real_version(name))

    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    namespace["_version"] = version
    try:
        yield
    finally:
        namespace["_version"] = real_version
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        lu.package_available.cache_clear()
        lu.module_available.cache_clear()


@ray.remote(max_restarts=0)
class ClientActor:
    """A Ray actor wrapping one :class:`fedsim.client.ClientRunner`."""

    def __init__(self, worker: WorkerSpec) -> None:
        # torch and Lightning load now, while the driver is still loading data.
        lean_import()
        import fedsim.client

        self._client_module = fedsim.client
        self.worker = worker
        self._runner: ClientRunner | None = None
        self._together: CohortTrainer | None = None
        self._payload_ref: Any = None
        self._payload: Mapping[str, Any] = {}

    def setup(
        self, data: FederatedData, partition: Partition, layout: StateLayout
    ) -> None:
        """Build the model and the dataset view once for this actor's lifetime."""
        self._runner = self._client_module.ClientRunner(
            self.worker, data, partition, layout
        )
        slots = self.worker.resources.clients_per_actor
        if slots > 1:
            from fedsim.cohort import CohortTrainer

            self._together = CohortTrainer(self._runner, slots)

    @property
    def runner(self) -> ClientRunner:
        """The runner built by :meth:`setup`."""
        if self._runner is None:
            raise RuntimeError("ClientActor.setup(data, partition) was not called")
        return self._runner

    def _resolve(self, boxed: list[Any]) -> Mapping[str, Any]:
        # The ref arrives boxed so Ray does not deserialize it for every task;
        # the actor fetches each round's payload once.
        ref = boxed[0]
        if ref != self._payload_ref:
            self._payload = ray.get(ref)
            self._payload_ref = ref
        return self._payload

    @ray.method(num_returns=2)  # type: ignore[misc]
    def train(
        self, task: ClientTask, boxed: list[Any], kept: Channels
    ) -> tuple[int, ClientResult]:
        """Train one client: ``(client id, result)``.

        The small first value tells the pool at once that the task ended (or
        that the actor died); the result waits in the object store for its turn.
        Exceptions come back as a ClientFailure.
        """
        try:
            return task.client_id, self.runner.train(task, self._resolve(boxed), kept)
        except Exception as exc:
            return task.client_id, failure(task.client_id, exc)

    def train_together(
        self, jobs: list[tuple[ClientTask, Channels]], boxed: list[Any]
    ) -> list[ClientResult]:
        """Train ``(task, kept state)`` pairs K at a time; replies in their order."""
        if self._together is None:
            raise RuntimeError("resources.clients_per_actor is 1: call train")
        payload = self._resolve(boxed)
        try:
            return list(self._together.train_in_order(jobs, payload))
        except Exception as exc:  # every client of the group fails, not the actor
            return [failure(task.client_id, exc) for task, _ in jobs]

    def evaluate(
        self, boxed: list[Any], shard: tuple[int, int], batch_size: int
    ) -> EvalResult:
        """Evaluate the global model on one shard of the test split."""
        glob = self._resolve(boxed).get(MODEL, {})
        return self.runner.evaluate(glob, batch_size, shard)

    def evaluate_clients(
        self, boxed: list[Any], clients: list[tuple[int, Channels]], batch_size: int
    ) -> list[EvalOutcome]:
        """Evaluate each ``(client, kept state)``'s own model on its own test split."""
        glob = self._resolve(boxed).get(MODEL, {})
        if self._together is not None:  # K at a time
            try:
                scored = self._together.evaluate_clients(clients, glob, batch_size)
            except Exception as exc:  # every client of the group fails
                return [failure(c, exc) for c, _ in clients]
            return [
                ClientEval(client_id=c, result=r) if isinstance(r, EvalResult) else r
                for (c, _), r in zip(clients, scored, strict=True)
            ]
        out: list[EvalOutcome] = []
        for client_id, kept in clients:
            try:
                result = self.runner.evaluate_client(client_id, glob, kept, batch_size)
                out.append(ClientEval(client_id=client_id, result=result))
            except Exception as exc:
                out.append(failure(client_id, exc))
        return out

    def touch_data(self, private_copy: bool = False) -> int:
        """Read every byte of the training inputs (for the memory benchmark).

        ``private_copy`` keeps a copy in this actor, the control case that
        the benchmark must be able to see.
        """
        x = self.runner.data.x_train
        if private_copy:
            self._copy = x.copy()
            x = self._copy
        return int(x.reshape(len(x), -1).sum(axis=1, dtype="int64").sum())

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: pid, node, GPU ids, CUDA_VISIBLE_DEVICES, device."""
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.runner.device),
        }
