"""Fully connected auto-encoder, the MLPerf Tiny anomaly-detection reference (ToyADMOS)."""

import keras

from keras_dnas.zoo._common import bn_relu, check_positive_int


def fc_autoencoder(input_dim=640, hidden_units=128, bottleneck_units=8, name="fc_autoencoder"):
    """Dense auto-encoder for anomaly detection, the MLPerf Tiny AD reference model.

    Source architecture: the MLPerf Tiny anomaly-detection reference, `mlcommons/tiny`,
    `benchmark/training/anomaly_detection` (the DCASE 2020 task 2 baseline by Hitachi). The input is 5
    stacked frames of a 128-band log-mel spectrogram (640 values). Layers:

    - encoder: four Dense(128), each followed by BatchNormalization and ReLU;
    - bottleneck: Dense(8), BatchNormalization, ReLU;
    - decoder: four Dense(128), each followed by BatchNormalization and ReLU;
    - output: Dense(640), linear (the anomaly score is the reconstruction error).

    At the default arguments the kernels hold 264,192 weights (= MACs), and there are 1,672 biases once
    each BatchNormalization is folded into the preceding Dense layer, the same as the reference
    `.tflite`. Dense layers followed by BatchNormalization have no bias of their own; the output layer
    keeps its bias.

    Args:
        input_dim: Length of one input vector (and of the reconstruction).
        hidden_units: Width of the eight hidden Dense layers.
        bottleneck_units: Width of the bottleneck Dense layer.
        name: Name of the returned model.

    Returns:
        A functional ``keras.Model`` mapping ``(batch, input_dim)`` to ``(batch, input_dim)``.

    Raises:
        ValueError: If a size is not a positive integer.

    Example:

    >>> model = fc_autoencoder()
    >>> model.output_shape
    (None, 640)
    >>> fc_autoencoder(input_dim=320, hidden_units=64).output_shape
    (None, 320)
    """
    builder = "fc_autoencoder"
    input_dim = check_positive_int(input_dim, "input_dim", builder)
    hidden_units = check_positive_int(hidden_units, "hidden_units", builder)
    bottleneck_units = check_positive_int(bottleneck_units, "bottleneck_units", builder)

    units = (hidden_units,) * 4 + (bottleneck_units,) + (hidden_units,) * 4
    inputs = keras.Input(shape=(input_dim,), name="input")
    x = inputs
    for index, width in enumerate(units, start=1):
        x = keras.layers.Dense(width, use_bias=False, name=f"dense{index}")(x)
        x = bn_relu(x, f"dense{index}")
    outputs = keras.layers.Dense(input_dim, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)
