"""CIFAR-10/100 (python pickle batches) and CINIC-10 (PNG folders) readers.

On-disk layouts (as written by torchvision and the CINIC-10 tarball)::

    root/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch
    root/cifar-100-python/train, test
    root/CINIC-10/{train,valid,test}/<class name>/*.png

CIFAR batches are pickles: only open files from a source you trust.

Example
-------
>>> from pathlib import Path
>>> [p.name for group in cifar10_required(Path("/d")) for p in group][:2]
['data_batch_1', 'data_batch_2']
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.base import DataError
from fedsim.quote import shown

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
# Each requirement is satisfied when any one of its alternative paths exists.
Requirement = tuple[Path, ...]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CINIC10_DIR = "CINIC-10"
CINIC10_CACHE = "fedsim_cache.npz"
CINIC10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CHUNK = 2048  # PNG files decoded per thread task

log = logging.getLogger(__name__)


def cifar10_required(root: Path) -> list[Requirement]:
    """Return the CIFAR-10 files that must exist under ``root``."""
    folder = root / CIFAR10_DIR
    return [(folder / name,) for name in (*_CIFAR10_TRAIN, "test_batch")]


def cifar100_required(root: Path) -> list[Requirement]:
    """Return the CIFAR-100 files that must exist under ``root``."""
    return [(root / CIFAR100_DIR / "train",), (root / CIFAR100_DIR / "test",)]


def cinic10_required(root: Path) -> list[Requirement]:
    """Return the CINIC-10 class folders that must exist under ``root``."""
    return [
        (root / CINIC10_DIR / split / name,)
        for split in ("train", "test")
        for name in CINIC10_CLASSES
    ]


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # Pickles written by Python 2 (the official files) load with bytes keys.
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(
        f"{path} has no {key!r} entry (keys: {shown(sorted(map(str, batch)))}); "
        "it is not a "
        f"CIFAR batch. Delete the folder and fetch it again with fedsim data download"
    )


_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,  # a pickle naming what does not exist
    ImportError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
    IsADirectoryError,
)
"""What unpickling (and reading the arrays of) a broken batch file raises."""


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch into ``(N, 3, 32, 32) uint8, (N,) int64``."""
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        if not isinstance(batch, dict):
            raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR dict")
        data = np.asarray(_field(batch, "data", path), dtype=np.uint8)
        raw_labels = np.asarray(_field(batch, label_key, path))
        if raw_labels.size and raw_labels.dtype.kind not in "iu":  # 1.7: no class
            raise DataError(f"{path}: labels are {raw_labels.dtype}, not integers")
        labels = raw_labels.astype(np.int64)
    except DataError:
        raise
    except _UNREADABLE as err:
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({type(err).__name__}: "
            f"{shown(str(err))}). Delete the folder and fetch it again with "
            "fedsim data download"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path}: data has shape {data.shape} and {len(labels)} labels; expected "
            f"(N, 3072) with N labels. Fetch the dataset again"
        )
    # Rows are the R, G, B planes of a 32x32 image, each row-major.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: Path) -> Arrays:
    """Load CIFAR-10 as ``x (N, 3, 32, 32) uint8, y (N,) int64`` train/test arrays."""
    folder = root / CIFAR10_DIR
    parts = [_read_batch(folder / name, "labels") for name in _CIFAR10_TRAIN]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = _read_batch(folder / "test_batch", "labels")
    return x_train, y_train, x_test, y_test


def load_cifar100(root: Path) -> Arrays:
    """Load CIFAR-100 (fine labels) like :func:`load_cifar10`."""
    x_train, y_train = _read_batch(root / CIFAR100_DIR / "train", "fine_labels")
    x_test, y_test = _read_batch(root / CIFAR100_DIR / "test", "fine_labels")
    return x_train, y_train, x_test, y_test


def _decode_into(out: np.ndarray, files: Sequence[Path]) -> None:
    from PIL import Image, UnidentifiedImageError

    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{path} is not a readable PNG ({err})") from err
        if pixels.shape != (32, 32, 3):
            raise DataError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]}; CINIC-10 images are "
                f"32x32. Remove the file or fetch the dataset again"
            )
        out[i] = pixels.transpose(2, 0, 1)


def _decode_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CINIC10_CLASSES):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix == ".png")
        files += found
        labels += [label] * len(found)
    x = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
    starts = range(0, len(files), _CHUNK)
    # PIL releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        jobs = [
            pool.submit(_decode_into, x[s : s + _CHUNK], files[s : s + _CHUNK])
            for s in starts
        ]
        for job in jobs:
            job.result()
    return x, np.asarray(labels, dtype=np.int64)


def _cache_is_fresh(cache: Path, base: Path) -> bool:
    if not cache.is_file():
        return False
    folders = [
        base / split / name for split in ("train", "test") for name in CINIC10_CLASSES
    ]
    newest = max(p.stat().st_mtime for p in [base / "train", base / "test", *folders])
    return cache.stat().st_mtime > newest


def _write_cache(cache: Path, arrays: Arrays) -> None:
    # Write to a temporary file and rename, so a concurrent reader never sees half
    # a cache; a read-only dataset folder only costs the speed-up.
    x_train, y_train, x_test, y_test = arrays
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
            )
        os.replace(tmp, cache)
    except OSError as err:
        log.warning("could not write the CINIC-10 cache %s: %s", cache, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_cinic10(root: Path) -> Arrays:
    """Load CINIC-10 train and test folders (``valid`` is not used).

    The first load decodes every PNG (labels follow :data:`CINIC10_CLASSES`, files
    in sorted name order) and saves ``root/CINIC-10/fedsim_cache.npz``; later loads
    read the cache while it is newer than the split and class folders.
    """
    base = root / CINIC10_DIR
    cache = base / CINIC10_CACHE
    if _cache_is_fresh(cache, base):
        try:
            with np.load(cache) as stored:
                x_tr, y_tr, x_te, y_te = (stored[k] for k in _CACHE_KEYS)
            return x_tr, y_tr, x_te, y_te
        except (OSError, KeyError, ValueError) as err:
            log.warning("ignoring unreadable CINIC-10 cache %s: %s", cache, err)
    x_train, y_train = _decode_split(base / "train")
    x_test, y_test = _decode_split(base / "test")
    arrays = (x_train, y_train, x_test, y_test)
    _write_cache(cache, arrays)
    return arrays
