"""Data-parallel search: TensorFlow MirroredStrategy and JAX DataParallel on two CPU devices.

Each engine runs in one child process (tests/distributed_flow.py; the device count is fixed when
the backend starts) with two devices: first a one-device search (no strategy, the first device),
then, after keras.backend.clear_session(), the data-parallel one. The same global batches reach
both runs, so:
the masks agree up to float rounding, the penalty logged per epoch is the same (counted once
per global batch: Keras scales regularisation losses by 1 / replicas and sums the replicas'
gradients), the callback's epoch logic ran once per epoch, and the frozen model certifies
budgets that bind. The children start when collection ends and run beside the other tests
(tests/background.py); this test runs last and checks what they printed.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import background

FLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_flow.py")


def runs(engine):
    """The one-device run, then the two-device run, of `engine` in one child process."""
    return subprocess.run([sys.executable, FLOW, engine, "2", "--one-device-first"],
                          capture_output=True, text=True, timeout=1200, check=False)


def results(proc):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DISTRIBUTED_FLOW ")]
    assert proc.returncode == 0 and len(lines) == 2, proc.stderr[-4000:]
    return [json.loads(ln[len("DISTRIBUTED_FLOW "):]) for ln in lines]


ENGINES = ["tf", "jax"]
for _engine in ENGINES:  # started when collection ends, beside the other tests
    background.register(f"distributed-{_engine}", functools.partial(runs, _engine))


@pytest.mark.parametrize("engine", [
    pytest.param(e, marks=pytest.mark.background(f"distributed-{e}")) for e in ENGINES])
def test_data_parallel_search_matches_one_device(engine):
    one, two = results(background.result(f"distributed-{engine}"))
    assert one["replicas"] == 1 and two["replicas"] == 2
    for a, b in zip(one["masks"], two["masks"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert np.abs(np.concatenate([np.ravel(m) for m in one["masks"]]) - 1.0).max() > 0.1
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["dnas/penalty"] == pytest.approx(h1["dnas/penalty"], rel=1e-4, abs=1e-6)
        assert h2["dnas/task_loss"] == pytest.approx(h1["dnas/task_loss"], rel=1e-4)
        assert h2["dnas/flash_bytes"] == h1["dnas/flash_bytes"]
        assert h2["dnas/ram_bytes"] == h1["dnas/ram_bytes"]
    assert any(h["dnas/penalty"] > 0 for h in two["history"])
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    assert two["epochs_seen"] == [0, 1] and len(two["history"]) == 2
    assert two["restored_epoch"] == one["restored_epoch"]
    cert = two["certificate"]
    for row in cert["budgets"]:
        assert two["seed_costs"][row["metric"]] > row["limit"]  # the budget binds
    assert cert["all_hold"]
