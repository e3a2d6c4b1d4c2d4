"""PIT's time axis: tap masks (dnas_beta / dnas_gamma), their costs, freeze and search."""

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.memory import MemoryModel
from keras_dnas.costs.model import CostModel, to_python
from keras_dnas.graph.counts import hard_counts, soft_counts
from keras_dnas.layers import taps

L = keras.layers
TIME = ("channels", "receptive_field", "dilation")


# ----------------------------------------------------------------------------- masks


def test_tap_gate_closes_contiguously_and_on_the_dilation_grid():
    k = 9
    # receptive field: every beta pattern keeps a contiguous run of the newest taps
    rng = np.random.default_rng(0)
    for _ in range(50):
        beta = rng.uniform(-0.4, 0.4, k).astype("float32")
        keep = taps.hard_tap_gate(beta, None, k)
        assert keep[0]
        assert not np.any(keep[1:] & ~keep[:-1]), keep  # no open tap older than a closed one
        np.testing.assert_array_equal(np.asarray(taps.tap_gate(beta, None, k)), keep)
    # dilation: closing the first level keeps the even ages, the first two the multiples of 4
    assert taps.hard_tap_gate(None, [0.2, 1.0, 1.0, 1.0], k).tolist() == \
        [a % 2 == 0 for a in range(k)]
    assert taps.hard_tap_gate(None, [0.1, 0.1, 1.0, 1.0], k).tolist() == \
        [a % 4 == 0 for a in range(k)]
    # the newest tap survives everything
    assert taps.hard_tap_gate([0.0] * k, [0.0] * 4, k).tolist() == [True] + [False] * 8


def test_tap_count_gradient_is_straight_through():
    import tensorflow as tf

    beta = tf.Variable(np.array([1, 1, 1, 0.3, 0.1], "float32"))
    gamma = tf.Variable(np.ones(3, "float32"))
    with tf.GradientTape() as tape:
        n = keras.ops.sum(taps.tap_gate(beta, gamma, 5))
    g_beta, g_gamma = tape.gradient(n, [beta, gamma])
    assert float(n) == 3.0
    # beta_j moves the gate of every age <= j (age 0 is forced open): older entries weigh more
    np.testing.assert_allclose(g_beta.numpy(), [0, 1, 2, 3, 4])
    # gamma_i moves every level >= i; ages 1, 2 are open (levels 1, 2), age 4 (level 3) is not
    np.testing.assert_allclose(g_gamma.numpy(), [2, 1, 0])


def test_prepare_search_names():
    x = keras.Input((32, 2))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(L.Conv1D(4, 3, padding="causal", name="conv")(x))))
    with pytest.raises(ValueError, match="unknown search= names.*'receptive_fields'"):
        kd.prepare(model, search=("channels", "receptive_fields"))
    with pytest.raises(ValueError, match="must include 'channels'"):
        kd.prepare(model, search=("dilation",))
    # the time axis and choice blocks search together (tests/test_choice.py); this model's
    # conv has no BatchNormalization after it, so paper_b finds no block to give alternatives
    with pytest.warns(UserWarning, match="no eligible conv block"):
        kd.prepare(model, search=TIME, alternatives="paper_b")
    plain = kd.prepare(model)
    assert plain.get_layer("conv").get_config().get("dnas_time") is None
    assert plain.dnas_plan.tap_layers() == []
    timed = kd.prepare(model, search=TIME)
    layer = timed.get_layer("conv")
    assert [w.name for w in layer.weights if w.name.startswith("dnas_")] == \
        ["dnas_alpha", "dnas_beta", "dnas_gamma"]
    a = np.random.default_rng(0).normal(size=(2, 32, 2)).astype("float32")
    np.testing.assert_allclose(timed(a), model(a), atol=1e-6)  # masks start open


# ----------------------------------------------------------------------------- freeze


def _chain(padding, length=96):
    """Conv1D / DepthwiseConv1D chain covering kernels 2-7 and dilations 1-8."""
    x = keras.Input((length, 3))
    h = x
    dw_padding = "same" if padding == "causal" else padding
    for i, (k, d) in enumerate([(2, 1), (3, 2), (5, 1), (4, 8), (7, 3)]):
        h = L.Conv1D(5 + i, k, padding=padding, dilation_rate=d, activation="relu",
                     name=f"c{i}")(h)
        if i == 2:
            h = L.DepthwiseConv1D(6, padding=dw_padding, dilation_rate=2, name="dw")(h)
    y = L.Dense(3)(L.GlobalAveragePooling1D()(h))
    return keras.Model(x, y)


def _random_taps(search, rng):
    for layer in search.layers:
        if getattr(layer, "dnas_beta", None) is not None:
            layer.dnas_beta.assign(rng.uniform(0.0, 0.45, layer.dnas_taps).astype("float32"))
        if getattr(layer, "dnas_gamma", None) is not None:
            n = layer.dnas_gamma.shape[0]
            layer.dnas_gamma.assign(rng.uniform(0.0, 0.7, n).astype("float32"))


@pytest.mark.parametrize("padding", ["causal", "same", "valid"])
def test_freeze_equals_searchable_over_padding_dilation_kernel(padding):
    keras.utils.set_random_seed(0)
    model = _chain(padding)
    search = kd.prepare(model, search=TIME)
    assert len(search.dnas_plan.tap_layers()) == 6
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2,) + model.input_shape[1:]).astype("float32")
    changed = 0
    for _ in range(2):
        _random_taps(search, rng)
        frozen = kd.freeze(search, verbose=0)
        np.testing.assert_allclose(frozen(x), search(x), atol=1e-5)
        for name in search.dnas_plan.tap_layers():
            old, new = search.get_layer(name), frozen.get_layer(name)
            kept = int(old.dnas_kept_taps().sum())
            assert new.kernel_size == (kept,)
            changed += kept < old.dnas_taps
            assert type(new) in (L.Conv1D, L.DepthwiseConv1D)
    assert changed >= 6  # the masks did close taps


def test_plan_json_and_keras_reload_keep_taps(tmp_path):
    keras.utils.set_random_seed(0)
    search = kd.prepare(_chain("causal", 64), search=TIME)
    _random_taps(search, np.random.default_rng(2))
    plan = search.rebind()
    again = kd.graph.ChannelPlan.from_json(plan.to_json())
    assert again == plan and again.tap_layers() == plan.tap_layers()
    assert again.layer("c3").taps == {"kernel_size": 4, "dilation_rate": 8,
                                             "axes": ["receptive_field", "dilation"]}
    path = tmp_path / "s.keras"
    search.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), search(x), atol=1e-6)
    for name in plan.tap_layers():
        a, b = search.get_layer(name), loaded.get_layer(name)
        np.testing.assert_array_equal(a.dnas_kept_taps(), b.dnas_kept_taps())
        np.testing.assert_array_equal(a.dnas_beta.numpy(), b.dnas_beta.numpy())


# ----------------------------------------------------------------------------- costs


def _tcn():
    x = keras.Input((64, 3))
    h = L.Conv1D(8, 5, padding="causal", activation="relu", name="c1")(x)
    h = L.Conv1D(8, 9, padding="causal", dilation_rate=2, activation="relu", name="c2")(h)
    h = L.DepthwiseConv1D(5, padding="same", name="dw")(h)
    h = L.Conv1D(6, 7, padding="causal", name="c3")(h)
    return keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(h)), name="tcn")


def _set(search, name, beta=None, gamma=None):
    layer = search.get_layer(name)
    if beta is not None:
        layer.dnas_beta.assign(np.asarray(beta, "float32"))
    if gamma is not None:
        layer.dnas_gamma.assign(np.asarray(gamma, "float32"))


def test_frozen_exact_costs_equal_searchable_hard_costs():
    keras.utils.set_random_seed(0)
    search = kd.prepare(_tcn(), search=TIME)
    rng = np.random.default_rng(3)
    for layer in search.layers:  # non-zero weights: the converter keeps every bias
        for w in layer.weights:
            if not w.name.startswith("dnas_"):
                w.assign(rng.normal(size=w.shape).astype("float32"))
    _set(search, "c1", beta=[1, 1, 1, 0.2, 0.1])                      # 3 taps
    _set(search, "c2", beta=[1] * 7 + [0.2, 0.1], gamma=[0.1, 1, 1, 1])  # ages 0,2,4,6
    _set(search, "dw", gamma=[0.2, 1, 1])                             # ages 0,2,4 (same span)
    _set(search, "c3", beta=[1, 1, 0.1, 0.1, 0.1, 0.05, 0.05])        # 2 taps
    search.get_layer("c1").dnas_alpha.assign([1, 1, 1, 1, 1, 0.2, 0.1, 1])
    plan = search.rebind()
    counts = hard_counts(search, plan)
    assert counts[len(plan.groups):] == [3, 4, 3, 2]
    memory = MemoryModel.from_model(search, plan, pointer_bytes=8)
    assert memory.unattributed == []
    metrics = ["params", "macs", "latency_ms", "energy_uj", "flash_bytes"]
    frozen = kd.freeze(search, verbose=0)
    assert [frozen.get_layer(n).kernel_size[0] for n in ("c1", "c2", "dw", "c3")] == [3, 4, 3, 2]
    assert [frozen.get_layer(n).dilation_rate[0] for n in ("c1", "c2", "dw", "c3")] == \
        [1, 4, 2, 1]
    fplan = kd.graph.analyze(frozen)
    fmemory = MemoryModel.from_model(frozen, fplan, pointer_bytes=8)
    for target in ("stm32h743", "gap8"):
        searched = CostModel(plan, target, memory=memory)
        exact = {k: to_python(v) for k, v in searched.evaluate(counts, metrics).items()}
        soft = {k: to_python(v) for k, v in
                searched.evaluate(soft_counts(search, plan), metrics, exact=False).items()}
        fcm = CostModel(fplan, target, memory=fmemory)
        real = {k: to_python(v) for k, v in fcm.evaluate(fcm.full_counts(), metrics).items()}
        assert exact["flash_bytes"] == real["flash_bytes"] == len(fmemory.full_bytes)
        for m in metrics:
            assert exact[m] == pytest.approx(real[m], rel=1e-9), (target, m)
            assert soft[m] == pytest.approx(exact[m], rel=1e-6), (target, m)  # same function
    full = CostModel(plan, "stm32h743", memory=memory)
    assert full.evaluate(full.full_counts(), ["macs"])["macs"] > exact["macs"]


def test_freeze_keeps_full_kernels_when_the_short_ones_padding_breaks_flash():
    """Regression (HAPT benchmark, seed 2): a shorter receptive field under padding='same' needs
    explicit padding, whose operators the flash model does not price; when no channels can
    absorb that on the converted file, freeze certified nothing and raised after the whole
    search. It now certifies the full kernels, with a warning."""
    keras.utils.set_random_seed(0)
    x = keras.Input((32, 3))
    h = L.Conv1D(4, 5, padding="same", activation="relu", name="c")(x)
    search = kd.prepare(keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(h))),
                        search=TIME)
    rng = np.random.default_rng(3)
    for layer in search.layers:  # non-zero weights: the converter keeps every bias
        for w in layer.weights:
            if not w.name.startswith("dnas_"):
                w.assign(rng.normal(size=w.shape).astype("float32"))
    _set(search, "c", beta=[1, 1, 1, 0.2, 0.1])  # ages 0-2 of a centred 5-tap kernel
    plan = search.rebind()
    memory = MemoryModel.from_model(search, plan, pointer_bytes=8)
    short = CostModel(plan, "stm32h743", memory=memory).evaluate(
        hard_counts(search, plan), ["flash_bytes"])["flash_bytes"]
    full = CostModel(plan, "stm32h743", memory=memory)
    full = full.evaluate(full.full_counts(), ["flash_bytes"])["flash_bytes"]
    limit = float(max(to_python(short), to_python(full))) + 32  # the model says both fit
    with pytest.warns(UserWarning, match="keeps these layers' full kernels"):
        frozen = kd.freeze(search, target="stm32h743", budgets={"flash_bytes": limit},
                           memory=memory, verbose=0)
    assert frozen.get_layer("c").kernel_size == (5,)
    certificate = frozen.dnas_certificate
    assert certificate["all_hold"] and certificate["taps_reopened"] == ["c"]
    blob = kd.export.to_tflite(frozen, rng.normal(size=(8, 32, 3)).astype("float32"))
    assert len(blob) <= limit


def test_soft_tap_costs_have_gradients():
    import tensorflow as tf

    search = kd.prepare(_tcn(), search=TIME)
    plan = search.rebind()
    cm = CostModel(plan, "stm32h743", memory=MemoryModel.from_model(search, plan))
    beta = search.get_layer("c2").dnas_beta
    gamma = search.get_layer("c2").dnas_gamma
    for metric in ("params", "macs", "latency_ms", "flash_bytes"):
        with tf.GradientTape() as tape:
            value = cm.evaluate(soft_counts(search, plan), [metric], exact=False)[metric]
        g_beta, g_gamma = tape.gradient(value, [beta, gamma])
        assert g_beta is not None and float(tf.reduce_sum(g_beta)) > 0, metric
        assert g_gamma is not None and float(tf.reduce_sum(g_gamma)) > 0, metric


def test_frozen_taps_convert_to_int8_and_run_on_tflite_micro():
    keras.utils.set_random_seed(0)
    search = kd.prepare(_tcn(), search=TIME)
    _set(search, "c1", beta=[1, 1, 0.3, 0.2, 0.1])
    _set(search, "c2", gamma=[0.1, 0.1, 1, 1])
    _set(search, "dw", beta=[1, 1, 0.2, 0.1, 0.1])  # "same" with explicit padding
    _set(search, "c3", beta=[1] + [0.05] * 6)  # one tap
    frozen = kd.freeze(search, verbose=0)
    assert frozen.get_layer("c3").kernel_size == (1,)
    x = np.random.default_rng(0).normal(size=(16, 64, 3)).astype("float32")
    tflite = kd.export.to_tflite(frozen, x)
    assert kd.export.tflm_problems(tflite) == []
    out = kd.export.run_tflm(tflite, x, dequantize=True)
    ref = frozen.predict(x, verbose=0)
    np.testing.assert_allclose(out, ref, atol=0.05 * float(np.abs(ref).max()) + 1e-3)


# ----------------------------------------------------------------------------- search


def _sines(n=384, length=64, seed=0):
    """Two classes told apart by a slow sine's frequency (the late taps matter little)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(length)
    freq = np.where(y == 0, 0.05, 0.12)[:, None]
    x = np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3, (n, 1)))[..., None]
    x = x + 0.1 * rng.normal(size=(n, length, 1))
    return np.repeat(x, 3, axis=-1).astype("float32"), y.astype("int32")


@pytest.mark.filterwarnings("ignore:keras_dnas.freeze reopened")  # no fine-tuning here
def test_budgeted_search_shrinks_taps_and_warmup_freezes_them():
    keras.utils.set_random_seed(0)
    search = kd.prepare(_tcn(), search=TIME)
    x, y = _sines()
    plan = search.rebind()
    full = CostModel(plan, "stm32h743").evaluate(CostModel(plan, "stm32h743").full_counts(),
                                                  ["macs"])["macs"]
    search.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    betas = {n: search.get_layer(n).dnas_beta for n in plan.tap_layers()}
    seen = {}

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {n: b.numpy().copy() for n, b in betas.items()}

    callback = kd.DNASCallback("stm32h743", budgets={"macs": 0.12 * full}, warmup_epochs=1,
                               verbose=0)
    search.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[callback, Watch()])
    for n, b in seen[0].items():  # warm-up: the tap masks did not move
        np.testing.assert_array_equal(b, np.ones_like(b))
    counts = hard_counts(search, plan)
    tap_counts = counts[len(plan.groups):]
    assert sum(tap_counts) < sum(plan.full_taps())  # the search closed taps
    frozen = kd.freeze(search, verbose=0)
    assert frozen.dnas_certificate["all_hold"]
    for name, n in zip(plan.tap_layers(), tap_counts):
        assert frozen.get_layer(name).kernel_size == (n,)
