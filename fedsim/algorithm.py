"""The client half of a federated algorithm: four small plain-torch hooks.

The Lightning training step stays one loop (:meth:`fedsim.client.ClientRunner.train`);
an algorithm changes it only through these hooks, called on a fresh copy of the
object for every client:

``begin``
    after the round's payload and the client's kept state are loaded: snapshot
    what the algorithm needs (the global model, control variates).
``loss``
    add terms to the batch loss (FedProx's proximal term, FedDyn's linear and
    quadratic terms).
``after_backward``
    correct the gradients before the optimizer step (SCAFFOLD).
``end``
    say what else to upload (channels beside ``"model"``) and what to keep.

``params`` is always the model's *travelling* trainable parameters, keyed by
``state_dict`` name: every hook works factor by factor on what travels.

This base class is FedAvg's client half: it changes nothing. It imports no torch
at run time, so a task that carries it is cheap to build anywhere.

Example
-------
>>> import torch
>>> params = {"w": torch.nn.Parameter(torch.ones(2))}
>>> algo = ClientAlgorithm()
>>> algo.begin(params, payload={}, kept={})
>>> float(algo.loss(params, torch.tensor(1.5)))
1.5
>>> algo.end(params, steps=3, lr=0.1)
({}, {})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

    Params = Mapping[str, nn.Parameter]
    Channels = Mapping[str, Mapping[str, Tensor]]


class ClientAlgorithm:
    """No-op hooks (FedAvg); subclasses override what their algorithm needs."""

    def begin(self, params: Params, payload: Channels, kept: Channels) -> None:
        """Called once per client, after the model is loaded, before training."""

    def loss(self, params: Params, loss: Tensor) -> Tensor:
        """The loss to back-propagate for one batch."""
        return loss

    def after_backward(self, params: Params) -> None:
        """Adjust ``p.grad`` of the travelling parameters before the step."""

    def end(
        self, params: Params, steps: int, lr: float
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, Tensor]]]:
        """Extra upload channels and kept-state namespaces, after ``steps`` steps.

        Tensors returned must be detached CPU copies.
        """
        return {}, {}
