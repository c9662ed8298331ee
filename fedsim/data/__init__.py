"""Datasets, client partitions and batch preprocessing for fedsim.

This package never imports Ray or Lightning.

Example
-------
>>> from fedsim.data import PartitionSpec, load_dataset, make_partition
>>> data = load_dataset("digits", None)
>>> part = make_partition(data.y_train, PartitionSpec("dirichlet", 10), seed=0)
>>> part.num_clients, sum(len(idx) for idx in part.train) == data.num_train
(10, True)
"""

from fedsim.data.base import DataError, DatasetInfo, DatasetNotFoundError, FederatedData
from fedsim.data.download import download
from fedsim.data.indices import ClientIndices
from fedsim.data.loaders import DATASETS, check_available, dataset_info, load_dataset
from fedsim.data.partition import (
    Partition,
    PartitionScheme,
    PartitionSpec,
    make_partition,
)
from fedsim.data.partition_report import label_entropy, label_heatmap, partition_summary
from fedsim.data.request import DataRequest

__all__ = [
    "DATASETS",
    "ClientIndices",
    "DataError",
    "DataRequest",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FederatedData",
    "Partition",
    "PartitionScheme",
    "PartitionSpec",
    "check_available",
    "dataset_info",
    "download",
    "label_entropy",
    "label_heatmap",
    "load_dataset",
    "make_partition",
    "partition_summary",
    "prepare_batch",
]


def __getattr__(name: str) -> object:
    # prepare_batch needs torch; importing it lazily keeps `import fedsim.data`
    # (and so the CLI's config and data checks) free of torch's import time.
    if name == "prepare_batch":
        from fedsim.data.transforms import prepare_batch

        return prepare_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
