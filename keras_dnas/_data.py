"""Data the user passes (representative / calibration samples, labelled pairs): read one way.

Every entry point that takes input samples (`to_tflite`'s and `quantize_aware`'s
``representative_data``, `DNASCallback`'s ``calibration_data``, `run_tflm`'s ``x``) reads them
with `input_arrays`; every one that takes ``(x, y)`` (`measure`'s and the report's ``data``,
`to_tflite_tfmot`'s ``train_data``) with `labelled_pair`. So they accept the same forms and fail
with the same messages, naming the argument and the fix.

Example:

>>> import numpy as np
>>> [a.shape for a in calibration_sample(np.zeros((5000, 3)), CALIBRATION_SAMPLES)]
[(2048, 3)]
"""

import numpy as np

#: Largest calibration sample kept (a few thousand samples fix BN statistics well).
CALIBRATION_SAMPLES = 2048

#: Samples read from an endless dataset (``tf.data`` ``.repeat()``) given as representative
#: data: the usual ``x[:256]``.
ENDLESS_REPRESENTATIVE_SAMPLES = 256

_FORMS = ("an array of input samples (samples first), a list of arrays or a dict by input name "
          "for a model with several inputs, or an iterable of batches (tf.data.Dataset, "
          "generator, keras.utils.PyDataset)")


def _array(data, argument, dtype):
    try:
        return np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Could not read {argument} as a numeric array. Received: "
                         f"{type(data).__name__}") from e


def _by_name(data, names, argument):
    missing = [n for n in names or () if n not in data]
    if missing or not names:
        raise ValueError(f"{argument} as a dict must map every model input name "
                         f"{list(names or [])} to an array. Received: keys {sorted(data)}")
    return [data[n] for n in names]


def _parts(data, n_inputs, names, argument):
    """One batch or the whole data -> one item per input (``n_inputs=None``: as given)."""
    if isinstance(data, dict):
        return _by_name(data, names, argument)
    if isinstance(data, (list, tuple)) and (n_inputs is None or n_inputs > 1):
        return list(data)
    return [data]


def _endless(data):
    """Whether ``data`` is a ``tf.data.Dataset`` that never ends (``.repeat()`` without a
    count). Other iterables cannot say, so they are read to their end."""
    cardinality = getattr(data, "cardinality", None)
    if cardinality is None or not callable(cardinality):
        return False
    try:
        return int(cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
    except (TypeError, ValueError):
        return False


def _endless_error(argument):
    return ValueError(f"{argument} is an endless dataset (`.repeat()` without a count) and all "
                      f"of it is read: pass a finite one, e.g. `{argument}=dataset.take(8)`. "
                      "Received: a dataset of infinite cardinality")


def _labelled(element, n_inputs):
    """Whether a batch is ``(x, y[, sample_weight])`` (or ``(x,)``) rather than ``x``.

    A list counts as a tuple, as in Keras' ``fit``: a PyTorch ``DataLoader`` collates the
    samples of a ``TensorDataset`` into a list ``[x, y]`` (``[x]`` without labels). For a
    model with several inputs, ``x`` is itself a tuple, list or dict, so ``n_inputs`` arrays
    are the inputs (a ``tf.data`` dataset of ``(image, meta)``), not ``(image, labels)``.
    """
    if not isinstance(element, (tuple, list)):
        return False
    if n_inputs == 1 or len(element) == 1:
        return True
    if n_inputs is not None and len(element) == n_inputs \
            and not isinstance(element[0], (tuple, list, dict)):
        return False
    return len(element) in (2, 3)


def _first_leaf(element):
    while isinstance(element, (tuple, list, dict)) and element:
        element = next(iter(element.values())) if isinstance(element, dict) else element[0]
    return element


def read_batches(data, limit):
    """The batches of an iterable (``tf.data``, a generator, ``PyDataset``), kept as given,
    up to ``limit`` samples; arrays, lists and dicts pass through.

    For data read before the model is known (``DNASCallback(calibration_data=...)``): a
    generator can be read once only, and which part of a batch is ``x`` depends on the
    model's inputs, so the batches are split later by `input_arrays`.

    >>> import numpy as np
    >>> len(read_batches(iter([np.zeros((2, 3))] * 5), limit=3))
    2
    """
    if data is None or isinstance(data, (dict, list, tuple)) or hasattr(data, "__array__") \
            or not hasattr(data, "__iter__"):
        return data
    kept, count = [], 0
    for element in data:
        kept.append(element)
        leaf = _first_leaf(element[0] if _labelled(element, None) else element)
        count += len(leaf) if np.ndim(leaf) else 1
        if count >= limit:
            break
    return _Batches(kept)


class _Batches(list):
    """Batches already read (`read_batches`): still an iterable of batches, not one sample."""


def needs_input_names(data):
    """Whether reading ``data`` as inputs needs the model's input names (a dict, or batches)."""
    return isinstance(data, (dict, _Batches))


def _collect(batches, n_inputs, names, argument, dtype, max_samples=None):
    """An iterable of batches -> one concatenated array per input (the first ``max_samples``)."""
    per_input, count = None, 0
    for element in batches:
        if _labelled(element, n_inputs):
            element = element[0]  # (x, y) or (x, y, sample_weight)
        parts = [_array(p, f"a batch of {argument}", dtype)
                 for p in _parts(element, n_inputs, names, argument)]
        per_input = per_input or [[] for _ in parts]
        if len(parts) != len(per_input):
            raise ValueError(f"Each batch of {argument} must hold {len(per_input)} inputs. "
                             f"Received: {len(parts)}")
        for k, part in enumerate(parts):
            per_input[k].append(part)
        count += len(parts[0]) if parts[0].ndim else 1
        if max_samples is not None and count >= max_samples:
            break
    if per_input is None:
        raise ValueError(f"{argument} is empty: it needs at least one batch of samples. "
                         "Received: an empty iterable")
    arrays = [np.concatenate(p, axis=0) for p in per_input]
    return arrays if max_samples is None else [a[:max_samples] for a in arrays]


def input_arrays(data, argument, *, names=None, shapes=None, dtype=np.float32, allow_empty=False,
                 endless_samples=None):
    """Input samples in any accepted form -> a list of NumPy arrays, one per model input.

    Args:
        data: an array (samples first), a list / tuple of arrays or a dict by input name for
            several inputs, or an iterable of batches (tf.data.Dataset, generator,
            keras.utils.PyDataset) whose elements are such an ``x`` or ``(x, y[, weight])``.
        argument: the argument's name, for the errors (e.g. ``"representative_data"``).
        names: the model's input names (their number is the number of inputs); ``None``: a
            list or tuple is one array per input.
        shapes: the per-sample shape of each input (``None`` entries are free), checked.
        dtype: the arrays' dtype (``None``: as given).
        allow_empty: accept zero samples.
        endless_samples: how many samples to read from an endless ``tf.data.Dataset``
            (``.repeat()`` without a count); ``None``: such a dataset is refused.

    Example:

    >>> import numpy as np
    >>> [a.shape for a in input_arrays(iter([np.zeros((2, 3)), np.ones((1, 3))]), "x")]
    [(3, 3)]
    >>> input_arrays(np.zeros((0, 3)), "representative_data")
    Traceback (most recent call last):
    ...
    ValueError: representative_data is empty: it needs at least one sample (a few hundred are \
typical), e.g. `representative_data=x_train[:256]`. Received: an array of shape (0, 3)
    """
    n_inputs = len(names) if names is not None else len(shapes) if shapes is not None else None
    if isinstance(data, _Batches):
        arrays = _collect(data, n_inputs, names, argument, dtype)
    elif isinstance(data, (dict, list, tuple)) or hasattr(data, "__array__"):
        arrays = [_array(a, argument, dtype) for a in _parts(data, n_inputs, names, argument)]
    elif hasattr(data, "__iter__"):
        limit = None
        if _endless(data):
            if endless_samples is None:
                raise _endless_error(argument)
            limit = endless_samples
        arrays = _collect(data, n_inputs, names, argument, dtype, limit)
    else:
        raise ValueError(f"{argument} must be {_FORMS}. Received: {type(data).__name__}")
    if n_inputs is not None and len(arrays) != n_inputs:
        listed = f" ({list(names)})" if names is not None else ""
        raise ValueError(f"The model has {n_inputs} inputs{listed}; pass {argument} as one array "
                         f"of samples per input. Received: {len(arrays)} arrays")
    for k, arr in enumerate(arrays):
        if arr.ndim == 0 or (arr.shape[0] == 0 and not allow_empty):
            raise ValueError(f"{argument} is empty: it needs at least one sample (a few hundred "
                             f"are typical), e.g. `{argument}=x_train[:256]`. Received: an array "
                             f"of shape {arr.shape}")
        expected = None if shapes is None else tuple(shapes[k])
        if expected is not None and (arr.ndim != len(expected) + 1 or any(
                e is not None and e != g for e, g in zip(expected, arr.shape[1:]))):
            name = f" ({names[k]!r})" if names is not None else ""
            raise ValueError(f"{argument} for input {k}{name} must have samples of shape "
                             f"{expected} (batch first). Received: shape {arr.shape}")
    if len({arr.shape[0] for arr in arrays}) != 1:
        raise ValueError(f"Every input of {argument} needs the same number of samples. "
                         f"Received: {[arr.shape[0] for arr in arrays]}")
    return arrays


def sample_count(x):
    """Samples in ``x``: an array, or a list / dict of arrays (one per model input)."""
    first = next(iter(x.values()), None) if isinstance(x, dict) else (
        x[0] if isinstance(x, (list, tuple)) and x and hasattr(x[0], "shape") else x)
    return len(first) if hasattr(first, "__len__") else 0


def _concatenate(parts):
    """Batches of one structure (an array, a list / tuple or a dict of arrays) -> one."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(first))]
    return np.concatenate([np.asarray(p) for p in parts])


def _pairs(batches, argument):
    """An iterable of ``(x, y[, sample_weight])`` batches -> ``(x, y)``, concatenated."""
    if _endless(batches):
        raise _endless_error(argument)
    xs, ys = [], []
    for element in batches:
        if not (isinstance(element, (tuple, list)) and len(element) in (2, 3)):
            raise ValueError(f"{argument} as an iterable of batches must yield (x, y) pairs. "
                             f"Received: a batch of type {type(element).__name__}")
        xs.append(element[0])
        ys.append(element[1])
    if not xs:
        raise ValueError(f"{argument} is empty: it needs at least one batch of (x, y). "
                         "Received: an empty iterable")
    return _concatenate(xs), _concatenate(ys)


def labelled_pair(data, argument="data", several_outputs=False):
    """``(x, y)`` -> ``(x, y as an array)``, checked: a pair, as many labels as samples.

    ``data`` may also be an iterable of ``(x, y)`` batches (a batched ``tf.data`` dataset, a
    generator), concatenated.

    ``x`` is returned as given (an array, or a list / dict for several inputs). With
    ``several_outputs``, ``y`` may also be one label array per model output, as ``fit`` takes
    them (a dict by output name or a list); each is checked and ``y`` is returned as given.

    Example:

    >>> import numpy as np
    >>> labelled_pair(np.zeros((4, 3)))
    Traceback (most recent call last):
    ...
    ValueError: data must be a pair (x, y) of inputs and labels (or targets), samples first. \
Received: ndarray of length 4
    """
    if not isinstance(data, (tuple, list, dict)) and hasattr(data, "__iter__") \
            and not hasattr(data, "__array__"):
        data = _pairs(data, argument)  # a tf.data dataset / generator of (x, y) batches
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{argument} must be a pair (x, y) of inputs and labels (or targets), "
                         f"samples first. Received: {type(data).__name__}"
                         + (f" of length {len(data)}" if hasattr(data, "__len__") else ""))
    x, y = data
    n = sample_count(x)
    if several_outputs and isinstance(y, (dict, list, tuple)) and y and not np.isscalar(
            next(iter(y.values())) if isinstance(y, dict) else y[0]):
        items = y.items() if isinstance(y, dict) else enumerate(y)
        for key, labels in items:
            labels = _array(labels, f"{argument}[1][{key!r}]", None)
            if labels.ndim == 0 or len(labels) != n or n == 0:
                raise ValueError(f"{argument}=(x, y) needs as many labels as samples for every "
                                 f"output. Received: {n} samples and "
                                 f"{len(labels) if labels.ndim else 0} labels for output {key!r}")
        return x, y
    y = _array(y, f"{argument}[1]", None)
    if y.ndim == 0 or len(y) != n or n == 0:
        raise ValueError(f"{argument}=(x, y) needs as many labels as samples, at least one. "
                         f"Received: {n} samples and {len(y) if y.ndim else 0} labels")
    return x, y


def calibration_sample(data, limit, seed=0, names=None):
    """Up to ``limit`` samples of ``data`` (input samples, as `input_arrays` reads them; of an
    endless ``tf.data.Dataset``, its first ``limit``).

    A random subset in random order, drawn with a fixed seed (so any prefix of it is a random
    subset too), because training sets are often sorted by class and BN statistics of one
    class are wrong for the others. Returns a list of NumPy arrays (one per model input), or
    ``None``.

    ``names``: the model's input names (a dict of arrays, or batches of dicts, are read by
    them; a tuple of one array per input is the inputs); ``None`` when the model is not known.

    Example:

    >>> import numpy as np
    >>> [a.shape for a in calibration_sample(np.zeros((5000, 3)), 2048)]
    [(2048, 3)]
    """
    if data is None:
        return None
    check_calibration_data(data, names)
    if names is None and (isinstance(data, dict) or isinstance(data, _Batches) and data
                          and isinstance(data[0], dict)):
        raise ValueError("calibration_data by input name needs the model's input names: pass "
                         "it where the model is known (DNASCallback reads it when fit "
                         "starts). Received: a dict")
    arrays = input_arrays(data, "calibration_data", names=names, dtype=None,
                          endless_samples=limit)
    idx = np.random.default_rng(seed).permutation(len(arrays[0]))[:limit]
    return [a[idx] for a in arrays]


def check_calibration_data(data, names=None):
    """Refuse ``(x, y)`` as calibration data, before anything is read."""
    several = names is not None and len(names) > 1
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[1]) == 1 and not several:
        raise ValueError("calibration_data takes input samples only (an array, or a list or a "
                         "dict by input name for several inputs), not (x, y). Received: a "
                         f"{type(data).__name__}; pass x.")
