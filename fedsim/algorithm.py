"""The client half of a federated algorithm, as functions of an explicit state.

A :class:`ClientAlgorithm` is a frozen value (FedProx's ``mu``, FedDyn's
``alpha``); what a client's round needs beyond it is its *state*, which
``begin`` returns and every other hook takes (FedJAX's ``client_init`` /
``client_step`` / ``client_final`` shape):

``begin(params, payload, kept) -> state``
    after the round's payload and the client's kept state are loaded: what the
    algorithm needs (the global model, control variates), as namespaced tensors.
``loss(state, params, loss) -> loss``
    the loss to back-propagate for one batch (FedProx's proximal term, FedDyn's
    linear and quadratic terms).
``gradients(state, grads) -> grads``
    the gradients the optimizer should follow (SCAFFOLD's correction).
``end(state, params, steps, lr) -> ClientOutcome``
    what else to upload (channels beside ``"model"``), what to keep, and the
    client's diagnostics.

Nothing is mutated: a hook returns what it computes, so the same object serves
every client, and the hooks can run on explicit tensors (``torch.func``, a
captured CUDA graph). The state a step reads is named by :attr:`step_state`:
those namespaces live on the parameters' device; the rest (read by ``end``)
may stay on the CPU.

:func:`local_training` is the one loop that calls them (``ClientRunner.train``
and the strategy tests both run it), and :func:`hooked_step` the one order of
the hooks inside a step.

This base class is FedAvg's client half: it changes nothing. It imports no torch
at run time, so a task that carries it is cheap to build anywhere.

Example
-------
>>> import torch
>>> params = {"w": torch.nn.Parameter(torch.ones(2))}
>>> algo = ClientAlgorithm()
>>> state = algo.begin(params, payload={}, kept={})
>>> float(algo.loss(state, params, torch.tensor(1.5)))
1.5
>>> algo.end(state, params, steps=3, lr=0.1)
ClientOutcome(upload={}, keep={}, metrics={})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    from torch import Tensor, nn

    Params = Mapping[str, nn.Parameter]
    Channels = Mapping[str, Mapping[str, Tensor]]
    Grads = Mapping[str, Tensor]

AlgoState = dict[str, dict[str, "Tensor"]]
"""A client's algorithm state: namespaced tensors (``{"global": {...}}``)."""

Batch = TypeVar("Batch")


@dataclass(frozen=True, kw_only=True)
class ClientOutcome:
    """What a client's round produced beyond its model.

    Attributes
    ----------
    upload
        Channels sent back beside ``"model"`` (SCAFFOLD's ``"control"``).
    keep
        Kept-state namespaces (never travel).
    metrics
        The client's diagnostics of the round (numbers, by name).
    """

    upload: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    keep: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientAlgorithm:
    """No-op hooks (FedAvg); subclasses override what their algorithm needs."""

    step_state: ClassVar[tuple[str, ...]] = ()
    """Namespaces of the state that :meth:`loss` and :meth:`gradients` read."""

    def begin(self, params: Params, payload: Channels, kept: Channels) -> AlgoState:
        """The client's state, after the model is loaded, before training."""
        return {}

    def loss(self, state: AlgoState, params: Params, loss: Tensor) -> Tensor:
        """The loss to back-propagate for one batch."""
        return loss

    def gradients(self, state: AlgoState, grads: Grads) -> Grads:
        """The gradients the optimizer follows, from the back-propagated ones."""
        return grads

    def end(
        self, state: AlgoState, params: Params, steps: int, lr: float
    ) -> ClientOutcome:
        """Extra uploads, kept state and diagnostics after ``steps`` steps.

        Tensors returned must be detached CPU copies.
        """
        return ClientOutcome()


def hooked_step(
    algorithm: ClientAlgorithm,
    state: AlgoState,
    params: Params,
    loss: Tensor,
    backward: Callable[[Tensor], None],
) -> None:
    """After the forward pass: loss terms, backward, corrected gradients.

    The corrected gradients are written to ``p.grad`` for the optimizer step
    that follows.
    """
    backward(algorithm.loss(state, params, loss))
    if type(algorithm).gradients is ClientAlgorithm.gradients:
        return
    grads = {n: p.grad for n, p in params.items() if p.grad is not None}
    for name, grad in algorithm.gradients(state, grads).items():
        params[name].grad = grad


def local_training(
    algorithm: ClientAlgorithm,
    params: Params,
    payload: Channels,
    kept: Channels,
    *,
    start: Callable[[AlgoState], Iterable[Batch]],
    step: Callable[[Batch, AlgoState], None],
    lr: float,
) -> tuple[ClientOutcome, int]:
    """A client's round: begin, one ``step`` per batch, end; and the step count.

    ``start(state)`` returns the batches (it may also set up the steps, e.g.
    capture them, before seeding the client's random draws).
    """
    state = algorithm.begin(params, payload, kept)
    steps = 0
    for batch in start(state):
        step(batch, state)
        steps += 1
    return algorithm.end(state, params, steps, lr), steps
