"""DS-CNN, the MLPerf Tiny keyword-spotting reference (Speech Commands, 12 classes)."""

import keras

from keras_dnas.zoo._common import (
    add_classifier,
    average_pool_head,
    bn_relu,
    check_input_shape,
    check_positive_int,
    check_weight_decay,
    conv,
    separable_block,
)

_FILTERS = 64
_NUM_BLOCKS = 4


def ds_cnn(
    input_shape=(49, 10, 1),
    num_classes=12,
    classifier_activation="softmax",
    weight_decay=1e-4,
    name="ds_cnn",
):
    """DS-CNN for keyword spotting, the MLPerf Tiny KWS reference model.

    Source architecture: the MLPerf Tiny DS-CNN (small), `mlcommons/tiny`,
    `benchmark/training/keyword_spotting`, after Zhang et al., *Hello Edge: Keyword Spotting on
    Microcontrollers* (2017). Input: 49 frames x 10 MFCCs. Layers:

    - 10x4 conv, 64 filters, stride 2, BatchNormalization, ReLU, Dropout(0.2);
    - four depthwise-separable blocks: 3x3 depthwise conv, BN, ReLU, 1x1 conv with 64 filters, BN, ReLU;
    - Dropout(0.4), average pooling, Flatten, Dense, softmax.

    At the default arguments the conv and dense kernels hold 22,016 weights, the layers perform
    2,656,768 multiply-accumulates, and there are 588 biases once each BatchNormalization is folded into
    the preceding convolution, the same as the reference `.tflite`.

    One deliberate difference: the reference pools with a fixed ``(24, 5)`` window over the ``25 x 5``
    feature map, so it ignores the last time step; here the window is the whole feature map (a true
    global average), which also keeps other input shapes valid. Weights and MACs are unaffected.

    Args:
        input_shape: ``(frames, coefficients, channels)`` of one spectrogram, channels last.
        num_classes: Number of output classes.
        classifier_activation: Activation layer appended after the classifier (named ``"predictions"``),
            or ``None`` to output logits.
        weight_decay: L2 factor of the convolution and depthwise kernels (the reference trains with
            ``1e-4``). ``None`` or 0 adds no regulariser.
        name: Name of the returned model.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ValueError: If ``input_shape``, ``num_classes`` or ``weight_decay`` is invalid.

    Example:

    >>> model = ds_cnn()
    >>> model.output_shape
    (None, 12)
    >>> ds_cnn(input_shape=(98, 40, 1), num_classes=35).output_shape
    (None, 35)
    """
    builder = "ds_cnn"
    input_shape = check_input_shape(input_shape, ("frames", "coefficients", "channels"), builder)
    num_classes = check_positive_int(num_classes, "num_classes", builder)
    weight_decay = check_weight_decay(weight_decay, builder)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(inputs, _FILTERS, (10, 4), weight_decay, "stem_conv", initializer="glorot_uniform",
             strides=(2, 2), padding="same")
    x = bn_relu(x, "stem")
    x = keras.layers.Dropout(0.2, name="stem_dropout")(x)

    for index in range(1, _NUM_BLOCKS + 1):
        x = separable_block(x, _FILTERS, 1, weight_decay, f"block{index}")

    x = keras.layers.Dropout(0.4, name="head_dropout")(x)
    x = average_pool_head(x)
    outputs = add_classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
