"""How each Keras layer type acts on channel groups (METHOD.md section 1).

One table maps a layer class to its role and op name, with an optional check
that returns a reason when this particular instance cannot be handled (then
the layer is opaque and every group it touches is frozen). A second table
does the same for ``keras.ops`` operations called in a functional graph
(``x + 3.0``, ``keras.ops.hard_silu(x)``, ``x * s``): element-wise ones
propagate (one tensor) or join (two tensors) channel groups.

Element-wise ops need not map a pruned (zero) channel to zero: every layer
that combines channels (Conv/Dense) gates its input, so whatever a closed
channel carries never reaches an open one. They must not turn a finite value
into inf/NaN (``0 * inf`` is NaN), which is why ``log``, ``sqrt``, division
by a tensor and the like stay opaque.
"""

import math

import keras
import numpy as np

from keras_dnas import _keras
from keras_dnas.graph.plan import layer_geometry
from keras_dnas.layers.choice import Choice
from keras_dnas.layers.masked import plain_class

L = keras.layers

#: Activations that mix channels: a pruned channel would change the kept ones.
CHANNEL_MIXING_ACTIVATIONS = frozenset({"softmax", "log_softmax", "sparsemax"})


def _channels_last(layer, in_shapes, out_shape):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "data_format='channels_first' is not searchable"
    return None


def _conv(layer, in_shapes, out_shape):
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    return _channels_last(layer, in_shapes, out_shape)


def _depthwise(layer, in_shapes, out_shape):
    if layer.depth_multiplier != 1:
        return f"depth_multiplier={layer.depth_multiplier} (only 1 keeps channels in their group)"
    return _channels_last(layer, in_shapes, out_shape)


def _batchnorm(layer, in_shapes, out_shape):
    if layer.axis not in (-1, len(in_shapes[0]) - 1):
        return f"normalises axis {layer.axis}, not the channel axis"
    return None


def _channel_axis(axis, rank):
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return any(a in (-1, rank - 1) for a in axes)


def mixes_channels(layer, rank=None):
    """Name of a channel-mixing activation the layer (or op) applies, else ``None``.

    Such a layer keeps the channel layout (it propagates the group) but a
    pruned channel would change the kept ones, so its group is frozen.
    """
    if isinstance(layer, L.Softmax):
        return "softmax"
    op = _keras_op_class(layer)
    if op in _MIXING_OPS:
        axis = getattr(layer, "axis", -1)
        return _MIXING_OPS[op] if rank is None or _channel_axis(axis, rank) else None
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in CHANNEL_MIXING_ACTIVATIONS else None


def _concat(layer, in_shapes, out_shape):
    if layer.axis == 0 or layer.axis == -len(out_shape):
        return "concatenates the batch axis"
    return None


def _permute(layer, in_shapes, out_shape):
    if layer.dims[-1] != len(layer.dims):
        return f"permutes the channel axis (dims={tuple(layer.dims)})"
    return None


def _flatten(layer, in_shapes, out_shape):
    if any(d is None for d in in_shapes[0][1:]):
        return "input has unknown dimensions"
    return _channels_last(layer, in_shapes, out_shape)


def keeps_channels_last(in_shape, out_shape):
    """Whether a reshape keeps the channel axis last and only regroups positions.

    E.g. ``(1, 1, C) <-> (C,)`` (squeeze-excite) or ``(H, W, C) -> (H*W, C)``:
    channel ``c`` of every position stays channel ``c``, so the group passes
    through (``(H, W, C) -> (H*W*C,)`` is flattening instead).
    """
    if any(d is None for d in list(in_shape[1:]) + list(out_shape[1:])):
        return False
    if len(in_shape) < 2 or len(out_shape) < 2 or in_shape[-1] != out_shape[-1]:
        return False
    return math.prod(in_shape[1:-1]) == math.prod(out_shape[1:-1])


def _reshape(layer, in_shapes, out_shape):
    if any(d is None for d in in_shapes[0][1:]):
        return "input has unknown dimensions"
    if len(out_shape) != 2 and not keeps_channels_last(in_shapes[0], out_shape):
        return (f"reshapes to {tuple(out_shape[1:])} (only flattening to 1-D or a reshape "
                "that keeps the channel axis last is searchable)")
    return None


def _layernorm(layer, in_shapes, out_shape):
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(in_shapes[0])
    if sorted(a % rank for a in axes) != [rank - 1]:
        return f"normalises axes {layer.axis}, not the channel axis alone"
    return None


def _per_channel(values, channels):
    """Each array is a scalar or broadcasts along the channel axis only as 1 or ``channels``."""
    for v in values:
        shape = np.shape(v)
        if shape and shape[-1] not in (1, channels):
            return False
    return True


def _rescaling(layer, in_shapes, out_shape):
    if not _per_channel([layer.scale, layer.offset], in_shapes[0][-1]):
        return "scale or offset does not broadcast along the channel axis"
    return None


def _prelu(layer, in_shapes, out_shape):
    alpha = getattr(layer, "alpha", None)
    if alpha is not None and alpha.shape[-1] not in (1, in_shapes[0][-1]):
        return "alpha does not broadcast along the channel axis"
    return None


def _entries(classes, role, op, check=None):
    return {cls: (role, op, check) for cls in classes}


ROLES = {
    L.Conv1D: ("defining", "conv", _conv),
    L.Conv2D: ("defining", "conv", _conv),
    L.Dense: ("defining", "dense", None),
    L.DepthwiseConv1D: ("propagating", "depthwise", _depthwise),
    L.DepthwiseConv2D: ("propagating", "depthwise", _depthwise),
    L.BatchNormalization: ("propagating", "batchnorm", _batchnorm),
    L.SeparableConv1D: ("defining", "separable", _channels_last),
    L.SeparableConv2D: ("defining", "separable", _channels_last),
    **_entries([L.Conv1DTranspose, L.Conv2DTranspose], "defining", "transpose_conv",
               _channels_last),
    **_entries([L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax], "propagating",
               "activation"),
    L.PReLU: ("propagating", "prelu", _prelu),
    L.LayerNormalization: ("propagating", "layernorm", _layernorm),
    L.Rescaling: ("propagating", "rescaling", _rescaling),
    # mean / variance have one entry per kept axis; the channel axis (if kept) is last
    L.Normalization: ("propagating", "normalization", None),
    **_entries(
        [L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise,
         L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity],
        "propagating", "dropout"),
    **_entries([L.MaxPooling1D, L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D],
               "propagating", "pool", _channels_last),
    **_entries([L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D],
               "propagating", "global_pool", _channels_last),
    # spatial only, each channel on its own (Resizing / CenterCrop: also inside a network)
    L.Permute: ("propagating", "pad", _permute),  # positions only: channels stay last
    **_entries([L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D,
                L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
                L.Resizing, L.CenterCrop],
               "propagating", "pad", _channels_last),
    L.Add: ("joining", "add", None),
    # a choice block's merge joins its alternatives' outputs like an Add (and costs nothing:
    # the frozen model keeps one alternative, no merge)
    Choice: ("joining", "choice", None),
    L.Subtract: ("joining", "subtract", None),
    L.Multiply: ("joining", "multiply", None),
    L.Average: ("joining", "average", None),
    L.Maximum: ("joining", "maximum", None),
    L.Minimum: ("joining", "minimum", None),
    L.Concatenate: ("concatenating", "concat", _concat),
    L.Flatten: ("flattening", "flatten", _flatten),
    L.Reshape: ("flattening", "reshape", _reshape),
}

#: Layers whose weights are sliced along channels at freeze (all others in a
#: searchable group must be weightless).
SLICEABLE = (L.Conv1D, L.Conv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.Dense,
             L.DepthwiseConv1D, L.DepthwiseConv2D,
             L.BatchNormalization, L.SeparableConv1D, L.SeparableConv2D, L.PReLU,
             L.LayerNormalization, L.Normalization)

# ---- keras.ops operations (by class name; Keras defines them in keras.src.ops / activations)

_OP_MODULES = _keras.OP_MODULES

#: Element-wise functions of one tensor, finite for every finite input.
UNARY_OPS = frozenset({
    "Relu", "Relu6", "ReLU", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Tanh", "Gelu",
    "Elu", "Selu", "Celu", "Softplus", "Softsign", "LeakyRelu", "LogSigmoid", "SparsePlus",
    "SparseSigmoid", "Squareplus", "TanhShrink", "SoftShrink", "HardShrink", "HardTanh",
    "Threshold", "Negative", "Absolute", "Square", "Exp", "Sign", "Clip", "Sin", "Cos",
    "Floor", "Ceil", "Round", "Erf",
})
#: Element-wise functions of two operands -> the plan op of a join (two tensors).
BINARY_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
              "Maximum": "maximum", "Minimum": "minimum", "Divide": None, "TrueDivide": None}
_MIXING_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sparsemax": "sparsemax"}
#: Reductions over positions (``keras.ops.mean(x, axis=(1, 2), keepdims=True)`` in an SE).
REDUCTION_OPS = frozenset({"Mean", "Max", "Min", "Sum"})
#: Shape changes that insert or remove size-1 axes (the channel axis stays last).
AXIS_OPS = frozenset({"ExpandDims", "Squeeze"})


def _keras_op_class(op):
    """Class name of a ``keras.ops`` operation (not a layer), else ``None``."""
    if isinstance(op, keras.layers.Layer) or not type(op).__module__.startswith(_OP_MODULES):
        return None
    return type(op).__name__


def is_keras_op(op):
    """Whether ``op`` is a ``keras.ops`` operation rather than a layer."""
    return _keras_op_class(op) is not None


def _op_role(op, arguments, in_shapes, out_shape):
    cls = _keras_op_class(op)
    if cls is None:
        return "opaque", "other", f"operation '{type(op).__name__}' has no channel rule"
    values = keras.tree.flatten((arguments.args, arguments.kwargs)) if arguments else []
    tensors = [v for v in values if isinstance(v, keras.KerasTensor)]
    constants = [v for v in values if not isinstance(v, keras.KerasTensor) and (
        isinstance(v, (int, float, np.ndarray, np.generic)) or hasattr(v, "shape"))]
    if any(np.size(v) != 1 for v in constants):
        return "opaque", "other", (f"keras.ops '{cls}' with a non-scalar constant "
                                   "(per-channel constants cannot be sliced)")
    if cls in REDUCTION_OPS and len(tensors) == 1:
        axis = getattr(op, "axis", None)
        rank = len(in_shapes[0])
        if axis is None or _channel_axis(axis, rank):
            return "opaque", "other", f"keras.ops '{cls}' reduces the channel axis"
        return "propagating", "global_pool", None
    if cls == "Concatenate" and len(tensors) > 1:  # keras.ops.concatenate([a, b], axis=-1)
        axis = getattr(op, "axis", 0)
        if axis == 0 or axis == -len(out_shape):
            return "opaque", "other", f"keras.ops '{cls}' concatenates the batch axis"
        if not _channel_axis(axis, len(out_shape)):
            return "joining", "concat", None  # along positions, as the layer
        return "concatenating", "concat", None
    if cls in AXIS_OPS and len(tensors) == 1:
        if not keeps_channels_last(in_shapes[0], out_shape):
            return "opaque", "other", f"keras.ops '{cls}' moves the channel axis"
        return "propagating", "reshape", None
    if cls in UNARY_OPS or cls in _MIXING_OPS:
        if len(tensors) != 1:
            return "opaque", "other", f"keras.ops '{cls}' of several tensors"
        return "propagating", "activation", None
    if cls in BINARY_OPS:
        if len(tensors) == 2:
            if BINARY_OPS[cls] is None:
                return "opaque", "other", (f"keras.ops '{cls}' divides by a tensor (a pruned, "
                                           "zero channel would give inf)")
            return "joining", BINARY_OPS[cls], None
        if len(tensors) == 1:
            if BINARY_OPS[cls] is None and arguments and \
                    not isinstance(arguments.args[0], keras.KerasTensor):
                return "opaque", "other", (f"keras.ops '{cls}' divides by a tensor (a pruned, "
                                           "zero channel would give inf)")
            return "propagating", "scalar", None
    return "opaque", "other", f"keras.ops '{cls}' has no channel rule"


def role_of(layer, in_shapes, out_shape, arguments=None):
    """``(role, op, reason)`` of a layer call; ``reason`` is set when it is opaque.

    ``arguments`` (the Keras node's call arguments) tells a ``keras.ops``
    operation's constants from its tensors.
    """
    if isinstance(layer, keras.Model):
        return "opaque", "other", f"nested model '{layer.name}'"
    if not isinstance(layer, keras.layers.Layer):
        role, op, reason = _op_role(layer, arguments, in_shapes, out_shape)
        if role == "propagating" and (len(in_shapes) != 1 or not out_shape or
                                      in_shapes[0][-1] != out_shape[-1]):
            role, reason = "opaque", "changes the channel count"
        return role, op, reason
    cls = plain_class(layer)
    entry = ROLES.get(cls)
    if entry is None:
        return "opaque", "other", f"layer type {type(layer).__name__} has no channel rule"
    role, op, check = entry
    reason = check(layer, in_shapes, out_shape) if check else None
    if cls is L.Reshape and reason is None and keeps_channels_last(in_shapes[0], out_shape):
        role = "propagating"
    if cls is L.Concatenate and reason is None and not _channel_axis(layer.axis, len(out_shape)):
        role = "joining"  # along positions: channel c of every input is channel c of the output
    if reason is None and role == "propagating":
        if len(in_shapes) != 1 or in_shapes[0][-1] != out_shape[-1]:
            reason = "changes the channel count"
        elif layer.weights and not isinstance(layer, SLICEABLE):
            reason = "has per-channel weights keras_dnas cannot slice"
    if reason is not None:
        return "opaque", op, reason
    return role, op, None


def geometry(layer, op, in_shapes, out_shape):
    """Plain-data geometry of a layer call (`graph.plan.layer_geometry` of its attributes)."""
    in0 = list(in_shapes[0]) if in_shapes else []
    kernel = getattr(layer, "pool_size" if op == "pool" else "kernel_size", ()) or ()
    return layer_geometry(
        [s[1:] for s in in_shapes], list(out_shape)[1:], kernel_size=kernel,
        strides=getattr(layer, "strides", ()) or (),
        dilation_rate=getattr(layer, "dilation_rate", ()) or (),
        padding=getattr(layer, "padding", ""),
        use_bias=getattr(layer, "use_bias", False) and op != "batchnorm",
        depth_multiplier=getattr(layer, "depth_multiplier", 1), groups=getattr(layer, "groups", 1),
        activation=_activation_name(layer), channel_params=_channel_params(layer, op, in0),
        fixed_params=layer.count_params() if op == "other" and getattr(layer, "weights", None)
        else 0)


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


def _channel_params(layer, op, in_shape):
    """Parameters per channel of a propagating layer that keeps them in the model.

    PReLU's alpha (one per position unless shared), LayerNormalization's
    gamma and beta, Rescaling's per-channel scale / offset, Normalization's
    per-channel mean and variance. Channel-independent constants are ignored.
    """
    channels = in_shape[-1] if in_shape else None
    if op == "prelu":
        shape = tuple(getattr(layer, "alpha").shape) if getattr(layer, "alpha", None) \
            is not None else ()
        return int(math.prod(shape[:-1])) if shape and shape[-1] == channels else 0
    if op == "layernorm":
        return int(bool(layer.scale)) + int(bool(layer.center))
    if op == "rescaling":
        return sum(1 for v in (layer.scale, layer.offset)
                   if np.ndim(v) and np.shape(v)[-1] == channels and channels != 1)
    if op == "normalization":
        rank = len(in_shape)
        axes = sorted(a % rank for a in (layer.axis or ()))
        if not axes or axes[-1] != rank - 1:
            return 0
        return 2 * int(math.prod(in_shape[a] for a in axes[:-1]))
    return 0
