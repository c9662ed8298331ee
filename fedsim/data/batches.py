"""A client's training batches for one round, built on the device they train on.

The random draws are those of the per-batch loop fedsim ran before, in the same
order from the same CPU generator: for each epoch a permutation of the client's
examples, then for each batch its crop offsets and flips. They are all made
before the first step (nothing else draws from that generator), moved to the
device in one copy, and applied there a block of batches at a time, so a
training step neither copies from the host nor waits for it.

With ``pad=True`` every batch has exactly ``batch_size`` rows, which a compiled
or captured step needs: the last batch of an epoch is filled with zero rows
whose per-example weight is 0, while real rows weigh ``1 / real rows``. The
weighted sum of per-example losses is then the mean loss of the real rows, and
so are its gradients, because every layer of the models acts on each example on
its own (GroupNorm, dropout, no BatchNorm).

Example
-------
>>> import torch
>>> from fedsim.data.loaders import dataset_info
>>> x = torch.zeros(10, 1, 8, 8)
>>> y = torch.arange(10)
>>> gen = torch.Generator().manual_seed(0)
>>> plan = BatchPlan.draw(10, batch_size=4, epochs=2, generator=gen, augment=False)
>>> batches = list(client_batches(x, y, dataset_info("digits"), plan, pad=True))
>>> [b.size for b in batches], batches[-1].x.shape[0]
([4, 4, 2, 4, 4, 2], 4)
>>> batches[-1].weight.tolist()
[0.5, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.data.base import DatasetInfo
from fedsim.data.transforms import CropFlip, prepare_batch

BLOCK_EXAMPLES = 4096
"""Examples prepared at once (a block of whole batches): about 50 MB of CIFAR."""


@dataclass(frozen=True)
class Batch:
    """One training batch on the device.

    Attributes
    ----------
    x, y
        Model input ``(B, ...)`` and labels ``(B,)``.
    weight
        ``(B,)`` per-example loss weights (``1/size`` for real rows, 0 for
        padding), or None for an unpadded batch (the plain mean).
    size
        Real examples in the batch.
    first
        The first batch of an epoch.
    """

    x: Tensor
    y: Tensor
    weight: Tensor | None
    size: int
    first: bool = False


@dataclass(frozen=True)
class BatchPlan:
    """Every random draw of a client's round: orders and crop/flip draws.

    Attributes
    ----------
    orders
        ``(epochs, n)`` int64: each epoch's permutation of the client's examples.
    draws
        ``epochs * n`` crop/flip draws, epoch after epoch, in batch order; None
        when the dataset does not augment.
    batch_size
        Rows per batch.
    """

    orders: Tensor
    draws: CropFlip | None
    batch_size: int

    @staticmethod
    def draw(
        n: int,
        *,
        batch_size: int,
        epochs: int,
        generator: torch.Generator,
        augment: bool,
    ) -> BatchPlan:
        """Draw in the per-batch loop's order: permutation, then each batch's crops."""
        orders, draws = [], []
        for _ in range(epochs):
            orders.append(torch.randperm(n, generator=generator))
            if augment:
                draws += [
                    CropFlip.draw(min(batch_size, n - start), generator)
                    for start in range(0, n, batch_size)
                ]
        stacked = torch.stack(orders) if orders else torch.empty(0, n, dtype=torch.long)
        return BatchPlan(stacked, CropFlip.cat(draws) if draws else None, batch_size)

    @property
    def epochs(self) -> int:
        """Passes over the client's data."""
        return int(self.orders.shape[0])

    @property
    def num_examples(self) -> int:
        """The client's training examples."""
        return int(self.orders.shape[1])

    @property
    def steps(self) -> int:
        """Optimizer steps of the round: batches per epoch times epochs."""
        n, b = self.num_examples, self.batch_size
        return self.epochs * (-(-n // b))

    def to(self, device: torch.device) -> BatchPlan:
        """The same plan on ``device`` (two copies, before the first step)."""
        draws = self.draws.to(device) if self.draws is not None else None
        return BatchPlan(self.orders.to(device), draws, self.batch_size)


def client_batches(
    x_raw: Tensor,
    y: Tensor,
    info: DatasetInfo,
    plan: BatchPlan,
    *,
    pad: bool = False,
    block_examples: int = BLOCK_EXAMPLES,
) -> Iterator[Batch]:
    """Yield the round's batches, prepared on ``x_raw``'s device.

    Parameters
    ----------
    x_raw, y
        The client's raw examples ``(n, ...)`` and labels ``(n,)``, on the
        device that trains (``plan`` is moved there).
    info
        Scale, normalization and augmentation of the dataset.
    plan
        The round's draws (:meth:`BatchPlan.draw`).
    pad
        Give every batch ``plan.batch_size`` rows (see the module docstring).
    block_examples
        Examples transformed at once; a multiple of the batch size is used.
    """
    device = x_raw.device
    plan = plan.to(device)
    n, size = plan.num_examples, plan.batch_size
    per_block = max(1, block_examples // size) * size
    weights = _Weights(size, device) if pad else None
    for epoch in range(plan.epochs):
        order = plan.orders[epoch]
        for lo in range(0, n, per_block):
            hi = min(lo + per_block, n)
            idx = order[lo:hi]
            draws = None
            if plan.draws is not None:
                draws = plan.draws[epoch * n + lo : epoch * n + hi]
            x = prepare_batch(x_raw[idx], info, train=True, draws=draws)
            labels = y[idx]
            for start in range(0, hi - lo, size):
                xb, yb = x[start : start + size], labels[start : start + size]
                real, first = len(yb), lo + start == 0
                if weights is None:
                    yield Batch(xb, yb, None, real, first)
                    continue
                if real < size:
                    xb, yb = pad_rows(xb, size), pad_rows(yb, size)
                yield Batch(xb, yb, weights.of(real), real, first)


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows`` (a padded batch's filler)."""
    filler = t.new_zeros((rows - len(t), *t.shape[1:]))
    return torch.cat([t, filler])


class _Weights:
    """Per-example loss weights by number of real rows, built once each."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = size, device
        self._cache: dict[int, Tensor] = {}

    def of(self, real: int) -> Tensor:
        w = self._cache.get(real)
        if w is None:
            w = torch.zeros(self.size, device=self.device)
            w[:real] = 1.0 / real
            self._cache[real] = w
        return w
