"""LEAF's per-writer test splits as the personal test sets of a natural partition.

Expected values come from the JSON the tests write (``formats`` plus the extra
files below), never from the loader or the partition under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsim.data import (
    DataError,
    DatasetInfo,
    FederatedData,
    Partition,
    PartitionSpec,
    load_dataset,
    make_partition,
    partition_summary,
)
from fedsim.data.leaf import ALL_LETTERS
from tests.data import formats

UserJson = dict[str, dict[str, list[Any]]]
TRAIN_ONLY = "zz_train_only"  # sorts after every writer formats makes
TEST_ONLY = "zz_test_only"


def _femnist_x(raw: list[Any]) -> np.ndarray:
    return np.asarray(raw, np.float32).reshape(-1, 1, 28, 28)


def _femnist_y(raw: list[Any]) -> np.ndarray:
    return np.asarray(raw, np.int64)


def _shakespeare_x(raw: list[Any]) -> np.ndarray:
    return np.array([[ALL_LETTERS.index(c) for c in s] for s in raw], np.int64)


def _shakespeare_y(raw: list[Any]) -> np.ndarray:
    return np.array([ALL_LETTERS.index(c) for c in raw], np.int64)


def _femnist_examples(n: int, seed: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 784)) / 255.0
    return {"x": pixels.tolist(), "y": rng.integers(0, 62, size=n).tolist()}


def _shakespeare_examples(n: int, seed: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(ALL_LETTERS), size=(n, 81))
    lines = ["".join(ALL_LETTERS[i] for i in row) for row in rows]
    return {"x": [line[:80] for line in lines], "y": [line[80] for line in lines]}


CASES = {
    "femnist": (formats.write_femnist_leaf, _femnist_examples, _femnist_x, _femnist_y),
    "shakespeare": (
        formats.write_shakespeare_leaf,
        _shakespeare_examples,
        _shakespeare_x,
        _shakespeare_y,
    ),
}


def _write(
    root: Path, name: str
) -> tuple[list[str], dict[str, dict[str, list[Any]]], UserJson]:
    """Write tiny LEAF files plus edge cases; return (train writers, train, test).

    On top of ``formats`` (1 test example per writer), the first two writers get
    more test examples in a second file, one writer has train data only and one
    test data only.
    """
    writer, make, _, _ = CASES[name]
    writer(root, 5, seed=3)
    train = formats.read_leaf(root, name, "train")
    test = formats.read_leaf(root, name, "test")
    writers = sorted(train)
    extra = {writers[0]: make(2, 10), writers[1]: make(3, 11), TEST_ONLY: make(1, 12)}
    split = root / name / "data"
    # zz_*.json sorts after formats' files, so these examples follow theirs
    formats.write_leaf_json(split / "test" / "zz_extra.json", extra)
    formats.write_leaf_json(
        split / "train" / "zz_extra.json", {TRAIN_ONLY: make(3, 13)}
    )
    train[TRAIN_ONLY] = make(3, 13)
    for user, data in extra.items():
        old = test.get(user, {"x": [], "y": []})
        test[user] = {"x": old["x"] + data["x"], "y": old["y"] + data["y"]}
    return sorted(train), train, test


def _writer_of(
    x_train: np.ndarray, train: UserJson, to_x: Any, writers: list[str]
) -> str:
    """The writer whose written train inputs are exactly ``x_train``."""
    hits = [
        u
        for u in writers
        if to_x(train[u]["x"]).shape == x_train.shape
        and np.array_equal(to_x(train[u]["x"]), x_train)
    ]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
def test_test_users_hold_each_writers_own_test_examples(
    tmp_path: Path, name: str
) -> None:
    _, _, to_x, to_y = CASES[name]
    writers, _, test = _write(tmp_path, name)
    data = load_dataset(name, tmp_path)
    assert data.users is not None and data.test_users is not None
    assert len(data.test_users) == len(data.users) == len(writers) == 6
    for user, idx in zip(writers, data.test_users, strict=True):
        assert idx.dtype == np.int64
        expected = test.get(user, {"x": [], "y": []})
        assert len(idx) == len(expected["y"])
        if user == TRAIN_ONLY:
            continue  # no test examples: an empty array
        np.testing.assert_array_equal(data.x_test[idx], to_x(expected["x"]))
        np.testing.assert_array_equal(data.y_test[idx], to_y(expected["y"]))
    # The test-only writer stays in the global test split but in no entry.
    covered = np.concatenate(data.test_users)
    assert len(np.unique(covered)) == len(covered) == data.num_test - 1
    assert data.num_test == sum(len(d["y"]) for d in test.values())


@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
@pytest.mark.parametrize("num_clients", [3, 6])
def test_natural_partition_tests_on_each_writers_own_test_split(
    tmp_path: Path, name: str, num_clients: int
) -> None:
    _, _, to_x, to_y = CASES[name]
    writers, train, test = _write(tmp_path, name)
    data = load_dataset(name, tmp_path)
    base = PartitionSpec("natural", num_clients)
    carving = PartitionSpec("natural", num_clients, client_test_fraction=0.4)
    plain = make_partition(data.y_train, base, 7, data.users)
    part = make_partition(data.y_train, carving, 7, data.users, data.test_users)
    assert part.test_source == "test" and plain.test_source == "train"
    assert part.num_clients == num_clients
    chosen = []
    for c in range(num_clients):
        # Train indices are those of the plain natural partition: nothing carved.
        np.testing.assert_array_equal(part.train[c], plain.train[c])
        assert part.test[c].dtype == np.int64
        user = _writer_of(data.x_train[part.train[c]], train, to_x, writers)
        chosen.append(user)
        expected = test.get(user, {"x": [], "y": []})
        assert len(part.test[c]) == len(expected["y"])
        if expected["y"]:
            np.testing.assert_array_equal(
                data.x_test[part.test[c]], to_x(expected["x"])
            )
            np.testing.assert_array_equal(
                data.y_test[part.test[c]], to_y(expected["y"])
            )
    assert chosen == sorted(chosen)  # clients keep sorted writer order
    if num_clients == len(writers):
        assert chosen == writers
    summary = partition_summary(part, data.y_train, data.info.num_classes)
    assert summary["test_source"] == "test"
    assert summary["num_test"] == sum(len(test.get(u, {"y": []})["y"]) for u in chosen)
    assert summary["num_train"] == sum(len(train[u]["y"]) for u in chosen)


@pytest.mark.parametrize(
    "spec",
    [
        PartitionSpec("iid", 4, client_test_fraction=0.3),
        PartitionSpec("dirichlet", 3, alpha=0.5, client_test_fraction=0.3),
        PartitionSpec("shards", 2, shards_per_client=2),
        PartitionSpec("natural", 4, client_test_fraction=0.3),  # no test_users
    ],
    ids=lambda spec: spec.scheme,
)
def test_other_partitions_are_unchanged(tmp_path: Path, spec: PartitionSpec) -> None:
    _write(tmp_path, "femnist")
    data = load_dataset("femnist", tmp_path)
    before = make_partition(data.y_train, spec, 2, data.users)
    test_users = data.test_users if spec.scheme != "natural" else None
    after = make_partition(data.y_train, spec, 2, data.users, test_users)
    assert before.test_source == after.test_source == "train"
    for old, new in zip(
        [*before.train, *before.test], [*after.train, *after.test], strict=True
    ):
        np.testing.assert_array_equal(old, new)
    if spec.client_test_fraction:
        # Carved from the clients' own train examples, as before.
        assert all(len(t) > 0 for t in after.test)
        assert not np.intersect1d(
            np.concatenate(after.train), np.concatenate(after.test)
        ).size


# --- pure functions on hand-made arrays -----------------------------------------

USERS = (np.array([0, 1, 2]), np.array([3, 4]), np.array([5]), np.array([6, 7]))
TEST_USERS = (np.array([4, 0]), np.array([], np.int64), np.array([1]), np.array([3]))


def test_make_partition_takes_the_chosen_users_tests_sorted() -> None:
    spec = PartitionSpec("natural", 4, client_test_fraction=0.5)
    part = make_partition(np.zeros(8, np.int64), spec, 0, USERS, TEST_USERS)
    assert [t.tolist() for t in part.train] == [[0, 1, 2], [3, 4], [5], [6, 7]]
    assert [t.tolist() for t in part.test] == [[0, 4], [], [1], [3]]
    assert all(t.dtype == np.int64 for t in part.test)


def test_test_users_errors_say_how_to_fix() -> None:
    labels, spec = np.zeros(8, np.int64), PartitionSpec("natural", 4)
    with pytest.raises(DataError, match="test_users has 3 entries but users has 4"):
        make_partition(labels, spec, 0, USERS, TEST_USERS[:3])
    shared = (np.array([1]), np.array([], np.int64), np.array([1]), np.array([2]))
    with pytest.raises(DataError, match="belongs to two users"):
        make_partition(labels, spec, 0, USERS, shared)
    negative = (np.array([-1]), *TEST_USERS[1:])
    with pytest.raises(DataError, match="non-negative integer"):
        make_partition(labels, spec, 0, USERS, negative)
    with pytest.raises(DataError, match="natural users"):
        make_partition(labels, spec, 0, None, TEST_USERS)
    with pytest.raises(DataError, match="test_source must be"):
        Partition((np.array([0]),), (np.array([0]),), "valid")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="one test array per client"):
        Partition((np.array([0]),), ())


def test_federated_data_checks_test_users_alignment() -> None:
    info = DatasetInfo("toy", 2, (3,), 1.0, None, None, False)
    x_train, y_train = np.zeros((8, 3), np.float32), np.zeros(8, np.int64)
    x_test, y_test = np.zeros((5, 3), np.float32), np.zeros(5, np.int64)
    ok = FederatedData(info, x_train, y_train, x_test, y_test, USERS, TEST_USERS)
    assert ok.test_users is TEST_USERS
    for users, test_users, match in [
        (None, TEST_USERS, "users is None"),
        (USERS, TEST_USERS[:3], "test_users has 3 entries but users has 4"),
        (USERS, (np.array([5]), *TEST_USERS[1:]), r"indices in \[5, 5\]"),
        (USERS, (np.array([0.0]), *TEST_USERS[1:]), "1-D int64"),
        (USERS, (np.array([3]), *TEST_USERS[1:]), "more than one test_users"),
    ]:
        with pytest.raises(DataError, match=match):
            FederatedData(info, x_train, y_train, x_test, y_test, users, test_users)
