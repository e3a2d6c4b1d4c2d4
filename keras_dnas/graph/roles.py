"""How each Keras layer type acts on channel groups (METHOD.md section 1).

One table maps a layer class to its role and op name, with an optional check
that returns a reason when this particular instance cannot be handled (then
the layer is opaque and every group it touches is frozen).
"""

import math

import keras

from keras_dnas.layers.masked import plain_class

L = keras.layers

#: Activations that mix channels: a pruned channel would change the kept ones.
CHANNEL_MIXING_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


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


def mixes_channels(layer):
    """Name of a channel-mixing activation the layer applies, else ``None``.

    Such a layer keeps the channel layout (it propagates the group) but a
    pruned channel would change the kept ones, so its group is frozen.
    """
    if isinstance(layer, L.Softmax):
        return "softmax"
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in CHANNEL_MIXING_ACTIVATIONS else None


def _concat(layer, in_shapes, out_shape):
    if layer.axis not in (-1, len(out_shape) - 1):
        return f"concatenates axis {layer.axis}, not the channel axis"
    return None


def _flatten(layer, in_shapes, out_shape):
    if any(d is None for d in in_shapes[0][1:]):
        return "input has unknown dimensions"
    return _channels_last(layer, in_shapes, out_shape)


def _reshape(layer, in_shapes, out_shape):
    if len(out_shape) != 2 or any(d is None for d in in_shapes[0][1:]):
        return f"reshapes to {tuple(out_shape[1:])} (only flattening to 1-D is searchable)"
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
    **_entries([L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax], "propagating",
               "activation"),
    **_entries(
        [L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise,
         L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity],
        "propagating", "dropout"),
    **_entries([L.MaxPooling1D, L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D],
               "propagating", "pool", _channels_last),
    **_entries([L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D],
               "propagating", "global_pool", _channels_last),
    **_entries([L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D, L.Cropping2D,
                L.UpSampling1D, L.UpSampling2D], "propagating", "pad", _channels_last),
    L.Add: ("joining", "add", None),
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
SLICEABLE = (L.Conv1D, L.Conv2D, L.Dense, L.DepthwiseConv1D, L.DepthwiseConv2D,
             L.BatchNormalization)


def role_of(layer, in_shapes, out_shape):
    """``(role, op, reason)`` of a layer call; ``reason`` is set when it is opaque."""
    if isinstance(layer, keras.Model):
        return "opaque", "other", f"nested model '{layer.name}'"
    if not isinstance(layer, keras.layers.Layer):
        return "opaque", "other", f"operation '{type(layer).__name__}'"
    cls = plain_class(layer)
    entry = ROLES.get(cls)
    if entry is None:
        return "opaque", "other", f"layer type {type(layer).__name__} has no channel rule"
    role, op, check = entry
    reason = check(layer, in_shapes, out_shape) if check else None
    if reason is None and role == "propagating":
        if len(in_shapes) != 1 or in_shapes[0][-1] != out_shape[-1]:
            reason = "changes the channel count"
        elif layer.weights and not isinstance(layer, SLICEABLE):
            reason = "has per-channel weights keras_dnas cannot slice"
    if reason is not None:
        return "opaque", op, reason
    return role, op, None


def geometry(layer, op, in_shapes, out_shape):
    """Plain-data geometry of a layer call (PLAN_FORMAT: kernel, shapes, positions)."""
    in0 = list(in_shapes[0]) if in_shapes else []
    kernel = list(getattr(layer, "kernel_size", ()) or ())
    if op == "pool":
        kernel = list(getattr(layer, "pool_size", ()) or ())

    def positions(shape):
        spatial = shape[1:-1]
        return int(math.prod(d for d in spatial if d is not None)) if spatial else 1

    use_bias = getattr(layer, "use_bias", False)
    if op == "batchnorm":
        use_bias = False
    return {
        "kernel_size": [int(k) for k in kernel],
        "taps": int(math.prod(kernel)) if kernel else 1,
        "strides": [int(s) for s in (getattr(layer, "strides", ()) or ())],
        "dilation_rate": [int(d) for d in (getattr(layer, "dilation_rate", ()) or ())],
        "padding": str(getattr(layer, "padding", "")),
        "use_bias": bool(use_bias),
        "depth_multiplier": int(getattr(layer, "depth_multiplier", 1) or 1),
        "activation": _activation_name(layer),
        "input_shapes": [[d for d in s[1:]] for s in in_shapes],
        "output_shape": list(out_shape[1:]),
        "in_positions": positions(in0) if in0 else 1,
        "out_positions": positions(list(out_shape)),
        "in_channels": in0[-1] if in0 else None,
        "out_channels": out_shape[-1] if len(out_shape) else None,
    }


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))
