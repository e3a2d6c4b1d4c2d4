import numpy as np
import pytest

import keras
import keras_dnas as kd

from tests import toys

L = keras.layers


def conv_dense_params(model):
    """Oracle: count_params of the conv/dense/depthwise layers (kernels + biases)."""
    return sum(layer.count_params() for layer in model.layers
               if isinstance(layer, (L.Conv1D, L.Conv2D, L.Dense, L.DepthwiseConv2D)))


@pytest.mark.filterwarnings("ignore:keras_dnas.freeze. closing channels:UserWarning")  # costs only
def test_summary_of_original_searchable_and_frozen_models():
    model = toys.randomize_bn(toys.residual())
    search = kd.prepare(model)
    toys.close_random_masks(search, seed=2)
    slim = kd.freeze(search)
    s_orig = kd.summary(model, "stm32h743", memory=None)
    s_search = kd.summary(search, "stm32h743", memory=None)
    s_slim = kd.summary(slim, "stm32h743", memory=None)
    assert s_orig["params"] == conv_dense_params(model)
    assert s_slim["params"] == conv_dense_params(slim)
    for key in ("params", "macs", "latency_cycles", "latency_ms", "energy_uj"):
        assert s_search[key] == s_slim[key], key  # hard costs of masks == frozen costs
    assert s_slim["macs"] < s_orig["macs"]
    rows = {r["name"]: r for r in s_slim["layers"]}
    assert rows["b1"]["channels_kept"] == slim.get_layer("b1").filters
    assert rows["b1"]["channels_total"] == slim.get_layer("b1").filters
    rows = {r["name"]: r for r in s_search["layers"]}
    assert rows["b1"]["channels_total"] == 8 and rows["b1"]["channels_kept"] == \
        slim.get_layer("b1").filters
    # activation bytes of a conv = output positions x kept channels (int8)
    assert rows["b1"]["activation_bytes"] == 10 * 10 * rows["b1"]["channels_kept"]
    assert "b1" in str(s_search) and "latency" in s_search.table()
    assert kd.report.Summary(**s_slim).to_json()


def test_summary_macs_match_a_numpy_count():
    model = toys.conv1d()
    s = kd.summary(model, "nrf52840", memory=None)
    # c1: K=5, 3->8 over 32 steps; c2: K=3, 8->8 over 32 steps; fc: 8->4
    assert s["macs"] == 5 * 3 * 8 * 32 + 3 * 8 * 8 * 32 + 8 * 4
    assert np.isclose(s["latency_ms"], s["latency_cycles"] / 64e3)


def test_params_count_the_weights_of_layers_without_a_channel_rule():
    # An Embedding's table is most of a text model's parameters (and flash); kd.summary and
    # the params budget left it out (2,130 of 18,130). It is counted, never searched.
    L = keras.layers
    model = keras.Sequential([
        keras.Input((40,), dtype="int32"), L.Embedding(1000, 16, name="embedding"),
        L.Conv1D(32, 3, activation="relu"), L.GlobalAveragePooling1D(), L.Dense(2)])
    plan = kd.graph.analyze(model)
    info = next(layer for layer in plan.layers if layer.name == "embedding")
    assert info.role == "opaque" and info.geometry["fixed_params"] == 16_000
    assert kd.graph.ChannelPlan.from_json(plan.to_json()) == plan
    s = kd.summary(model, target="stm32h743", memory=None, print_fn=lambda *a: None)
    assert s["params"] == model.count_params() == 16_000 + 1_568 + 66
    assert [r["params"] for r in s["layers"] if r["name"] == "embedding"] == [16_000]
