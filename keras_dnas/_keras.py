"""Every private Keras API keras_dnas uses, in one place, behind a Keras version check.

keras_dnas reads Keras functional graphs (nodes by depth, a tensor's producing operation, the
nested structure of a model's inputs and outputs, a Sequential model's functional graph) and
needs three more private pieces: the stateless scope (a masked layer must not fold its gates
while a JAX training step traces it), unsafe deserialisation while cloning a layer whose
config holds a lambda, and one scoped fix of Keras' TensorFlow ``add`` during export. Keras
does not promise these across versions, so this module refuses a Keras it was not tested with
instead of failing later with an ``AttributeError`` deep inside a search.

Example:

>>> import keras
>>> from keras_dnas import _keras
>>> x = keras.Input((4,), name="features")
>>> _keras.producer(x).name
'features'
"""

import contextlib
import os

import keras

#: Keras versions keras_dnas is tested with: major 3, minors in this range (inclusive).
SUPPORTED_MAJOR = 3
SUPPORTED_MINORS = (5, 15)
#: Set to 1 to run on an untested Keras 3 minor anyway (with a warning).
ALLOW_UNTESTED_ENV = "KERAS_DNAS_ALLOW_UNTESTED_KERAS"


def _version_tuple(text):
    parts = []
    for piece in str(text).split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))


def check_version(version=None):
    """Raise ImportError unless ``version`` (default: the installed Keras) is supported.

    Example:

    >>> from keras_dnas._keras import check_version
    >>> check_version("3.10.0")
    >>> check_version("2.15.0")
    Traceback (most recent call last):
    ...
    ImportError: keras_dnas needs Keras 3 (3.5 to 3.15), but Keras 2.15.0 is installed. Install a supported one: pip install "keras>=3.5"
    """
    version = keras.__version__ if version is None else version
    major, minor = _version_tuple(version)
    low, high = SUPPORTED_MINORS
    supported = f"Keras {SUPPORTED_MAJOR} ({SUPPORTED_MAJOR}.{low} to {SUPPORTED_MAJOR}.{high})"
    if major != SUPPORTED_MAJOR or minor < low:
        raise ImportError(
            f"keras_dnas needs {supported}, but Keras {version} is installed. "
            f'Install a supported one: pip install "keras>={SUPPORTED_MAJOR}.{low}"')
    if minor > high:
        message = (
            f"keras_dnas is tested with {supported} and reads some Keras internals; Keras "
            f"{version} is newer. Install a tested one (pip install "
            f'"keras>={SUPPORTED_MAJOR}.{low},<{SUPPORTED_MAJOR}.{high + 1}") or set '
            f"{ALLOW_UNTESTED_ENV}=1 to try it anyway.")
        if os.environ.get(ALLOW_UNTESTED_ENV) != "1":
            raise ImportError(message)
        import warnings

        warnings.warn(message, stacklevel=2)


check_version()

# Imported after the check: these paths are what changes between Keras versions.
from keras.src.backend.common.stateless_scope import in_stateless_scope  # noqa: E402
from keras.src.models.functional import Functional  # noqa: E402
from keras.src.saving import serialization_lib  # noqa: E402

#: Modules that define the ``keras.ops`` operations (an op in a functional graph is an
#: instance of a class defined there).
OP_MODULES = ("keras.src.ops.", "keras.src.activations.")

__all__ = [
    "Functional",
    "OP_MODULES",
    "build_before_first_step",
    "call_arguments",
    "check_version",
    "export_rewrites",
    "in_stateless_scope",
    "accepts_training",
    "inbound_node_count",
    "initial_weights",
    "inputs_struct",
    "nodes_by_depth",
    "outputs_struct",
    "producer",
    "remat_scope_active",
    "sequential_graph",
    "unsafe_deserialization",
    "uses_remat",
]


def nodes_by_depth(fn):
    """``{depth: [Node, ...]}`` of a Functional model (depth 0 = the outputs)."""
    return fn._nodes_by_depth


def call_arguments(node, tensor_map):
    """``(args, kwargs)`` of a node's call, its input tensors replaced through
    ``tensor_map`` (``{id(old tensor): new tensor}``)."""
    return node.arguments.fill_in(tensor_map)


def producer(tensor):
    """The operation (layer, InputLayer or ``keras.ops`` op) that produced a KerasTensor."""
    return tensor._keras_history.operation


def inputs_struct(fn):
    """A Functional model's inputs in the nested structure it was built with."""
    return getattr(fn, "_inputs_struct", fn.inputs)


def input_keys(fn):
    """The keys by which a Functional model takes its inputs, in the order of ``fn.inputs``:
    a model built on a dict of inputs takes them by the dict's keys (flattened sorted, as
    ``fn.inputs`` is), any other by its input tensors' names."""
    struct = inputs_struct(fn)
    if isinstance(struct, dict):
        return sorted(struct)
    return [t.name for t in fn.inputs]


def call_inputs(fn, arrays):
    """One array per input (``fn.inputs`` order) -> what calling ``fn`` takes without Keras'
    "structure of `inputs` doesn't match" warning: a dict for a model built on a dict."""
    struct = inputs_struct(fn)
    if isinstance(struct, dict):
        return dict(zip(sorted(struct), arrays))
    return list(arrays) if len(arrays) > 1 else arrays[0]


def outputs_struct(fn):
    """A Functional model's outputs in the nested structure it was built with."""
    return getattr(fn, "_outputs_struct", fn.outputs)


def sequential_graph(model):
    """The Functional graph Keras builds behind a Sequential model (``None`` before it knows
    its input shape)."""
    return getattr(model, "_functional", None)


def accepts_training(operation):
    """Whether ``operation`` (a layer) takes a ``training`` argument in its ``call``."""
    return bool(getattr(operation, "_call_has_training_arg", False))


def inbound_node_count(layer):
    """How many times ``layer`` is called in the graphs it belongs to."""
    return len(layer._inbound_nodes)


def unsafe_deserialization():
    """Context in which ``from_config`` may rebuild lambdas (a clone of the user's own layer)."""
    return serialization_lib.SafeModeScope(False)


@contextlib.contextmanager
def initial_weights(values):
    """While active, the layers in ``values`` (``{id(layer): {weight name: array}}``) create
    those weights with the given values instead of running their initializers.

    Rebuilding a model whose weights are set right after (``slicing.rebuild_with``) then skips
    the initializers' random draws and the assignment that overwrites them (EfficientNetB0: ~310
    variables). Yields the set of ``(id(layer), name)`` created so; a weight whose shape differs
    from its value's, or a layer not listed, is created as usual. If Keras' `Layer.add_weight`
    moved, nothing changes (the caller assigns what was not created so).
    """
    import inspect

    import numpy as np

    from keras.src.layers import layer as layer_module

    made = set()
    real = getattr(layer_module.Layer, "add_weight", None)
    try:
        signature = inspect.signature(real)
        signature.parameters["initializer"], signature.parameters["shape"]
    except (TypeError, ValueError, KeyError):
        yield made
        return

    def add_weight(self, *args, **kwargs):
        given = values.get(id(self))
        if given is None:
            return real(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        name = bound.arguments.get("name")
        value = given.get(name)
        shape = bound.arguments.get("shape")
        if value is None or shape is None or tuple(shape) != tuple(np.shape(value)):
            return real(self, *args, **kwargs)

        def initializer(shape, dtype=None):
            return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype) if dtype
                              else None)

        bound.arguments["initializer"] = initializer
        made.add((id(self), name))
        return real(*bound.args, **bound.kwargs)

    layer_module.Layer.add_weight = add_weight
    try:
        yield made
    finally:
        layer_module.Layer.add_weight = real


# ---------------------------------------------------------------- the export's rewrites
# While a model is traced for the TFLite converter, a few Keras functions are replaced by the
# same function written with TensorFlow ops the converter lowers to operators TensorFlow Lite
# Micro runs in int8. Each entry: where the function lives, its name there, and a maker that
# gets Keras' function and returns the replacement (which falls back to Keras' for any case it
# does not cover). `export_rewrites` applies them all and restores Keras' on exit.
_EXPORT_REWRITES = []


def _rewrite(owner, name):
    """Register the decorated maker as the export's rewrite of ``owner().<name>``."""
    def register(make):
        _EXPORT_REWRITES.append((owner, name, make))
        return make
    return register


def _tf_numpy():
    from keras.src.backend.tensorflow import numpy as tf_numpy

    return tf_numpy


def _ops_nn():
    from keras.src.ops import nn as ops_nn

    return ops_nn


def _tf_nn():
    from keras.src.backend.tensorflow import nn as tf_nn

    return tf_nn


# ELU, SELU and CELU become TANH, DIV and arithmetic. The converter leaves TensorFlow's ELU in
# float (its quantiser has no ELU rule: DEQUANTIZE, ELU, QUANTIZE), turns ELU with alpha != 1
# and SELU into a SELECT, which TensorFlow Lite Micro lacks, and CELU's expm1 into an EXP, whose
# TFLite Micro kernel is float only. For y <= 0, exp(y) - 1 = 2 t / (1 - t) with t = tanh(y / 2)
# (the same function; 1 - t is in [1, 2)), so elu(x) = relu(x) + alpha * expm1(min(x, 0)) is
# MUL, TANH, SUB, DIV and ADD, all int8 kernels of TensorFlow Lite Micro.
def _float_tensor(x):
    import tensorflow as tf

    return tf.is_tensor(x) and x.dtype in (tf.float32, tf.float16, tf.bfloat16)


def _elu(x, alpha):
    import tensorflow as tf

    # q = -min(x, 0) = relu(-x), a MUL with the RELU fused. Not min(x, 0): the converter gives a
    # MINIMUM's input the range of its output (their scales are tied), which clipped every
    # positive input to 0. Not relu(x): the converter fuses a RELU into the conv or dense before
    # it, and as x is read twice it duplicated that layer (twice its MACs)
    q = tf.nn.relu(x * -1.0)
    t = tf.math.tanh(-0.5 * q)  # tanh(min(x, 0) / 2)
    return (x + q) + (2.0 * float(alpha)) * t / (1.0 - t)  # relu(x) + alpha * expm1(min(x, 0))


@_rewrite(_tf_nn, "elu")
def _elu_as_tanh(keras_elu):
    def elu(x, alpha=1.0):
        if not _float_tensor(x):
            return keras_elu(x, alpha=alpha)
        return _elu(x, alpha)

    return elu


@_rewrite(_tf_nn, "selu")
def _selu_as_tanh(keras_selu):
    def selu(x):
        if not _float_tensor(x):
            return keras_selu(x)
        # scale * elu(x, alpha), TensorFlow's constants (`tf.nn.selu`)
        return 1.0507009873554804934193349852946 * _elu(x, 1.6732632423543772848170429916717)

    return selu


@_rewrite(_tf_nn, "celu")
def _celu_as_tanh(keras_celu):
    def celu(x, alpha=1.0):
        if not _float_tensor(x) or float(alpha) <= 0:
            return keras_celu(x, alpha=alpha)
        return float(alpha) * _elu(x / float(alpha), 1.0)  # max(x,0) + a expm1(min(x,0) / a)

    return celu


@_rewrite(_tf_nn, "gelu")
def _gelu_tanh_as_sigmoid(keras_gelu):
    """GELU's tanh approximation becomes `x * sigmoid(2 z)` (= x (1 + tanh z) / 2), z =
    sqrt(2 / pi) (x + 0.044715 x^3): TensorFlow lowers it to a GELU operator TensorFlow Lite
    Micro has no kernel for; these are MUL, ADD and LOGISTIC. The exact GELU (erf) has no
    such form: it keeps Keras' path and the export names the layer."""
    import math

    import tensorflow as tf

    def gelu(x, approximate=True):
        if not approximate or not _float_tensor(x):
            return keras_gelu(x, approximate=approximate)
        z = (2.0 * math.sqrt(2.0 / math.pi)) * x * (1.0 + 0.044715 * (x * x))
        return x * tf.math.sigmoid(z)

    return gelu


@_rewrite(_tf_numpy, "add")
def _add_as_add(keras_add):
    """`x + y` of two tensors of one static shape becomes `tf.add`.

    Keras' TensorFlow `add` turns `x + y` into `tf.nn.bias_add` whenever `y` squeezes to a
    vector as long as `x.shape[1]` (NCHW) or `x.shape[-1]`. The export signature has batch 1,
    so a residual Add of two one-channel Conv1D outputs, (1, T, 1) + (1, T, 1), becomes an NCHW
    BiasAdd on a rank-3 tensor, which the TFLite converter cannot lower (it inserts a rank-4
    transpose: "'tf.Transpose' op x should be of the same rank with y"). For operands of equal
    shape the sum is the same; only the op differs. Conv / Dense biases (different shapes) keep
    the fused path.
    """
    import tensorflow as tf

    def add(x1, x2):
        if (tf.is_tensor(x1) and tf.is_tensor(x2) and x1.dtype == x2.dtype
                and x1.shape.is_fully_defined() and x1.shape == x2.shape):
            return tf.add(x1, x2)
        return keras_add(x1, x2)

    return add


@_rewrite(_tf_numpy, "take")
def _take_without_index_wrap(keras_take):
    """`ops.take` with computed integer indices becomes a plain `tf.gather`.

    Keras' TensorFlow `take` (what `Embedding` calls) first maps negative indices to the end
    (`tf.where(i < 0, i + n, i)`, as JAX does), which the converter emits as a `SELECT`
    operator that TFLite Micro has no kernel for: an `Embedding` model could not be exported.
    TFLite Micro's GATHER rejects a negative index at run time anyway, so for every index it
    can run the result is the same. Constant indices (folded by the converter) keep Keras'
    path.
    """
    import tensorflow as tf

    def take(x, indices, axis=None):
        if (axis is not None and tf.is_tensor(indices) and indices.dtype.is_integer
                and not isinstance(indices, (tf.SparseTensor, tf.RaggedTensor))
                and tf.get_static_value(indices) is None):
            return tf.gather(tf.convert_to_tensor(x), indices, axis=axis)
        return keras_take(x, indices, axis=axis)

    return take


@_rewrite(_tf_numpy, "split")
def _split_as_slices(keras_split):
    """`ops.split(x, n, axis)` of a float tensor into equal parts becomes n static slices.

    An unrolled `LSTM` / `GRU` cell splits its gate pre-activations with `ops.split` (a SPLIT
    per step). The converter's int8 quantiser left one of those SPLITs in float in about a
    third of the conversions of one model with the same calibration data (not deterministic),
    so the export refused the file, and a search could fail at `kd.freeze`'s certificate.
    Slices of the same bounds are the same function and quantise every time: `tf.slice`, a
    SLICE operator (int8 in TensorFlow Lite Micro, no persistent data; a STRIDED_SLICE keeps
    108 B per operator in the arena tail). Uneven or non-static splits keep Keras' path.
    """
    import tensorflow as tf

    def split(x, indices_or_sections, axis=0):
        if (not _float_tensor(x) or not isinstance(indices_or_sections, int)
                or x.shape.rank is None or not -x.shape.rank <= axis < x.shape.rank):
            return keras_split(x, indices_or_sections, axis=axis)
        axis %= x.shape.rank
        size = x.shape[axis]
        if size is None or indices_or_sections <= 0 or size % indices_or_sections:
            return keras_split(x, indices_or_sections, axis=axis)
        step = size // indices_or_sections
        begin, width = [0] * x.shape.rank, [-1] * x.shape.rank
        width[axis] = step
        return [tf.slice(x, begin[:axis] + [k * step] + begin[axis + 1:], width)
                for k in range(indices_or_sections)]

    return split


@_rewrite(_ops_nn, "_layer_normalization")
def _layer_normalization_centred(keras_layer_norm):
    """`LayerNormalization` computes `(x - mean) * rsqrt(var + eps)`.

    Keras computes `x * inv + (-mean * inv)` (`keras.src.ops.nn._layer_normalization`); the
    converter keeps that `-mean` as a NEG operator the int8 quantiser leaves in float, so a
    model with LayerNormalization (a transformer block) could not be converted to int8 for
    TFLite Micro. The centred form is the same function and becomes SUB, MUL, RSQRT and
    MEAN, which quantise. RMS scaling keeps Keras' path.
    """
    import tensorflow as tf

    def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None,
                            rms_scaling=False):
        x = tf.convert_to_tensor(x)
        if rms_scaling or x.dtype != tf.float32:
            return keras_layer_norm(x, gamma=gamma, beta=beta, axis=axis, epsilon=epsilon,
                                    rms_scaling=rms_scaling)
        axes = sorted([axis] if isinstance(axis, int) else list(axis))
        shape = [1] * x.shape.rank
        for a in axes:
            shape[a] = x.shape[a]

        def broadcast(v):  # as Keras: a per-feature vector over every normalised axis
            v = tf.convert_to_tensor(v, x.dtype)
            return tf.reshape(v, shape) if axes != [x.shape.rank - 1] else v

        mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
        out = (x - mean) * tf.math.rsqrt(variance + (keras.backend.epsilon()
                                                     if epsilon is None else epsilon))
        if gamma is not None:
            out = out * broadcast(gamma)
        if beta is not None:
            out = out + broadcast(beta)
        return out

    return layer_normalization


@_rewrite(lambda: keras.layers.TimeDistributed, "call")
def _time_distributed_as_one_call(keras_call):
    """`TimeDistributed(layer)` calls `layer` once on the time steps merged into the batch,
    not once per step.

    With a fixed number of steps Keras calls the inner layer in a Python loop and stacks the
    results, so a `TimeDistributed(Dense(16))` over 32 steps converts to 32 FULLY_CONNECTED
    operators with their tensors and a PACK (a 6 x 16 Dense: 38 KB of flash, 17 KB of arena
    on TFLite Micro). Merged, it is one operator; the function is the same for a layer that
    treats samples independently, as at inference. A mask, or a shape not fixed, keeps Keras'
    path.
    """
    import tensorflow as tf

    def call(self, inputs, training=None, mask=None):
        steps = tuple(inputs.shape[1:])
        if mask is not None or not steps or any(d is None for d in steps):
            return keras_call(self, inputs, training=training, mask=mask)
        kwargs = {"training": training} if accepts_training(self.layer) else {}
        outputs = self.layer.call(tf.reshape(inputs, (-1,) + steps[1:]), **kwargs)
        return tf.reshape(outputs, (-1, steps[0]) + tuple(outputs.shape[1:]))

    return call


# `UpSampling1D` / `UpSampling2D` (nearest) become one nearest resize. Keras computes nearest
# up-sampling with `ops.repeat` (for XLA), which TensorFlow lowers to RESHAPE / TILE, an op
# TensorFlow Lite Micro has no kernel for, so a U-Net or a decoder did not run there.
# `RESIZE_NEAREST_NEIGHBOR` by an integer factor (no corner alignment, no half-pixel centres:
# source row = row // factor) copies the same values, also quantised (one scale in and out).
# UpSampling1D goes through it as a (T, 1) image.
def _static(x):
    import tensorflow as tf

    return tf.is_tensor(x) and x.shape[1:].is_fully_defined()


def _nearest_resize(x, fh, fw):  # channels-last, rank 4
    import tensorflow as tf

    size = [int(x.shape[1]) * fh, int(x.shape[2]) * fw]
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False,
                                            half_pixel_centers=False)


@_rewrite(lambda: keras.layers.UpSampling2D, "_resize_images")
def _upsampling2d_as_resize(keras_resize):
    def resize_images(self, x, height_factor, width_factor, data_format,
                      interpolation="nearest"):
        if interpolation != "nearest" or data_format != "channels_last" or not _static(x):
            return keras_resize(self, x, height_factor, width_factor, data_format,
                                interpolation=interpolation)
        return _nearest_resize(x, int(height_factor), int(width_factor))

    return resize_images


@_rewrite(lambda: keras.layers.UpSampling1D, "call")
def _upsampling1d_as_resize(keras_call):
    import tensorflow as tf

    def call(self, inputs):
        if not _static(inputs) or inputs.shape.rank != 3:
            return keras_call(self, inputs)
        return tf.squeeze(_nearest_resize(tf.expand_dims(inputs, 2), int(self.size), 1), axis=2)

    return call


@contextlib.contextmanager
def export_rewrites():
    """While exporting: every rewrite above, so the traced model converts to operators
    TensorFlow Lite Micro runs in int8.

    Keras' functions are restored on exit, also on an error. No-op on other backends; a
    function Keras no longer defines where it is looked for keeps Keras' own.
    """
    done = []
    try:
        if keras.backend.backend() == "tensorflow":
            for owner, name, make in _EXPORT_REWRITES:
                try:
                    target = owner()
                    original = vars(target)[name]
                except (ImportError, AttributeError, KeyError):
                    continue
                setattr(target, name, make(original))
                done.append((target, name, original))
        yield
    finally:
        for target, name, original in reversed(done):
            setattr(target, name, original)


def attach_sublayer(owner, attribute, layer):
    """``owner.<attribute> = layer``, tracked as a sub-layer even when ``owner`` is a built
    subclassed layer, whose tracker Keras locks after ``build`` (a training wrapper around the
    searchable model: built before the callbacks on JAX, or by an earlier ``fit``)."""
    tracker = getattr(owner, "_tracker", None)
    locked = bool(getattr(tracker, "locked", False))
    if locked:
        tracker.unlock()
    try:
        setattr(owner, attribute, layer)  # Layer.__setattr__ tracks it
    finally:
        if locked:
            tracker.lock()


def forget_sublayer(owner, attribute):
    """Drop the sub-layer ``owner.<attribute>`` and stop ``owner`` tracking its variables.

    Keras tracks a layer set as an attribute (``Layer.__setattr__``) but has no public call to
    forget it; ``del`` forgets variables only. The search attaches its state to the model for
    the length of ``fit`` and detaches it here.
    """
    sub = sublayer(owner, attribute)
    if sub is None:
        return
    owner._tracker.untrack(sub)
    if attribute in owner.__dict__:
        object.__delattr__(owner, attribute)
    owner.__dict__.get("_modules", {}).pop(attribute, None)


def sublayer(owner, attribute):
    """The sub-layer ``owner.<attribute>`` set by :func:`attach_sublayer`, or None. On the
    PyTorch backend a layer is a ``torch.nn.Module`` and keeps it in ``_modules``, not in
    its ``__dict__``."""
    sub = owner.__dict__.get(attribute)
    if sub is None:
        sub = (owner.__dict__.get("_modules") or {}).get(attribute)
    return sub


def build_before_first_step(model):
    """Build the optimizer and the compiled loss and metrics before the first training step traces.

    Keras' TensorFlow trainer without a distribution strategy creates those variables inside the
    first trace of the train step, and a ``tf.function`` that created variables traces again at
    its next call, so every ``fit`` of a fresh model traces its (whole) train step twice. With a
    strategy Keras first builds them symbolically from a batch's shapes (``_symbolic_build``);
    this makes the next call of ``model.train_function`` do the same, from its iterator's
    element spec (the same shapes and dtypes), then hands over to Keras' function: one trace.
    Changes no value (the variables are the same, created from zeros), only when they are
    created. TensorFlow only; a no-op with a strategy (Keras builds then) or before
    ``make_train_function``.
    """
    step = getattr(model, "train_function", None)
    if (keras.backend.backend() != "tensorflow" or step is None
            or getattr(model, "_distribute_strategy", None) is not None
            or not hasattr(model, "_symbolic_build")):
        return

    import tensorflow as tf

    def first_step(iterator):
        model.train_function = step  # once: later steps call Keras' function directly
        spec = getattr(iterator, "element_spec", None)
        leaves = keras.tree.flatten(spec) if spec is not None else []
        # dense tensors of known rank only (not optionals, ragged or sparse data): else Keras
        # builds them in its first trace, as before
        if leaves and all(type(s) is tf.TensorSpec and s.shape.rank is not None
                          for s in leaves):
            _symbolic_build(model, spec)
        return step(iterator)

    model.train_function = first_step


def _symbolic_build(model, spec):
    """Keras' ``_symbolic_build`` from a batch's spec; a built Functional model's output spec
    is read off its graph (Keras' own shortcut for inputs of the graph's shapes) instead of
    tracing the model's call once more."""
    from keras.src.backend import compute_output_spec

    if not isinstance(model, Functional) or not all(
            layer.built for layer in model._flatten_layers()):
        model._symbolic_build(data_batch=spec)
        return
    batch = keras.tree.map_structure(
        lambda s: keras.KerasTensor(tuple(s.shape), keras.backend.standardize_dtype(s.dtype)),
        spec)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    y_pred = model.compute_output_spec(x, training=False)
    if isinstance(y_pred, (list, tuple)) and len(y_pred) == 1:  # as Functional.call returns it
        y_pred = y_pred[0]
    if model._compile_metrics is not None and not model._compile_metrics.built:
        compute_output_spec(model.compute_metrics, x, y, y_pred, sample_weight=sample_weight)
    if model._compile_loss is not None and not model._compile_loss.built:
        compute_output_spec(model._compute_loss, x, y, y_pred, sample_weight=sample_weight,
                            training=False)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def uses_remat(model):
    """Whether some layer of ``model`` was made in a Keras ``RematScope`` (it rematerialises
    its call)."""
    return any(getattr(layer, "_remat_mode", None) is not None
               for layer in model._flatten_layers())


def remat_scope_active():
    """Whether a Keras ``RematScope`` is active now."""
    from keras.src.backend.common.remat import get_current_remat_mode

    return get_current_remat_mode() is not None


def exclude_from_weight_decay(optimizer, var_names):
    """``optimizer.exclude_from_weight_decay`` that keeps the exclusions configured before.

    The public method replaces both the excluded variables and the name patterns; neither can be
    read publicly.
    """
    previous_ids = set(getattr(optimizer, "_exclude_from_weight_decay", set()) or set())
    pattern = getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
    names = list(var_names) + ([] if pattern is None else [pattern.pattern])
    optimizer.exclude_from_weight_decay(var_names=names)
    optimizer._exclude_from_weight_decay = previous_ids
    return optimizer
