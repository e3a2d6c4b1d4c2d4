"""The one reader of user data (keras_dnas/_data.py): every form gives the same arrays, every
mistake the same Keras-style error naming the argument."""

import numpy as np
import pytest

import keras

from keras_dnas import _data
from keras_dnas.qat import calibrate, quantize_aware

X = np.arange(24, dtype="float32").reshape(6, 4)


def _forms(x):
    """The same samples as an array, a generator of batches, a generator of (x, y) batches."""
    return {
        "array": x,
        "batches": (x[i:i + 4] for i in range(0, len(x), 4)),
        "xy batches": ((x[i:i + 4], np.zeros(len(x[i:i + 4]))) for i in range(0, len(x), 4)),
    }


@pytest.mark.parametrize("form", ["array", "batches", "xy batches"])
def test_every_form_gives_the_same_arrays(form):
    arrays = _data.input_arrays(_forms(X)[form], "representative_data", names=["x"],
                                shapes=[(4,)])
    assert len(arrays) == 1 and arrays[0].dtype == np.float32
    np.testing.assert_array_equal(arrays[0], X)


def test_several_inputs_as_list_dict_or_batches():
    a, b = X, 2 * X[:, :2]
    names = ["a", "b"]
    expected = [a, b]
    # batches as Keras' fit reads them: a list (or dict) is the inputs, a tuple is (x, y[, w])
    for data in ([a, b], {"b": b, "a": a}, iter([[a[:3], b[:3]], [a[3:], b[3:]]]),
                 iter([([a, b], np.zeros(6))]), iter([{"a": a, "b": b}])):
        got = _data.input_arrays(data, "representative_data", names=names)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("data, kwargs, match", [
    (np.zeros((0, 4)), {}, r"representative_data is empty.*x_train\[:256\]"),
    (iter([]), {}, "representative_data is empty"),
    (np.zeros((3, 5)), {"shapes": [(4,)]}, r"must have samples of shape \(4,\)"),
    ({"a": X}, {"names": ["a", "b"]}, r"map every model input name \['a', 'b'\]"),
    ([X, X[:2]], {"names": ["a", "b"]}, "same number of samples"),
    ([X], {"names": ["a", "b"]}, "has 2 inputs"),
    (3.5, {"names": ["a"]}, "must be an array of input samples"),
    (object(), {}, "must be an array of input samples"),
])
def test_errors_name_the_argument_and_the_fix(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _data.input_arrays(data, "representative_data", **kwargs)


def test_labelled_pair():
    x, y = _data.labelled_pair((X, np.arange(6)))
    assert x is X and y.tolist() == list(range(6))
    with pytest.raises(ValueError, match=r"data must be a pair \(x, y\)"):
        _data.labelled_pair(X)
    with pytest.raises(ValueError, match=r"train_data=\(x, y\) needs as many labels as samples"):
        _data.labelled_pair((X, np.zeros(5)), "train_data")


def test_calibration_sample_reads_batches_and_keeps_rejecting_labels():
    sample = _data.calibration_sample((X[i:i + 2] for i in range(0, 6, 2)), 4)
    assert sample[0].shape == (4, 4) and set(map(tuple, sample[0])) <= set(map(tuple, X))
    with pytest.raises(ValueError, match=r"input samples only.*pass x"):
        _data.calibration_sample((X, np.zeros(6)), 4)


def test_qat_calibration_is_the_same_for_an_array_and_a_generator():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(x))
    q = quantize_aware(model)
    from_array = calibrate(q, X, batch_size=2)
    from_batches = calibrate(q, (X[i:i + 4] for i in range(0, 6, 4)), batch_size=2)
    assert from_array == from_batches and from_array["x_fq"] == (0.0, 23.0)


def test_endless_datasets_are_read_to_a_bound_or_refused():
    # a `.repeat()`ed tf.data.Dataset (fit's steps_per_epoch idiom) passed as calibration or
    # representative data was read forever: the process grew until the OS killed it
    import tensorflow as tf

    x = np.arange(40 * 3, dtype="float32").reshape(40, 3)
    endless = tf.data.Dataset.from_tensor_slices((x, np.zeros(40))).batch(16).repeat()
    (sample,) = _data.calibration_sample(endless, 100)
    assert sample.shape == (100, 3)  # the first 100 samples (two and a half passes), shuffled
    assert sorted(sample[:, 0].tolist()) == sorted(np.concatenate([x, x, x])[:100, 0].tolist())
    (rep,) = _data.input_arrays(endless, "representative_data",
                                endless_samples=_data.ENDLESS_REPRESENTATIVE_SAMPLES)
    assert rep.shape == (_data.ENDLESS_REPRESENTATIVE_SAMPLES, 3)
    with pytest.raises(ValueError, match=r"x is an endless dataset.*dataset.take\(8\)"):
        _data.input_arrays(endless, "x")
    (finite,) = _data.input_arrays(endless.take(2), "x")  # finite: read to its end, as before
    np.testing.assert_array_equal(finite, x[:32])


def test_a_dict_input_model_takes_its_fit_x_for_calibration_and_recalibration():
    # keras.Model({"zimage": ..., "meta": ...}) is fit on a dict x. BN recalibration called the
    # model with a list (Keras: "The structure of `inputs` doesn't match the expected
    # structure") and `kd.recalibrate_batchnorm(model, x_dict)` was refused
    import warnings

    import keras_dnas as kd

    keras.utils.set_random_seed(0)
    # keys out of alphabetical order: Keras orders a dict-input model's inputs by sorted key
    image, meta = keras.Input((6,), name="zimage"), keras.Input((3,), name="meta")
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="fc")(image))
    h = keras.layers.Concatenate()([keras.layers.ReLU()(h), meta])
    model = keras.Model({"zimage": image, "meta": meta}, {"cls": keras.layers.Dense(3)(h)})
    rng = np.random.default_rng(0)
    x = {"zimage": rng.normal(size=(64, 6)).astype("float32"),
         "meta": rng.normal(size=(64, 3)).astype("float32")}
    y = {"cls": rng.integers(0, 3, size=64)}
    search = kd.prepare(model)
    search.compile("adam", {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    callback = kd.DNASCallback("stm32h743", budgets={"flash_bytes": 10**6},
                               calibration_data=x, verbose=0)
    search.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    meta_first = [x["meta"], x["zimage"]]  # the model's input order
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slim = kd.freeze(search, budgets={}, verbose=0)
        kd.recalibrate_batchnorm(slim, x)
    assert not [w for w in caught if "structure" in str(w.message)]
    by_dict = slim.get_layer("bn").moving_mean.numpy()
    kd.recalibrate_batchnorm(slim, meta_first)
    np.testing.assert_allclose(slim.get_layer("bn").moving_mean.numpy(), by_dict, rtol=1e-6)
    tflite = kd.export.to_tflite(slim, representative_data=x)
    assert kd.export.measure(tflite, data=(meta_first, y["cls"]))["num_samples"] == 64
    with pytest.raises(ValueError, match=r"Pass x as a list"):
        kd.export.measure(tflite, data=(x, y))


def test_a_tuple_of_one_array_per_input_is_the_inputs_of_a_model_with_several():
    # tf.data.Dataset.from_tensor_slices((image, meta)).batch(n) for a two-input model yields
    # (image, meta) tuples: read as (x=image, y=meta) it lost the second input ("Received: 1
    # arrays"), and as calibration_data silently calibrated on the first only
    a, b = X, 2 * X[:, :2]
    batches = [(a[:3], b[:3]), (a[3:], b[3:])]
    got = _data.input_arrays(iter(batches), "representative_data", names=["a", "b"])
    np.testing.assert_array_equal(got[0], a)
    np.testing.assert_array_equal(got[1], b)
    # ((a, b), y) and (x, y) for one input are still (x, y)
    got = _data.input_arrays(iter([((a, b), np.zeros(6))]), "x", names=["a", "b"])
    np.testing.assert_array_equal(got[1], b)
    (one,) = _data.input_arrays(iter([(a, np.zeros(6))]), "x", names=["a"])
    np.testing.assert_array_equal(one, a)


def test_callback_reads_dicts_and_batches_by_the_models_input_names():
    import keras_dnas as kd

    a, b = X, 2 * X[:, :2]
    ia, ib = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([ia, ib]))
    search = kd.prepare(keras.Model([ia, ib], keras.layers.Dense(2)(h)))
    order = np.random.default_rng(0).permutation(6)  # calibration_sample's fixed-seed subset
    for data in ({"b": b, "a": a}, iter([(a[:3], b[:3]), (a[3:], b[3:])]),
                 iter([{"a": a[:4], "b": b[:4]}, {"a": a[4:], "b": b[4:]}]),
                 iter([((a, b), np.zeros(6))])):
        cb = kd.DNASCallback("stm32h743", budgets={"params": 60}, calibration_data=data,
                             verbose=0)
        cb.bind(search)
        np.testing.assert_array_equal(cb.calibration_data[0], a[order])
        np.testing.assert_array_equal(cb.calibration_data[1], b[order])
    with pytest.raises(ValueError, match=r"input samples only.*pass x"):
        kd.DNASCallback("stm32h743", calibration_data=(a, np.zeros(6)))


def test_labelled_pair_reads_batches_of_x_and_y():
    import tensorflow as tf

    y = np.arange(6)
    x, labels = _data.labelled_pair(tf.data.Dataset.from_tensor_slices((X, y)).batch(4))
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(labels, y)
    x, labels = _data.labelled_pair(iter([({"a": X[:2]}, y[:2]), ({"a": X[2:]}, y[2:])]))
    np.testing.assert_array_equal(x["a"], X)
    with pytest.raises(ValueError, match=r"must yield \(x, y\) pairs"):
        _data.labelled_pair(iter([X]))
    endless = tf.data.Dataset.from_tensor_slices((X, y)).batch(4).repeat()
    with pytest.raises(ValueError, match=r"endless dataset.*take\(8\)"):
        _data.labelled_pair(endless)


def test_list_batches_as_a_pytorch_dataloader_collates_them():
    # DataLoader(TensorDataset(x, y)) yields [x, y] lists, DataLoader(TensorDataset(x)) [x]:
    # the first could not be read, the second was stacked into (batches, batch, ...) and
    # crashed inside Keras at the BatchNormalization recalibration
    y = np.zeros(6)
    for batches in ([[X[:4], y[:4]], [X[4:], y[4:]]], [[X[:4]], [X[4:]]]):
        (got,) = _data.input_arrays(iter(batches), "calibration_data", names=["x"])
        np.testing.assert_array_equal(got, X)
        (got,) = _data.calibration_sample(_data.read_batches(iter(batches), 100), 100,
                                          names=["x"])
        assert sorted(got[:, 0].tolist()) == sorted(X[:, 0].tolist())
    x, labels = _data.labelled_pair(iter([[X[:4], y[:4]], [X[4:], y[4:]]]))
    np.testing.assert_array_equal(x, X)
