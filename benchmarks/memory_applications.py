"""The flash / arena model on keras.applications networks (issue 13), with wall times.

For each model (``weights=None``, then random non-zero weights as a stand-in for trained ones):

1. ``kd.summary`` of the plain model (its own int8 conversion) against ``len`` of
   ``kd.export.to_tflite`` of it and the arena head replayed on that file;
2. the search-time model of ``kd.prepare(model)`` (one conversion of the full-width structure):
   build time, number of groups, dimensions it could not attribute, flash at full width;
3. random masks closed (keep 0.5), ``kd.freeze``: the search-time model at the frozen widths
   against the frozen model's own conversion (flash ``len``, arena head of TFLite Micro's
   planner replayed on that file).

Times are wall-clock on whatever else the machine is doing.

Usage::

    python benchmarks/memory_applications.py     # MobileNetV2, EfficientNetB0, DenseNet121
    python benchmarks/memory_applications.py --models mnv2
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402
from keras_dnas.costs import arena  # noqa: E402
from keras_dnas.graph import counts as counts_lib  # noqa: E402
from keras_dnas.memory import MemoryModel, _generic_weights  # noqa: E402

MODELS = {
    "mnv2": lambda: keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35,
                                                   weights=None),
    "effb0": lambda: keras.applications.EfficientNetB0(input_shape=(48, 48, 3), weights=None),
    "densenet121": lambda: keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None),
}


def close_random_masks(model, seed=1, keep=0.5):
    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(model):
        v.assign(np.where(rng.random(v.shape) < keep, 1.0, 0.2).astype("float32"))


def run(name):
    model = MODELS[name]()
    _generic_weights(model, seed=5)  # stand-in for trained weights
    rep = np.random.default_rng(0).normal(size=(8,) + tuple(model.inputs[0].shape[1:]))
    rep = rep.astype("float32")
    t = time.time()
    s = kd.summary(model, "stm32h743")
    t_summary = time.time() - t
    t = time.time()
    blob = kd.export.to_tflite(model, representative_data=rep)
    t_convert = time.time() - t
    print(f"{name} plain: kd.summary flash {s['flash_bytes']:,} B, len(.tflite) {len(blob):,} B; "
          f"arena head {s['arena_head_bytes']:,} B, replay of the file "
          f"{arena.tflite_arena(blob, 4)['head']:,} B; kd.summary {t_summary:.1f} s, "
          f"to_tflite {t_convert:.1f} s", flush=True)
    search = kd.prepare(model)
    plan = search.dnas_plan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.time()
        memory = MemoryModel.from_model(search, plan, pointer_bytes=8)
        t_memory = time.time() - t
    full = [g.size for g in plan.groups]
    print(f"{name} search-time model: {t_memory:.1f} s (one conversion), {len(plan.groups)} groups "
          f"({len(plan.searchable_groups())} searchable), {len(memory.unattributed)} dimensions "
          f"not attributed; flash at full width {memory.flash(full):,} B", flush=True)
    close_random_masks(search)
    counts = counts_lib.hard_counts(search, plan)
    frozen = kd.freeze(search)
    frozen_blob = kd.export.to_tflite(frozen, representative_data=rep)
    # The planner replay of the frozen file (equal to TFLite Micro's head on every model of
    # tests/); kd.export.measure's in-process interpreter exited silently on this frozen
    # MobileNetV2 in one of two runs.
    replayed = arena.tflite_arena(frozen_blob, 8)
    predicted = memory.flash(counts)
    print(f"{name} random frozen model: flash predicted {predicted:,} B, len(.tflite) "
          f"{len(frozen_blob):,} B ({predicted - len(frozen_blob):+,} B); arena head predicted "
          f"{memory.ram_parts(counts)['head']:,} B, planner replay of the file "
          f"{replayed['head']:,} B", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    for name in args.models:
        run(name)


if __name__ == "__main__":
    main()
