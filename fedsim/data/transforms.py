"""Turn a raw batch (as stored in :class:`FederatedData`) into model input.

Batches are transformed on whatever device they live on, in one vectorized pass:
scale to [0, 1], augment (training only, when the dataset asks for it), normalize.
The random crops and flips are drawn on a CPU generator (:class:`CropFlip`), so
the same generator gives the same batch on any device.
Augmentation follows torchvision's ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip()`` applied before ``Normalize``: padded pixels are black
(0 after scaling), hence ``-mean / std`` after normalization.

Example
-------
>>> import torch
>>> from fedsim.data.loaders import dataset_info
>>> raw = torch.zeros(2, 1, 8, 8, dtype=torch.float32)
>>> prepare_batch(raw, dataset_info("digits"), train=True).shape
torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedsim.data.base import DataError, DatasetInfo

PAD = 4


@dataclass(frozen=True)
class CropFlip:
    """Random crop offsets and flips for ``N`` images, drawn ahead of use.

    Drawing is separate from cropping so that a client's draws for a whole
    round can be made on the CPU generator in the order a per-batch loop would
    make them, moved to the device in one copy, and applied there without a
    host round trip per batch.

    Attributes
    ----------
    top, left : torch.Tensor
        ``(N,)`` int64 offsets into the zero-padded image, in ``[0, 2 * pad]``.
    flip : torch.Tensor
        ``(N,)`` bool, mirror the crop horizontally.
    """

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor

    @staticmethod
    def draw(
        n: int, generator: torch.Generator | None = None, pad: int = PAD
    ) -> CropFlip:
        """Draw for ``n`` images: offsets, then flips, from ``generator`` (CPU)."""
        top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        return CropFlip(top, left, flip)

    @staticmethod
    def cat(parts: Sequence[CropFlip]) -> CropFlip:
        """The draws of ``parts`` one after another."""
        return CropFlip(
            torch.cat([p.top for p in parts]),
            torch.cat([p.left for p in parts]),
            torch.cat([p.flip for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, index: slice) -> CropFlip:
        return CropFlip(self.top[index], self.left[index], self.flip[index])

    def to(self, device: torch.device) -> CropFlip:
        """The same draws on ``device`` (one copy for all three)."""
        if self.top.device == device:
            return self
        packed = torch.stack([self.top, self.left, self.flip.long()]).to(device)
        return CropFlip(packed[0], packed[1], packed[2].bool())


def crop_flip(x: torch.Tensor, draws: CropFlip, pad: int = PAD) -> torch.Tensor:
    """Crop each image from its zero-padded copy, mirrored where drawn.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` float images on any device.
    draws : CropFlip
        ``N`` draws, moved to ``x``'s device if they are not there.
    pad : int
        Zero padding on each side.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``, contiguous, same device and dtype.
    """
    n, _, height, width = x.shape
    if len(draws) != n:
        raise ValueError(f"{len(draws)} crop draws for {n} images")
    draws = draws.to(x.device)
    rows = draws.top[:, None] + _arange(height, x.device)  # (N, H) padded rows
    cols = draws.left[:, None] + _arange(width, x.device)  # (N, W)
    cols = torch.where(draws.flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
    batch = _arange(n, x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, pad: int = PAD
) -> torch.Tensor:
    """Randomly crop each image from its zero-padded copy and flip half of them.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` float images on any device.
    generator : torch.Generator or None
        CPU generator for the offsets and flips (``None``: torch's default one).
        The draws are made on the CPU, so results depend only on the generator.
    pad : int
        Zero padding on each side; offsets are uniform in ``[0, 2 * pad]``.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``, same device and dtype.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> random_crop_flip(torch.ones(5, 3, 4, 4), g).shape
    torch.Size([5, 3, 4, 4])
    """
    return crop_flip(x, CropFlip.draw(len(x), generator, pad), pad)


def prepare_batch(
    x: torch.Tensor,
    info: DatasetInfo,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    draws: CropFlip | None = None,
) -> torch.Tensor:
    """Convert a raw batch into float32 model input (int64 ids for text).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, *info.input_shape)`` raw values (uint8, float32 or int64).
    info : DatasetInfo
        Scale, normalization and augmentation settings.
    train : bool
        Training batch: augment when ``info.augment``. Evaluation never augments.
    generator : torch.Generator or None
        CPU generator for augmentation; the same state gives the same batch.
    draws : CropFlip or None
        Augmentation drawn beforehand (see :meth:`CropFlip.draw`); then
        ``generator`` is not used.

    Returns
    -------
    torch.Tensor
        float32 on ``x.device``; for ``info.integer_inputs`` the int64 ids unchanged.

    Raises
    ------
    DataError
        The batch does not have shape ``(N, *info.input_shape)``.

    Examples
    --------
    >>> from fedsim.data.loaders import dataset_info
    >>> raw = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    >>> out = prepare_batch(raw, dataset_info("cifar10"), train=False)
    >>> round(out[0, 0, 0, 0].item(), 4)  # (1 - 0.4914) / 0.2023
    2.5141
    """
    if tuple(x.shape[1:]) != info.input_shape:
        raise DataError(
            f"{info.name}: batch has shape {tuple(x.shape)} but examples must have "
            f"shape {info.input_shape}; pass raw arrays from load_dataset"
        )
    if info.integer_inputs:
        return x.long()
    out = x.float() / info.scale
    if train and info.augment:
        if draws is None:
            draws = CropFlip.draw(len(out), generator)
        out = crop_flip(out, draws)
    if info.mean is not None and info.std is not None:
        mean, std = _channel_stats(info.mean, info.std, out.device, out.dim())
        out = (out - mean) / std
    return out


@functools.lru_cache(maxsize=32)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    # Cached for the same reason as the channel statistics below.
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached: building them per batch would cost a blocking host-to-GPU copy each.
    view = (1, -1) + (1,) * (ndim - 2)  # broadcast over dim 1 (channels)
    return (
        torch.tensor(mean, device=device).view(view),
        torch.tensor(std, device=device).view(view),
    )
