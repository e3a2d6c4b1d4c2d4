"""Searchable share of the conv / dense channels of keras.applications models.

For each model (random weights, ``weights=None``, small inputs): the share of
Conv / Dense / SeparableConv output channels whose group the search may prune,
outside the groups that reach the model output (the classifier), with the
most common reasons for the frozen ones; then (``--check``) that
``kd.prepare`` with open masks reproduces the model and that ``kd.freeze``
with random masks (about half the channels of every group closed) computes
what the masked model computes (inference), with the time each step takes;
and (``--tflite``) that the frozen model converts with
``kd.export.to_tflite``.

It reads only ``kd.graph.analyze`` and plain plan data, so it also runs
against an older checkout (``PYTHONPATH=/path/to/checkout``) for a
before / after comparison.

Usage::

    python benchmarks/searchable_fraction.py                     # fractions only
    python benchmarks/searchable_fraction.py --check --tflite    # and prepare / freeze / convert
    python benchmarks/searchable_fraction.py --models v3,eff
"""

import argparse
import collections
import time

import numpy as np

import keras
import keras_dnas as kd

A = keras.applications

MODELS = {
    "v3": ("MobileNetV3Small 64x64", lambda: A.MobileNetV3Small(
        weights=None, input_shape=(64, 64, 3), classes=10, minimalistic=False)),
    "v3min": ("MobileNetV3Small minimalistic 64x64", lambda: A.MobileNetV3Small(
        weights=None, input_shape=(64, 64, 3), classes=10, minimalistic=True)),
    "eff": ("EfficientNetB0 48x48", lambda: A.EfficientNetB0(
        weights=None, input_shape=(48, 48, 3), classes=10)),
    "v2": ("MobileNetV2 alpha=0.35 64x64", lambda: A.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(64, 64, 3), classes=10)),
    "dense": ("DenseNet121 32x32", lambda: A.DenseNet121(
        weights=None, input_shape=(32, 32, 3), classes=10)),
}


def searchable_fraction(plan):
    """``(searchable, total)`` output channels of Conv / Dense / SeparableConv layer calls
    outside the groups that reach a model output (each layer counted once)."""
    out_groups = {g for v in plan.outputs for g in v.segments}
    searchable = total = 0
    seen = set()
    for info in plan.layers:
        if info.class_name not in ("Conv1D", "Conv2D", "Dense", "SeparableConv1D",
                                   "SeparableConv2D") or info.name in seen:
            continue
        seen.add(info.name)
        if any(g in out_groups for g in info.output.segments):
            continue
        n = plan.view_size(info.output)
        total += n
        if all(not plan.groups[g].frozen for g in info.output.segments):
            searchable += n
    return searchable, total


def _rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _randomize_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])


def run(key, check, tflite):
    title, build = MODELS[key]
    t = time.perf_counter()
    model = build()
    row = {"model": title, "build_s": time.perf_counter() - t}
    t = time.perf_counter()
    plan = kd.graph.analyze(model)
    row["analyze_s"] = time.perf_counter() - t
    s, n = searchable_fraction(plan)
    row.update(searchable=s, total=n, fraction=s / n if n else float("nan"))
    reasons = collections.Counter(g.reason for g in plan.groups
                                  if g.frozen and g.defined_by and
                                  "model output" not in (g.reason or ""))
    row["reasons"] = reasons.most_common(3)
    if not check:
        return row
    rng = np.random.default_rng(0)
    _randomize_bn(model, rng)
    x = rng.normal(size=(2,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    t = time.perf_counter()
    search = kd.prepare(model)
    row["prepare_s"] = time.perf_counter() - t
    row["open_err"] = _rel_err(search(x, training=False), model(x, training=False))
    for v in kd.masks.mask_variables(search):
        v.assign(np.where(rng.random(v.shape) < 0.5, 1.0, 0.2).astype("float32"))
    t = time.perf_counter()
    slim = kd.freeze(search, verbose=0)
    row["freeze_s"] = time.perf_counter() - t
    row["freeze_err"] = _rel_err(slim(x, training=False), search(x, training=False))
    row["params"] = (model.count_params(), slim.count_params())
    if tflite:
        t = time.perf_counter()
        row["tflite_bytes"] = len(kd.export.to_tflite(slim, representative_data=x))
        row["tflite_s"] = time.perf_counter() - t
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--check", action="store_true", help="prepare / freeze equivalence")
    parser.add_argument("--tflite", action="store_true", help="convert the frozen model")
    args = parser.parse_args()
    print("| model | searchable conv/dense channels | share | build s | analyze s |"
          + (" prepare s | open-mask rel. err | freeze s | freeze rel. err | params "
             "(seed -> frozen) |" if args.check else "")
          + (" .tflite B | convert s |" if args.tflite else ""))
    print("|---|---|---|---|---|" + ("---|---|---|---|---|" if args.check else "")
          + ("---|---|" if args.tflite else ""))
    for key in args.models.split(","):
        r = run(key, args.check, args.tflite)
        line = (f"| {r['model']} | {r['searchable']:,} / {r['total']:,} | {r['fraction']:.1%} "
                f"| {r['build_s']:.1f} | {r['analyze_s']:.2f} |")
        if args.check:
            line += (f" {r['prepare_s']:.1f} | {r['open_err']:.1e} | {r['freeze_s']:.1f} | "
                     f"{r['freeze_err']:.1e} | {r['params'][0]:,} -> {r['params'][1]:,} |")
        if args.tflite:
            line += f" {r['tflite_bytes']:,} | {r['tflite_s']:.1f} |"
        print(line, flush=True)
        for reason, count in r["reasons"]:
            print(f"|   frozen: {count} x {reason[:150]} |")


if __name__ == "__main__":
    main()
