"""FedProx (Li et al., 2020): FedAvg with a proximal term in every local loss.

Each client minimizes its loss plus ``mu/2 * ||w - w_g||^2`` summed over its
travelling trainable tensors (every FedPara factor on its own), where ``w_g``
is the global model it received this round; the pull towards ``w_g`` bounds
client drift on heterogeneous data. The server averages exactly as FedAvg does
(:func:`~fedsim.strategy.fedavg.fedavg_aggregate`), so only the client half
differs. ``mu`` is ``client.prox_mu``; with ``mu == 0`` the client half adds
nothing to the autograd graph and a run is bit-identical to FedAvg.

Channels: ``"model"`` only, as FedAvg (same bytes). Kept state: none.

Example
-------
>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([3.0]))
>>> algo = FedProxClient(mu=0.5)
>>> algo.begin({"w": w}, payload={"model": {"w": w.detach()}}, kept={})
>>> with torch.no_grad():
...     _ = w.fill_(1.0)  # a local step moved w from 3 to 1
>>> algo.loss({"w": w}, torch.tensor(0.0)).item()  # 0.5 / 2 * (1 - 3)**2
1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from fedsim.algorithm import ClientAlgorithm
from fedsim.strategy.fedavg import FedAvg

if TYPE_CHECKING:
    from fedsim.algorithm import Channels, Params


class FedProxClient(ClientAlgorithm):
    """FedProx's client half: ``loss + mu/2 * sum ||w - w_g||^2``.

    Parameters
    ----------
    mu
        The proximal weight (``client.prox_mu``), >= 0.
    """

    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ValueError(f"FedProx mu must be >= 0 (client.prox_mu), got {mu}")
        self.mu = mu
        self._global: dict[str, Tensor] = {}

    def begin(self, params: Params, payload: Channels, kept: Channels) -> None:
        """Snapshot the global values of the travelling parameters (on their device)."""
        # Assigned, never mutated: the object is a shallow copy per client.
        self._global = (
            {name: p.detach().clone() for name, p in params.items()} if self.mu else {}
        )

    def loss(self, params: Params, loss: Tensor) -> Tensor:
        """Add the proximal term; ``mu == 0`` returns ``loss`` itself (no new node)."""
        if not self.mu or not self._global:
            return loss
        prox = sum(
            ((params[name] - w_g).square().sum() for name, w_g in self._global.items()),
            loss.new_zeros(()),
        )
        return loss + (self.mu / 2) * prox


class FedProx(FedAvg):
    """FedAvg's server with :class:`FedProxClient` on every client."""

    name = "fedprox"

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """The proximal client half, ``mu = client.prox_mu``."""
        return FedProxClient(mu=self.settings.client.prox_mu)
