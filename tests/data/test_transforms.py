from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsim.data import DataError, DatasetInfo, dataset_info, prepare_batch

CIFAR = dataset_info("cifar10")
RAW_INFO = DatasetInfo("raw", 10, (3, 32, 32), 255.0, None, None, True)


def _batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_eval_normalizes_per_channel() -> None:
    x = _batch()
    out = prepare_batch(x, CIFAR, train=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    mean = torch.tensor(CIFAR.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.double() / 255 - mean) / std, check_dtype=False)
    assert out[0, 2, 0, 0].item() == pytest.approx(
        (x[0, 2, 0, 0].item() / 255 - 0.4465) / 0.2010
    )


def test_digits_scale_and_text_ids() -> None:
    digits = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8) % 17
    out = prepare_batch(digits, dataset_info("digits"), train=True, generator=_gen(0))
    torch.testing.assert_close(out, digits / 16)  # no augmentation, no normalization
    ids = torch.randint(0, 80, (3, 80), generator=_gen(1))
    text = prepare_batch(ids, dataset_info("shakespeare"), train=True)
    assert text.dtype == torch.int64 and torch.equal(text, ids)


def test_augmentation_changes_train_but_never_eval() -> None:
    x = _batch(16)
    plain = prepare_batch(x, CIFAR, train=False)
    assert torch.equal(prepare_batch(x, CIFAR, train=False, generator=_gen(9)), plain)
    augmented = prepare_batch(x, CIFAR, train=True, generator=_gen(9))
    assert augmented.shape == plain.shape
    assert not torch.equal(augmented, plain)
    mnist = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=_gen(2))
    info = dataset_info("mnist")  # no augmentation for MNIST
    assert torch.equal(
        prepare_batch(mnist, info, train=True, generator=_gen(3)),
        prepare_batch(mnist, info, train=False),
    )


def test_same_generator_state_same_batch() -> None:
    x = _batch(32)
    a = prepare_batch(x, CIFAR, train=True, generator=_gen(5))
    b = prepare_batch(x, CIFAR, train=True, generator=_gen(5))
    c = prepare_batch(x, CIFAR, train=True, generator=_gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = _gen(5)
    first = prepare_batch(x, CIFAR, train=True, generator=gen)
    assert not torch.equal(prepare_batch(x, CIFAR, train=True, generator=gen), first)


def _crop(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    window = image[:, top : top + 32, left : left + 32]
    return window.flip(-1) if flip else window


def test_each_image_is_a_zero_padded_crop_or_its_mirror() -> None:
    x = _batch(24, seed=3)
    out = prepare_batch(x, RAW_INFO, train=True, generator=_gen(7))
    padded = F.pad(x.float() / 255, (4, 4, 4, 4))
    found = []
    for i in range(len(x)):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(out[i], _crop(padded[i], top, left, flip))
        ]
        assert matches, f"image {i} is not a crop of its padded copy"
        found.append(matches[0])
    assert len({(t, left) for t, left, _ in found}) > 5  # offsets vary per image
    assert 0 < sum(flip for *_, flip in found) < len(found)  # some flipped, some not


def test_padded_border_is_black_before_normalization() -> None:
    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    out = prepare_batch(white, CIFAR, train=True, generator=_gen(0))
    mean = torch.tensor(CIFAR.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    black, full = (0 - mean) / std, (1 - mean) / std
    is_black = torch.isclose(out, black.expand_as(out))
    assert torch.all(is_black | torch.isclose(out, full.expand_as(out)))
    assert is_black.any() and (~is_black).any()
    # A shifted crop keeps a black band of up to 4 rows/cols at one edge only.
    assert int(is_black[:, 0].all(dim=2).sum(dim=1).max()) <= 4


def test_shape_mismatch_raises() -> None:
    with pytest.raises(DataError, match="pass raw arrays from load_dataset"):
        prepare_batch(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), CIFAR, train=False)


def test_default_generator_and_numpy_origin() -> None:
    x = torch.from_numpy(np.zeros((2, 3, 32, 32), dtype=np.uint8))
    assert prepare_batch(x, CIFAR, train=True).shape == (2, 3, 32, 32)
