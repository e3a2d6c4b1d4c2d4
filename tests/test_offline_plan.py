"""Offline arena plans: the planner against brute force, the verifier, and TFLite Micro itself.

Oracles: exhaustive search over placement orders (small random buffer sets) for the planner;
the `tflite_micro` Python interpreter (arena head, outputs) for files carrying a plan.
"""

import itertools
import random

import pytest

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
    sizes = [arena._align_up(s, 16) for s, _, _ in buffers]
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
