"""The LightningModule that every client trains: loss, accuracy and optimizer only.

The backbone is any plain ``nn.Module`` from :mod:`lightning_modules.models`; this
module adds cross-entropy, torchmetrics accuracy and an SGD optimizer whose
learning rate the simulator sets each round.

Example
-------
>>> import torch
>>> from torch import nn
>>> module = Classifier(nn.Linear(4, 3), num_classes=3, lr=0.1)
>>> batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
>>> float(module.training_step(batch, 0).detach()) > 0
True
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


def weighted_cross_entropy(logits: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """``sum(weight * ce)``: a padded batch's loss (see ``training_step``)."""
    return (F.cross_entropy(logits, y, reduction="none") * weight).sum()


class Classifier(pl.LightningModule):
    """Cross-entropy classifier around a backbone.

    Parameters
    ----------
    model
        The backbone; maps a batch of inputs to logits of shape (B, num_classes).
    num_classes
        Number of classes.
    lr, momentum, weight_decay
        SGD settings (the paper uses plain SGD; ``lr`` is overwritten per round).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        # Test-split accuracy of the global model (the client's evaluation).
        # validate_args=False: the checks read values back to the host (a
        # device sync per batch); the labels come from a checked dataset.
        self.val_accuracy = MulticlassAccuracy(
            num_classes=num_classes, average="micro", validate_args=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return logits (B, num_classes)."""
        out: Tensor = self.model(x)
        return out

    def training_step(
        self,
        batch: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor],
        batch_idx: int,
    ) -> Tensor:
        """Mean cross-entropy of one batch, or its weighted sum.

        A batch ``(x, y, weight)`` gives ``sum(weight * ce)``: a padded batch
        whose real rows weigh ``1 / rows`` and whose filler rows weigh 0 has
        the loss (and gradients) of its real rows alone.
        """
        if len(batch) == 3:
            x, y, weight = batch
            return weighted_cross_entropy(self(x), y, weight)
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Summed cross-entropy of one batch; accumulates ``val_accuracy``.

        Sum rather than mean, so that a caller can divide by the example count
        of a whole split whose last batch is short.
        """
        x, y = batch
        logits = self(x).float()
        self.val_accuracy.update(logits, y)
        return F.cross_entropy(logits, y, reduction="sum")

    def configure_optimizers(self) -> Any:
        """Plain SGD, as in the paper's setup."""
        return torch.optim.SGD(
            self.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
