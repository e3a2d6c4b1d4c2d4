"""Quantisation-aware fine-tuning with tensorflow-model-optimization (the `tfmot` extra).

`to_tflite_tfmot(model, (x, y), loss=...)` hands a plain Keras 3 model (e.g. the output of
`kd.freeze`) to tensorflow-model-optimization's QAT (`tfmot.quantization.keras.quantize_model`)
and returns the fine-tuned model as full-int8 TFLite bytes for TensorFlow Lite Micro.

tfmot only accepts legacy Keras 2 models (the `tf_keras` package) and importing it sets
`TF_USE_LEGACY_KERAS=1` in `os.environ`, which switches `tf.keras` to Keras 2 for the whole
process. So nothing of tfmot or tf_keras is imported here: the work runs in a child Python
process (this file run as a script) whose environment alone has `TF_USE_LEGACY_KERAS=1`. The
parent writes the functional graph (layer classes, configs, connections) as JSON, the weights
and the data as `.npz` into a temporary directory; the child rebuilds the model layer by layer
with `tf_keras.layers`, checks that it computes what the Keras 3 model computes, applies
`quantize_model`, fine-tunes, converts and writes the `.tflite` back. The calling process's
`tf.keras` and environment are never changed.

Install with `pip install "keras_dnas[tfmot]"` (`tf-keras` must have the same minor version as
`tensorflow`). For the native Keras 3 alternative, which also covers Conv1D / DepthwiseConv1D
models and runs on any backend, see `keras_dnas.qat` and `keras_dnas.qat.tflite`.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from keras_dnas._data import input_arrays, labelled_pair

_INSTALL = 'pip install "keras_dnas[tfmot]"'
_PACKAGES = {"tf_keras": "tf-keras",
             "tensorflow_model_optimization": "tensorflow-model-optimization"}

# Files exchanged with the child process.
_SPEC, _WEIGHTS, _DATA = "model.json", "weights.npz", "data.npz"
_RESULT, _TFLITE = "result.json", "model.tflite"

# Samples the child runs through the rebuilt tf_keras model to check it against Keras 3.
_N_CHECK = 32

# Keras 3 config entries with no tf_keras counterpart, dropped when they hold these values
# (any other value is an error naming the layer).
_KERAS3_ONLY = {"optional": False, "quantization_config": None, "lora_rank": None,
                "lora_alpha": None, "sparse": False, "ragged": False, "axis": -1}
# Keras 3 argument name -> tf_keras name, per layer class.
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}


# ---------------------------------------------------------------------------- parent side


def _check_installed():
    """ImportError naming the pip install when tf_keras / tfmot are missing or mismatched."""
    missing = [pip for mod, pip in _PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(
            "to_tflite_tfmot() needs tensorflow-model-optimization and tf-keras, which are not "
            f"installed (missing: {', '.join(missing)}). Install them with: {_INSTALL}"
        )
    from importlib import metadata

    try:
        tf_version = metadata.version("tensorflow")
        tfk_version = metadata.version("tf-keras")
    except metadata.PackageNotFoundError:  # e.g. tensorflow-cpu, a nightly: let the child try
        return
    if tf_version.split(".")[:2] != tfk_version.split(".")[:2]:
        minor = ".".join(tf_version.split(".")[:2])
        raise ImportError(
            f"tf-keras {tfk_version} does not match tensorflow {tf_version} (tf-keras must "
            f'have the same minor version). Install the matching one: pip install "tf-keras~='
            f'{minor}.0"'
        )


def _plain(value):
    """A Keras 3 serialised object (initializer, regularizer, dtype policy ...) for tf_keras."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        if value["class_name"] in ("DTypePolicy", "FloatDTypePolicy"):
            return value["config"]["name"]
        return {"class_name": value["class_name"], "config": _plain(value["config"])}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tensor_refs(value):
    """Keras 3 call arguments -> JSON with `{"tensor": [layer, node, index]}` for tensors."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return {"tensor": list(value["config"]["keras_history"])}
    if isinstance(value, dict):
        return {"dict": {k: _tensor_refs(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_tensor_refs(v) for v in value]}
    return {"value": value}


def _graph_spec(model):
    """The functional graph as plain JSON data, the weights per layer, the input shape."""
    import keras

    from keras_dnas.graph import walk

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a Keras 3 model (`keras.Model`). Received: {type(model).__name__}"
        )
    functional = walk.functional_of(model)  # Sequential -> its graph; subclassed -> error
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise ValueError(
            "to_tflite_tfmot() supports models with one input and one output. Received: "
            f"model {model.name!r} with {len(functional.inputs)} inputs and "
            f"{len(functional.outputs)} outputs"
        )
    config = functional.get_config()
    layers, weights = [], {}
    for k, entry in enumerate(config["layers"]):
        name, class_name = entry["name"], entry["class_name"]
        if entry.get("module") != "keras.layers" or entry.get("registered_name"):
            what = ("a nested model" if class_name in ("Functional", "Sequential", "Model")
                    else "not a built-in Keras layer")
            raise ValueError(
                f"Layer {name!r} ({class_name}) is {what}: to_tflite_tfmot() rebuilds the model "
                "from built-in Keras layers only. Use keras_dnas.qat.quantize_aware (native "
                "QAT) or flatten the model first."
            )
        if len(entry["inbound_nodes"]) > 1:
            raise ValueError(
                f"to_tflite_tfmot() does not support shared layers; layer {name!r} is called "
                f"{len(entry['inbound_nodes'])} times."
            )
        nodes = [{"args": _tensor_refs(list(node["args"])),
                  "kwargs": _tensor_refs(dict(node["kwargs"]))}
                 for node in entry["inbound_nodes"]]
        layers.append({"name": name, "class_name": class_name,
                       "config": _plain(entry["config"]), "nodes": nodes})
        for j, w in enumerate(functional.get_layer(name).get_weights()):
            weights[f"{k}/{j}"] = np.asarray(w)
    ref = config["output_layers"]
    output = ref[0] if ref and isinstance(ref[0], (list, tuple)) else ref
    spec = {"name": model.name, "layers": layers, "output": list(output)}
    return spec, weights, tuple(functional.inputs[0].shape)


def _loss_spec(loss):
    """`loss` as JSON the child can resolve with tf_keras (a name or a built-in loss's config)."""
    import keras

    if isinstance(loss, str):
        return {"name": loss}
    if isinstance(loss, keras.losses.Loss) and type(loss).__module__.startswith("keras."):
        return {"class_name": type(loss).__name__, "config": _plain(loss.get_config())}
    if callable(loss) and getattr(loss, "__module__", "").startswith("keras."):
        return {"name": loss.__name__}  # e.g. keras.losses.mean_squared_error
    raise TypeError(
        "loss must be the name of a Keras loss (e.g. 'sparse_categorical_crossentropy', 'mse') "
        "or an instance of a built-in Keras loss class (e.g. keras.losses."
        "SparseCategoricalCrossentropy(from_logits=True)): training runs in a separate "
        f"process, so custom losses cannot be passed. Received: loss={loss!r}"
    )


def _xy(data, what, shape):
    x, y = labelled_pair(data, what)
    return input_arrays(x, what, shapes=[shape])[0], y


def _child_error(result):
    kind = {"ImportError": ImportError, "TypeError": TypeError}.get(result.get("kind"), ValueError)
    message = result.get("message", "unknown error")
    if result.get("log"):
        message += "\n" + result["log"]
    return kind(message)


def to_tflite_tfmot(model, train_data, representative_data=None, *, loss, epochs=5,
                    batch_size=32, learning_rate=5e-4, calibrate=True, validation_data=None,
                    metrics=None, seed=None, verbose=0):
    """Fine-tune `model` with tensorflow-model-optimization's QAT; full-int8 TFLite bytes.

    The model is rebuilt as a legacy Keras 2 (`tf_keras`) model in a child process, checked to
    compute what `model` computes, wrapped by `tfmot.quantization.keras.quantize_model`
    (tfmot's default 8-bit scheme: per-channel int8 weights, per-tensor int8 activations,
    Conv2D / DepthwiseConv2D + BatchNormalization (+ ReLU) folded), its activation ranges
    calibrated on `representative_data` (see `calibrate`), fine-tuned with Adam
    (`learning_rate` decayed to zero by a cosine over the run) and converted with
    `tf.lite.TFLiteConverter`: int8 weights and activations, int8 input and output, batch size
    1, `TFLITE_BUILTINS_INT8` operators only; the result is checked against
    `TFLM_BUILTIN_OPS` as `to_tflite` checks it. Neither the calling process's environment
    (`TF_USE_LEGACY_KERAS`) nor its `tf.keras` change. `model` is not modified.

    tfmot quantises only some layer types: Conv2D, DepthwiseConv2D, Dense, BatchNormalization
    directly after one of those, ReLU / Activation / Softmax, Add, Concatenate, 2-D pooling,
    global pooling, Flatten / Reshape / Dropout / ZeroPadding ... but not Conv1D,
    DepthwiseConv1D, 1-D max pooling or a BatchNormalization after an Add / Concatenate; use
    `keras_dnas.qat.quantize_aware` (native Keras 3 QAT) for those.

    Args:
        model: A built Keras 3 Functional or Sequential model of built-in layers with one input
            and one output (e.g. from `kd.freeze`).
        train_data: `(x, y)` arrays to fine-tune on (samples first).
        representative_data: Typical inputs (an array, samples first) for the initial
            activation ranges and the converter's calibration; default: the first 256
            samples of `x`.
        loss: The training loss: a Keras loss name (`"sparse_categorical_crossentropy"`,
            `"mse"`, ...) or an instance of a built-in Keras loss class (e.g.
            `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`); match the model's
            output (probabilities after a softmax, or logits).
        epochs: Fine-tuning epochs.
        batch_size: Training batch size.
        learning_rate: Initial Adam learning rate (cosine decay to 0 over the run).
        calibrate: Start every activation range at its min / max over `representative_data`
            (as post-training quantisation does). `False` keeps tfmot's own start, [-6, 6]
            moved by an exponential moving average with decay 0.999: it needs thousands of
            training steps, and a short fine-tuning then clips large activations.
        validation_data: Optional `(x, y)` evaluated after each epoch (shown with `verbose`).
        metrics: Optional metric names (strings) for the training log, e.g. `["accuracy"]`.
        seed: Optional random seed for the child process (weights order, dropout, shuffling).
        verbose: 0 silent; 1 or 2 show the child's training log (as `model.fit(verbose=...)`).

    Returns:
        The `.tflite` flatbuffer (`bytes`).

    Raises:
        ImportError: tf-keras or tensorflow-model-optimization is not installed (or tf-keras
            does not match the TensorFlow version): `pip install "keras_dnas[tfmot]"`.
        ValueError: A layer tf_keras or tfmot cannot handle (named), a model whose tf_keras
            rebuild does not compute the same outputs, malformed data, a conversion failure or
            an operator TensorFlow Lite Micro does not support.
        TypeError: A custom loss (it cannot be sent to the child process).

    Example (needs the `tfmot` extra):

    >>> import keras, numpy as np
    >>> from keras_dnas.export import op_names
    >>> from keras_dnas.qat.tfmot import to_tflite_tfmot
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
    ...                           keras.layers.Dense(2)])
    >>> x, y = np.random.rand(64, 8).astype("float32"), np.random.rand(64, 2)
    >>> op_names(to_tflite_tfmot(model, (x, y), loss="mse", epochs=1))  # doctest: +SKIP
    ['FULLY_CONNECTED', 'FULLY_CONNECTED']
    """
    import keras

    _check_installed()
    spec, weights, input_shape = _graph_spec(model)
    expected_shape = input_shape[1:]
    if any(d is None for d in expected_shape):
        raise ValueError(
            "TensorFlow Lite Micro needs static shapes, but the model input has shape "
            f"{input_shape}. Build the model with a fixed `keras.Input(shape=...)`."
        )
    x, y = _xy(train_data, "train_data", expected_shape)
    rep = x[:256] if representative_data is None else input_arrays(
        representative_data, "representative_data", shapes=[expected_shape])[0]
    if metrics is not None and not all(isinstance(m, str) for m in metrics):
        raise TypeError(f"metrics must be a list of metric names. Received: {metrics!r}")
    check = rep[:_N_CHECK]
    data = {"x": x, "y": y, "rep": rep, "check_x": check,
            "check_y": keras.ops.convert_to_numpy(model(check, training=False))}
    if validation_data is not None:
        data["val_x"], data["val_y"] = _xy(validation_data, "validation_data", expected_shape)
    job = {"loss": _loss_spec(loss), "epochs": int(epochs), "batch_size": int(batch_size),
           "learning_rate": float(learning_rate), "metrics": list(metrics or []),
           "calibrate": bool(calibrate), "seed": seed, "verbose": int(verbose)}

    with tempfile.TemporaryDirectory(prefix="keras_dnas_tfmot_") as tmp:
        with open(os.path.join(tmp, _SPEC), "w") as f:
            json.dump({"model": spec, "job": job}, f)
        np.savez(os.path.join(tmp, _WEIGHTS), **weights)
        np.savez(os.path.join(tmp, _DATA), **data)
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # Run this file by path (not `-m`): the child imports neither keras_dnas nor Keras 3.
        runner = ("import runpy, sys; sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")
        command = [sys.executable, "-c", runner, os.path.abspath(__file__), tmp]
        proc = subprocess.run(command, cwd=tmp, env=env, text=True,
                              stdout=None if verbose else subprocess.PIPE,
                              stderr=subprocess.PIPE)
        result_path = os.path.join(tmp, _RESULT)
        result = None
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        if result is None:
            raise RuntimeError(
                f"The tensorflow-model-optimization child process failed (exit code "
                f"{proc.returncode}). Its output (end):\n{(proc.stderr or '')[-3000:]}"
            )
        if not result["ok"]:
            raise _child_error(result)
        with open(os.path.join(tmp, _TFLITE), "rb") as f:
            tflite = f.read()
    if calibrate and not result.get("calibrated_ranges"):
        import warnings

        warnings.warn(
            "to_tflite_tfmot(calibrate=True) found no moving-average range in this "
            "tensorflow-model-optimization version; its activation ranges started at [-6, 6].",
            stacklevel=2,
        )

    from keras_dnas.export import ops as _ops

    layer_names = [layer["name"] for layer in spec["layers"]]
    layer_names += ["quant_" + n for n in layer_names]  # tfmot's wrapper names
    problems = _ops.tflm_problems(tflite, "int8", layer_names=layer_names,
                                  output_layers=["quant_" + spec["output"][0]])
    if problems:
        raise ValueError(
            f"The tfmot-quantised model {model.name!r} cannot run as is on TensorFlow Lite "
            "Micro:\n  - " + "\n  - ".join(problems)
        )
    return tflite


# ----------------------------------------------------------------------------- child side


class _ChildError(Exception):
    def __init__(self, message, kind="ValueError"):
        super().__init__(message)
        self.kind = kind


def _layer_kwargs(cls, config, name, base=None):
    """Keep the config entries `cls` accepts (renamed as tf_keras names them).

    `base`: the tf_keras base class (`Layer`) whose subclasses' `__init__` arguments count, and
    whose `**kwargs` take `name`, `trainable`, `dtype` and `activity_regularizer`.
    """
    import inspect

    accepted = {"name", "trainable", "dtype", "activity_regularizer"} if base else set()
    for klass in cls.__mro__:
        if klass is object or (base is not None and not issubclass(klass, base)):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    renamed = _RENAMED.get(cls.__name__, {})
    kwargs = {}
    for key, value in config.items():
        key = renamed.get(key, key)
        if key.endswith("_initializer"):
            continue  # the weights are copied over
        if key in accepted:
            kwargs[key] = value
        elif value is None or (key in _KERAS3_ONLY and value == _KERAS3_ONLY[key]):
            continue  # a Keras 3-only option left at its neutral value
        else:
            raise _ChildError(
                f"{name!r} ({cls.__name__}): tf_keras has no `{key}` argument "
                f"(value {value!r}); to_tflite_tfmot() cannot rebuild it. Use "
                "keras_dnas.qat.quantize_aware (native QAT) instead."
            )
    return kwargs


def _rebuild(spec, weights, tf_keras, tf):
    """The tf_keras functional model described by `spec`, with the Keras 3 weights."""
    tensors = {}
    pending = list(enumerate(spec["layers"]))

    def resolve(ref):
        if "tensor" in ref:
            return tensors[tuple(ref["tensor"])]
        if "list" in ref:
            return [resolve(r) for r in ref["list"]]
        if "dict" in ref:
            return {k: resolve(r) for k, r in ref["dict"].items() if r.get("value", 0) is not None}
        return ref["value"]

    def ready(ref):
        if "tensor" in ref:
            return tuple(ref["tensor"]) in tensors
        children = ref.get("list") or list(ref.get("dict", {}).values())
        return all(ready(r) for r in children)

    while pending:
        progress = False
        for item in list(pending):
            k, entry = item
            name, class_name, config = entry["name"], entry["class_name"], entry["config"]
            if class_name == "InputLayer":
                tensors[(name, 0, 0)] = tf_keras.Input(
                    batch_shape=tuple(config["batch_shape"]), dtype=config.get("dtype"), name=name)
                pending.remove(item)
                progress = True
                continue
            if not all(ready(n["args"]) and ready(n["kwargs"]) for n in entry["nodes"]):
                continue
            cls = getattr(tf_keras.layers, class_name, None)
            if cls is None:
                raise _ChildError(
                    f"Layer {name!r} ({class_name}) has no tf_keras counterpart; "
                    "to_tflite_tfmot() cannot rebuild it. Use keras_dnas.qat.quantize_aware "
                    "(native QAT) instead."
                )
            try:
                layer = cls(**_layer_kwargs(cls, config, name, tf_keras.layers.Layer))
            except (TypeError, ValueError) as e:
                raise _ChildError(f"Layer {name!r} ({class_name}) could not be rebuilt with "
                                  f"tf_keras: {e}") from e
            for node_index, node in enumerate(entry["nodes"]):
                out = layer(*resolve(node["args"]), **resolve(node["kwargs"]))
                for t, tensor in enumerate(tf.nest.flatten(out)):
                    tensors[(name, node_index, t)] = tensor
            n_saved = sum(1 for key in weights.files if key.startswith(f"{k}/"))
            values = [weights[f"{k}/{j}"] for j in range(n_saved)]
            if n_saved != len(layer.weights) or any(
                    tuple(v.shape) != tuple(w.shape) for v, w in zip(values, layer.weights)):
                raise _ChildError(
                    f"Layer {name!r} ({class_name}): its tf_keras weights "
                    f"{[tuple(w.shape) for w in layer.weights]} do not match the Keras 3 ones; "
                    "to_tflite_tfmot() cannot rebuild it."
                )
            layer.set_weights(values)
            pending.remove(item)
            progress = True
        if not progress:
            raise _ChildError("The model graph could not be rebuilt (unresolved layer inputs: "
                              + ", ".join(repr(e["name"]) for _, e in pending) + ").")
    inputs = [tensors[(e["name"], 0, 0)] for e in spec["layers"] if e["class_name"] == "InputLayer"]
    return tf_keras.Model(inputs, tensors[tuple(spec["output"])], name=spec["name"])


def _check_supported(model, tfmot):
    """Name every layer tfmot's default 8-bit scheme cannot quantise."""
    import tf_keras

    try:
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry as registry_module,
        )

        registry = registry_module.Default8BitQuantizeRegistry()
    except (ImportError, AttributeError):  # a tfmot layout we do not know: quantize_model checks
        return
    # BatchNormalization is quantised only folded into a preceding Conv2D / DepthwiseConv2D /
    # Dense, which quantize_model checks itself.
    skip = (tf_keras.layers.InputLayer, tf_keras.layers.BatchNormalization)
    bad = [f"{layer.name!r} ({type(layer).__name__})" for layer in model.layers
           if not isinstance(layer, skip) and not registry.supports(layer)]
    if bad:
        raise _ChildError(_unsupported_message(bad))


def _unsupported_message(layers):
    return (
        "tensorflow-model-optimization cannot quantise layer(s) "
        + ", ".join(layers)
        + " (its default 8-bit scheme supports Conv2D, DepthwiseConv2D, Dense, "
        "BatchNormalization directly after one of them, ReLU, Softmax, Add, Concatenate, 2-D "
        "and global pooling, Flatten, Reshape, Dropout ...; not Conv1D, DepthwiseConv1D or 1-D "
        "max pooling). Use keras_dnas.qat.quantize_aware + keras_dnas.export.to_tflite_qat "
        "(native Keras 3 QAT) for this model."
    )


def _calibrate_ranges(q, rep, tf, batch_size=128):
    """Start tfmot's activation ranges at their min / max over `rep`; number of ranges set.

    tfmot starts every moving-average activation range at [-6, 6] and moves it by an
    exponential moving average of the batch min / max with decay 0.999 during training, so a
    fine-tuning of a few hundred steps keeps ranges that clip large activations (or waste half
    the int8 levels on negative values after a ReLU). Here one pass over `rep` in training mode
    assigns the running min / max instead of the average (the input's all-values range and
    the kernels' ranges are set by the same pass), as post-training calibration would; every
    other variable (the BatchNormalization moving statistics) is restored afterwards.
    """
    import re

    train = tf.__internal__.train
    moving_average = train.assign_moving_average
    touched = {}

    def assign_extreme(variable, value, decay, zero_debias=True, name=None):
        del decay, zero_debias
        if id(variable) in touched:
            kind = (name or variable.name.rsplit("/", 1)[-1]).lower()  # AssignMaxEma, ..._max
            extreme = tf.maximum if "max" in kind else tf.minimum
            value = extreme(variable, value)
        touched[id(variable)] = variable
        return variable.assign(value)

    saved = [(v, v.numpy()) for v in q.variables]
    train.assign_moving_average = assign_extreme
    try:
        for start in range(0, len(rep), batch_size):
            q(rep[start: start + batch_size], training=True)
    finally:
        train.assign_moving_average = moving_average
    for variable, value in saved:  # keep the ranges (tfmot's `*_min` / `*_max` variables)
        if id(variable) not in touched and not re.search(r"_(min|max)(:\d+)?$", variable.name):
            variable.assign(value)
    return len(touched)


def _loss(spec, tf_keras):
    if "name" in spec:
        try:
            return tf_keras.losses.get(spec["name"])
        except ValueError as e:
            raise _ChildError(f"Unknown loss {spec['name']!r} for tf_keras: {e}", "TypeError")
    cls = getattr(tf_keras.losses, spec["class_name"], None)
    if cls is None:
        raise _ChildError(f"tf_keras has no loss class {spec['class_name']!r}.", "TypeError")
    kwargs = _layer_kwargs(cls, spec["config"], spec["class_name"])
    return cls(**kwargs)


def _child_main(workdir):
    import re
    import time

    start = time.perf_counter()
    with open(os.path.join(workdir, _SPEC)) as f:
        payload = json.load(f)
    spec, job = payload["model"], payload["job"]
    weights = np.load(os.path.join(workdir, _WEIGHTS))
    data = np.load(os.path.join(workdir, _DATA))
    try:
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as e:
        raise _ChildError(f"Importing tensorflow-model-optimization / tf_keras failed ({e}). "
                          f"Install them with: {_INSTALL}", "ImportError") from e
    if job["seed"] is not None:
        tf_keras.utils.set_random_seed(job["seed"])

    model = _rebuild(spec, weights, tf_keras, tf)
    got = np.asarray(model(data["check_x"], training=False))
    want = data["check_y"]
    tolerance = 1e-4 * max(1.0, float(np.max(np.abs(want))))
    if got.shape != want.shape or not np.allclose(got, want, atol=tolerance, rtol=1e-4):
        diff = (f"largest difference {np.max(np.abs(got - want)):.3g}"
                if got.shape == want.shape else f"output shape {got.shape} vs {want.shape}")
        raise _ChildError(
            "The model rebuilt with tf_keras does not compute what the Keras 3 model computes "
            f"({diff}); to_tflite_tfmot() cannot handle this model. Use "
            "keras_dnas.qat.quantize_aware (native QAT) instead."
        )

    _check_supported(model, tfmot)
    try:
        q = tfmot.quantization.keras.quantize_model(model)
    except RuntimeError as e:
        found = re.search(r"Layer (\S+):<class '[\w.]*?(\w+)'> is not supported", str(e))
        if not found:
            raise
        raise _ChildError(_unsupported_message([f"{found.group(1)!r} ({found.group(2)})"])) from e

    calibrated = _calibrate_ranges(q, data["rep"], tf) if job["calibrate"] else 0
    x, y = data["x"], data["y"]
    steps = job["epochs"] * -(-len(x) // job["batch_size"])
    schedule = tf_keras.optimizers.schedules.CosineDecay(job["learning_rate"], max(steps, 1))
    q.compile(tf_keras.optimizers.Adam(schedule), _loss(job["loss"], tf_keras),
              metrics=job["metrics"] or None)
    validation = (data["val_x"], data["val_y"]) if "val_x" in data.files else None
    history = q.fit(x, y, epochs=job["epochs"], batch_size=job["batch_size"],
                    validation_data=validation, verbose=job["verbose"])

    # Batch size 1 (TFLite Micro runs one sample at a time), as keras_dnas.export.to_tflite.
    shape = (1,) + tuple(model.inputs[0].shape[1:])
    function = tf.function(lambda t: q(t, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], q)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rep = data["rep"]
    converter.representative_dataset = lambda: ([rep[i: i + 1]] for i in range(len(rep)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        tflite = converter.convert()
    except Exception as e:  # noqa: BLE001 - reported to the parent with the converter message
        raise _ChildError(f"Converting the tfmot-quantised model to TFLite failed: {e}") from e
    with open(os.path.join(workdir, _TFLITE), "wb") as f:
        f.write(tflite)
    return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "calibrated_ranges": calibrated, "seconds": time.perf_counter() - start}


def _main(argv):
    workdir = argv[0]
    try:
        result = dict(_child_main(workdir), ok=True)
    except _ChildError as e:
        result = {"ok": False, "kind": e.kind, "message": str(e)}
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        import traceback

        result = {"ok": False, "kind": "ValueError",
                  "message": f"to_tflite_tfmot() failed in the tfmot process: "
                             f"{type(e).__name__}: {e}",
                  "log": traceback.format_exc()[-3000:]}
    with open(os.path.join(workdir, _RESULT), "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
