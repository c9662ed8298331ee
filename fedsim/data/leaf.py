"""LEAF FEMNIST and Shakespeare readers (the JSON files LEAF's preprocess.sh writes).

Layout: ``root/<femnist|shakespeare>/data/{train,test}/*.json``; each file holds
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y":
[...]}}}``. Users are merged over all files and ordered by sorted user id; the
examples of one user are contiguous in each split. ``users[i]`` indexes the train
examples of the i-th user and ``test_users[i]`` the same user's test examples
(LEAF's ``-t sample`` split keeps both for every writer), so a natural partition
can give each client its own writer's test set.

Shakespeare characters are mapped to their index in LEAF's ``ALL_LETTERS`` (80
symbols). Characters outside it become the space character (id 1). LEAF's own
``ALL_LETTERS.find`` would give -1 and silently pick the last embedding row.

Example
-------
>>> encode_text(["ab", "a~"], length=2).tolist()
[[53, 54], [53, 1]]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.base import DataError, DatasetNotFoundError
from fedsim.quote import shown

Requirement = tuple[Path, ...]
# x_train, y_train, x_test, y_test, users (index arrays into the train split) and
# test_users (the same users' index arrays into the test split)
LeafArrays = tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    tuple[np.ndarray, ...],
    tuple[np.ndarray, ...],
]

ALL_LETTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
SHAKESPEARE_SEQ_LEN = 80
FEMNIST_CLASSES = 62
_UNKNOWN_ID = ALL_LETTERS.index(" ")
_ASCII_TO_ID = np.full(128, _UNKNOWN_ID, dtype=np.int64)
_ASCII_TO_ID[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))

UserData = dict[str, tuple[list[Any], list[Any]]]
# (inputs, labels, user id) -> (x, y) arrays of one user
Converter = Callable[[list[Any], list[Any], str], tuple[np.ndarray, np.ndarray]]


def leaf_required(root: Path, name: str) -> list[Requirement]:
    """Return the LEAF split folders that must exist for dataset ``name``."""
    data = root / name / "data"
    return [(data / "train",), (data / "test",)]


def encode_text(strings: list[str], length: int) -> np.ndarray:
    """Map strings of exactly ``length`` characters to ``(N, length)`` int64 ids.

    Raises
    ------
    DataError
        A string has a different length.
    """
    bad = next((s for s in strings if len(s) != length), None)
    if bad is not None:
        raise DataError(
            f"Shakespeare sample {bad[:20]!r}... has {len(bad)} characters, expected "
            f"{length}; regenerate the LEAF data with its default sequence length"
        )
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype="<u4")
    ids = np.full(codes.shape, _UNKNOWN_ID, dtype=np.int64)
    ascii_ = codes < 128
    ids[ascii_] = _ASCII_TO_ID[codes[ascii_]]
    return ids.reshape(len(strings), length)


def _read_split(folder: Path) -> UserData:
    files = sorted(folder.glob("*.json"))
    if not files:
        name, root = folder.parents[1].name, folder.parents[2]
        raise DatasetNotFoundError(name, root, folder / "*.json")
    merged: UserData = {}
    for path in files:
        try:
            with path.open(encoding="utf-8") as handle:
                user_data = json.load(handle)["user_data"]
            for user, data in user_data.items():
                xs, ys = merged.setdefault(str(user), ([], []))
                xs.extend(data["x"])
                ys.extend(data["y"])
        except (
            ValueError,  # JSONDecodeError, UnicodeDecodeError (not UTF-8)
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,  # nested too deep
            IsADirectoryError,
        ) as err:
            raise DataError(
                f"{path} is not a LEAF json file ({type(err).__name__}: "
                f"{shown(str(err))}); "
                f'expected {{"user_data": {{user: {{"x": [...], "y": [...]}}}}}}. '
                f"Rerun LEAF's preprocess.sh"
            ) from err
    return merged


def _to_arrays(
    merged: UserData, name: str, convert: Converter
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Concatenate users in sorted id order; map each non-empty user to its rows."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    users: dict[str, np.ndarray] = {}
    start = 0
    for user in sorted(merged):
        raw_x, raw_y = merged[user]
        if len(raw_x) != len(raw_y):
            raise DataError(
                f"{name} user {user!r} has {len(raw_x)} inputs but {len(raw_y)} "
                f"labels; rerun LEAF's preprocess.sh"
            )
        if not raw_x:  # a user without examples cannot be a client
            continue
        x, y = convert(raw_x, raw_y, user)
        xs.append(x)
        ys.append(y)
        users[user] = np.arange(start, start + len(y), dtype=np.int64)
        start += len(y)
    if not xs:
        raise DataError(f"{name}: the LEAF files hold no examples; rerun preprocess.sh")
    return np.concatenate(xs), np.concatenate(ys), users


def _femnist_user(
    raw_x: list[Any], raw_y: list[Any], user: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        if not all(type(label) is int for label in raw_y):  # 1.7 is not class 1
            raise TypeError("a label is not an integer")
        x = np.asarray(raw_x, dtype=np.float32).reshape(-1, 1, 28, 28)
        y = np.asarray(raw_y, dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as err:
        raise DataError(
            f"FEMNIST user {shown(user)}: each x must be 784 numbers and each y an "
            f"integer ({shown(str(err))}); rerun LEAF's preprocess.sh"
        ) from err
    if not np.isfinite(x).all():
        raise DataError(
            f"FEMNIST user {shown(user)}: some pixels are NaN or infinite; rerun "
            "LEAF's preprocess.sh"
        )
    if len(x) != len(y) or (y.size and (y.min() < 0 or y.max() >= FEMNIST_CLASSES)):
        raise DataError(
            f"FEMNIST user {user!r}: labels must be in [0, {FEMNIST_CLASSES}) with one "
            f"784-pixel image each; rerun LEAF's preprocess.sh"
        )
    return x, y


def _shakespeare_user(
    raw_x: list[Any], raw_y: list[Any], user: str
) -> tuple[np.ndarray, np.ndarray]:
    if not all(isinstance(s, str) for s in raw_x) or not all(
        isinstance(c, str) and len(c) == 1 for c in raw_y
    ):
        raise DataError(
            f"Shakespeare user {user!r}: x must be strings and y single characters; "
            f"rerun LEAF's preprocess.sh"
        )
    x = encode_text(raw_x, SHAKESPEARE_SEQ_LEN)
    y = encode_text(raw_y, 1)[:, 0]
    return x, y


def load_leaf(root: Path, name: str) -> LeafArrays:
    """Load LEAF ``femnist`` or ``shakespeare`` with per-user train and test indices.

    Parameters
    ----------
    root : Path
        Folder holding ``<name>/data/{train,test}/*.json``.
    name : str
        ``"femnist"`` or ``"shakespeare"``.

    Returns
    -------
    x_train, y_train, x_test, y_test : np.ndarray
        Every user's examples, users in sorted id order. The test split holds
        every user's test examples, including users without train examples.
    users : tuple of np.ndarray
        Int64 indices into the train split, one array per user with train
        examples (users without train examples cannot be clients).
    test_users : tuple of np.ndarray
        Aligned with ``users``: ``test_users[i]`` indexes the test examples of the
        user of ``users[i]`` (empty if that user has none).

    Raises
    ------
    DatasetNotFoundError
        A split folder holds no json file.
    DataError
        A file is malformed or a split holds no examples.
    """
    convert: Converter = _femnist_user if name == "femnist" else _shakespeare_user
    data = root / name / "data"
    x_train, y_train, train_of = _to_arrays(_read_split(data / "train"), name, convert)
    x_test, y_test, test_of = _to_arrays(_read_split(data / "test"), name, convert)
    no_test = np.zeros(0, dtype=np.int64)
    # dicts keep _to_arrays' sorted id order, so users stays in sorted id order
    users = tuple(train_of.values())
    test_users = tuple(test_of.get(user, no_test) for user in train_of)
    return x_train, y_train, x_test, y_test, users, test_users
