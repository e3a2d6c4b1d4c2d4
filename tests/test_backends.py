"""The search on JAX and PyTorch, each in a child process (Keras fixes its backend at import).

tests/backend_flow.py runs prepare -> fit (flash, RAM and latency budgets, all binding) ->
freeze (certified by converting, in a TensorFlow child of the child) -> summary -> report ->
QAT -> int8 file, and prints its numbers (in tests/child.py's child for the backend, which the
JAX tests of test_layers and test_qat share); here they are checked against the same seed's costs
computed in this (TensorFlow) process. The flows start when collection ends and run beside the
other tests (tests/background.py); these tests run last.
"""

import functools
import importlib.util
import json
import os

import pytest

import keras_dnas as kd

from tests import backend_flow, background, child

FLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_flow.py")


def run_flow(backend, **env):
    # in the session's child for the backend (tests/child.py): its TensorFlow converter child too
    proc = child.run(f"import runpy; runpy.run_path({FLOW!r}, run_name='__main__')", backend,
                     env=env, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BACKEND_FLOW ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("BACKEND_FLOW "):])


@pytest.fixture(scope="module")
def tensorflow_seed_costs():
    search = kd.prepare(backend_flow.seed_model())
    cb = kd.DNASCallback("stm32h743", budgets=backend_flow.BUDGETS, verbose=0)
    cb.bind(search)
    return cb.seed_costs


BACKENDS = ["jax", "torch"]
for _backend in BACKENDS:  # started when collection ends, beside the other tests
    if importlib.util.find_spec(_backend) is not None:
        background.register(f"backend-{_backend}", functools.partial(run_flow, _backend))


@pytest.mark.parametrize("backend", [
    pytest.param(b, marks=pytest.mark.background(f"backend-{b}")) for b in BACKENDS])
def test_budgeted_search_certifies_on_every_backend(backend, tensorflow_seed_costs):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install 'keras_dnas[{backend}]')")
    out = background.result(f"backend-{backend}")
    assert out["backend"] == backend
    # the flash / RAM model converted through the TensorFlow child: the same numbers
    assert out["seed_costs"] == pytest.approx(tensorflow_seed_costs)
    for metric, limit in backend_flow.BUDGETS.items():
        assert out["seed_costs"][metric] > limit  # every budget binds
    # the strengths reached the compiled step: a penalty, and the masks closed channels
    last = out["history"][-1]
    assert last["dnas/penalty"] > 0
    assert last["dnas/flash_bytes"] < out["seed_costs"]["flash_bytes"]
    assert any(abs(a) <= 0.5 for group in out["masks"] for a in group)
    cert = out["certificate"]
    assert cert["all_hold"] and cert["flash_source"].startswith("int8 TFLite conversion")
    assert {r["metric"] for r in cert["budgets"]} == set(backend_flow.BUDGETS)
    assert out["attached_after_fit"] == []
    assert out["summary_type"] == "Summary"
    assert out["report_bytes"] > 10_000 and out["qat_tflite_bytes"] > 1_000
