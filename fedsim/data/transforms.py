"""Turn a raw batch (as stored in :class:`FederatedData`) into model input.

Batches are transformed on whatever device they live on, in one vectorized pass:
scale to [0, 1], augment (training only, when the dataset asks for it), normalize.
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

import torch
import torch.nn.functional as F

from fedsim.data.base import DataError, DatasetInfo

PAD = 4


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
    n, _, height, width = x.shape
    # Draw on CPU so results only depend on the generator, not on the device.
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(height)  # (N, H) rows in the padded image
    cols = left[:, None] + torch.arange(width)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def prepare_batch(
    x: torch.Tensor,
    info: DatasetInfo,
    *,
    train: bool,
    generator: torch.Generator | None = None,
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
        out = random_crop_flip(out, generator)
    if info.mean is not None and info.std is not None:
        mean, std = _channel_stats(info.mean, info.std, out.device, out.dim())
        out = (out - mean) / std
    return out


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
