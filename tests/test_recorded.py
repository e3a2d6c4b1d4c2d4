"""Soft costs recorded once (keras_dnas/_recorded.py) against the cost functions on tensors.

``CostModel.soft_evaluate`` (what the search's penalty reads) must give the values and the
mask gradients of ``CostModel.evaluate(counts, exact=False)`` (the same scalar functions run
on tensors), eagerly and inside a ``tf.function`` (the train step), for every metric.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dnas as kd
from keras_dnas import _recorded
from keras_dnas.costs.model import CostModel
from keras_dnas.graph.counts import soft_counts
from keras_dnas.memory import MemoryModel
from tests import toys
from tests.test_choice import choice_model
from tests.test_time_axis import TIME, _tcn

L = keras.layers


def _searchable(name):
    if name == "resnet8":
        return kd.prepare(kd.zoo.resnet8(input_shape=(16, 16, 1), num_classes=4))
    if name == "ds_cnn":
        return kd.prepare(kd.zoo.ds_cnn(input_shape=(16, 8, 1), num_classes=4))
    if name == "concat":
        return kd.prepare(toys.concat_branch())
    if name == "tcn_taps":
        return kd.prepare(_tcn(), search=TIME)
    if name == "choice":
        return kd.prepare(choice_model())
    raise ValueError(name)


def _memory(search, plan, target):
    if plan.choices:
        from keras_dnas.choice_memory import ChoiceMemory

        return ChoiceMemory.from_model(search, plan, target=target)
    return MemoryModel.from_model(search, plan, target=target)


def _search_variables(search):
    return [v for v in search.trainable_variables if v.name.startswith("dnas_")]


def _randomize(search, seed):
    """Masks half open, random taps and choice logits (every alternative weighs)."""
    rng = np.random.default_rng(seed)
    for v in _search_variables(search):
        if v.name == "dnas_choice":
            v.assign(rng.normal(size=v.shape).astype("float32"))
        else:
            v.assign(rng.uniform(-0.3, 1.0, size=v.shape).astype("float32"))


def _both(cm, search, plan, metrics, variables):
    """Values and gradients of every metric, the tensor path and the recorded one."""
    out = {}
    for m in metrics:
        with tf.GradientTape(persistent=True) as tape:
            counts = soft_counts(search, plan)
            direct = cm.evaluate(counts, [m], exact=False)[m]
            recorded = cm.soft_evaluate(counts, [m])[m]
        out[m] = (direct, recorded, tape.gradient(direct, variables),
                  tape.gradient(recorded, variables))
    return out


def _check(results, variables):
    for m, (direct, recorded, g_direct, g_recorded) in results.items():
        a, b = float(direct), float(recorded)
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), m
        scale = max(float(np.max(np.abs(g))) for g in g_direct if g is not None)
        assert scale > 0, m  # every metric moves with some search variable here
        for v, gd, gr in zip(variables, g_direct, g_recorded):
            # (no gradient on one path: all counts enter the recorded one, with zeros)
            gd = np.zeros(v.shape) if gd is None else np.asarray(gd)
            gr = np.zeros(v.shape) if gr is None else np.asarray(gr)
            np.testing.assert_allclose(gr, gd, rtol=1e-5, atol=1e-6 * scale, err_msg=m)


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "concat", "tcn_taps", "choice"])
def test_recorded_soft_costs_equal_the_tensor_path(name):
    search = _searchable(name)
    plan = search.rebind()
    variables = _search_variables(search)
    for target in ("stm32h743", "gap8"):
        cm = CostModel(plan, target, memory=_memory(search, plan, target))
        metrics = cm.available()
        for seed in (0, 1):
            _randomize(search, seed)
            _check(_both(cm, search, plan, metrics, variables), variables)  # eagerly
            _check(tf.function(lambda: _both(cm, search, plan, metrics, variables),
                               autograph=False)(), variables)  # as in the train step
        assert cm.unrecorded == []
        # one recording per (counts layout, metrics), reused by every later call
        assert len(cm._recordings) == len(metrics)


def test_recorded_penalty_is_a_few_ops():
    """The point of recording: the penalty's graph no longer grows with the model's layers."""
    search = _searchable("resnet8")
    plan = search.rebind()
    cm = CostModel(plan, "stm32h743", memory=_memory(search, plan, "stm32h743"))
    metrics = ["flash_bytes", "ram_bytes", "latency_ms"]
    counts = [c if isinstance(c, int) else tf.constant(float(c)) for c in soft_counts(
        search, plan)]

    def n_ops(fn):
        graph = tf.function(fn, autograph=False).get_concrete_function().graph
        return len(graph.get_operations())

    direct = n_ops(lambda: dict(cm.evaluate(counts, metrics, exact=False)))
    recorded = n_ops(lambda: dict(cm.soft_evaluate(counts, metrics)))
    assert recorded * 4 < direct, (recorded, direct)


def test_a_metric_that_cannot_be_recorded_is_evaluated_directly():
    search = _searchable("concat")
    plan = search.rebind()

    class Branching:
        """A RAM model that branches on its counts (a comparison: not recordable)."""

        def flash(self, counts, exact=True):
            return 100.0 + 3.0 * next(c for c in counts if not isinstance(c, int))

        def ram(self, counts, exact=True):
            total = 0.0
            for c in counts:
                total = total + (c if c > 0 else 0.0)  # a comparison: not recordable
            return total

    cm = CostModel(plan, "stm32h743", memory=Branching())
    counts = soft_counts(search, plan)
    values = cm.soft_evaluate(counts, ["flash_bytes", "ram_bytes", "macs"])
    direct = cm.evaluate(counts, ["flash_bytes", "ram_bytes", "macs"], exact=False)
    assert cm.unrecorded == ["ram_bytes"]
    for m in direct:
        assert float(values[m]) == pytest.approx(float(direct[m]), rel=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
def test_quotients_are_exact_inside_a_tf_function(n):
    """TensorFlow's graph divides by a constant vector through an approximate reciprocal
    (48 / 4 -> 11.999999, floor 11); the recorded ceil / floor / alignment must not."""
    x = np.arange(0, 4000, dtype="float32")
    params = np.full(len(x), n, "float32")

    @tf.function(autograph=False)
    def run(args):
        args = tf.reshape(args, (1, -1))  # one argument per node
        return tuple(_recorded._KINDS[kind](args, params)
                     for kind in ("floor_div", "ceil_div", "aligned"))

    floor, ceil, aligned = (np.asarray(t) for t in run(tf.constant(x)))
    xi = x.astype(np.int64)
    np.testing.assert_array_equal(floor, xi // n)
    np.testing.assert_array_equal(ceil, -(-xi // n))
    np.testing.assert_array_equal(aligned, -(-xi // n) * n)

