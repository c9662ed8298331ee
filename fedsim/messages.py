"""What travels between the driver and the clients, as small frozen dataclasses.

Every message is keyword-only. What travels is named by *channel*: ``"model"``
(the tensors of the model that the server averages) and, for some algorithms,
more (SCAFFOLD's ``"control"``). What stays on a client is its *kept* state,
namespaced the same way (``"local"``: pFedPara's W2 or FedPer's head;
``"scaffold"``: c_i; ``"feddyn"``: the gradient term).

Example
-------
>>> hp = ClientHParams(lr=0.1, epochs=1, batch_size=8)
>>> task = ClientTask(client_id=3, round=0, seed=11, hparams=hp)
>>> task.client_id, task.hparams.momentum
(3, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedsim.algorithm import ClientAlgorithm

if TYPE_CHECKING:  # torch-free at run time, so Ray processes can start fast
    from torch import Tensor

Channels = Mapping[str, Mapping[str, "Tensor"]]
"""Named groups of named tensors: ``{"model": {...}, "control": {...}}``."""

MODEL = "model"
"""The channel of the model's travelling tensors (every factor, bias, norm)."""

LOCAL = "local"
"""The kept-state namespace of the model's local tensors (pFedPara W2, FedPer)."""


@dataclass(frozen=True, kw_only=True)
class ClientHParams:
    """A client's local-training settings for one round (travel with the task)."""

    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ClientTask:
    """One client's work for one round (the round's payload travels beside it)."""

    client_id: int
    round: int
    seed: int
    hparams: ClientHParams
    algorithm: ClientAlgorithm = field(default_factory=ClientAlgorithm)
    # Channels for this client alone, beside the round's shared payload.
    payload: Channels = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """A client's reply: what travels back, what it keeps, and its weight.

    Attributes
    ----------
    upload
        The channels sent back, each keyed by tensor name; the driver measures
        their bytes on arrival.
    keep
        Per-client state that never travels (namespaced, see module docstring).
    num_examples
        Training examples the client used (the FedAvg weight).
    train_seconds
        Wall seconds of the client's ``train`` call on its worker (clients
        trained together share their worker's seconds by steps).
    steps
        Optimizer steps the client took.
    setup_seconds
        Of ``train_seconds``, the time spent compiling or capturing the
        training step (the first client of a worker, or a changed shape).
    metrics
        The client half's diagnostics (FedNova's step count, ...).
    """

    client_id: int
    upload: Channels
    num_examples: int
    train_loss: float
    train_seconds: float
    steps: int = 0
    setup_seconds: float = 0.0
    keep: Channels = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ClientFailure:
    """A client that did not return a usable update, and why."""

    client_id: int
    reason: str


@dataclass(frozen=True)
class EvalResult:
    """Evaluation on (a shard of) a test split, as exact sums.

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


@dataclass(frozen=True, kw_only=True)
class ClientEval:
    """One client's own model on its own test split (personalized evaluation)."""

    client_id: int
    result: EvalResult
