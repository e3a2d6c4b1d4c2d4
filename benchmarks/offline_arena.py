"""Arena head with TFLite Micro's own plan vs an offline plan vs the liveness bound.

Model sets:

- the zoo (random weights, logits instead of softmax: with random weights the int8 softmax
  of mobilenet_v1 aborts the ``tflite_micro`` host interpreter) and three branchy toys,
  optionally frozen with random masks (``--keep``);
- ``--grid CSV``: the benchmark grid's trained models (``benchmarks/run.py``), rebuilt at the
  widths of every row of the CSV (its ``channels`` column; the arena depends on the widths,
  not on the weights), random weights;
- ``--fuzz N``: the random graphs of ``tests/fuzz_graphs_lib.py`` (seeds ``--fuzz-seed`` to
  ``--fuzz-seed + N - 1``), each as built and frozen with random masks.

For each model: convert to full int8 (``kd.export.to_tflite``), plan offline
(``keras_dnas.export.offline.with_offline_plan``), measure both files in the ``tflite_micro``
interpreter (recording allocator: arena head), compare the int8 outputs of the two files
(bit-identical expected) and the measured head with ``kd.summary(model,
arena_plan="offline")``'s and the planner's predictions. The offline file may also have its
operators reordered (the topological order with the lowest peak of live buffers).

Usage::

    python benchmarks/offline_arena.py                # Markdown table on stdout
    python benchmarks/offline_arena.py --models mobilenet_v1
    python benchmarks/offline_arena.py --keep 0.5     # frozen, randomly pruned variants
    python benchmarks/offline_arena.py --grid benchmarks/results/centred_full_results.csv
    python benchmarks/offline_arena.py --fuzz 50      # fuzzer graphs 0..49, plain and frozen
"""

import argparse
import csv
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402
from keras_dnas.export import offline, runtime  # noqa: E402
from tests.toys import bn_relu as _bn_relu, residual_ds, waiting_branch  # noqa: E402

L = keras.layers


def inception():
    """Three parallel branches concatenated (1x1, 3x3, pool + 1x1)."""
    x = keras.Input((24, 24, 3))
    h = _bn_relu(L.Conv2D(16, 3, padding="same", name="stem")(x), "stem")
    a = L.Conv2D(8, 1, activation="relu")(h)
    b = L.Conv2D(16, 3, padding="same", activation="relu")(L.Conv2D(8, 1, activation="relu")(h))
    c = L.Conv2D(8, 1, activation="relu")(L.MaxPooling2D(3, 1, padding="same")(h))
    h = L.Concatenate()([a, b, c])
    return keras.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(h)), name="inception")


MODELS = {
    "resnet8": lambda: kd.zoo.resnet8(classifier_activation=None),
    "ds_cnn": lambda: kd.zoo.ds_cnn(classifier_activation=None),
    "mobilenet_v1": lambda: kd.zoo.mobilenet_v1(classifier_activation=None),
    "fc_autoencoder": kd.zoo.fc_autoencoder,
    "tcn": lambda: kd.zoo.tcn(classifier_activation=None),
    "residual_ds (toy)": residual_ds,
    "inception (toy)": inception,
    "waiting_branch (toy)": waiting_branch,
}


def pruned(model, keep=0.5, seed=1):
    """The frozen model after closing about half of every mask (a searched model's shape)."""
    search = kd.prepare(model)
    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(search):
        v.assign(np.where(rng.random(v.shape) < keep, 1.0, 0.0).astype("float32"))
    return kd.freeze(search, verbose=0)


class NotConverted(Exception):
    """The model does not convert to int8 (a fuzzer finding of its own, not a planner one)."""


def measure_model(name, model):
    """Both files of ``model`` measured on TFLite Micro, and the predictions (a result dict)."""
    x = np.random.default_rng(0).standard_normal((4,) + tuple(model.input_shape[1:]))
    x = x.astype("float32")
    try:
        tflite = kd.export.to_tflite(model, x)
    except Exception as e:  # noqa: BLE001 - not convertible: nothing to plan
        raise NotConverted(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
    start = time.perf_counter()
    planned, plan = offline.with_offline_plan(tflite)
    plan_s = time.perf_counter() - start
    tflm_head = runtime.arena_usage(tflite)["arena_head_bytes"]
    offline_head = runtime.arena_usage(planned)["arena_head_bytes"]
    same = bool(np.array_equal(runtime.run_tflm(planned, x), runtime.run_tflm(tflite, x)))
    summary = kd.summary(model, "stm32h743", arena_plan="offline")["arena_head_bytes"]
    return dict(model=name, tflm=tflm_head, offline=offline_head, predicted=plan["head"],
                summary=int(summary), bound=plan["bound"], optimal=plan["optimal"],
                method=plan["method"], written=plan["written"], reordered=plan["reordered"],
                same=same, plan_s=plan_s, extra_flash=len(planned) - len(tflite))


def measure_one(name, keep=None):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    if keep is not None:
        model = pruned(model, keep)
    return measure_model(name, model)


def grid_models(paths):
    """``(name, build)`` for every distinct (data set, widths) among the CSVs' result rows."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _bench import tasks

    from keras_dnas.freeze import kept_channels, rebuild_with

    seen = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status") == "ok" and row.get("channels"):
                    key = (row["dataset"], row["channels"])
                    seen.setdefault(key, []).append(f"{row['method']} {row['point'] or ''}")

    def build(dataset, widths):
        def make():
            search = kd.prepare(tasks.TASKS[dataset].build())
            plan, keep = kept_channels(search)
            groups = iter(widths)
            keep = [k if g.frozen else np.arange(g.size) < next(groups)
                    for g, k in zip(plan.groups, keep)]
            return rebuild_with(search, plan, keep)
        return make

    out = []
    for (dataset, channels), rows in seen.items():
        widths = json.loads(channels)
        label = f"{dataset} {widths} ({'; '.join(dict.fromkeys(r.strip() for r in rows))})"
        out.append((label, build(dataset, widths)))
    return out


def fuzz_models(n, first_seed=0):
    """``(name, build)``: fuzzer graph ``seed`` as built, and frozen with random masks."""
    from tests import fuzz_graphs_lib as fz

    def plain(seed):
        return lambda: fz.build(seed).model

    def frozen(seed):
        def make():
            search = kd.prepare(fz.build(seed).model)
            fz.close_random_masks(search, seed)
            return kd.freeze(search, verbose=0)
        return make

    out = []
    for seed in range(first_seed, first_seed + n):
        out += [(f"fuzz {seed}", plain(seed)), (f"fuzz {seed} frozen", frozen(seed))]
    return out


HEADER = ("| model | TFLM head | offline head (measured) | predicted | `kd.summary` | liveness bound "
          "| saved | proven optimal | found by | operators reordered | outputs bit-identical "
          "| plan time | file bytes added |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|")


def row_markdown(r):
    saved = 100.0 * (r["tflm"] - r["offline"]) / r["tflm"]
    return (f"| {r['model']} | {r['tflm']:,} | {r['offline']:,} | {r['predicted']:,} | "
            f"{r['summary']:,} | {r['bound']:,} | {saved:.1f} % | "
            f"{'yes' if r['optimal'] else 'no'} | "
            f"{r['method'] if r['written'] else 'greedy (no plan written)'} | "
            f"{'yes' if r['reordered'] else 'no'} | "
            f"{'yes' if r['same'] else 'NO'} | {r['plan_s']:.2f} s | {r['extra_flash']:,} |")


def tally(results, skipped):
    """Counts over the measured models: the acceptance conditions of the offline plan."""
    n = len(results)
    count = lambda cond: sum(1 for r in results if cond(r))  # noqa: E731
    lines = [
        f"- measured: {n} models ({len(skipped)} not measured: conversion or freeze failed "
        "before any plan, listed below)",
        f"- never worse (offline head <= TFLM head): {count(lambda r: r['offline'] <= r['tflm'])}"
        f"/{n}; smaller: {count(lambda r: r['offline'] < r['tflm'])}",
        f"- measured head = planner's prediction: {count(lambda r: r['offline'] == r['predicted'])}"
        f"/{n}; = `kd.summary(..., arena_plan=\"offline\")`: "
        f"{count(lambda r: r['offline'] == r['summary'])}/{n}",
        f"- int8 outputs bit-identical: {count(lambda r: r['same'])}/{n}",
        f"- reaches the liveness bound: {count(lambda r: r['offline'] == r['bound'])}/{n}; "
        f"proven optimal: {count(lambda r: r['optimal'])}/{n}; plan written: "
        f"{count(lambda r: r['written'])}; operators reordered: {count(lambda r: r['reordered'])}",
    ]
    if n:
        saved = [100.0 * (r["tflm"] - r["offline"]) / r["tflm"] for r in results]
        lines.append(f"- head saved: mean {np.mean(saved):.1f} %, max {max(saved):.1f} %; "
                     f"largest plan time {max(r['plan_s'] for r in results):.2f} s")
    bad = [r for r in results if r["offline"] > r["tflm"] or r["offline"] != r["predicted"]
           or r["offline"] != r["summary"] or not r["same"]]
    lines += [f"- FAILS an acceptance condition: {r['model']}" for r in bad]
    lines += [f"- not measured: {name}: {why}" for name, why in skipped]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--keep", type=float, default=None,
                        help="freeze each model with about this fraction of every mask's "
                             "channels kept (random masks) before converting")
    parser.add_argument("--grid", nargs="*", default=None, metavar="CSV",
                        help="the benchmark grid's models at the widths of these results CSVs "
                             "(instead of the zoo)")
    parser.add_argument("--fuzz", type=int, default=None, metavar="N",
                        help="N fuzzer graphs, plain and frozen (instead of the zoo)")
    parser.add_argument("--fuzz-seed", type=int, default=0, help="first fuzzer seed")
    parser.add_argument("--rows", choices=("all", "interesting"), default="all",
                        help="'interesting': table rows only where the plans differ or a "
                             "check fails (the tally counts every model)")
    parser.add_argument("--json", default=None, help="also write every result to this file")
    args = parser.parse_args(argv)
    if args.grid is not None:
        jobs = grid_models(args.grid)
    elif args.fuzz is not None:
        jobs = fuzz_models(args.fuzz, args.fuzz_seed)
    else:
        jobs = [(name, lambda name=name: measure_one(name, args.keep)) for name in args.models]
    start = time.perf_counter()
    print(HEADER, flush=True)
    results, skipped = [], []
    for name, make in jobs:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        if args.grid is None and args.fuzz is None:
            r = make()
        else:
            try:
                model = make()
            except Exception as e:  # noqa: BLE001 - a model that cannot be built is not planned
                skipped.append((name, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
                continue
            try:
                r = measure_model(name, model)
            except NotConverted as e:
                r = None
                skipped.append((name, f"conversion: {e}"))
            except Exception as e:  # noqa: BLE001 - converted but not planned / measured: a bug
                r = None
                skipped.append((name, f"PLAN OR MEASUREMENT FAILED: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:200]}"))
        if r is None:
            print(f"<!-- not measured: {skipped[-1][0]}: {skipped[-1][1]} -->", flush=True)
            continue
        results.append(r)
        interesting = (r["offline"] != r["tflm"] or r["reordered"] or not r["same"]
                       or r["offline"] != r["predicted"] or r["offline"] != r["summary"])
        if args.rows == "all" or interesting:
            print(row_markdown(r), flush=True)
    print()
    print("\n".join(tally(results, skipped)))
    print(f"\n{time.perf_counter() - start:.0f} s wall")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "skipped": skipped}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
