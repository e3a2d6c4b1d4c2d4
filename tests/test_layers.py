"""Keras-style layer contract for the masked layers, plus the JAX backend."""

import importlib.util
import inspect
import textwrap

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.layers.masked import MASKED_OF

from tests import child

# class, constructor args, input shape (no batch)
CASES = [
    (kd.layers.MaskedConv1D, dict(filters=6, kernel_size=3, padding="same"), (10, 3)),
    (kd.layers.MaskedConv2D, dict(filters=6, kernel_size=3, strides=2), (9, 9, 3)),
    (kd.layers.MaskedDense, dict(units=5, activation="relu"), (7,)),
    (kd.layers.MaskedDepthwiseConv2D, dict(kernel_size=3, padding="same"), (6, 6, 4)),
    (kd.layers.MaskedDepthwiseConv1D, dict(kernel_size=3, padding="same"), (8, 4)),
    (kd.layers.MaskedBatchNormalization, dict(momentum=0.9), (5, 4)),
]


@pytest.mark.parametrize("cls", [c[0] for c in CASES])
def test_constructor_signature_and_defaults_match_the_keras_parent(cls):
    parent = {v: k for k, v in MASKED_OF.items()}[cls]
    assert issubclass(cls, parent)
    assert inspect.signature(cls.__init__) == inspect.signature(parent.__init__)
    assert inspect.signature(cls.call).parameters.keys() == \
        inspect.signature(parent.call).parameters.keys()


@pytest.mark.parametrize("cls,kwargs,shape", CASES)
def test_layer_contract(cls, kwargs, shape, tmp_path):
    layer = cls(**kwargs)
    config = layer.get_config()
    again = cls.from_config(config)
    assert again.get_config() == config
    # symbolic call
    x = keras.Input(shape)
    y = layer(x)
    assert layer.built
    # eager call equals the parent with the same weights (masks open)
    parent_cls = {v: k for k, v in MASKED_OF.items()}[cls]
    parent = parent_cls.from_config(config)
    data = np.random.default_rng(0).normal(size=(3,) + shape).astype("float32")
    parent(data)
    parent.set_weights([w for w in layer.get_weights()[: len(parent.weights)]])
    np.testing.assert_allclose(layer(data), parent(data), atol=1e-6)
    # one fit step, and a .keras round trip without custom_objects
    head = keras.layers.Dense(2)(keras.layers.Flatten()(y)) if len(shape) > 1 else \
        keras.layers.Dense(2)(y)
    model = keras.Model(x, head)
    model.compile("adam", "mse")
    hist = model.fit(data, np.zeros((3, 2)), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    if hasattr(layer, "dnas_alpha"):  # a closed channel must survive the round trip
        layer.dnas_alpha.assign(np.linspace(0.1, 1.0, layer.dnas_alpha.shape[0]))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[1]) is cls
    if hasattr(layer, "dnas_alpha"):
        np.testing.assert_array_equal(loaded.layers[1].dnas_alpha.numpy(), layer.dnas_alpha.numpy())
    np.testing.assert_allclose(loaded(data), model(data), atol=1e-6)


def test_defining_layer_masks_its_output_and_input():
    layer = kd.layers.MaskedDense(4, use_bias=True, bias_initializer="ones")
    data = np.ones((2, 3), "float32")
    layer(data)
    layer.dnas_alpha.assign([1.0, 0.0, 1.0, 0.0])
    out = np.asarray(layer(data))
    assert (out[:, [1, 3]] == 0).all() and (out[:, [0, 2]] != 0).all()


def test_pruned_channels_are_exactly_zero_after_batchnorm():
    from tests import toys

    search = kd.prepare(toys.randomize_bn(toys.plain_cnn()))
    search.get_layer("c1").dnas_alpha.assign([1, 0, 1, 0, 1, 0, 1, 0])
    probe = keras.Model(search.inputs, search.get_layer("bn1").output)
    out = np.asarray(probe(toys.sample(search)))
    assert (out[..., 1::2] == 0).all()
    assert (np.abs(out[..., 0::2]).sum(axis=(0, 1, 2)) > 0).all()


JAX_SCRIPT = textwrap.dedent(
    """
    import numpy as np, keras, keras_dnas as kd
    from tests import toys
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    model = toys.conv1d()  # residual Add, BN and masks; the smallest model that has them
    search = kd.prepare(model)
    x = toys.sample(model, n=16)
    np.testing.assert_allclose(search(x), model(x), atol=1e-5)
    y = np.random.default_rng(0).integers(0, 4, 16)
    search.compile("adam", "sparse_categorical_crossentropy")
    before = [v.numpy().copy() for v in kd.masks.mask_variables(search)]
    hist = search.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    after = [v.numpy() for v in kd.masks.mask_variables(search)]
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "masks did not train"
    toys.close_random_masks(search)
    slim = kd.freeze(search)
    np.testing.assert_allclose(slim(x), search(x), atol=1e-5)
    print("JAX OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_masked_models_train_and_freeze_under_jax():
    proc = child.run(JAX_SCRIPT, "jax", timeout=300)  # the session's JAX child
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX OK" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Gate folding: gates multiplied into kernels / biases / BN scale must compute what gating the
# activations computes (the unfolded path is what runs inside a stateless scope).

FOLD_TOYS = ["plain_cnn", "residual", "depthwise_separable", "concat_branch", "flatten_dense",
             "conv1d", "sequential_mlp"]


def _unfolded(monkeypatch):
    from keras_dnas.layers import masked

    monkeypatch.setattr(masked, "_in_stateless_scope", lambda: True)


def _graded_masks(search, seed):
    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(search):  # about half closed, open values not all 1
        v.assign(np.where(rng.random(v.shape) < 0.5, rng.uniform(0.6, 1.4, v.shape), 0.2))


@pytest.mark.parametrize("name", FOLD_TOYS)
def test_folded_gates_equal_activation_gates(name, monkeypatch):
    import tensorflow as tf
    from tests import toys

    keras.utils.set_random_seed(0)
    model = toys.randomize_bn(getattr(toys, name)())
    search = kd.prepare(model)
    _graded_masks(search, 1)
    x = tf.constant(toys.sample(search, n=8))
    variables = search.trainable_variables
    for training in (True, False):
        results = []
        for unfolded in (False, True):
            stats = [v.numpy() for v in search.non_trainable_variables]
            with monkeypatch.context() as m:
                if unfolded:
                    _unfolded(m)
                with tf.GradientTape() as tape:
                    out = search(x, training=training)
                    loss = tf.reduce_sum(tf.square(out - 0.3))
                grads = tape.gradient(loss, variables)
            results.append((out.numpy(), grads,
                            [v.numpy() for v in search.non_trainable_variables]))
            for v, value in zip(search.non_trainable_variables, stats):
                v.assign(value)
        (out_f, g_f, s_f), (out_u, g_u, s_u) = results
        np.testing.assert_array_equal(out_f, out_u)
        for v, a, b in zip(variables, g_f, g_u):
            assert (a is None) == (b is None), v.path
            if a is None:
                continue
            if v.name == kd.masks.ALPHA_NAME:  # same sum, another order
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
            else:
                np.testing.assert_array_equal(a, b, err_msg=v.path)
        for a, b in zip(s_f, s_u):
            np.testing.assert_array_equal(a, b)
        if training and any(isinstance(layer, keras.layers.BatchNormalization)
                             for layer in search.layers):
            assert any(not np.array_equal(a, b) for a, b in zip(s_f, stats)), \
                "BN moving statistics were not updated"


def test_folded_gates_train_like_activation_gates_in_fit(monkeypatch):
    """Compiled ``fit`` (graph mode): same weights, masks and BN statistics either way."""
    from tests import toys

    def train(unfolded):
        keras.utils.set_random_seed(0)
        search = kd.prepare(toys.randomize_bn(toys.residual()))
        _graded_masks(search, 2)
        x = toys.sample(search, n=32)
        y = np.random.default_rng(0).integers(0, 3, 32)
        search.compile("adam", "sparse_categorical_crossentropy")
        with monkeypatch.context() as m:
            if unfolded:
                _unfolded(m)
            search.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
        return search

    folded, unfolded = train(False), train(True)
    before = kd.prepare(toys.randomize_bn(toys.residual()))
    moved = 0
    for a, b, c in zip(folded.variables, unfolded.variables, before.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
        moved += not np.allclose(a.numpy(), c.numpy())
    assert moved > len(folded.trainable_variables) // 2  # training did change the weights
