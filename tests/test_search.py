"""Budgets, strength schedules, DNASCallback and the freeze-time guarantee."""

import csv

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.costs.model import CostModel
from keras_dnas.graph.counts import hard_counts
from keras_dnas.search import Budget, Minimize, base_strength, ramp

from tests import toys

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits():
    """8x8 handwritten digits shipped with scikit-learn (1,797 real samples)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], d.target[idx].astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def digit_cnn():
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(24, 3, padding="same", use_bias=False)(inp)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.Conv2D(32, 3, padding="same", use_bias=False)(h)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(48, 3, padding="same", use_bias=False)(h)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    return keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(h)), name="digit_cnn")


@pytest.fixture(scope="module")
def trained_seed():
    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = digits()
    seed = digit_cnn()
    seed.compile("adam", LOSS, metrics=["accuracy"])
    seed.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return seed


def seed_costs(model, metrics, target="stm32h743"):
    plan = kd.graph.analyze(model)
    cm = CostModel(plan, target)
    return cm.evaluate(cm.full_counts(), metrics)


# ------------------------------------------------------------ objectives


def test_budget_hinge_and_validation():
    b = Budget("latency_ms", 2.0)
    assert float(b.penalty(3.0)) == pytest.approx(0.5)
    assert float(b.penalty(1.0)) == 0.0
    assert b.violation(2.5) == pytest.approx(0.25) and b.holds(2.0)
    with pytest.raises(ValueError, match="Unknown metric 'flash_kb'.*Known metrics"):
        Budget("flash_kb", 10)
    with pytest.raises(ValueError, match="'ram_byte'. Did you mean 'ram_bytes'.*Known metrics"):
        kd.DNASCallback("stm32h743", budgets={"ram_byte": 10_000})
    with pytest.raises(ValueError, match="positive finite limit"):
        Budget("ram_bytes", 0)
    with pytest.raises(ValueError, match="strength >= 0"):
        Minimize("energy_uj", -1.0)
    assert kd.search.objectives.objective_from_dict(b.to_dict()) == b


def test_budget_limits_as_users_write_them():
    """numpy numbers are budgets; strings, bools and fractions of a byte are refused, saying how."""
    budgets = kd.DNASCallback("stm32h743", budgets={
        "flash_bytes": np.int64(48_000), "ram_bytes": np.float32(2e4),
        "latency_ms": np.array(0.5)}).budgets
    assert [(b.metric, b.limit) for b in budgets] == [
        ("flash_bytes", 48_000), ("ram_bytes", 20_000.0), ("latency_ms", 0.5)]
    assert all(type(b.limit) in (int, float) for b in budgets)  # JSON-ready when saved
    with pytest.raises(ValueError, match=r"'flash_bytes' must be a number in bytes \(e\.g\. "
                                         r"65_536 for 64 KiB\), not str.*'64KB'"):
        Budget("flash_bytes", "64KB")
    with pytest.raises(ValueError, match="not bool"):
        Budget("flash_bytes", True)
    with pytest.raises(ValueError, match=r"positive finite limit \(in bytes\).*=-5"):
        Budget("ram_bytes", -5)
    with pytest.raises(ValueError, match=r"0\.5 reads like a fraction of the seed.*"
                                         r"int\(0\.5 \* kd\.summary\(seed\)\['ram_bytes'\]\)"):
        Budget("ram_bytes", 0.5)
    assert Budget("latency_ms", 0.5).limit == 0.5  # half a millisecond is a budget
    assert Minimize("energy_uj", np.float32(0.5)).strength == 0.5
    # a list of Budgets, a single Minimize; a dict key that contradicts its Budget is refused
    cb = kd.DNASCallback("stm32h743", budgets=[Budget("flash_bytes", 4e4)],
                         objectives=Minimize("energy_uj"))
    assert [type(o).__name__ for o in cb.objectives] == ["Budget", "Minimize"]
    with pytest.raises(ValueError, match=r"budgets\['flash_bytes'\] is a Budget of 'ram_bytes'"):
        kd.DNASCallback("stm32h743", budgets={"flash_bytes": Budget("ram_bytes", 5_000)})
    with pytest.raises(ValueError, match=r"budgets= takes a dict \{metric: limit\}"):
        kd.DNASCallback("stm32h743", budgets=[("flash_bytes", 4e4)])
    with pytest.raises(ValueError, match=r"hard limits go in budgets="):
        kd.DNASCallback("stm32h743", objectives=[Budget("flash_bytes", 4e4)])


def test_energy_on_a_target_without_energy_per_cycle_is_refused_before_training():
    """A user board defaults to energy_nj_per_cycle=0: an energy budget would hold and
    Minimize('energy_uj') would vanish at every width, silently."""
    seed = keras.Sequential([keras.Input((16,)), L.Dense(32, activation="relu"), L.Dense(2)])
    search = kd.prepare(seed)
    board = kd.targets.HardwareTarget(name="user_board", clock_mhz=64, flash_bytes=1 << 20,
                                      ram_bytes=1 << 18)
    for kwargs in ({"budgets": {"energy_uj": 5.0}},
                   {"budgets": {"params": 300}, "objectives": [Minimize("energy_uj")]}):
        with pytest.raises(ValueError, match=r"'energy_uj' is 0 for this model on 'user_board' "
                                             r"at every width because its energy_nj_per_cycle "
                                             r"is 0.*energy_nj_per_cycle=0\.3"):
            kd.DNASCallback(board, verbose=0, **kwargs).bind(search)
    cb = kd.DNASCallback(board.replace(energy_nj_per_cycle=0.3), budgets={"energy_uj": 5.0},
                         verbose=0)
    cb.bind(search)
    assert cb.seed_costs["energy_uj"] > 0


def test_strength_schedule_matches_method():
    # lambda_i = L_task / (C_seed / T - 1) for the normalised hinge
    assert base_strength(1.2, seed_cost=300.0, limit=100.0) == pytest.approx(0.6)
    # seed already within its budget: treated as 5 % away
    assert base_strength(1.0, seed_cost=90.0, limit=100.0) == pytest.approx(20.0)
    # 1 % to 100 % over the first half of E search epochs, then flat
    lam, epochs = 2.0, 10
    expected = [min(lam / 100 + e * 0.99 * lam / (epochs / 2), lam) for e in range(epochs)]
    assert [ramp(lam, e, epochs) for e in range(epochs)] == pytest.approx(expected)
    assert ramp(lam, 0, epochs) == pytest.approx(0.02)
    assert ramp(lam, 5, epochs) == pytest.approx(lam)


# ------------------------------------------------------------ the callback


def test_search_meets_budgets_and_freeze_certifies_them(trained_seed, tmp_path):
    (x, y), (xv, yv) = digits()
    full = seed_costs(trained_seed, ["params", "latency_ms", "macs"])
    budgets = {"params": 0.4 * full["params"], "latency_ms": 0.5 * full["latency_ms"],
               "macs": 0.4 * full["macs"]}
    search = kd.prepare(trained_seed)
    search.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    cb = kd.DNASCallback("stm32h743", budgets=budgets, verbose=0)
    log = tmp_path / "log.csv"
    hist = search.fit(x, y, validation_data=(xv, yv), epochs=8, batch_size=64, verbose=0,
                      callbacks=[cb, keras.callbacks.CSVLogger(str(log))])
    for key in ("dnas/params", "dnas/latency_ms", "dnas/macs", "dnas/feasible"):
        assert key in hist.history and len(hist.history[key]) == 8
    with open(log) as f:
        assert "dnas/feasible" in next(csv.reader(f))
    assert hist.history["dnas/feasible"][-1] == 1.0
    # the logged costs are the exact costs of the masks
    plan = search.dnas_plan
    exact = CostModel(plan, "stm32h743").evaluate(hard_counts(search, plan), list(budgets))
    for m, limit in budgets.items():
        assert exact[m] <= limit
    slim = kd.freeze(search, target="stm32h743", budgets=budgets, fill=False, verbose=0)
    assert slim.dnas_certificate["all_hold"] and not slim.dnas_certificate["removed_channels"]
    assert not slim.dnas_certificate["added_channels"]
    frozen_costs = seed_costs(slim, list(budgets))
    assert frozen_costs == pytest.approx(exact)  # invariant 3: hard costs == frozen costs
    bn_weights = sum(w.numpy().size for layer in slim.layers
                     if isinstance(layer, L.BatchNormalization) for w in layer.weights)
    assert slim.count_params() == exact["params"] + bn_weights  # params = conv/dense + bias
    slim.compile("adam", LOSS, metrics=["accuracy"])
    slim.fit(x, y, epochs=3, batch_size=64, verbose=0)
    kd.recalibrate_batchnorm(slim, x)  # the documented workflow: exact BN statistics after pruning
    assert slim.evaluate(xv, yv, verbose=0)[1] > 0.8


def test_strengths_change_without_retracing(trained_seed):
    (x, y), _ = digits()
    traces = []
    for epochs in (2, 5):
        search = kd.prepare(trained_seed)
        search.compile("adam", LOSS)
        cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e5}, verbose=0)
        original = cb.penalty
        calls = []

        def counting_penalty(original=original, calls=calls):
            calls.append(1)  # runs in Python only while a step is traced
            return original()

        cb.penalty = counting_penalty
        search.fit(x[:256], y[:256], epochs=epochs, batch_size=64, verbose=0, callbacks=[cb])
        strengths = [float(v.numpy()) for v in cb._strengths]
        assert strengths[0] > 0
        traces.append(len(calls))
    assert traces[0] == traces[1] and traces[0] >= 1


def test_search_fit_traces_the_train_step_once(trained_seed):
    # Keras' TensorFlow trainer creates the optimizer's and the metrics' variables in the first
    # trace of the step and then traces it again; the callback builds them before the first step
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow trainer's tracing")
    (x, y), (xv, yv) = digits()
    search = kd.prepare(trained_seed)
    search.compile("adam", LOSS, metrics=["accuracy"])
    traces = []
    step = search.train_step

    def counting_step(data):
        traces.append(1)  # runs in Python only while the step is traced
        return step(data)

    search.train_step = counting_step
    cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e5}, verbose=0)
    history = search.fit(x[:300], y[:300], epochs=2, batch_size=64, verbose=0, callbacks=[cb],
                         validation_data=(xv[:100], yv[:100]))
    assert len(traces) == 1
    assert search.optimizer.built and len(history.history["accuracy"]) == 2
    assert all(np.isfinite(history.history["loss"]))


def test_steps_per_execution_searches_step_for_step_the_same(trained_seed):
    # Keras runs N steps per call and calls the batch hooks once per call: the mask folding at
    # the epoch's last step and the penalty's per-step sums must not depend on it
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' PyTorch trainer runs one step per call")
    (x, y), (xv, yv) = digits()
    runs = []
    for steps in (1, 4):
        keras.utils.set_random_seed(1)
        search = kd.prepare(trained_seed)
        search.compile(keras.optimizers.Adam(1e-2), LOSS, steps_per_execution=steps)
        cb = kd.DNASCallback("stm32h743", budgets={"macs": 1.5e5}, warmup_epochs=1, verbose=0,
                             calibration_data=x[:300])
        search.fit(x[:600], y[:600], epochs=3, batch_size=64, verbose=0, callbacks=[cb],
                   validation_data=(xv[:100], yv[:100]))  # 10 steps: a last, partial call
        slim = kd.freeze(search, verbose=0)
        runs.append((cb.history, [v.numpy() for v in kd.masks.mask_variables(search)], slim))
    (history, masks, slim), (history4, masks4, slim4) = runs
    assert history[-1]["dnas/macs"] < history[0]["dnas/macs"]  # the masks did move
    for epoch, epoch4 in zip(history, history4, strict=True):
        for key in ("loss", "val_loss", "dnas/penalty", "dnas/macs"):
            assert epoch4[key] == pytest.approx(epoch[key], rel=1e-6), key
    for a, b in zip(masks, masks4, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    assert slim4.get_compile_config()["steps_per_execution"] == 4
    assert slim.count_params() == slim4.count_params()


def test_warmup_keeps_masks_frozen_and_no_callback_means_no_penalty(trained_seed):
    (x, y), _ = digits()
    search = kd.prepare(trained_seed)
    search.compile("adam", LOSS)
    before = [v.numpy().copy() for v in kd.masks.mask_variables(search)]
    kernel = search.layers[1].kernel.numpy().copy()
    cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e5}, warmup_epochs=2, verbose=0)
    seen = []
    probe = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(
        [layer.momentum for layer in search.layers if isinstance(layer, L.BatchNormalization)]))
    search.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, callbacks=[cb, probe])
    assert seen[0] and all(m == 0.9 for m in seen[0])  # short BN average during the search
    assert all(layer.momentum == 0.99 for layer in search.layers
               if isinstance(layer, L.BatchNormalization))  # restored afterwards
    for a, b in zip(before, kd.masks.mask_variables(search)):
        np.testing.assert_array_equal(a, b.numpy())
    assert not np.allclose(kernel, search.layers[1].kernel.numpy())
    assert not any(float(v.numpy()) for v in cb._strengths)
    # afterwards the model trains without the callback: no penalty term remains
    assert not search.losses
    hist = search.fit(x[:256], y[:256], epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def _mask_gradients(search, cb, x, y, penalty=False):
    import tensorflow as tf

    alphas = kd.masks.mask_variables(search)
    with tf.GradientTape() as tape:
        loss = cb.penalty() if penalty else LOSS(y, search(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, alphas)]


def test_centred_gradients_remove_the_classifier_groups_common_scale(trained_seed):
    (x, y), _ = digits()
    x, y = x[:256], y[:256]
    search = kd.prepare(trained_seed)
    open_last = kd.masks.mask_variables(search)[-1]
    open_last.assign(np.where(np.arange(48) % 3 == 0, 0.2, 1.0).astype("float32"))
    grads = {}
    for centred in (False, True):
        cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e5}, centred_gradients=centred,
                             verbose=0)
        cb.bind(search)
        cb._strengths[0].assign(1.0)  # what on_epoch_begin does in a search epoch
        cb._grad_scale.assign(1.0)
        grads[centred] = _mask_gradients(search, cb, x, y)
        penalty = _mask_gradients(search, cb, x, y, penalty=True)
        # the budget penalty acts on counts and is never centred: one value per group
        for g in penalty:
            assert np.ptp(g) < 1e-6 * max(abs(g).max(), 1e-12) and abs(g).max() > 0
    keep = np.arange(48) % 3 != 0
    plain, centred = grads[False][-1], grads[True][-1]
    # larger features mean larger logits: plainly every open gate of the group feeding the
    # classifier is pushed up (negative gradient) ...
    assert plain[keep].mean() < 0
    # ... centred, the open channels' gradients sum to zero and keep their differences;
    # closed channels keep their straight-through gradient
    assert abs(centred[keep].sum()) < 1e-5 * abs(plain[keep]).sum()
    np.testing.assert_allclose(centred[keep], plain[keep] - plain[keep].mean(), atol=1e-6)
    np.testing.assert_allclose(centred[~keep], plain[~keep], atol=1e-6)
    # fit leaves no search state on the layers
    cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e5}, verbose=0)
    search.compile("adam", LOSS)
    search.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    assert cb.centred_gradients and not any("_dnas_centred" in layer.__dict__
                                            for layer in search.layers)


def test_impossible_budget_fails_before_training(trained_seed):
    (x, y), _ = digits()
    search = kd.prepare(trained_seed)
    search.compile("adam", LOSS)
    weights = [w.copy() for w in search.get_weights()]
    cm = CostModel(search.dnas_plan, "stm32h743")
    smallest = cm.evaluate(cm.min_counts(), ["latency_ms"])["latency_ms"]
    cb = kd.DNASCallback("stm32h743", budgets={"latency_ms": smallest * 0.9}, verbose=0)
    with pytest.raises(ValueError, match=r"latency_ms=.*cannot be met.*smallest reachable"):
        search.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[cb])
    for a, b in zip(weights, search.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Unknown target|known"):
        kd.DNASCallback("stm32h7", budgets={"macs": 1e5})
    with pytest.raises(ValueError, match="Unknown metric"):
        kd.DNASCallback("stm32h743", budgets={"latency": 1.0})


def test_callback_ties_masks_of_a_hand_built_model():
    (x, y), _ = digits()
    inp = keras.Input((8, 8, 1))
    a = kd.layers.MaskedConv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    b = kd.layers.MaskedConv2D(8, 3, padding="same", name="b")(a)
    h = L.Add()([a, b])
    out = kd.layers.MaskedDense(10, name="fc")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)  # a plain functional model, not SearchableModel
    model.compile("adam", LOSS)
    cb = kd.DNASCallback("stm32h743", budgets={"macs": 3000}, verbose=0)
    model.fit(x[:256], y[:256], epochs=3, batch_size=32, verbose=0, callbacks=[cb])
    assert model.get_layer("a").dnas_alpha.trainable
    assert not model.get_layer("b").dnas_alpha.trainable  # tied to "a"
    assert not model.get_layer("fc").dnas_alpha.trainable  # output group frozen
    slim = kd.freeze(model, budgets={})  # no certification (fill would reopen channels)
    xs = x[:8]
    np.testing.assert_allclose(slim(xs), model(xs), atol=1e-5)
    assert slim.get_layer("a").filters == slim.get_layer("b").filters


def test_freeze_projects_onto_budgets_and_reports():
    search = kd.prepare(toys.randomize_bn(toys.plain_cnn()))
    plan = search.dnas_plan
    cm = CostModel(plan, "stm32h743")
    full = cm.evaluate(cm.full_counts(), ["macs"])["macs"]
    slim = kd.freeze(search, target="stm32h743", budgets={"macs": 0.5 * full}, fill=False,
                     verbose=0)
    cert = slim.dnas_certificate
    assert cert["all_hold"] and cert["removed_channels"]
    assert seed_costs(slim, ["macs"])["macs"] <= 0.5 * full
    # the channels closed are gone from the frozen model, nothing else changed
    closed = len(cert["removed_channels"])
    assert sum(layer.filters for layer in slim.layers if isinstance(layer, L.Conv2D)) == 8 + 12 - closed
    with pytest.raises(ValueError, match="cannot hold even with one channel"):
        kd.freeze(search, target="stm32h743", budgets={"macs": 10}, verbose=0)


def test_freeze_fills_the_budget_the_search_left_unused():
    search = kd.prepare(toys.randomize_bn(toys.residual()))
    plan = search.dnas_plan
    cm = CostModel(plan, "stm32h743")
    metrics = ["macs", "latency_ms"]
    full = cm.evaluate(cm.full_counts(), metrics)
    budgets = {"macs": 0.6 * full["macs"], "latency_ms": 0.7 * full["latency_ms"]}
    for layer in search.layers:  # a search that overshot: 1-2 channels left per group
        if getattr(layer, "dnas_alpha", None) is not None and layer.dnas_alpha.trainable:
            n = layer.dnas_alpha.shape[0]
            layer.dnas_alpha.assign(np.where(np.arange(n) < 2, 1.0, np.linspace(0.4, 0.1, n)))
    _, before = kd.freeze_lib.kept_channels(search, plan)
    with pytest.warns(UserWarning, match="recalibrate_batchnorm"):
        slim = kd.freeze(search, target="stm32h743", budgets=budgets, verbose=0)
    cert = slim.dnas_certificate
    assert cert["all_hold"] and not cert["removed_channels"] and cert["added_channels"]
    frozen = seed_costs(slim, metrics)
    assert all(frozen[m] <= budgets[m] for m in metrics)
    # more channels than the masks kept, and every one the masks kept is still there
    keep = [k.copy() for k in before]
    for entry in cert["added_channels"]:
        g = next(g.id for g in plan.groups if g.leader == entry["layer"])
        assert not keep[g][entry["channel"]]
        keep[g][entry["channel"]] = True
    counts = [int(k.sum()) for k in keep]
    assert cm.evaluate(counts, metrics, exact=True) == pytest.approx(frozen)
    # maximal: one more channel in any group that has room breaks a budget
    for g in plan.groups:
        if not g.frozen and counts[g.id] < g.size:
            more = list(counts)
            more[g.id] += 1
            values = cm.evaluate(more, metrics, exact=True)
            assert any(float(values[m]) > budgets[m] for m in metrics), g.leader
    # fill=False keeps exactly what the masks keep
    plain = kd.freeze(search, target="stm32h743", budgets=budgets, fill=False, verbose=0)
    assert seed_costs(plain, ["params"])["params"] < seed_costs(slim, ["params"])["params"]


def test_freeze_certifies_the_file_of_the_fine_tuned_model_when_biases_are_all_zero():
    # the converter drops an all-zero bias: an untrained (or never-moved) layer converts
    # smaller than it will after the first step of fine-tuning, so the certificate converts
    # the frozen model with such biases given values, and gives the zeros back
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = L.Conv2D(16, 3, activation="relu")(inputs)
    h = L.GlobalAveragePooling2D()(L.Conv2D(16, 3, activation="relu")(h))
    model = keras.Model(inputs, L.Dense(4)(L.Dense(8, activation="relu")(h)))
    x = np.random.default_rng(0).random((32, 16, 16, 3)).astype("float32")
    search = kd.prepare(model)
    slim = kd.freeze(search, target="stm32h743", budgets={"flash_bytes": 4300},
                     calibration_data=x, verbose=0)
    cert = slim.dnas_certificate
    assert cert["all_hold"] and "4 all-zero bias vectors" in cert["flash_source"]
    biases = [layer.bias for layer in slim.layers if getattr(layer, "bias", None) is not None]
    assert len(biases) == 4 and not any(np.asarray(b.numpy()).any() for b in biases)  # given back
    untrained = len(kd.export.to_tflite(slim, representative_data=x))
    rng = np.random.default_rng(1)
    for b in biases:  # what fine-tuning does to them
        b.assign(rng.normal(0.0, 0.1, b.shape).astype("float32"))
    tuned = len(kd.export.to_tflite(slim, representative_data=x))
    assert untrained < tuned == cert["budgets"][0]["value"] <= 4300


def test_freeze_certifies_flash_by_conversion_even_if_the_flash_model_is_optimistic():
    from keras_dnas.memory import MemoryModel

    search = kd.prepare(toys.randomize_biases(toys.randomize_bn(toys.plain_cnn())))
    memory = MemoryModel.from_model(search, search.dnas_plan, target="stm32h743")
    honest = memory.flash
    memory.flash = lambda counts, exact=True: honest(counts, exact) - 1000  # 1 kB too low
    x = toys.sample(search, n=8)
    limit = 0.7 * len(kd.export.to_tflite(kd.freeze(search), representative_data=x))
    slim = kd.freeze(search, target="stm32h743", budgets={"flash_bytes": limit}, memory=memory,
                     verbose=0)
    cert = slim.dnas_certificate
    assert cert["flash_source"].startswith("int8 TFLite conversion")
    assert cert["all_hold"]
    size = len(kd.export.to_tflite(slim, representative_data=x))
    assert size <= limit
    assert cert["budgets"][0]["value"] == size
    # without the conversion check, trusting the optimistic model breaks the budget
    from keras_dnas.freeze import grow, project, rebuild_with

    plan = search.dnas_plan
    cm, budgets = CostModel(plan, "stm32h743", memory=memory), [Budget("flash_bytes", limit)]
    keep, _, _ = project(search, cm, budgets, plan=plan)
    keep, _, _ = grow(search, cm, budgets, plan=plan, keep=keep)
    trusted = rebuild_with(search, plan, keep)
    assert len(kd.export.to_tflite(trusted, representative_data=x)) > limit


def test_flash_ram_latency_budgets_hold_on_the_measured_int8_model(trained_seed):
    """Budgets at ~50 % of the seed's flash, RAM and latency, on real digits."""
    (x, y), (xv, yv) = digits()
    target = kd.targets.get("nrf52840")
    before = kd.summary(trained_seed, target)
    budgets = {"flash_bytes": 0.5 * before["flash_bytes"], "ram_bytes": 0.5 * before["ram_bytes"],
               "latency_ms": 0.5 * before["latency_ms"]}
    search = kd.prepare(trained_seed)
    search.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    cb = kd.DNASCallback(target, budgets=budgets, verbose=0)
    hist = search.fit(x, y, validation_data=(xv, yv), epochs=8, batch_size=64, verbose=0,
                      callbacks=[cb])
    assert hist.history["dnas/feasible"][-1] == 1.0
    slim = kd.freeze(search, target=target, budgets=budgets, verbose=0)
    assert slim.dnas_certificate["all_hold"]
    kd.recalibrate_batchnorm(slim, x)  # reopened channels (fill) have stale BN statistics
    tflite = kd.export.to_tflite(slim, representative_data=x[:64])
    measured = kd.export.measure(tflite, data=(xv, yv))
    after = kd.summary(slim, target)
    assert measured["flash_bytes"] <= budgets["flash_bytes"]
    certified = {r["metric"]: r["value"] for r in slim.dnas_certificate["budgets"]}
    assert certified["flash_bytes"] == measured["flash_bytes"]  # certified by conversion, data-free
    assert measured["arena_head_bytes"] == after["arena_head_bytes"]  # exact planner replay
    assert after["ram_bytes"] <= budgets["ram_bytes"] and after["latency_ms"] <= budgets["latency_ms"]
    assert measured["accuracy"] > 0.5  # int8 on TFLite Micro, before any fine-tuning
