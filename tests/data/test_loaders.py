from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import (
    DATASETS,
    DataError,
    DatasetInfo,
    DatasetNotFoundError,
    FederatedData,
    check_available,
    dataset_info,
    download,
    load_dataset,
)
from fedsim.data import cifar as cifar_module
from fedsim.data.leaf import ALL_LETTERS
from tests.data import formats

FILE_DATASETS = ["cifar10", "cifar100", "cinic10", "mnist", "femnist", "shakespeare"]


# --- registry ---------------------------------------------------------------------


def test_dataset_info_covers_every_name_without_files() -> None:
    shapes = {name: dataset_info(name).input_shape for name in DATASETS}
    assert shapes["digits"] == (1, 8, 8)
    assert shapes["shakespeare"] == (80,)
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert dataset_info("femnist").num_classes == 62
    assert dataset_info("shakespeare").num_classes == 80
    assert dataset_info("shakespeare").integer_inputs
    assert [n for n in DATASETS if dataset_info(n).augment] == [
        "cifar10",
        "cifar100",
        "cinic10",
        "synthetic_cifar",
    ]


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        dataset_info("cifar-10")
    with pytest.raises(DataError, match="choose one of"):
        load_dataset("imagenet", None)


def test_federated_data_rejects_inconsistent_arrays() -> None:
    info = DatasetInfo("toy", 3, (2,), 1.0, None, None, False)
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0])
    FederatedData(info, x, y, x, y)
    with pytest.raises(DataError, match="one example must have shape"):
        FederatedData(info, np.zeros((4, 3)), y, x, y)
    with pytest.raises(DataError, match="one label per example"):
        FederatedData(info, x, y[:3], x, y)
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\)"):
        FederatedData(info, x, y + 1, x, y)


# --- built-in datasets ------------------------------------------------------------


def test_digits_fixed_stratified_split() -> None:
    a = load_dataset("digits", None, seed=0)
    b = load_dataset("digits", "/ignored", seed=7)
    assert a.num_train + a.num_test == 1797
    assert a.info.num_classes == 10 and a.info.scale == 16 and a.info.mean is None
    assert a.x_train.dtype == np.float32 and a.x_train.shape[1:] == (1, 8, 8)
    assert a.y_train.dtype == np.int64
    assert float(a.x_train.max()) == 16.0
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    per_class = np.bincount(a.y_test) / (np.bincount(a.y_test) + np.bincount(a.y_train))
    assert np.all(np.abs(per_class - 0.2) < 0.01)


def test_synthetic_cifar_is_seeded_and_learnable() -> None:
    big = load_dataset(
        "synthetic_cifar", None, synthetic_train=50_000, synthetic_test=10
    )
    assert big.x_train.shape == (50_000, 3, 32, 32) and big.x_train.dtype == np.uint8
    assert np.bincount(big.y_train).tolist() == [5000] * 10
    del big

    def make(seed: int) -> FederatedData:
        return load_dataset(
            "synthetic_cifar", None, synthetic_train=2000, synthetic_test=500, seed=seed
        )

    a, b, c = make(1), make(1), make(2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    # Nearest class mean on raw pixels: far above chance (10%).
    flat = a.x_train.reshape(len(a.x_train), -1).astype(np.float32)
    means = np.stack([flat[a.y_train == k].mean(0) for k in range(10)])
    test = a.x_test.reshape(len(a.x_test), -1).astype(np.float32)
    pred = ((test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a.y_test).mean() > 0.9
    with pytest.raises(DataError, match="synthetic_train >= 1"):
        load_dataset("synthetic_cifar", None, synthetic_train=0)


# --- file datasets: exact round trips ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "writer", "classes"),
    [("cifar10", formats.write_cifar10, 10), ("cifar100", formats.write_cifar100, 100)],
)
def test_cifar_round_trip(
    tmp_path: Path, name: str, writer: object, classes: int
) -> None:
    root = writer(tmp_path, n_train=23, n_test=7, seed=3)  # type: ignore[operator]
    data = load_dataset(name, root)
    x_tr, y_tr, x_te, y_te = formats.image_arrays(23, 7, 3, (3, 32, 32), classes)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.x_train, x_tr)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.x_test, x_te)
    np.testing.assert_array_equal(data.y_test, y_te)
    assert data.info.num_classes == classes and data.users is None


def test_cifar_bad_pickle_raises(tmp_path: Path) -> None:
    root = formats.write_cifar10(tmp_path, 10, 5)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="no 'data' entry"):
        load_dataset("cifar10", root)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        load_dataset("cifar10", root)


def test_cinic10_round_trip_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = formats.write_cinic10(tmp_path, n_train=24, n_test=12, seed=5)
    x_tr, y_tr, x_te, y_te = formats.image_arrays(24, 12, 5, (3, 32, 32), 10)
    data = load_dataset("cinic10", root)
    order_tr, order_te = formats.cinic_order(y_tr), formats.cinic_order(y_te)
    np.testing.assert_array_equal(data.x_train, x_tr[order_tr])
    np.testing.assert_array_equal(data.y_train, y_tr[order_tr])
    np.testing.assert_array_equal(data.x_test, x_te[order_te])
    np.testing.assert_array_equal(data.y_test, y_te[order_te])
    cache = root / "CINIC-10" / "fedsim_cache.npz"
    assert cache.is_file()

    def no_decode(folder: Path) -> None:
        raise AssertionError(f"decoded {folder} despite a fresh cache")

    monkeypatch.setattr(cifar_module, "_decode_split", no_decode)
    np.testing.assert_array_equal(load_dataset("cinic10", root).x_train, data.x_train)
    # A class folder changed after the cache was written: decode again.
    monkeypatch.undo()
    stale = cache.stat().st_mtime - 100
    os.utime(cache, (stale, stale))
    (root / "CINIC-10" / "test" / "cat" / "img_00000.png").unlink(missing_ok=True)
    (root / "CINIC-10" / "test" / "airplane" / "img_99999.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a readable PNG"):
        load_dataset("cinic10", root)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    root = formats.write_mnist(tmp_path, n_train=21, n_test=9, seed=4, gz=gz)
    data = load_dataset("mnist", root)
    x_tr, y_tr, x_te, y_te = formats.image_arrays(21, 9, 4, (1, 28, 28), 10)
    assert data.x_train.shape == (21, 1, 28, 28) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train, x_tr)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.x_test, x_te)
    np.testing.assert_array_equal(data.y_test, y_te)
    assert data.info.mean == (0.1307,) and not data.info.augment


def test_mnist_corrupt_files_raise(tmp_path: Path) -> None:
    root = formats.write_mnist(tmp_path, 10, 5)
    raw = root / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", root)
    images.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # float type code
    with pytest.raises(DataError, match="magic 0x00000d03"):
        load_dataset("mnist", root)
    images.unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip"):
        load_dataset("mnist", root)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(formats.idx_bytes(np.arange(4)))
    with pytest.raises(DataError, match="images but 4 labels"):
        load_dataset("mnist", root)


def test_femnist_round_trip(tmp_path: Path) -> None:
    root = formats.write_femnist_leaf(tmp_path, num_users=5, seed=1)
    data = load_dataset("femnist", root)
    train = formats.read_leaf(root, "femnist", "train")
    test = formats.read_leaf(root, "femnist", "test")
    ids = sorted(train)
    assert data.users is not None and len(data.users) == 5
    for user, idx in zip(ids, data.users, strict=True):
        expected = np.asarray(train[user]["x"], np.float32).reshape(-1, 1, 28, 28)
        np.testing.assert_array_equal(data.x_train[idx], expected)
        np.testing.assert_array_equal(data.y_train[idx], train[user]["y"])
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.concatenate(data.users).tolist() == list(range(data.num_train))
    expected_test = [label for u in sorted(test) for label in test[u]["y"]]
    assert data.y_test.tolist() == expected_test and data.x_test.shape == (5, 1, 28, 28)


def test_shakespeare_round_trip_and_unknown_characters(tmp_path: Path) -> None:
    root = formats.write_shakespeare_leaf(tmp_path, num_users=4, seed=2)
    data = load_dataset("shakespeare", root)
    train = formats.read_leaf(root, "shakespeare", "train")
    assert data.users is not None and len(data.users) == 4
    for user, idx in zip(sorted(train), data.users, strict=True):
        ids = [[ALL_LETTERS.index(c) for c in s] for s in train[user]["x"]]
        np.testing.assert_array_equal(data.x_train[idx], ids)
        assert data.y_train[idx].tolist() == [
            ALL_LETTERS.index(c) for c in train[user]["y"]
        ]
    assert data.x_train.dtype == np.int64 and data.x_train.shape[1:] == (80,)
    # Characters outside LEAF's vocabulary map to the space character.
    odd = "~é" + "a" * 78
    formats.write_leaf_json(
        root / "shakespeare" / "data" / "train" / "zz.json",
        {"ZZ": {"x": [odd], "y": ["€"]}},
    )
    data = load_dataset("shakespeare", root)
    space = ALL_LETTERS.index(" ")
    assert data.x_train[-1, :3].tolist() == [space, space, ALL_LETTERS.index("a")]
    assert data.y_train[-1] == space
    formats.write_leaf_json(
        root / "shakespeare" / "data" / "train" / "zz.json",
        {"ZZ": {"x": ["short"], "y": ["a"]}},
    )
    with pytest.raises(DataError, match="has 5 characters, expected 80"):
        load_dataset("shakespeare", root)


def test_leaf_malformed_json_raises(tmp_path: Path) -> None:
    root = formats.write_femnist_leaf(tmp_path, num_users=2)
    bad = root / "femnist" / "data" / "train" / "bad.json"
    bad.write_text('{"users": []}')
    with pytest.raises(DataError, match="not a LEAF json file"):
        load_dataset("femnist", root)
    formats.write_leaf_json(bad, {"u": {"x": [[0.5] * 10], "y": [1]}})
    with pytest.raises(DataError, match="784 numbers"):
        load_dataset("femnist", root)


# --- missing data and download ----------------------------------------------------


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_dataset_names_path_and_command(tmp_path: Path, name: str) -> None:
    for call in (check_available, load_dataset):
        with pytest.raises(DatasetNotFoundError) as info:
            call(name, tmp_path)
        message = str(info.value)
        assert str(tmp_path) in message
        assert f"fedsim data download {name} --root {tmp_path}" in message
    with pytest.raises(DatasetNotFoundError, match=r"data\.root is not set"):
        check_available(name, None)


def test_leaf_folder_without_json_is_not_found(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "femnist" / "data" / split).mkdir(parents=True)
    check_available("femnist", tmp_path)  # folders exist: the quick check passes
    with pytest.raises(DatasetNotFoundError, match=r"train/\*\.json"):
        load_dataset("femnist", tmp_path)


def test_not_found_error_pickles(tmp_path: Path) -> None:
    err = DatasetNotFoundError("mnist", tmp_path, tmp_path / "x")
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, DatasetNotFoundError) and str(copy) == str(err)
    assert copy.looked_for == tmp_path / "x"
    plain = pickle.loads(pickle.dumps(DataError("fix it")))
    assert str(plain) == "fix it"


def test_download_branches_without_network(tmp_path: Path) -> None:
    for name in ("digits", "synthetic_cifar"):
        assert download(name, tmp_path) == tmp_path
    for name in ("femnist", "shakespeare"):
        with pytest.raises(DataError) as info:
            download(name, tmp_path)
        text = str(info.value)
        assert "preprocess.sh -s niid --sf 1.0 -k 0 -t sample" in text
        assert f"{tmp_path}/{name}/data/train/*.json" in text
    with pytest.raises(DataError, match="unknown dataset"):
        download("nope", tmp_path)
