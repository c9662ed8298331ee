"""ClientIndices: per-client index arrays stored flat (CSR)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fedsim.data import DataError
from fedsim.data.indices import ClientIndices

ARRAYS = [np.array([4, 7]), np.array([], np.int64), np.array([0]), np.array([1, 2, 9])]


def test_packs_and_gives_back_each_clients_array() -> None:
    idx = ClientIndices.of(ARRAYS)
    assert len(idx) == 4 and idx.flat.dtype == idx.offsets.dtype == np.int64
    assert [a.tolist() for a in idx] == [a.tolist() for a in ARRAYS]
    assert [idx[c].tolist() for c in range(4)] == [a.tolist() for a in ARRAYS]
    assert idx[-1].tolist() == [1, 2, 9]
    assert idx.sizes().tolist() == [2, 0, 1, 3]
    assert idx.owners().tolist() == [0, 0, 2, 3, 3, 3]
    with pytest.raises(IndexError):
        idx[4]


@pytest.mark.parametrize(
    "cut", [slice(None, 2), slice(1, 3), slice(2, None), slice(3, 1), slice(0, 4, 2)]
)
def test_slices_like_a_list_of_arrays(cut: slice) -> None:
    idx = ClientIndices.of(ARRAYS)
    assert [a.tolist() for a in idx[cut]] == [a.tolist() for a in ARRAYS[cut]]


def test_group_matches_a_loop_over_clients() -> None:
    rng = np.random.default_rng(0)
    client_of = rng.integers(-1, 5, size=200)
    idx = ClientIndices.group(client_of, 6)
    assert len(idx) == 6
    for c in range(6):
        expected = [j for j, owner in enumerate(client_of) if owner == c]
        assert idx[c].tolist() == expected


@pytest.mark.parametrize(
    "offsets", [[1, 3], [0, 2], [0, 3, 2, 3], [], [[0, 3]]], ids=str
)
def test_offsets_that_do_not_cut_flat_are_refused(offsets: list[int]) -> None:
    with pytest.raises(DataError, match="offsets must rise from 0"):
        ClientIndices(np.arange(3), np.array(offsets, dtype=np.int64))


def test_pickles_as_two_arrays_not_one_object_per_client() -> None:
    many = [np.arange(c, c + 2) for c in range(0, 20_000, 2)]  # 10,000 clients
    idx = ClientIndices.of(many)
    blob = pickle.dumps(idx, protocol=5)
    assert len(blob) < idx.flat.nbytes + idx.offsets.nbytes + 1_000
    # a tuple of arrays pickles a header (~17 bytes here) per client on top
    assert len(pickle.dumps(tuple(many), protocol=5)) > len(blob) + 10_000 * 10
    again = pickle.loads(blob)
    assert np.array_equal(again.flat, idx.flat)
    assert np.array_equal(again.offsets, idx.offsets)
