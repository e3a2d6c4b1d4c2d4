"""Data-parallel search: TensorFlow MirroredStrategy and JAX DataParallel on two CPU devices.

Each run is a child process (tests/distributed_flow.py; the device count is fixed when the
backend starts). The same global batches reach a one-device run and a two-device run, so:
the masks agree up to float rounding, the penalty logged per epoch is the same (counted once
per global batch: Keras scales regularisation losses by 1 / replicas and sums the replicas'
gradients), the callback's epoch logic ran once per epoch, and the frozen model certifies
budgets that bind.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

FLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_flow.py")


def start(engine, devices, *flags):
    return subprocess.Popen([sys.executable, FLOW, engine, str(devices), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc):
    out, err = proc.communicate(timeout=1200)
    lines = [ln for ln in out.splitlines() if ln.startswith("DISTRIBUTED_FLOW ")]
    assert proc.returncode == 0 and lines, err[-4000:]
    return json.loads(lines[-1][len("DISTRIBUTED_FLOW "):])


@pytest.mark.parametrize("engine", ["tf", "jax"])
def test_data_parallel_search_matches_one_device(engine):
    single = start(engine, 1, "--no-freeze")
    parallel = start(engine, 2)
    one, two = result(single), result(parallel)
    assert one["replicas"] == 1 and two["replicas"] == 2
    for a, b in zip(one["masks"], two["masks"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert np.abs(np.concatenate([np.ravel(m) for m in one["masks"]]) - 1.0).max() > 0.1
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["dnas/penalty"] == pytest.approx(h1["dnas/penalty"], rel=1e-4, abs=1e-6)
        assert h2["dnas/task_loss"] == pytest.approx(h1["dnas/task_loss"], rel=1e-4)
        assert h2["dnas/flash"] == h1["dnas/flash"] and h2["dnas/ram"] == h1["dnas/ram"]
    assert any(h["dnas/penalty"] > 0 for h in two["history"])
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    assert two["epochs_seen"] == [0, 1] and len(two["history"]) == 2
    assert two["restored_epoch"] == one["restored_epoch"]
    cert = two["certificate"]
    for row in cert["budgets"]:
        assert two["seed_costs"][row["metric"]] > row["limit"]  # the budget binds
    assert cert["all_hold"]
