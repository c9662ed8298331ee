"""How clients run, behind one small interface.

The driver hands a backend the round's tasks (sorted by client id) and the global
payload; the backend yields one result per task, in the same order, whatever
order the workers finish in. A result is a :class:`ClientUpdate` or a
:class:`ClientFailure`, never an exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fedsim.data import FederatedData, Partition
from fedsim.messages import ClientFailure, ClientTask, ClientUpdate, EvalResult

if TYPE_CHECKING:  # torch-free at run time: the driver actor spawns clients first
    from fedsim.params import Tensors

ClientResult = ClientUpdate | ClientFailure
LocalStates = Callable[[int], "Tensors | None"]


class Backend(ABC):
    """Runs client tasks and global evaluation on some workers."""

    num_workers: int

    @abstractmethod
    def attach(self, data: FederatedData, partition: Partition) -> Backend:
        """Give the workers the dataset and the partition; wait until they are ready.

        Workers may start (and import torch and Lightning) before the data is
        loaded, so that both happen at once.
        """

    @abstractmethod
    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, object],
        local_state: LocalStates,
    ) -> Iterator[ClientResult]:
        """Yield one result per task, in the order of ``tasks``.

        ``local_state(client_id)`` returns the client's persistent local tensors
        (pFedPara's W2), or None on its first round.
        """

    @abstractmethod
    def evaluate(self, payload: Mapping[str, object]) -> EvalResult:
        """Evaluate the global tensors on the test split."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
