"""FedProx (Li et al., 2020): FedAvg with a proximal term in every local loss.

Each client minimizes its loss plus ``mu/2 * ||w - w_g||^2`` summed over its
travelling trainable tensors (every FedPara factor on its own), where ``w_g``
is the global model it received this round; the pull towards ``w_g`` bounds
client drift on heterogeneous data. The server averages exactly as FedAvg does,
so only the client half differs. ``mu`` is ``server.settings.mu``; with
``mu == 0`` the client half adds nothing to the autograd graph and a run is
bit-identical to FedAvg.

Channels: ``"model"`` only, as FedAvg (same bytes). Kept state: none.

Example
-------
>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([3.0]))
>>> algo = FedProxClient(mu=0.5)
>>> state = algo.begin({"w": w}, payload={"model": {"w": w.detach()}}, kept={})
>>> with torch.no_grad():
...     _ = w.fill_(1.0)  # a local step moved w from 3 to 1
>>> algo.loss(state, {"w": w}, torch.tensor(0.0)).item()  # 0.5 / 2 * (1 - 3)**2
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from fedsim.algorithm import AlgoState, ClientAlgorithm
from fedsim.strategy.fedavg import FedAvg

if TYPE_CHECKING:
    from fedsim.algorithm import Channels, Params

GLOBAL = "global"
"""State namespace: the global values of the travelling parameters."""


@dataclass(frozen=True)
class FedProxClient(ClientAlgorithm):
    """FedProx's client half: ``loss + mu/2 * sum ||w - w_g||^2``.

    Parameters
    ----------
    mu
        The proximal weight (``server.settings.mu``), >= 0.
    """

    mu: float
    step_state: ClassVar[tuple[str, ...]] = (GLOBAL,)

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ValueError(
                f"FedProx mu must be >= 0 (server.settings.mu), got {self.mu}"
            )

    def begin(self, params: Params, payload: Channels, kept: Channels) -> AlgoState:
        """The global values of the travelling parameters (on their device)."""
        if not self.mu:
            return {GLOBAL: {}}
        return {GLOBAL: {name: p.detach().clone() for name, p in params.items()}}

    def loss(self, state: AlgoState, params: Params, loss: Tensor) -> Tensor:
        """Add the proximal term; ``mu == 0`` returns ``loss`` itself (no new node)."""
        anchor = state[GLOBAL]
        if not self.mu or not anchor:
            return loss
        prox = sum(
            ((params[name] - w_g).square().sum() for name, w_g in anchor.items()),
            loss.new_zeros(()),
        )
        return loss + (self.mu / 2) * prox


class FedProx(FedAvg):
    """FedAvg's server with :class:`FedProxClient` on every client."""

    def client_algorithm(self, server_round: int) -> ClientAlgorithm:
        """The proximal client half, ``mu = server.settings.mu``."""
        return FedProxClient(mu=self.settings.options.mu)
