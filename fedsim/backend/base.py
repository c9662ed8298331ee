"""How clients run, behind one small interface.

The driver hands a backend the round's tasks (sorted by client id) and the
round's payload (channels that travel down, the same for every client); the
backend yields one result per task, in the same order, whatever order the
workers finish in. A result is a :class:`ClientUpdate` or a
:class:`ClientFailure`, never an exception.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedsim.data import DataRequest, FederatedData, Partition
from fedsim.messages import (
    Channels,
    ClientEval,
    ClientFailure,
    ClientTask,
    ClientUpdate,
    EvalResult,
)

if TYPE_CHECKING:  # torch-free at run time: the driver actor spawns clients first
    from fedsim.params import StateLayout

ClientResult = ClientUpdate | ClientFailure
EvalOutcome = ClientEval | ClientFailure
KeptStates = Callable[[int], Channels]
"""``kept(client_id)``: the client's kept state (empty before its first round)."""


def failure(client_id: int, exc: BaseException) -> ClientFailure:
    """A client's exception as a recorded failure (the one-line reason)."""
    reason = "".join(traceback.format_exception_only(exc)).strip()
    return ClientFailure(client_id=client_id, reason=reason)


def read_kept(kept: KeptStates, client_id: int) -> Channels | ClientFailure:
    """The client's kept state, or its failure when the state cannot be read."""
    try:
        return kept(client_id)
    except Exception as exc:  # a corrupt state file fails that client only
        return failure(client_id, exc)


class Backend(ABC):
    """Runs client tasks and evaluations on some workers."""

    num_workers: int

    def load(self, request: DataRequest) -> tuple[FederatedData, Partition]:
        """Load the data where the workers will read it; return it as seen here.

        In-process: call ``request``. A backend with shared storage (Ray's
        object store) may load it there, and :meth:`attach` of what this
        returns then shares that copy instead of making another.
        """
        return request()

    @abstractmethod
    def attach(
        self, data: FederatedData, partition: Partition, layout: StateLayout
    ) -> Backend:
        """Give the workers the dataset, the partition and the model's layout.

        Workers may start (and import torch and Lightning) before the data is
        loaded, so that both happen at once; this waits until they are ready.
        """

    @abstractmethod
    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Mapping[str, Any]],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        """Yield one result per task, in the order of ``tasks``."""

    @abstractmethod
    def evaluate(self, glob: Mapping[str, Any], batch_size: int) -> EvalResult:
        """Evaluate the global model (travelling tensors) on the global test split."""

    @abstractmethod
    def evaluate_clients(
        self,
        clients: Sequence[int],
        glob: Mapping[str, Any],
        kept: KeptStates,
        batch_size: int,
    ) -> Iterator[EvalOutcome]:
        """Yield each client's own model's result on its own test split, in order."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
