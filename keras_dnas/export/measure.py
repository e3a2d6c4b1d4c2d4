"""Measure a `.tflite` model in TensorFlow Lite Micro: flash, arena, operators, accuracy."""

import json

import numpy as np

from keras_dnas import _flatbuffer
from keras_dnas._data import labelled_pair, sample_count
from keras_dnas.export import runtime as _runtime
from keras_dnas.vocabulary import Results, canonical

_TASKS = ("classification", "regression")
#: Pointer size the arena is reported for when no target says otherwise (32-bit MCU, as
#: `kd.summary`'s default target).
DEFAULT_POINTER_BYTES = 4
_HOST_POINTER_BYTES = 8  # the tflite_micro Python interpreter (64-bit host)

# Keys of a MeasureResult, in display order (all present; None when not measured).
_KEYS = (
    "flash_bytes",
    "ram_bytes",
    "arena_head_bytes",
    "arena_tail_bytes",
    "pointer_bytes",
    "host_arena_bytes",
    "host_arena_head_bytes",
    "host_arena_tail_bytes",
    "host_arena_breakdown",
    "arena_plan",
    "ops",
    "inputs",
    "outputs",
    "quantization",
    "target",
    "target_flash_bytes",
    "target_ram_bytes",
    "fits_flash",
    "fits_ram",
    "task",
    "num_samples",
    "accuracy",
    "mse",
    "float_accuracy",
    "float_mse",
    "agreement",
)


class MeasureResult(Results):
    """What `measure` found: a plain `dict` (JSON-serialisable) with attribute access.

    Keys: `flash_bytes` (= `len(tflite)`); `ram_bytes` (the old `arena_bytes` still reads) =
    `arena_head_bytes` + `arena_tail_bytes`, the tensor arena on the target (its `pointer_bytes`: 4 on a 32-bit
    MCU), the number `kd.summary` and `kd.freeze` certify; `host_arena_bytes` /
    `host_arena_head_bytes` / `host_arena_tail_bytes` / `host_arena_breakdown`, what the
    64-bit host TFLite Micro interpreter allocated (its recording allocator);
    `arena_plan` (`"offline"` when the file carries an `OfflineMemoryAllocation` arena plan,
    `"tflm"` when TFLite Micro plans the arena itself); `ops`
    (operator names in execution order), `inputs` / `outputs` (name, shape, dtype, scale,
    zero_point), `quantization`, the target fields (`target`, `target_flash_bytes`,
    `target_ram_bytes`, `fits_flash`, `fits_ram`) and the data fields (`task`,
    `num_samples`, `accuracy`, `mse`, `float_accuracy`, `float_mse`, `agreement`). Fields
    that were not measured are `None`.

    Example:

    >>> r = MeasureResult(flash_bytes=1000, ram_bytes=400)
    >>> r.flash_bytes, r["ram_bytes"], r.accuracy
    (1000, 400, None)
    """

    def __init__(self, **fields):
        fields = {canonical(k): v for k, v in fields.items()}
        unknown = set(fields) - set(_KEYS)
        if unknown:
            raise ValueError(f"Unknown MeasureResult fields {sorted(unknown)}.")
        super().__init__({k: fields.get(k) for k in _KEYS})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self):
        """A plain `dict` copy (what `json.dumps` writes)."""
        return json.loads(json.dumps(dict(self)))

    def __str__(self):
        lines = ["TFLite Micro measurement"]
        for key in _KEYS:
            value = self[key]
            if value is None or key in ("host_arena_breakdown", "inputs", "outputs"):
                continue
            if key == "ops":
                value = ", ".join(value)
            elif key.endswith("_bytes") and key != "pointer_bytes":
                value = f"{value:,} B"
            elif key.endswith(("accuracy", "agreement")):
                value = f"{value:.4f}"
            elif key.endswith("mse"):
                value = f"{value:.6g}"
            lines.append(f"  {key:<21} {value}")
        for key in ("inputs", "outputs"):
            for t in self[key] or ():
                lines.append(
                    f"  {key[:-1]:<21} {t['name']} {t['dtype']}{t['shape']} "
                    f"scale={t['scale']} zero_point={t['zero_point']}"
                )
        return "\n".join(lines)


def _resolve_target(target):
    """None, a HardwareTarget-like object, a mapping or a registered name ->
    (name, flash, ram, pointer_bytes); pointer_bytes defaults to 4 (a 32-bit MCU)."""
    if target is None:
        return None
    if isinstance(target, str):
        from keras_dnas import targets as registry

        target = registry.get(target)
    get = target.get if isinstance(target, dict) else lambda k, d=None: getattr(target, k, d)
    flash, ram = get("flash_bytes"), get("ram_bytes")
    if flash is None and ram is None:
        raise ValueError(
            "target must have `flash_bytes` and `ram_bytes` (a keras_dnas HardwareTarget). "
            f"Received: target={target!r}"
        )
    pointer_bytes = get("pointer_bytes", None) or DEFAULT_POINTER_BYTES
    if pointer_bytes not in (4, 8):
        raise ValueError(
            f"target's `pointer_bytes` must be 4 or 8. Received: pointer_bytes={pointer_bytes!r}")
    return str(get("name", "custom")), flash, ram, int(pointer_bytes)


def target_arena(tflite_bytes, host_usage, pointer_bytes=DEFAULT_POINTER_BYTES):
    """The tensor arena on a target, from the host interpreter's measurement.

    The head (activations and scratch, laid out by TFLite Micro's greedy planner) does not
    depend on the pointer size: it is the host's. The tail (persistent structs) does: the
    host's tail is shifted by the difference of `costs.arena.tflite_tail` between the
    target's pointer size and the host's 8 bytes. This is the definition `kd.summary` and
    `kd.freeze` use (their planner replay equals the host head on every tested model), so a
    certified RAM budget and a measured one are the same number.

    Args:
        tflite_bytes: The model (bytes), or its `_flatbuffer.read_tflite` view.
        host_usage: `runtime.arena_usage`'s dict for the host interpreter.
        pointer_bytes: The target's pointer size (4: 32-bit MCU; 8: the host itself).

    Returns:
        `{"ram_bytes", "arena_head_bytes", "arena_tail_bytes"}` for the target.
    """
    from keras_dnas.costs import arena

    head = int(host_usage["arena_head_bytes"])
    tail = int(host_usage["arena_tail_bytes"])
    if pointer_bytes != _HOST_POINTER_BYTES:
        model = _flatbuffer.read_tflite(tflite_bytes)
        tail += arena.tflite_tail(model, pointer_bytes=pointer_bytes) - arena.tflite_tail(
            model, pointer_bytes=_HOST_POINTER_BYTES)
    return {"ram_bytes": head + tail, "arena_head_bytes": head, "arena_tail_bytes": tail}


def _is_one_hot(y):
    return (
        y.ndim >= 2
        and y.shape[-1] > 1
        and np.isin(y, (0, 1)).all()
        and np.allclose(y.sum(axis=-1), 1)
    )


def _predictions(out):
    """Class predictions of several units: argmax over the last axis."""
    return np.argmax(out, axis=-1)


def _probability_output(info):
    """Whether the scored output comes out of a sigmoid (LOGISTIC): its units are then
    thresholded at 0.5, any other single unit at 0 (a logit, as ``from_logits=True`` trains
    it). Quantize, dequantize and reshape operators after it are looked through."""
    if not info.outputs:
        return False
    tensor = info.outputs[0]
    producers = {t: op for op in info.operators if op.subgraph == 0 for t in op.outputs}
    op = producers.get(tensor)
    while op is not None and op.name in ("QUANTIZE", "DEQUANTIZE", "RESHAPE") and op.inputs:
        op = producers.get(op.inputs[0])
    return op is not None and op.name == "LOGISTIC"


def _binary_labels(y):
    return y.size > 0 and np.isin(y, (0, 1)).all()


def _labels(y, out):
    if y.shape == out.shape and _is_one_hot(y):
        return np.argmax(y, axis=-1)
    labels = y.reshape(y.shape[:-1]) if y.ndim == out.ndim and y.shape[-1] == 1 else y
    if labels.shape != out.shape[:-1]:
        raise ValueError(
            f"Cannot compare labels of shape {y.shape} with model outputs of shape "
            f"{out.shape}: give class indices of shape {out.shape[:-1]} or one-hot labels of "
            "the output's shape."
        )
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise ValueError(
            f"Cannot score outputs of shape {out.shape} against labels of shape {y.shape} that "
            "are not class indices: give class indices or one-hot labels, or, for a "
            "regression, targets of the output's shape.")
    return labels.astype(np.int64)


def _scored_labels(y, info, samples):
    """``y`` -> the labels of the output `measure` scores (the first in user order), when
    ``y`` gives a model with several outputs one label array per output: a dict by output name
    (the name in the file's signature: the model's dict key, ``output_0``, ...) or a list."""
    names, several = list(info.output_names), len(info.outputs) > 1
    if isinstance(y, dict):
        if several and names and names[0] in y:
            return y[names[0]]
        if len(y) == 1:
            return next(iter(y.values()))
        first = repr(names[0]) if names else "the first"
        raise ValueError(
            f"data=(x, y): `measure` scores the model's first output ({first} in the "
            f"converted file; outputs: {names}); give its labels as y, or a dict with that "
            f"key. Received: y with keys {sorted(y)}")
    if (several and isinstance(y, (list, tuple)) and len(y) == len(info.outputs)
            and all(getattr(v, "ndim", 0) >= 1 and len(v) == samples for v in y)):
        return y[0]
    return y


def _evaluate(out, data, keras_model, task, output_name=None, probabilities=False):
    x, y = data
    if isinstance(out, list):  # several outputs: evaluate the first
        out = out[0]
    y = np.asarray(y)
    if y.shape[0] != out.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples. Received: {out.shape[0]} inputs "
            f"and {y.shape[0]} labels"
        )
    if task is not None and task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS} or None. Received: task={task!r}")
    # one value per output unit (a regression, a binary or multi-label classifier, an
    # autoencoder): y as (n,) for (n, 1) outputs is the same labels
    per_unit = (y.size == out.size and not (y.shape == out.shape and _is_one_hot(y))
                and (out.shape[-1] == 1 or y.shape == out.shape))
    if task is None:
        # 0/1 labels per unit are a binary / multi-label classification; other values per
        # unit a regression; class indices or one-hot labels of several units a classification
        task = ("classification" if not per_unit or _binary_labels(y) else "regression")
    fields = {"task": task, "num_samples": int(out.shape[0])}
    reference = None
    if keras_model is not None:
        reference = keras_model.predict(x, verbose=0, batch_size=256)
        if isinstance(reference, (list, tuple)):
            reference = reference[0]
        elif isinstance(reference, dict):
            reference = reference.get(output_name, next(iter(reference.values())))
        reference = np.asarray(reference, dtype=np.float32).reshape(out.shape)
    if task == "regression":
        target = y.astype(np.float32).reshape(out.shape)
        fields["mse"] = float(np.mean((out - target) ** 2))
        if reference is not None:
            fields["float_mse"] = float(np.mean((reference - target) ** 2))
        return fields
    if per_unit and (out.shape[-1] == 1 or _binary_labels(y)):
        # each unit a yes/no: Keras' binary accuracy, at 0.5 after a sigmoid, else at 0
        labels = y.reshape(out.shape).astype(np.int64)
        threshold = 0.5 if probabilities else 0.0

        def predict(values):
            return (values > threshold).astype(np.int64)
    else:
        labels, predict = _labels(y, out), _predictions
    pred = predict(out)
    fields["accuracy"] = float(np.mean(pred == labels))
    if reference is not None:
        ref_pred = predict(reference)
        fields["float_accuracy"] = float(np.mean(ref_pred == labels))
        fields["agreement"] = float(np.mean(ref_pred == pred))
    return fields


def measure(
    tflite_bytes, target=None, data=None, *, keras_model=None, task=None, arena_size=None
):
    """Measure a TFLite model as TensorFlow Lite Micro runs it.

    Flash is the flatbuffer size. RAM (`ram_bytes`) is the tensor arena on the target, the
    same number `kd.summary` and `kd.freeze` certify: the head (activations and scratch, as
    laid out by TFLite Micro's memory planner, measured on the host) plus the tail (persistent
    tensor structs, per-channel quantisation data, op data) for the target's pointer size
    (4 bytes on a 32-bit MCU, the default without a target; see `target_arena`). What the
    64-bit host interpreter's recording allocator (`print_allocations()`) reported is kept as
    `host_arena_bytes` / `host_arena_head_bytes` / `host_arena_tail_bytes`.

    TFLite Micro runs in one child process per call, so a model that makes it abort raises
    `RuntimeError` (naming the operator and the reason) instead of ending this process.
    With `data=(x, y)` the model runs in TFLite Micro on `x`
    (float inputs are quantised with the input scale / zero point; outputs are dequantised)
    and is scored against `y`: top-1 accuracy for class indices or one-hot labels of several
    output units; with one label per output unit (`y` of the output's shape, or `(n,)` for one
    unit), binary accuracy per unit when the labels are 0 / 1 (a binary or multi-label
    classifier: a sigmoid output thresholded at 0.5, any other at 0, a logit) and mean squared
    error for other values (a regression, an autoencoder); `task=` overrides the choice.
    Of a model with several outputs the first (in the file's order, `outputs`) is scored; `y`
    may hold every output's labels, as a list in that order or a dict by output name (a
    dict-output model's keys), as given to `fit`.

    Args:
        tflite_bytes: The model as `bytes` (e.g. from `to_tflite`) or a path to a `.tflite`.
        target: Optional hardware target with `name`, `flash_bytes`, `ram_bytes` and
            optionally `pointer_bytes` (default 4) (a `keras_dnas.targets.HardwareTarget`, a
            registered target name, or a dict); adds `fits_flash` (flatbuffer size <= flash)
            and `fits_ram` (target arena <= RAM).
        data: Optional `(x, y)` to score the quantised model on.
        keras_model: Optional float Keras model; with `data`, adds its accuracy (or MSE) and
            the top-1 `agreement` between it and the TFLite Micro model.
        task: `"classification"`, `"regression"` or `None` (decide from the shape of `y`).
        arena_size: Arena handed to the interpreter (default: generous, model-derived).

    Returns:
        A `MeasureResult` (a JSON-serialisable `dict` with attribute access).

    Raises:
        ValueError: bad arguments, or TFLite Micro reports it cannot allocate the model.
        RuntimeError: TFLite Micro crashed on the model (see `runtime.tflm_preflight`).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, measure
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(64, 8).astype("float32")
    >>> y = np.random.randint(0, 3, 64)
    >>> tflite = to_tflite(model, representative_data=x)
    >>> r = measure(tflite, data=(x, y), keras_model=model)
    >>> r.flash_bytes == len(tflite), r.ops
    (True, ['FULLY_CONNECTED'])
    >>> 0.0 <= r.accuracy <= 1.0
    True
    """
    data_bytes = _flatbuffer.as_model_bytes(tflite_bytes)
    info = _flatbuffer.read_tflite(data_bytes)
    if data is None and (keras_model is not None or task is not None):
        raise ValueError(
            "keras_model= and task= need data=(x, y) to evaluate on. Received: data=None"
        )
    io_types = {t.dtype for t in info.input_tensors + info.output_tensors}
    fields = {
        "flash_bytes": len(data_bytes),
        "ops": [op.name for op in info.operators],
        "inputs": [t.to_dict() for t in info.input_tensors],
        "outputs": [t.to_dict() for t in info.output_tensors],
        "quantization": next(iter(io_types)).lower() if len(io_types) == 1 else "mixed",
    }
    fields["arena_plan"] = "offline" if info.offline_offsets is not None else "tflm"
    resolved = _resolve_target(target)
    pointer_bytes = DEFAULT_POINTER_BYTES if resolved is None else resolved[3]
    # One TFLite Micro child process: the inference on `x` (if any) and the arena report.
    arrays, count, batch = None, 0, 1
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = (data[0], _scored_labels(data[1], info, sample_count(data[0])))
    if data is not None:
        arrays, count, batch = _runtime._prepare_inputs(info, labelled_pair(data)[0])
    reply = _runtime._tflm_child_run(data_bytes, info, arrays, count, batch, arena_size,
                                     allocations=True)
    host = _runtime.parse_allocations(reply["allocations"])
    fields.update({"host_" + k: v for k, v in host.items()})
    fields.update(target_arena(info, host, pointer_bytes), pointer_bytes=pointer_bytes)
    if resolved is not None:
        name, flash, ram, _ = resolved
        fields.update(
            target=name,
            target_flash_bytes=None if flash is None else int(flash),
            target_ram_bytes=None if ram is None else int(ram),
            fits_flash=None if flash is None else bool(fields["flash_bytes"] <= flash),
            fits_ram=None if ram is None else bool(fields["ram_bytes"] <= ram),
        )
    if data is not None:
        out = _runtime._finish_outputs(info, reply["outputs"], True)
        name = info.output_names[0] if info.output_names else None
        fields.update(_evaluate(out, labelled_pair(data), keras_model, task, name,
                                     probabilities=_probability_output(info)))
    return MeasureResult(**fields)
