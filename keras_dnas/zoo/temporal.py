"""A small temporal convolutional network (TCN) for 1-D sensor data."""

import numbers

import keras

from keras_dnas.zoo._common import (
    DATA_FORMAT,
    add_classifier,
    bn_relu,
    check_input_shape,
    check_positive_int,
    check_weight_decay,
    conv,
)

_PADDINGS = ("same", "causal")


def _int_tuple(values, arg_name, builder):
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if not values or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise ValueError(
            f"`{builder}()` needs `{arg_name}` to be a non-empty tuple of positive integers. "
            f"Received: {arg_name}={values!r}"
        )
    return tuple(int(v) for v in values)


def tcn(
    input_shape=(128, 6),
    num_classes=6,
    filters=(16, 16, 32, 32),
    dilations=(1, 2, 4, 8),
    kernel_size=3,
    padding="same",
    dropout=0.0,
    classifier_activation="softmax",
    weight_decay=None,
    name="tcn",
):
    """Small TCN for time-series classification (e.g. human activity recognition at 50 Hz).

    Source architecture: not an MLPerf Tiny model; a residual temporal convolutional network after Bai
    et al., *An Empirical Evaluation of Generic Convolutional and Recurrent Networks for Sequence
    Modeling* (2018), sized like the TCNs that PIT (Risso et al., 2021) searches on microcontrollers. It
    is the zoo's test bed for Conv1D with dilation. Layers:

    - stem: Conv1D with ``filters[0]`` filters and ``kernel_size`` taps, BatchNormalization, ReLU;
    - one residual block per entry of ``filters`` / ``dilations``: two Conv1D with that dilation, each
      followed by BN (the first also by ReLU), added to the shortcut, ReLU. The shortcut is the identity
      when the channel count is unchanged, otherwise a 1x1 Conv1D (with bias, no BN);
    - global average pooling over time, optional Dropout, Dense, softmax.

    With the defaults (UCI-HAR windows of 128 samples x 6 channels, 6 classes) the receptive field is 63
    samples (1.26 s at 50 Hz), the conv and dense kernels hold 14,816 weights and the layers perform
    1,872,064 multiply-accumulates.

    Args:
        input_shape: ``(timesteps, channels)`` of one window, channels last.
        num_classes: Number of output classes.
        filters: Output channels of each residual block; the stem uses ``filters[0]``.
        dilations: Dilation rate of each residual block, same length as ``filters``.
        kernel_size: Taps of every temporal convolution.
        padding: ``"same"`` or ``"causal"`` (output at time t sees only inputs up to t; useful for
            streaming, but the TFLite converter emits an extra PAD and RESHAPE op per convolution, each
            with its own activation buffer, so ``"same"`` is the default for whole-window classification).
        dropout: Dropout rate before the classifier; 0 adds no Dropout layer.
        classifier_activation: Activation layer appended after the classifier (named ``"predictions"``),
            or ``None`` to output logits.
        weight_decay: L2 factor of the convolution kernels. ``None`` or 0 adds no regulariser.
        name: Name of the returned model.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ValueError: If an argument is invalid, e.g. ``filters`` and ``dilations`` of different lengths.

    Example:

    >>> model = tcn()
    >>> model.output_shape
    (None, 6)
    >>> tcn(input_shape=(256, 3), num_classes=4, filters=(8, 8), dilations=(1, 2)).output_shape
    (None, 4)
    """
    builder = "tcn"
    input_shape = check_input_shape(input_shape, ("timesteps", "channels"), builder)
    num_classes = check_positive_int(num_classes, "num_classes", builder)
    filters = _int_tuple(filters, "filters", builder)
    dilations = _int_tuple(dilations, "dilations", builder)
    if len(filters) != len(dilations):
        raise ValueError(
            f"`{builder}()` needs one dilation per residual block: `filters` and `dilations` must have "
            f"the same length. Received: filters={filters}, dilations={dilations}"
        )
    kernel_size = check_positive_int(kernel_size, "kernel_size", builder)
    if padding not in _PADDINGS:
        raise ValueError(
            f"`{builder}()` needs `padding` to be one of {_PADDINGS}. Received: padding={padding!r}"
        )
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0 <= dropout < 1
    ):
        raise ValueError(
            f"`{builder}()` needs `dropout` to be a rate in [0, 1). Received: dropout={dropout!r}"
        )
    weight_decay = check_weight_decay(weight_decay, builder)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(inputs, filters[0], kernel_size, weight_decay, "stem_conv", padding=padding)
    x = bn_relu(x, "stem")

    for index, (channels, dilation) in enumerate(zip(filters, dilations), start=1):
        prefix = f"block{index}"
        y = conv(x, channels, kernel_size, weight_decay, f"{prefix}_conv1", padding=padding,
                 dilation_rate=dilation)
        y = bn_relu(y, f"{prefix}_block1")
        y = conv(y, channels, kernel_size, weight_decay, f"{prefix}_conv2", padding=padding,
                 dilation_rate=dilation)
        y = keras.layers.BatchNormalization(name=f"{prefix}_block2_bn")(y)
        if x.shape[-1] != channels:
            shortcut = conv(x, channels, 1, weight_decay, f"{prefix}_shortcut", use_bias=True,
                            padding="valid")
        else:
            shortcut = x
        x = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
        x = keras.layers.ReLU(name=f"{prefix}_out_relu")(x)

    x = keras.layers.GlobalAveragePooling1D(data_format=DATA_FORMAT, name="global_pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(float(dropout), name="head_dropout")(x)
    outputs = add_classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
