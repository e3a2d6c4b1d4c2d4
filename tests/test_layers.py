"""Keras-style layer contract for the masked layers, plus the JAX backend."""

import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.layers.masked import MASKED_OF

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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX OK" in proc.stdout
