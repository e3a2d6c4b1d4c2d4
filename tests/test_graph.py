"""Channel-group analysis: the tying rules of METHOD.md section 1, written as data."""

import pytest

import keras
import keras_dnas as kd
from keras_dnas.graph import ChannelPlan, analyze

from tests import toys

L = keras.layers


def group_of(plan, layer):
    """Segments of a layer's output view."""
    return plan.layer(layer).output.segments


# (model, [(layer a, layer b) whose outputs share one group])
SAME_GROUP = [
    ("residual", [("stem", "b2"), ("stem_bn", "b2_bn"), ("add", "stem"), ("proj", "c3")]),
    ("depthwise_separable", [("stem", "dw0"), ("dw0_bn", "stem_relu"), ("pw0", "dw1")]),
    ("conv1d", [("c1", "c2"), ("add", "bn2")]),
    ("plain_cnn", [("c1", "bn1"), ("c1", "pool")]),
]
DIFFERENT_GROUP = [
    ("residual", [("stem", "proj")]),
    ("depthwise_separable", [("stem", "pw0"), ("pw0", "pw1")]),
    ("plain_cnn", [("c1", "c2")]),
]
FROZEN_LAYERS = {  # layers whose output group is frozen (classifier outputs)
    "plain_cnn": ["fc"], "residual": ["fc"], "depthwise_separable": ["fc"],
    "concat_branch": ["fc"], "flatten_dense": ["fc"], "conv1d": ["fc"],
}


@pytest.mark.parametrize("name,pairs", SAME_GROUP)
def test_tied_layers_share_one_group(name, pairs):
    plan = analyze(toys.TOYS[name]())
    for a, b in pairs:
        assert group_of(plan, a) == group_of(plan, b), (a, b)


@pytest.mark.parametrize("name,pairs", DIFFERENT_GROUP)
def test_independent_layers_have_own_groups(name, pairs):
    plan = analyze(toys.TOYS[name]())
    for a, b in pairs:
        assert group_of(plan, a) != group_of(plan, b), (a, b)


@pytest.mark.parametrize("name", sorted(toys.TOYS))
def test_every_add_input_shares_one_group_and_outputs_are_frozen(name):
    model = toys.TOYS[name]()
    plan = analyze(model)
    for info in plan.layers:
        if info.op == "add":
            assert all(v.segments == info.inputs[0].segments for v in info.inputs)
    for view in plan.outputs:
        assert all(plan.groups[g].frozen for g in view.segments)
    for view in plan.inputs:
        assert all(plan.groups[g].frozen for g in view.segments)
    for layer in FROZEN_LAYERS.get(name, []):
        assert plan.groups[group_of(plan, layer)[0]].frozen
    # every searchable group is defined by at least one Conv/Dense
    for g in plan.searchable_groups():
        assert g.defined_by and g.leader == g.defined_by[0]


def test_concatenate_concatenates_and_flatten_tiles():
    plan = analyze(toys.concat_branch())
    cat = plan.layer("cat")
    expected = group_of(plan, "branch_a") + group_of(plan, "branch_b") + group_of(plan, "stem")
    assert cat.output.segments == expected
    assert plan.layer("cat_bn").output.segments == expected  # BN propagates the whole view
    assert plan.view_size(cat.output) == 4 + 5 + 6

    plan = analyze(toys.flatten_dense())
    flat = plan.layer("flat")
    assert flat.output.segments == group_of(plan, "c1")
    assert flat.output.repeat == 3 * 3  # 8x8 -> conv 6x6 -> pool 3x3
    assert plan.layer("hidden").inputs[0].repeat == 9


def test_geometry_is_recorded():
    plan = analyze(toys.residual())
    proj = plan.layer("proj").geometry
    assert proj["kernel_size"] == [1, 1] and proj["strides"] == [2, 2]
    assert proj["out_positions"] == 25 and proj["in_positions"] == 100
    assert proj["in_channels"] == 8 and proj["out_channels"] == 16
    b1 = plan.layer("b1").geometry
    assert b1["taps"] == 9 and b1["use_bias"] is True
    c2 = analyze(toys.conv1d()).layer("c2").geometry
    assert c2["dilation_rate"] == [2] and c2["taps"] == 3 and c2["out_positions"] == 32


def test_lambda_and_unknown_layers_freeze_their_groups():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, name="a")(x)
    b = L.Lambda(lambda t: t * 2.0, name="double")(a)
    c = L.Conv2D(5, 3, name="c")(b)
    d = L.Conv2D(6, 1, name="d")(c)
    y = L.Dense(2, name="fc")(L.Flatten()(d))
    plan = analyze(keras.Model(x, y))
    ga = plan.groups[group_of(plan, "a")[0]]
    assert ga.frozen and "double" in ga.reason
    assert not plan.groups[group_of(plan, "c")[0]].frozen
    assert plan.layer("double").role == "opaque"


@pytest.mark.parametrize(
    "layer,reason",
    [
        (L.Conv2D(4, 3, groups=2, name="odd"), "grouped"),
        (L.DepthwiseConv2D(3, depth_multiplier=2, name="odd"), "depth_multiplier"),
        (L.Reshape((6, 12, 2), name="odd"), "reshapes"),
    ],
)
def test_layers_without_a_channel_rule_are_opaque(layer, reason):
    x = keras.Input((6, 6, 4))
    h = L.Conv2D(4, 1, name="pre")(x)
    h = layer(h)
    y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(3, 1, name="post")(h)))
    plan = analyze(keras.Model(x, y))
    assert plan.layer("odd").role == "opaque" and reason in plan.layer("odd").reason
    assert plan.groups[group_of(plan, "pre")[0]].frozen


def test_softmax_keeps_the_layout_but_freezes_the_group():
    x = keras.Input((6, 6, 4))
    h = L.Conv2D(5, 1, name="pre")(x)
    h = L.Activation("softmax", name="mix")(h)
    h = L.Conv2D(3, 1, name="post")(h)
    y = L.Softmax(name="probs")(L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(h)))
    plan = analyze(keras.Model(x, y))
    pre = plan.groups[group_of(plan, "pre")[0]]
    assert pre.frozen and "'mix' applies 'softmax'" in pre.reason
    assert group_of(plan, "mix") == group_of(plan, "pre")
    assert not plan.groups[group_of(plan, "post")[0]].frozen
    fc = plan.groups[group_of(plan, "fc")[0]]
    assert fc.frozen and "model output" in fc.reason  # the better explanation wins


def test_exclude_freezes_the_layer_channels_and_validates_names():
    model = toys.plain_cnn()
    plan = analyze(model, exclude=["c2"])
    assert plan.groups[group_of(plan, "c2")[0]].frozen
    assert plan.groups[group_of(plan, "c1")[0]].frozen  # its input too
    with pytest.raises(ValueError, match=r"not in model 'plain_cnn'.*c3"):
        analyze(model, exclude=["c3"])


def test_subclassed_and_unbuilt_models_get_clear_errors():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match="subclassed model.*kd.layers.Masked"):
        analyze(Net())
    with pytest.raises(ValueError, match="no known input shape"):
        analyze(keras.Sequential([L.Dense(3)]))


def test_sequential_models_are_analysed():
    plan = analyze(toys.sequential_mlp())
    assert [g.size for g in plan.searchable_groups()] == [16, 12]


def test_shared_layer_keeps_one_group():
    x1, x2 = keras.Input((5,)), keras.Input((5,))
    shared = L.Dense(6, name="shared")
    h = L.Concatenate(name="cat")([shared(x1), shared(x2)])
    plan = analyze(keras.Model([x1, x2], L.Dense(2, name="fc")(h)))
    cat = plan.layer("cat")
    assert cat.output.segments[0] == cat.output.segments[1]
    assert not plan.groups[cat.output.segments[0]].frozen


@pytest.mark.parametrize("name", sorted(toys.TOYS))
def test_plan_json_round_trip(name):
    plan = analyze(toys.TOYS[name]())
    again = ChannelPlan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()


def test_input_model_is_not_modified_by_analysis():
    model = toys.residual()
    before = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    analyze(model)
    kd.prepare(model)
    assert before == {layer.name: len(layer._inbound_nodes) for layer in model.layers}
