"""Tests of keras_dnas.zoo: the reference models match the published MLPerf Tiny counts."""

import doctest
import functools
import importlib
import math
import re

import numpy as np
import pytest

import keras
from keras_dnas import zoo

L = keras.layers

# ---------------------------------------------------------------------------------------------------
# An independent counter: walks the layers and derives every count from the layer configuration and the
# output shapes (not from the zoo's code). Kernel variables are only used as a cross-check.
# ---------------------------------------------------------------------------------------------------

ALLOWED_LAYERS = (
    L.InputLayer,
    L.Conv1D,
    L.Conv2D,
    L.DepthwiseConv2D,
    L.Dense,
    L.BatchNormalization,
    L.ReLU,
    L.Activation,
    L.Add,
    L.AveragePooling2D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.Flatten,
    L.Dropout,
)


def _positions(shape):
    """Number of output positions: product of all dims between batch and channels (1 for Dense)."""
    return math.prod(int(d) for d in shape[1:-1])


def _producer_of(model):
    return {id(layer.output): layer for layer in model.layers}


def _folded_into(model):
    """ids of layers whose output feeds a BatchNormalization (the BN folds into them in TFLite)."""
    producer = _producer_of(model)
    return {
        id(producer[id(layer.input)])
        for layer in model.layers
        if isinstance(layer, L.BatchNormalization)
    }


def count(model):
    """Kernel weights, MACs and biases-after-BN-folding of the conv / depthwise / dense layers."""
    folded = _folded_into(model)
    weights = macs = biases = 0
    for layer in model.layers:
        if not isinstance(layer, (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)):
            continue
        config = layer.get_config()
        cin = int(layer.input.shape[-1])
        if isinstance(layer, L.DepthwiseConv2D):
            cout = cin * config["depth_multiplier"]
            n = math.prod(config["kernel_size"]) * cout
        elif isinstance(layer, (L.Conv1D, L.Conv2D)):
            cout = config["filters"]
            n = math.prod(config["kernel_size"]) * cin * cout // config["groups"]
        else:
            cout = config["units"]
            n = cin * cout
        assert n == math.prod(layer.kernel.shape), layer.name  # cross-check against the variable
        weights += n
        macs += n * _positions(layer.output.shape)
        if config["use_bias"] or id(layer) in folded:
            biases += cout
    return {"weights": weights, "macs": macs, "biases": biases}


# Published MLPerf Tiny reference counts (kernels of conv/dense; MACs; weights + biases of the
# reference int8 .tflite, where every BatchNormalization is folded into the layer before it).
PUBLISHED = {
    "resnet8": {"weights": 77_360, "macs": 12_501_632, "biases": 346},
    "ds_cnn": {"weights": 22_016, "macs": 2_656_768, "biases": 588},
    "mobilenet_v1": {"weights": 208_112, "macs": 7_489_664, "biases": 2_738},
    "fc_autoencoder": {"weights": 264_192, "macs": 264_192, "biases": 1_672},
    # Not published: the zoo's own TCN design, kept here as a regression value.
    "tcn": {"weights": 14_816, "macs": 1_872_064, "biases": 246},
}

BUILDERS = {name: getattr(zoo, name) for name in PUBLISHED}

# (input shape without batch, output shape without batch) of the default models.
DEFAULT_IO = {
    "resnet8": ((32, 32, 3), (10,)),
    "ds_cnn": ((49, 10, 1), (12,)),
    "mobilenet_v1": ((96, 96, 3), (2,)),
    "fc_autoencoder": ((640,), (640,)),
    "tcn": ((128, 6), (6,)),
}


@functools.lru_cache(maxsize=None)
def default_model(name):
    """Each default model is built once; tests using it must not modify it."""
    keras.utils.set_random_seed(0)
    return BUILDERS[name]()


def forward(model, batch=2, seed=0):
    x = np.random.default_rng(seed).standard_normal((batch,) + tuple(model.input_shape[1:]))
    return keras.ops.convert_to_numpy(model(x.astype("float32"), training=False))


# ---------------------------------------------------------------------------------------------------
# Published counts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counts_match_published_reference(name):
    assert count(default_model(name)) == PUBLISHED[name]


def test_counter_oracle_on_a_hand_counted_model():
    # 3x3 conv 2->4 on 5x5 "same": 72 weights x 25 positions; depthwise 3x3 x 4 at stride 2 (3x3 out):
    # 36 x 9; dense 4->3 after a global pool: 12. The conv's bias comes from the folded BN.
    x = keras.Input((5, 5, 2))
    h = L.Conv2D(4, 3, padding="same", use_bias=False)(x)
    h = L.BatchNormalization()(h)
    h = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(h)
    h = L.GlobalAveragePooling2D()(h)
    y = L.Dense(3)(h)
    result = count(keras.Model(x, y))
    assert result == {"weights": 72 + 36 + 12, "macs": 72 * 25 + 36 * 9 + 12, "biases": 4 + 3}


# ---------------------------------------------------------------------------------------------------
# Structure: standard layers, separate BN / ReLU, channels last, biases only where nothing folds in
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_structure(name):
    model = default_model(name)
    assert isinstance(model, keras.Model) and model.name == name
    assert type(model).__name__ == "Functional"  # a plain functional model, no subclass
    producer = _producer_of(model)
    folded = _folded_into(model)
    for layer in model.layers:
        assert isinstance(layer, ALLOWED_LAYERS), f"{layer.name}: {type(layer).__name__}"
        config = layer.get_config()
        if "data_format" in config:
            assert config["data_format"] == "channels_last", layer.name
        if isinstance(layer, (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)):
            assert config["activation"] == "linear", layer.name  # activations are separate layers
            # A layer followed by BN has no own bias; a layer without BN keeps it.
            assert config["use_bias"] is (id(layer) not in folded), layer.name
        if isinstance(layer, L.BatchNormalization):
            # Every BN sits directly after a weight layer, so the converter can fold it.
            assert isinstance(producer[id(layer.input)], (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_rebuilds_from_config_without_custom_objects(name):
    model = default_model(name)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert count(clone) == PUBLISHED[name]


def test_resnet8_residual_layout():
    model = default_model("resnet8")
    producer = _producer_of(model)
    adds = [layer for layer in model.layers if isinstance(layer, L.Add)]
    shortcut_kinds = []
    for add in adds:
        sources = [producer[id(t)] for t in add.input]
        shortcut_kinds.append(sorted(type(s).__name__ for s in sources))
    # stack 1: identity (from a ReLU) + main path (BN); stacks 2, 3: 1x1 projection + main path.
    assert shortcut_kinds == [
        ["BatchNormalization", "ReLU"],
        ["BatchNormalization", "Conv2D"],
        ["BatchNormalization", "Conv2D"],
    ]
    projections = [model.get_layer(f"stack{i}_shortcut") for i in (2, 3)]
    assert [(p.kernel_size, p.strides, p.filters) for p in projections] == [
        ((1, 1), (2, 2), 32),
        ((1, 1), (2, 2), 64),
    ]


def test_tcn_dilations_and_lengths():
    model = default_model("tcn")
    convs = [layer for layer in model.layers if isinstance(layer, L.Conv1D) and layer.kernel_size == (3,)]
    assert [c.dilation_rate[0] for c in convs] == [1, 1, 1, 2, 2, 4, 4, 8, 8]
    assert {c.output.shape[1] for c in convs} == {128}  # no striding, full time resolution
    assert sum(isinstance(layer, L.Add) for layer in model.layers) == 4


# ---------------------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_forward_pass(name):
    model = default_model(name)
    in_shape, out_shape = DEFAULT_IO[name]
    assert model.input_shape == (None,) + in_shape
    y = forward(model)
    assert y.shape == (2,) + out_shape
    assert np.all(np.isfinite(y))
    if name != "fc_autoencoder":  # classifiers end in softmax
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Builder arguments
# ---------------------------------------------------------------------------------------------------


def test_resnet8_arguments_scale_the_counts():
    model = zoo.resnet8(input_shape=(16, 16, 1), num_classes=5, classifier_activation=None)
    assert forward(model).shape == (2, 5)
    # Stem: 3x3 x cin x 16; classifier 64 x classes; every conv sees a quarter of the positions.
    stem_macs_ref = 432 * 32 * 32
    conv_macs_ref = 12_501_632 - 640 - stem_macs_ref
    assert count(model) == {
        "weights": 77_360 - 432 + 144 - 640 + 64 * 5,
        "macs": conv_macs_ref // 4 + 144 * 16 * 16 + 64 * 5,
        "biases": 346 - 10 + 5,
    }
    assert "predictions" not in [layer.name for layer in model.layers]  # logits


def test_ds_cnn_arguments():
    model = zoo.ds_cnn(input_shape=(98, 40, 1), num_classes=35, name="kws35")
    assert model.name == "kws35"
    assert forward(model).shape == (2, 35)
    assert model.get_layer("stem_conv").output.shape[1:3] == (49, 20)
    assert model.get_layer("avg_pool").output.shape[1:3] == (1, 1)  # pools the whole map
    assert tuple(model.get_layer("classifier").kernel.shape) == (64, 35)


def test_mobilenet_v1_alpha():
    model = zoo.mobilenet_v1(input_shape=(64, 64, 1), num_classes=3, alpha=0.5)
    assert forward(model).shape == (2, 3)
    widths = [layer.filters for layer in model.layers if isinstance(layer, L.Conv2D)]
    assert widths == [16, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512]
    assert model.get_layer("block13_pw").output.shape[1:3] == (2, 2)  # 64 / 32


def test_fc_autoencoder_arguments():
    model = zoo.fc_autoencoder(input_dim=128, hidden_units=64, bottleneck_units=4)
    assert forward(model).shape == (2, 128)
    n = 128 * 64 + 3 * 64 * 64 + 64 * 4 + 4 * 64 + 3 * 64 * 64 + 64 * 128
    assert count(model) == {"weights": n, "macs": n, "biases": 8 * 64 + 4 + 128}


def test_tcn_arguments():
    model = zoo.tcn(
        input_shape=(64, 3),
        num_classes=4,
        filters=(8, 8),
        dilations=(1, 2),
        kernel_size=5,
        padding="causal",
        dropout=0.1,
    )
    assert forward(model).shape == (2, 4)
    convs = [layer for layer in model.layers if isinstance(layer, L.Conv1D)]
    assert [(c.kernel_size[0], c.dilation_rate[0], c.padding) for c in convs] == [
        (5, 1, "causal"),
        (5, 1, "causal"),
        (5, 1, "causal"),
        (5, 2, "causal"),
        (5, 2, "causal"),
    ]
    n_conv = 5 * 3 * 8 + 4 * 5 * 8 * 8  # stem + two blocks of two convs, no projection needed
    assert count(model) == {"weights": n_conv + 32, "macs": n_conv * 64 + 32, "biases": 5 * 8 + 4}
    assert any(isinstance(layer, L.Dropout) for layer in model.layers)


def test_tcn_causal_output_ignores_the_future():
    model = zoo.tcn(input_shape=(32, 2), filters=(4,), dilations=(2,), padding="causal")
    trunk = keras.Model(model.input, model.get_layer("block1_out_relu").output)
    x = np.random.default_rng(1).standard_normal((1, 32, 2)).astype("float32")
    x_changed = x.copy()
    x_changed[:, 20:] += 5.0
    a = keras.ops.convert_to_numpy(trunk(x, training=False))
    b = keras.ops.convert_to_numpy(trunk(x_changed, training=False))
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not np.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("weight_decay, expected", [(1e-4, 9), (None, 0), (0, 0)])
def test_weight_decay_regularises_conv_kernels_only(weight_decay, expected):
    model = zoo.resnet8(weight_decay=weight_decay)
    regularised = [
        layer.name for layer in model.layers if getattr(layer, "kernel_regularizer", None) is not None
    ]
    assert len(regularised) == expected  # the nine convolutions of ResNet-8, never the classifier
    assert len(model.losses) == expected


@pytest.mark.parametrize(
    "builder, kwargs, message",
    [
        (zoo.resnet8, {"num_classes": 0}, "Received: num_classes=0"),
        (zoo.resnet8, {"num_classes": True}, "Received: num_classes=True"),
        (zoo.resnet8, {"input_shape": (32, None, 3)}, "Received: input_shape=(32, None, 3)"),
        (zoo.resnet8, {"weight_decay": -1.0}, "Received: weight_decay=-1.0"),
        (zoo.ds_cnn, {"input_shape": (49, 10)}, "Received: input_shape=(49, 10)"),
        (zoo.ds_cnn, {"num_classes": 2.5}, "Received: num_classes=2.5"),
        (zoo.mobilenet_v1, {"alpha": 0}, "Received: alpha=0"),
        (zoo.mobilenet_v1, {"input_shape": 96}, "Received: input_shape=96"),
        (zoo.fc_autoencoder, {"input_dim": -1}, "Received: input_dim=-1"),
        (zoo.fc_autoencoder, {"bottleneck_units": 0}, "Received: bottleneck_units=0"),
        (zoo.tcn, {"filters": (8, 8), "dilations": (1,)}, "Received: filters=(8, 8), dilations=(1,)"),
        (zoo.tcn, {"filters": ()}, "Received: filters=()"),
        (zoo.tcn, {"padding": "valid"}, "Received: padding='valid'"),
        (zoo.tcn, {"dropout": 1.0}, "Received: dropout=1.0"),
        (zoo.tcn, {"kernel_size": 0}, "Received: kernel_size=0"),
    ],
)
def test_invalid_arguments(builder, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        builder(**kwargs)
    assert f"{builder.__name__}()" in str(info.value)  # the message names the builder


# ---------------------------------------------------------------------------------------------------
# Public surface and documentation
# ---------------------------------------------------------------------------------------------------


def test_public_surface():
    assert sorted(zoo.__all__) == sorted(PUBLISHED)
    for name in zoo.__all__:
        builder = getattr(zoo, name)
        doc = builder.__doc__
        assert "Source architecture" in doc and "Example:" in doc and "Args:" in doc, name
    namespace = {}
    exec("from keras_dnas.zoo import *", namespace)
    assert set(zoo.__all__) <= set(namespace)


def test_docstring_examples_run():
    names = ["autoencoder", "dscnn", "mobilenet", "resnet", "temporal"]
    modules = [zoo] + [importlib.import_module(f"keras_dnas.zoo.{name}") for name in names]
    attempted = 0
    for module in modules:
        result = doctest.testmod(module, verbose=False, report=False)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted >= 12
