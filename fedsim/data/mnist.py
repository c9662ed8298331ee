"""MNIST reader for torchvision's raw idx files (plain or ``.gz``).

Layout: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

An idx file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data.

Example
-------
>>> import gzip
>>> header = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
>>> parse_idx(header + bytes([7, 8, 9]), "labels", 1).tolist()
[7, 8, 9]
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fedsim.data.base import DataError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Requirement = tuple[Path, ...]

MNIST_RAW = Path("MNIST") / "raw"
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08
_FIX = "Delete it and fetch MNIST again with: fedsim data download mnist --root <root>"


def mnist_required(root: Path) -> list[Requirement]:
    """Return the four idx files, each satisfied by its plain or ``.gz`` form."""
    folder = root / MNIST_RAW
    return [(folder / n, folder / f"{n}.gz") for n in _FILES.values()]


def parse_idx(raw: bytes, what: str, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte idx buffer with ``ndim`` dimensions.

    Parameters
    ----------
    raw : bytes
        File contents (already decompressed).
    what : str
        Name used in error messages (usually the file path).
    ndim : int
        Expected number of dimensions (1 for labels, 3 for images).

    Returns
    -------
    np.ndarray
        uint8 array of the stored shape.

    Raises
    ------
    DataError
        Bad magic number, wrong dimension count or a size that does not match.
    """
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise DataError(
            f"{what} is not an idx file of unsigned bytes with {ndim} dimension(s) "
            f"(magic 0x{magic}, expected 0x0000080{ndim}). {_FIX}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{what} holds {len(raw) - header} data bytes but its header {dims} "
            f"needs {expected}: the file is truncated or corrupt. {_FIX}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read(folder: Path, name: str, ndim: int) -> np.ndarray:
    path = folder / name
    if path.is_file():  # prefer the extracted file: no decompression
        return parse_idx(path.read_bytes(), str(path), ndim)
    gz_path = folder / f"{name}.gz"
    try:
        with gzip.open(gz_path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{gz_path} is not a readable gzip file ({err}). {_FIX}"
        ) from err
    return parse_idx(raw, str(gz_path), ndim)


def _split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read(folder, _FILES[f"{split}_images"], 3)
    labels = _read(folder, _FILES[f"{split}_labels"], 1)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise DataError(
            f"MNIST {split} split: {images.shape} images but {len(labels)} labels "
            f"(expected (N, 28, 28) images and N labels). {_FIX}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST {split} labels go up to {labels.max()} (> 9). {_FIX}")
    return images.reshape(-1, 1, 28, 28).copy(), labels.astype(np.int64)


def load_mnist(root: Path) -> Arrays:
    """Load MNIST as ``x (N, 1, 28, 28) uint8, y (N,) int64`` train/test arrays."""
    folder = root / MNIST_RAW
    x_train, y_train = _split(folder, "train")
    x_test, y_test = _split(folder, "test")
    return x_train, y_train, x_test, y_test
