"""keras.applications models through the whole flow: prepare, search under flash + RAM budgets,
budgeted freeze, int8 conversion, and the budgets checked on the converted file.

Random weights (``weights=None``), small inputs and random data: this measures that the flow
runs and that every budget holds on the real int8 file, not accuracy. For each model: the
searchable share of conv / dense channels (outside the classifier), ``kd.summary`` of the seed,
one search epoch with ``DNASCallback`` at flash and RAM budgets of ``--fraction`` of the seed,
``kd.freeze`` (certifies), then ``kd.export.to_tflite`` of the frozen model: its ``len`` and
the TFLite Micro arena on the target (the planner replay of that file for a 32-bit target,
which ``tests/test_memory_model.py`` checks against the interpreter) against the budgets; with
the time of each step.

Usage::

    python benchmarks/applications_search.py                    # every model
    python benchmarks/applications_search.py --models v3min,v2 --fraction 0.6
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import keras
import keras_dnas as kd
from keras_dnas.costs import arena
from keras_dnas import _flatbuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from searchable_fraction import MODELS, searchable_fraction  # noqa: E402

TARGET = "stm32h743"


def run(key, fraction, samples=64, epochs=1):
    title, build = MODELS[key]
    keras.utils.set_random_seed(0)
    times = {}
    t = time.perf_counter()
    model = build()
    shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (samples,) + shape).astype("float32")
    y = rng.integers(0, model.output_shape[-1], samples)
    seed = kd.summary(model, TARGET)
    times["seed summary"] = time.perf_counter() - t

    t = time.perf_counter()
    search = kd.prepare(model)
    times["prepare"] = time.perf_counter() - t
    searchable, total = searchable_fraction(kd.graph.analyze(model))
    budgets = {"flash_bytes": int(fraction * seed["flash_bytes"]),
               "ram_bytes": int(fraction * seed["ram_bytes"])}
    search.compile("adam", keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    t = time.perf_counter()
    search.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
               callbacks=[kd.DNASCallback(TARGET, budgets=budgets, calibration_data=x,
                                          verbose=0)])
    times["search"] = time.perf_counter() - t

    t = time.perf_counter()
    slim = kd.freeze(search, verbose=0)
    times["freeze"] = time.perf_counter() - t
    t = time.perf_counter()
    tflite = kd.export.to_tflite(slim, representative_data=x[:16])
    times["convert"] = time.perf_counter() - t
    ram = arena.tflite_arena(_flatbuffer.read_tflite(tflite), pointer_bytes=4)["total"]
    cert = slim.dnas_certificate
    return {
        "model": title, "searchable": f"{searchable:,}/{total:,} ({100 * searchable / total:.0f} %)",
        "seed flash": seed["flash_bytes"], "seed ram": seed["ram_bytes"],
        "flash budget": budgets["flash_bytes"], "flash": len(tflite),
        "ram budget": budgets["ram_bytes"], "ram": ram,
        "certified": cert["all_hold"],
        "hold": len(tflite) <= budgets["flash_bytes"] and ram <= budgets["ram_bytes"],
        "times": times,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys: "
                        + ", ".join(MODELS))
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="flash and RAM budgets as a fraction of the seed's")
    args = parser.parse_args(argv)
    print(f"| model | searchable channels | flash seed -> budget -> int8 file (B) | "
          f"arena seed -> budget -> int8 file (B) | certified | holds | seconds: "
          f"summary / prepare / search epoch / freeze / convert |")
    print("|---|---|---|---|---|---|---|")
    for key in args.models.split(","):
        r = run(key, args.fraction)
        t = r["times"]
        print(f"| {r['model']} | {r['searchable']} | {r['seed flash']:,} -> {r['flash budget']:,}"
              f" -> {r['flash']:,} | {r['seed ram']:,} -> {r['ram budget']:,} -> {r['ram']:,} | "
              f"{r['certified']} | {r['hold']} | {t['seed summary']:.0f} / {t['prepare']:.0f} / "
              f"{t['search']:.0f} / {t['freeze']:.0f} / {t['convert']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
