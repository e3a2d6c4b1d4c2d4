"""The fast paths of a budgeted ``kd.freeze`` (issue 13 item 4, issue 17) compute what the
straightforward code computes.

- ``arena.greedy_plan`` walks only the buffers whose lifetimes meet the one it places, and with a
  memo re-places only the buffers from the first one whose size or rank changed: the same
  offsets as TFLite Micro's loop over every placed buffer (kept here as the reference).
- ``MemoryModel.ram_parts`` / ``ram_mass`` replay the planner from structures built once: the
  same numbers as the replay on the rescaled decoded model, on random counts, for models with
  shape constants that split and merge (causal TCN), MEAN scratch buffers (squeeze-excite),
  per-tensor fully connected layers and searched kernel taps.
"""

import numpy as np
import pytest

import keras

import keras_dnas as kd
from keras_dnas.costs import arena
from keras_dnas.costs.model import CostModel
from keras_dnas.graph.counts import tap_owners
from keras_dnas.memory import MemoryModel

from tests import toys

L = keras.layers


def reference_greedy_plan(buffers, alignment=arena.ARENA_ALIGNMENT, offline_offsets=None):
    """TFLite Micro's GreedyMemoryPlanner as written there: every placed buffer is walked in
    offset order (the loop ``greedy_plan`` replaced)."""
    sizes = [-(-s // alignment) * alignment for s, _, _ in buffers]
    first = [f for _, f, _ in buffers]
    last = [e for _, _, e in buffers]
    n = len(sizes)
    if n == 0:
        return [], 0
    fixed = [None] * n if offline_offsets is None else [
        None if (o is None or o < 0) else int(o) for o in offline_offsets]
    online = [i for i in reversed(range(n)) if fixed[i] is None]
    online.sort(key=lambda i: -sizes[i])
    order = [i for i in range(n) if fixed[i] is not None] + online
    offsets, placed = [None] * n, []
    for k, b in enumerate(order):
        if fixed[b] is not None:
            off = fixed[b]
        else:
            off = 0
            for p in placed:
                if first[p] > last[b] or first[b] > last[p]:
                    continue
                if offsets[p] - off >= sizes[b]:
                    break
                off = max(off, offsets[p] + sizes[p])
        offsets[b] = off
        pos = next((j for j, p in enumerate(placed) if offsets[p] > off), len(placed))
        placed.insert(pos, b)
    return offsets, max(offsets[i] + sizes[i] for i in range(n))


@pytest.mark.parametrize("seed", range(40))
def test_greedy_plan_places_every_buffer_as_tflite_micro(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    scopes = int(rng.integers(1, 40))
    buffers = []
    for _ in range(n):
        a, b = sorted(rng.integers(0, scopes, size=2).tolist())
        # few distinct sizes: many ties, which the order and the gaps must break as TFLM does
        buffers.append((int(rng.choice([16, 32, 48, 100, 1000, int(rng.integers(1, 5000))])),
                        a, b))
    offline = None
    if seed % 4 == 0:  # some buffers planned offline (fixed offsets)
        offline = [int(rng.integers(0, 4000)) if rng.random() < 0.2 else None
                   for _ in range(n)]
    assert arena.greedy_plan(buffers, offline_offsets=offline) == \
        reference_greedy_plan(buffers, offline_offsets=offline)
    assert arena.greedy_plan(buffers, alignment=1) == reference_greedy_plan(buffers, alignment=1)
    # with a memo (as the arena replay plans): between calls a few sizes change, and the
    # buffers placed before the first changed one keep the last call's offsets
    memo = {}
    for _ in range(8):
        assert arena.greedy_plan(buffers, offline_offsets=offline, memo=memo) == \
            reference_greedy_plan(buffers, offline_offsets=offline)
        for i in rng.choice(n, size=min(n, int(rng.integers(1, 4))), replace=False):
            size, a, b = buffers[i]
            buffers[i] = (max(1, size + int(rng.choice([-48, -16, -1, 1, 16, 200]))), a, b)


def _se_net():
    """Squeeze-excite (MEAN with keepdims, 1x1 convs, broadcasting multiply), a residual add
    and a searchable Dense after Flatten."""
    x = keras.Input((12, 12, 3))
    h = L.Conv2D(12, 3, padding="same", activation="relu", name="stem")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(h)
    s = L.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(12, 1, activation="sigmoid", name="excite")(s)
    h = L.Multiply()([h, s])
    h = L.Add()([h, L.Conv2D(12, 1, name="skip")(x)])
    h = L.Conv2D(6, 3, strides=2, name="tail")(h)
    h = L.Dense(8, activation="relu", name="hidden")(L.Flatten()(h))
    return keras.Model(x, L.Dense(3)(h))


CASES = {
    "causal_tcn": lambda: kd.zoo.tcn(padding="causal"),
    "squeeze_excite": _se_net,
}


@pytest.fixture(scope="module", params=list(CASES))
def memory(request):
    keras.utils.set_random_seed(0)
    search = kd.prepare(CASES[request.param]())
    return MemoryModel.from_model(search, pointer_bytes=8)


def _random_counts(plan, rng, taps=()):
    counts = []
    for g in plan.groups:
        if g.frozen:
            counts.append(g.size)
        else:  # extremes (1, 2, full) often: where shape constants merge and split
            counts.append(int(rng.choice([1, 2, g.size, int(rng.integers(1, g.size + 1))])))
    return counts + [int(rng.integers(1, t + 1)) for t in taps]


def test_arena_replay_equals_the_replay_of_the_rescaled_model(memory):
    rng = np.random.default_rng(0)
    plan = memory.plan
    assert memory._replay().requests or memory._shape_constants  # what the cases are for
    for trial in range(60):
        counts = _random_counts(plan, rng)
        report = arena.tflite_arena(memory.scaled_model(counts), pointer_bytes=8)
        assert memory.ram_parts(counts) == {k: report[k] for k in ("head", "tail", "total")}, \
            counts
        assert memory.ram_mass(counts) == sum(b["size"] for b in report["buffers"])


def test_flash_at_integer_counts_is_the_sum_term_by_term(memory):
    # the vectorised flash (integer counts) against the sum over every changing vector, its
    # paddings, the zero vectors and the shape constants
    rng = np.random.default_rng(3)
    values = set()
    for trial in range(60):
        counts = _random_counts(memory.plan, rng)
        value = memory.flash(counts)
        assert isinstance(value, int) and value == memory._flash_terms(counts), counts
        values.add(value)
    assert len(values) > 10


def test_causal_tcn_shape_constants_split_in_the_replay():
    """The premise of the causal case: random counts do change the tensor count (one shape
    constant per distinct width), so the replay's tensor count is exercised."""
    keras.utils.set_random_seed(0)
    memory = MemoryModel.from_model(kd.prepare(kd.zoo.tcn(padding="causal")), pointer_bytes=8)
    rng = np.random.default_rng(1)
    seen = {len(memory.scaled_model(_random_counts(memory.plan, rng)).tensors)
            for _ in range(20)}
    assert len(seen) > 1 and memory._shape_constants


def test_arena_replay_with_searched_taps():
    """Counts longer than the groups (searched kernel taps): the replay's matrix for that
    width, and taps not given (the full kernel)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((32, 2))
    h = L.Conv1D(8, 5, padding="causal", activation="relu", name="a")(x)
    h = L.Conv1D(8, 3, padding="causal", dilation_rate=2, name="b")(h)
    search = kd.prepare(keras.Model(x, L.Dense(2)(L.GlobalAveragePooling1D()(h))),
                        search=("channels", "receptive_field"))
    memory = MemoryModel.from_model(search, pointer_bytes=4)
    plan = memory.plan
    taps = [t.dnas_taps for t in tap_owners(search, plan)]
    assert taps
    rng = np.random.default_rng(2)
    for trial in range(30):
        counts = _random_counts(plan, rng, taps if trial % 2 else ())
        report = arena.tflite_arena(memory.scaled_model(counts), pointer_bytes=4)
        assert memory.ram_parts(counts) == {k: report[k] for k in ("head", "tail", "total")}


def test_budgeted_freeze_returns_the_model_its_certificate_converted(monkeypatch, tmp_path):
    """``freeze`` rebuilds the frozen model once and returns the one the certificate converted
    (no second rebuild): it computes what a fresh rebuild computes, its own conversion is the
    certified file, and it saves and loads as a plain Keras model."""
    from keras_dnas import slicing

    keras.utils.set_random_seed(0)
    # biases as trained: the certificate converts an all-zero bias as fine-tuning leaves it
    search = kd.prepare(toys.randomize_biases(_se_net()))
    rng = np.random.default_rng(0)
    for layer in search.layers:
        alpha = getattr(layer, "dnas_alpha", None)
        if alpha is not None and alpha.trainable:
            alpha.assign(rng.uniform(0.05, 1.0, alpha.shape).astype("float32"))
    cm = CostModel(search.dnas_plan, "stm32h743",
                   memory=MemoryModel.from_model(search, target="stm32h743"))
    metrics = ["flash_bytes", "ram_bytes"]
    full, least = cm.evaluate(cm.full_counts(), metrics), cm.evaluate(cm.min_counts(), metrics)
    # half-way between one channel per group and the seed: projection has work to do
    budgets = {m: float(least[m]) + 0.5 * (float(full[m]) - float(least[m])) for m in metrics}
    rebuilds = []
    original = slicing.rebuild_with

    def counted(*args, **kwargs):
        rebuilds.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(kd.freeze_lib, "rebuild_with", counted)
    slim = kd.freeze(search, target="stm32h743", budgets=budgets, verbose=0)
    monkeypatch.undo()
    cert = slim.dnas_certificate
    assert cert["all_hold"] and cert["flash_source"].startswith("int8 TFLite conversion")
    assert len(rebuilds) == 1
    x = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype("float32")
    flash = {r["metric"]: r["value"] for r in cert["budgets"]}["flash_bytes"]
    assert len(kd.export.to_tflite(slim, representative_data=x)) == flash
    args, kwargs = rebuilds[0]
    np.testing.assert_allclose(slim.predict(x, verbose=0),
                               original(*args, **kwargs).predict(x, verbose=0), rtol=1e-6)
    path = tmp_path / "slim.keras"
    slim.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0),
                               slim.predict(x, verbose=0), rtol=1e-6)


def test_rebuild_creates_the_sliced_weights_it_would_assign(monkeypatch):
    """``rebuild_with`` lets the new layers create their weights with the sliced values
    (``_keras.initial_weights``): the same weights, bit for bit, as creating them with their
    initializers and assigning the slices after; every sliced weight is created so."""
    import contextlib

    from keras_dnas import _keras, slicing

    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    h = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="c1")(x))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(L.ReLU()(h))
    h = L.Add()([h, L.Conv2D(8, 1, name="skip")(x)])
    model = keras.Model(x, L.Dense(3)(L.Dense(6)(L.Flatten()(L.Conv2D(4, 3, strides=2)(h)))))
    search = kd.prepare(model)
    rng = np.random.default_rng(0)
    for layer in search.layers:
        alpha = getattr(layer, "dnas_alpha", None)
        if alpha is not None and alpha.trainable:
            alpha.assign(rng.uniform(0.05, 1.0, alpha.shape).astype("float32"))
    for w in search.weights:  # non-trivial BN statistics too
        if w.name != "dnas_alpha":
            w.assign(rng.normal(size=w.shape).astype("float32") + 0.5)
    plan, keep = slicing.kept_channels(search)
    created = []
    real = _keras.initial_weights

    @contextlib.contextmanager
    def spy(values):
        with real(values) as made:
            yield made
        created.append(len(made))

    monkeypatch.setattr(_keras, "initial_weights", spy)
    fast = slicing.rebuild_with(search, plan, keep)
    assert created == [len(fast.weights)]

    @contextlib.contextmanager
    def none(values):
        yield set()

    monkeypatch.setattr(_keras, "initial_weights", none)
    assigned = slicing.rebuild_with(search, plan, keep)
    assert [w.path for w in fast.weights] == [w.path for w in assigned.weights]
    for a, b in zip(fast.get_weights(), assigned.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not k.all() for k in keep)


def test_conversion_leaves_the_garbage_collector_as_it_was():
    """``to_tflite`` hides older objects from the collector while converting (``gc.freeze``):
    afterwards they are back, also after a failed conversion, and a process that froze objects
    itself keeps exactly its own frozen set; objects the conversion drops are collected."""
    import gc
    import weakref

    from keras_dnas.export import to_tflite

    model = keras.Sequential([keras.Input((6,)), L.Dense(3)])
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    gc.unfreeze()  # conftest.py froze the suite's start-up objects: start as a user's process
    try:
        assert gc.get_freeze_count() == 0
        to_tflite(model, representative_data=x)
        assert gc.get_freeze_count() == 0
        with pytest.raises(ValueError):
            to_tflite(keras.Sequential([keras.Input((6,)), L.Lambda(keras.ops.sort)]),
                      representative_data=x)
        assert gc.get_freeze_count() == 0

        class Node:
            pass

        cycle = Node()
        cycle.me = cycle
        dropped = weakref.ref(cycle)
        gc.freeze()
        to_tflite(model, representative_data=x)
        # the caller's freeze is left alone: its objects are still out of the generations
        assert gc.get_freeze_count() > 0
        assert not any(o is cycle for o in gc.get_objects())
        gc.unfreeze()
        assert any(o is cycle for o in gc.get_objects())
        del cycle
        gc.collect()
        assert dropped() is None
    finally:
        gc.collect()
        gc.freeze()  # as conftest.py left it
