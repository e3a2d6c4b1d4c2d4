"""Argument checks and layer helpers shared by the zoo builders.

Every builder follows the same conventions, so the channel-search graph analysis sees one pattern:

- a convolution or dense layer that is followed by ``BatchNormalization`` has ``use_bias=False``: after
  folding the normalisation into the layer (what the TFLite converter does) the layer gets exactly one bias
  per output channel, as the MLPerf Tiny reference ``.tflite`` files have;
- a layer that is *not* followed by a normalisation (residual projections, classifiers, the auto-encoder
  output) keeps ``use_bias=True``;
- normalisation and activation are separate layers (``BatchNormalization`` then ``ReLU``);
- every spatial layer is ``channels_last`` regardless of the user's ``keras.config.image_data_format()``.
"""

import numbers

import keras

DATA_FORMAT = "channels_last"


def check_positive_int(value, arg_name, builder):
    """Return ``value`` as an ``int`` or raise a ``ValueError`` naming the builder and the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{builder}()` needs `{arg_name}` to be a positive integer. Received: {arg_name}={value!r}"
        )
    return int(value)


def check_input_shape(input_shape, dims, builder):
    """Return ``input_shape`` as a tuple of ints with ``len(dims)`` entries.

    Args:
        input_shape: The shape of one sample, without the batch dimension.
        dims: Names of the expected dimensions, e.g. ``("height", "width", "channels")``.
        builder: Name of the calling builder, used in the error message.

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        ValueError: If the shape has the wrong rank or an entry that is not a positive integer (the zoo
            models need static shapes: pooling windows, MACs and the TFLite Micro arena depend on them).
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    valid = shape is not None and len(shape) == len(dims)
    if valid:
        valid = all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape
        )
    if not valid:
        raise ValueError(
            f"`{builder}()` needs `input_shape` to be a tuple of {len(dims)} positive integers "
            f"({', '.join(dims)}), channels last, without the batch dimension. "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def check_weight_decay(weight_decay, builder):
    """Return ``weight_decay`` as a float, or ``None`` when it is ``None`` or 0 (no regulariser)."""
    if weight_decay is None:
        return None
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, numbers.Real)
        or not weight_decay >= 0  # also rejects NaN
    ):
        raise ValueError(
            f"`{builder}()` needs `weight_decay` to be None or a non-negative number. "
            f"Received: weight_decay={weight_decay!r}"
        )
    return float(weight_decay) if weight_decay > 0 else None


def l2(weight_decay):
    """A fresh ``keras.regularizers.L2`` for one layer, or ``None`` when ``weight_decay`` is ``None``."""
    return None if weight_decay is None else keras.regularizers.L2(weight_decay)


def conv(x, filters, kernel_size, weight_decay, name, use_bias=False, initializer="he_normal",
         **kwargs):
    """A channels-last ``Conv1D`` (on a sequence) or ``Conv2D``, L2-regularised, on ``x``.

    ``use_bias`` only where no normalisation follows (a folded BatchNormalization provides the
    bias); ``kwargs`` are the layer's other arguments (``strides``, ``padding``, ...).
    """
    cls = keras.layers.Conv1D if len(x.shape) == 3 else keras.layers.Conv2D
    return cls(filters, kernel_size, use_bias=use_bias, kernel_initializer=initializer,
               kernel_regularizer=l2(weight_decay), data_format=DATA_FORMAT, name=name,
               **kwargs)(x)


def add_classifier(x, num_classes, classifier_activation, kernel_initializer="glorot_uniform"):
    """Append the classification head: ``Dense(num_classes)`` and an optional activation layer.

    The dense layer keeps its bias (nothing normalises it). The activation is a separate layer named
    ``"predictions"`` so the dense layer's outputs stay linear logits in the graph.
    """
    x = keras.layers.Dense(num_classes, kernel_initializer=kernel_initializer, name="classifier")(x)
    if classifier_activation is not None:
        x = keras.layers.Activation(classifier_activation, name="predictions")(x)
    return x


def bn_relu(x, name):
    """``BatchNormalization`` followed by ``ReLU``, named ``{name}_bn`` and ``{name}_relu``."""
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def separable_block(x, filters, strides, weight_decay, prefix, initializer="glorot_uniform"):
    """Depthwise 3x3 and pointwise 1x1 convolutions, each followed by ``bn_relu``
    (``{prefix}_dw``, ``{prefix}_pw``): the block of DS-CNN and MobileNetV1."""
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", depth_multiplier=1, use_bias=False,
        depthwise_initializer=initializer, depthwise_regularizer=l2(weight_decay),
        data_format=DATA_FORMAT, name=f"{prefix}_dw",
    )(x)
    x = bn_relu(x, f"{prefix}_dw")
    x = conv(x, filters, 1, weight_decay, f"{prefix}_pw", initializer=initializer,
             padding="same")
    return bn_relu(x, f"{prefix}_pw")


def average_pool_head(x):
    """An ``AveragePooling2D`` over the whole feature map, then ``Flatten``."""
    x = keras.layers.AveragePooling2D(
        pool_size=tuple(x.shape[1:3]), data_format=DATA_FORMAT, name="avg_pool"
    )(x)
    return keras.layers.Flatten(data_format=DATA_FORMAT, name="flatten")(x)
