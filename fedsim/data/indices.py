"""Per-client index arrays as one flat array plus offsets (CSR).

A partition of 100,000 clients held as 100,000 small arrays is 100,000 Python
objects to pickle, to put into Ray's object store and to unpickle in every
actor (1.5 s, 1.0 s per actor and 26 MB here). :class:`ClientIndices` holds the
same indices as two int64 arrays: client ``i`` owns ``flat[offsets[i]:
offsets[i + 1]]``. Two arrays pickle, travel and map zero-copy from the object
store like the dataset itself; ``indices[i]`` is a view, no copy.

Example
-------
>>> idx = ClientIndices.of([np.array([3, 5]), np.array([], np.int64), np.array([1])])
>>> len(idx), idx[0].tolist(), idx[1].tolist(), idx.sizes().tolist()
(3, [3, 5], [], [2, 0, 1])
>>> [a.tolist() for a in idx[1:]]
[[], [1]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from fedsim.data.base import DataError

__all__ = ["ClientIndices"]


@dataclass(frozen=True, eq=False)
class ClientIndices(Sequence[np.ndarray]):
    """A sequence of int64 index arrays, one per client, stored flat.

    ``eq=False``: compare the arrays, not the objects.

    Parameters
    ----------
    flat : np.ndarray
        Every client's indices, client after client, int64.
    offsets : np.ndarray
        ``(num_clients + 1,)`` int64, starting at 0, non-decreasing, ending at
        ``len(flat)``: client ``i`` owns ``flat[offsets[i]:offsets[i + 1]]``.

    Raises
    ------
    DataError
        ``offsets`` that do not cut ``flat`` into consecutive pieces.
    """

    flat: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        flat = np.asarray(self.flat)
        offsets = np.asarray(self.offsets)
        if flat.size == 0:
            flat = flat.astype(np.int64)
        if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
            raise DataError(
                f"client indices must be a 1-D integer array (got {flat.dtype} "
                f"with shape {flat.shape})"
            )
        if (
            offsets.ndim != 1
            or len(offsets) < 1
            or not np.issubdtype(offsets.dtype, np.integer)
            or offsets[0] != 0
            or offsets[-1] != len(flat)
            or (np.diff(offsets) < 0).any()
        ):
            raise DataError(
                f"offsets must rise from 0 to len(flat)={len(flat)} (got "
                f"{offsets[:5].tolist()}... of {len(offsets)}); build them with "
                f"ClientIndices.of(arrays)"
            )
        object.__setattr__(self, "flat", flat.astype(np.int64, copy=False))
        object.__setattr__(self, "offsets", offsets.astype(np.int64, copy=False))

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> ClientIndices:
        """Pack one index array per client."""
        parts = [np.asarray(a).reshape(-1) for a in arrays]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in parts], out=offsets[1:])
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(flat, offsets)

    @classmethod
    def group(cls, client_of: np.ndarray, num_clients: int) -> ClientIndices:
        """Each client's indices, ascending, from a per-example client id.

        ``client_of[j] = c`` puts example ``j`` with client ``c``; ``-1``
        leaves it out.

        >>> ClientIndices.group(np.array([1, -1, 0, 1]), 3).flat.tolist()
        [2, 0, 3]
        """
        used = np.flatnonzero(client_of >= 0)
        flat = used[np.argsort(client_of[used], kind="stable")]  # stable: ascending
        offsets = np.zeros(num_clients + 1, dtype=np.int64)
        np.cumsum(np.bincount(client_of[used], minlength=num_clients), out=offsets[1:])
        return cls(flat, offsets)

    def sizes(self) -> np.ndarray:
        """Number of indices of each client."""
        sizes: np.ndarray = np.diff(self.offsets)
        return sizes

    def owners(self) -> np.ndarray:
        """The client of each entry of :attr:`flat`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> ClientIndices: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | ClientIndices:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return ClientIndices.of([self[c] for c in range(start, stop, step)])
            stop = max(start, stop)
            lo, hi = self.offsets[start], self.offsets[stop]
            return ClientIndices(self.flat[lo:hi], self.offsets[start : stop + 1] - lo)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"client {i} out of range for {n} clients")
        i %= n
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        flat, offsets = self.flat, self.offsets
        for c in range(len(self)):
            yield flat[offsets[c] : offsets[c + 1]]
