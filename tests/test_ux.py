"""What a user sees around a search: logs, validation, the restored epoch, freeze's defaults."""

import warnings

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.costs.model import CostModel

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits(n=512):
    """8x8 handwritten digits shipped with scikit-learn (real samples), shuffled."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], d.target[idx].astype("int32")
    return (x[:n], y[:n]), (x[n:n + 256], y[n:n + 256])


def small_cnn(bn=True):
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(12, 3, padding="same", use_bias=not bn, name="c1")(inp)
    if bn:
        h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(16, 3, padding="same", use_bias=not bn, name="c2")(h)
    if bn:
        h = L.BatchNormalization(name="bn2")(h)
    h = L.ReLU()(h)
    return keras.Model(inp, L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(h)))


def searchable(bn=True, lr=3e-3):
    search = kd.prepare(small_cnn(bn))
    search.compile(keras.optimizers.Adam(lr), LOSS, metrics=["accuracy"])
    return search


def bn_stats(model):
    return [np.array(w) for layer in model.layers if isinstance(layer, L.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


def full_params():
    plan = kd.graph.analyze(small_cnn())
    cm = CostModel(plan, "stm32h743")
    return float(cm.evaluate(cm.full_counts(), ["params"])["params"])


# ------------------------------------------------------------------ logs and validation


@pytest.mark.filterwarnings("ignore:DNASCallback. no search epoch:UserWarning")  # short search
def test_logs_split_task_loss_and_penalty_and_val_loss_has_no_penalty():
    (x, y), (xv, yv) = digits()
    search = searchable()
    cb = kd.DNASCallback("stm32h743", budgets={"params": 0.3 * full_params()}, warmup_epochs=1,
                         verbose=0)
    seen = []

    class Probe(keras.callbacks.Callback):  # runs after cb: the weights validation saw
        def on_epoch_end(self, epoch, logs=None):
            with_penalty = self.model.evaluate(xv, yv, verbose=0, return_dict=True)["loss"]
            seen.append((with_penalty, float(keras.ops.convert_to_numpy(cb.penalty()))))

    hist = search.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=64, verbose=0,
                      callbacks=[cb, Probe()]).history
    # warm-up: no penalty, the task loss is Keras' loss
    assert hist["dnas/penalty"][0] == 0.0
    assert hist["dnas/task_loss"][0] == pytest.approx(hist["loss"][0])
    # searching over budget: a positive penalty, and Keras' loss is task loss + penalty
    assert hist["dnas/penalty"][1] > 0.0
    assert hist["loss"][1] == pytest.approx(hist["dnas/task_loss"][1] + hist["dnas/penalty"][1])
    # val_loss leaves the penalty out: evaluate() with the penalty active differs by it
    for epoch in (1, 2):
        with_penalty, penalty = seen[epoch]
        assert penalty > 0.0
        assert with_penalty == pytest.approx(hist["val_loss"][epoch] + penalty, rel=1e-4)


@pytest.mark.filterwarnings("ignore:DNASCallback. no search epoch:UserWarning")  # short search
def test_validation_uses_exact_batchnorm_statistics_of_the_calibration_sample():
    (x, y), (xv, yv) = digits()
    kw = dict(budgets={"params": 0.5 * full_params()}, restore_best_weights=False, verbose=0)
    for calibrate in (True, False):
        keras.utils.set_random_seed(3)
        search = searchable()
        cb = kd.DNASCallback("stm32h743", calibration_data=x if calibrate else None, **kw)
        search.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=64, verbose=0,
                   callbacks=[cb])
        after_fit = bn_stats(search)
        # the callback's sample: a fixed-seed random subset (x has 512 samples: all of them)
        stored = kd.search.callback.calibration_sample(x, kd.DNASCallback.CALIBRATION_SAMPLES)
        if calibrate:
            np.testing.assert_array_equal(cb.calibration_data[0], stored[0])
            assert sorted(map(bytes, stored[0])) == sorted(map(bytes, x))
        sample = stored[0][:kd.DNASCallback.VALIDATION_CALIBRATION_SAMPLES]
        kd.recalibrate_batchnorm(search, sample)  # exact statistics of the final network
        exact = bn_stats(search)
        same = all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(after_fit, exact))
        # with calibration_data the last validation ran with exactly these statistics;
        # without, the moving averages lag
        assert same == calibrate


def test_calibration_data_rejects_labels():
    (x, y), _ = digits(64)
    with pytest.raises(ValueError, match=r"input samples only.*pass x"):
        kd.DNASCallback("stm32h743", calibration_data=(x, y))


# ------------------------------------------------------------------ reuse and restore


def test_second_fit_with_default_budgets_keeps_two_objectives():
    (x, y), _ = digits(128)
    search = searchable()
    cb = kd.DNASCallback("stm32h743", verbose=0)  # budgets=None: the target's flash and RAM
    for _ in range(2):
        search.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
        assert [o.metric for o in cb.objectives] == ["flash_bytes", "ram_bytes"]
    cb = kd.DNASCallback("stm32h743", budgets={"params": 1e6}, objectives=["macs"], verbose=0)
    for _ in range(2):
        search.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
        assert [o.metric for o in cb.objectives] == ["params", "macs"]


def test_no_feasible_epoch_restores_the_least_violating_one():
    (x, y), (xv, yv) = digits(128)
    search = searchable()
    cb = kd.DNASCallback("stm32h743", budgets={"params": 0.05 * full_params()},
                         mask_lr_multiplier=1e-6, verbose=0)  # masks move only when set
    snapshots = []
    closed = {0: {"c1": 6}, 1: {"c1": 6, "c2": 8}, 2: {}}  # epoch -> channels closed per layer

    class SetMasks(keras.callbacks.Callback):  # before cb: epoch 1 violates least, 2 most
        def on_epoch_end(self, epoch, logs=None):
            for name in ("c1", "c2"):
                alpha = self.model.get_layer(name).dnas_alpha
                value = np.ones(alpha.shape, "float32")
                value[:closed[epoch].get(name, 0)] = 0.1
                alpha.assign(value)

    class Snapshot(keras.callbacks.Callback):  # after cb: the weights of every epoch
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([np.array(w) for w in self.model.get_weights()])

    with pytest.warns(UserWarning, match=r"no search epoch met every budget\. Restored the "
                                         r"least violating epoch, 2 \(params=[0-9,]+ "
                                         r"parameters > [0-9,]+ parameters;"):
        search.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=64, verbose=0,
                   callbacks=[SetMasks(), cb, Snapshot()])
    params = [h["dnas/params"] for h in cb.history]
    assert params[1] < params[0] < params[2]
    assert cb.restored_epoch == 1
    for w, s in zip(search.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(w, s)
    assert cb.costs()["params"] == params[1]


# ------------------------------------------------------------------ freeze's defaults


def _searched(calibrate, bn=True, budgets=None):
    (x, y), (xv, yv) = digits()
    search = searchable(bn)
    budgets = budgets or {"params": 0.4 * full_params()}
    cb = kd.DNASCallback("nrf52840", budgets=budgets, calibration_data=x if calibrate else None,
                         verbose=0)
    search.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=64, verbose=0,
               callbacks=[cb])
    return search, cb, (x, y), (xv, yv)


def test_freeze_reuses_the_search_recalibrates_and_compiles():
    search, cb, (x, y), (xv, yv) = _searched(calibrate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # calibrated: nothing to warn about
        slim = kd.freeze(search, verbose=0)
    cert = slim.dnas_certificate
    assert cert["target"] == cb.target.name
    assert [(r["metric"], r["limit"]) for r in cert["budgets"]] == \
        [(b.metric, b.limit) for b in cb.budgets] and cert["all_hold"]
    # BN statistics are the exact ones of the calibration sample (x: 512 samples, all used)
    before = bn_stats(slim)
    kd.recalibrate_batchnorm(slim, x)
    for a, b in zip(before, bn_stats(slim)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # compiled as the search: same loss and metrics, a fresh Adam with the same learning rate
    assert slim.compiled and slim.optimizer is not search.optimizer
    assert type(slim.optimizer) is type(search.optimizer)
    assert float(slim.optimizer.learning_rate) == pytest.approx(3e-3)
    assert int(slim.optimizer.iterations) == 0
    result = slim.evaluate(xv, yv, verbose=0, return_dict=True)
    assert set(result) == {"loss", "accuracy"}
    slim.fit(x, y, epochs=1, batch_size=64, verbose=0)
    # explicit arguments win: no budgets, another target
    plain = kd.freeze(search, budgets={}, verbose=0)
    assert getattr(plain, "dnas_certificate", None) is None
    other = kd.freeze(search, target="stm32h743", verbose=0)
    assert other.dnas_certificate["target"] != cert["target"]


def test_freeze_without_calibration_warns_for_batchnorm_and_for_reopened_channels():
    search, _, _, _ = _searched(calibrate=False)
    with pytest.warns(UserWarning, match="calibration_data="):
        kd.freeze(search, verbose=0)
    # no BatchNormalization: reopening channels still changes the function
    search, _, _, _ = _searched(calibrate=False, bn=False)
    slim = None
    with pytest.warns(UserWarning, match=r"reopened \d+ channel\(s\).*Fine-tune"):
        slim = kd.freeze(search, verbose=0)
    assert slim.dnas_certificate["added_channels"]


# ------------------------------------------------------------------ seeding


def _search_masks(seed, budget_fraction=0.4):
    keras.utils.set_random_seed(seed)
    (x, y), (xv, yv) = digits(256)
    search = searchable()
    cb = kd.DNASCallback("stm32h743", budgets={"params": budget_fraction * full_params()},
                         calibration_data=x, verbose=0)
    search.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=32, verbose=0,
               callbacks=[cb])  # shuffled batches
    return [np.array(keras.ops.convert_to_numpy(layer.dnas_alpha)) for layer in search.layers
            if getattr(layer, "dnas_alpha", None) is not None]


@pytest.mark.filterwarnings("ignore:DNASCallback. no search epoch:UserWarning")  # short search
def test_same_seed_same_search_whatever_ran_before():
    first = _search_masks(7)
    _search_masks(11, budget_fraction=0.6)  # another search, other seed, in between
    keras.random.normal((3,))  # and unseeded random ops
    again = _search_masks(7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_the_search_settings_survive_a_keras_file_and_freeze_reuses_them(tmp_path):
    search, cb, (x, _), _ = _searched(calibrate=True)
    path = str(tmp_path / "search.keras")
    search.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "compile() was not called" from Keras
        loaded = keras.saving.load_model(path)
    # compiled as saved, with the optimizer's state: the search resumes where it stopped
    assert loaded.compiled and loaded.get_compile_config() == search.get_compile_config()
    assert int(loaded.optimizer.iterations) == int(search.optimizer.iterations) > 0
    for a, b in zip(loaded.optimizer.variables, search.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    saved = loaded.dnas_search
    assert saved["target"] == cb.target and saved["arena_plan"] == "tflm"
    assert saved["budgets"] == {b.metric: b.limit for b in cb.budgets}
    # the calibration sample is not in the file: pass it again
    again = kd.freeze(loaded, calibration_data=x, verbose=0)
    first = kd.freeze(search, verbose=0)
    assert again.dnas_certificate == first.dnas_certificate
    assert again.dnas_certificate["target"] == "nrf52840"
    for a, b in zip(again.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert again.get_compile_config() == first.get_compile_config()  # compiled as the search
    # kd.summary of the frozen model defaults to the target it was certified on
    assert kd.summary(first, memory=None)["target"] == "nrf52840"
    assert kd.summary(search, memory=None)["target"] == "nrf52840"
