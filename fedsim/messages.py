"""What travels between the driver and the clients, as small frozen dataclasses.

Example
-------
>>> task = ClientTask(client_id=3, round=0, seed=11, lr=0.1, epochs=1, batch_size=8)
>>> task.client_id
3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at run time, so Ray processes can start fast
    from torch import Tensor


@dataclass(frozen=True)
class ClientTask:
    """One client's work for one round (the global payload travels beside it)."""

    client_id: int
    round: int
    seed: int
    lr: float
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class ClientUpdate:
    """A client's reply: its trained global tensors, weight and measured bytes.

    Attributes
    ----------
    tensors
        The trained tensors that travel back, keyed by ``state_dict`` name.
    num_examples
        Training examples the client used (the FedAvg weight).
    bytes_up
        Measured upload size: numel x element size of ``tensors``.
    local_state
        Tensors that stay with the client (pFedPara's W2 factors); simulator
        bookkeeping, not communication.
    """

    client_id: int
    tensors: Mapping[str, Tensor]
    num_examples: int
    bytes_up: int
    train_loss: float
    train_seconds: float
    local_state: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientFailure:
    """A client that did not return a usable update, and why."""

    client_id: int
    reason: str


@dataclass(frozen=True)
class EvalResult:
    """Global-model evaluation on (a shard of) a test split, as exact sums.

    Sums rather than means, so that shards evaluated by different workers
    combine into the same accuracy whatever the number of shards.

    >>> EvalResult.merge([EvalResult(2.0, 3, 4), EvalResult(1.0, 1, 4)]).accuracy
    0.5
    """

    loss_sum: float
    correct: int
    num_examples: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy."""
        return self.loss_sum / self.num_examples if self.num_examples else float("nan")

    @property
    def accuracy(self) -> float:
        """Fraction of correct predictions."""
        return self.correct / self.num_examples if self.num_examples else 0.0

    @staticmethod
    def merge(parts: Sequence[EvalResult]) -> EvalResult:
        """Combine the results of disjoint shards."""
        return EvalResult(
            loss_sum=sum(p.loss_sum for p in parts),
            correct=sum(p.correct for p in parts),
            num_examples=sum(p.num_examples for p in parts),
        )


@dataclass(frozen=True)
class RoundMetrics:
    """The per-round record written to metrics.jsonl and TensorBoard."""

    round: int
    accuracy: float
    loss: float
    train_loss: float
    bytes_up: int
    bytes_down: int
    cumulative_bytes: int
    num_clients: int
    num_failed: int
    lr: float
    round_seconds: float
    started_at: float  # unix time at the start of the round

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)
