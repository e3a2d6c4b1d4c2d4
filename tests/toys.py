"""Small models covering every channel rule (used across the test suite)."""

import numpy as np

import keras

L = keras.layers


def plain_cnn():
    x = keras.Input((12, 12, 3), name="img")
    h = L.Conv2D(8, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Conv2D(12, 3, padding="same", activation="relu", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    y = L.Dense(4, name="fc")(h)
    return keras.Model(x, y, name="plain_cnn")


def residual():
    x = keras.Input((10, 10, 4), name="img")
    a = L.Conv2D(8, 3, padding="same", name="stem")(x)
    a = L.BatchNormalization(name="stem_bn")(a)
    a = L.ReLU(name="stem_relu")(a)
    b = L.Conv2D(8, 3, padding="same", name="b1")(a)
    b = L.BatchNormalization(name="b1_bn")(b)
    b = L.ReLU(name="b1_relu")(b)
    b = L.Conv2D(8, 3, padding="same", name="b2")(b)
    b = L.BatchNormalization(name="b2_bn")(b)
    s = L.Add(name="add")([a, b])
    s = L.ReLU(name="add_relu")(s)
    p = L.Conv2D(16, 1, strides=2, name="proj")(s)
    c = L.Conv2D(16, 3, strides=2, padding="same", name="c3")(s)
    t = L.Add(name="add2")([p, c])
    y = L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(t))
    return keras.Model(x, y, name="residual")


def depthwise_separable():
    x = keras.Input((12, 12, 2), name="img")
    h = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.ReLU(name="stem_relu")(h)
    for i in range(2):
        h = L.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(h)
        h = L.BatchNormalization(name=f"dw{i}_bn")(h)
        h = L.ReLU(name=f"dw{i}_relu")(h)
        h = L.Conv2D(8 + 4 * i, 1, name=f"pw{i}")(h)
        h = L.BatchNormalization(name=f"pw{i}_bn")(h)
        h = L.ReLU(name=f"pw{i}_relu")(h)
    y = L.Dense(5, name="fc")(L.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(x, y, name="depthwise_separable")


def concat_branch():
    x = keras.Input((8, 8, 3), name="img")
    s = L.Conv2D(6, 3, padding="same", activation="relu", name="stem")(x)
    a = L.Conv2D(4, 1, name="branch_a")(s)
    b = L.Conv2D(5, 3, padding="same", name="branch_b")(s)
    b = L.BatchNormalization(name="branch_b_bn")(b)
    c = L.Concatenate(name="cat")([a, b, s])
    c = L.BatchNormalization(name="cat_bn")(c)
    c = L.ReLU(name="cat_relu")(c)
    h = L.Conv2D(7, 3, padding="same", name="after")(c)
    y = L.Dense(2, name="fc")(L.GlobalMaxPooling2D(name="gmp")(h))
    return keras.Model(x, y, name="concat_branch")


def flatten_dense():
    x = keras.Input((8, 8, 1), name="img")
    h = L.Conv2D(6, 3, activation="relu", name="c1")(x)
    h = L.AveragePooling2D(2, name="pool")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(10, activation="relu", name="hidden")(h)
    h = L.Dropout(0.1, name="drop")(h)
    y = L.Dense(3, activation="softmax", name="fc")(h)
    return keras.Model(x, y, name="flatten_dense")


def conv1d():
    x = keras.Input((32, 3), name="signal")
    h = L.Conv1D(8, 5, padding="causal", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    r = L.Conv1D(8, 3, padding="causal", dilation_rate=2, name="c2")(h)
    r = L.BatchNormalization(name="bn2")(r)
    h = L.Add(name="add")([h, r])
    h = L.ReLU(name="r2")(h)
    h = L.MaxPooling1D(name="pool")(h)
    y = L.Dense(4, name="fc")(L.GlobalAveragePooling1D(name="gap")(h))
    return keras.Model(x, y, name="conv1d")


def sequential_mlp():
    return keras.Sequential(
        [keras.Input((20,)), L.Dense(16, activation="relu"), L.Dense(12, activation="relu"),
         L.Dense(3)],
        name="sequential_mlp",
    )


TOYS = {
    f.__name__: f
    for f in (plain_cnn, residual, depthwise_separable, concat_branch, flatten_dense, conv1d,
              sequential_mlp)
}


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics, so that a forgotten re-mask or slice shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    return model


def randomize_biases(model, seed=0):
    """Non-zero biases, as training leaves them (the converter drops all-zero ones, and
    ``kd.freeze`` certifies the file of the trained layout)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(0.05, 0.3, layer.bias.shape).astype("float32"))
    return model


def sample(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + tuple(model.inputs[0].shape[1:])).astype("float32")


def close_random_masks(model, seed=0, keep=0.5):
    """Close about ``1 - keep`` of every trainable mask's channels."""
    import keras_dnas as kd

    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(model):
        v.assign(np.where(rng.random(v.shape) < keep, 1.0, 0.2).astype("float32"))


# Branchy graphs for the offline arena plan (tests/test_offline_plan.py, benchmarks/offline_arena.py)


def bn_relu(h, name):
    return L.ReLU(name=f"{name}_relu")(L.BatchNormalization(name=f"{name}_bn")(h))


def residual_ds():
    """Two residual depthwise-separable blocks (a keyword-spotting-sized input)."""
    x = keras.Input((25, 10, 1))
    h = bn_relu(L.Conv2D(32, 3, padding="same", name="stem")(x), "stem")
    for i in range(2):
        r = bn_relu(L.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(h), f"dw{i}")
        r = L.BatchNormalization(name=f"pw{i}_bn")(L.Conv2D(32, 1, name=f"pw{i}")(r))
        h = L.ReLU(name=f"add{i}_relu")(L.Add(name=f"add{i}")([h, r]))
    return keras.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(h)), name="residual_ds")


def inverted_residual():
    x = keras.Input((16, 16, 3))
    h = bn_relu(L.Conv2D(16, 3, strides=2, padding="same", name="stem")(x), "stem")
    r = bn_relu(L.Conv2D(48, 1, name="expand")(h), "expand")
    r = bn_relu(L.DepthwiseConv2D(3, padding="same", name="dw")(r), "dw")
    r = L.BatchNormalization(name="project_bn")(L.Conv2D(16, 1, name="project")(r))
    h = L.Add(name="add")([h, r])
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(h)), name="inverted_residual")


def waiting_branch():
    """Branch A's big result waits while branch B runs through a big intermediate: running
    B first needs less memory, whatever the layout."""
    x = keras.Input((16, 16, 4))
    a = L.Conv2D(24, 3, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(32, 3, padding="same", activation="relu", name="b1")(x)
    b = L.Conv2D(4, 1, activation="relu", name="b2")(b)
    h = L.Concatenate(name="cat")([a, b])
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(h)), name="waiting_branch")
