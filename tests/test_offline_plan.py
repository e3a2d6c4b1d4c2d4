"""Offline arena plans: the planner against brute force, the verifier, and TFLite Micro itself.

Oracles: exhaustive search over placement orders (small random buffer sets) for the planner;
the `tflite_micro` Python interpreter (arena head, outputs) for files carrying a plan.
"""

import itertools
import random

import warnings

import pytest

from keras_dnas._ste import align_up
from keras_dnas.costs import arena
from keras_dnas.costs.offline_plan import _conflicts, _place_in_order, check_offsets, plan_offsets


def _random_buffers(rng, n, scopes=6, max_len=3):
    out = []
    for _ in range(n):
        first = rng.randint(0, scopes)
        out.append((16 * rng.randint(1, 8) - rng.randint(0, 15), first,
                    first + rng.randint(0, max_len)))
    return out


def _brute_force_head(buffers):
    """Best first-fit head over every placement order (complete: see offline_plan's docstring)."""
    sizes = [align_up(s, 16) for s, _, _ in buffers]
    conflicts = _conflicts([f for _, f, _ in buffers], [l for _, _, l in buffers])
    return min(_place_in_order(order, sizes, conflicts)[1]
               for order in itertools.permutations(range(len(buffers))))


def test_branch_and_bound_is_exact_on_small_sets():
    rng = random.Random(0)
    better = 0
    for _ in range(60):
        buffers = _random_buffers(rng, rng.randint(2, 6))
        plan = plan_offsets(buffers, local_steps=0)
        assert plan["optimal"]
        assert plan["head"] == _brute_force_head(buffers)
        assert check_offsets(buffers, plan["offsets"]) == plan["head"]
        assert plan["bound"] <= plan["head"] <= plan["greedy_head"]
        assert plan["greedy_head"] == arena.greedy_plan(buffers)[1]
        better += plan["head"] < plan["greedy_head"]
    assert better > 0  # the sample contains sets where greedy is not optimal


def test_never_worse_than_greedy_with_a_tiny_node_limit():
    rng = random.Random(1)
    for _ in range(20):
        buffers = _random_buffers(rng, 24, scopes=12, max_len=5)
        for max_nodes, steps in ((0, 0), (5, 0), (50, 50)):
            plan = plan_offsets(buffers, max_nodes=max_nodes, local_steps=steps)
            assert check_offsets(buffers, plan["offsets"]) == plan["head"]
            assert plan["bound"] <= plan["head"] <= plan["greedy_head"]


def test_plan_is_deterministic():
    buffers = _random_buffers(random.Random(2), 20, scopes=10, max_len=4)
    assert plan_offsets(buffers) == plan_offsets(buffers)


def _random_dag(rng, n_ops):
    """Ops in a valid order: each reads one or two earlier tensors, writes one new tensor."""
    ops, n_tensors = [], 1
    for _ in range(n_ops):
        ins = sorted(set(rng.sample(range(n_tensors), min(n_tensors, rng.randint(1, 2)))))
        ops.append((ins, [n_tensors]))
        n_tensors += 1
    return n_tensors, ops


def test_operator_order_is_exact_on_small_graphs():
    from keras_dnas.costs.offline_plan import best_operator_order

    rng = random.Random(3)
    improved = 0
    for _ in range(40):
        n_tensors, ops = _random_dag(rng, rng.randint(2, 6))
        consumed = {t for ins, _ in ops for t in ins}
        outputs = [t for t in range(1, n_tensors) if t not in consumed]
        sizes = [16 * rng.randint(1, 10) for _ in range(n_tensors)]
        order, peak, current = best_operator_order(n_tensors, ops, [0], outputs, sizes)
        producer = {outs[0]: i for i, (_, outs) in enumerate(ops)}

        def valid(perm):
            pos = {op: k for k, op in enumerate(perm)}
            return all(pos[producer[t]] < pos[i] for i, (ins, _) in enumerate(ops)
                       for t in ins if t in producer)

        def peak_of(perm):  # the liveness bound of the TFLM lifetimes in this order
            moved = [ops[i] for i in perm]
            spans = arena.tensor_lifetimes(n_tensors, moved, [0], outputs)
            return arena.liveness_bound([(sizes[t], f, l) for t, (f, l) in enumerate(spans)
                                         if f >= 0 and l >= 1 or t == 0])

        orders = [p for p in itertools.permutations(range(len(ops))) if valid(p)]
        assert valid(order) and sorted(order) == list(range(len(ops)))
        assert current == peak_of(range(len(ops)))
        assert peak == peak_of(order) == min(peak_of(p) for p in orders)
        improved += peak < current
    assert improved > 0


@pytest.mark.parametrize(
    "offsets, message",
    [
        ([0, 96, 0], "buffers 0 and 1 are live together"),
        ([0, 120, 0], "multiples of 16"),
        ([0, -112, 0], "non-negative"),
        ([0, 112], "2 offsets for 3 buffers"),
        ([0, 112.0, 0], "integers"),
    ],
)
def test_verifier_rejects_malformed_plans(offsets, message):
    buffers = [(100, 0, 1), (100, 1, 2), (100, 2, 3)]
    assert check_offsets(buffers, [0, 112, 0]) == 224
    with pytest.raises(ValueError, match=message):
        check_offsets(buffers, offsets)


def test_bad_lifetime_is_named():
    with pytest.raises(ValueError, match="Buffer 1 has an empty or negative lifetime"):
        plan_offsets([(16, 0, 1), (16, 3, 2)])


# ----------------------------------------------------------------------------------------------
# Files carrying a plan, in TFLite Micro
# ----------------------------------------------------------------------------------------------

import functools  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dnas as kd  # noqa: E402
from keras_dnas import _flatbuffer  # noqa: E402
from keras_dnas.export import offline, runtime  # noqa: E402
from tests.toys import inverted_residual, residual_ds, waiting_branch  # noqa: E402


MODELS = {
    "waiting_branch": waiting_branch,
    "residual_ds": residual_ds,
    "inverted_residual": inverted_residual,
    "mobilenet_v1_small": lambda: kd.zoo.mobilenet_v1(
        input_shape=(32, 32, 3), alpha=0.25, classifier_activation=None),
}


@functools.lru_cache(maxsize=None)
def _converted(name):
    keras.utils.set_random_seed(3)
    model = MODELS[name]()
    # trained-like biases: the converter drops all-zero ones, so an untrained model's file has
    # fewer tensors than the search-time memory model (converted with generic weights) expects
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.name.split("/")[-1] in ("bias", "beta"):
            w.assign(rng.uniform(0.05, 0.2, tuple(w.shape)).astype("float32"))
    x = np.random.default_rng(0).standard_normal((8,) + tuple(model.input_shape[1:]))
    return model, x.astype("float32"), kd.export.to_tflite(model, x.astype("float32"))


@pytest.mark.parametrize("name", list(MODELS))
def test_offline_plan_in_tflite_micro(name):
    _, x, tflite = _converted(name)
    planned, plan = offline.with_offline_plan(tflite)
    tflm = runtime.arena_usage(tflite)["arena_head_bytes"]
    assert plan["greedy_head"] == tflm == offline.greedy_head(tflite)
    if not plan["reordered"]:
        assert offline.greedy_head(planned) == tflm
    measured = runtime.arena_usage(planned)["arena_head_bytes"]
    assert measured == plan["head"] <= tflm
    assert plan["bound"] <= plan["head"]
    assert offline.carried_plan(planned) == ("offline" if plan["written"] else "tflm")
    if name in ("residual_ds", "mobilenet_v1_small"):
        assert plan["written"] and measured < tflm  # branches: greedy leaves holes
    if name == "waiting_branch":
        assert plan["reordered"] and measured < tflm
    ops = [(op.name, op.inputs, op.outputs) for op in _flatbuffer.read_tflite(planned).all_operators]
    before = [(op.name, op.inputs, op.outputs) for op in _flatbuffer.read_tflite(tflite).all_operators]
    assert ops == before if not plan["reordered"] else sorted(ops) == sorted(before)
    if plan["written"] or plan["reordered"]:
        assert np.array_equal(runtime.run_tflm(planned, x), runtime.run_tflm(tflite, x))


def test_to_tflite_arena_plan_offline():
    model, x, tflite = _converted("residual_ds")
    planned = kd.export.to_tflite(model, x, arena_plan="offline")
    assert planned == offline.with_offline_plan(tflite)[0]
    with pytest.raises(ValueError, match="arena_plan"):
        kd.export.to_tflite(model, x, arena_plan="greedy")


def test_malformed_plan_is_never_written():
    _, _, tflite = _converted("inverted_residual")
    plan = offline.plan_tflite(tflite)
    good = plan["tensor_offsets"]
    assert offline.carried_plan(offline.write_offline_plan(tflite, good)) == "offline"
    planned = [i for i, o in enumerate(good) if o >= 0]
    overlapping = [0 if o >= 0 else -1 for o in good]
    misaligned = [o + 8 if i == planned[0] else o for i, o in enumerate(good)]
    missing = [-1 if i == planned[-1] else o for i, o in enumerate(good)]
    for bad, message in ((overlapping, "live together"), (misaligned, "multiples of 16"),
                         (missing, "needs arena memory"), (good[:-1], "offsets for a subgraph")):
        with pytest.raises(ValueError, match=message):
            offline.write_offline_plan(tflite, bad)


# ----------------------------------------------------------------------------------------------
# Plumbing: summary, freeze, callback, CLI
# ----------------------------------------------------------------------------------------------


def test_summary_and_freeze_predict_the_offline_file():
    model, x, tflite = _converted("residual_ds")
    planned, plan = offline.with_offline_plan(tflite)
    tflm = kd.summary(model, "stm32h743")
    off = kd.summary(model, "stm32h743", arena_plan="offline")
    assert tflm["arena_head_bytes"] == plan["greedy_head"]
    assert off["arena_head_bytes"] == plan["head"] == runtime.arena_usage(planned)[
        "arena_head_bytes"]
    assert off["arena_tail_bytes"] == tflm["arena_tail_bytes"]
    # The plan's flash cost is measured once on the memory model's own conversion: the
    # re-serialised file's padding differs by a few bytes from file to file.
    assert abs((off["flash_bytes"] - tflm["flash_bytes"]) - (len(planned) - len(tflite))) <= 64
    # freeze certifies RAM against the plan that ships: a budget between the two heads holds
    # only with the offline plan.
    search = kd.prepare(model)
    budget = (off["ram_bytes"] + tflm["ram_bytes"]) // 2
    frozen = kd.freeze(search, "stm32h743", budgets={"ram_bytes": budget}, fill=False, verbose=0,
                       arena_plan="offline")
    assert frozen.count_params() == model.count_params()  # nothing had to close
    # with a flash budget too, freeze certifies on the converted file: that must be the file
    # that ships, with its plan (TFLM's own plan would need more RAM than the budget and
    # close channels the offline plan does not need closed; it did, before)
    loose_flash = 2 * tflm["flash_bytes"]
    both = kd.freeze(search, "stm32h743", budgets={"ram_bytes": budget, "flash_bytes": loose_flash},
                     fill=False, verbose=0, arena_plan="offline")
    assert both.count_params() == model.count_params()
    rows = {r["metric"]: r for r in both.dnas_certificate["budgets"]}
    shipped = kd.export.to_tflite(both, x, arena_plan="offline")
    assert rows["ram_bytes"]["value"] == off["ram_bytes"] <= budget
    assert rows["flash_bytes"]["value"] >= len(shipped) - 64  # the planned file, not TFLM's
    with warnings.catch_warnings():  # channels close; only their count matters here
        warnings.filterwarnings("ignore", "keras_dnas.freeze: closing channels", UserWarning)
        greedy = kd.freeze(search, "stm32h743", budgets={"ram_bytes": budget}, fill=False,
                           verbose=0)
    assert greedy.count_params() < model.count_params()  # TFLM's plan: channels must close
    # The search's RAM metric: exact = the offline head, soft = the liveness bound (+ tail).
    callback = kd.DNASCallback("stm32h743", budgets={"ram_bytes": budget}, arena_plan="offline")
    callback.bind(search)
    full = callback.cost_model.full_counts()
    assert callback.cost_model.evaluate(full, ["ram_bytes"])["ram_bytes"] == off["ram_bytes"]
    soft = callback.cost_model.evaluate(full, ["ram_bytes"], exact=False)["ram_bytes"]
    assert float(keras.ops.convert_to_numpy(soft)) == plan["bound"] + off["arena_tail_bytes"]
    with pytest.raises(ValueError, match="arena_plan"):
        kd.freeze(search, "stm32h743", budgets={"ram_bytes": budget}, arena_plan="best")
    with pytest.raises(ValueError, match="arena_plan"):
        kd.DNASCallback("stm32h743", arena_plan="best")


def test_inspect_names_the_plan(tmp_path):
    from keras_dnas import cli

    _, _, tflite = _converted("residual_ds")
    planned, plan = offline.with_offline_plan(tflite)
    for data, carried in ((tflite, "tflm"), (planned, "offline")):
        path = tmp_path / f"{carried}.tflite"
        path.write_bytes(data)
        report = cli.inspect_model(str(path))
        assert report["arena_plan"] == carried
        assert report["greedy_arena_head_bytes"] == plan["greedy_head"]
        assert report["arena_head_bytes"] == (plan["head"] if carried == "offline"
                                              else plan["greedy_head"])


def test_measure_names_the_plan():
    _, _, tflite = _converted("residual_ds")
    planned, plan = offline.with_offline_plan(tflite)
    assert kd.export.measure(tflite).arena_plan == "tflm"
    result = kd.export.measure(planned)
    assert result.arena_plan == "offline" and result.arena_head_bytes == plan["head"]
