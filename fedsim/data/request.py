"""A run's data as a value: which dataset, how it is split, and the seed.

A :class:`DataRequest` is small and picklable, so the data can be loaded
wherever it should live: in this process, or in a Ray task whose result goes
straight to the object store (see ``Backend.load``), so the driver never holds
the images.

Example
-------
>>> request = DataRequest("digits", None, PartitionSpec("iid", 4), seed=0)
>>> data, part = request()
>>> part.num_clients, int(part.train.sizes().sum()) == data.num_train
(4, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsim.data.base import DataError, FederatedData
from fedsim.data.loaders import dataset_info, load_dataset
from fedsim.data.partition import Partition, PartitionSpec, make_partition

__all__ = ["DataRequest"]


@dataclass(frozen=True)
class DataRequest:
    """Load dataset ``name`` from ``root`` and split it by ``spec``.

    Calling it is a pure function of its fields: the same request gives the
    same arrays and the same partition on any node.
    """

    name: str
    root: str | None
    spec: PartitionSpec
    seed: int
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000

    def approx_bytes(self) -> float:
        """Bytes of the loaded arrays, known before loading; ``inf`` if not.

        Generated data (digits, synthetic_cifar) is sized exactly enough; data
        read from files counts as large.

        >>> DataRequest("synthetic_cifar", None, PartitionSpec("iid", 4), 0,
        ...             synthetic_train=1000, synthetic_test=0).approx_bytes()
        3080000
        """
        if self.name == "digits":
            return 1797 * (64 * 8 + 8)  # sklearn's 1,797 float images
        if self.name == "synthetic_cifar":
            image = math.prod(dataset_info(self.name).input_shape)  # uint8
            return (self.synthetic_train + self.synthetic_test) * (image + 8)
        return math.inf

    def check_fits(self, memory: float) -> None:
        """Refuse generated data larger than ``memory`` bytes, before making it.

        >>> DataRequest("synthetic_cifar", None, PartitionSpec("iid", 4), 0,
        ...             synthetic_train=10**7).check_fits(16e9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fedsim.data.base.DataError: ... need about 30.8 GB of memory, more than ...
        """
        need = self.approx_bytes()
        if math.isfinite(need) and need > memory:
            raise DataError(
                f"data.synthetic_train={self.synthetic_train} and "
                f"data.synthetic_test={self.synthetic_test} need about "
                f"{need / 1e9:.1f} GB of memory, more than the {memory / 1e9:.1f} GB "
                "here; make them smaller"
            )

    def __call__(self) -> tuple[FederatedData, Partition]:
        """The dataset and its partition."""
        data = load_dataset(
            self.name,
            self.root,
            synthetic_train=self.synthetic_train,
            synthetic_test=self.synthetic_test,
            seed=self.seed,
        )
        partition = make_partition(
            data.y_train, self.spec, self.seed, data.users, test_users=data.test_users
        )
        return data, partition
