"""MobileNetV1, the MLPerf Tiny visual-wake-words reference (alpha 0.25, 96x96)."""

import numbers

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

_STEM_FILTERS = 32
# (pointwise filters at alpha=1, stride of the depthwise conv) of the 13 depthwise-separable blocks.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _width(filters, alpha):
    return max(1, int(round(filters * alpha)))


def mobilenet_v1(
    input_shape=(96, 96, 3),
    num_classes=2,
    alpha=0.25,
    classifier_activation="softmax",
    weight_decay=1e-4,
    name="mobilenet_v1",
):
    """MobileNetV1 for image classification, the MLPerf Tiny VWW reference model.

    Source architecture: the MLPerf Tiny visual-wake-words reference, `mlcommons/tiny`,
    `benchmark/training/visual_wake_words` (Silicon Labs / EEMBC port of Howard et al., *MobileNets*,
    2017) with width multiplier 0.25 at 96x96x3. Layers:

    - 3x3 conv, ``32 * alpha`` filters, stride 2, BatchNormalization, ReLU;
    - 13 depthwise-separable blocks: 3x3 depthwise conv (stride 2 in blocks 2, 4, 6 and 12), BN, ReLU,
      1x1 conv with ``64, 128, 128, 256, 256, 512 (x6), 1024, 1024`` times ``alpha`` filters, BN, ReLU;
    - average pooling over the whole final feature map, Flatten, Dense, softmax.

    Unlike ``keras.applications.MobileNet`` it uses ReLU (not ReLU6), ``same`` padding instead of explicit
    zero padding, and no dropout or 1x1 classifier convolution, as the reference does.

    At the default arguments the conv and dense kernels hold 208,112 weights, the layers perform
    7,489,664 multiply-accumulates, and there are 2,738 biases once each BatchNormalization is folded into
    the preceding convolution, the same as the reference `.tflite`.

    Args:
        input_shape: ``(height, width, channels)`` of one image, channels last.
        num_classes: Number of output classes (VWW: person / no person).
        alpha: Width multiplier: every layer has ``round(alpha * filters)`` channels (at least 1).
        classifier_activation: Activation layer appended after the classifier (named ``"predictions"``),
            or ``None`` to output logits.
        weight_decay: L2 factor of the convolution and depthwise kernels (the reference trains with
            ``1e-4``). ``None`` or 0 adds no regulariser.
        name: Name of the returned model.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ValueError: If ``input_shape``, ``num_classes``, ``alpha`` or ``weight_decay`` is invalid.

    Example:

    >>> model = mobilenet_v1()
    >>> model.output_shape
    (None, 2)
    >>> mobilenet_v1(input_shape=(64, 64, 1), num_classes=3, alpha=0.5).output_shape
    (None, 3)
    """
    builder = "mobilenet_v1"
    input_shape = check_input_shape(input_shape, ("height", "width", "channels"), builder)
    num_classes = check_positive_int(num_classes, "num_classes", builder)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(
            f"`{builder}()` needs `alpha` to be a positive number (the reference uses 0.25). "
            f"Received: alpha={alpha!r}"
        )
    weight_decay = check_weight_decay(weight_decay, builder)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(inputs, _width(_STEM_FILTERS, alpha), 3, weight_decay, "stem_conv", strides=2,
             padding="same")
    x = bn_relu(x, "stem")

    for index, (filters, strides) in enumerate(_BLOCKS, start=1):
        x = separable_block(x, _width(filters, alpha), strides, weight_decay, f"block{index}",
                            initializer="he_normal")

    x = average_pool_head(x)
    outputs = add_classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
