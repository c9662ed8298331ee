"""The strategy protocol: configure the client round, aggregate the replies.

A strategy makes the decisions; the driver owns the loop and the backend runs the
clients. Neither knows how the other works.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

from torch import Tensor

from fedsim.config import ClientConfig
from fedsim.messages import ClientUpdate


class Strategy(ABC):
    """Configure each round's client training and aggregate its updates."""

    name: str

    def client_lr(self, server_round: int, client: ClientConfig) -> float:
        """Learning rate of ``server_round`` (0-based): ``lr * lr_decay**round``."""
        return client.lr * client.lr_decay**server_round

    @abstractmethod
    def aggregate_train(
        self,
        global_tensors: Mapping[str, Tensor],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, Tensor]:
        """Return the next global tensors from the round's updates.

        ``updates`` arrive in sorted client order, one at a time, so an
        implementation can keep a running sum instead of every update.
        """
