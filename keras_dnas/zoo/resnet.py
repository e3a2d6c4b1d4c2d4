"""ResNet-8, the MLPerf Tiny image-classification reference (CIFAR-10)."""

import keras

from keras_dnas.zoo._common import (
    add_classifier,
    average_pool_head,
    bn_relu,
    check_input_shape,
    check_positive_int,
    check_weight_decay,
    conv,
)

# (filters, stride of the first convolution) of the three residual stacks.
_STACKS = ((16, 1), (32, 2), (64, 2))
_STEM_FILTERS = 16


def resnet8(
    input_shape=(32, 32, 3),
    num_classes=10,
    classifier_activation="softmax",
    weight_decay=1e-4,
    name="resnet8",
):
    """ResNet-8 for image classification, the MLPerf Tiny IC reference model.

    Source architecture: the MLPerf Tiny (EEMBC) CIFAR-10 ResNet-v1 reference, `mlcommons/tiny`,
    `benchmark/training/image_classification` (He et al., 2016, cut down to three stacks). Layers:

    - stem: 3x3 conv, 16 filters, BatchNormalization, ReLU;
    - three residual stacks of 16, 32 and 64 filters; each stack is 3x3 conv (stride 1, 2, 2), BN, ReLU,
      3x3 conv, BN, added to the shortcut, ReLU. The shortcut is the identity in the first stack and a
      1x1 conv with stride 2 (with bias, no BN, as in the reference) in the second and third;
    - average pooling over the whole final feature map, Flatten, Dense, softmax.

    At the default arguments the conv and dense kernels hold 77,360 weights, the layers perform
    12,501,632 multiply-accumulates, and there are 346 biases once each BatchNormalization is folded into
    the preceding convolution (as the TFLite converter does), the same as the reference `.tflite`.
    Convolutions followed by BatchNormalization have no bias of their own.

    Args:
        input_shape: ``(height, width, channels)`` of one image, channels last. Defaults to CIFAR-10's
            ``(32, 32, 3)``.
        num_classes: Number of output classes.
        classifier_activation: Activation layer appended after the classifier (named ``"predictions"``),
            or ``None`` to output logits.
        weight_decay: L2 factor of the convolution kernels (the reference trains with ``1e-4``). ``None``
            or 0 adds no regulariser.
        name: Name of the returned model.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ValueError: If ``input_shape``, ``num_classes`` or ``weight_decay`` is invalid.

    Example:

    >>> model = resnet8()
    >>> model.output_shape
    (None, 10)
    >>> small = resnet8(input_shape=(16, 16, 1), num_classes=4, classifier_activation=None)
    >>> small.output_shape
    (None, 4)
    """
    builder = "resnet8"
    input_shape = check_input_shape(input_shape, ("height", "width", "channels"), builder)
    num_classes = check_positive_int(num_classes, "num_classes", builder)
    weight_decay = check_weight_decay(weight_decay, builder)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(inputs, _STEM_FILTERS, 3, weight_decay, "stem_conv", padding="same")
    x = bn_relu(x, "stem")

    for index, (filters, strides) in enumerate(_STACKS, start=1):
        prefix = f"stack{index}"
        y = conv(x, filters, 3, weight_decay, f"{prefix}_conv1", strides=strides, padding="same")
        y = bn_relu(y, f"{prefix}_block1")
        y = conv(y, filters, 3, weight_decay, f"{prefix}_conv2", padding="same")
        y = keras.layers.BatchNormalization(name=f"{prefix}_block2_bn")(y)
        if strides != 1 or x.shape[-1] != filters:
            # no BatchNormalization on the reference's projection shortcut: it has a bias
            shortcut = conv(x, filters, 1, weight_decay, f"{prefix}_shortcut", use_bias=True,
                            strides=strides, padding="same")
        else:
            shortcut = x
        x = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
        x = keras.layers.ReLU(name=f"{prefix}_out_relu")(x)

    x = average_pool_head(x)
    outputs = add_classifier(x, num_classes, classifier_activation, kernel_initializer="he_normal")
    return keras.Model(inputs, outputs, name=name)
