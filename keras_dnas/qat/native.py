"""Quantisation-aware fine-tuning (QAT) of plain Keras 3 models for full-int8 TFLite Micro.

`quantize_aware(model, representative_data)` rebuilds a plain (e.g. frozen) Functional or
Sequential model so that its forward pass simulates what the TFLite converter and TensorFlow
Lite Micro compute in int8, and `model.fit` can adapt the weights to it:

- **Weights**: per output channel, symmetric int8 (`scale = max|w| / 127`, integers in
  [-127, 127]), exactly as the TFLite converter quantises Conv2D / DepthwiseConv2D /
  FullyConnected kernels; rounding has a straight-through gradient.
- **BatchNormalization** directly after a convolution or dense layer is folded into its kernel
  and bias first (with the moving statistics), as the converter folds it; the folded layer is
  what gets fine-tuned.
- **Activations**: per tensor, asymmetric int8 (`keras.quantizers.fake_quant_with_min_max_vars`,
  256 levels, range nudged to contain zero), at the places where the int8 TFLite graph has a
  tensor with its own scale: the model inputs, the output of every convolution / dense / add /
  global pooling ... after its fused ReLU or ReLU6. Ops that TFLite runs on the scale of their
  input (max pooling, reshape, flatten, padding, dropout) get none; average pooling is rounded
  back onto its input's grid; softmax / sigmoid / tanh get TFLite's fixed output ranges.
- **Ranges** start at the min / max of the float activations over `representative_data` (what
  post-training quantisation would use), then follow an exponential moving average of the
  batch min / max during training (`ranges="ema"`) or are trained by gradient descent
  (`ranges="learned"`).

`keras_dnas.qat.tflite.to_tflite_qat` turns the fine-tuned model into a full-int8 `.tflite` whose
activation scales are the learnt ranges; `strip` gives the plain float model (weights on the
int8 grid) for ordinary post-training conversion.

Everything here is `keras` / `keras.ops` (any backend); TensorFlow is used only by the export.

Example:

>>> import keras, numpy as np
>>> from keras_dnas import qat
>>> model = keras.Sequential([
...     keras.Input((8, 8, 1)),
...     keras.layers.Conv2D(4, 3, use_bias=False),
...     keras.layers.BatchNormalization(),
...     keras.layers.ReLU(),
...     keras.layers.GlobalAveragePooling2D(),
...     keras.layers.Dense(3),
... ])
>>> x = np.random.rand(32, 8, 8, 1).astype("float32")
>>> q = qat.quantize_aware(model, representative_data=x)
>>> [type(layer).__name__ for layer in q.layers[1:5]]  # BN folded, quantiser after the ReLU
['FakeQuant', 'QuantConv2D', 'ReLU', 'FakeQuant']
>>> float(np.max(np.abs(q.predict(x, verbose=0) - model.predict(x, verbose=0)))) < 0.1
True
"""

import collections

import numpy as np

import keras
from keras import ops

from keras_dnas._data import ENDLESS_REPRESENTATIVE_SAMPLES, input_arrays
from keras_dnas._ste import straight_through
from keras_dnas.graph import walk

L = keras.layers

_RANGES = ("ema", "learned")
_EPS = 1e-6  # smallest activation range (an all-zero tensor still gets a valid scale)
_NUM_BITS = 8

# Fixed output ranges TFLite uses for int8 (scale 1/256, zero point -128 for [0, 1); scale
# 1/128, zero point 0 for [-1, 1)); as (min, max) of a 256-level fake quantiser.
_UNIT_RANGE = (0.0, 255.0 / 256.0)
_TANH_RANGE = (-1.0, 127.0 / 128.0)
_FIXED_RANGES = {"softmax": _UNIT_RANGE, "sigmoid": _UNIT_RANGE, "tanh": _TANH_RANGE}

# Activations TFLite fuses into CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / ADD / SUB.
_FUSABLE = ("linear", "relu", "relu6")


# ------------------------------------------------------------------------------ quantisers


def quantize_kernel(kernel, channel_axes=(-1,)):
    """Symmetric per-channel int8 fake quantisation of a kernel, as the TFLite converter does it.

    `scale = max|w| / 127` over every axis except `channel_axes`; values are rounded half away
    from zero to integers in [-127, 127] and scaled back. The gradient is the identity
    (straight-through estimator); the scale is treated as a constant.

    Args:
        kernel: The float kernel (tensor or array).
        channel_axes: The axes that index output channels (TFLite quantises each separately):
            `(-1,)` for Conv1D / Conv2D / Dense kernels, `(-2, -1)` for a depthwise kernel
            `(kh, kw, channels, depth_multiplier)`.

    Returns:
        A tensor of the kernel's shape, on the int8 grid of each channel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import quantize_kernel
    >>> w = np.array([[0.5, -1.0], [0.25, 0.003]], dtype="float32")
    >>> (np.asarray(quantize_kernel(w)) * 127 / np.array([0.5, 1.0])).round(3).tolist()
    [[127.0, -127.0], [64.0, 0.0]]
    """
    kernel = ops.convert_to_tensor(kernel)
    rank = len(kernel.shape)
    keep = {a % rank for a in channel_axes}
    reduce_axes = tuple(a for a in range(rank) if a not in keep)
    scale = ops.max(ops.abs(kernel), axis=reduce_axes, keepdims=True) / 127.0
    scale = ops.stop_gradient(ops.maximum(scale, 1e-12))
    v = kernel / scale
    q = ops.clip(ops.sign(v) * ops.floor(ops.abs(v) + 0.5), -127.0, 127.0) * scale
    return straight_through(q, kernel)


def _numpy(value, dtype=np.float32):
    """A tensor or Keras variable as a NumPy array."""
    if isinstance(value, keras.Variable):
        value = value.value
    return np.asarray(ops.convert_to_numpy(value), dtype)


def _check_ranges(ranges, ema_decay):
    if ranges not in _RANGES:
        raise ValueError(f"ranges must be one of {_RANGES}. Received: ranges={ranges!r}")
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not (
        0.0 <= float(ema_decay) < 1.0
    ):
        raise ValueError(f"ema_decay must be a float in [0, 1). Received: ema_decay={ema_decay!r}")


@keras.saving.register_keras_serializable(package="keras_dnas")
class FakeQuant(L.Layer):
    """Per-tensor, asymmetric int8 fake quantisation of an activation (TFLite's scheme).

    The range `[min, max]` (nudged to contain zero, 256 levels) is held in two variables:

    - `ranges="ema"`: not trainable; in training each batch moves them towards the batch's
      min / max (`r <- decay * r + (1 - decay) * batch`); the first batch (or `calibrate`)
      sets them.
    - `ranges="learned"`: trainable; the clipping gradient of the fake quantiser trains them.
    - `fixed_range=(lo, hi)`: constants (TFLite's fixed output ranges of softmax, sigmoid and
      tanh, or ranges baked in for export). A fixed quantiser acts only in inference, so that
      training sees the float probabilities.

    Values use `keras.quantizers.fake_quant_with_min_max_vars`, which on the TensorFlow
    backend is `tf.quantization.fake_quant_with_min_max_vars`: the op the TFLite converter
    reads the activation scales from.

    Args:
        ranges: `"ema"` (default) or `"learned"`.
        ema_decay: Decay of the moving average (`"ema"` only).
        fixed_range: Optional `(min, max)` constant range.
        **kwargs: Base layer arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import FakeQuant
    >>> fq = FakeQuant(fixed_range=(0.0, 2.55))
    >>> np.round(np.asarray(fq(np.array([0.014, 1.0, 3.0], "float32"))), 4)
    array([0.01, 1.  , 2.55], dtype=float32)
    """

    def __init__(self, ranges="ema", ema_decay=0.99, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        _check_ranges(ranges, ema_decay)
        if fixed_range is not None:
            lo, hi = (float(v) for v in fixed_range)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0.0 <= hi and hi > lo):
                raise ValueError(
                    "fixed_range must be finite (min, max) with min <= 0 <= max and max > min. "
                    f"Received: fixed_range={fixed_range!r}"
                )
            fixed_range = (lo, hi)
        self.ranges = ranges
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range
        self.supports_masking = True
        self._calibration = None  # [min, max] while `calibrate` runs (eager only)

    def build(self, input_shape):
        if self.fixed_range is not None:
            return
        trainable = self.ranges == "learned"
        self.min_value = self.add_weight(
            shape=(), initializer="zeros", trainable=trainable, name="min_value"
        )
        self.max_value = self.add_weight(
            shape=(), initializer="zeros", trainable=trainable, name="max_value"
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="initialized"
        )

    @property
    def range(self):
        """The current `(min, max)` as Python floats (before nudging)."""
        if self.fixed_range is not None:
            return self.fixed_range
        lo = float(_numpy(self.min_value))
        hi = float(_numpy(self.max_value))
        return _valid_range(lo, hi)

    def set_range(self, lo, hi):
        """Set the range (marks the quantiser as initialised)."""
        if self.fixed_range is not None:
            raise ValueError(
                f"FakeQuant '{self.name}' has a fixed range that cannot be set. "
                f"Received: set_range({lo!r}, {hi!r})"
            )
        lo, hi = _valid_range(float(lo), float(hi))
        self.min_value.assign(lo)
        self.max_value.assign(hi)
        self.initialized.assign(1.0)

    def call(self, inputs, training=None, update_ranges=True):
        if self._calibration is not None:  # eager calibration: the float model's min / max
            if update_ranges:
                values = ops.convert_to_numpy(inputs)
                self._calibration[0] = min(self._calibration[0], float(np.min(values)))
                self._calibration[1] = max(self._calibration[1], float(np.max(values)))
            return inputs
        if self.fixed_range is not None:
            if training:
                return inputs
            lo, hi = self.fixed_range
        else:
            lo, hi = self.min_value, self.max_value
            if training and update_ranges and self.ranges == "ema":
                x = ops.stop_gradient(ops.cast(inputs, "float32"))
                batch_lo, batch_hi = ops.min(x), ops.max(x)
                seen = self.initialized
                d = self.ema_decay
                lo = seen * (d * lo + (1.0 - d) * batch_lo) + (1.0 - seen) * batch_lo
                hi = seen * (d * hi + (1.0 - d) * batch_hi) + (1.0 - seen) * batch_hi
                self.min_value.assign(lo)
                self.max_value.assign(hi)
                self.initialized.assign(1.0)
            lo = ops.minimum(lo, 0.0)
            hi = ops.maximum(ops.maximum(hi, 0.0), lo + _EPS)
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs, lo, hi, num_bits=_NUM_BITS, narrow_range=False
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            ranges=self.ranges,
            ema_decay=self.ema_decay,
            fixed_range=None if self.fixed_range is None else list(self.fixed_range),
        )
        return config


def _valid_range(lo, hi):
    lo = min(lo, 0.0)
    hi = max(hi, 0.0)
    if not hi - lo >= _EPS:  # also catches NaN
        hi = lo + _EPS if np.isfinite(lo) else _EPS
        lo = lo if np.isfinite(lo) else 0.0
    return lo, hi


# ------------------------------------------------------------------------------ layers


class _QuantKernel:
    """Mixin: the layer computes with `quantize_kernel(self.kernel)` (same weights, same config)."""

    _channel_axes = (-1,)

    def quantized_kernel(self):
        """The kernel on its per-channel int8 grid (what the int8 model computes with)."""
        return quantize_kernel(self.kernel, self._channel_axes)

    def convolution_op(self, inputs, kernel):  # the hook of Conv1D / Conv2D
        return super().convolution_op(inputs, quantize_kernel(kernel, self._channel_axes))


@keras.saving.register_keras_serializable(package="keras_dnas")
class QuantConv1D(_QuantKernel, L.Conv1D):
    """`keras.layers.Conv1D` computing with a per-channel int8 fake-quantised kernel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import QuantConv1D
    >>> tuple(QuantConv1D(4, 3)(np.zeros((1, 8, 2), "float32")).shape)
    (1, 6, 4)
    """


@keras.saving.register_keras_serializable(package="keras_dnas")
class QuantConv2D(_QuantKernel, L.Conv2D):
    """`keras.layers.Conv2D` computing with a per-channel int8 fake-quantised kernel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import QuantConv2D
    >>> tuple(QuantConv2D(4, 3)(np.zeros((1, 8, 8, 2), "float32")).shape)
    (1, 6, 6, 4)
    """


class _QuantDepthwise(_QuantKernel):
    # Kernel (*kernel_size, channels, depth_multiplier): TFLite has one scale per output
    # channel, i.e. per (channel, multiplier) pair.
    _channel_axes = (-2, -1)

    def call(self, inputs):
        # BaseDepthwiseConv.call reads self.kernel directly (no hook such as Conv's
        # convolution_op), so the forward is restated here with the quantised kernel.
        outputs = ops.depthwise_conv(
            inputs,
            self.quantized_kernel(),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            channels = self.bias.shape[0]
            if self.data_format == "channels_last":
                shape = (1,) * (self.rank + 1) + (channels,)
            else:
                shape = (1, channels) + (1,) * self.rank
            outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="keras_dnas")
class QuantDepthwiseConv1D(_QuantDepthwise, L.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` computing with a per-channel int8 fake-quantised kernel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import QuantDepthwiseConv1D
    >>> tuple(QuantDepthwiseConv1D(3)(np.zeros((1, 8, 2), "float32")).shape)
    (1, 6, 2)
    """


@keras.saving.register_keras_serializable(package="keras_dnas")
class QuantDepthwiseConv2D(_QuantDepthwise, L.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` computing with a per-channel int8 fake-quantised kernel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import QuantDepthwiseConv2D
    >>> tuple(QuantDepthwiseConv2D(3, padding="same")(np.zeros((1, 8, 8, 2), "float32")).shape)
    (1, 8, 8, 2)
    """


@keras.saving.register_keras_serializable(package="keras_dnas")
class QuantDense(_QuantKernel, L.Dense):
    """`keras.layers.Dense` computing with a per-output-unit int8 fake-quantised kernel.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.qat import QuantDense
    >>> tuple(QuantDense(3)(np.zeros((2, 5), "float32")).shape)
    (2, 3)
    """

    def call(self, inputs, training=None):
        # Dense.call reads the `kernel` property directly (no hook); restated with the
        # quantised kernel.
        x = ops.matmul(inputs, self.quantized_kernel())
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


# Plain Keras class -> its quantisation-aware subclass (exact classes only: a user subclass
# of Conv2D may compute something else).
_QUANT_CLASSES = {
    L.Conv1D: QuantConv1D,
    L.Conv2D: QuantConv2D,
    L.DepthwiseConv1D: QuantDepthwiseConv1D,
    L.DepthwiseConv2D: QuantDepthwiseConv2D,
    L.Dense: QuantDense,
}
_PLAIN_CLASSES = {q: p for p, q in _QUANT_CLASSES.items()}

# ------------------------------------------------------------------------------ graph rules

# What the int8 TFLite graph does with the output of each kind of layer:
#   "same"   the op runs on its input's scale (no quantiser of its own);
#   "regrid" same scale, but the op averages: round back onto the input's grid;
#   "own"    the output tensor has its own scale (a FakeQuant after the layer).
_SAME_SCALE = (
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
    L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity, L.Flatten,
    L.Reshape, L.Permute, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D, L.Cropping2D,
    L.MaxPooling1D, L.MaxPooling2D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
    L.UpSampling1D, L.RepeatVector,
)  # fmt: skip
_REGRID = (L.AveragePooling1D, L.AveragePooling2D)
_FUSING_JOINS = (L.Add, L.Subtract)  # TFLite ADD / SUB take a fused activation
_UNSUPPORTED = (
    L.SeparableConv1D, L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3D,
    L.LSTM, L.GRU, L.SimpleRNN, L.Bidirectional, L.TimeDistributed,
)  # fmt: skip


def _activation_name(layer):
    """'relu', 'relu6', 'linear', 'softmax', ... of an activation-like layer, else None."""
    if isinstance(layer, L.ReLU):
        slope = float(layer.negative_slope)
        threshold = float(layer.threshold)
        if slope == 0.0 and threshold == 0.0:
            if layer.max_value is None:
                return "relu"
            if float(layer.max_value) == 6.0:
                return "relu6"
        return "relu_other"
    if isinstance(layer, L.Softmax):
        return "softmax" if layer.axis in (-1, [-1], (-1,)) else "softmax_other"
    if isinstance(layer, L.Activation):
        return _function_name(layer.activation)
    return None


def _function_name(fn):
    return getattr(fn, "__name__", None) or type(fn).__name__


def _is_foldable_bn(layer, producer):
    if not isinstance(layer, L.BatchNormalization):
        return False
    rank = len(producer.output.shape)
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None
    )
    return axis is not None and axis % rank == rank - 1


class _Plan:
    """Per original layer, what the rebuilt model does (decided before rebuilding)."""

    def __init__(self):
        self.node = {}  # id(operation) -> GraphNode
        self.quant_after = {}  # id(operation) -> "none" | "own" | "fixed" | "same" | "regrid"
        self.folded_bn = {}  # id(weighted layer) -> BatchNormalization folded into it
        self.fold_into = {}  # id(bn) -> weighted layer
        self.split_activation = {}  # id(weighted layer) -> its non-fusable activation name


def _check_supported(op):
    if isinstance(op, _UNSUPPORTED) or isinstance(op, keras.Model):
        raise ValueError(
            f"Layer '{op.name}' ({type(op).__name__}) is not supported by quantisation-aware "
            "training. Supported: Conv1D, Conv2D, DepthwiseConv1D / 2D, Dense, "
            "BatchNormalization, activations, pooling, Add / Concatenate / ..., reshaping and "
            f"dropout layers. Received: {type(op).__name__}"
        )
    if isinstance(op, tuple(_QUANT_CLASSES)) and type(op) not in _QUANT_CLASSES:
        raise ValueError(
            f"Layer '{op.name}' is a subclass ({type(op).__name__}) of a Keras convolution / "
            "dense layer; quantisation-aware training rebuilds only the Keras classes "
            "themselves (for a searchable model, call `kd.freeze` first). "
            f"Received: {type(op).__name__}"
        )


def _plan(model):
    """Where the int8 TFLite graph has its own scales: folds, fusions, quantisers per layer."""
    nodes = walk.nodes(model)
    plan = _Plan()
    consumers = collections.defaultdict(list)
    for g in nodes:
        _check_supported(g.operation)
        if id(g.operation) in plan.node:
            raise ValueError(
                "Quantisation-aware training does not support shared layers: layer "
                f"'{g.operation.name}' is called more than once. Received: a model with a shared "
                "layer"
            )
        plan.node[id(g.operation)] = g
        for t in g.inputs:
            consumers[id(t)].append(g)
    model_outputs = {id(t) for t in walk.model_outputs(model)}

    def sole_consumer(layer):
        outs = plan.node[id(layer)].outputs
        if len(outs) != 1 or id(outs[0]) in model_outputs:
            return None
        users = consumers[id(outs[0])]
        return users[0].operation if len(users) == 1 else None

    def fuse_relu(layer):
        """The quantiser goes after a ReLU / ReLU6 that only `layer` feeds (TFLite fuses it)."""
        nxt = sole_consumer(layer)
        if nxt is not None and _activation_name(nxt) in ("relu", "relu6"):
            plan.quant_after[id(layer)] = "none"
            plan.quant_after[id(nxt)] = "own"
        else:
            plan.quant_after[id(layer)] = "own"

    for g in nodes:
        op = g.operation
        if id(op) in plan.quant_after:  # decided with its producer (folded BN, fused ReLU)
            continue
        if not isinstance(op, L.Layer):  # a keras.ops call in the functional graph
            plan.quant_after[id(op)] = "own"
            continue
        act = _activation_name(op)
        if type(op) in _QUANT_CLASSES:
            own_act = _function_name(op.activation)
            if own_act not in _FUSABLE:  # e.g. Dense(activation="softmax"): a separate op
                plan.split_activation[id(op)] = own_act
                plan.quant_after[id(op)] = "own"
                continue
            if own_act != "linear":
                plan.quant_after[id(op)] = "own"
                continue
            tail = op
            nxt = sole_consumer(op)
            if nxt is not None and _is_foldable_bn(nxt, op):
                plan.folded_bn[id(op)] = nxt
                plan.fold_into[id(nxt)] = op
                plan.quant_after[id(op)] = "none"
                tail = nxt
            fuse_relu(tail)
        elif isinstance(op, _FUSING_JOINS) or isinstance(op, L.BatchNormalization):
            fuse_relu(op)  # a BN that cannot be folded becomes MUL + ADD (ADD fuses a ReLU)
        elif act in _FIXED_RANGES:
            plan.quant_after[id(op)] = "fixed"
        elif act == "linear" or isinstance(op, _SAME_SCALE):
            plan.quant_after[id(op)] = "same"
        elif isinstance(op, _REGRID):
            plan.quant_after[id(op)] = "regrid"
        else:
            plan.quant_after[id(op)] = "own"
    return plan


def _fold(layer, bn):
    """Kernel and bias of `layer` with `bn` (inference statistics) folded in, as NumPy."""
    kernel = _numpy(layer.kernel, np.float64)
    depthwise = isinstance(layer, _DEPTHWISE)
    channels = int(np.prod(kernel.shape[-2:])) if depthwise else kernel.shape[-1]
    bias = _numpy(layer.bias, np.float64) if layer.use_bias else np.zeros(channels)
    if bn is None:
        return kernel.astype(np.float32), bias.astype(np.float32)

    def value(v, default):
        return default if v is None else _numpy(v, np.float64)

    gamma = value(bn.gamma, np.ones(channels))
    beta = value(bn.beta, np.zeros(channels))
    mean = value(bn.moving_mean, np.zeros(channels))
    var = value(bn.moving_variance, np.ones(channels))
    factor = gamma / np.sqrt(var + bn.epsilon)
    kernel = kernel * factor.reshape(kernel.shape[-2:] if depthwise else -1)
    bias = (bias - mean) * factor + beta
    return kernel.astype(np.float32), bias.astype(np.float32)


_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)


def _map_tensors(structure, fn):
    return keras.tree.map_structure(
        lambda t: fn(t) if isinstance(t, keras.KerasTensor) else t, structure
    )


def quantize_aware(model, representative_data=None, *, ranges="ema", ema_decay=0.99,
                   batch_size=128):
    """A quantisation-aware copy of a plain Keras model, ready to fine-tune with `fit`.

    The copy computes what the full-int8 TFLite model will compute (see the module docstring):
    convolution / dense kernels on their per-channel int8 grid, BatchNormalization folded into
    the preceding convolution or dense layer, and int8 fake quantisation of every activation
    tensor the int8 graph stores with its own scale. The original model is not modified;
    weights are copied (BatchNormalization folded in).

    Fine-tune the copy with `compile` / `fit` (a small learning rate, a few epochs), then
    convert it with `keras_dnas.qat.tflite.to_tflite_qat`.

    Args:
        model: A built Functional or Sequential Keras 3 model (e.g. from `kd.freeze`) made of
            Conv1D / Conv2D / DepthwiseConv1D / DepthwiseConv2D / Dense, BatchNormalization,
            activations, pooling, merging, reshaping and dropout layers.
        representative_data: Typical inputs (an array with samples first, or a list of arrays
            for several inputs, or an iterable of batches) to start the activation ranges at
            the float model's min / max, as post-training quantisation would. Without it the
            first training batch sets them (the model must not be used for inference before).
        ranges: `"ema"` (default): ranges follow a moving average of the batch min / max
            during training; `"learned"`: ranges are trainable variables.
        ema_decay: Decay of that moving average.
        batch_size: Batch size of the calibration pass over `representative_data`.

    Returns:
        A functional `keras.Model` (not compiled) with `QuantConv2D` / ... and `FakeQuant`
        layers.

    Raises:
        ValueError: For an unsupported layer (named), a shared layer, a subclassed model, or
            an invalid argument.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.qat import quantize_aware
    >>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"),
    ...                           keras.layers.Dense(2)])
    >>> x = np.random.rand(64, 6).astype("float32")
    >>> q = quantize_aware(model, representative_data=x)
    >>> q.compile("adam", "mse")
    >>> _ = q.fit(x, np.zeros((64, 2)), epochs=1, verbose=0)
    >>> sorted(type(layer).__name__ for layer in q.layers)
    ['FakeQuant', 'FakeQuant', 'FakeQuant', 'InputLayer', 'QuantDense', 'QuantDense']
    """
    _check_ranges(ranges, ema_decay)
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model. Received: {type(model).__name__}")
    plan = _plan(model)
    input_ids = {id(t) for t in walk.model_inputs(model)}
    quantizer_of = {}  # id(new tensor) -> FakeQuant holding its grid
    input_quantized = {}  # id(new model-input tensor) -> quantised tensor
    copies = []  # (original layer, its copy in the QAT model)

    def new_fq(name, fixed_range=None):
        return FakeQuant(ranges=ranges, ema_decay=ema_decay, fixed_range=fixed_range,
                         name=name)

    def quantize_input(t):
        key = id(t)
        if key not in input_quantized:
            fq = new_fq(f"{walk.input_layer_name(t)}_fq")
            input_quantized[key] = fq(t)
            quantizer_of[id(input_quantized[key])] = fq
        return input_quantized[key]

    def after(op, kind, out, first_input):
        name = op.name
        if kind == "none":
            return out
        if kind == "same" or (kind == "regrid" and id(first_input) not in quantizer_of):
            fq = quantizer_of.get(id(first_input))
            if fq is not None:
                for t in keras.tree.flatten(out):
                    quantizer_of[id(t)] = fq
            return out
        if kind == "regrid":  # same scale as the input: round back onto its grid
            fq = quantizer_of[id(first_input)]
            out = fq(out, update_ranges=False)
            quantizer_of[id(out)] = fq
            return out
        fixed = _FIXED_RANGES[_activation_name(op)] if kind == "fixed" else None
        fq = new_fq(f"{name}_fq", fixed)
        out = _map_tensors(out, fq)
        for t in keras.tree.flatten(out):
            quantizer_of[id(t)] = fq
        return out

    def operation_fn(op):
        g = plan.node[id(op)]
        kind = plan.quant_after[id(op)]
        if id(op) in plan.fold_into:
            layer = None  # folded: the BN disappears
        elif isinstance(op, L.Layer):  # a convolution / dense layer becomes its Quant* class
            update = {}
            if id(op) in plan.folded_bn:
                update["use_bias"] = True
            if id(op) in plan.split_activation:
                update["activation"] = "linear"
            layer = walk.clone_layer(op, _QUANT_CLASSES.get(type(op)), update)
            copies.append((op, layer))
        else:
            layer = op

        def call(*args, **kwargs):
            position = iter(range(len(g.inputs)))

            def maybe_quantize(t):
                k = next(position, None)
                # integer inputs (token ids of an Embedding) stay as they are: the int8
                # file keeps them integer, a fake-quant would convert to a float CAST
                if (k is not None and id(g.inputs[k]) in input_ids
                        and keras.backend.is_float_dtype(t.dtype)):
                    return quantize_input(t)
                return t

            args, kwargs = _map_tensors((args, kwargs), maybe_quantize)
            first = next(
                t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)
            )
            out = first if layer is None else layer(*args, **kwargs)
            out = after(op, kind, out, first)
            if id(op) in plan.split_activation:
                act = plan.split_activation[id(op)]
                out = L.Activation(act, name=f"{op.name}_{act}")(out)
                fixed = _FIXED_RANGES.get(act)
                out = new_fq(f"{op.name}_{act}_fq", fixed)(out)
            return out

        return call

    qat_model, _ = walk.rebuild(model, operation_fn, name=f"{model.name}_qat")
    for old, new in copies:
        if type(old) in _QUANT_CLASSES:
            kernel, bias = _fold(old, plan.folded_bn.get(id(old)))
            new.set_weights([kernel, bias] if new.use_bias else [kernel])
        elif old.weights:
            new.set_weights(old.get_weights())
    if representative_data is not None:
        calibrate(qat_model, representative_data, batch_size=batch_size)
    return qat_model


def fake_quant_layers(model):
    """The `FakeQuant` layers of a model, in graph order.

    Example:

    >>> import keras
    >>> from keras_dnas.qat import fake_quant_layers, quantize_aware
    >>> x = keras.Input((3,), name="x")
    >>> q = quantize_aware(keras.Model(x, keras.layers.Dense(2, name="fc")(x)))
    >>> [layer.name for layer in fake_quant_layers(q)]
    ['x_fq', 'fc_fq']
    """
    return [layer for layer in getattr(model, "layers", ()) if isinstance(layer, FakeQuant)]


def is_quantize_aware(model):
    """Whether `model` holds quantisation-aware layers (made by `quantize_aware`).

    Example:

    >>> import keras
    >>> from keras_dnas.qat import is_quantize_aware, quantize_aware
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> is_quantize_aware(m), is_quantize_aware(quantize_aware(m))
    (False, True)
    """
    return any(
        isinstance(layer, (FakeQuant, _QuantKernel)) for layer in getattr(model, "layers", ())
    )


def calibrate(qat_model, data, batch_size=128):
    """Set every activation range to the float model's min / max over `data`.

    This is what post-training quantisation does: the quantisers pass values through unchanged
    while the ranges are recorded (the kernels are already on their int8 grid, which moves the
    ranges by a fraction of a per cent), so afterwards the model simulates the post-training
    int8 model. `quantize_aware(model, representative_data)` calls it.

    Args:
        qat_model: A model from `quantize_aware`.
        data: Typical inputs: an array (samples first), a list of arrays (several inputs) or an
            iterable of batches.
        batch_size: Samples per forward pass.

    Returns:
        A dict `{quantiser name: (min, max)}` of the ranges set.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.qat import calibrate, quantize_aware
    >>> x = keras.Input((2,), name="x")
    >>> q = quantize_aware(keras.Model(x, keras.layers.Dense(1)(x)))
    >>> calibrate(q, np.array([[0.0, 1.0], [0.5, -2.0]], "float32"))["x_fq"]
    (-2.0, 1.0)
    """
    quantizers = fake_quant_layers(qat_model)
    if not quantizers:
        raise ValueError(
            "calibrate() expects a model from quantize_aware() (it has no FakeQuant layers). "
            f"Received: model '{getattr(qat_model, 'name', qat_model)}'"
        )
    for fq in quantizers:
        fq._calibration = [np.inf, -np.inf]
    arrays = input_arrays(data, "representative_data", names=[t.name for t in qat_model.inputs],
                          endless_samples=ENDLESS_REPRESENTATIVE_SAMPLES,
                          shapes=[tuple(t.shape[1:]) for t in qat_model.inputs])
    try:
        for start in range(0, len(arrays[0]), batch_size):
            batch = [a[start : start + batch_size] for a in arrays]
            qat_model(batch if len(batch) > 1 else batch[0], training=False)
    finally:
        recorded = {fq.name: tuple(fq._calibration) for fq in quantizers}
        for fq in quantizers:
            fq._calibration = None
    result = {}
    for fq in quantizers:
        if fq.fixed_range is None:
            fq.set_range(*recorded[fq.name])
        result[fq.name] = fq.range
    return result


def activation_ranges(qat_model):
    """`{quantiser name: (min, max)}` of every activation quantiser (fixed ones included).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.qat import activation_ranges, quantize_aware
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3),
    ...                       keras.layers.Softmax(name="probs")])
    >>> q = quantize_aware(m, representative_data=np.ones((4, 2), "float32"))
    >>> activation_ranges(q)["probs_fq"]
    (0.0, 0.99609375)
    """
    return {fq.name: fq.range for fq in fake_quant_layers(qat_model)}


def strip(qat_model, keep_activation_ranges=False):
    """The plain Keras model a quantisation-aware model stands for (for export).

    Quantisation-aware layers become their Keras classes with the kernel replaced by its int8
    grid values (so post-training quantisation reproduces the same int8 weights); activation
    quantisers are removed, or with `keep_activation_ranges=True` kept as `FakeQuant` layers
    with their current ranges as constants (the TFLite converter then uses these ranges).

    Args:
        qat_model: A model from `quantize_aware`.
        keep_activation_ranges: Keep the activation quantisers (constant ranges).

    Returns:
        A new functional `keras.Model`; the input model is not modified.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.qat import quantize_aware, strip
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> plain = strip(quantize_aware(m, representative_data=x))
    >>> [type(layer).__name__ for layer in plain.layers]
    ['InputLayer', 'Dense']
    """
    if not is_quantize_aware(qat_model):
        raise ValueError(
            "strip() expects a model from quantize_aware(). Received: model "
            f"'{getattr(qat_model, 'name', qat_model)}' without quantisation-aware layers"
        )
    copies = []

    def operation_fn(op):
        if isinstance(op, FakeQuant):
            if not keep_activation_ranges:
                return lambda x, *args, **kwargs: x
            return FakeQuant(fixed_range=op.range, name=op.name)
        if isinstance(op, L.Layer):  # a Quant* layer becomes its Keras class
            layer = walk.clone_layer(op, _PLAIN_CLASSES.get(type(op)))
            copies.append((op, layer))
            return layer
        return op

    name = qat_model.name[:-4] if qat_model.name.endswith("_qat") else qat_model.name
    plain, _ = walk.rebuild(qat_model, operation_fn, name=name)
    for old, new in copies:
        if isinstance(old, _QuantKernel):
            weights = [_numpy(quantize_kernel(_numpy(old.kernel), old._channel_axes))]
            if old.use_bias:
                weights.append(_numpy(old.bias))
            new.set_weights(weights)
        elif old.weights:
            new.set_weights(old.get_weights())
    return plain
