"""Export: int8 TFLite conversion, TFLite Micro execution and measurement.

Oracles: LiteRT's reference kernels (bit for bit on every op but FULLY_CONNECTED), two NumPy
re-implementations of the int8 FULLY_CONNECTED (TFLite Micro's fixed-point double rounding and
LiteRT's float64 single rounding), TFLite Micro's own `print_allocations()` text and NumPy
metrics.
"""

import contextlib
import functools
import json
import math
import os
import re
import sys
import types

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import export as kx
from keras_dnas.costs import arena
from keras_dnas import _flatbuffer

L = keras.layers


# ---------------------------------------------------------------------------------------------
# Toy models. The "conv" family has no Dense layer, so TFLite Micro equals LiteRT on their outputs
# (see test_litert_fully_connected_rescales_in_float64): their heads are a 1x1 convolution
# followed by global average pooling.


def _head(h, classes=3, pool=L.GlobalAveragePooling2D):
    conv = L.Conv2D if pool is L.GlobalAveragePooling2D else L.Conv1D
    h = conv(classes, 1, name="head")(h)
    return L.Softmax(name="softmax")(pool(name="gap")(h))


def conv2d():
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
    return keras.Model(x, _head(h), name="conv2d")


def conv1d():
    x = keras.Input((24, 2))
    h = L.Conv1D(6, 5, padding="causal", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    r = L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="c2")(h)
    h = L.ReLU(name="r2")(L.Add(name="add")([h, r]))
    return keras.Model(x, _head(h, pool=L.GlobalAveragePooling1D), name="conv1d")


def residual():
    x = keras.Input((8, 8, 4))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    b = L.Conv2D(8, 3, padding="same", name="b1")(a)
    b = L.BatchNormalization(name="b1_bn")(b)
    b = L.ReLU(name="b1_relu")(b)
    b = L.Conv2D(8, 3, padding="same", name="b2")(b)
    b = L.BatchNormalization(name="b2_bn")(b)
    s = L.ReLU(name="add_relu")(L.Add(name="add")([a, b]))
    return keras.Model(x, _head(s), name="residual")


def depthwise():
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(x)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.BatchNormalization(name="dw_bn")(h)
    h = L.ReLU(6.0, name="dw_relu")(h)
    h = L.Conv2D(12, 1, name="pw")(h)
    h = L.BatchNormalization(name="pw_bn")(h)
    h = L.ReLU(name="pw_relu")(h)
    h = L.AveragePooling2D(2, name="avg")(h)
    return keras.Model(x, _head(h), name="depthwise")


def concat():
    x = keras.Input((8, 8, 3))
    s = L.Conv2D(6, 3, padding="same", activation="relu", name="stem")(x)
    a = L.Conv2D(4, 1, name="branch_a")(s)
    b = L.Conv2D(5, 3, padding="same", name="branch_b")(s)
    c = L.Concatenate(name="cat")([a, L.ReLU(name="b_relu")(b), s])
    return keras.Model(x, _head(c), name="concat")


def flatten_dense():
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, activation="relu", name="c1")(x)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Flatten(name="flat")(h)
    return keras.Model(x, L.Dense(3, name="fc")(h), name="flatten_dense")


def dense():
    return keras.Sequential(
        [keras.Input((12,)), L.Dense(16, activation="relu"), L.Dense(8, activation="relu"),
         L.Dense(3)],
        name="dense",
    )


CONV_TOYS = {f.__name__: f for f in (conv2d, conv1d, residual, depthwise, concat)}
DENSE_TOYS = {f.__name__: f for f in (flatten_dense, dense)}
TOYS = {**CONV_TOYS, **DENSE_TOYS}

EXPECTED_OPS = {  # operator types each toy must convert to (BN folded, ReLU fused)
    "conv2d": {"CONV_2D", "MAX_POOL_2D", "MEAN", "SOFTMAX"},
    "conv1d": {"CONV_2D", "ADD", "MEAN", "SOFTMAX"},
    "residual": {"CONV_2D", "ADD", "MEAN", "SOFTMAX"},
    "depthwise": {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MEAN", "SOFTMAX"},
    "concat": {"CONV_2D", "CONCATENATION", "MEAN", "SOFTMAX"},
    "flatten_dense": {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"},
    "dense": {"FULLY_CONNECTED"},
}


def _randomize(model, seed=0):
    """Non-trivial BN statistics and biases (a zero bias would be dropped by the converter)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape),
            ])
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    return model


def _data(model, n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + tuple(model.inputs[0].shape[1:])).astype("float32")


@functools.lru_cache(maxsize=None)
def converted(name):
    """(model, calibration inputs, test inputs, int8 bytes), built once per session."""
    keras.utils.set_random_seed(7)
    model = _randomize(TOYS[name]())
    calibration = _data(model, 48, 0)
    return model, calibration, _data(model, 24, 1), kx.to_tflite(model, calibration)


def _op_types(tflite):
    return set(kx.op_names(tflite))


# ---------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_converts_to_int8_with_tflm_ops_only(name):
    model, _, _, tflite = converted(name)
    ops = kx.op_names(tflite)
    assert set(ops) <= kx.TFLM_BUILTIN_OPS
    assert EXPECTED_OPS[name] <= set(ops)
    assert not {"RELU", "RELU6", "MUL", "DEQUANTIZE", "QUANTIZE"} & set(ops)  # folded / fused
    assert kx.tflm_problems(tflite) == []
    info = _flatbuffer.read_tflite(tflite)
    assert [t.dtype for t in info.input_tensors + info.output_tensors] == ["INT8", "INT8"]
    assert info.input_tensors[0].shape == (1,) + tuple(model.inputs[0].shape[1:])
    assert info.output_tensors[0].shape == (1,) + tuple(model.outputs[0].shape[1:])
    activation_types = {t.dtype for t in info.tensors if not t.is_constant}
    assert activation_types == {"INT8"}


def test_conv1d_becomes_conv2d_between_reshapes():
    ops = kx.op_names(converted("conv1d")[3])
    first = ops.index("CONV_2D")
    assert ops[first - 1] in ("EXPAND_DIMS", "RESHAPE") and ops[first + 1] == "RESHAPE"
    assert "FULLY_CONNECTED" not in ops


def test_flatten_dense_has_static_reshape():
    # The batch is fixed to 1, so Flatten is one RESHAPE (no SHAPE / STRIDED_SLICE / PACK).
    assert kx.op_names(converted("flatten_dense")[3]) == [
        "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"
    ]


def test_augmentation_layers_convert_as_inference_identities():
    # Keras' RandomFlip / RandomRotation default to `training=True`: traced without
    # `training=False`, their random ops reached the converter, which has no TFLite kernel for
    # them, so a Sequential with augmentation in front (as tutorials write it) did not convert.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)), L.Rescaling(1 / 255.0),
                              L.RandomFlip("horizontal"), L.RandomRotation(0.1),
                              L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)])
    x = np.random.default_rng(0).uniform(0, 255, size=(16, 12, 12, 3)).astype("f")
    tflite = kx.to_tflite(model, x)
    assert kx.op_names(tflite) == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]  # Rescaling: folded
    r = kx.measure(tflite, data=(x, np.argmax(model.predict(x, verbose=0), axis=1)))
    assert r["accuracy"] >= 0.9  # it computes the inference model (same top-1)


def test_nearest_upsampling_converts_to_a_resize_tflite_micro_runs():
    # Keras' nearest UpSampling1D / 2D repeat with `ops.repeat`, which TensorFlow lowers to
    # TILE: no TFLite Micro kernel, so a U-Net or a decoder did not run there. Exported, each is
    # one RESIZE_NEAREST_NEIGHBOR copying the same values (float: equal; int8: one scale).
    keras_methods = (L.UpSampling1D.call, L.UpSampling2D._resize_images)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((6, 5, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    up = L.Conv2D(4, 1)(L.UpSampling2D((2, 3))(L.MaxPooling2D((2, 1))(h)))
    image = keras.Model(inp, L.Concatenate()([up, L.UpSampling2D((1, 3))(h)]))
    seq = keras.Input((5, 2))
    series = keras.Model(seq, L.UpSampling1D(3)(L.Conv1D(3, 2, activation="relu")(seq)))
    for model, shape in ((image, (16, 6, 5, 3)), (series, (16, 5, 2))):
        x = rng.normal(size=shape).astype("f")
        ref = np.asarray(model.predict(x, verbose=0))
        f32 = kx.to_tflite(model, quantization="float32")
        assert "TILE" not in kx.op_names(f32) and "RESIZE_NEAREST_NEIGHBOR" in kx.op_names(f32)
        np.testing.assert_allclose(kx.run_tflm(f32, x), ref, rtol=1e-5, atol=1e-5)
        int8 = kx.to_tflite(model, x)
        assert set(kx.op_names(int8)) <= kx.TFLM_BUILTIN_OPS
        out = kx.run_tflm(int8, x, dequantize=True)
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99
    # Keras' own methods are back once exported
    assert (L.UpSampling1D.call, L.UpSampling2D._resize_images) == keras_methods


def test_one_channel_residual_add_converts():
    # Keras' TensorFlow `add` emits an NCHW BiasAdd for (1, T, 1) + (1, T, 1) at the batch-1
    # export signature, which the converter cannot lower; `to_tflite` exports such sums as ADD.
    inp = keras.Input((16, 1))
    h = L.Conv1D(1, 3, padding="same", name="conv")(inp)
    out = L.Add(name="one_channel_add")([inp, L.ReLU()(h)])
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(out)))
    x = np.random.default_rng(0).normal(size=(64, 16, 1)).astype("float32")
    tflite = kx.to_tflite(model, x)
    assert "ADD" in kx.op_names(tflite) and kx.tflm_problems(tflite) == []
    np.testing.assert_allclose(kx.run_tflm(tflite, x[:16], dequantize=True),
                               model.predict(x[:16], verbose=0), atol=0.05)
    # The patch lives only for the export: Keras' own add is back afterwards.
    from keras.src.backend.tensorflow import numpy as tf_numpy

    assert tf_numpy.add.__module__ == "keras.src.backend.tensorflow.numpy"


def test_tcn_frozen_to_one_channel_per_group_converts():
    # DESIGN.md invariant 5 at its edge: every searchable group of the TCN (residual streams
    # included) cut to one channel.
    keras.utils.set_random_seed(0)
    model = kd.zoo.tcn(classifier_activation=None)
    search = kd.prepare(model)
    for v in kd.masks.mask_variables(search):
        v.assign(np.where(np.arange(v.shape[0]) == 0, 1.0, 0.2).astype("float32"))
    slim = kd.freeze(search, verbose=0)
    assert {layer.filters for layer in slim.layers if isinstance(layer, L.Conv1D)} == {1}
    x = np.random.default_rng(0).normal(size=(32,) + model.input_shape[1:]).astype("float32")
    tflite = kx.to_tflite(slim, x)
    assert kx.op_names(tflite).count("ADD") == 4 and kx.tflm_problems(tflite) == []
    # TFLite Micro runs it and tracks the float model to a few int8 steps of the output.
    step = _flatbuffer.read_tflite(tflite).output_tensors[0].scales[0]
    np.testing.assert_allclose(kx.run_tflm(tflite, x, dequantize=True),
                               slim.predict(x, verbose=0), atol=3 * step)


SHARED_TOYS = ("plain_cnn", "residual", "depthwise_separable", "concat_branch", "flatten_dense",
               "conv1d", "sequential_mlp")


@pytest.mark.parametrize("name", SHARED_TOYS)
def test_shared_toy_zoo_converts_and_tracks_float(name):
    toys = pytest.importorskip("tests.toys")
    model = toys.randomize_bn(toys.TOYS[name]())
    x = toys.sample(model, n=32, seed=0)
    tflite = kx.to_tflite(model, x)
    assert set(kx.op_names(tflite)) <= kx.TFLM_BUILTIN_OPS
    out = kx.run_tflm(tflite, x, dequantize=True)
    ref = np.asarray(model.predict(x, verbose=0))
    assert out.shape == ref.shape
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.95


def test_float32_conversion():
    model, _, x, _ = converted("residual")
    tflite = kx.to_tflite(model, quantization="float32")
    info = _flatbuffer.read_tflite(tflite)
    assert [t.dtype for t in info.input_tensors + info.output_tensors] == ["FLOAT32", "FLOAT32"]
    assert set(kx.op_names(tflite)) <= kx.TFLM_BUILTIN_OPS
    np.testing.assert_allclose(
        kx.run_tflm(tflite, x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
    assert kx.measure(tflite).quantization == "float32"


def test_multi_input_model_keeps_input_order():
    keras.utils.set_random_seed(3)
    a, b = keras.Input((6,), name="zeta"), keras.Input((3,), name="alpha")
    h = L.Concatenate()([L.Dense(4, activation="relu")(a), b])
    model = keras.Model([a, b], L.Dense(2)(h))
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(32, 6)).astype("f"), rng.normal(size=(32, 3)).astype("f")
    tflite = kx.to_tflite(model, {"zeta": xa, "alpha": xb})
    assert [t.shape for t in _flatbuffer.read_tflite(tflite).input_tensors] == [(1, 6), (1, 3)]
    out = kx.run_tflm(tflite, [xa, xb], dequantize=True)
    ref = model.predict([xa, xb], verbose=0)
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("quantization", ["int8", "float32"])
def test_lean_saved_model_writes_the_same_file(monkeypatch, quantization):
    # `to_tflite` writes the serving function's SavedModel without `model.export`'s walk of the
    # layers, its second trace of the model and its gradient functions (issues 13 and 17: most
    # of a conversion's time) and without its saver's save function. The file must stay the
    # one `model.export` gave: the same bytes, on a residual model with BN and swish (a
    # custom-gradient op) and on two inputs.
    from keras_dnas.export import convert

    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 2))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inp)))
    h = L.Activation("swish")(L.Conv2D(4, 1)(h))
    h = L.Add()([h, L.Conv2D(4, 1)(inp)])
    single = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(h)))
    a, b = keras.Input((6,), name="zeta"), keras.Input((3,), name="alpha")
    double = keras.Model([a, b], L.Dense(2)(L.Concatenate()([L.Dense(4)(a), b])))
    rng = np.random.default_rng(0)
    cases = [(single, rng.normal(size=(16, 8, 8, 2)).astype("f")),
             (double, [rng.normal(size=(16, 6)).astype("f"),
                       rng.normal(size=(16, 3)).astype("f")])]
    lean = [kx.to_tflite(m, x, quantization=quantization) for m, x in cases]
    lean_write = convert._write_saved_model

    def with_model_export(model, path, signature):
        model.export(path, format="tf_saved_model", verbose=False, input_signature=signature)

    monkeypatch.setattr(convert, "_write_saved_model", with_model_export)
    assert [kx.to_tflite(m, x, quantization=quantization) for m, x in cases] == lean
    # and the converter reading the protos instead of loading the SavedModel twice changes
    # nothing either: the same bytes with TensorFlow's own loader
    monkeypatch.setattr(convert, "_converter_reads_protos_only", contextlib.nullcontext)
    assert [kx.to_tflite(m, x, quantization=quantization) for m, x in cases] == lean
    # nor does a SavedModel whose saver has only its restore function (the converter restores
    # the variables from it: int8 calibration would see other weights if it did not)
    monkeypatch.setattr(convert, "_write_saved_model", lean_write)
    assert [kx.to_tflite(m, x, quantization=quantization) for m, x in cases] == lean
    monkeypatch.setattr(convert, "_saver_restores_only", contextlib.nullcontext)
    assert [kx.to_tflite(m, x, quantization=quantization) for m, x in cases] == lean


def test_converter_reads_the_saved_model_protos_instead_of_loading_it(monkeypatch):
    # The converter's two loads of the SavedModel (signature keys, debug info) read the protos
    # (speed, issues 13 and 17); the bytes are pinned by the test above. Here: the view is
    # what the converter got, twice per conversion, not the fallback to TensorFlow's loader.
    from keras_dnas.export import convert

    views = []
    read = convert._SavedModelProtos.read

    def spy(export_dir):
        views.append(read(export_dir))
        return views[-1]

    monkeypatch.setattr(convert._SavedModelProtos, "read", staticmethod(spy))
    graphs = []
    graph_def = convert._SavedModelProtos.graph_def

    def graph_spy(export_dir, tags):
        graphs.append(graph_def(export_dir, tags))
        return graphs[-1]

    monkeypatch.setattr(convert._SavedModelProtos, "graph_def", staticmethod(graph_spy))
    model = conv2d()
    kx.to_tflite(model, _data(model, 8, 0))
    assert len(views) == 2 and all(isinstance(v, convert._SavedModelProtos) for v in views)
    assert set(views[0].signatures) == {"serve", "serving_default"}
    # and the graph `convert()` reads for its statistics comes from the protos too, once
    assert len(graphs) == 1 and graphs[0] is not None and len(graphs[0].node) > 0


def test_lean_saved_model_saver_only_restores(tmp_path):
    # The SavedModel `to_tflite` writes describes its saver by its restore operations alone
    # (the converter runs only those; speed, issues 13 and 17). The bytes are pinned by the test
    # above; here: the restore-only saver is what got written (not TensorFlow's fallback), and
    # it restores the variables' values from the checkpoint written beside it.
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    from keras_dnas.export import convert

    model = conv2d()
    signature, _ = convert._input_signature(model)
    convert._write_saved_model(model, str(tmp_path), signature)
    meta_graph = loader_impl.parse_saved_model(str(tmp_path)).meta_graphs[0]
    saver = meta_graph.saver_def
    assert saver.save_tensor_name == saver.filename_tensor_name
    assert saver.restore_op_name.split(":")[0] in {n.name for n in meta_graph.graph_def.node}
    assert not any("traced_save" in f.signature.name
                   for f in meta_graph.graph_def.library.function)
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(tmp_path))  # runs the restore
        signature_def = meta_graph.signature_def["serving_default"]
        (inp,) = signature_def.inputs.values()
        outputs = [t.name for t in signature_def.outputs.values()]
        x = np.random.default_rng(0).normal(size=(1,) + tuple(model.inputs[0].shape[1:]))
        got = session.run(outputs, {inp.name: x.astype("float32")})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv, self.flat, self.fc = L.Conv2D(4, 3), L.Flatten(), L.Dense(2)

    def call(self, x):
        return self.fc(self.flat(self.conv(x)))


def test_subclassed_model_takes_batch_one_shape_from_data():
    model = SubclassedNet()
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 2)).astype("float32")
    model(x[:1])
    tflite = kx.to_tflite(model, x)
    assert kx.op_names(tflite) == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert kx.run_tflm(tflite, x).shape == (16, 2)


def test_conversion_prints_nothing(capfd):
    keras.utils.set_random_seed(5)
    model = conv2d()
    capfd.readouterr()
    kx.to_tflite(model, _data(model, 8, 0))
    kx.run_tflm(converted("conv2d")[3], converted("conv2d")[2][:2])
    out, err = capfd.readouterr()
    assert out.strip() == ""
    assert len(err.strip().splitlines()) <= 2, err


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_representative_data():
    model = dense()
    with pytest.raises(ValueError, match=r"representative_data=x_train\[:256\]"):
        kx.to_tflite(model)
    with pytest.raises(ValueError, match="representative_data is empty"):
        kx.to_tflite(model, np.zeros((0, 12), "float32"))
    with pytest.raises(ValueError, match=r"samples of shape \(12,\)"):
        kx.to_tflite(model, np.zeros((4, 11), "float32"))


def test_unknown_quantization():
    with pytest.raises(ValueError, match=r"Received: quantization='int4'"):
        kx.to_tflite(dense(), np.zeros((4, 12), "float32"), quantization="int4")
    with pytest.raises(ValueError, match=r"TensorFlow Lite Micro runs int8.*'float16'"):
        kx.to_tflite(dense(), np.zeros((4, 12), "float32"), quantization="float16")
    # spelt as in TensorFlow's constants (tf.int8.name is 'int8', but users write "INT8")
    x = np.random.default_rng(0).normal(size=(8, 12)).astype("float32")
    model = dense()
    assert kx.to_tflite(model, x, quantization="INT8") == kx.to_tflite(model, x)


def test_op_without_tflm_kernel_is_named():
    x = keras.Input((8,))
    model = keras.Model(x, L.Activation("gelu", name="my_gelu")(L.Dense(4)(x)))
    with pytest.raises(ValueError, match=r"GELU .*layer 'my_gelu'.*not supported"):
        kx.to_tflite(model, np.random.default_rng(0).normal(size=(8, 8)).astype("f"))


def test_repeated_problems_are_folded_into_one_line_naming_their_layers():
    x = keras.Input((8,))
    h = x
    for k in range(5):
        h = L.Activation("gelu", name=f"gelu_{k}")(L.Dense(4)(h))
    with pytest.raises(ValueError) as raised:
        kx.to_tflite(keras.Model(x, h), np.random.default_rng(0).normal(size=(8, 8)).astype("f"))
    lines = str(raised.value).splitlines()
    assert sum("layer 'gelu_" in line for line in lines) == 2  # the first two in full
    assert "  - 3 more GELU operator(s), the same problem: layers 'gelu_2', 'gelu_3', " \
           "'gelu_4'" in lines


def test_conversion_failure_names_op_and_layer():
    x = keras.Input((8,))
    model = keras.Model(x, L.Lambda(keras.ops.erf, name="my_erf")(L.Dense(4)(x)))
    with pytest.raises(ValueError, match=r"(?s)tf\.Erf.*'my_erf'"):
        kx.to_tflite(model, np.random.default_rng(0).normal(size=(8, 8)).astype("f"))



def test_a_looping_recurrent_layer_is_refused_before_int8_conversion():
    # TensorFlow's int8 calibration of a Keras RNN's WHILE loop kills the process (a segfault):
    # it is refused, naming the layer, before the converter runs; unrolled, it converts
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 3)).astype("f")
    for layer, name in ((L.LSTM(4, name="my_lstm"), "my_lstm"),
                        (L.Bidirectional(L.GRU(4), name="my_bi"), "my_bi"),
                        (L.SimpleRNN(4, return_sequences=True, name="my_rnn"), "my_rnn")):
        inputs = keras.Input((5, 3))
        nested = keras.Sequential([keras.Input((5, 3)), layer], name="inner")
        model = keras.Model(inputs, L.Dense(2)(L.Flatten()(nested(inputs))))
        with pytest.raises(ValueError, match=rf"(?s)Layer '{name}' .*unroll=True"):
            kx.to_tflite(model, x)
    inputs = keras.Input((5, 3))
    unrolled = keras.Model(inputs, L.Dense(2)(L.SimpleRNN(4, unroll=True)(inputs)))
    assert "FULLY_CONNECTED" in kx.op_names(kx.to_tflite(unrolled, x))


@pytest.mark.parametrize("rnn", [L.LSTM, L.GRU], ids=["lstm", "gru"])
def test_an_unrolled_lstm_or_gru_converts_to_int8_every_time(rnn):
    # The cells split their gate pre-activations with `ops.split`: the converter's quantiser left
    # one of those SPLITs in float in about a third of the conversions (refused by the export).
    # The export slices instead (SLICE): every conversion is full int8, the same file each time
    from keras_dnas.export import runtime

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 3)).astype("f")
    inputs = keras.Input((8, 3))
    model = keras.Model(inputs, L.Dense(2)(rnn(8, unroll=True)(inputs)))
    files = {kx.to_tflite(model, x) for _ in range(5)}  # each raises if anything is float
    assert len(files) == 1
    tflite = files.pop()
    assert "SPLIT" not in kx.op_names(tflite) and "SLICE" in kx.op_names(tflite)
    y = keras.ops.convert_to_numpy(model(x))
    measured = kx.measure(tflite, data=(x, y), task="regression")  # runs on TFLite Micro
    assert measured.mse < 1e-3  # int8 outputs near the float model's (about 2e-5 seen)
    assert measured.host_arena_tail_bytes == arena.tflite_tail(tflite, pointer_bytes=8)
    assert measured.ram_bytes == arena.tflite_arena(tflite, pointer_bytes=4)["total"]
    # the rewrite is the same function: the float32 file computes the model's outputs
    float32 = runtime.run_litert(kx.to_tflite(model, quantization="float32"), x[:4])
    np.testing.assert_allclose(float32, y[:4], atol=1e-5)


def test_an_embedding_converts_to_a_gather_tflite_micro_runs():
    # Keras' TensorFlow `take` wraps negative indices with a `tf.where`: a SELECT operator,
    # which TFLite Micro has no kernel for; the export gathers directly
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(16, 10)).astype("int32")
    inputs = keras.Input((10,), dtype="int32")
    h = L.GlobalAveragePooling1D()(L.Conv1D(4, 3)(L.Embedding(50, 8, name="emb")(inputs)))
    model = keras.Model(inputs, L.Dense(2)(h))
    tflite = kx.to_tflite(model, tokens)
    assert "GATHER" in kx.op_names(tflite) and "SELECT" not in kx.op_names(tflite)
    measured = kx.measure(tflite, data=(tokens, rng.integers(0, 2, 16)), keras_model=model)
    assert measured["agreement"] >= 0.9
    # token ids into a float input (Keras' Embedding casts them): the samples the flash / RAM
    # model and freeze's certificate convert with are valid ids too, not negative normals
    inputs = keras.Input((10,))
    h = L.GlobalAveragePooling1D()(L.Conv1D(4, 3)(L.Embedding(50, 8)(inputs)))
    search = kd.prepare(keras.Model(inputs, L.Dense(2)(h)))
    assert kd.summary(search, "stm32h743")["flash_bytes"] > 400  # the table's 50 x 8 int8
    slim = kd.freeze(search, target="stm32h743", budgets={"flash_bytes": 10**6}, verbose=0)
    assert slim.dnas_certificate["budgets"][0]["holds"]


def test_layer_normalization_converts_to_int8_and_runs_on_tflite_micro():
    # Keras' `x * inv + (-mean * inv)` left a float NEG in the int8 file; the export centres it
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 8)).astype("f")
    inputs = keras.Input((6, 8))
    h = L.LayerNormalization(name="ln")(L.Dense(8)(inputs))
    h = L.LayerNormalization(axis=(1, 2), name="ln2d")(h)  # two axes: gamma over both
    h = L.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, L.Dense(3)(h))
    for layer in ("ln", "ln2d"):  # trained-looking scale and offset, one per normalised value
        for w in model.get_layer(layer).weights:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("f"))
    tflite = kx.to_tflite(model, x)
    assert "NEG" not in kx.op_names(tflite)
    measured = kx.measure(tflite, data=(x, rng.integers(0, 3, 32)), keras_model=model)
    assert measured["agreement"] >= 0.9


def test_elu_family_and_tanh_gelu_convert_to_int8_tflite_micro_runs():
    # The converter left ELU in float (DEQUANTIZE, ELU, QUANTIZE), made ELU(alpha != 1) and
    # SELU a SELECT and CELU an EXP (no int8 kernel on TFLite Micro), and the tanh GELU a GELU
    # (no kernel): exported, each is the same function in RELU / SUB / MUL / TANH / DIV / ADD
    # (GELU: MUL / ADD / LOGISTIC)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (2 * rng.normal(size=(32, 6, 6, 3))).astype("f")
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 1, name="conv")(inp)
    branches = [L.ELU(name="elu")(h), L.ELU(alpha=0.5, name="elu_half")(h),
                L.Activation("selu", name="selu")(h), L.Activation("celu", name="celu")(h),
                L.Conv2D(4, 1, activation="elu", name="conv_elu")(inp),
                L.Lambda(lambda t: keras.ops.gelu(t, approximate=True), name="gelu_tanh")(h)]
    model = keras.Model(inp, L.Concatenate()(branches))
    ref = np.asarray(model.predict(x, verbose=0))
    f32 = kx.to_tflite(model, quantization="float32")  # the rewrites compute Keras' function
    np.testing.assert_allclose(kx.run_tflm(f32, x), ref, rtol=1e-5, atol=1e-5)
    int8 = kx.to_tflite(model, x)
    names = kx.op_names(int8)
    assert not {"ELU", "SELECT", "SELECT_V2", "EXP", "GELU", "DEQUANTIZE"} & set(names)
    assert "DIV" in names and "LOGISTIC" in names
    assert names.count("CONV_2D") == 2  # a RELU fused into a conv read twice duplicated it
    out = kx.run_tflm(int8, x, dequantize=True)
    scale = _flatbuffer.read_tflite(int8).output_tensors[0].scales[0]
    # every branch within a few output steps (measured: at most 3.9, 0.4-0.8 on average; the
    # tanh GELU, all one-op kernels, 2.7 and 0.4), as int8 computes a conv and an activation
    for k, layer in enumerate(branches):
        err = np.abs(out[..., 4 * k:4 * k + 4] - ref[..., 4 * k:4 * k + 4]) / scale
        assert err.max() <= 5 and err.mean() <= 1, (layer.name, err.max(), err.mean())
    # what TFLite Micro runs is what the memory model prices (DIV's tail row)
    assert arena.tflite_tail(int8, pointer_bytes=8) == kx.measure(int8)["host_arena_tail_bytes"]


def test_activations_tflite_micro_has_no_int8_kernel_for_are_named():
    # softplus converts to EXP, whose TFLite Micro kernel is float only: TFLite Micro refused
    # the file at Prepare ("failed to allocate tensors"); the exact (erf) GELU has no kernel
    inp = keras.Input((5,))
    h = L.Dense(4, name="dense")(inp)
    # "soft_1" is also the scope TensorFlow gives layer "soft" in the export's trace: the
    # error named the next layer (as with Keras' default names conv2d, conv2d_1, ...)
    model = keras.Model(inp, [L.Dense(2, name="soft_1")(L.Activation("softplus", name="soft")(h)),
                              L.Activation("gelu", name="gelu_erf")(h)])
    with pytest.raises(ValueError) as e:
        kx.to_tflite(model, np.random.default_rng(0).normal(size=(16, 5)).astype("f"))
    text = str(e.value)
    assert re.search(r"EXP .*layer 'soft'.*float only", text), text
    assert re.search(r"GELU .*layer 'gelu_erf'.*not supported.*approximate=True", text), text


def test_time_distributed_converts_to_one_operator():
    # Keras loops over a fixed number of steps: one FULLY_CONNECTED per step and a PACK
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 12, 6)).astype("f")
    inputs = keras.Input((12, 6))
    h = L.TimeDistributed(L.Dense(8, activation="relu"), name="td")(inputs)
    model = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling1D()(h)))
    tflite = kx.to_tflite(model, x)
    assert kx.op_names(tflite).count("FULLY_CONNECTED") == 2 and "PACK" not in kx.op_names(tflite)
    measured = kx.measure(tflite, data=(x, rng.integers(0, 3, 32)), keras_model=model)
    assert measured["agreement"] >= 0.9

def test_allow_list_names_are_builtin_operators():
    builtins = set(vars(_flatbuffer.schema().BuiltinOperator))
    assert kx.TFLM_BUILTIN_OPS <= builtins
    assert "GELU" not in kx.TFLM_BUILTIN_OPS and "TOPK_V2" not in kx.TFLM_BUILTIN_OPS


# ---------------------------------------------------------------------------------------------
# TFLite Micro against LiteRT's reference kernels and an integer oracle


@pytest.mark.parametrize("name", sorted(CONV_TOYS))
def test_tflm_equals_litert_reference_bit_for_bit(name):
    _, _, x, tflite = converted(name)
    tflm = kx.run_tflm(tflite, x)
    litert = kx.run_litert(tflite, x, reference=True)
    assert tflm.dtype == np.int8 and tflm.shape == litert.shape
    np.testing.assert_array_equal(tflm, litert)
    assert len(np.unique(tflm)) > 3  # not a degenerate (saturated) output


def _quantize_multiplier(real):
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    q = math.floor(mantissa * (1 << 31) + 0.5)
    if q == 1 << 31:
        q, shift = q // 2, shift + 1
    return q, shift


def _multiply_by_quantized_multiplier(acc, q, shift):
    """gemmlowp double rounding, as TFLite Micro's reference kernels (int64 NumPy)."""
    acc = acc.astype(np.int64) * (1 << max(shift, 0))
    prod = acc * q
    nudge = np.where(prod >= 0, 1 << 30, 1 - (1 << 30))
    v = prod + nudge
    high = np.where(v >= 0, v // (1 << 31), -((-v) // (1 << 31)))  # C division truncates
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


def _round_half_away(v):
    """`std::round` (half away from zero), exact for float64 values below 2**52."""
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    r = np.floor(a)
    return np.sign(v) * (r + (a - r >= 0.5))


def _activation_range(t_out, activation):
    """int8 clamp of a fused activation, as TFLite's `CalculateActivationRangeQuantized`."""
    assert activation in ("NONE", "RELU", "RELU6"), activation
    zp, scale = t_out.zero_points[0], np.float32(t_out.scales[0])

    def q(f):  # zero_point + TfLiteRound(f / scale), the division in float32
        return zp + int(_round_half_away(np.float32(f) / scale))

    lo = max(-128, q(0.0)) if activation != "NONE" else -128
    hi = min(127, q(6.0)) if activation == "RELU6" else 127
    return lo, hi


def _fc_accumulator(x_q, w, bias, t_in):
    acc = (x_q.astype(np.int64) - t_in.zero_points[0]) @ w.astype(np.int64).T
    return acc if bias is None else acc + bias.astype(np.int64)


def _fc_oracle(x_q, w, bias, t_in, t_w, t_out, activation):
    """TFLite Micro's int8 FULLY_CONNECTED: fixed-point multiplier, gemmlowp double rounding."""
    acc = _fc_accumulator(x_q, w, bias, t_in)
    out = np.empty_like(acc)
    for c in range(w.shape[0]):
        w_scale = t_w.scales[c] if len(t_w.scales) > 1 else t_w.scales[0]
        if len(t_w.scales) > 1:  # per channel: scales multiplied in double
            real = float(np.float64(t_in.scales[0]) * np.float64(w_scale)) / t_out.scales[0]
        else:  # per tensor: the product is a float
            real = float(np.float32(t_in.scales[0]) * np.float32(w_scale)) / t_out.scales[0]
        q, shift = _quantize_multiplier(real)
        out[:, c] = _multiply_by_quantized_multiplier(acc[:, c], q, shift)
    lo, hi = _activation_range(t_out, activation)
    return np.clip(out + t_out.zero_points[0], lo, hi).astype(np.int8)


def _fc_oracle_float64(x_q, w, bias, t_in, t_w, t_out, activation):
    """LiteRT's reference int8 FULLY_CONNECTED (per tensor and per channel): the accumulator
    rescaled in float64 by `double(s_in) * double(s_w) / double(s_out)`, rounded once."""
    acc = _fc_accumulator(x_q, w, bias, t_in)
    s_w = np.broadcast_to(np.asarray(t_w.scales, dtype=np.float64), (w.shape[0],))
    effective = np.float64(t_in.scales[0]) * s_w / np.float64(t_out.scales[0])
    out = _round_half_away(acc.astype(np.float64) * effective).astype(np.int64)
    lo, hi = _activation_range(t_out, activation)
    return np.clip(out + t_out.zero_points[0], lo, hi).astype(np.int8)


def _litert_preserving(tflite):
    """LiteRT with its reference kernels, every intermediate tensor kept readable."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    return interpreter


def _tflm_preserving(tflite, arena_size=1 << 20):
    from tflite_micro import runtime

    return runtime.Interpreter.from_bytes(
        tflite, arena_size=arena_size,
        intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors,
    )


def _fc_case(op, info, consts):
    """(weights, bias, input, weight and output tensor infos) of one FULLY_CONNECTED op."""
    t_in, t_w, t_out = (info.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = consts.get_tensor(op.inputs[2]) if has_bias else None
    return consts.get_tensor(t_w.index), bias, t_in, t_w, t_out


@pytest.mark.parametrize("name", sorted(DENSE_TOYS))
def test_tflm_fully_connected_equals_integer_oracle(name):
    _, _, x, tflite = converted(name)
    info = _flatbuffer.read_tflite(tflite)
    consts = _litert_preserving(tflite)  # only to read weights and biases
    tflm = _tflm_preserving(tflite)
    fc_ops = [op for op in info.operators if op.name == "FULLY_CONNECTED"]
    assert fc_ops and all(len(op.inputs) > 2 and op.inputs[2] >= 0 for op in fc_ops)  # biases
    xq = kx.runtime.quantize(x, info.input_tensors[0])
    checked = 0
    for sample in xq:
        tflm.set_input(sample[None], 0)
        tflm.invoke()
        for op in fc_ops:
            w, bias, t_in, t_w, t_out = _fc_case(op, info, consts)
            x_in = tflm.GetTensor(t_in.index, 0)["tensor_data"].reshape(1, -1)
            got = tflm.GetTensor(t_out.index, 0)["tensor_data"].reshape(1, -1)
            want = _fc_oracle(x_in, w, bias, t_in, t_w, t_out, op.fused_activation)
            np.testing.assert_array_equal(got, want)
            checked += got.size
    assert checked >= len(xq) * 3


@pytest.mark.parametrize("name", sorted(DENSE_TOYS))
def test_litert_fully_connected_rescales_in_float64(name):
    # LiteRT's reference FULLY_CONNECTED rescales its int32 accumulator in float64 and rounds
    # once (half away from zero); TFLite Micro uses the fixed-point multiplier with gemmlowp's
    # double rounding (`_fc_oracle`, test above). Every other int8 kernel is the same
    # fixed-point code in both, hence bit-exact. This pins LiteRT's FC exactly, op by op on its
    # own intermediate inputs, and shows where and by how much the two roundings part.
    model, _, _, tflite = converted(name)
    info = _flatbuffer.read_tflite(tflite)
    litert = _litert_preserving(tflite)
    fc_ops = [op for op in info.operators if op.name == "FULLY_CONNECTED"]
    assert fc_ops
    xq = kx.runtime.quantize(_data(model, 256, 2), info.input_tensors[0])
    checked, differ = 0, 0
    for sample in xq:
        litert.set_tensor(info.input_tensors[0].index, sample[None])
        litert.invoke()
        for op in fc_ops:
            w, bias, t_in, t_w, t_out = _fc_case(op, info, litert)
            x_in = litert.get_tensor(t_in.index).reshape(-1, w.shape[1])
            got = litert.get_tensor(t_out.index).reshape(-1, w.shape[0])
            single = _fc_oracle_float64(x_in, w, bias, t_in, t_w, t_out, op.fused_activation)
            double = _fc_oracle(x_in, w, bias, t_in, t_w, t_out, op.fused_activation)
            np.testing.assert_array_equal(got, single)
            step = np.abs(single.astype(int) - double.astype(int))
            assert step.max() <= 1
            checked += got.size
            differ += int(np.count_nonzero(step))
    assert checked == len(xq) * sum(info.tensors[op.outputs[0]].shape[-1] for op in fc_ops)
    # The roundings do part, on a few values: with TF 2.21 / ai-edge-litert 2.3, dense 14 of
    # 6,912 and flatten_dense 3 of 768 (fixed seeds and conversion, so this is deterministic).
    assert 0 < differ <= 0.01 * checked, (differ, checked)


def test_run_tflm_accepts_raw_int8_and_dequantizes():
    _, _, x, tflite = converted("conv2d")
    info = _flatbuffer.read_tflite(tflite)
    raw = kx.run_tflm(tflite, x)
    np.testing.assert_array_equal(kx.run_tflm(tflite, kx.runtime.quantize(x, info.input_tensors[0])), raw)
    out = info.output_tensors[0]
    np.testing.assert_allclose(
        kx.run_tflm(tflite, x, dequantize=True),
        (raw.astype(np.float32) - out.zero_points[0]) * out.scales[0], rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"samples of shape \(10, 10, 3\)"):
        kx.run_tflm(tflite, x[:, :5])


# ---------------------------------------------------------------------------------------------
# The model zoo and randomly pruned frozen variants: TFLite Micro against LiteRT's reference
# kernels, tensor by tensor. Every tensor up to the first FULLY_CONNECTED is bit-identical;
# each FULLY_CONNECTED equals its runtime's own rounding (TFLite Micro: `_fc_oracle`, LiteRT:
# `_fc_oracle_float64`) given that runtime's input. (Every zoo model has a Dense layer; in a
# model without one, every tensor would be compared.)

ZOO = {
    "resnet8": lambda: kd.zoo.resnet8(classifier_activation=None),
    "ds_cnn": lambda: kd.zoo.ds_cnn(classifier_activation=None),
    "mobilenet_v1": lambda: kd.zoo.mobilenet_v1(classifier_activation=None),
    "fc_autoencoder": lambda: kd.zoo.fc_autoencoder(),
    "tcn": lambda: kd.zoo.tcn(classifier_activation=None),
}
ZOO_SAMPLES = {"mobilenet_v1": 4, "fc_autoencoder": 4}  # test samples (default 8)


@functools.lru_cache(maxsize=None)
def converted_zoo(name, pruned):
    """(model, test inputs, int8 bytes). Logits rather than softmax, random BN scales and
    shifts with statistics recalibrated on the data (random statistics make deep networks'
    outputs constant). `pruned`: the frozen model after closing about half of every mask."""
    from tests import toys

    keras.utils.set_random_seed(11)
    model = _randomize(ZOO[name]())
    calibration = _data(model, 16, 0)
    kd.recalibrate_batchnorm(model, calibration)
    if pruned:
        search = kd.prepare(model)
        toys.close_random_masks(search, seed=1, keep=0.5)
        model = kd.freeze(search, verbose=0)
        kd.recalibrate_batchnorm(model, calibration)
    x = _data(model, ZOO_SAMPLES.get(name, 8), 1)
    return model, x, kx.to_tflite(model, calibration[:8])


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_tflm_equals_litert_reference_up_to_fc_rounding(name, pruned):
    model, x, tflite = converted_zoo(name, pruned)
    if pruned:
        assert model.count_params() < converted_zoo(name, False)[0].count_params()
    ops = kx.op_names(tflite)
    assert set(ops) <= kx.TFLM_BUILTIN_OPS and kx.tflm_problems(tflite) == []
    info = _flatbuffer.read_tflite(tflite)
    assert [t.dtype for t in info.input_tensors + info.output_tensors] == ["INT8", "INT8"]
    assert {t.dtype for t in info.tensors if not t.is_constant} == {"INT8"}
    xq = kx.runtime.quantize(x, info.input_tensors[0])

    main = info.operators
    first_fc = next((k for k, op in enumerate(main) if op.name == "FULLY_CONNECTED"), len(main))
    exact = sorted({info.input_tensors[0].index} | {t for op in main[:first_fc] for t in op.outputs})
    fc_ops = [op for op in main if op.name == "FULLY_CONNECTED"]
    litert = _litert_preserving(tflite)
    tflm = _tflm_preserving(tflite, 2 * kx.runtime.default_arena_size(info))
    runs = {
        "tflm": lambda i: tflm.GetTensor(i, 0)["tensor_data"].reshape(info.tensors[i].shape),
        "litert": lambda i: litert.get_tensor(i).reshape(info.tensors[i].shape),
    }
    tflm_out = []
    for sample in xq:
        litert.set_tensor(info.input_tensors[0].index, sample[None])
        litert.invoke()
        tflm.set_input(sample[None], 0)
        tflm.invoke()
        for t in exact:
            np.testing.assert_array_equal(
                runs["tflm"](t), runs["litert"](t), err_msg=info.tensors[t].name
            )
        for op in fc_ops:
            w, bias, t_in, t_w, t_out = _fc_case(op, info, litert)
            for runtime, oracle in (("tflm", _fc_oracle), ("litert", _fc_oracle_float64)):
                x_in = runs[runtime](t_in.index).reshape(-1, w.shape[1])
                want = oracle(x_in, w, bias, t_in, t_w, t_out, op.fused_activation)
                np.testing.assert_array_equal(
                    runs[runtime](t_out.index).reshape(-1, w.shape[0]), want,
                    err_msg=f"{runtime} {t_out.name}",
                )
            # On LiteRT's input, TFLite Micro's rounding is at most one step from LiteRT's.
            double = _fc_oracle(x_in, w, bias, t_in, t_w, t_out, op.fused_activation)
            assert np.abs(double.astype(int) - want.astype(int)).max() <= 1
        tflm_out.append(runs["tflm"](info.output_tensors[0].index))
    tflm_out = np.concatenate(tflm_out)
    assert tflm_out.shape == (len(x),) + tuple(model.outputs[0].shape[1:])
    assert len(np.unique(tflm_out)) >= min(tflm_out.size // 2, 32)  # not degenerate


# ---------------------------------------------------------------------------------------------
# Measurement

ALLOCATION_TEXT = """\
[RecordingMicroAllocator] Arena allocation total 2080 bytes
[RecordingMicroAllocator] Arena allocation head 448 bytes
[RecordingMicroAllocator] Arena allocation tail 1632 bytes
[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 216 bytes with alignment overhead \
(requested 216 bytes for 9 allocations)
[RecordingMicroAllocator] 'NodeAndRegistration struct' used 256 bytes with alignment overhead \
(requested 256 bytes for 4 NodeAndRegistration structs)
"""


def test_parse_allocations():
    parsed = kx.parse_allocations(ALLOCATION_TEXT)
    assert parsed == {
        "arena_bytes": 2080, "arena_head_bytes": 448, "arena_tail_bytes": 1632,
        "arena_breakdown": {"TfLiteEvalTensor data": 216, "NodeAndRegistration struct": 256},
    }
    with pytest.raises(ValueError, match="print_allocations"):
        kx.parse_allocations("nothing here")


def _tflm_reported_arena(tflite, capfd, arena_size):
    """Independent reading: our own interpreter, print_allocations() captured by pytest."""
    from tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size)
    capfd.readouterr()
    interpreter.print_allocations()
    err = capfd.readouterr().err
    return {k: int(v) for k, v in re.findall(r"Arena allocation (\w+) (\d+) bytes", err)}


@pytest.mark.parametrize("name", ["conv2d", "residual", "dense"])
def test_measure_flash_and_arena(name, capfd):
    _, _, _, tflite = converted(name)
    result = kx.measure(tflite)
    assert result.flash_bytes == len(tflite) == result["flash_bytes"]
    reported = _tflm_reported_arena(tflite, capfd, arena_size=1 << 20)
    # The host interpreter's figures are kept, labelled as such.
    assert (result.host_arena_bytes, result.host_arena_head_bytes,
            result.host_arena_tail_bytes) == (reported["total"], reported["head"],
                                              reported["tail"])
    # arena_* is the 32-bit target's arena (no target given): the same head, the host tail
    # moved by the modelled difference between 4- and 8-byte pointers.
    assert result.pointer_bytes == 4
    assert result.arena_head_bytes == reported["head"]
    assert result.arena_tail_bytes == reported["tail"] + arena.tflite_tail(
        tflite, pointer_bytes=4) - arena.tflite_tail(tflite, pointer_bytes=8)
    assert result.arena_tail_bytes < reported["tail"]
    assert result.ram_bytes == result.arena_head_bytes + result.arena_tail_bytes
    # The arena given does not change what is used.
    assert kx.arena_usage(tflite, arena_size=1 << 22)["arena_bytes"] == result.host_arena_bytes
    # Lower bound: every operator's non-constant inputs and outputs are live together.
    info = _flatbuffer.read_tflite(tflite)
    live = max(
        sum(-(-info.tensors[t].nbytes // 16) * 16 for t in set(op.inputs + op.outputs)
            if t >= 0 and not info.tensors[t].is_constant)
        for op in info.operators
    )
    assert result.arena_head_bytes >= live
    assert result.ops == kx.op_names(tflite)
    assert result.inputs[0]["dtype"] == "int8" and result.quantization == "int8"
    assert json.loads(json.dumps(result)) == result.to_dict() == dict(result)


def test_measure_classification_accuracy_and_agreement():
    model, _, x, tflite = converted("conv2d")
    y = np.random.default_rng(2).integers(0, 3, len(x))
    raw = kx.run_tflm(tflite, x)
    pred = np.argmax(raw, axis=-1)
    keras_pred = np.argmax(model.predict(x, verbose=0), axis=-1)
    result = kx.measure(tflite, data=(x, y), keras_model=model)
    assert result.task == "classification" and result.num_samples == len(x)
    assert result.accuracy == pytest.approx(np.mean(pred == y))
    assert result.float_accuracy == pytest.approx(np.mean(keras_pred == y))
    assert result.agreement == pytest.approx(np.mean(keras_pred == pred))
    # One-hot labels give the same accuracy.
    one_hot = np.eye(3)[y]
    assert kx.measure(tflite, data=(x, one_hot)).accuracy == result.accuracy


def test_measure_regression_mse():
    model, _, x, tflite = converted("dense")
    y = np.random.default_rng(3).normal(size=(len(x), 3)).astype("float32")
    result = kx.measure(tflite, data=(x, y), keras_model=model)
    out = kx.run_tflm(tflite, x, dequantize=True)
    assert result.task == "regression" and result.accuracy is None
    assert result.mse == pytest.approx(float(np.mean((out - y) ** 2)), rel=1e-6)
    assert result.float_mse == pytest.approx(
        float(np.mean((model.predict(x, verbose=0) - y) ** 2)), rel=1e-5
    )


def test_measure_scores_regression_binary_and_multi_label_outputs_by_their_labels():
    # One output unit with labels of shape (n,) was taken for class indices (a regression got
    # an "accuracy", its targets cast to int), 0 / 1 labels of shape (n, 1) or (n, 4) for a
    # regression (the MSE of a binary or multi-label classifier), and a logit was thresholded
    # at 0.5 like a probability.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 6)).astype("f")
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="relu")(inputs)
    scored = {}
    for name, units, activation in (("logit", 1, None), ("sigmoid", 1, "sigmoid"),
                                    ("multi", 4, "sigmoid")):
        model = keras.Model(inputs, L.Dense(units, activation=activation)(h))
        tflite = kx.to_tflite(model, x)
        scored[name] = (model, tflite, kx.run_tflm(tflite, x, dequantize=True))
    model, tflite, out = scored["logit"]
    target = out[:, 0] + rng.normal(size=32).astype("f")  # a regression target, shape (n,)
    result = kx.measure(tflite, data=(x, target))
    assert result.task == "regression" and result.accuracy is None
    assert result.mse == pytest.approx(float(np.mean((out[:, 0] - target) ** 2)), rel=1e-6)
    labels = (rng.random(32) > 0.5).astype("f")
    for y in (labels, labels[:, None]):  # binary labels, as (n,) or (n, 1): logits at 0
        result = kx.measure(tflite, data=(x, y), keras_model=model)
        assert result.task == "classification" and result.mse is None
        assert result.accuracy == pytest.approx(np.mean((out[:, 0] > 0) == labels))
        keras_pred = model.predict(x, verbose=0)[:, 0] > 0
        assert result.agreement == pytest.approx(np.mean(keras_pred == (out[:, 0] > 0)))
    assert kx.measure(tflite, data=(x, labels), task="regression").mse == pytest.approx(
        float(np.mean((out[:, 0] - labels) ** 2)), rel=1e-6)
    _, tflite, out = scored["sigmoid"]
    assert kx.measure(tflite, data=(x, labels)).accuracy == pytest.approx(
        np.mean((out[:, 0] > 0.5) == labels))
    _, tflite, out = scored["multi"]
    multi = (rng.random((32, 4)) > 0.5).astype("f")
    result = kx.measure(tflite, data=(x, multi))
    assert result.task == "classification"
    assert result.accuracy == pytest.approx(np.mean((out > 0.5) == multi))
    with pytest.raises(ValueError, match="not class indices"):
        kx.measure(tflite, data=(x, rng.normal(size=32)))


def test_measure_scores_the_first_output_of_labels_given_per_output():
    # A two-output model is fitted with a dict (or a list) of labels; `measure` scores its first
    # output and took `y` as one array only ("0 labels" for the dict fit was given). It picks
    # the first output's labels by the name the file's signature gives it.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = L.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, {"cls": L.Dense(4, activation="softmax", name="cls")(h),
                              "reg": L.Dense(1, name="reg")(h)})
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("f")
    pred = model.predict(x, verbose=0)
    cls = np.argmax(pred["cls"], axis=1)
    reg = np.random.default_rng(1).normal(size=(32, 1)).astype("f")
    tflite = kx.to_tflite(model, x)
    assert _flatbuffer.read_tflite(tflite).output_names == ("cls", "reg")
    alone = kx.measure(tflite, data=(x, cls), keras_model=model)
    assert alone.task == "classification" and alone.float_accuracy == 1.0
    for y in ({"reg": reg, "cls": cls}, [cls, reg]):
        both = kx.measure(tflite, data=(x, y), keras_model=model)
        assert (both.task, both.accuracy, both.agreement) == (
            alone.task, alone.accuracy, alone.agreement)
    with pytest.raises(ValueError, match=r"first output \('cls'.*keys \['a', 'reg'\]"):
        kx.measure(tflite, data=(x, {"a": cls, "reg": reg}))


def test_measure_target_fit():
    _, _, _, tflite = converted("conv2d")
    arena = kx.arena_usage(tflite)["arena_bytes"]
    small = types.SimpleNamespace(name="tiny", flash_bytes=len(tflite) - 1, ram_bytes=arena)
    result = kx.measure(tflite, target=small)
    assert (result.target, result.fits_flash, result.fits_ram) == ("tiny", False, True)
    result = kx.measure(tflite, target="stm32h743")
    assert result.target == "stm32h743" and result.fits_flash and result.fits_ram
    assert "fits_ram" in str(result)


def test_measure_host_pointer_target_reports_the_host_arena():
    _, _, _, tflite = converted("residual")
    host = kd.targets.get("stm32h743").replace(name="host64", pointer_bytes=8)
    result = kx.measure(tflite, target=host)
    assert result.pointer_bytes == 8
    assert (result.ram_bytes, result.arena_tail_bytes) == (
        result.host_arena_bytes, result.host_arena_tail_bytes)
    assert "host_arena_bytes" in str(result)


def _generic_weights(model, seed=0):
    """Random, non-degenerate weights (the converter drops all-zero biases of an untrained
    model, which would change its structure)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        positive = w.name.split("/")[-1] in ("gamma", "moving_variance")
        value = rng.uniform(0.5, 1.5, w.shape) if positive else rng.normal(0.0, 0.3, w.shape)
        w.assign(value.astype("float32"))


def test_measure_arena_equals_the_certified_arena_on_ds_cnn():
    """One RAM number per board: measure's arena for the target is what kd.summary (and so
    kd.freeze) certify, not the 64-bit host interpreter's (issue 19: 22,812 vs 24,224 B)."""
    keras.utils.set_random_seed(0)
    model = kd.zoo.ds_cnn()
    _generic_weights(model)
    s = kd.summary(model, "stm32h743")
    rep = np.random.default_rng(1).normal(size=(8,) + tuple(model.inputs[0].shape[1:]))
    tflite = kx.to_tflite(model, representative_data=rep.astype("float32"))
    m = kx.measure(tflite, target="stm32h743")
    assert (m.ram_bytes, m.arena_head_bytes, m.arena_tail_bytes) == (
        s["ram_bytes"], s["arena_head_bytes"], s["arena_tail_bytes"])
    assert m.fits_ram == s["fits_ram"]
    assert m.host_arena_bytes > m.ram_bytes  # 8-byte pointers on the host



def test_tail_replay_counts_batch_matmul_copies_as_tflite_micro_allocates_them():
    # TFLite Micro's BATCH_MATMUL keeps a transposed copy of the LHS (adj_x) and of the RHS
    # (unless adj_y) in the tail, and a writable copy of the output's dims: an attention
    # block's arena was 272 B over its certificate on the host (304 B on the board)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 8, 6)).astype("f")
    inputs = keras.Input((8, 6))
    a, b = L.Dense(5)(inputs), L.Dense(5)(inputs)
    both = keras.ops.matmul(keras.ops.transpose(a, (0, 2, 1)), b)  # adj_x, no adj_y
    attention = L.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    for h in (both, attention):
        model = keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))
        tflite = kx.to_tflite(model, x)
        info = _flatbuffer.read_tflite(tflite)
        assert any(arena.batch_matmul_copies(info, op) for op in info.operators)
        measured = kx.measure(tflite)
        assert arena.tflite_tail(info, pointer_bytes=8) == measured.host_arena_tail_bytes

def _degenerate_softmax_tflite():
    """An int8 model whose softmax input is constant zero: its scale (~8e-9) is below 2**-26,
    and TFLite Micro's softmax Prepare aborts the process (issue 19)."""
    x = keras.Input((4,))
    h = L.Dense(3, kernel_initializer="zeros", bias_initializer="zeros")(x)
    model = keras.Model(x, L.Softmax()(h))
    rep = np.random.default_rng(0).random((16, 4)).astype("float32")
    return kx.to_tflite(model, representative_data=rep), rep


def test_tflm_abort_raises_instead_of_killing_the_process():
    tflite, x = _degenerate_softmax_tflite()
    problems = kx.tflm_preflight(tflite)
    assert [(p["op_index"], p["op"]) for p in problems] == [(1, "SOFTMAX")]
    for call in (lambda: kx.measure(tflite), lambda: kx.measure(tflite, data=(x, np.zeros(16))),
                 lambda: kx.run_tflm(tflite, x), lambda: kx.arena_usage(tflite)):
        with pytest.raises(RuntimeError, match=r"SIGABRT(.|\n)*Operator 1 \(SOFTMAX\)"
                           r"(.|\n)*QuantizeMultiplierGreaterThanOne"):
            call()
    # Still alive, and a sane model still measures.
    _, _, _, good = converted("dense")
    assert kx.tflm_preflight(good) == []
    assert kx.measure(good).ram_bytes > 0


def test_dead_relu_after_an_add_is_found_before_tflite_micro_aborts():
    """An int8 ADD whose fused ReLU is never positive on the calibration data has an output
    scale ~8e-9 while its inputs vary: TFLite Micro's add Prepare aborts on the output multiplier
    (QuantizeMultiplierSmallerThanOneExp). Fuzzer seed 233 (a Dense on one channel, converted to
    MUL + ADD with the ReLU fused). to_tflite warns naming the layer; measuring raises."""
    x = keras.Input((4,))
    h = L.Dense(4, name="varies")(x)
    low = L.Dense(4, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(
        -100.0), name="very_negative")(x)
    model = keras.Model(x, L.Dense(2, name="head")(L.ReLU(name="dead")(L.Add(name="sum")(
        [h, low]))))
    rep = np.random.default_rng(0).random((16, 4)).astype("float32")
    with pytest.warns(UserWarning, match=r"would abort TensorFlow Lite Micro(.|\n)*layer "
                      r"'(sum|dead)', operator \d+ \(ADD\)"):
        tflite = kx.to_tflite(model, representative_data=rep)
    problems = kx.tflm_preflight(tflite)
    assert [p["op"] for p in problems] == ["ADD"]
    with pytest.raises(RuntimeError, match=r"SIGABRT(.|\n)*\(ADD\)(.|\n)*"
                       r"QuantizeMultiplierSmallerThanOneExp"):
        kx.arena_usage(tflite)


def test_a_child_crash_without_known_cause_is_reported(tmp_path, monkeypatch):
    """Any death of the TFLite Micro child becomes a RuntimeError saying where it happened."""
    fake = tmp_path / "child.py"
    fake.write_text("import os, sys\n"
                    "from keras_dnas.export._tflm_child import PHASE_PREFIX\n"
                    "sys.stderr.write(PHASE_PREFIX + 'invoke sample=3\\n'); sys.stderr.flush()\n"
                    "sys.stderr.write('Node CONV_2D (number 0f) failed to invoke\\n')\n"
                    "sys.stderr.flush(); os.abort()\n")
    monkeypatch.setattr(kx.runtime, "_CHILD", str(fake))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    _, _, x, tflite = converted("conv2d")
    with pytest.raises(RuntimeError, match=r"SIGABRT while running the model \(sample 3\)"
                       r"(.|\n)*Operator 0 \(CONV_2D\)(.|\n)*failed to invoke"):
        kx.run_tflm(tflite, x[:4])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_converts_as_its_float32_copy(policy):
    # a model built under a mixed precision policy computes in float16 / bfloat16: the
    # converter failed deep inside TensorFlow ("'tf.Conv2D' op is neither a custom op nor a
    # flex op"), so kd.summary of the seed, the search's flash / RAM model and to_tflite did too
    def build():
        inp = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(4, 3, activation="relu", name="c")(inp)
        h = keras.layers.BatchNormalization(name="bn")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inp, keras.layers.Dense(3, name="out")(h))

    try:
        keras.mixed_precision.set_global_policy(policy)
        mixed = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("c").compute_dtype != "float32"
    reference = build()
    reference.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    tflite = kd.export.to_tflite(mixed, representative_data=x)
    expected = kd.export.to_tflite(reference, representative_data=x)
    assert abs(len(tflite) - len(expected)) <= 64  # the same file up to its tensors' names
    np.testing.assert_array_equal(kd.export.run_litert(tflite, x), kd.export.run_litert(expected, x))
    assert mixed.get_layer("c").compute_dtype != "float32"  # the user's model is left as it was
