"""prepare() and freeze() invariants (DESIGN.md invariants 1, 2 and 5)."""

import textwrap
import warnings

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import zoo
from keras_dnas.freeze import kept_channels

from tests import child, toys

# Invariants of the structure and of inference outputs against the masked model, which
# keeps its BN statistics: freeze must not recalibrate here, so its warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:keras_dnas.freeze. closing channels:UserWarning")

def positional_joins():
    """Layers and keras.ops that move positions, not channels (robustness round 2): Permute
    with the channel axis kept last, Concatenate along rows / columns (a join: channel c of
    each input is channel c of the output), keras.ops.concatenate on the channel axis and on
    a spatial one, Resizing and CenterCrop inside the network."""
    L = keras.layers
    x = keras.Input((12, 12, 3))
    h = L.BatchNormalization(name="bn0")(L.Conv2D(8, 3, padding="same", name="c0")(x))
    h = L.Permute((2, 1, 3), name="swap_hw")(L.ReLU()(h))
    a = L.Conv2D(6, 3, padding="same", name="ca")(h)
    b = L.Conv2D(6, 1, name="cb")(h)
    rows = L.Concatenate(axis=1, name="rows")([a, b])                      # 24 x 12 x 6
    cols = keras.ops.concatenate([a, b], axis=2)                            # 12 x 24 x 6
    chans = keras.ops.concatenate([L.Conv2D(4, 1, name="cc")(h), a], axis=-1)  # 12 x 12 x 10
    rows = L.Resizing(12, 12, name="resize")(rows)
    cols = L.CenterCrop(12, 12, name="crop")(cols)
    h = L.Conv2D(8, 3, padding="same", name="c1")(L.Add()([rows, cols]))
    h = L.Concatenate()([h, L.Conv2D(5, 1, name="c2")(chans)])
    return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))


def tiny_unet():
    """A U-Net's decoder: Conv2DTranspose and Conv1DTranspose (searched since robustness
    round 2), skip Concatenates, bilinear and nearest up-sampling, per-pixel softmax."""
    L = keras.layers
    x = keras.Input((16, 16, 3))
    c1 = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="e1")(x)))
    c2 = L.Conv2D(12, 3, padding="same", activation="relu", name="e2")(L.MaxPooling2D()(c1))
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="mid")(L.MaxPooling2D()(c2))
    u2 = L.Conv2DTranspose(10, 2, strides=2, name="up2")(b)
    u2 = L.Conv2D(10, 3, padding="same", activation="relu", name="d2")(
        L.Concatenate()([u2, c2]))
    u1 = L.Concatenate()([L.UpSampling2D(interpolation="bilinear")(u2),
                          L.Conv2DTranspose(6, 3, strides=2, padding="same", use_bias=False,
                                            name="up1")(u2), c1])
    u1 = L.UpSampling2D(interpolation="nearest")(
        L.Conv2D(8, 3, padding="same", activation="relu", name="d1")(u1))
    t = L.Reshape((32 * 32, 8))(u1)
    t = L.Conv1DTranspose(5, 3, padding="same", name="up_t")(t)
    return keras.Model(x, L.Conv1D(3, 1, activation="softmax", name="pixels")(t))


MODELS = dict(toys.TOYS)
MODELS.update({
    "positional_joins": positional_joins,
    "tiny_unet": tiny_unet,
    "resnet8": zoo.resnet8,
    "ds_cnn": zoo.ds_cnn,
    "mobilenet_v1": zoo.mobilenet_v1,
    "fc_autoencoder": zoo.fc_autoencoder,
    "tcn": zoo.tcn,
})


def _weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prepare_with_open_masks_reproduces_the_model(name):
    model = toys.randomize_bn(MODELS[name]())
    before = _weights(model)
    search = kd.prepare(model)
    x = toys.sample(model)
    np.testing.assert_allclose(search(x, training=False), model(x, training=False), atol=1e-5)
    assert isinstance(search, kd.SearchableModel)
    assert any(kd.layers.is_masked(layer) for layer in search.layers)
    # the search model owns its weights: changing them leaves the input untouched
    for v in search.weights:
        v.assign(v.numpy() * 0.5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def predicted_params(plan, keep, model):
    """Parameter count of the frozen model, from the masks alone."""
    total, seen = 0, set()
    for info in plan.layers:
        if info.name in seen:
            continue
        seen.add(info.name)
        if info.class_name.startswith("keras.ops."):
            continue  # an operation has no weights
        layer = model.get_layer(info.name)
        weights = [w for w in layer.weights if w.name != kd.masks.ALPHA_NAME]
        if not weights:
            continue
        cin = int(kd.masks.hard_view_mask([keep[g] for g in info.inputs[0].segments],
                                          info.inputs[0].repeat).sum())
        cout = int(kd.masks.hard_view_mask([keep[g] for g in info.output.segments],
                                           info.output.repeat).sum())
        geo, bias = info.geometry, int(info.geometry["use_bias"])
        if info.role == "opaque":
            total += sum(int(np.prod(w.shape)) for w in weights)
        elif info.op in ("conv", "dense", "transpose_conv"):
            total += geo["taps"] * cin * cout + bias * cout
        elif info.op == "depthwise":
            total += geo["taps"] * cout + bias * cout
        elif info.op == "batchnorm":
            total += len(weights) * cout
        else:
            raise AssertionError(f"unexpected weights in {info.name}")
    return total


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_freeze_equals_masked_model_and_params_follow_the_masks(name, seed):
    model = toys.randomize_bn(MODELS[name](), seed)
    search = kd.prepare(model)
    toys.close_random_masks(search, seed=seed, keep=0.4)
    x = toys.sample(model, seed=seed)
    slim = kd.freeze(search)
    np.testing.assert_allclose(slim(x, training=False), search(x, training=False), atol=1e-5)
    plan, keep = kept_channels(search)
    assert slim.count_params() == predicted_params(plan, keep, search)
    assert slim.count_params() < model.count_params()
    for layer in slim.layers:  # standard Keras layers only
        assert type(layer).__module__.startswith("keras."), type(layer)
    assert not kd.masks.mask_variables(slim, trainable_only=False)



def test_layers_that_move_positions_leave_every_group_searchable():
    # Permute((2, 1, 3)), Concatenate(axis=1), keras.ops.concatenate (any axis but the batch),
    # Resizing and CenterCrop had no channel rule: every conv around them was kept whole
    plan = kd.graph.analyze(positional_joins())
    frozen = {name for g in plan.groups if g.frozen for name in g.defined_by}
    assert frozen == {"head"}, [(g.defined_by, g.reason) for g in plan.groups if g.frozen]
    assert {"c0", "ca", "cb", "cc", "c1", "c2"} <= {
        name for g in plan.searchable_groups() for name in g.defined_by}
    L = keras.layers
    x = keras.Input((6, 6, 4))
    h = L.Conv2D(4, 1, name="c")(x)
    for moving in (L.Permute((3, 1, 2)), L.Concatenate(axis=0)):
        y = moving(h) if isinstance(moving, L.Permute) else moving([h, h])
        plan = kd.graph.analyze(keras.Model(x, L.Dense(2)(L.Flatten()(y))))
        assert all(g.frozen for g in plan.groups if "c" in g.defined_by)


def test_transposed_convolutions_are_searched(tmp_path):
    # Conv2DTranspose / Conv1DTranspose had no channel rule: a U-Net's decoder, and every conv
    # whose channels reach one through a skip Concatenate, was kept whole
    search = kd.prepare(tiny_unet())
    toys.close_random_masks(search, seed=2)
    search.save(tmp_path / "unet.keras")  # masks saved by name, as a separable conv's
    loaded = keras.models.load_model(tmp_path / "unet.keras")
    x = toys.sample(search)
    np.testing.assert_allclose(loaded(x), search(x), atol=1e-6)
    assert {"up2", "up1", "up_t"} <= {layer.name for layer in search.layers
                                      if kd.layers.is_masked(layer)}
    plan = kd.graph.analyze(tiny_unet())
    frozen = {name for g in plan.groups if g.frozen for name in g.defined_by}
    assert frozen == {"pixels"}, [(g.defined_by, g.reason) for g in plan.groups if g.frozen]


def test_freeze_keeps_the_weights_of_layers_whose_sub_layers_share_weight_names():
    # a Bidirectional's two RNNs both have a `kernel`, MultiHeadAttention's four projections
    # too: each must get its own values back, not the last one of that name
    L = keras.layers
    x = keras.Input((6, 4))
    h = L.Bidirectional(L.SimpleRNN(3, return_sequences=True), name="bi")(x)
    h = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(h, h)
    h = L.Dense(8, activation="relu")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(x, L.Dense(2)(h))
    search = kd.prepare(model)
    toys.close_random_masks(search, seed=0, keep=0.5)
    slim = kd.freeze(search, budgets={})
    xs = toys.sample(model)
    np.testing.assert_allclose(slim(xs), search(xs), atol=1e-5)
    for name in ("bi", "mha"):
        for a, b in zip(search.get_layer(name).weights, slim.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

def test_freeze_keeps_at_least_one_channel_per_group():
    search = kd.prepare(toys.residual())
    for v in kd.masks.mask_variables(search):
        v.assign(np.full(v.shape, 0.1, "float32"))
    slim = kd.freeze(search)
    assert slim.get_layer("stem").filters == 1 and slim.get_layer("b1").filters == 1
    x = toys.sample(search)
    np.testing.assert_allclose(slim(x), search(x), atol=1e-5)


def test_prepare_accepts_sequential_and_excludes():
    model = toys.sequential_mlp()
    search = kd.prepare(model, exclude=[model.layers[0].name])
    names = [type(layer).__name__ for layer in search.layers[1:]]
    assert names == ["Dense", "MaskedDense", "MaskedDense"]
    x = toys.sample(model)
    np.testing.assert_allclose(search(x), model(x), atol=1e-6)


def test_lambda_is_kept_and_warned_about():
    x = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, name="a")(x)
    b = keras.layers.Lambda(lambda t: t * 2.0, name="double")(a)
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(keras.layers.Conv2D(3, 1)(b)))
    model = keras.Model(x, y)
    with pytest.warns(UserWarning, match=r"\['a'\] are frozen: touches layer 'double'"):
        search = kd.prepare(model)
    assert type(search.get_layer("a")) is keras.layers.Conv2D
    xs = toys.sample(model)
    np.testing.assert_allclose(search(xs), model(xs), atol=1e-6)


def test_a_lambda_calling_a_module_function_survives_prepare_and_freeze():
    # `lambda t: keras.activations.gelu(...)` rebuilt from its bytecode lost the module globals
    # it reads (`keras`): Keras could not infer the Lambda's output shape and kd.prepare raised
    # NotImplementedError from inside clone_model
    x = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, name="a")(x)
    b = keras.layers.Lambda(lambda t: keras.activations.gelu(t, approximate=True), name="g")(a)
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(keras.layers.Conv2D(3, 1)(b)))
    model = keras.Model(x, y)
    with pytest.warns(UserWarning, match=r"touches layer 'g'"):
        search = kd.prepare(model)
    xs = toys.sample(model)
    np.testing.assert_allclose(search(xs), model(xs), atol=1e-6)
    np.testing.assert_allclose(kd.freeze(search, budgets={}, verbose=0)(xs), model(xs), atol=1e-6)


class _UnnamedScale(keras.layers.Layer):
    """A per-channel scale whose weight has no name (as ConvNeXt's LayerScale): Keras names
    it "variable_N" from a global counter, so the clone's weight has another name."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gamma


def test_freeze_copies_a_weight_added_without_a_name():
    x = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, name="a")(x)
    b = _UnnamedScale(name="scale")(a)
    y = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(keras.layers.Conv2D(3, 1)(b)))
    model = keras.Model(x, y)
    gamma = np.random.default_rng(0).uniform(0.5, 2.0, 4).astype("float32")
    model.get_layer("scale").gamma.assign(gamma)
    with pytest.warns(UserWarning, match=r"touches layer 'scale'"):  # no channel rule: frozen
        search = kd.prepare(model)
    frozen = kd.freeze(search, budgets={}, verbose=0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(frozen.get_layer("scale").weights[0]), gamma)
    xs = toys.sample(model)
    np.testing.assert_allclose(frozen(xs), search(xs), atol=1e-6)
    np.testing.assert_allclose(frozen(xs), model(xs), atol=1e-6)


def test_nested_model_is_flattened_and_excluding_it_leaves_nothing_to_search():
    # nested models used to need exclude=; kd.prepare now inlines them (tests/test_nested.py)
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(6)(inner_in), name="inner")
    x = keras.Input((4,))
    y = keras.layers.Dense(2)(inner(keras.layers.Dense(8, name="pre")(x)))
    model = keras.Model(x, y)
    search = kd.prepare(model)
    assert kd.layers.is_masked(search.get_layer("pre"))
    xs = toys.sample(model)
    np.testing.assert_allclose(search(xs), model(xs), atol=1e-6)
    with pytest.raises(ValueError, match=r"no searchable channel group(.|\n)*excluded by the user"):
        kd.prepare(model, exclude=["inner"])


def test_searchable_model_round_trips_with_ties(tmp_path):
    search = kd.prepare(toys.randomize_bn(toys.residual()))
    toys.close_random_masks(search, seed=3)
    path = tmp_path / "search.keras"
    search.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kd.SearchableModel)
    x = toys.sample(search)
    np.testing.assert_allclose(loaded(x), search(x), atol=1e-6)
    assert [v.path for v in kd.masks.mask_variables(loaded)] == \
        [v.path for v in kd.masks.mask_variables(search)]
    np.testing.assert_allclose(kd.freeze(loaded)(x), kd.freeze(search)(x), atol=1e-6)



def test_a_reloaded_search_is_compiled_as_saved_with_its_optimizer_state(tmp_path):
    # Keras skips, with a warning, the saved compile of a model that overrides `compile`
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    search = kd.prepare(model)
    search.compile(keras.optimizers.Adam(2e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 3, 32)
    search.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "search.keras"
    search.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.models.load_model(path)
    assert loaded.compiled and isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert loaded.get_compile_config() == search.get_compile_config()
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for a, b in zip(loaded.optimizer.variables, search.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), search.evaluate(x, y, verbose=0),
                               rtol=1e-6)

RELOAD = textwrap.dedent(
    """
    import sys, numpy as np, keras
    model = keras.models.load_model(sys.argv[1])   # no custom_objects, keras_dnas not imported
    assert "keras_dnas" not in sys.modules
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(model(x)))
    """
)


def test_frozen_model_reloads_in_a_fresh_process_without_custom_objects(tmp_path):
    search = kd.prepare(toys.randomize_bn(toys.concat_branch()))
    toys.close_random_masks(search, seed=5)
    slim = kd.freeze(search)
    slim.save(tmp_path / "slim.keras")
    x = toys.sample(search)
    np.save(tmp_path / "x.npy", x)
    # the session's TensorFlow child that never imports keras_dnas
    proc = child.run(RELOAD, plain=True, argv=[tmp_path / "slim.keras", tmp_path / "x.npy",
                                               tmp_path / "y.npy"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), slim(x), atol=1e-6)
