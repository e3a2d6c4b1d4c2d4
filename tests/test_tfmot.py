"""QAT through tensorflow-model-optimization (`keras_dnas[tfmot]`), run in a child process.

Oracles: TensorFlow Lite Micro running the exported model on real digits (accuracy, int8
input / output, operators), the calling process's environment and `tf.keras` (unchanged), and
tfmot's own layer support (the unsupported layer is named).
"""

import importlib.util
import os
import sys
import warnings

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import _flatbuffer
from keras_dnas.export import measure, op_names, run_tflm, tflm_problems
from keras_dnas.qat import tfmot as tfmot_qat
from keras_dnas.qat.tfmot import to_tflite_tfmot
from tests import toys

L = keras.layers

HAS_TFMOT = all(importlib.util.find_spec(m) for m in ("tf_keras", "tensorflow_model_optimization"))
needs_tfmot = pytest.mark.skipif(
    not HAS_TFMOT, reason='tensorflow-model-optimization / tf-keras not installed '
                          '(pip install "keras_dnas[tfmot]")')
LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def frozen_digits():
    """A searched-and-frozen CNN (masks partly closed) trained on scikit-learn's digits."""
    pytest.importorskip("sklearn")
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = kd.datasets.digits()
    inp = keras.Input((8, 8, 1), name="digit")
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(inp)
    h = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(h))
    h = L.MaxPooling2D(name="pool")(h)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = L.ReLU(name="dw_relu")(L.BatchNormalization(name="dw_bn")(h))
    h = L.Conv2D(16, 1, activation="relu", name="pw")(h)
    h = L.Flatten(name="flat")(h)
    search = kd.prepare(keras.Model(inp, L.Dense(10, name="fc")(h)))
    for v in kd.masks.mask_variables(search):  # close a third of every channel group
        v.assign(np.where(np.arange(v.shape[0]) % 3 == 0, 0.2, 1.0).astype("float32"))
    slim = kd.freeze(search, verbose=0)
    assert slim.get_layer("c1").filters == 10 and slim.get_layer("pw").filters == 10
    slim.compile(keras.optimizers.Adam(1e-2), LOGITS)
    slim.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return slim, (x, y), (xt, yt)


@needs_tfmot
def test_tfmot_qat_runs_on_tflm_and_leaves_tf_keras_alone(frozen_digits):
    slim, (x, y), (xt, yt) = frozen_digits
    before = slim.get_weights()
    env_before = os.environ.get("TF_USE_LEGACY_KERAS")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tflite = to_tflite_tfmot(slim, (x, y), loss=LOGITS, epochs=1, seed=0)
    # The activation ranges were calibrated (tfmot's internals are as expected).
    assert not [w for w in caught if "calibrate" in str(w.message)]

    # The calling process is untouched: environment, tf.keras (still Keras 3), the model.
    import tensorflow as tf

    assert os.environ.get("TF_USE_LEGACY_KERAS") == env_before
    assert tf.keras.layers.Dense is keras.layers.Dense
    assert not {"tf_keras", "tensorflow_model_optimization"} & set(sys.modules)
    assert all(np.array_equal(a, b) for a, b in zip(before, slim.get_weights()))

    # Full int8 with TFLite Micro operators only (BatchNormalization folded, ReLU fused).
    assert op_names(tflite) == ["CONV_2D", "MAX_POOL_2D", "DEPTHWISE_CONV_2D", "CONV_2D",
                                "RESHAPE", "FULLY_CONNECTED"]
    assert tflm_problems(tflite, "int8") == []
    info = _flatbuffer.read_tflite(tflite)
    assert [t.dtype for t in info.input_tensors + info.output_tensors] == ["INT8", "INT8"]
    assert list(info.input_tensors[0].shape) == [1, 8, 8, 1]
    out = run_tflm(tflite, xt[:8])
    assert out.dtype == np.int8 and out.shape == (8, 10)

    # Real digits in TensorFlow Lite Micro: far above chance (10 %), close to the float model.
    float_accuracy = float(np.mean(slim.predict(xt, verbose=0).argmax(-1) == yt))
    result = measure(tflite, data=(xt, yt), keras_model=slim)
    assert float_accuracy >= 0.85
    assert result.accuracy >= 0.85 and result.accuracy >= float_accuracy - 0.05


@needs_tfmot
def test_layer_tfmot_cannot_quantise_is_named():
    model = toys.conv1d()  # tfmot has no Conv1D / MaxPooling1D quantisation
    x = toys.sample(model, n=16)
    y = np.zeros(16, "int32")
    with pytest.raises(ValueError, match=r"cannot quantise layer\(s\) 'c1' \(Conv1D\).*"
                                         r"'pool' \(MaxPooling1D\).*quantize_aware"):
        to_tflite_tfmot(model, (x, y), loss="sparse_categorical_crossentropy", epochs=1)


def test_missing_packages_name_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf_keras" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "keras_dnas\[tfmot\]"'):
        to_tflite_tfmot(toys.sequential_mlp(), (np.zeros((4, 20)), np.zeros(4)), loss="mse")


def test_errors_before_the_child_process(monkeypatch):
    monkeypatch.setattr(tfmot_qat, "_check_installed", lambda: None)
    model = toys.sequential_mlp()
    x, y = np.zeros((4, 20), "float32"), np.zeros(4)
    with pytest.raises(TypeError, match="custom losses"):
        to_tflite_tfmot(model, (x, y), loss=lambda a, b: a - b)
    with pytest.raises(ValueError, match=r"samples of shape \(20,\)"):
        to_tflite_tfmot(model, (np.zeros((4, 21)), y), loss="mse")
    a = keras.Input((3,))
    shared = L.Dense(3, name="shared")
    with pytest.raises(ValueError, match="shared layers.*'shared'"):
        to_tflite_tfmot(keras.Model(a, shared(shared(a))), (np.zeros((4, 3)), y), loss="mse")
