"""Roles for what real models contain (issue 13, cases 5 and 6).

Squeeze-excite, ``keras.ops`` element-wise nodes, separable convolutions,
PReLU, LayerNormalization, Rescaling / Normalization mid-network, padding,
cropping and upsampling: each toy checks the plan's searchable groups, that
``kd.prepare`` with open masks reproduces the model, and that ``kd.freeze``
with random masks computes what the masked model computes.
"""

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.graph import analyze

from tests import toys

L = keras.layers


def randomize(model, seed=0):
    """Non-trivial values for every weight (biases, BN / Normalization statistics, PReLU...)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if w.name == kd.masks.ALPHA_NAME or "int" in str(w.dtype):
                continue
            if "variance" in w.path or "gamma" in w.name:
                value = rng.uniform(0.5, 1.5, w.shape)
            else:
                value = rng.normal(0.0, 0.4, w.shape)
            w.assign(value.astype("float32"))
        if isinstance(layer, L.Normalization):
            layer.finalize_state()
    return model


def searchable_fraction(plan):
    """``(searchable, total)`` output channels of Conv / Dense / SeparableConv layers
    outside the groups that reach a model output (benchmarks/searchable_fraction.py)."""
    out_groups = {g for v in plan.outputs for g in v.segments}
    searchable = total = 0
    for info in plan.layers:
        if info.op not in ("conv", "dense", "separable"):
            continue
        if any(g in out_groups for g in info.output.segments):
            continue
        n = plan.view_size(info.output)
        total += n
        searchable += n if all(not plan.groups[g].frozen for g in info.output.segments) else 0
    return searchable, total


def frozen_defined(plan):
    return {name: g.reason for g in plan.groups if g.frozen for name in g.defined_by}


def searchable_defined(plan):
    return sorted(name for g in plan.searchable_groups() for name in g.defined_by)


def _max_rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def check_prepare_and_freeze(model, seed=0, keep=0.5):
    """Open masks reproduce ``model``; random masks freeze exactly. Returns the frozen model."""
    x = toys.sample(model, seed=seed)
    search = kd.prepare(model)
    assert _max_rel_err(search(x, training=False), model(x, training=False)) < 1e-5
    toys.close_random_masks(search, seed=seed, keep=keep)
    slim = kd.freeze(search, verbose=0)
    assert _max_rel_err(slim(x, training=False), search(x, training=False)) < 1e-5
    for layer in slim.layers:  # standard Keras layers only
        assert type(layer).__module__.startswith("keras."), type(layer)
    assert slim.count_params() < model.count_params()
    return slim, x


# ------------------------------------------------------------------------------------ toys


def se_block(x, filters, name, reshape=True, ops_gate=False):
    """EfficientNet / MobileNetV3-style squeeze-excite on ``x`` (``filters`` channels)."""
    if reshape:
        s = L.GlobalAveragePooling2D(name=f"{name}_gap")(x)
        s = L.Reshape((1, 1, filters), name=f"{name}_reshape")(s)
    elif reshape is None:  # written with keras.ops
        s = keras.ops.expand_dims(keras.ops.mean(x, axis=(1, 2)), 1)
        s = keras.ops.expand_dims(s, 1)
    else:
        s = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    s = L.Conv2D(max(filters // 4, 2), 1, activation="relu", name=f"{name}_reduce")(s)
    if ops_gate:  # hard_sigmoid written with keras.ops, as in MobileNetV3
        s = L.Conv2D(filters, 1, name=f"{name}_expand")(s)
        s = L.ReLU(6.0, name=f"{name}_relu6")(s + 3.0) * (1.0 / 6.0)
    else:
        s = L.Conv2D(filters, 1, activation="sigmoid", name=f"{name}_expand")(s)
    return L.Multiply(name=f"{name}_mul")([x, s])


def se_toy():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.Activation("swish", name="stem_act")(h)
    h = se_block(h, 8, "se1", reshape=True)
    h = L.Conv2D(12, 1, name="expand")(h)
    h = se_block(h, 12, "se2", reshape=False, ops_gate=True)
    h = L.Conv2D(6, 1, name="expand2")(h)
    h = se_block(h, 6, "se3", reshape=None)
    y = L.Dense(3, name="fc")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y, name="se_toy")


def ops_toy():
    """Every keras.ops element-wise node the roles table knows, between two convs."""
    x = keras.Input((6, 6, 2))
    a = L.Conv2D(8, 3, padding="same", name="a")(x)
    h = a * keras.ops.relu6(a + 3.0) / 6.0  # hard_swish by hand
    h = keras.ops.hard_silu(h) - 0.5
    h = -keras.ops.hard_sigmoid(h) + keras.ops.sigmoid(h) * keras.ops.tanh(h)
    h = keras.ops.silu(h) + keras.ops.relu(h) + keras.activations.hard_sigmoid(h)
    h = keras.ops.maximum(h, 0.1) + keras.ops.leaky_relu(h)
    b = L.Conv2D(8, 1, name="b")(h)
    h = keras.ops.add(h, b)  # joining two tensors ties a and b
    h = keras.ops.multiply(h, keras.ops.sigmoid(L.Conv2D(1, 1, name="attn")(h)))  # broadcast
    y = L.Dense(2, name="fc")(L.Flatten()(L.Conv2D(4, 1, name="c")(h)))
    return keras.Model(x, y, name="ops_toy")


def separable_toy():
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, name="stem")(x)
    h = L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, activation="relu",
                          name="sep2d")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.SeparableConv2D(5, 3, use_bias=False, name="sep_nobias")(h)
    h = L.Reshape((36, 5), name="to_seq")(h)  # (6, 6, 5) -> (36, 5): keeps channels last
    h = L.SeparableConv1D(7, 3, padding="same", name="sep1d")(h)
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling1D()(h))
    return keras.Model(x, y, name="separable_toy")


#: Every element-wise Keras activation name (glu halves the channels, softmax, log_softmax
#: and sparsemax mix them).
ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "hard_silu", "silu", "tanh", "gelu",
               "elu", "selu", "softplus", "softsign", "leaky_relu", "mish", "log_sigmoid",
               "celu", "hard_tanh", "exponential", "linear", "hard_shrink", "soft_shrink",
               "sparse_plus", "sparse_sigmoid", "squareplus", "tanh_shrink")


#: Those TFLite Micro runs in int8.
TFLM_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "hard_silu", "silu", "tanh",
                    "leaky_relu", "linear")


def channelwise_toy(tflm=False):
    """Per-channel layers mid-network: Rescaling, Normalization, PReLU, LayerNormalization,
    padding, cropping, upsampling, and Activation layers. ``tflm``: only what TFLite Micro
    runs in int8 (the converter computes LayerNormalization, and this PReLU after a conv, in
    float: NEG has no int8 kernel)."""
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", name="stem")(x)
    h = L.Rescaling([0.5, 1.0, 2.0, -1.0, 0.25, 3.0], offset=0.1, name="rescale_pc")(h)
    h = L.Rescaling(0.5, offset=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], name="rescale_off")(h)
    h = L.Normalization(name="norm_adapted")(h)
    h = L.Normalization(mean=[0.1] * 6, variance=[2.0, 1.0, 0.5, 1.0, 3.0, 1.5],
                        name="norm_given")(h)
    h = L.PReLU(shared_axes=[1, 2], name="prelu_shared")(h)
    h = L.ZeroPadding2D(1, name="pad")(h)
    h = L.Cropping2D(((1, 0), (0, 1)), name="crop")(h)
    h = L.UpSampling2D(2, interpolation="bilinear", name="up")(h)
    h = L.Conv2D(5, 3, strides=2, name="mid")(h)
    if not tflm:
        h = L.PReLU(name="prelu_full")(h)
        h = L.LayerNormalization(name="ln")(h)
    for act in TFLM_ACTIVATIONS if tflm else ACTIVATIONS:
        h = L.Activation(act, name=f"act_{act}")(h)
        if not tflm and act in ("exponential", "tanh"):
            h = L.LayerNormalization(name=f"ln_{act}")(h)
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="post")(h)))
    return keras.Model(x, y, name="channelwise_toy")


# ----------------------------------------------------------------------------------- tests


def test_squeeze_excite_keeps_both_groups_searchable():
    model = randomize(se_toy())
    plan = analyze(model)
    assert frozen_defined(plan) == {"fc": frozen_defined(plan)["fc"]}
    groups = {tuple(g.defined_by) for g in plan.searchable_groups()}
    # the SE expand conv is tied to the main group it gates; the squeezed group is its own
    assert ("stem", "se1_expand") in groups and ("expand", "se2_expand") in groups
    assert ("se1_reduce",) in groups and ("se2_reduce",) in groups
    assert ("expand2", "se3_expand") in groups and ("se3_reduce",) in groups
    assert plan.layer("se1_reshape").role == "propagating"
    slim, _ = check_prepare_and_freeze(model)
    assert slim.get_layer("se1_reshape").target_shape[-1] == slim.get_layer("stem").filters


def test_keras_ops_nodes_are_element_wise_roles():
    model = randomize(ops_toy())
    plan = analyze(model)
    # the one-channel 'attn' map broadcasts over the channels of 'a' without joining them
    assert searchable_defined(plan) == ["a", "attn", "b", "c"]
    assert {tuple(g.defined_by) for g in plan.searchable_groups()} >= {("a", "b"), ("attn",)}
    ops = [i for i in plan.layers if i.class_name.startswith("keras.ops.")]
    assert ops and all(i.role != "opaque" for i in ops)
    assert {i.op for i in ops} >= {"scalar", "activation", "add", "multiply"}
    check_prepare_and_freeze(model)


def test_keras_ops_reasons_name_real_layers():
    x = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, name="add")(x)  # a layer whose name clashes with keras.ops' 'add'
    h = keras.ops.log(a + 2.0)  # log: not finite at every input -> opaque
    y = L.Dense(2, name="fc")(L.Flatten()(L.Conv2D(3, 1, name="post")(h)))
    plan = analyze(keras.Model(x, y))
    reason = frozen_defined(plan)["add"]
    assert "keras.ops 'Log'" in reason and "after layer 'add'" in reason
    assert plan.layer("add").class_name == "Conv2D"
    h = keras.ops.softmax(L.Conv2D(4, 1, name="pre")(x))
    y = L.Dense(2, name="fc")(L.Flatten()(L.Conv2D(3, 1, name="post")(h)))
    reason = frozen_defined(analyze(keras.Model(x, y)))["pre"]
    assert "'softmax' across channels" in reason and "feeding layer 'post'" in reason
    h = L.Conv2D(4, 1, name="pre")(x)
    y = L.Dense(2, name="fc")(L.Flatten()(L.Conv2D(3, 1, name="post")(1.0 / h)))
    assert "divides by a tensor" in frozen_defined(analyze(keras.Model(x, y)))["pre"]


def test_separable_convolutions_define_groups():
    model = randomize(separable_toy())
    plan = analyze(model)
    assert searchable_defined(plan) == ["sep1d", "sep2d", "sep_nobias", "stem"]
    slim, _ = check_prepare_and_freeze(model)
    kd_sep = kd.prepare(model).get_layer("sep2d")
    assert type(kd_sep) is kd.layers.MaskedSeparableConv2D
    assert slim.get_layer("sep2d").pointwise_kernel.shape[-2] == \
        2 * slim.get_layer("stem").filters


def test_channelwise_layers_propagate_and_slice():
    model = channelwise_toy()
    model.get_layer("norm_adapted").adapt(np.random.default_rng(1).normal(
        2.0, 3.0, (16, 8, 8, 6)).astype("float32"))
    model = randomize(model)
    plan = analyze(model)
    assert searchable_defined(plan) == ["mid", "post", "stem"]
    slim, _ = check_prepare_and_freeze(model, keep=0.6)
    n = slim.get_layer("stem").filters
    assert np.shape(slim.get_layer("rescale_pc").scale) == (n,)
    assert slim.get_layer("norm_adapted").mean.shape[-1] == n
    assert slim.get_layer("prelu_full").alpha.shape[-1] == slim.get_layer("mid").filters


@pytest.mark.parametrize("layer,reason", [
    (L.LayerNormalization(axis=(1, 2, 3), name="odd"), "not the channel axis"),
    (L.Activation("softmax", name="odd"), "'softmax' across channels"),
    (L.Activation("log_softmax", name="odd"), "'log_softmax' across channels"),
    (L.Reshape((6, 12, 2), name="odd"), "reshapes"),
])
def test_channel_mixing_layers_still_freeze(layer, reason):
    x = keras.Input((6, 6, 4))
    h = layer(L.Conv2D(4, 1, name="pre")(x))
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(3, 1, name="post")(h)))
    plan = analyze(keras.Model(x, y))
    assert reason in frozen_defined(plan)["pre"]


def test_masked_layernorm_uses_open_channels_only():
    x = keras.Input((5, 6))
    h = L.Conv1D(6, 1, name="a")(x)
    y = L.Dense(2, name="fc")(L.Flatten()(L.Conv1D(3, 1)(L.LayerNormalization(name="ln")(h))))
    search = kd.prepare(randomize(keras.Model(x, y)))
    search.get_layer("a").dnas_alpha.assign([1, 0.1, 1, 1, 0.1, 1])
    probe = keras.Model(search.inputs, [search.get_layer("a").output,
                                        search.get_layer("ln").output])
    a, z = (keras.ops.convert_to_numpy(t) for t in probe(toys.sample(search)))
    ln, kept = search.get_layer("ln"), [0, 2, 3, 5]
    open_a = a[..., kept]  # plain layer normalisation over the open channels
    mean, var = open_a.mean(-1, keepdims=True), open_a.var(-1, keepdims=True)
    expected = (open_a - mean) / np.sqrt(var + ln.epsilon) * ln.gamma.numpy()[kept] \
        + ln.beta.numpy()[kept]
    np.testing.assert_allclose(z[..., kept], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(z[..., [1, 4]], 0.0)


def test_costs_of_new_ops():
    from keras_dnas.costs import compute, latency

    g = {"taps": 9, "depth_multiplier": 2, "use_bias": True, "out_positions": 16}
    assert compute.params("separable", g, 4, 8) == 9 * 4 * 2 + 4 * 2 * 8 + 8
    assert compute.macs("separable", g, 4, 8) == (9 * 4 * 2 + 4 * 2 * 8) * 16
    assert compute.params("prelu", {"channel_params": 1}, 6, 6) == 6
    assert compute.params("layernorm", {"channel_params": 2}, 6, 6) == 12
    assert compute.params("scalar", {}, 6, 6) == 0 and compute.macs("activation", {}, 6, 6) == 0
    sep = latency.layer_cycles("separable", dict(g, output_shape=[4, 4, 8]), 4, 8, "stm32h743")
    dw = latency.layer_cycles("depthwise", dict(g, output_shape=[4, 4, 8]), 4, 8, "stm32h743")
    pw = latency.layer_cycles("conv", dict(g, taps=1, output_shape=[4, 4, 8]), 8, 8,
                              "stm32h743")
    assert sep == pytest.approx(dw + pw)
    assert latency.layer_cycles("scalar", {"out_positions": 4}, 8, 8, "stm32h743") > 0
    model = randomize(separable_toy())
    plan = analyze(model)
    from keras_dnas.costs.model import CostModel

    cm = CostModel(plan, "stm32h743")
    bn = model.get_layer("bn").count_params()  # folded into the conv: not counted
    assert cm.evaluate(cm.full_counts(), ["params"])["params"] == model.count_params() - bn


def tflm_toy():
    """One model with every new role TFLite Micro runs in int8 (one conversion for all)."""
    x = keras.Input((12, 12, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(x)
    h = h * keras.ops.relu6(h + 3.0) / 6.0  # hard_swish as in MobileNetV3
    h = se_block(h, 8, "se1", reshape=True)
    h = L.SeparableConv2D(10, 3, depth_multiplier=2, name="sep")(h)
    h = se_block(h, 10, "se2", reshape=False, ops_gate=True)
    h = L.Rescaling([0.5, 1.0, 2.0, -1.0, 0.25, 3.0, 1.0, 1.0, 0.5, 2.0], offset=0.1,
                    name="rescale_pc")(h)
    h = L.PReLU(shared_axes=[1, 2], name="prelu")(h)
    h = L.ZeroPadding2D(1, name="pad")(L.Activation("hard_silu", name="hswish")(h))
    h = L.UpSampling2D(2, interpolation="bilinear", name="up")(L.Cropping2D(1, name="crop")(h))
    h = keras.ops.add(h, L.Conv2D(10, 1, name="branch")(h))
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="post")(h)))
    return keras.Model(x, y, name="tflm_toy")


def test_frozen_model_with_every_new_role_converts_to_int8_tflite():
    model = randomize(tflm_toy())
    plan = analyze(model)
    assert searchable_defined(plan) == sorted(
        ["stem", "se1_reduce", "se1_expand", "sep", "se2_reduce", "se2_expand", "branch",
         "post"])
    slim, x = check_prepare_and_freeze(model, seed=1)
    assert len(kd.export.to_tflite(slim, representative_data=x)) > 1000


def test_mobilenet_v3_small_is_searchable():
    """Hard-swish / hard-sigmoid written with keras.ops, squeeze-excite with keepdims=True.
    (EfficientNetB0, MobileNetV2, DenseNet121: benchmarks/searchable_fraction.py.)"""
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                                classes=10, minimalistic=False)
    plan = analyze(model)
    searchable, total = searchable_fraction(plan)
    assert searchable >= 0.9 * total
    toys.randomize_bn(model)
    check_prepare_and_freeze(model)


def test_masked_separable_and_layernorm_reload_from_keras_file(tmp_path):
    x = keras.Input((6, 6, 3))
    h = L.SeparableConv2D(6, 3, padding="same", name="sep")(L.Conv2D(4, 1, name="stem")(x))
    h = L.LayerNormalization(name="ln")(h)
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(3, 1, name="post")(h)))
    search = kd.prepare(randomize(keras.Model(x, y)))
    toys.close_random_masks(search, seed=3)
    path = tmp_path / "search.keras"
    search.save(path)
    loaded = keras.models.load_model(path)
    xs = toys.sample(search)
    np.testing.assert_allclose(loaded(xs), search(xs), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(loaded.get_layer("sep").dnas_alpha.numpy(),
                                  search.get_layer("sep").dnas_alpha.numpy())
