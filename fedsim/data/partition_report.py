"""Describe a partition: JSON summary, label entropy and a clients x classes heatmap.

Exported by :mod:`fedsim.data`.

Example
-------
>>> import numpy as np
>>> from fedsim.data.partition import PartitionSpec, make_partition
>>> labels = np.array([0, 0, 1, 1])
>>> part = make_partition(labels, PartitionSpec("shards", 2, shards_per_client=1), 0)
>>> label_entropy(part, labels, 2).tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.data.base import DataError
from fedsim.data.indices import ClientIndices

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedsim.data.partition import Partition


def label_histograms(
    clients: Sequence[np.ndarray], labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Count labels per client: ``(num_clients, num_classes)`` int64.

    ``clients`` is a :class:`ClientIndices` (a partition's ``train``) or any
    sequence of index arrays.

    Examples
    --------
    >>> label_histograms((np.array([0, 1]), np.array([2])), np.array([0, 1, 1]), 2)
    array([[1, 1],
           [0, 1]])
    """
    if not isinstance(clients, ClientIndices):
        clients = ClientIndices.of(clients)
    labels = np.asarray(labels, dtype=np.int64)
    picked = labels[clients.flat]
    if picked.size and (picked.min() < 0 or picked.max() >= num_classes):
        raise DataError(
            f"labels range over [{picked.min()}, {picked.max()}] but num_classes is "
            f"{num_classes}; pass the dataset's info.num_classes"
        )
    counts = np.bincount(
        clients.owners() * num_classes + picked, minlength=len(clients) * num_classes
    )
    return counts.reshape(len(clients), num_classes)


def _entropy(histograms: np.ndarray) -> np.ndarray:
    totals = histograms.sum(axis=1, keepdims=True)
    p = histograms / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    result: np.ndarray = terms.sum(axis=1)
    return result


def label_entropy(
    partition: Partition, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Return each client's train-label entropy in nats (0 for an empty client).

    ``log(num_classes)`` means perfectly balanced labels, 0 a single label.
    """
    return _entropy(label_histograms(partition.train, labels, num_classes))


def partition_summary(
    partition: Partition, labels: np.ndarray, num_classes: int
) -> dict[str, Any]:
    """Describe a partition as a JSON-ready dict (written as ``partition.json``).

    Only train labels are counted: ``labels`` is the train split's, and personal
    test indices may point into the test split (``partition.test_source``), so
    test sets are described by their sizes alone.

    Returns
    -------
    dict
        ``num_clients``, ``num_classes``, ``num_train``, ``num_test`` (personal
        test examples), ``test_source`` (``"train"``: carved from the clients'
        train examples; ``"test"``: the users' own test split), ``min_train``,
        ``max_train``, ``mean_label_entropy``, ``label_histogram`` (all clients'
        train labels) and ``clients``: one ``{"client", "num_train", "num_test",
        "label_histogram", "label_entropy"}`` per client.

    Examples
    --------
    >>> from fedsim.data.partition import PartitionSpec, make_partition
    >>> labels = np.array([0, 1, 1, 1])
    >>> part = make_partition(labels, PartitionSpec("iid", 2), 0)
    >>> summary = partition_summary(part, labels, 2)
    >>> summary["num_train"], summary["label_histogram"]
    (4, [1, 3])
    """
    hist = label_histograms(partition.train, labels, num_classes)
    entropy = _entropy(hist)
    num_train = hist.sum(axis=1)
    num_test = partition.test.sizes()
    clients = [  # plain Python numbers, converted once per column
        {
            "client": i,
            "num_train": n_train,
            "num_test": n_test,
            "label_histogram": h,
            "label_entropy": e,
        }
        for i, (n_train, n_test, h, e) in enumerate(
            zip(
                num_train.tolist(),
                num_test.tolist(),
                hist.tolist(),
                entropy.tolist(),
                strict=True,
            )
        )
    ]
    return {
        "num_clients": len(hist),
        "num_classes": num_classes,
        "num_train": int(num_train.sum()),
        "num_test": int(num_test.sum()),
        "test_source": partition.test_source,
        "min_train": int(num_train.min()) if len(hist) else 0,
        "max_train": int(num_train.max()) if len(hist) else 0,
        "mean_label_entropy": float(entropy.mean()) if len(hist) else 0.0,
        "label_histogram": hist.sum(axis=0).tolist(),
        "clients": clients,
    }


def label_heatmap(
    partition: Partition, labels: np.ndarray, num_classes: int, max_clients: int = 100
) -> Figure:
    """Draw train-label counts of the first ``max_clients`` clients as a heatmap.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
    it is safe in headless workers; pass the figure to TensorBoard's ``add_figure``.

    Examples
    --------
    >>> from fedsim.data.partition import PartitionSpec, make_partition
    >>> labels = np.arange(20) % 4
    >>> part = make_partition(labels, PartitionSpec("iid", 5), seed=0)
    >>> fig = label_heatmap(part, labels, 4)
    >>> fig.axes[0].get_title()
    'Train labels per client (5 of 5 clients)'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = label_histograms(partition.train[:max_clients], labels, num_classes)
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(hist, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(
        f"Train labels per client ({len(hist)} of {partition.num_clients} clients)"
    )
    fig.colorbar(image, ax=ax, label="examples")
    return fig
