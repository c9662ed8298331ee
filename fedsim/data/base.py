"""Types shared by the data package: dataset description, loaded data, errors.

A loader returns a :class:`FederatedData`: raw train/test arrays exactly as stored on
disk (uint8 images stay uint8) plus a :class:`DatasetInfo` that tells
:func:`fedsim.data.transforms.prepare_batch` how to turn a raw batch into model input.

Example
-------
>>> import numpy as np
>>> info = DatasetInfo("toy", 2, (1, 2, 2), 1.0, None, None, False)
>>> x = np.zeros((4, 1, 2, 2), np.float32)
>>> y = np.array([0, 1, 0, 1])
>>> data = FederatedData(info, x, y, x[:2], y[:2])
>>> data.num_train, data.num_test
(4, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

# Human-readable names used in messages; keys are the names accepted by the loaders.
DISPLAY_NAMES: dict[str, str] = {
    "digits": "Digits (scikit-learn)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "cinic10": "CINIC-10",
    "mnist": "MNIST",
    "femnist": "FEMNIST (LEAF)",
    "shakespeare": "Shakespeare (LEAF)",
    "synthetic_cifar": "Synthetic CIFAR",
}


DatasetName = Literal[
    "digits",
    "cifar10",
    "cifar100",
    "cinic10",
    "mnist",
    "femnist",
    "shakespeare",
    "synthetic_cifar",
]


class DataError(ValueError):
    """Input data or a data setting is wrong; the message says how to fix it."""


class DatasetNotFoundError(DataError):
    """A dataset's files are missing; the message says which and how to fetch them.

    Parameters
    ----------
    name : str
        Dataset key, e.g. ``"cifar10"``.
    root : Path or None
        Folder that was searched (``None``: no ``data.root`` was configured).
    looked_for : Path or None
        The first expected file or folder that is missing.

    Examples
    --------
    >>> err = DatasetNotFoundError("cifar10", Path("/d"), Path("/d/x"))
    >>> "fedsim data download cifar10 --root /d" in str(err)
    True
    """

    def __init__(self, name: str, root: Path | None, looked_for: Path | None) -> None:
        self.name = name
        self.root = root
        self.looked_for = looked_for
        display = DISPLAY_NAMES.get(name, name)
        if root is None:
            message = (
                f"{display} needs a data folder but data.root is not set. Set "
                f"data.root to a folder and fetch the data with: fedsim data "
                f"download {name} --root <folder>"
            )
        else:
            message = (
                f"{display} not found in {root} (looked for {looked_for}). Fetch it "
                f"with: fedsim data download {name} --root {root}"
            )
        super().__init__(message)

    def __reduce__(
        self,
    ) -> tuple[type[DatasetNotFoundError], tuple[str, Path | None, Path | None]]:
        return (type(self), (self.name, self.root, self.looked_for))


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: what one example is and how to preprocess it.

    Parameters
    ----------
    name : str
        Dataset key.
    num_classes : int
        Number of labels.
    input_shape : tuple of int
        Shape of one example: ``(3, 32, 32)``, ``(1, 28, 28)``, ``(1, 8, 8)`` or
        ``(80,)`` for Shakespeare.
    scale : float
        Raw value / scale lies in [0, 1]: 255 for uint8 images, 16 for digits, 1 for
        float data.
    mean, std : tuple of float or None
        Per-channel normalization applied after scaling (``None``: none).
    augment : bool
        Random crop (zero padding 4) plus horizontal flip on training batches.
    integer_inputs : bool
        Inputs are int64 token ids (Shakespeare): no scaling or normalization.

    Examples
    --------
    >>> DatasetInfo("d", 10, (1, 8, 8), 16.0, None, None, False).integer_inputs
    False
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augment: bool
    integer_inputs: bool = False


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A loaded dataset: raw train/test arrays and, optionally, natural users.

    ``eq=False``: instances compare by identity (element-wise array comparison has
    no single truth value).

    Parameters
    ----------
    info : DatasetInfo
        How to interpret and preprocess the arrays.
    x_train, x_test : np.ndarray
        ``(N, *info.input_shape)``; uint8 (images), float32 (digits, FEMNIST) or
        int64 (Shakespeare).
    y_train, y_test : np.ndarray
        ``(N,)`` int64 labels in ``[0, info.num_classes)``.
    users : tuple of np.ndarray or None
        Natural users (FEMNIST writers, Shakespeare roles): int64 index arrays into
        the train split, one per user, in sorted user-id order.
    test_users : tuple of np.ndarray or None
        The same users' own test examples (LEAF's per-writer test split): int64
        index arrays into the test split, aligned with ``users`` (``test_users[i]``
        belongs to the user whose train examples are ``users[i]``). A user without
        test examples has an empty array; test examples of users that have no
        train examples stay in ``x_test`` but belong to no entry. Requires
        ``users``.

    Raises
    ------
    DataError
        Shapes or labels do not match ``info``, or ``test_users`` is not aligned
        with ``users`` (different length, indices outside the test split, or a
        test example shared by two users).

    Examples
    --------
    >>> info = DatasetInfo("toy", 2, (3,), 1.0, None, None, False)
    >>> x, y = np.zeros((2, 4), np.float32), np.zeros(2, np.int64)
    >>> try:  # examples have 4 features but info says 3
    ...     FederatedData(info, x, y, x, y)
    ... except DataError as err:
    ...     print(str(err)[:40])
    toy: x_train has shape (2, 4) but one ex
    >>> x = np.zeros((2, 3), np.float32)
    >>> users, test_users = (np.array([0]), np.array([1])), (np.array([1]),)
    >>> try:  # two train users but one test entry
    ...     FederatedData(info, x, y, x, y, users, test_users)
    ... except DataError as err:
    ...     print(str(err)[:50])
    toy: test_users has 1 entries but users has 2; tes
    """

    info: DatasetInfo
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    users: tuple[np.ndarray, ...] | None = None
    test_users: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        name = self.info.name
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if tuple(x.shape[1:]) != self.info.input_shape:
                raise DataError(
                    f"{name}: x_{split} has shape {x.shape} but one example must have "
                    f"shape {self.info.input_shape}; reshape the array or fix "
                    f"DatasetInfo.input_shape"
                )
            if y.shape != (x.shape[0],):
                raise DataError(
                    f"{name}: y_{split} has shape {y.shape}, expected ({x.shape[0]},) "
                    f"(one label per example in x_{split})"
                )
            if y.size and (y.min() < 0 or y.max() >= self.info.num_classes):
                raise DataError(
                    f"{name}: y_{split} has labels in [{y.min()}, {y.max()}] but "
                    f"num_classes is {self.info.num_classes}; labels must be in "
                    f"[0, {self.info.num_classes})"
                )
        if self.test_users is not None:
            self._check_test_users(self.test_users)

    def _check_test_users(self, test_users: tuple[np.ndarray, ...]) -> None:
        # A misaligned entry would silently hand a client another writer's test
        # examples, so every way alignment can break is rejected here.
        name, n = self.info.name, self.num_test
        fix = "test_users[i] must index x_test for the user of users[i]"
        if self.users is None:
            raise DataError(f"{name}: test_users is set but users is None; {fix}")
        if len(test_users) != len(self.users):
            raise DataError(
                f"{name}: test_users has {len(test_users)} entries but users has "
                f"{len(self.users)}; {fix}"
            )
        for i, idx in enumerate(test_users):
            idx = np.asarray(idx)
            if idx.ndim != 1 or not (
                idx.size == 0 or np.issubdtype(idx.dtype, np.integer)
            ):
                raise DataError(
                    f"{name}: test_users[{i}] has dtype {idx.dtype} and shape "
                    f"{idx.shape}; {fix} as a 1-D int64 array"
                )
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(
                    f"{name}: test_users[{i}] holds indices in [{idx.min()}, "
                    f"{idx.max()}] but x_test has {n} examples; {fix}"
                )
        every = np.concatenate([np.zeros(0, np.int64), *test_users]).astype(np.int64)
        if len(np.unique(every)) != len(every):
            raise DataError(
                f"{name}: a test example appears in more than one test_users entry; "
                f"{fix}, and each test example belongs to one user"
            )

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])
