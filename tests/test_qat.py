"""Quantisation-aware fine-tuning: structure, initial fidelity, training, int8 export.

Oracles: the float model (outputs at initialisation), the BatchNormalization formula (folding),
the float activations' min / max (calibration), and TensorFlow Lite Micro running the exported
full-int8 model on real digits (the fake-quant simulation must predict what it computes).
"""

import importlib.util
import textwrap

import numpy as np
import pytest

import keras
from keras_dnas import qat
from keras_dnas.export import TFLM_BUILTIN_OPS, measure, op_names, run_tflm, tflm_problems
from keras_dnas import _flatbuffer
from keras_dnas.qat.tflite import to_tflite_qat
from tests import child, toys

L = keras.layers

# Where each toy's int8 TFLite graph has a tensor with its own scale, i.e. which FakeQuant
# layers the QAT model gets (named after the layer whose output they quantise). BN after a
# conv is folded (no quantiser between them), a ReLU following a conv / Add is fused (the
# quantiser sits after the ReLU), max pooling / flatten / dropout / global max pooling run on
# their input's scale, softmax has TFLite's fixed range.
QUANTISERS = {
    "plain_cnn": ["img_fq", "r1_fq", "c2_fq", "gap_fq", "fc_fq"],
    "residual": ["img_fq", "stem_relu_fq", "b1_relu_fq", "b2_bn_fq", "add_relu_fq", "proj_fq",
                 "c3_fq", "add2_fq", "gap_fq", "fc_fq"],
    "depthwise_separable": ["img_fq", "stem_relu_fq", "dw0_relu_fq", "pw0_relu_fq",
                            "dw1_relu_fq", "pw1_relu_fq", "gap_fq", "fc_fq"],
    "concat_branch": ["img_fq", "stem_fq", "branch_a_fq", "branch_b_bn_fq", "cat_fq",
                      "cat_relu_fq", "after_fq", "fc_fq"],
    "flatten_dense": ["img_fq", "c1_fq", "hidden_fq", "fc_fq", "fc_softmax_fq"],
    "conv1d": ["signal_fq", "r1_fq", "bn2_fq", "r2_fq", "gap_fq", "fc_fq"],
    "sequential_mlp": ["input_layer_fq", "dense_fq", "dense_1_fq", "dense_2_fq"],
}
FOLDED_BN = {"plain_cnn": ["bn1"], "residual": ["stem_bn", "b1_bn", "b2_bn"],
             "depthwise_separable": ["stem_bn", "dw0_bn", "pw0_bn", "dw1_bn", "pw1_bn"],
             "concat_branch": ["branch_b_bn"], "conv1d": ["bn1", "bn2"]}


@pytest.mark.parametrize("name", sorted(toys.TOYS))
def test_quantisers_sit_where_tflite_has_its_own_scales(name):
    keras.backend.clear_session()  # automatic names (sequential_mlp) start from scratch
    model = toys.TOYS[name]()
    q = qat.quantize_aware(model)
    assert [layer.name for layer in qat.fake_quant_layers(q)] == QUANTISERS[name]
    names = {layer.name for layer in q.layers}
    assert not names & set(FOLDED_BN.get(name, ()))
    bn_layers = [layer.name for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    assert names & set(bn_layers) == set(bn_layers) - set(FOLDED_BN.get(name, ()))
    for layer in model.layers:  # every conv / dense becomes its quantisation-aware class
        if type(layer) in (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense):
            assert type(q.get_layer(layer.name)).__name__ == "Quant" + type(layer).__name__


def test_softmax_gets_tflite_fixed_range():
    q = qat.quantize_aware(toys.flatten_dense())
    fixed = q.get_layer("fc_softmax_fq")
    assert fixed.fixed_range == (0.0, 255.0 / 256.0)  # scale 1/256, zero point -128
    assert not fixed.weights


@pytest.mark.parametrize("name", ["plain_cnn", "residual", "depthwise_separable", "conv1d",
                                  "flatten_dense"])
def test_outputs_at_initialisation_are_close_to_the_float_model(name):
    model = toys.randomize_bn(toys.TOYS[name]())
    x = toys.sample(model, n=128)
    q = qat.quantize_aware(model, representative_data=x)
    expected = model.predict(x, verbose=0)
    got = q.predict(x, verbose=0)
    # int8 error only: a few quantisation steps of the output range (1 step = 1/255).
    assert np.max(np.abs(got - expected)) <= 0.03 * np.max(np.abs(expected))
    assert np.mean(np.abs(got - expected)) <= 0.005 * np.max(np.abs(expected))


def test_batchnorm_is_folded_exactly():
    model = toys.randomize_bn(toys.plain_cnn())
    conv, bn = model.get_layer("c1"), model.get_layer("bn1")
    kernel, bias = qat.native._fold(conv, bn)
    x = toys.sample(model, n=8)
    probe = keras.Model(model.inputs, bn.output)
    plain = keras.Sequential([keras.Input(x.shape[1:]),
                              L.Conv2D(8, 3, padding="same", name="c")])
    plain.set_weights([kernel, bias])
    np.testing.assert_allclose(plain(x), probe(x), rtol=1e-4, atol=1e-5)


def test_kernel_quantisation_is_per_channel_symmetric_int8():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 5)).astype("float32") * np.arange(1, 6, dtype="float32")
    wq = np.asarray(qat.quantize_kernel(w))
    scale = np.abs(w).max(axis=(0, 1, 2)) / 127
    steps = wq / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() == 127
    assert np.max(np.abs(wq - w) / scale) <= 0.5 + 1e-4
    # depthwise kernels: one scale per (channel, multiplier)
    d = rng.normal(size=(3, 3, 4, 2)).astype("float32")
    dq = np.asarray(qat.quantize_kernel(d, channel_axes=(-2, -1)))
    steps = dq / (np.abs(d).max(axis=(0, 1)) / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_calibration_records_the_float_min_max():
    keras.backend.clear_session()
    model = toys.sequential_mlp()
    x = np.random.default_rng(0).normal(size=(50, 20)).astype("float32")
    q = qat.quantize_aware(model, representative_data=x, batch_size=16)
    lo, hi = q.get_layer("input_layer_fq").range
    assert (lo, hi) == pytest.approx((float(x.min()), float(x.max())))
    # The hidden ReLU's range: its float output (computed with int8-grid weights, as the QAT
    # model computes), never below zero.
    dense = model.layers[0]
    kernel = np.asarray(qat.quantize_kernel(dense.kernel.numpy()))
    h = np.maximum(x @ kernel + dense.bias.numpy(), 0)
    assert q.get_layer("dense_fq").range == pytest.approx((0.0, float(h.max())), rel=1e-5)


def test_fit_trains_weights_and_moves_ema_ranges():
    model = toys.plain_cnn()
    x = toys.sample(model, n=64)
    y = np.random.default_rng(0).integers(0, 4, 64)
    q = qat.quantize_aware(model, representative_data=x)
    ranges = qat.activation_ranges(q)
    kernel = q.get_layer("c1").kernel.numpy().copy()
    q.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = q.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(q.get_layer("c1").kernel.numpy(), kernel)
    assert qat.activation_ranges(q) != ranges
    assert all(lo <= 0.0 < hi for lo, hi in qat.activation_ranges(q).values())


def test_learned_ranges_are_trainable():
    q = qat.quantize_aware(toys.plain_cnn(), ranges="learned")
    fq = q.get_layer("c2_fq")
    assert {v.name for v in fq.trainable_weights} == {"min_value", "max_value"}


def test_saved_and_loaded_without_custom_objects(tmp_path):
    model = toys.depthwise_separable()
    x = toys.sample(model, n=16)
    q = qat.quantize_aware(model, representative_data=x)
    path = tmp_path / "qat.keras"
    q.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), q.predict(x, verbose=0), atol=1e-6)


def test_errors_name_the_problem():
    x = keras.Input((8, 8, 3))
    sep = keras.Model(x, L.SeparableConv2D(4, 3, name="sep")(x))
    with pytest.raises(ValueError, match="'sep'.*SeparableConv2D"):
        qat.quantize_aware(sep)
    shared = L.Dense(3, name="shared")
    a = keras.Input((3,))
    with pytest.raises(ValueError, match="shared layers.*'shared'"):
        qat.quantize_aware(keras.Model(a, shared(shared(a))))
    with pytest.raises(ValueError, match="Received: ranges='minmax'"):
        qat.quantize_aware(toys.sequential_mlp(), ranges="minmax")
    with pytest.raises(ValueError, match="quantize_aware"):
        to_tflite_qat(toys.sequential_mlp(), np.zeros((4, 20), "float32"))
    with pytest.raises(ValueError, match="Received: method='int4'"):
        to_tflite_qat(qat.quantize_aware(toys.sequential_mlp()), None, method="int4")


# ------------------------------------------------------------------------- real data, TFLM


def _digits(n_train=1024, n_test=300):
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    x = (bunch.images / 16.0).astype("float32")[..., None]
    y = bunch.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:n_train], y[:n_train]), (x[-n_test:], y[-n_test:])


@pytest.fixture(scope="module")
def digits_qat():
    """A small CNN on scikit-learn's digits, QAT fine-tuned, and its int8 export."""
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = _digits()
    inp = keras.Input((8, 8, 1), name="digit")
    h = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = L.Flatten()(h)
    model = keras.Model(inp, L.Softmax()(L.Dense(10)(h)))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    q = qat.quantize_aware(model, representative_data=x[:256])
    q.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    q.fit(x, y, epochs=1, batch_size=32, verbose=0)
    tflite = to_tflite_qat(q, x[:256])
    return {"model": model, "qat": q, "tflite": tflite, "test": (xt, yt), "rep": x[:256]}


def test_export_is_full_int8_with_tflm_ops_only(digits_qat):
    tflite = digits_qat["tflite"]
    ops = op_names(tflite)
    assert ops == ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    assert set(ops) <= TFLM_BUILTIN_OPS and not {"QUANTIZE", "DEQUANTIZE"} & set(ops)
    assert tflm_problems(tflite, "int8") == []
    info = _flatbuffer.read_tflite(tflite)
    assert {t.dtype for t in info.tensors if not t.is_constant} <= {"INT8", "INT32"}
    assert [t.dtype for t in info.input_tensors + info.output_tensors] == ["INT8", "INT8"]


def test_export_uses_the_learnt_ranges(digits_qat):
    q, info = digits_qat["qat"], _flatbuffer.read_tflite(digits_qat["tflite"])
    lo, hi = q.get_layer("digit_fq").range
    assert info.input_tensors[0].scales[0] == pytest.approx((hi - lo) / 255, rel=1e-5)
    # A ReLU output range [0, hi] gives zero point -128 and scale hi / 255.
    scales = {round(t.scales[0], 8) for t in info.tensors if len(t.scales) == 1}
    for fq in qat.fake_quant_layers(q):
        lo, hi = fq.range
        if lo == 0.0:
            assert round(hi / 255, 8) in scales, fq.name


def test_tflm_matches_the_fake_quant_model(digits_qat):
    xt, yt = digits_qat["test"]
    q, tflite = digits_qat["qat"], digits_qat["tflite"]
    simulated = q.predict(xt, verbose=0)
    result = measure(tflite, data=(xt, yt), keras_model=q)
    # The oracle: TFLite Micro's accuracy on real digits equals the simulation's ...
    assert abs(result.accuracy - result.float_accuracy) <= 0.01
    assert result.agreement >= 0.98
    assert result.accuracy >= 0.85
    # ... because its outputs are the simulated ones up to a couple of int8 steps.
    out = run_tflm(tflite, xt, dequantize=True)
    step = _flatbuffer.read_tflite(tflite).output_tensors[0].scales[0]
    assert np.percentile(np.abs(out - simulated), 99) <= 2 * step + 1e-6


def test_ptq_method_converts_the_fine_tuned_weights(digits_qat):
    xt, yt = digits_qat["test"]
    tflite = to_tflite_qat(digits_qat["qat"], digits_qat["rep"], method="ptq")
    assert tflm_problems(tflite, "int8") == []
    result = measure(tflite, data=(xt, yt), keras_model=digits_qat["qat"])
    assert result.agreement >= 0.95


JAX_SCRIPT = textwrap.dedent(
    """
    import numpy as np, keras
    from keras_dnas import qat
    from keras_dnas.export import run_tflm, tflm_problems
    from keras_dnas.qat.tflite import to_tflite_qat
    from tests import toys
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    model = toys.randomize_bn(toys.plain_cnn())
    x = toys.sample(model, n=64)
    y = np.random.default_rng(0).integers(0, 4, 64)
    q = qat.quantize_aware(model, representative_data=x)
    ranges = qat.activation_ranges(q)
    q.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(q.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"]).all()
    assert qat.activation_ranges(q) != ranges
    tflite = to_tflite_qat(q, x)  # auto: post-training ranges on the JAX backend
    assert tflm_problems(tflite, "int8") == []
    out, sim = run_tflm(tflite, x, dequantize=True), np.asarray(q.predict(x, verbose=0))
    assert np.mean(out.argmax(-1) == sim.argmax(-1)) >= 0.9
    try:
        to_tflite_qat(q, x, method="fake_quant")
        raise SystemExit("fake_quant must need the TensorFlow backend")
    except ValueError:
        pass
    print("JAX OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_qat_trains_and_exports_under_jax():
    proc = child.run(JAX_SCRIPT, "jax", timeout=300)  # the session's JAX child
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX OK" in proc.stdout


def test_integer_inputs_are_not_fake_quantised():
    # Token ids of an Embedding model: a fake-quant on the int32 input would make the
    # exported file start with a float CAST (refused as not int8). The ids stay integers.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, (64, 12)).astype("int32")
    ids = keras.Input((12,), dtype="int32", name="ids")
    h = keras.layers.Embedding(50, 8)(ids)
    h = keras.layers.Conv1D(8, 3, activation="relu")(h)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h))
    q = qat.quantize_aware(keras.Model(ids, out), x)
    assert "ids_fq" not in [layer.name for layer in q.layers]
    tflite = to_tflite_qat(q, x)
    assert "CAST" not in op_names(tflite) and tflm_problems(tflite, "int8") == []
    info = _flatbuffer.read_tflite(tflite)
    assert [t.dtype for t in info.input_tensors] == ["INT32"]
    step = info.output_tensors[0].scales[0]
    out_tflm = run_tflm(tflite, x[:16], dequantize=True)
    assert np.max(np.abs(out_tflm - q.predict(x[:16], verbose=0))) <= 3 * step + 1e-6
