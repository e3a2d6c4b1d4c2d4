import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_dnas as kd
from keras_dnas import masks
from keras_dnas._keras import Functional


def test_gate_is_binary_with_threshold_and_keep_alive():
    g = masks.gate(np.array([0.9, -0.7, 0.2, 0.5, -0.51], "float32"))
    assert np.asarray(g).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    # all below the threshold: only the largest |alpha| survives
    g = masks.gate(np.array([0.1, -0.4, 0.3], "float32"))
    assert np.asarray(g).tolist() == [0.0, 1.0, 0.0]
    assert np.asarray(masks.gate(np.array([0.1, 0.4], "float32"), keep_alive=False)).sum() == 0
    assert masks.hard_gate([0.1, -0.4, 0.3]).tolist() == [False, True, False]
    assert masks.hard_gate([0.6, 0.7]).tolist() == [True, True]


def test_gate_gradient_is_straight_through():
    alpha = tf.Variable([0.9, -0.7, 0.2])
    weights = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(masks.gate(alpha) * weights)
    # d loss / d alpha = weights * sign(alpha), also for the closed channel
    np.testing.assert_allclose(tape.gradient(loss, alpha).numpy(), [1.0, -2.0, 3.0])


def test_centred_gate_gradient_removes_the_mean_over_open_channels():
    alpha = tf.Variable([0.9, -0.7, 0.2, 0.6])
    weights = tf.constant([1.0, 2.0, 3.0, 6.0])
    with tf.GradientTape(persistent=True) as tape:
        plain = masks.gate(alpha)
        centred = masks.gate(alpha, centred=True)
        loss = tf.reduce_sum(centred * weights)
    assert np.asarray(centred).tolist() == np.asarray(plain).tolist() == [1.0, 1.0, 0.0, 1.0]
    # open channels: weight minus the open channels' mean (3.0), times sign(alpha);
    # the closed channel keeps its straight-through gradient
    np.testing.assert_allclose(tape.gradient(loss, alpha).numpy(), [-2.0, 1.0, 3.0, 3.0])
    # a common rescaling of the open channels gets no gradient at all
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(masks.gate(alpha, centred=True) * tf.constant([5.0, 5.0, 1.0, 5.0]))
    np.testing.assert_allclose(tape.gradient(loss, alpha).numpy(), [0.0, 0.0, 1.0, 0.0],
                               atol=1e-6)


def test_views_concatenate_and_tile():
    m = masks.view_mask([np.array([1.0, 0.0], "float32"), 2, np.array([0.0], "float32")], 2)
    assert np.asarray(m).tolist() == [1, 0, 1, 1, 0] * 2
    h = masks.hard_view_mask([np.array([True, False]), 1], repeat=3)
    assert h.tolist() == [True, False, True] * 3


def test_mask_variables_are_found_and_only_leaders_train():
    x = keras.Input((6, 6, 2))
    a = kd.layers.MaskedConv2D(4, 3, padding="same", name="a")(x)
    b = kd.layers.MaskedConv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Add()([a, b])
    y = kd.layers.MaskedDense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(c))
    model = kd.SearchableModel(x, y)
    assert [v.path for v in masks.mask_variables(model)] == ["a/dnas_alpha"]
    assert len(masks.mask_variables(model, trainable_only=False)) == 3
    assert all(v.name == masks.ALPHA_NAME for v in masks.mask_variables(model, False))


def test_masks_get_no_weight_decay():
    x = keras.Input((4,))
    h = kd.layers.MaskedDense(4, name="h")(x)
    model = kd.SearchableModel(x, kd.layers.MaskedDense(1, name="out")(h))
    model.compile(keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5), "mse")
    kernel_before = model.get_layer("h").kernel.numpy().copy()
    # Zero inputs and targets: no gradient reaches the hidden layer's kernel or
    # the mask, so only weight decay could change them.
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_layer("h").dnas_alpha.numpy(), np.ones(4))
    assert not np.allclose(model.get_layer("h").kernel.numpy(), kernel_before)


def test_exclude_from_weight_decay_keeps_user_exclusions():
    bias = keras.Variable(np.zeros(2), name="bias")
    opt = keras.optimizers.AdamW()
    opt.exclude_from_weight_decay(var_list=[bias], var_names=["gamma"])
    masks.exclude_from_weight_decay(opt)
    alpha = keras.Variable(np.ones(2), name=masks.ALPHA_NAME)
    gamma = keras.Variable(np.ones(2), name="gamma")
    kernel = keras.Variable(np.ones(2), name="kernel")
    assert not opt._use_weight_decay(alpha)
    assert not opt._use_weight_decay(gamma)
    assert not opt._use_weight_decay(bias)
    assert opt._use_weight_decay(kernel)


def test_one_gate_per_group_shares_the_gate_and_keeps_values_and_gradients():
    x = keras.Input((6, 6, 2))
    a = kd.layers.MaskedConv2D(4, 3, padding="same", name="a")(x)
    b = kd.layers.MaskedBatchNormalization(name="a_bn")(a)
    c = kd.layers.MaskedConv2D(5, 3, padding="same", name="c")(b)
    y = kd.layers.MaskedDense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(c))
    model = kd.SearchableModel(x, y)
    model.get_layer("a").dnas_alpha.assign([0.9, 0.2, -0.8, 0.6])
    data = tf.constant(np.random.default_rng(0).normal(size=(3, 6, 6, 2)), "float32")
    owner = model.get_layer("a")
    with masks.one_gate_per_group():
        assert masks.owner_gate(owner) is masks.owner_gate(owner)
    assert masks.owner_gate(owner) is not masks.owner_gate(owner)

    def forward_and_gradients(shared):
        layers = [model.get_layer(n) for n in ("a", "c")]
        alphas = [layer.dnas_alpha for layer in layers]
        with tf.GradientTape() as tape:
            # the model's own call shares the gates; the Functional parent's does not
            out = model(data) if shared else Functional.call(model, data)
            loss = tf.reduce_sum(out * tf.constant([1.0, -2.0, 0.5]))
        return out.numpy(), [g.numpy() for g in tape.gradient(loss, alphas)]

    out_shared, grads_shared = forward_and_gradients(True)
    out_plain, grads_plain = forward_and_gradients(False)
    np.testing.assert_array_equal(out_shared, out_plain)
    for g_shared, g_plain in zip(grads_shared, grads_plain):
        np.testing.assert_allclose(g_shared, g_plain, rtol=1e-5, atol=1e-6)
    assert np.abs(grads_shared[0]).sum() > 0
