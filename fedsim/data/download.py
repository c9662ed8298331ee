"""Fetch datasets into the layout :func:`fedsim.data.load_dataset` reads.

CIFAR-10/100 and MNIST use torchvision's downloaders, CINIC-10 its tarball. FEMNIST
and Shakespeare must be built with LEAF's own scripts (see :data:`LEAF_HELP`).
``digits`` ships with scikit-learn and ``synthetic_cifar`` is generated, so neither
downloads anything.

Example
-------
>>> download("digits", "/tmp/data")  # nothing to fetch
PosixPath('/tmp/data')
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedsim.data.base import DataError
from fedsim.data.cifar import CINIC10_DIR
from fedsim.data.loaders import check_available, dataset_info

CINIC10_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"

LEAF_HELP = """\
{name} is built with the LEAF benchmark scripts, not downloaded by fedsim:

    git clone https://github.com/TalwalkarLab/leaf
    cd leaf/data/{name}
    ./preprocess.sh {flags}

Then copy (or link) the result so the json files sit at:

    {root}/{name}/data/train/*.json
    {root}/{name}/data/test/*.json

(`-s niid` keeps LEAF's natural users, `--sf 1.0` the full data, `-k 0` users of any
size, `-t sample` splits each user's samples into train and test.)"""
_LEAF_FLAGS = {
    "femnist": "-s niid --sf 1.0 -k 0 -t sample",
    "shakespeare": "-s niid --sf 1.0 -k 0 -t sample",
}

log = logging.getLogger(__name__)


def download(name: str, root: str | Path) -> Path:
    """Download dataset ``name`` into ``root`` and return ``root``.

    Parameters
    ----------
    name : str
        One of :data:`fedsim.data.DATASETS`.
    root : str or Path
        Target folder; pass the same folder as ``data.root``.

    Returns
    -------
    Path
        ``root``, ready for :func:`fedsim.data.load_dataset`.

    Raises
    ------
    DataError
        ``name`` is unknown, or is a LEAF dataset (the message lists the LEAF
        commands and the folder layout to produce), or the download failed
        (offline, say).

    Examples
    --------
    >>> download("synthetic_cifar", "/tmp/data")
    PosixPath('/tmp/data')
    """
    dataset_info(name)  # validates the name
    base = Path(root).expanduser()
    if name in ("digits", "synthetic_cifar"):
        log.info("%s needs no download (generated or bundled)", name)
        return base
    if name in _LEAF_FLAGS:
        raise DataError(LEAF_HELP.format(name=name, flags=_LEAF_FLAGS[name], root=base))
    base.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(name, base)
    except OSError as exc:  # URLError, timeouts, a full disk: say what to do
        raise DataError(
            f"could not download {name} into {base}: {exc}. Run this where the "
            "machine reaches the internet, or copy the dataset's files there "
            "(see README, data table)"
        ) from exc
    check_available(name, base)  # the layout must now be complete
    return base


def _fetch(name: str, base: Path) -> None:
    # torchvision is imported here only: it is slow to import and needs a network.
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    if name == "cifar10":
        for train in (True, False):
            datasets.CIFAR10(str(base), train=train, download=True)
    elif name == "cifar100":
        for train in (True, False):
            datasets.CIFAR100(str(base), train=train, download=True)
    elif name == "mnist":
        for train in (True, False):
            datasets.MNIST(str(base), train=train, download=True)
    elif name == "cinic10":
        download_and_extract_archive(
            CINIC10_URL,
            download_root=str(base),
            extract_root=str(base / CINIC10_DIR),
            remove_finished=True,
        )
