"""Nested Functional / Sequential sub-models: prepare flattens them and searches their channels."""

import warnings

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas.graph import walk

from tests import child, toys
from tests.test_prepare_freeze import RELOAD

L = keras.layers


def _randomize(model, seed=0):
    """Non-trivial BN statistics inside sub-models too."""
    rng = np.random.default_rng(seed)

    def visit(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                visit(layer)
            elif isinstance(layer, L.BatchNormalization):
                layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                                   for w in layer.get_weights()])

    visit(model)
    return model


def nested_sequential():
    """A Sequential backbone inside a Sequential; names clash with the outer model's."""
    backbone = keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(8, 3, padding="same", name="conv"),
        L.BatchNormalization(name="bn"),
        L.ReLU(),
        L.Conv2D(12, 3, strides=2, padding="same", name="conv_2"),
    ], name="backbone")
    return keras.Sequential([keras.Input((10, 10, 3)), backbone,
                             L.Conv2D(6, 1, name="conv"), L.GlobalAveragePooling2D(),
                             L.Dense(3, name="head")], name="outer")


def twice_nested():
    """Functional in Functional in Functional, the innermost block called twice (shared)."""
    a_in = keras.Input((8, 8, 6))
    h = L.Conv2D(6, 3, padding="same", name="conv")(a_in)
    block = keras.Model(a_in, L.BatchNormalization(name="bn")(h), name="block")
    b_in = keras.Input((8, 8, 6))
    h = L.ReLU(name="relu")(block(b_in))
    h = block(h)  # shared: one set of weights, called twice
    h = L.Add(name="add")([h, b_in])
    stage = keras.Model(b_in, L.Conv2D(10, 1, name="expand")(h), name="stage")
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", name="stem")(x)
    h = stage(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.Conv2D(8, 1, activation="relu", name="post")(h)
    y = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y, name="twice_nested")


def mobilenet_v2_backbone():
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                              input_shape=(32, 32, 3), alpha=0.35)
    return keras.Sequential([backbone, L.GlobalAveragePooling2D(), L.Dense(5)],
                            name="transfer")


def _plain(model):
    return all(not isinstance(layer, keras.Model) for layer in model.layers)


def _prepare(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kd.prepare(model, **kwargs)


def _close_random(search, seed):
    # the hard gate keeps one channel alive anyway; close about half of the channels
    toys.close_random_masks(search, seed=seed, keep=0.5)


@pytest.mark.parametrize("build", [nested_sequential, twice_nested])
def test_nested_models_are_flattened_searched_and_frozen_exactly(build):
    model = _randomize(build())
    before = [w.copy() for w in model.get_weights()]
    search = _prepare(model)
    x = toys.sample(model)
    assert _plain(search)
    np.testing.assert_allclose(search(x, training=False), model(x, training=False), atol=1e-5)
    masked = [layer.name for layer in search.layers if kd.layers.is_masked(layer)]
    assert masked, "nothing inside the sub-models was made searchable"
    for seed in (0, 1):
        _close_random(search, seed)
        slim = kd.freeze(search)
        assert _plain(slim)
        ref = np.asarray(search(x, training=False))
        out = np.asarray(slim(x, training=False))
        assert np.max(np.abs(out - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
    for a, b in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)


def test_flat_names_keep_unique_names_and_prefix_clashes():
    names = [layer.name for layer in walk.flatten(nested_sequential()).layers]
    # the outer 'conv' keeps its name; the inner one is prefixed; unique inner names stay
    assert "conv" in names and "backbone_conv" in names and "conv_2" in names
    assert "bn" in names and "head" in names
    assert len(names) == len(set(names))
    flat = walk.flatten(twice_nested())
    names = [layer.name for layer in flat.layers]
    assert len(names) == len(set(names))
    # the shared block is inlined twice with one set of layers
    assert names.count("conv") == 1 and "stage" not in names and "block" not in names
    assert len(flat.weights) == len(twice_nested().weights)


def test_keras_ops_with_the_same_name_in_two_submodels():
    # found by the fuzzer (seed 153): operation names must be unique in the flat graph too
    i = keras.Input((6, 6, 4))
    first = keras.Model(i, keras.ops.relu6(L.Conv2D(4, 3, padding="same")(i)), name="first")
    second = keras.Model.from_config({**first.get_config(), "name": "second"})  # same names
    x = keras.Input((6, 6, 3))
    h = second(first(L.Conv2D(4, 3, padding="same")(x)))
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    search = kd.prepare(model)
    names = [n.operation.name for n in walk.nodes(search)]
    assert len(names) == len(set(names))
    assert sum(not isinstance(n.operation, L.Layer) for n in walk.nodes(search)) == 2
    xs = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(search.predict(xs, verbose=0), model.predict(xs, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_shared_submodel_stays_shared_after_freeze():
    search = _prepare(_randomize(twice_nested()))
    conv = search.get_layer("conv")
    assert len(conv._inbound_nodes) == 2
    _close_random(search, 3)
    slim = kd.freeze(search)
    assert len(slim.get_layer("conv")._inbound_nodes) == 2
    assert slim.get_layer("conv").filters == slim.get_layer("stem").filters  # tied by the add


def test_exclude_takes_flattened_names_or_a_whole_submodel():
    model = _randomize(nested_sequential())
    search = _prepare(model, exclude=["backbone_conv"])
    assert type(search.get_layer("backbone_conv")) is L.Conv2D
    assert kd.layers.is_masked(search.get_layer("conv_2"))
    x = toys.sample(model)
    np.testing.assert_allclose(search(x, training=False), model(x, training=False), atol=1e-5)
    # the original inner name is ambiguous after flattening: the error lists the real names
    with pytest.raises(ValueError, match="backbone_conv"):
        _prepare(model, exclude=["nope"])
    # a sub-model's own name keeps it as one opaque nested block
    twice = _randomize(twice_nested())
    search = _prepare(twice, exclude=["stage"])
    assert isinstance(search.get_layer("stage"), keras.Model)
    assert kd.layers.is_masked(search.get_layer("stem")) is False  # feeds the opaque block
    assert kd.layers.is_masked(search.get_layer("post"))
    x = toys.sample(twice)
    np.testing.assert_allclose(search(x, training=False), twice(x, training=False), atol=1e-5)


def test_zero_searchable_groups_raise_in_prepare_with_reasons():
    model = mobilenet_v2_backbone()
    with pytest.raises(ValueError) as info:
        kd.prepare(model, exclude=[model.layers[0].name])
    msg = str(info.value)
    assert "no searchable channel group" in msg
    assert "excluded by the user" in msg and "reaches the model output" in msg
    assert "drop them from exclude=" in msg
    x = keras.Input((4,))
    plain = keras.Model(x, L.Dense(2)(x))
    with pytest.raises(ValueError, match="no searchable") as info:
        kd.prepare(plain)
    assert "exclude=" not in str(info.value)  # not suggested when none was passed


def test_frozen_warning_is_one_line_per_kind_of_reason():
    x = keras.Input((6, 6, 2))
    h = x
    for i in range(6):  # six Lambda layers freeze six groups for the same kind of reason
        h = L.Conv2D(4 + i, 3, padding="same", name=f"c{i}")(h)
        h = L.Lambda(lambda t: t * 2.0, name=f"double{i}")(h)
    h = L.Conv2D(5, 3, padding="same", name="last")(h)
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    with pytest.warns(UserWarning) as record:
        kd.prepare(model)
    text = str(record[0].message)
    lines = text.splitlines()
    assert len(lines) == 3 and max(map(len, lines)) < 200, text
    assert "['c0', 'c1', 'c2', 'c3', ... 2 more] are frozen: touches layer 'double0'" in text
    assert "(and 5 similar)" in text
    assert "exclude=" not in text


def test_mobilenet_v2_backbone_is_searched_and_frozen_exactly():
    model = mobilenet_v2_backbone()
    search = _prepare(model)
    plan = search.dnas_plan
    assert _plain(search)
    searchable = sum(g.size for g in plan.searchable_groups())
    convs = sum(g.size for g in plan.groups if g.defined_by)
    assert searchable >= 0.5 * convs  # most backbone channels are searchable
    x = toys.sample(model, n=2)
    np.testing.assert_allclose(search(x, training=False), model(x, training=False), atol=1e-5)
    _close_random(search, 0)
    slim = kd.freeze(search)
    assert _plain(slim)
    ref = np.asarray(search(x, training=False))
    assert np.max(np.abs(np.asarray(slim(x, training=False)) - ref)) <= \
        1e-5 * max(1.0, np.max(np.abs(ref)))


def test_frozen_nested_model_reloads_plain_without_custom_objects(tmp_path):
    search = _prepare(_randomize(twice_nested()))
    _close_random(search, 1)
    slim = kd.freeze(search)
    assert _plain(slim)
    x = toys.sample(search)
    slim.save(tmp_path / "slim.keras")
    np.save(tmp_path / "x.npy", x)
    # the session's TensorFlow child that never imports keras_dnas
    proc = child.run(RELOAD, plain=True, argv=[tmp_path / "slim.keras", tmp_path / "x.npy",
                                               tmp_path / "y.npy"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), slim(x), atol=1e-5)


def test_summary_and_analyze_of_a_nested_seed_use_the_flat_graph():
    model = nested_sequential()
    plan = kd.graph.analyze(model)
    assert "backbone_conv" in [info.name for info in plan.layers]
    flat = walk.flatten(model)
    nested = kd.summary(model, memory=None)
    assert nested["macs"] == kd.summary(flat, memory=None)["macs"] > 0
    assert [r["name"] for r in nested["layers"]] == [info.name for info in plan.layers]
