"""Split a train set across clients: iid, Dirichlet label skew, shards, natural users.

:func:`make_partition` is a pure function of ``(labels, spec, seed, users,
test_users)``: each scheme draws from its own ``np.random.default_rng([seed,
stream])``, so the same inputs give identical arrays. Clients are disjoint, never
empty, and together hold every train example (natural: every example of the chosen
users).

Schemes
-------
iid
    A seeded permutation cut into ``num_clients`` parts whose sizes differ by <= 1.
shards
    Sort by label (ties in seeded random order), cut into ``num_clients *
    shards_per_client`` near-equal shards, deal each client ``shards_per_client``
    random shards (McMahan et al.'s pathological split).
dirichlet
    Per class, client proportions ~ Dir(alpha) (the PFL-MoE / FedLab scheme used by
    the Flower FedPara baseline). Tiny-client rule: every client needs at least
    ``min(10, N // num_clients)`` examples. Draws are repeated with derived seeds up
    to :data:`DIRICHLET_TRIES` times; if all fall short, examples move from the
    largest clients (random examples, seeded) to the short ones, ascending client
    id, until each short client reaches the minimum.
natural
    ``num_clients`` of the dataset's users (FEMNIST writers, Shakespeare roles) by a
    seeded draw without replacement, kept in sorted user order.

Personal test sets
------------------
``Partition.test_source`` says which split ``Partition.test`` indexes.

* ``"test"``: a natural partition given ``test_users`` (LEAF's per-writer test
  split) gives each client its own writer's test examples, indices into the test
  split. ``client_test_fraction`` is ignored: nothing is carved out of training.
* ``"train"`` (every other case): with ``client_test_fraction = f > 0`` each client
  of ``n >= 2`` examples moves ``clip(round(f * n), 1, n - 1)`` random examples of
  its own into ``test``; a one-example client keeps it for training. With ``f = 0``
  every ``test`` entry is empty.

Example
-------
>>> labels = np.repeat(np.arange(4), 5)  # 20 examples, 4 classes
>>> part = make_partition(labels, PartitionSpec("shards", 4, shards_per_client=1), 0)
>>> sorted(len(set(labels[idx])) for idx in part.train)
[1, 1, 1, 1]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from fedsim.data.base import DataError
from fedsim.data.indices import ClientIndices

__all__ = [
    "DIRICHLET_TRIES",
    "ClientIndices",
    "Partition",
    "PartitionScheme",
    "PartitionSpec",
    "make_partition",
]

PartitionScheme = Literal["iid", "dirichlet", "shards", "natural"]
SCHEMES: tuple[str, ...] = get_args(PartitionScheme)
TestSource = Literal["train", "test"]
DIRICHLET_TRIES = 10
MIN_CLIENT_SIZE = 10
# Independent random streams per use, so adding a draw to one never shifts another.
_STREAM = {"iid": 1, "dirichlet": 2, "shards": 3, "natural": 4, "test": 5, "fix": 6}


@dataclass(frozen=True)
class PartitionSpec:
    """How to split the train set; checked on construction.

    Examples
    --------
    >>> PartitionSpec("dirichlet", num_clients=100, alpha=0.5).shards_per_client
    2
    """

    scheme: PartitionScheme
    num_clients: int
    alpha: float = 0.5
    shards_per_client: int = 2
    client_test_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise DataError(
                f"unknown partition scheme {self.scheme!r}; use one of {SCHEMES}"
            )
        if self.num_clients < 1:
            raise DataError(f"num_clients must be >= 1 (got {self.num_clients})")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise DataError(
                f"alpha must be a positive number (got {self.alpha}); small alpha "
                f"(0.1) gives strong label skew, large alpha (100) nearly iid"
            )
        if self.shards_per_client < 1:
            raise DataError(
                f"shards_per_client must be >= 1 (got {self.shards_per_client})"
            )
        if not 0.0 <= self.client_test_fraction < 1.0:
            raise DataError(
                f"client_test_fraction must be in [0, 1) (got "
                f"{self.client_test_fraction}); use e.g. 0.2 for 20% personal test data"
            )


@dataclass(frozen=True, eq=False)
class Partition:
    """Per-client sorted int64 train indices and personal test indices.

    ``eq=False``: compare the arrays, not the objects.

    Parameters
    ----------
    train : ClientIndices
        One array per client, indices into the train split (a sequence of
        arrays is packed with :meth:`ClientIndices.of`).
    test : ClientIndices
        One array per client (possibly empty), indices into the split named by
        ``test_source``.
    test_source : {"train", "test"}
        ``"train"``: ``test`` was carved out of each client's own train examples
        (``client_test_fraction``); ``"test"``: ``test`` is the client's own user's
        test examples (natural partition of LEAF data), indices into ``x_test``.

    Examples
    --------
    >>> part = Partition((np.array([0, 2]),), (np.array([1]),))
    >>> part.num_clients, part.test_source
    (1, 'train')
    """

    train: ClientIndices
    test: ClientIndices
    test_source: TestSource = "train"

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            value = getattr(self, name)
            if not isinstance(value, ClientIndices):
                object.__setattr__(self, name, ClientIndices.of(value))
        if self.test_source not in get_args(TestSource):
            raise DataError(
                f"test_source must be 'train' or 'test' (got {self.test_source!r})"
            )
        if len(self.test) != len(self.train):
            raise DataError(
                f"a partition needs one test array per client: {len(self.train)} "
                f"train arrays but {len(self.test)} test arrays"
            )

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.train)


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream], *extra])


def _iid(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    client_of = np.empty(n, dtype=np.int64)
    client_of[rng.permutation(n)] = np.arange(n, dtype=np.int64) * k // n
    return client_of


def _shards(labels: np.ndarray, spec: PartitionSpec, seed: int) -> np.ndarray:
    n, num_shards = len(labels), spec.num_clients * spec.shards_per_client
    if num_shards > n:
        raise DataError(
            f"cannot cut {n} examples into {spec.num_clients} clients x "
            f"{spec.shards_per_client} shards = {num_shards} non-empty shards; lower "
            f"num_clients or shards_per_client"
        )
    rng = _rng(seed, "shards")
    perm = rng.permutation(n)
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    shard_of = np.arange(n, dtype=np.int64) * num_shards // n
    owner = np.empty(num_shards, dtype=np.int64)
    owner[rng.permutation(num_shards)] = np.arange(num_shards) // spec.shards_per_client
    client_of = np.empty(n, dtype=np.int64)
    client_of[by_label] = owner[shard_of]
    return client_of


def _dirichlet_draw(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    client_of = np.empty(len(labels), dtype=np.int64)
    by_label = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    for members in np.split(by_label, np.cumsum(counts)[:-1]):
        if len(members) == 0:
            continue
        share = rng.dirichlet(np.full(k, alpha))
        cuts = np.minimum(
            (np.cumsum(share) * len(members)).astype(np.int64), len(members)
        )
        cuts[-1] = len(members)  # float round-off must not drop examples
        sizes = np.diff(cuts, prepend=0)
        client_of[rng.permutation(members)] = np.repeat(np.arange(k), sizes)
    return client_of


def _top_up(
    client_of: np.ndarray, k: int, minimum: int, rng: np.random.Generator
) -> None:
    """Move random examples from the largest clients to those below ``minimum``."""
    order = np.lexsort((rng.random(len(client_of)), client_of))  # random within client
    sizes = np.bincount(client_of, minlength=k)
    starts = np.cumsum(sizes) - sizes
    left = sizes.copy()  # donors give from the end of their (shuffled) group
    donors = [(-int(sizes[c]), int(c)) for c in np.flatnonzero(sizes > minimum)]
    heapq.heapify(donors)  # largest first, ties by lowest client id
    for short in np.flatnonzero(sizes < minimum):
        need = minimum - int(sizes[short])
        while need > 0:  # N >= k * minimum, so donors never run out
            _, donor = heapq.heappop(donors)
            give = min(need, int(left[donor]) - minimum)
            end = int(starts[donor] + left[donor])
            client_of[order[end - give : end]] = short
            left[donor] -= give
            need -= give
            if left[donor] > minimum:
                heapq.heappush(donors, (-int(left[donor]), donor))


def _dirichlet(labels: np.ndarray, spec: PartitionSpec, seed: int) -> np.ndarray:
    k = spec.num_clients
    minimum = min(MIN_CLIENT_SIZE, len(labels) // k)
    for attempt in range(DIRICHLET_TRIES):
        client_of = _dirichlet_draw(
            labels, k, spec.alpha, _rng(seed, "dirichlet", attempt)
        )
        if np.bincount(client_of, minlength=k).min() >= minimum:
            return client_of
    _top_up(client_of, k, minimum, _rng(seed, "fix"))
    return client_of


def _natural(
    n: int, users: tuple[np.ndarray, ...], k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example client ids and the chosen users (sorted), client i = chosen[i]."""
    if k > len(users):
        raise DataError(
            f"num_clients={k} but the dataset has only {len(users)} users; set "
            f"num_clients <= {len(users)} for the natural partition"
        )
    chosen = np.sort(_rng(seed, "natural").choice(len(users), size=k, replace=False))
    client_of = np.full(n, -1, dtype=np.int64)
    for client, user in enumerate(chosen):
        idx = np.asarray(users[user], dtype=np.int64)
        if (
            idx.size == 0
            or idx.min() < 0
            or idx.max() >= n
            or (client_of[idx] >= 0).any()
        ):
            raise DataError(
                f"user {user} has invalid indices (empty, outside [0, {n}) or shared "
                f"with another user); pass FederatedData.users from load_dataset"
            )
        client_of[idx] = client
    return client_of, chosen


def _own_tests(
    test_users: tuple[np.ndarray, ...], num_users: int, chosen: np.ndarray
) -> ClientIndices:
    """The chosen users' own test indices (into the test split), one per client."""
    if len(test_users) != num_users:
        raise DataError(
            f"test_users has {len(test_users)} entries but users has {num_users}; "
            f"pass FederatedData.users and FederatedData.test_users together"
        )
    tests = []
    for user in chosen:
        idx = np.asarray(test_users[user])
        if idx.size == 0:  # a writer without test examples: nothing to evaluate
            tests.append(np.zeros(0, dtype=np.int64))
            continue
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0:
            raise DataError(
                f"test_users[{user}] must be a 1-D array of non-negative integer "
                f"indices into the test split; pass FederatedData.test_users"
            )
        tests.append(np.sort(idx.astype(np.int64)))
    packed = ClientIndices.of(tests)  # its flat array: every client's examples
    if len(np.unique(packed.flat)) != len(packed.flat):
        raise DataError(
            "a test example belongs to two users in test_users; pass "
            "FederatedData.test_users from load_dataset"
        )
    return packed


def _carve_test(
    client_of: np.ndarray, k: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split each client's examples into (train, test) client-id arrays."""
    test_of = np.full_like(client_of, -1)
    if fraction == 0.0:
        return client_of, test_of
    used = np.flatnonzero(client_of >= 0)
    owner = client_of[used]
    order = used[np.lexsort((_rng(seed, "test").random(len(used)), owner))]
    sizes = np.bincount(owner, minlength=k)
    wanted = np.clip(np.floor(fraction * sizes + 0.5), 1, np.maximum(sizes - 1, 1))
    wanted[sizes < 2] = 0
    sorted_owner = client_of[order]
    rank = np.arange(len(order)) - (np.cumsum(sizes) - sizes)[sorted_owner]
    picked = order[rank < wanted[sorted_owner]]
    test_of[picked] = client_of[picked]
    train_of = client_of.copy()
    train_of[picked] = -1
    return train_of, test_of


def make_partition(
    labels: np.ndarray,
    spec: PartitionSpec,
    seed: int,
    users: tuple[np.ndarray, ...] | None = None,
    test_users: tuple[np.ndarray, ...] | None = None,
) -> Partition:
    """Split train ``labels`` across ``spec.num_clients`` clients.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` non-negative integer train labels.
    spec : PartitionSpec
        Scheme and its settings.
    seed : int
        Non-negative seed; same inputs give identical partitions.
    users : tuple of np.ndarray or None
        Natural users (``FederatedData.users``); required by ``"natural"`` only.
    test_users : tuple of np.ndarray or None
        The users' own test indices (``FederatedData.test_users``), aligned with
        ``users``. Used by ``"natural"`` only: each client's ``test`` becomes its
        user's test examples (``test_source="test"``) and
        ``spec.client_test_fraction`` is not applied. Ignored by other schemes.

    Returns
    -------
    Partition
        Sorted int64 train (and personal test) indices per client;
        ``test_source`` says which split ``test`` indexes.

    Raises
    ------
    DataError
        Bad labels or seed, more clients than examples (or users), shards that
        cannot be formed, natural without users, ``test_users`` not aligned with
        ``users``.

    Examples
    --------
    >>> part = make_partition(np.arange(10) % 2, PartitionSpec("iid", 3), seed=0)
    >>> [len(idx) for idx in part.train]
    [4, 3, 3]

    Natural users with their own test examples: nothing is carved out of training.

    >>> users = (np.array([0, 1]), np.array([2, 3]), np.array([4]))
    >>> test_users = (np.array([2]), np.array([0, 1]), np.array([], np.int64))
    >>> spec = PartitionSpec("natural", 3, client_test_fraction=0.5)
    >>> part = make_partition(np.zeros(5, np.int64), spec, 0, users, test_users)
    >>> part.test_source, [idx.tolist() for idx in part.test]
    ('test', [[2], [0, 1], []])
    >>> [idx.tolist() for idx in part.train]
    [[0, 1], [2, 3], [4]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array (got {labels.dtype} "
            f"with shape {labels.shape}); pass FederatedData.y_train"
        )
    if labels.size and labels.min() < 0:
        raise DataError("labels must be >= 0; pass FederatedData.y_train")
    if seed < 0:
        raise DataError(f"seed must be >= 0 (got {seed})")
    n, k = len(labels), spec.num_clients
    if k > n:
        raise DataError(
            f"num_clients={k} exceeds the {n} train examples; every client needs at "
            f"least one example, so set num_clients <= {n}"
        )
    labels = labels.astype(np.int64, copy=False)
    if spec.scheme == "iid":
        client_of = _iid(n, k, _rng(seed, "iid"))
    elif spec.scheme == "shards":
        client_of = _shards(labels, spec, seed)
    elif spec.scheme == "dirichlet":
        client_of = _dirichlet(labels, spec, seed)
    else:
        if users is None:
            raise DataError(
                "the natural partition needs a dataset with natural users (femnist, "
                "shakespeare); use iid, dirichlet or shards for this dataset"
            )
        client_of, chosen = _natural(n, users, k, seed)
        if test_users is not None:
            # The writers' own test examples are the natural personal test sets;
            # carving train examples as well would only shrink training.
            return Partition(
                train=ClientIndices.group(client_of, k),
                test=_own_tests(test_users, len(users), chosen),
                test_source="test",
            )
    train_of, test_of = _carve_test(client_of, k, spec.client_test_fraction, seed)
    return Partition(
        train=ClientIndices.group(train_of, k), test=ClientIndices.group(test_of, k)
    )
