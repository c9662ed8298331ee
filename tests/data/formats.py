"""Writers of tiny datasets in each real on-disk format, for tests anywhere.

Each ``write_*`` function returns the root to pass as ``data.root``. Image writers
are deterministic: :func:`image_arrays` with the same arguments returns exactly
the pixels and labels they wrote, in the order the loader returns them (CINIC-10:
see :func:`cinic_order`). LEAF writers produce plain JSON that tests can read back.

>>> from pathlib import Path
>>> import tempfile
>>> root = write_cifar10(Path(tempfile.mkdtemp()), n_train=10, n_test=5, seed=0)
>>> from fedsim.data import load_dataset
>>> load_dataset("cifar10", root).x_train.shape
(10, 3, 32, 32)
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedsim.data.cifar import CINIC10_CLASSES
from fedsim.data.leaf import ALL_LETTERS

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def image_arrays(
    n_train: int, n_test: int, seed: int, shape: tuple[int, ...], num_classes: int
) -> Arrays:
    """Random uint8 images with balanced shuffled labels (train, then test)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for n in (n_train, n_test):
        out.append(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
        out.append(rng.permutation(np.arange(n, dtype=np.int64) % num_classes))
    return out[0], out[1], out[2], out[3]


def _pickle(path: Path, batch: dict[bytes, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def write_cifar10(
    root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches + test_batch)."""
    x_tr, y_tr, x_te, y_te = image_arrays(n_train, n_test, seed, (3, 32, 32), 10)
    folder = root / "cifar-10-batches-py"
    parts = np.array_split(np.arange(n_train), 5)
    for i, part in enumerate(parts, start=1):
        _pickle(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": y_tr[part].tolist(),
                b"data": x_tr[part].reshape(len(part), -1),
                b"filenames": [f"img_{j}.png".encode() for j in part],
            },
        )
    _pickle(
        folder / "test_batch",
        {b"labels": y_te.tolist(), b"data": x_te.reshape(n_test, -1)},
    )
    _pickle(
        folder / "batches.meta", {b"label_names": [c.encode() for c in CINIC10_CLASSES]}
    )
    return root


def write_cifar100(
    root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0
) -> Path:
    """Write ``root/cifar-100-python/{train,test}`` with fine and coarse labels."""
    x_tr, y_tr, x_te, y_te = image_arrays(n_train, n_test, seed, (3, 32, 32), 100)
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        _pickle(
            root / "cifar-100-python" / name,
            {
                b"fine_labels": y.tolist(),
                b"coarse_labels": (y // 5).tolist(),
                b"data": x.reshape(len(x), -1),
            },
        )
    return root


def cinic_order(y: np.ndarray) -> np.ndarray:
    """Order in which the CINIC-10 loader returns :func:`image_arrays` examples."""
    return np.argsort(y, kind="stable")  # class folders in order, names sorted


def write_cinic10(
    root: Path, n_train: int = 30, n_test: int = 20, seed: int = 0
) -> Path:
    """Write ``root/CINIC-10/{train,valid,test}/<class>/*.png`` (32x32 RGB)."""
    x_tr, y_tr, x_te, y_te = image_arrays(n_train, n_test, seed, (3, 32, 32), 10)
    x_va, y_va = x_te[:3], y_te[:3]  # the loader ignores valid
    for split, x, y in (
        ("train", x_tr, y_tr),
        ("valid", x_va, y_va),
        ("test", x_te, y_te),
    ):
        for name in CINIC10_CLASSES:
            (root / "CINIC-10" / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            path = (
                root / "CINIC-10" / split / CINIC10_CLASSES[label] / f"img_{i:05d}.png"
            )
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an idx file."""
    header = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0, gz: bool = False
) -> Path:
    """Write torchvision's ``root/MNIST/raw`` idx files (``.gz`` when ``gz``)."""
    x_tr, y_tr, x_te, y_te = image_arrays(n_train, n_test, seed, (1, 28, 28), 10)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": x_tr[:, 0],
        "train-labels-idx1-ubyte": y_tr,
        "t10k-images-idx3-ubyte": x_te[:, 0],
        "t10k-labels-idx1-ubyte": y_te,
    }
    for name, array in files.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return root


def write_leaf_json(path: Path, user_data: dict[str, dict[str, list[Any]]]) -> None:
    """Write one LEAF json file holding ``user_data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    users = list(user_data)
    blob = {
        "users": users,
        "num_samples": [len(user_data[u]["y"]) for u in users],
        "user_data": user_data,
    }
    path.write_text(json.dumps(blob), encoding="utf-8")


def _write_leaf(
    root: Path, name: str, users: list[str], make: Any, rng: np.random.Generator
) -> None:
    # Users in shuffled order over two files, as LEAF's sharded output does.
    shuffled = [users[i] for i in rng.permutation(len(users))]
    half = (len(users) + 1) // 2
    for split in ("train", "test"):
        for part, chunk in enumerate((shuffled[:half], shuffled[half:])):
            if not chunk:
                continue
            sizes = (
                rng.integers(2, 6, size=len(chunk))
                if split == "train"
                else [1] * len(chunk)
            )
            data = {u: make(int(n), rng) for u, n in zip(chunk, sizes, strict=True)}
            path = root / name / "data" / split / f"all_data_{part}_niid_{split}.json"
            write_leaf_json(path, data)


def _femnist_user(n: int, rng: np.random.Generator) -> dict[str, list[Any]]:
    pixels = rng.integers(0, 256, size=(n, 784)) / 255.0
    return {"x": pixels.tolist(), "y": rng.integers(0, 62, size=n).tolist()}


def _shakespeare_user(n: int, rng: np.random.Generator) -> dict[str, list[Any]]:
    ids = rng.integers(0, len(ALL_LETTERS), size=(n, 81))
    lines = ["".join(ALL_LETTERS[i] for i in row) for row in ids]
    return {"x": [line[:80] for line in lines], "y": [line[80] for line in lines]}


def write_femnist_leaf(root: Path, num_users: int = 5, seed: int = 0) -> Path:
    """Write LEAF FEMNIST json: 2-5 train and 1 test example per writer."""
    rng = np.random.default_rng(seed)
    users = [f"f{int(rng.integers(0, 4000)):04d}_{i:02d}" for i in range(num_users)]
    _write_leaf(root, "femnist", users, _femnist_user, rng)
    return root


def write_shakespeare_leaf(root: Path, num_users: int = 4, seed: int = 0) -> Path:
    """Write LEAF Shakespeare json: 2-5 train and 1 test example per role."""
    rng = np.random.default_rng(seed)
    users = [f"THE_PLAY_{i}_ROLE_{int(rng.integers(0, 100))}" for i in range(num_users)]
    _write_leaf(root, "shakespeare", users, _shakespeare_user, rng)
    return root


def read_leaf(root: Path, name: str, split: str) -> dict[str, dict[str, list[Any]]]:
    """Merge every user's data of a written LEAF split (for expected values)."""
    merged: dict[str, dict[str, list[Any]]] = {}
    for path in sorted((root / name / "data" / split).glob("*.json")):
        merged.update(json.loads(path.read_text(encoding="utf-8"))["user_data"])
    return merged
