from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsim.data import (
    DataError,
    Partition,
    PartitionSpec,
    label_entropy,
    label_heatmap,
    make_partition,
    partition_summary,
)

RNG = np.random.default_rng(123)
LABELS = RNG.integers(0, 10, size=3000)
USERS = tuple(np.sort(part) for part in np.array_split(RNG.permutation(3000), 40))


def _spec(scheme: str, k: int = 20, **kw: float) -> PartitionSpec:
    return PartitionSpec(scheme, k, **kw)  # type: ignore[arg-type]


def _check_valid(part: Partition, n: int, k: int) -> np.ndarray:
    """Disjoint, non-empty, sorted int64 clients; returns all indices."""
    assert part.num_clients == len(part.test) == k
    for idx in part.train:
        assert idx.dtype == np.int64 and len(idx) > 0
        assert np.all(np.diff(idx) > 0)
    every = np.concatenate([*part.train, *part.test])
    assert len(np.unique(every)) == len(every)  # disjoint (train and test alike)
    assert every.min() >= 0 and every.max() < n
    return every


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "natural"])
def test_scheme_properties(scheme: str) -> None:
    spec = _spec(scheme)
    part = make_partition(LABELS, spec, seed=0, users=USERS)
    every = _check_valid(part, len(LABELS), 20)
    if scheme == "natural":
        chosen = [
            next(i for i, u in enumerate(USERS) if u[0] == idx[0]) for idx in part.train
        ]
        assert chosen == sorted(chosen)  # sorted user order
        for idx, user in zip(part.train, chosen, strict=True):
            np.testing.assert_array_equal(idx, USERS[user])
    else:
        assert len(every) == len(LABELS)  # covering
    again = make_partition(LABELS, spec, seed=0, users=USERS)
    other = make_partition(LABELS, spec, seed=1, users=USERS)
    for a, b in zip(part.train, again.train, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b) for a, b in zip(part.train, other.train, strict=True)
    )


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(idx) for idx in make_partition(LABELS, _spec("iid", 7), 0).train]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 3000


def test_natural_with_all_users_keeps_every_user() -> None:
    part = make_partition(LABELS, _spec("natural", 40), 3, users=USERS)
    for idx, user in zip(part.train, USERS, strict=True):
        np.testing.assert_array_equal(idx, user)


def test_shards_aligned_with_classes_give_at_most_two_labels() -> None:
    labels = np.repeat(np.arange(10), 600)  # McMahan: 100 clients x 2 shards of 30
    part = make_partition(labels, _spec("shards", 100, shards_per_client=2), seed=5)
    _check_valid(part, 6000, 100)
    assert max(len(np.unique(labels[idx])) for idx in part.train) <= 2
    assert {len(idx) for idx in part.train} == {60}


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    entropy = {
        alpha: label_entropy(
            make_partition(labels, _spec("dirichlet", 20, alpha=alpha), 0), labels, 10
        ).mean()
        for alpha in (0.1, 0.5, 100.0)
    }
    assert entropy[0.1] < entropy[0.5] < entropy[100.0]
    assert entropy[100.0] > 0.95 * math.log(10)


@pytest.mark.parametrize(
    ("n", "k", "minimum"), [(1000, 100, 10), (250, 100, 2), (40, 40, 1)]
)
def test_dirichlet_tiny_client_rule(n: int, k: int, minimum: int) -> None:
    # alpha 0.01 leaves most clients empty on every draw, forcing the top-up.
    labels = np.arange(n) % 10
    part = make_partition(labels, _spec("dirichlet", k, alpha=0.01), seed=2)
    every = _check_valid(part, n, k)
    assert len(every) == n
    assert min(len(idx) for idx in part.train) == minimum
    again = make_partition(labels, _spec("dirichlet", k, alpha=0.01), seed=2)
    assert all(
        np.array_equal(a, b) for a, b in zip(part.train, again.train, strict=True)
    )


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "natural"])
def test_client_test_fraction_carves_each_client(scheme: str) -> None:
    whole = make_partition(LABELS, _spec(scheme), 4, users=USERS)
    part = make_partition(
        LABELS, _spec(scheme, client_test_fraction=0.25), 4, users=USERS
    )
    _check_valid(part, 3000, 20)
    for full, train, test in zip(whole.train, part.train, part.test, strict=True):
        assert len(test) == max(
            1, min(len(full) - 1, math.floor(0.25 * len(full) + 0.5))
        )
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), full)
    assert all(len(t) == 0 for t in whole.test)


def test_client_test_fraction_leaves_single_example_for_training() -> None:
    part = make_partition(
        np.arange(6) % 2, _spec("iid", 6, client_test_fraction=0.5), 0
    )
    assert [len(t) for t in part.train] == [1] * 6 and all(
        len(t) == 0 for t in part.test
    )
    part = make_partition(
        np.arange(4) % 2, _spec("iid", 2, client_test_fraction=0.1), 0
    )
    assert [len(t) for t in part.test] == [1, 1]  # at least one when n >= 2


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: make_partition(LABELS[:5], _spec("iid", 6), 0), "num_clients <= 5"),
        (lambda: make_partition(LABELS[:9], _spec("shards", 5), 0), "non-empty shards"),
        (lambda: _spec("dirichlet", alpha=0.0), "alpha must be a positive"),
        (lambda: _spec("dirichlet", alpha=-1.0), "alpha must be a positive"),
        (lambda: make_partition(LABELS, _spec("natural"), 0), "natural users"),
        (
            lambda: make_partition(LABELS, _spec("natural", 41), 0, USERS),
            "only 40 users",
        ),
        (lambda: _spec("iid", client_test_fraction=1.0), r"in \[0, 1\)"),
        (lambda: _spec("iid", client_test_fraction=-0.1), r"in \[0, 1\)"),
        (lambda: _spec("random"), "unknown partition scheme"),
        (lambda: _spec("iid", 0), "num_clients must be >= 1"),
        (lambda: _spec("iid", shards_per_client=0), "shards_per_client"),
        (lambda: make_partition(LABELS, _spec("iid"), -1), "seed must be >= 0"),
        (lambda: make_partition(LABELS * 0.5, _spec("iid"), 0), "integer array"),
        (lambda: make_partition(LABELS - 1, _spec("iid"), 0), "labels must be >= 0"),
        (
            lambda: make_partition(
                LABELS, _spec("natural", 2), 0, (np.arange(5), np.arange(3))
            ),
            "shared with another user",
        ),
    ],
)
def test_errors_say_how_to_fix(make: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_ten_thousand_clients(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=50_000)
    part = make_partition(labels, _spec(scheme, 10_000), seed=0)
    assert part.num_clients == 10_000
    assert sum(len(idx) for idx in part.train) == 50_000
    assert min(len(idx) for idx in part.train) >= 5  # min(10, 50_000 // 10_000)


def test_summary_entropy_and_heatmap() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    part = Partition(
        train=(np.array([0, 1]), np.array([2, 4, 6])),
        test=(np.array([3]), np.array([], np.int64)),
    )
    entropy = label_entropy(part, labels, 3)
    np.testing.assert_allclose(entropy, [0.0, math.log(3)])
    summary = partition_summary(part, labels, 3)
    json.dumps(summary)  # JSON-ready: plain ints, floats and lists
    assert summary["num_train"] == 5 and summary["num_test"] == 1
    assert summary["label_histogram"] == [3, 1, 1]
    assert summary["clients"][1] == {
        "client": 1,
        "num_train": 3,
        "num_test": 0,
        "label_histogram": [1, 1, 1],
        "label_entropy": pytest.approx(math.log(3)),
    }
    with pytest.raises(DataError, match="num_classes"):
        partition_summary(part, labels, 2)
    big = make_partition(LABELS, _spec("dirichlet", 150), 0)
    fig = label_heatmap(big, LABELS, 10, max_clients=100)
    assert fig.axes[0].get_title() == "Train labels per client (100 of 150 clients)"
    counts = fig.axes[0].images[0].get_array()
    assert counts is not None and counts.shape == (100, 10)
    fig.canvas.draw()  # renders headless
