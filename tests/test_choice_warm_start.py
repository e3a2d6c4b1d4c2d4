"""Choice blocks on a trained seed (issue 14): "paper_b"'s new alternatives start from the seed's
block (5x5 zero-padded, separable from a rank-1 factorisation), and the search's warm-up
distills the block into them instead of sampling untrained alternatives."""

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.choices import _padded_kernel, _separable_factors

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _random_bn(model):
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([(rng.random(w.shape) + 0.5).astype("float32")
                               for w in layer.get_weights()])


def _select(model, k):
    for layer in model.layers:
        if isinstance(layer, kd.layers.Choice):
            logits = np.zeros(layer.num_alternatives, "float32")
            logits[k] = 1.0
            layer.dnas_choice.assign(logits)


@pytest.mark.parametrize("strides", [1, 2])
def test_paper_b_5x5_alternative_computes_the_seed_block(strides):
    keras.utils.set_random_seed(0)
    x = keras.Input((11, 12, 3))
    h = L.Conv2D(6, 3, strides=strides, padding="same", use_bias=True, name="c")(x)
    h = L.ReLU(name="r")(L.BatchNormalization(name="b")(h))
    seed = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(h)))
    _random_bn(seed)
    search = kd.prepare(seed, alternatives="paper_b")
    block = search.get_layer("c_choice")
    assert block.reference == 0 and block.students == [1, 2]  # 5x5, separable
    a = np.random.default_rng(0).random((3, 11, 12, 3)).astype("float32")
    _select(search, 1)
    np.testing.assert_allclose(search(a), seed(a), atol=1e-5)


def test_paper_b_5_tap_causal_alternative_computes_the_seed_block():
    keras.utils.set_random_seed(0)
    x = keras.Input((16, 2))
    h = L.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False, name="t")(x)
    h = L.ReLU(name="r")(L.BatchNormalization(name="b")(h))
    seed = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(h)))
    _random_bn(seed)
    search = kd.prepare(seed, alternatives="paper_b")
    a = np.random.default_rng(0).random((3, 16, 2)).astype("float32")
    _select(search, 1)
    np.testing.assert_allclose(search(a), seed(a), atol=1e-5)


def test_padded_kernel_is_centred_or_on_the_newest_taps():
    k = np.arange(1, 4, dtype="float32").reshape(3, 1, 1)
    assert _padded_kernel(k, 5, causal=False).ravel().tolist() == [0, 1, 2, 3, 0]
    assert _padded_kernel(k, 5, causal=True).ravel().tolist() == [0, 0, 1, 2, 3]
    assert _padded_kernel(np.ones((2, 1, 1)), 5, causal=False) is None  # no centre


def test_separable_factors_are_the_rank_one_approximation_per_input_channel():
    rng = np.random.default_rng(0)
    # a kernel of rank one per input channel is reproduced exactly ...
    d, p = rng.normal(size=(3, 3, 4)), rng.normal(size=(4, 5))
    kernel = (d[..., None] * p[None, None]).astype("float32")
    dw, pw = _separable_factors(kernel)
    assert dw.shape == (3, 3, 4, 1) and pw.shape == (1, 1, 4, 5)
    np.testing.assert_allclose(dw[..., 0][..., None] * pw[0, 0][None, None], kernel, atol=1e-5)
    # ... and any other to the best rank-one error of each channel's (taps x outputs) slice
    kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    dw, pw = _separable_factors(kernel)
    error = kernel - dw[..., 0][..., None] * pw[0, 0][None, None]
    for c in range(4):
        s = np.linalg.svd(kernel[:, :, c, :].reshape(9, 5), compute_uv=False)
        assert np.linalg.norm(error[:, :, c, :]) == pytest.approx(np.sqrt((s[1:] ** 2).sum()),
                                                                  rel=1e-4)
    assert (dw.sum(axis=(0, 1)) >= 0).all()  # the sign that passes positive inputs


def _trained_blocks(epochs=2):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")[:640]
    y = d.target.astype("int32")[:640]
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = inp
    for i in range(2):
        h = L.Conv2D(12, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(h))
    seed = keras.Model(inp, L.Dense(10, name="head")(L.GlobalAveragePooling2D()(h)))
    seed.compile(keras.optimizers.Adam(3e-3), LOSS)
    seed.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return seed, x, y


def _imitation_error(search, x, last):
    """Relative mean square difference of the output of layer ``last`` (the last layer of an
    alternative of block 1, inlined by kd.prepare) from the reference's (``relu1``)."""
    outs = [search.get_layer(name).output for name in ("relu1", last)]
    probe = keras.Model(search.input, outs)
    ref, alt = (keras.ops.convert_to_numpy(t) for t in probe(x, training=True))
    return float(np.mean((alt - ref) ** 2) / np.mean(ref ** 2))


def test_distilling_warmup_keeps_the_seed_path_and_teaches_the_alternatives():
    seed, x, y = _trained_blocks()
    search = kd.prepare(seed, alternatives="paper_b")
    before = _imitation_error(search, x[:256], "relu1_pw")  # the separable block
    choice = search.get_layer("conv1_choice")
    assert choice.reference == 0 and choice.students == [1, 2] and choice.num_alternatives == 4
    search.compile(keras.optimizers.Adam(3e-3), LOSS)
    cb = kd.DNASCallback("stm32h743", budgets={"macs": 1e3}, warmup_epochs=1, verbose=0)
    probe = keras.Model(search.input, [choice.output, search.get_layer("relu1").output])

    class Check(keras.callbacks.Callback):
        """During the warm-up a training-mode call outputs the seed's block alone."""
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                out, ref = (keras.ops.convert_to_numpy(t) for t in probe(x[:16], training=True))
                self.equal = np.array_equal(out, ref)
                self.gate = float(keras.ops.convert_to_numpy(choice._dnas_distill))

    check = Check()
    search.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb, check])
    assert check.gate == 1.0 and check.equal
    after = _imitation_error(search, x[:256], "relu1_pw")
    assert after < 0.7 * before, (before, after)
    assert _imitation_error(search, x[:256], "relu1_k5") < 0.05  # 5x5: started exact
    np.testing.assert_array_equal(choice.dnas_choice.numpy(), np.zeros(4))  # logits frozen
    assert "_dnas_distill" not in choice.__dict__  # unbound after fit
    with pytest.raises(ValueError, match="choice_warmup"):
        kd.DNASCallback("stm32h743", choice_warmup="teach")


def test_choice_reference_is_checked_and_round_trips():
    x = keras.Input((8, 8, 4))
    with pytest.raises(ValueError, match="reference must be the index"):
        kd.layers.Choice([L.Identity(), L.Identity()], reference=2)
    block = kd.layers.Choice([L.Conv2D(4, 3, padding="same"), "identity",
                              L.Conv2D(4, 5, padding="same")], reference=0, name="b")
    block(x)
    assert block.students == [2]  # the identity has nothing to learn
    again = kd.layers.Choice.from_config(block.get_config())
    assert (again.reference, again.students, again.num_alternatives) == (0, [2], 3)
