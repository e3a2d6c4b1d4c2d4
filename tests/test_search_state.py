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


class TrainingWrapper(keras.Model):
    """A training wrapper around the searchable model (users' own train_step lives here)."""

    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("dnas_first", [True, False])
def test_early_stopping_restores_best_weights_around_the_search_state(dnas_first, wrapped):
    # EarlyStopping(restore_best_weights=True) takes get_weights() while the state is attached
    # and sets them after DNASCallback detached it (or before, in the other order): it raised
    # "set_weights ... length 30, but the layer was expecting 20" at the end of fit. The state
    # layers are attached to the model fitted; a training wrapper's own get_weights counted
    # them ("a weight list of length 15" into a wrapper that has 6 again after fit).
    x, y = _data()
    keras.utils.set_random_seed(1)
    search = kd.prepare(_seed())
    model = TrainingWrapper(search) if wrapped else search
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model(x[:1])
    n_weights = len(model.get_weights())
    cb = kd.DNASCallback("stm32h743", budgets={"params": 200}, verbose=0)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    seen = {}

    def look(epoch, logs):
        seen[epoch] = (len(model.weights), len(model.get_weights()))

    probe = keras.callbacks.LambdaCallback(on_epoch_end=look)
    callbacks = [cb, stop, probe] if dnas_first else [stop, cb, probe]
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    assert len(model.weights) == len(model.get_weights()) == n_weights  # the state is gone
    assert all(total > own == n_weights for total, own in seen.values())  # attached during fit
    assert "get_weights" not in model.__dict__  # the class's own methods again
    best = np.argmin(stop.model.history.history["loss"])
    assert stop.best_epoch == best and len(stop.best_weights) == n_weights
    if dnas_first:  # the last to restore wins: EarlyStopping's weights are the model's
        for w, v in zip(stop.best_weights, model.get_weights(), strict=True):
            np.testing.assert_array_equal(w, v)
    with pytest.raises(ValueError, match="weight list of length 1"):
        model.set_weights([np.zeros(1)])  # a wrapper: Keras' own check, after fit


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


class _Strengths(keras.callbacks.Callback):
    def __init__(self, cb):
        super().__init__()
        self.cb, self.rows = cb, []

    def on_epoch_begin(self, epoch, logs=None):  # the strengths this epoch trains with
        self.rows.append((epoch, [float(v.numpy()) for v in self.cb._strengths]))


@pytest.mark.parametrize("how", ["backup_first", "dnas_first", "checkpoint"])
def test_a_resumed_search_continues_the_interrupted_one(how, tmp_path):
    # The resumed fit's new DNASCallback set its strengths from scratch: bases from the
    # resumed model's loss and costs, boosts back to 1 (BENCHMARKS: 4.9 / 7.6 uninterrupted,
    # 5.9 / 14.6 or 3.1 / 4.8 resumed, by callback order); with BackupAndRestore first, its
    # backup was even taken before the epoch's boosts. Now the progress is saved with the
    # weights (and in the .keras config), and the resumed search is the uninterrupted one.
    x, y = _data()
    seed = _seed()

    def run(callbacks, search=None, **fit):
        if search is None:
            keras.utils.set_random_seed(1)
            search = kd.prepare(seed)
            search.compile(keras.optimizers.Adam(1e-2),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        cb = kd.DNASCallback("stm32h743", budgets={"params": 150}, warmup_epochs=1,
                             restore_best_weights=False, verbose=0)
        rec = _Strengths(cb)
        try:
            search.fit(x, y, epochs=6, batch_size=16, shuffle=False, verbose=0,
                       callbacks=callbacks(cb) + [rec], **fit)
        except KeyboardInterrupt:
            pass
        return search, rec.rows

    straight, rows = run(lambda cb: [cb])
    assert rows[-1][1][0] > rows[2][1][0] > 0 and len(rows) == 6
    if how == "checkpoint":  # the whole model saved each epoch, reloaded, fit from epoch 3
        path = str(tmp_path / "e{epoch}.keras")
        _, first = run(lambda cb: [cb, keras.callbacks.ModelCheckpoint(path), _Interrupt()])
        reloaded = keras.models.load_model(str(tmp_path / "e3.keras"))
        resumed, second = run(lambda cb: [cb], search=reloaded, initial_epoch=3)
    else:
        def callbacks(cb, interrupt):
            backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
            order = [backup, cb] if how == "backup_first" else [cb, backup]
            return order + ([_Interrupt()] if interrupt else [])

        _, first = run(lambda cb: callbacks(cb, True))
        resumed, second = run(lambda cb: callbacks(cb, False))
    assert [r[0] for r in second] == [3, 4, 5]
    for (epoch, strengths), (_, expected) in zip(first + second, rows, strict=True):
        np.testing.assert_allclose(strengths, expected, rtol=1e-6, err_msg=f"epoch {epoch}")
    for a, b in zip(masks.mask_variables(resumed), masks.mask_variables(straight), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert not any(masks.SEARCH_PROGRESS_ATTR in v.path for v in resumed.weights)


class _Score(keras.callbacks.Callback):
    """Listed first: writes a made-up monitor value per epoch into the logs."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]


@pytest.mark.parametrize("how", ["backup_first", "dnas_first", "checkpoint"])
@pytest.mark.parametrize("scores,best,restored", [
    ((5.0, 1.0, 4.0, 3.0, 2.0, 6.0), 1, 4),  # the interrupted fit's epoch 2 stays the best
    ((5.0, 4.0, 4.0, 3.0, 0.5, 6.0), 4, 4),  # the resumed fit finds a better one
])
def test_a_resumed_search_knows_the_best_epoch_before_the_resume(how, scores, best, restored,
                                                                 tmp_path):
    # A resumed fit ranked only its own epochs: the interrupted fit's best feasible epoch was
    # forgotten. Its number and score are now saved with the progress: best_epoch is the
    # whole search's, and when it lies before the resume (its weights are not saved) the
    # callback restores its own best and says which epoch was better.
    x, y = _data()

    def run(extra, search=None, **fit):
        if search is None:
            keras.utils.set_random_seed(1)
            search = kd.prepare(_seed())
            search.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        cb = kd.DNASCallback("stm32h743", budgets={"params": 10_000}, monitor="score",
                             verbose=0)  # every epoch feasible
        try:
            search.fit(x, y, epochs=6, batch_size=32, verbose=0,
                       callbacks=[_Score(scores)] + extra(cb), **fit)
        except KeyboardInterrupt:
            pass
        return search, cb

    if how == "checkpoint":
        path = str(tmp_path / "e{epoch}.keras")
        run(lambda cb: [cb, keras.callbacks.ModelCheckpoint(path), _Interrupt()])
        reloaded = keras.models.load_model(str(tmp_path / "e3.keras"))
        resume = lambda: run(lambda cb: [cb], search=reloaded, initial_epoch=3)  # noqa: E731
    else:
        def callbacks(cb, interrupt):
            backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
            order = [backup, cb] if how == "backup_first" else [cb, backup]
            return order + ([_Interrupt()] if interrupt else [])

        run(lambda cb: callbacks(cb, True))
        resume = lambda: run(lambda cb: callbacks(cb, False))  # noqa: E731
    if best < 3:
        with pytest.warns(UserWarning, match="by 'score' is epoch 2 .score=1., before the "
                                             "search was resumed.*epoch 5 is restored"):
            _, cb = resume()
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            _, cb = resume()
    assert [h["epoch"] for h in cb.history] == [3, 4, 5]
    assert (cb.best_epoch, cb.restored_epoch) == (best, restored)


def test_a_training_wrapper_with_its_own_train_step_is_searched_through():
    # A keras.Model subclass whose train_step wraps the searchable model: DNASCallback refused
    # it ("subclassed model"); it now searches the model wrapped, the penalty reaching the
    # wrapper's loss through `losses`. kd.prepare of a Functional subclass with its own
    # train_step dropped it silently: it now says so and how to keep it.
    x, y = _data()

    class Trainer(TrainingWrapper):
        steps = 0

        def train_step(self, *args):  # (data), or (state, data) on JAX
            self.steps += 1  # traced: counts traces, enough to see it is ours
            return super().train_step(*args)

    search = kd.prepare(_seed())
    trainer = Trainer(search)
    trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = kd.DNASCallback("stm32h743", budgets={"params": 200}, verbose=0)
    history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb]).history
    assert trainer.steps >= 1 and history["dnas/penalty"][-1] > 0
    trainer.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])  # built: locked
    assert history["dnas/params"][-1] == kd.summary(search, memory=None)["params"]
    assert search.dnas_search["budgets"]["params"].limit == 200
    attached = (masks.SEARCH_STATE_ATTR, masks.SEARCH_PROGRESS_ATTR)  # detached after fit
    assert not [v.path for v in trainer.weights if any(a in v.path for a in attached)]
    slim = kd.freeze(search, verbose=0)
    assert slim.dnas_certificate["budgets"][0]["holds"]

    class OwnLoss(Trainer):  # a loss without `self.losses`: the penalty never reaches it
        def train_step(self, data):
            inputs, labels = data
            with tf.GradientTape() as tape:
                loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                    labels, self(inputs, training=True), from_logits=True))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss}

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        trainer = OwnLoss(kd.prepare(_seed()))
        trainer.compile("adam")
        with pytest.warns(UserWarning, match="penalty never reached the loss"):
            trainer.fit(x, y, epochs=1, verbose=0,
                        callbacks=[kd.DNASCallback("stm32h743", budgets={"params": 200})])

    class Pair(keras.Model):
        def __init__(self, a, b):
            super().__init__()
            self.a, self.b = a, b

        def call(self, inputs):
            return self.a(inputs) + self.b(inputs)

    pair = Pair(kd.prepare(_seed()), kd.prepare(_seed()))
    pair.compile("adam", "mse")
    with pytest.raises(ValueError, match="wraps 2 searchable models"):
        pair.fit(x, np.zeros((len(x), 3)), epochs=1, verbose=0,
                 callbacks=[kd.DNASCallback("stm32h743", budgets={"params": 200})])

    class Own(keras.Model):
        def compute_loss(self, *args, **kwargs):
            return super().compute_loss(*args, **kwargs)

    seed = _seed()
    with pytest.warns(UserWarning, match="with its own compute_loss.*wrap it"):
        kd.prepare(Own(seed.inputs, seed.outputs))
