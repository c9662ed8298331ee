"""Broken LEAF and CIFAR files give a dataset or a DataError, never a traceback.

Each example starts from files in the real format (tests/data/formats.py) and
breaks one of them: cut short, bytes flipped, bytes that are not UTF-8, nesting
deeper than the JSON reader's recursion, labels that are not integers. The
reader must either load a valid dataset or raise :class:`DataError` (exit 2
with one line on the command line).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.data import DataError, load_dataset
from tests.data import formats

# Derandomized and small: the same few examples on every run, fast.
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def broken(draw: st.DrawFn, good: bytes) -> bytes:
    """``good`` cut short, with bytes flipped, or with a stretch replaced."""
    kind = draw(st.sampled_from(["cut", "flip", "splice"]))
    at = draw(st.integers(min_value=0, max_value=len(good)))
    if kind == "cut":
        return good[:at]
    if kind == "flip":
        spots = draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=8))
        out = bytearray(good)
        for spot in spots:
            out[spot] ^= draw(st.integers(1, 255))
        return bytes(out)
    return good[:at] + draw(st.binary(max_size=40)) + good[at:]


def _valid_or_data_error(name: str, root: Path) -> None:
    try:
        data = load_dataset(name, root)
    except DataError as exc:
        assert str(exc).strip() and len(str(exc)) < 2000
        return
    assert len(data.x_train) == len(data.y_train) > 0
    assert data.y_train.min() >= 0 and data.y_train.max() < data.info.num_classes


@pytest.fixture(scope="module")
def femnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return formats.write_femnist_leaf(tmp_path_factory.mktemp("leaf"), num_users=2)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return formats.write_cifar10(tmp_path_factory.mktemp("cifar"), 10, 5)


def _copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "root"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    return copy


def _first_leaf_file(root: Path) -> Path:
    return sorted((root / "femnist" / "data" / "train").glob("*.json"))[0]


@FUZZ
@given(data=st.data())
def test_broken_leaf_json(femnist_root: Path, tmp_path: Path, data: Any) -> None:
    root = _copy(femnist_root, tmp_path)
    path = _first_leaf_file(root)
    path.write_bytes(data.draw(broken(path.read_bytes())))
    _valid_or_data_error("femnist", root)


labels = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@FUZZ
@given(data=st.data(), label=labels, pixel=st.floats() | st.integers())
def test_leaf_labels_and_pixels_of_any_json_value(
    femnist_root: Path, tmp_path: Path, data: Any, label: Any, pixel: Any
) -> None:
    root = _copy(femnist_root, tmp_path)
    path = _first_leaf_file(root)
    doc = json.loads(path.read_text())
    user = sorted(doc["user_data"])[0]
    doc["user_data"][user]["y"][0] = label
    doc["user_data"][user]["x"][0][data.draw(st.integers(0, 783))] = pixel
    path.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
    _valid_or_data_error("femnist", root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"user_data": {"u": {"x": [], "y": []}}, "n": "\xff\xfe"}', "not a LEAF"),
        (b"[" * 200_000 + b"]" * 200_000, "not a LEAF"),
    ],
    ids=["not-utf8", "nested-too-deep"],
)
def test_leaf_files_that_json_cannot_read(
    femnist_root: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    root = _copy(femnist_root, tmp_path)
    _first_leaf_file(root).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset("femnist", root)


@pytest.mark.parametrize("label", [1.7, 61.9, 10**30, 1.0])
def test_leaf_labels_must_be_integers(
    femnist_root: Path, tmp_path: Path, label: float
) -> None:
    root = _copy(femnist_root, tmp_path)
    path = _first_leaf_file(root)
    doc = json.loads(path.read_text())
    doc["user_data"][sorted(doc["user_data"])[0]]["y"][0] = label
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="integer"):
        load_dataset("femnist", root)


def test_leaf_nan_pixels_are_refused_at_load(
    femnist_root: Path, tmp_path: Path
) -> None:
    root = _copy(femnist_root, tmp_path)
    path = _first_leaf_file(root)
    doc = json.loads(path.read_text())
    doc["user_data"][sorted(doc["user_data"])[0]]["x"][0][5] = float("nan")
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset("femnist", root)


@FUZZ
@given(data=st.data())
def test_broken_cifar_batch(cifar_root: Path, tmp_path: Path, data: Any) -> None:
    root = _copy(cifar_root, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(data.draw(broken(path.read_bytes())))
    _valid_or_data_error("cifar10", root)


@FUZZ
@given(
    labels=st.lists(labels, min_size=2, max_size=2),
    pixels=st.sampled_from([np.zeros((2, 3072)), [[1.5] * 3072] * 2, "x", None, 7]),
)
def test_cifar_batch_of_any_contents(
    cifar_root: Path, tmp_path: Path, labels: list[Any], pixels: Any
) -> None:
    root = _copy(cifar_root, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": pixels, b"labels": labels}))
    _valid_or_data_error("cifar10", root)


def test_a_cifar_batch_that_is_a_directory(cifar_root: Path, tmp_path: Path) -> None:
    root = _copy(cifar_root, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match="data_batch_1 is not a readable CIFAR"):
        load_dataset("cifar10", root)


def test_cifar_float_labels_are_refused(cifar_root: Path, tmp_path: Path) -> None:
    root = _copy(cifar_root, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    batch[b"labels"] = [float(v) + 0.5 for v in batch[b"labels"]]
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="not integers"):
        load_dataset("cifar10", root)
