"""Dataset registry: static info, availability checks and loading by name.

Use :func:`dataset_info` to build a model before any data is read,
:func:`check_available` to fail fast (before Ray starts) when files are missing, and
:func:`load_dataset` to read the arrays.

Example
-------
>>> dataset_info("cifar10").input_shape
(3, 32, 32)
>>> data = load_dataset("synthetic_cifar", None, synthetic_train=40, synthetic_test=10)
>>> data.x_train.shape, data.info.num_classes
((40, 3, 32, 32), 10)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from fedsim.data import builtin, cifar, leaf, mnist
from fedsim.data.base import (
    DataError,
    DatasetInfo,
    DatasetName,
    DatasetNotFoundError,
    FederatedData,
)

DATASETS: tuple[str, ...] = get_args(DatasetName)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CINIC10_MEAN = (0.47889522, 0.47227842, 0.43047404)
CINIC10_STD = (0.24205776, 0.23828046, 0.25874835)

_RGB = (3, 32, 32)
_GREY28 = (1, 28, 28)
_INFOS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), 16.0, None, None, False),
    "cifar10": DatasetInfo("cifar10", 10, _RGB, 255.0, CIFAR10_MEAN, CIFAR10_STD, True),
    "cifar100": DatasetInfo(
        "cifar100", 100, _RGB, 255.0, CIFAR100_MEAN, CIFAR100_STD, True
    ),
    "cinic10": DatasetInfo("cinic10", 10, _RGB, 255.0, CINIC10_MEAN, CINIC10_STD, True),
    "mnist": DatasetInfo("mnist", 10, _GREY28, 255.0, (0.1307,), (0.3081,), False),
    "femnist": DatasetInfo(
        "femnist", leaf.FEMNIST_CLASSES, _GREY28, 1.0, None, None, False
    ),
    "shakespeare": DatasetInfo(
        "shakespeare",
        len(leaf.ALL_LETTERS),
        (leaf.SHAKESPEARE_SEQ_LEN,),
        1.0,
        None,
        None,
        False,
        integer_inputs=True,
    ),
    # A stand-in for CIFAR-10 that runs the same pipeline (augmentation included);
    # its class patterns are flip-symmetric and coarse, so augmentation keeps them.
    "synthetic_cifar": DatasetInfo(
        "synthetic_cifar", 10, _RGB, 255.0, CIFAR10_MEAN, CIFAR10_STD, True
    ),
}

_REQUIRED: dict[str, Callable[[Path], list[tuple[Path, ...]]]] = {
    "cifar10": cifar.cifar10_required,
    "cifar100": cifar.cifar100_required,
    "cinic10": cifar.cinic10_required,
    "mnist": mnist.mnist_required,
    "femnist": lambda root: leaf.leaf_required(root, "femnist"),
    "shakespeare": lambda root: leaf.leaf_required(root, "shakespeare"),
}


def _check_name(name: str) -> None:
    if name not in _INFOS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(
            f"unknown dataset {name!r}; {hint}choose one of: {', '.join(DATASETS)}"
        )


def dataset_info(name: str) -> DatasetInfo:
    """Return the static :class:`DatasetInfo` of ``name`` without touching files.

    Raises
    ------
    DataError
        ``name`` is not one of :data:`DATASETS`.

    Examples
    --------
    >>> dataset_info("shakespeare").num_classes, dataset_info("mnist").mean
    (80, (0.1307,))
    """
    _check_name(name)
    return _INFOS[name]


def check_available(name: str, root: str | Path | None) -> None:
    """Raise quickly if the files of ``name`` are missing under ``root``.

    Only checks that the expected files and folders exist (no reading). ``digits``
    and ``synthetic_cifar`` need no files and always pass.

    Raises
    ------
    DatasetNotFoundError
        A required file is missing, or ``root`` is ``None`` for a file dataset. The
        message names the path and the ``fedsim data download`` command.
    DataError
        ``name`` is unknown.

    Examples
    --------
    >>> check_available("digits", None)
    >>> check_available("cifar10", "/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.data.base.DatasetNotFoundError: CIFAR-10 not found in /nonexistent ...
    """
    _check_name(name)
    if name not in _REQUIRED:
        return
    if root is None:
        raise DatasetNotFoundError(name, None, None)
    base = Path(root).expanduser()
    for alternatives in _REQUIRED[name](base):
        if not any(path.exists() for path in alternatives):
            raise DatasetNotFoundError(name, base, alternatives[0])


def load_dataset(
    name: str,
    root: str | Path | None,
    *,
    synthetic_train: int = 50_000,
    synthetic_test: int = 10_000,
    seed: int = 0,
) -> FederatedData:
    """Load dataset ``name`` from ``root`` into raw numpy arrays.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str, Path or None
        Folder holding the dataset in its usual layout (see the ``cifar``, ``mnist``
        and ``leaf`` modules). Ignored by ``digits`` and ``synthetic_cifar``.
    synthetic_train, synthetic_test : int
        Split sizes for ``synthetic_cifar``.
    seed : int
        Seed of ``synthetic_cifar``; every other dataset is the same for any seed
        (the digits test split is fixed).

    Returns
    -------
    FederatedData
        Raw arrays (uint8 images stay uint8) with their :class:`DatasetInfo`;
        ``users`` and ``test_users`` (each writer's own LEAF test examples) are
        set for FEMNIST and Shakespeare.

    Raises
    ------
    DatasetNotFoundError
        Files are missing.
    DataError
        Unknown name, bad sizes, or malformed files.

    Examples
    --------
    >>> data = load_dataset("digits", None)
    >>> data.num_train + data.num_test, data.x_train.dtype
    (1797, dtype('float32'))
    """
    info = dataset_info(name)
    if name == "digits":
        return FederatedData(info, *builtin.digits())
    if name == "synthetic_cifar":
        if synthetic_train < 1 or synthetic_test < 1 or seed < 0:
            raise DataError(
                f"synthetic_cifar needs synthetic_train >= 1, synthetic_test >= 1 and "
                f"seed >= 0 (got {synthetic_train}, {synthetic_test}, {seed})"
            )
        arrays = builtin.synthetic_cifar(synthetic_train, synthetic_test, seed)
        return FederatedData(info, *arrays)
    if root is None:
        raise DatasetNotFoundError(name, None, None)
    check_available(name, root)
    base = Path(root).expanduser()
    if name in ("femnist", "shakespeare"):
        x_train, y_train, x_test, y_test, users, test_users = leaf.load_leaf(base, name)
        return FederatedData(
            info, x_train, y_train, x_test, y_test, users=users, test_users=test_users
        )
    readers = {
        "cifar10": cifar.load_cifar10,
        "cifar100": cifar.load_cifar100,
        "cinic10": cifar.load_cinic10,
        "mnist": mnist.load_mnist,
    }
    return FederatedData(info, *readers[name](base))
