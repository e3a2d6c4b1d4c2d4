import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import _keras

from tests import toys

L = keras.layers


def test_recalibrate_sets_exact_population_statistics_in_graph_order():
    model = toys.residual()
    for layer in model.layers:  # stale, wrong statistics everywhere
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, "float32"))
    x = toys.sample(model, n=96, seed=3)
    assert kd.recalibrate_batchnorm(model, x, batch_size=40) == 3
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            z = keras.ops.convert_to_numpy(keras.Model(model.input, layer.input)(x, training=False))
            z = z.reshape(-1, z.shape[-1]).astype("float64")
            np.testing.assert_allclose(layer.moving_mean.numpy(), z.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(layer.moving_variance.numpy(), z.var(0), rtol=1e-3,
                                       atol=1e-5)
    # inference on the calibration batch now normalises like training mode does
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=True)), atol=1e-3)


def test_recalibrate_rejects_empty_data():
    with pytest.raises(ValueError, match="at least one sample"):
        kd.recalibrate_batchnorm(toys.plain_cnn(), np.zeros((0, 12, 12, 3), "float32"))


def test_recalibrate_in_one_pass_matches_layer_by_layer_passes():
    # n <= batch_size takes one forward pass with every BN setting its statistics as the pass
    # reaches it; it must give what the per-BN passes give (closed channels: the statistics
    # of later BNs depend on the earlier ones), and leave no hook behind.
    search = kd.prepare(toys.residual())
    toys.close_random_masks(search, seed=1)
    x = toys.sample(search, n=64, seed=2)
    bns = [layer for layer in search.layers if isinstance(layer, L.BatchNormalization)]
    kd.recalibrate_batchnorm(search, x, batch_size=16)  # 4 chunks: the per-BN passes
    chunked = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns]
    for layer in bns:  # stale statistics (gamma and beta stay)
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, "float32"))
    assert kd.recalibrate_batchnorm(search, x) == len(bns) == 3
    for layer, (mean, var) in zip(bns, chunked):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-6, atol=1e-7)
        assert "call" not in layer.__dict__


def test_compiled_calibrator_matches_recalibrate_and_reuses_its_trace():
    from keras_dnas.freeze import BatchNormCalibrator

    search = kd.prepare(toys.residual())
    toys.close_random_masks(search, seed=1)
    x = toys.sample(search, n=64, seed=2)
    bns = [layer for layer in search.layers if isinstance(layer, L.BatchNormalization)]
    kd.recalibrate_batchnorm(search, x)
    exact = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns]
    calibrate = BatchNormCalibrator(search)
    for _ in range(2):  # the second call runs the traced pass with the hooks in it
        for layer in bns:
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, "float32"))
        assert calibrate(x) == 3
        for layer, (mean, var) in zip(bns, exact):
            np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)
            assert "call" not in layer.__dict__


def test_recalibrate_passes_resume_where_the_graph_narrows(monkeypatch):
    # chunked: each BN's pass starts from the host-kept values of the tensors the later steps
    # read (the residual stream's skip included), not from the inputs; same statistics
    import importlib

    freeze_module = importlib.import_module("keras_dnas.freeze")
    search = kd.prepare(toys.residual_ds())
    toys.close_random_masks(search, seed=1)
    x = toys.sample(search, n=64, seed=2)
    bns = [layer for layer in search.layers if isinstance(layer, L.BatchNormalization)]
    steps, passes = freeze_module._replay_points(search, bns, len(x))
    assert [layer for layer, *_ in passes] == bns  # one pass per BN, in execution order
    assert all(steps[at].operation is layer and cut_at == at - 1  # from just before the BN
               for layer, at, cut_at, _ in passes)
    assert max(len(cut) for *_, cut in passes) == 2  # a BN input and the skip
    kd.recalibrate_batchnorm(search, x, batch_size=16)
    resumed = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns]
    monkeypatch.setattr(freeze_module, "REPLAY_CACHE_BYTES", 0)  # every pass from the inputs
    assert all((cut_at, cut) == (-1, search.inputs) for *_, cut_at, cut in
               freeze_module._replay_points(search, bns, len(x))[1])
    for layer in bns:
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
    kd.recalibrate_batchnorm(search, x, batch_size=16)
    for layer, (mean, var) in zip(bns, resumed):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-6, atol=1e-7)
    assert all(_keras.inbound_node_count(layer) == 1 for layer in search.layers[1:])


def test_repeated_recalibration_logs_no_tf_function_retracing(caplog):
    # Each recalibration (every freeze, every validation of a search with calibration_data) and
    # each of its per-BN segments traces its own function; TensorFlow keys its retracing count by
    # code object, so these used to log "triggered tf.function retracing" from the sixth on.
    model = toys.residual()
    x = toys.sample(model, n=32, seed=0)
    with caplog.at_level("WARNING", logger="tensorflow"):
        for _ in range(4):
            kd.recalibrate_batchnorm(model, x, batch_size=16)  # 2 chunks: per-BN segments
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
