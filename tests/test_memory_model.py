"""MemoryModel (conversion-anchored flash / arena model) against the converted frozen model.

For every toy and the cheap zoo models: random masks are closed in the searchable model, the
frozen model is converted to full int8 and measured in TFLite Micro (the `tflite_micro` host
interpreter, 64-bit pointers), and every number of `MemoryModel`, `CostModel` and `kd.summary`
is checked against that measurement. Each model costs two conversions (the full-width structure
for the memory model, the frozen model); they are shared by all tests of the module.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras

import keras_dnas as kd
from keras_dnas import targets
from keras_dnas.costs import arena
from keras_dnas.costs import model as cost_model
from keras_dnas.graph import counts as counts_lib
from keras_dnas._flatbuffer import read_tflite
from keras_dnas.memory import MemoryModel
from keras_dnas.freeze import rebuild_with
from tests import toys

# Cost tests: the frozen models' BatchNormalization statistics do not matter here.
pytestmark = pytest.mark.filterwarnings("ignore:keras_dnas.freeze. closing channels:UserWarning")

ZOO = {"ds_cnn": kd.zoo.ds_cnn, "tcn": kd.zoo.tcn, "resnet8": kd.zoo.resnet8}
BUILDERS = {**toys.TOYS, **ZOO}
NAMES = list(BUILDERS)
HOST = 8  # pointer bytes of the tflite_micro host interpreter


def non_zero(model, seed=0):
    """Every weight non-zero (the converter drops an all-zero bias), valid BN statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if w.name == kd.masks.ALPHA_NAME:
                continue
            if w.name in ("gamma", "moving_variance"):
                value = rng.uniform(0.5, 1.5, w.shape)
            else:
                value = rng.normal(0.0, 0.3, w.shape)
            w.assign(value.astype("float32"))


@functools.lru_cache(maxsize=None)
def case(name):
    """Searchable model with random masks closed, its memory model and the measured frozen model."""
    keras.utils.set_random_seed(0)
    searchable = kd.prepare(BUILDERS[name]())
    non_zero(searchable)
    toys.close_random_masks(searchable, seed=1, keep=0.5)
    memory = MemoryModel.from_model(searchable, pointer_bytes=HOST)
    counts = counts_lib.hard_counts(searchable, memory.plan)
    frozen = kd.freeze(searchable)
    rep = np.random.default_rng(0).normal(size=(8,) + tuple(frozen.inputs[0].shape[1:]))
    tflite = kd.export.to_tflite(frozen, representative_data=rep.astype("float32"))
    return dict(searchable=searchable, memory=memory, counts=counts, frozen=frozen,
                tflite=tflite, measured=kd.export.measure(tflite))


def flash_ok(predicted, actual):
    return abs(predicted - actual) <= max(0.02 * actual, 200)


@pytest.mark.parametrize("name", NAMES)
def test_masks_prune_something(name):
    c = case(name)
    full = [g.size for g in c["memory"].plan.groups]
    assert c["counts"] != full and len(c["tflite"]) < len(c["memory"].full_bytes)


@pytest.mark.parametrize("name", NAMES)
def test_scaled_model_is_the_frozen_conversion(name):
    """Every tensor of the rescaled decoded model has the shape and the number of
    quantisation scales of the same tensor in the real conversion of the frozen model."""
    c = case(name)
    scaled = c["memory"].scaled_model(c["counts"])
    real = read_tflite(c["tflite"])
    assert [op.name for op in scaled.operators] == [op.name for op in real.operators]
    got = sorted((t.name, tuple(t.shape), t.n_scales) for t in scaled.tensors)
    want = sorted((t.name, tuple(t.shape), t.n_scales) for t in real.tensors)
    assert got == want


@pytest.mark.parametrize("name", NAMES)
def test_head_equals_tflm(name):
    c = case(name)
    assert c["memory"].ram_parts(c["counts"])["head"] == c["measured"]["arena_head_bytes"]


@pytest.mark.parametrize("name", NAMES)
def test_host_tail_within_5_percent(name):
    c = case(name)
    tail = c["memory"].ram_parts(c["counts"])["tail"]
    measured = c["measured"]["host_arena_tail_bytes"]
    assert abs(tail - measured) <= 0.05 * measured, (tail, measured)


@pytest.mark.parametrize("name", NAMES)
def test_flash_within_2_percent_or_200_bytes(name):
    c = case(name)
    assert flash_ok(c["memory"].flash(c["counts"]), len(c["tflite"]))


@pytest.mark.parametrize("name", NAMES)
def test_cost_model_equals_exact_value_of_frozen_model(name):
    """CostModel at the hard counts of the searchable model = the frozen model's exact values:
    RAM is the planner / tail replay on the real frozen .tflite (both pointer sizes), params,
    MACs and latency are those of the frozen model's own plan at full width."""
    c = case(name)
    plan = c["memory"].plan
    for pointer in (4, 8):
        memory = MemoryModel.from_model(c["searchable"], pointer_bytes=pointer)  # cached
        cm = cost_model.CostModel(plan, "stm32h743", memory=memory)
        got = cm.evaluate(c["counts"])
        assert got["ram_bytes"] == arena.tflite_arena(c["tflite"], pointer_bytes=pointer)["total"]
        assert flash_ok(got["flash_bytes"], len(c["tflite"]))
    frozen_plan = kd.graph.analyze(c["frozen"])
    frozen_cm = cost_model.CostModel(frozen_plan, "stm32h743")
    want = frozen_cm.evaluate(frozen_cm.full_counts())
    for metric in ("params", "macs", "latency_cycles", "latency_ms", "energy_uj"):
        assert float(got[metric]) == pytest.approx(float(want[metric]), rel=1e-6), metric


@pytest.mark.parametrize("name", NAMES)
def test_soft_values_bound_and_match_exact(name):
    """Soft RAM (liveness bound of the head + tail) is a lower bound of the exact RAM; its tail
    part and the flash are exact at integer counts, also when evaluated on tensors."""
    c = case(name)
    memory, counts = c["memory"], c["counts"]
    exact = memory.ram_parts(counts)
    assert memory.tail(counts) == exact["tail"]
    assert memory.head_bound(counts) <= exact["head"]
    assert memory.ram(counts, exact=False) <= exact["total"]
    as_tensors = [keras.ops.convert_to_tensor(float(n)) for n in counts]
    assert float(memory.ram(as_tensors, exact=False)) == memory.ram(counts, exact=False)
    assert float(memory.flash(as_tensors)) == memory.flash(counts)


@pytest.mark.parametrize("name", NAMES)
def test_soft_costs_have_gradients_for_the_masks(name):
    c = case(name)
    model, memory = c["searchable"], c["memory"]
    variables = kd.masks.mask_variables(model)
    with tf.GradientTape(persistent=True) as tape:
        counts = counts_lib.soft_counts(model, memory.plan)
        ram = memory.ram(counts, exact=False)
        flash = memory.flash(counts)
    # Forward values are the hard ones.
    assert float(ram) == memory.ram(c["counts"], exact=False)
    assert float(flash) == memory.flash(c["counts"])
    ram_grads = tape.gradient(ram, variables)
    flash_grads = tape.gradient(flash, variables)
    # RAM is a peak: only the groups live at the peak get a gradient, at least one does.
    assert any(g is not None and np.any(g.numpy() != 0) for g in ram_grads)
    # Every searchable group has weights in flash.
    assert all(g is not None and np.all(g.numpy() != 0) for g in flash_grads)


@pytest.mark.parametrize("name", NAMES)
def test_summary_matches_measure(name):
    c = case(name)
    host = targets.get("stm32h743").replace(name="host64", pointer_bytes=HOST)
    s = kd.summary(c["searchable"], host)
    m = c["measured"]
    for key in ("flash_bytes", "ram_bytes", "arena_head_bytes", "arena_tail_bytes",
                "latency_ms", "macs", "params"):
        assert key in s, key
    assert s["arena_head_bytes"] == m["arena_head_bytes"]
    host_tail = m["host_arena_tail_bytes"]  # measure's arena_* are the 32-bit target's
    assert abs(s["arena_tail_bytes"] - host_tail) <= 0.05 * host_tail
    assert s["ram_bytes"] == s["arena_head_bytes"] + s["arena_tail_bytes"]
    assert flash_ok(s["flash_bytes"], m["flash_bytes"])
    # The frozen model reports the same compute costs (no conversion: memory=None).
    f = kd.summary(c["frozen"], host, memory=None)
    assert (s["macs"], s["params"]) == (f["macs"], f["params"])
    assert s["latency_ms"] == pytest.approx(f["latency_ms"], rel=1e-9)
    # On the default 32-bit target the head is the same, the tail is smaller (4-byte pointers).
    s32 = kd.summary(c["searchable"], "stm32h743")
    assert s32["arena_head_bytes"] == m["arena_head_bytes"]
    assert s32["arena_tail_bytes"] < s["arena_tail_bytes"]


def test_conversions_are_shared_across_pointer_sizes():
    c = case("plain_cnn")
    m4 = MemoryModel.from_model(c["searchable"], pointer_bytes=4)
    assert m4 is MemoryModel.from_model(c["searchable"], target="stm32h743")
    assert m4.full_bytes is c["memory"].full_bytes


# ----------------------------------------------------------------------------------------------
# One conversion, any graph (issue 13): widths 1 and 2, equal small widths, causal Conv1D, many
# groups. The search-time model at the widths of a random frozen model is checked against the
# real conversion of that frozen model (TFLite Micro arena head exactly, flash within a few
# bytes), and kd.summary of the frozen model against its own conversion (exactly).
# ----------------------------------------------------------------------------------------------


def two_channel_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(2, 3, activation="relu"),
        keras.layers.Conv2D(32, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])


def three_equal_convs():
    return keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 3),
        keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])


def causal_pair():
    return keras.Sequential([
        keras.Input((32, 3)), keras.layers.Conv1D(8, 3, padding="causal"),
        keras.layers.Conv1D(8, 3, padding="causal", dilation_rate=2),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4)])


def causal_tcn():
    return kd.zoo.tcn(input_shape=(32, 6), filters=(8, 8, 16), dilations=(1, 2, 4),
                      padding="causal")


def many_groups(depth=100):
    """A chain of linear 3x3 convolutions of random widths 1..5 (one group each).

    Converter sharing that the weights decide, not the widths, is avoided: 1x1 kernels on one
    input channel quantise to +-127 per channel, and a one-channel ReLU that is dead on the
    calibration data saturates the next int32 bias; equal constants are stored once.
    """
    rng = np.random.default_rng(3)
    layers = [keras.Input((4, 4, 2))]
    layers += [keras.layers.Conv2D(int(w), 3, padding="same")
               for w in rng.integers(1, 6, depth)]
    layers += [keras.layers.Flatten(), keras.layers.Dense(3)]
    return keras.Sequential(layers, name="many_groups")


#: Flash the one conversion cannot see: tensor names of another length (the converter names a
#: tensor after the ops it fused), the size of a new shape constant; and at one channel the
#: converter emits other ops (Add/Reshape for BiasAdd/Squeeze: shorter names) and quantisation
#: fields, a few bytes per one-channel group (measured: 172 B for 52 such groups).
FLASH_BYTES_SLACK = 64
FLASH_BYTES_PER_ONE_CHANNEL_GROUP = 8
ANY_GRAPH = {"two_channel_cnn": two_channel_cnn, "three_equal_convs": three_equal_convs,
             "causal_pair": causal_pair, "causal_tcn": causal_tcn, "many_groups": many_groups}


def converted(model):
    rep = np.random.default_rng(0).normal(size=(8,) + tuple(model.inputs[0].shape[1:]))
    return kd.export.to_tflite(model, representative_data=rep.astype("float32"))


@functools.lru_cache(maxsize=None)
def any_graph_case(name, seed=1):
    keras.utils.set_random_seed(0)
    searchable = kd.prepare(ANY_GRAPH[name]())
    non_zero(searchable)
    toys.close_random_masks(searchable, seed=seed, keep=0.5)
    memory = MemoryModel.from_model(searchable, pointer_bytes=HOST)
    counts = counts_lib.hard_counts(searchable, memory.plan)
    frozen = kd.freeze(searchable)
    tflite = converted(frozen)
    return dict(searchable=searchable, memory=memory, counts=counts, frozen=frozen,
                tflite=tflite, measured=kd.export.measure(tflite))


@pytest.mark.parametrize("name", list(ANY_GRAPH))
def test_one_conversion_matches_frozen_model(name):
    c = any_graph_case(name)
    memory, counts = c["memory"], c["counts"]
    assert memory.unattributed == []
    searchable_counts = [n for n, g in zip(counts, memory.plan.groups) if not g.frozen]
    full = [g.size for g in memory.plan.groups if not g.frozen]
    assert searchable_counts != full  # the masks pruned something
    assert memory.ram_parts(counts)["head"] == c["measured"]["arena_head_bytes"]
    ones = sum(1 for n, g in zip(counts, memory.plan.groups) if n == 1 and not g.frozen)
    slack = FLASH_BYTES_SLACK + FLASH_BYTES_PER_ONE_CHANNEL_GROUP * ones
    assert abs(memory.flash(counts) - len(c["tflite"])) <= slack, \
        (memory.flash(counts), len(c["tflite"]), ones)


@pytest.mark.parametrize("name", list(ANY_GRAPH))
def test_summary_of_frozen_model_is_its_own_conversion(name):
    c = any_graph_case(name)
    s = kd.summary(c["frozen"], targets.get("stm32h743").replace(name="host64", pointer_bytes=HOST))
    assert s["flash_bytes"] == len(c["tflite"])
    assert s["arena_head_bytes"] == c["measured"]["arena_head_bytes"]


def test_two_channel_groups_summarise():
    """Issue 13 case 1: the seed model summarises (flash = its conversion) and the search-time
    model holds at one and at two channels of the two-channel group."""
    model = two_channel_cnn()
    non_zero(model)
    s = kd.summary(model, "stm32h743")
    assert s["flash_bytes"] == len(converted(model))
    c = any_graph_case("two_channel_cnn")
    memory = c["memory"]
    group = next(g for g in memory.plan.groups if g.size == 2)
    for width in (1, 2):
        keep = [np.arange(g.size) < (width if g.id == group.id else g.size)
                for g in memory.plan.groups]
        counts = [int(k.sum()) for k in keep]
        tflite = converted(rebuild_with(c["searchable"], memory.plan, keep))
        assert abs(memory.flash(counts) - len(tflite)) <= FLASH_BYTES_SLACK
        assert memory.ram_parts(counts)["head"] == kd.export.measure(tflite)["arena_head_bytes"]


def test_many_groups_flash_is_len_tflite():
    """Issue 13 case 4: a plain model with a hundred groups: flash and arena are those of its
    own conversion, to the byte."""
    model = many_groups()
    non_zero(model)
    tflite = converted(model)
    s = kd.summary(model, targets.get("stm32h743").replace(name="host64", pointer_bytes=HOST))
    assert len(kd.graph.analyze(model).groups) > 100
    assert s["flash_bytes"] == len(tflite)
    assert s["arena_head_bytes"] == kd.export.measure(tflite)["arena_head_bytes"]


def test_freeze_certifies_ram_on_the_frozen_models_conversion():
    """With a flash budget freeze converts the frozen model; a RAM budget is certified on that
    same file (TFLite Micro's planner replayed on it), even if the search-time model is
    optimistic."""
    search = kd.prepare(toys.randomize_bn(toys.plain_cnn()))
    non_zero(search)
    memory = MemoryModel.from_model(search, search.dnas_plan, target="stm32h743")
    honest = memory.ram
    memory.ram = lambda counts, exact=True: honest(counts, exact) - 64  # 64 B too low
    full = kd.freeze(search)
    x = toys.sample(search, n=8)
    blob = kd.export.to_tflite(full, representative_data=x)
    budgets = {"flash_bytes": 2 * len(blob),
               "ram_bytes": 0.75 * arena.tflite_arena(blob, 4)["total"]}
    slim = kd.freeze(search, target="stm32h743", budgets=budgets, memory=memory, verbose=0)
    cert = slim.dnas_certificate
    assert cert["ram_source"].startswith("TFLite Micro planner replay")
    real = arena.tflite_arena(kd.export.to_tflite(slim, representative_data=x), 4)["total"]
    row = next(r for r in cert["budgets"] if r["metric"] == "ram_bytes")
    assert row["value"] == real and real <= budgets["ram_bytes"] and cert["all_hold"]


def test_generic_weights_keep_every_bias_of_a_deep_network():
    """Issue 13 case 4: in a deep network with random kernels of unscaled size, activations grow
    layer after layer, deep int32 biases quantise to zero and the converter stores those once
    (EfficientNetB0 flash was 1.55 % low). The conversion copy's kernels are fan-in scaled:
    every bias of the converted copy is non-zero."""
    from keras_dnas.memory import _generic_weights
    from keras_dnas._flatbuffer import read_constant

    layers = [keras.Input((6, 6, 8))]
    for _ in range(12):
        layers += [keras.layers.Conv2D(48, 3, padding="same"), keras.layers.BatchNormalization()]
    model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D(),
                                       keras.layers.Dense(4)])
    _generic_weights(model)
    blob = converted(model)
    m = read_tflite(blob)
    biases = [t for t in m.tensors if m.is_constant(t.index) and t.dtype == "INT32"
              and len(t.shape) == 1 and t.shape[0] in (48, 4)]
    assert len(biases) == 13
    assert all(np.any(read_constant(blob, t.index) != 0) for t in biases)



def _two_layer_net(kind):
    """Input (21, 4) -> "a" (4 channels) -> "b" (3) -> global pooling -> Dense(2)."""
    layers = keras.layers
    x = keras.Input((21, 4))
    if kind == "conv":
        h = layers.Conv1D(3, 1, name="b")(layers.Conv1D(4, 1, name="a")(x))
    else:  # "a" without a bias, then a separable conv whose depthwise part has none either
        h = layers.SeparableConv1D(3, 1, name="b")(
            layers.Conv1D(4, 1, use_bias=False, name="a")(x))
    return keras.Model(x, layers.Dense(2)(layers.GlobalAveragePooling1D()(h)))


@pytest.mark.parametrize("kind, alphas", [
    # Two weight scales of 3 -> 2 channels flip the padding of a zero-point vector (was +8 B).
    ("conv", {"a": [1, 1, 0, 0], "b": [1, 1, 0]}),
    # The two all-zero biases (of "a" and of the depthwise part of "b") share one buffer, each
    # with its own per-channel scales and zero points (was +28 B: one tensor's not rescaled).
    ("shared_bias", {"a": [1, 1, 0, 0]}),
])
def test_flash_exact_when_frozen_has_the_rescaled_tensors(kind, alphas):
    """Random-graph fuzzer class d ("same tensors and shapes"): the frozen conversion has exactly
    the rescaled full-width tensors, so the search-time flash must be ``len`` of it. Each int64
    zero-point vector is 8-byte aligned from the end of the file, so its 0 or 4 padding bytes
    flip with the sizes written before it; the model replays them. Exact at integer counts, and
    as the forward value of tensor counts."""
    keras.utils.set_random_seed(0)
    model = _two_layer_net(kind)
    non_zero(model)
    search = kd.prepare(model)
    for name, alpha in alphas.items():
        search.get_layer(name).dnas_alpha.assign(np.asarray(alpha, "float32"))
    memory = MemoryModel.from_model(search, pointer_bytes=4)
    counts = counts_lib.hard_counts(search, memory.plan)
    frozen = kd.freeze(search, verbose=0)
    rep = np.random.default_rng(1).normal(size=(8, 21, 4)).astype("float32")
    tflite = kd.export.to_tflite(frozen, representative_data=rep)
    real = read_tflite(tflite)
    scaled = memory.scaled_model(counts)
    # The premise: the same tensors with the same shapes (only the serialisation can differ).
    assert sorted((t.name, tuple(t.shape), t.n_scales) for t in real.tensors) == \
        sorted((t.name, tuple(t.shape), t.n_scales) for t in scaled.tensors)
    assert memory.flash(counts) == len(tflite)
    as_tensors = [keras.ops.convert_to_tensor(float(n)) for n in counts]
    assert float(memory.flash(as_tensors)) == len(tflite)


def test_equal_biases_of_a_projection_shortcut_stay_equal_in_the_conversion_copy():
    """Two biased convs into one Add (a projection shortcut, ResNetV2) get the same gradients
    from Keras' zero biases, so a trained model has them equal; the converter stores equal
    float constants once and names the int8 biases quantised from it `arith.constant`. The
    conversion copy drew them apart and its file was longer by their names (ResNet50V2: the
    search's seed flash 1,344 B above len(.tflite)). At full width and with channels closed
    (the Add ties both convs' outputs, so the kept biases stay equal), flash is len(.tflite)."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    rng = np.random.default_rng(0)
    x = keras.Input((8, 8, 4))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    h = layers.Add()([layers.Conv2D(12, 1, name="proj")(h),
                      layers.Conv2D(12, 3, padding="same", name="conv")(h)])
    model = keras.Model(x, layers.Dense(3)(layers.GlobalAveragePooling2D()(layers.ReLU()(h))))
    data = rng.normal(size=(32, 8, 8, 4)).astype("float32")
    model.compile("adam", "mse")
    model.fit(data, rng.normal(size=(32, 3)), epochs=1, batch_size=8, verbose=0)
    bias = model.get_layer("proj").bias.numpy()
    assert bias.any() and np.array_equal(bias, model.get_layer("conv").bias.numpy())
    rep = data[:8]
    search = kd.prepare(model)
    memory = MemoryModel.from_model(search, pointer_bytes=4)
    assert memory.flash([g.size for g in memory.plan.groups]) == len(
        kd.export.to_tflite(model, representative_data=rep))
    group = next(i for i, g in enumerate(memory.plan.groups) if g.size == 12)
    for name in ("proj", "conv"):
        if hasattr(search.get_layer(name), "dnas_alpha"):
            search.get_layer(name).dnas_alpha.assign(np.where(np.arange(12) < 7, 1.0, 0.0)
                                                     .astype("float32"))
    counts = counts_lib.hard_counts(search, memory.plan)
    assert counts[group] == 7
    frozen = kd.freeze(search, budgets={}, fill=False, verbose=0)
    assert memory.flash(counts) == len(kd.export.to_tflite(frozen, representative_data=rep))


def test_tail_counts_the_shape_constants_of_the_frozen_widths():
    """Equal causal Conv1D widths share one RESHAPE shape constant at full width; at other
    widths the converter stores one per distinct value, one more tensor each, and TFLite Micro's
    tail holds a TfLiteEvalTensor per tensor (fuzzer seed 256: the tail was 16 B short)."""
    c = any_graph_case("causal_tcn")
    memory, counts = c["memory"], c["counts"]
    real = read_tflite(c["tflite"])
    assert len(memory.scaled_model(counts).tensors) == len(real.tensors)
    assert len(memory.full.tensors) != len(real.tensors)  # the premise: the count changed
    assert memory.ram_parts(counts)["tail"] == arena.tflite_arena(real, pointer_bytes=HOST)["tail"]


def _conv_then_separable(kind):
    """Conv "a" (8 channels) -> separable "b" (8 -> 8 at full width) -> pooling -> Dense."""
    layers = keras.layers
    if kind == "2d":
        x = keras.Input((9, 9, 3))
        h = layers.SeparableConv2D(8, 3, name="b")(layers.Conv2D(8, 3, name="a")(x))
        h = layers.GlobalAveragePooling2D()(h)
    else:
        x = keras.Input((24, 3))
        h = layers.SeparableConv1D(8, 3, name="b")(layers.Conv1D(8, 3, name="a")(x))
        h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, layers.Dense(3)(h))


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_depthwise_half_of_a_separable_conv_follows_its_input(kind):
    """The depthwise operator of a SeparableConv has its input's channels, not the layer's
    output group, even when both are 8 wide at full width (fuzzer seeds 50 and 80: the rescaled
    depthwise kernel had the pointwise width; flash +176 B, arena head +320 B)."""
    keras.utils.set_random_seed(0)
    search = kd.prepare(_conv_then_separable(kind))
    non_zero(search)
    search.get_layer("a").dnas_alpha.assign(np.array([1, 1, 0, 0, 0, 0, 0, 0], "float32"))
    search.get_layer("b").dnas_alpha.assign(np.array([1, 1, 1, 1, 1, 1, 0, 0], "float32"))
    memory = MemoryModel.from_model(search, pointer_bytes=HOST)
    counts = counts_lib.hard_counts(search, memory.plan)
    scaled = memory.scaled_model(counts)
    depthwise = [op for op in scaled.operators if op.name == "DEPTHWISE_CONV_2D"]
    assert [scaled.tensors[op.outputs[0]].shape[-1] for op in depthwise] == [2]
    assert scaled.tensors[depthwise[0].inputs[1]].shape[-1] == 2  # the kernel
    tflite = converted(kd.freeze(search, verbose=0))
    assert memory.ram_parts(counts)["head"] == kd.export.arena_usage(tflite)["arena_head_bytes"]
    assert memory.flash(counts) == len(tflite)


def test_zero_biases_are_stored_once_per_width():
    """DenseNet-style BN-ReLU-Conv blocks with concatenations: every conv is bias-less and its
    BN cannot fold into it, so the converter gives it an all-zero int32 bias, stored once per
    distinct size. At full width (six convs of 6) that is one buffer; at widths 5, 4, 3, 5, 2,
    4 four. Modelled: was 104 B short (fz.randomize weights); 24-32 B left on two weight draws:
    the names of the two zero biases used by one layer each (the converter names them after the
    layer, 12 B longer than 'arith.constantN'), and up to 8 B of zero-point padding."""
    layers = keras.layers
    x = keras.Input((8, 8, 3))
    h = x
    for i in range(6):
        y = layers.Conv2D(6, 3, padding="same", use_bias=False, name=f"c{i}")(
            layers.ReLU()(layers.BatchNormalization()(h)))
        h = layers.Concatenate()([h, y])
    model = keras.Model(x, layers.Dense(3)(layers.GlobalAveragePooling2D()(h)))
    keras.utils.set_random_seed(0)
    non_zero(model)
    search = kd.prepare(model)
    for i, k in enumerate([5, 4, 3, 5, 2, 4]):
        search.get_layer(f"c{i}").dnas_alpha.assign(np.where(np.arange(6) < k, 1.0, 0.2)
                                                    .astype("float32"))
    memory = MemoryModel.from_model(search, pointer_bytes=HOST)
    full = [g.size for g in memory.plan.groups]
    assert memory.flash(full) == len(memory.full_bytes)
    counts = counts_lib.hard_counts(search, memory.plan)
    tflite = converted(kd.freeze(search, verbose=0))
    assert abs(memory.flash(counts) - len(tflite)) <= 32, (memory.flash(counts), len(tflite))
    as_tensors = [keras.ops.convert_to_tensor(float(n)) for n in counts]
    assert float(memory.flash(as_tensors)) == memory.flash(counts)


def test_summary_flash_is_the_file_converted_with_the_same_calibration_data():
    """Fuzzer seed 78 (check c, +16 B): an int8 file's constants can depend on the calibration
    data. Dense d2 (1 -> 1) reads a (nearly) constant input on one data set: its int32 bias
    saturates, the converter rescales its kernel, and d2's and d3's 1-element kernels (both
    +127 otherwise) are no longer one shared buffer. `kd.summary(..., representative_data=)`
    converts with the data the shipped file is converted with, so it is `len` of that file."""
    layers = keras.layers
    x = keras.Input((3,))
    h = layers.Dense(1, name="d1")(x)
    h = layers.Dense(1, activation="relu", name="d2")(h)
    model = keras.Model(x, layers.Dense(1, name="d3")(h))
    weights = {"d1": ([[0.5], [0.25], [0.75]], [0.0]), "d2": ([[0.8]], [0.5]),
               "d3": ([[0.6]], [0.3])}
    for name, (kernel, bias) in weights.items():
        model.get_layer(name).set_weights([np.array(kernel, "float32"),
                                           np.array(bias, "float32")])
    rng = np.random.default_rng(0)
    flat = (1e-7 * rng.normal(size=(8, 3))).astype("float32")  # d2's input scale ~1e-9
    varied = rng.normal(size=(8, 3)).astype("float32")
    sizes = {}
    for name, data in (("flat", flat), ("varied", varied)):
        sizes[name] = len(kd.export.to_tflite(model, representative_data=data))
        s = kd.summary(model, "stm32h743", representative_data=data)
        assert s["flash_bytes"] == sizes[name], (name, s["flash_bytes"], sizes[name])
    assert sizes["flat"] > sizes["varied"]  # the phenomenon this guards against is real
    # batches are read once by the one data reader (keras_dnas._data): the same file's flash
    batches = iter([varied[:5], varied[5:]])
    assert kd.summary(model, "stm32h743", representative_data=batches)["flash_bytes"] == \
        sizes["varied"]
    with pytest.raises(ValueError, match="representative_data must be an array of input"):
        kd.summary(model, "stm32h743", representative_data=object())


def test_buffer_under_the_shared_vtable_is_padded_from_its_two_byte_offset():
    """Fuzzer seed 911 (check d, +8 B with the same tensors and shapes): buffer data is padded
    to the 4-byte grid of the object above it, and for one buffer that object is the Buffer
    tables' shared 6-byte vtable, 2 bytes off the grid. Here that buffer is the classifier's
    kernel (2 x 12 = 24 B + 2 B padding at full width; 14 B or 18 B without padding at widths 7
    and 9, where align4 would say 16 and 20), and the 4 bytes move the file's front padding:
    the search-time flash was 8 B over `len(.tflite)` of the frozen model."""
    layers = keras.layers
    x = keras.Input((3, 3, 1))
    h = layers.Conv2D(12, 3, name="c")(x)
    model = keras.Model(x, layers.Dense(2, name="head")(layers.Flatten()(h)))
    non_zero(model)
    search = kd.prepare(model)
    memory = MemoryModel.from_model(search, pointer_bytes=HOST)
    assert list(memory._padding.data_skew.values()) == [2]  # the case this test is about
    for kept in (7, 9):
        search.get_layer("c").dnas_alpha.assign(
            np.where(np.arange(12) < kept, 1.0, 0.2).astype("float32"))
        counts = counts_lib.hard_counts(search, memory.plan)
        assert memory.flash(counts) == len(converted(kd.freeze(search, verbose=0))), kept


def test_weight_operator_kinds_are_the_plans_ops():
    """Among layers of the right width the memory model prefers one whose plan op
    (``LayerInfo.op``, from graph/roles.py) may give the TFLite weight operator
    (``memory._KINDS``). A kind no role produces silently loses that preference: fuzzer seed
    643 (``"separable_conv"`` where the plan says ``"separable"``: a SeparableConv2D's pointwise
    CONV_2D went to a later Conv2D of the same width, +336 B). Every kind is a plan op, and in a
    converted model with every weighted layer type each weight operator's own layer has an op
    its kinds list (a Conv2DTranspose: op "transpose_conv")."""
    from keras_dnas import memory
    from keras_dnas.graph import analyze, roles

    plan_ops = {op for _, op, _ in roles.ROLES.values()} | {"other"}
    assert set(memory._KINDS) == set(memory._WEIGHT_OPS)
    for name, kinds in memory._KINDS.items():
        assert set(kinds) <= plan_ops, (name, sorted(set(kinds) - plan_ops))
    layers = keras.layers
    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(4, 3, name="conv")(x)
    h = layers.DepthwiseConv2D(3, name="dw")(h)
    h = layers.SeparableConv2D(5, 2, name="sep")(h)
    h = layers.Conv2DTranspose(3, 2, name="up")(h)
    model = keras.Model(x, layers.Dense(3, name="head")(layers.GlobalAveragePooling2D()(h)))
    non_zero(model)
    plan = analyze(model)
    tflite = read_tflite(converted(model))
    seen = set()
    for op in tflite.operators:
        if op.name not in memory._WEIGHT_OPS:
            continue
        _, weight, _, _ = memory._WEIGHT_OPS[op.name]
        parts = memory._name_parts(tflite.tensors[op.outputs[0]].name) + \
            memory._name_parts(tflite.tensors[op.inputs[weight]].name)
        layer = max(plan.layers, key=lambda info: memory._name_score(parts, info.name))
        assert memory._name_score(parts, layer.name) > 0, parts
        assert layer.op in memory._KINDS[op.name], (op.name, layer.name, layer.op)
        seen.add((op.name, layer.name))
    assert seen == {("CONV_2D", "conv"), ("DEPTHWISE_CONV_2D", "dw"),
                    ("DEPTHWISE_CONV_2D", "sep"), ("CONV_2D", "sep"),
                    ("TRANSPOSE_CONV", "up"), ("FULLY_CONNECTED", "head")}, seen


def test_embedding_output_keeps_its_width_beside_a_searchable_group_of_that_size():
    # The Embedding's GATHER output (16 channels, frozen) has no channel operator; it took the
    # only searchable group of size 16 (the Dense after the conv), so the conv kernel's input
    # axis shrank with that Dense: 1,176 B of flash under the real file at freeze, which
    # then closed channels against a wrong budget and raised "cannot hold".
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((40,), dtype="int32"), L.Embedding(1000, 16), L.Conv1D(32, 3),
        L.GlobalAveragePooling1D(), L.Dense(16, activation="relu"), L.Dense(2)])
    searchable = kd.prepare(model)
    memory = MemoryModel.from_model(searchable, pointer_bytes=HOST)
    keep = [40, 16, 28, 2, 2]
    assert [g.size for g in memory.plan.groups] == [40, 16, 32, 16, 2]
    plain = keras.Sequential([
        keras.Input((40,), dtype="int32"), L.Embedding(1000, 16), L.Conv1D(28, 3),
        L.GlobalAveragePooling1D(), L.Dense(2, activation="relu"), L.Dense(2)])
    non_zero(plain)
    tflite = kd.export.to_tflite(plain, representative_data=rng.integers(0, 1000, (8, 40)))
    # within the tensor names' lengths (another model name); it was 1,264 B under
    assert abs(memory.flash(keep) - len(tflite)) <= 100
