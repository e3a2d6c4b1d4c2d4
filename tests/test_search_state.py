"""The search's state: model variables during fit, no optimizer patching, masks saved by name."""

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import masks

L = keras.layers


def _seed():
    inp = keras.Input((12,))
    h = L.Dense(16, activation="relu", name="h1")(inp)
    h = L.Dense(16, activation="relu", name="h2")(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, (x[:, :3].argmax(1)).astype("int32")


def _search(multiplier, seed_model, probe=None):
    x, y = _data()
    keras.utils.set_random_seed(1)
    search = kd.prepare(seed_model)
    search.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [v.numpy().copy() for v in masks.mask_variables(search)]
    cb = kd.DNASCallback("stm32h743", budgets={"params": 200}, mask_lr_multiplier=multiplier,
                         verbose=0)
    search.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
               callbacks=[cb] + ([probe] if probe else []))
    moved = [v.numpy() - b for v, b in zip(masks.mask_variables(search), before)]
    return search, cb, np.concatenate(moved)


def test_mask_learning_rate_scales_without_touching_the_optimizer():
    seed_model = _seed()
    seen = {}

    def look(epoch, logs):
        model = probe.model
        seen["patched"] = "update_step" in model.optimizer.__dict__
        seen["state"] = sorted(v.name for v in model.non_trainable_variables
                               if v.path.startswith("dnas_search_state/"))

    probe = keras.callbacks.LambdaCallback(on_epoch_end=look)
    n_before = len(kd.prepare(seed_model).weights)
    search, cb, slow = _search(1.0, seed_model)
    search_fast, _, fast = _search(10.0, seed_model, probe)
    # Adam's step does not depend on the gradient's scale: same raw steps, 10x the mask's move
    assert np.abs(slow).max() > 0
    np.testing.assert_allclose(fast, 10.0 * slow, rtol=5e-3, atol=1e-6)  # up to Adam's epsilon
    # during fit the state is the model's (the compiled step reads it), the optimizer unpatched
    assert not seen["patched"]
    assert "grad_scale" in seen["state"] and "penalty_sum" in seen["state"]
    assert any(name.startswith("strength_") for name in seen["state"])
    # afterwards the model has its own weights only, and no search hooks on its layers
    assert len(search_fast.weights) == n_before
    assert not any(masks.HOOKS_ATTR in layer.__dict__ for layer in search_fast.layers)
    assert not search_fast.losses


def test_masks_are_saved_by_name_and_old_positional_files_load(tmp_path):
    inp = keras.Input((6, 6, 3))
    h = kd.layers.MaskedSeparableConv2D(4, 3, name="sep")(inp)
    h = L.Flatten()(h)
    model = kd.SearchableModel(inp, kd.layers.MaskedDense(2, name="dense")(h))
    model.get_layer("dense").dnas_alpha.assign([0.2, 0.9])
    model.get_layer("sep").dnas_alpha.assign([0.9, 0.1, 0.8, 0.7])
    for name in ("dense", "sep"):
        layer = model.get_layer(name)
        store = {}
        layer.save_own_variables(store)
        assert masks.ALPHA_NAME in store
        np.testing.assert_array_equal(np.asarray(store[masks.ALPHA_NAME]),
                                      layer.dnas_alpha.numpy())
        # the layout files had before the mask was named: every variable by position
        old = {str(i): v.numpy() for i, v in enumerate(layer.weights)}
        if name == "dense":
            old = {"0": layer.kernel.numpy(), "1": layer.bias.numpy(),
                   "2": layer.dnas_alpha.numpy()}
        expected = [v.numpy().copy() for v in layer.weights]
        for v in layer.weights:
            v.assign(np.zeros(v.shape, v.dtype))
        layer.load_own_variables(old)
        for v, e in zip(layer.weights, expected):
            np.testing.assert_array_equal(v.numpy(), e)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_reloaded_search_is_compiled_as_saved_without_a_warning(tmp_path):
    # `SearchableModel.compile` is overridden (weight-decay exclusion of the masks), so Keras'
    # loader skipped its compile config with a warning: a reloaded search was not compiled, and
    # `kd.freeze` of it gave an uncompiled model.
    import warnings

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    search = kd.prepare(keras.Model(inp, L.Dense(3)(L.Flatten()(h))))
    search.compile(keras.optimizers.AdamW(2e-3, weight_decay=0.01), "mse", metrics=["mae"])
    x, y = np.ones((8, 6, 6, 3), "float32"), np.zeros((8, 3), "float32")
    search.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "search.keras")
    search.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    assert not [w for w in caught if "compile()" in str(w.message)]
    assert loaded.compiled and isinstance(loaded.optimizer, keras.optimizers.AdamW)
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(2e-3)
    assert int(loaded.optimizer.iterations.numpy()) == 1  # its state loaded too
    assert loaded.get_compile_config() == search.get_compile_config()
    # the masks stay out of weight decay, as after `compile`
    conv = loaded.get_layer("conv")
    assert not loaded.optimizer._use_weight_decay(conv.dnas_alpha)
    assert loaded.optimizer._use_weight_decay(conv.kernel)
    assert kd.freeze(loaded, budgets={}).compiled


@pytest.mark.parametrize("dnas_first", [True, False])
def test_early_stopping_restores_best_weights_around_the_search_state(dnas_first):
    # EarlyStopping(restore_best_weights=True) takes get_weights() while the state is attached
    # and sets them after DNASCallback detached it (or before, in the other order): it raised
    # "set_weights ... length 30, but the layer was expecting 20" at the end of fit.
    x, y = _data()
    keras.utils.set_random_seed(1)
    search = kd.prepare(_seed())
    search.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n_weights = len(search.get_weights())
    cb = kd.DNASCallback("stm32h743", budgets={"params": 200}, verbose=0)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    seen = {}

    def look(epoch, logs):
        seen[epoch] = (len(search.weights), len(search.get_weights()))

    probe = keras.callbacks.LambdaCallback(on_epoch_end=look)
    callbacks = [cb, stop, probe] if dnas_first else [stop, cb, probe]
    search.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    assert len(search.weights) == n_weights  # the state is gone after fit
    assert all(total > own == n_weights for total, own in seen.values())  # attached during fit
    best = np.argmin(stop.model.history.history["loss"])
    assert stop.best_epoch == best and stop.best_weights is not None
    if dnas_first:  # the last to restore wins: EarlyStopping's weights are the model's
        for w, v in zip(stop.best_weights, search.get_weights()):
            np.testing.assert_array_equal(w, v)
    with pytest.raises(ValueError, match="weight list of length 1"):
        search.set_weights([np.zeros(1)])
