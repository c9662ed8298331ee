"""Datasets that need no files: scikit-learn digits and synthetic CIFAR-shaped data.

Example
-------
>>> x_train, y_train, x_test, y_test = synthetic_cifar(100, 20, seed=0)
>>> x_train.shape, x_train.dtype, y_test.shape
((100, 3, 32, 32), dtype('uint8'), (20,))
"""

from __future__ import annotations

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits test split never depends on the run seed

SYNTHETIC_CLASSES = 10
_NOISE_SHIFT = 2  # noise = random byte >> 2, uniform in [0, 64)
_NOISE = 256 >> _NOISE_SHIFT  # templates stay <= 255 - _NOISE so sums fit in uint8


def digits() -> Arrays:
    """Load scikit-learn's 8x8 digits with a fixed stratified 80/20 split.

    The split is drawn once with ``np.random.default_rng(0)`` per class, so every
    run (whatever its seed) evaluates on the same 20%. Pixels are float32 in 0..16.

    Returns
    -------
    tuple of np.ndarray
        ``x_train (N, 1, 8, 8) float32, y_train (N,) int64, x_test, y_test``.

    Examples
    --------
    >>> x_train, y_train, x_test, y_test = digits()
    >>> len(x_train) + len(x_test)
    1797
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test_mask[members[: round(DIGITS_TEST_FRACTION * len(members))]] = True
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]


def _templates(rng: np.random.Generator) -> np.ndarray:
    """Return one uint8 mean image per class, ``(classes, 3, 32, 32)``.

    Each class has its own colour plus a coarse 4x4 block pattern, mirrored left to
    right so horizontal flips keep it; 8-pixel blocks survive 4-pixel random crops.
    """
    colour = rng.uniform(0.2, 0.8, size=(SYNTHETIC_CLASSES, 3, 1, 1))
    coarse = rng.uniform(-1.0, 1.0, size=(SYNTHETIC_CLASSES, 3, 4, 4))
    coarse = (coarse + coarse[..., ::-1]) / 2  # symmetric under horizontal flip
    pattern = np.kron(coarse, np.ones((1, 1, 8, 8)))  # (classes, 3, 32, 32)
    image = np.clip(colour + 0.3 * pattern, 0.0, 1.0)
    return (image * (255 - _NOISE)).astype(np.uint8)


_BLOCK = 4096  # images generated at a time


def _sample(
    templates: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n, dtype=np.int64) % SYNTHETIC_CLASSES)
    images = np.empty((n, *templates.shape[1:]), np.uint8)  # (n, 3, 32, 32)
    # In blocks, so the noise never needs a second copy of the whole set. Raw
    # generator bits viewed as bytes: ~10x faster than rng.integers; one image
    # is 3072 bytes, a multiple of 8, so the draws equal one draw of them all.
    # The sum cannot overflow because templates are <= 255 - _NOISE.
    for lo in range(0, n, _BLOCK):
        block = images[lo : lo + _BLOCK]
        np.take(templates, labels[lo : lo + _BLOCK], axis=0, out=block)
        raw = rng.bit_generator.random_raw(block.size // 8).view(np.uint8)
        block += (raw >> _NOISE_SHIFT).reshape(block.shape)
    return images, labels


def synthetic_cifar(n_train: int, n_test: int, seed: int) -> Arrays:
    """Generate a learnable CIFAR-shaped dataset from ``seed``.

    Each of the 10 classes has a mean image (own colour + coarse pattern); an example
    is its class template plus uniform noise. Labels are balanced (``n % 10``
    spread). Train and test share the templates and differ in noise.

    Parameters
    ----------
    n_train, n_test : int
        Number of examples per split (at least 1).
    seed : int
        Seed for ``np.random.default_rng``; same seed gives identical arrays.

    Returns
    -------
    tuple of np.ndarray
        ``x_train (n_train, 3, 32, 32) uint8, y_train int64, x_test, y_test``.

    Examples
    --------
    >>> a = synthetic_cifar(10, 10, seed=1)
    >>> b = synthetic_cifar(10, 10, seed=1)
    >>> bool((a[0] == b[0]).all())
    True
    """
    rng = np.random.default_rng(seed)
    templates = _templates(rng)
    x_train, y_train = _sample(templates, n_train, rng)
    x_test, y_test = _sample(templates, n_test, rng)
    return x_train, y_train, x_test, y_test
