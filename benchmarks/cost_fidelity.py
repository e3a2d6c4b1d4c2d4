"""Flash / arena fidelity of the memory model against TFLite Micro (for BENCHMARKS_costs.md).

For every zoo model and a few randomly pruned variants of it: the searchable model
(``kd.prepare``) gets random non-zero weights (a stand-in for a trained model) and random
masks closed, is frozen (``kd.freeze``), converted to full int8 (``kd.export.to_tflite``) and
measured in the ``tflite_micro`` host interpreter (``kd.export.measure``: ``len(tflite)`` and
the recording allocator's head / tail). The prediction is
``MemoryModel.from_model(searchable)`` at the masks' hard counts: one conversion of the
full-width structure per model, shared by all variants.

The host interpreter is 64-bit, so the tail is compared with ``pointer_bytes=8``; the 32-bit
tail a Cortex-M build would allocate is printed as predicted only (not measurable here).

Usage::

    python benchmarks/cost_fidelity.py                    # Markdown table on stdout
    python benchmarks/cost_fidelity.py --out table.md     # also write it to a file
    python benchmarks/cost_fidelity.py --models ds_cnn tcn --keep 0.6
    python benchmarks/cost_fidelity.py --untrained        # the zoo's initial weights
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402
from keras_dnas.graph import counts as counts_lib  # noqa: E402
from keras_dnas.memory import MemoryModel  # noqa: E402

ZOO = ("resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder", "tcn")


def random_weights(model, seed):
    """Random non-zero weights (a trained model has no all-zero biases), valid BN statistics."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.name == kd.masks.ALPHA_NAME or "float" not in str(w.dtype):
            continue
        if w.name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, tuple(w.shape))
        else:
            value = rng.normal(0.0, 0.3, tuple(w.shape))
        w.assign(value.astype("float32"))


def close_masks(model, keep, seed):
    """Keep about ``keep`` of every mask's channels (all of them for ``keep >= 1``)."""
    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(model):
        on = rng.random(v.shape) < keep
        v.assign(np.where(on, 1.0, 0.2).astype("float32"))


def err(pred, meas):
    return 100.0 * (pred - meas) / meas if meas else float("nan")


def build(name, seed=0, untrained=False):
    """The searchable zoo model with random weights and its memory models (host and MCU)."""
    keras.utils.set_random_seed(seed)
    searchable = kd.prepare(getattr(kd.zoo, name)())
    if not untrained:
        random_weights(searchable, seed=seed)
    t0 = time.perf_counter()
    host = MemoryModel.from_model(searchable, pointer_bytes=8)  # the one conversion
    t_build = time.perf_counter() - t0
    mcu = MemoryModel.from_model(searchable, pointer_bytes=4)  # same conversions (cached)
    return searchable, host, mcu, t_build


def measure_variant(searchable, host, mcu, keep, seed):
    name = searchable.name
    close_masks(searchable, keep, seed)
    counts = counts_lib.hard_counts(searchable, host.plan)
    t0 = time.perf_counter()
    parts = host.ram_parts(counts)
    t_eval = time.perf_counter() - t0
    flash = host.flash(counts)
    soft = float(host.ram(counts, exact=False))
    parts32 = mcu.ram_parts(counts)
    frozen = kd.freeze(searchable)
    rng = np.random.default_rng(0)
    rep = rng.normal(size=(8,) + tuple(frozen.inputs[0].shape[1:])).astype("float32")
    tflite = kd.export.to_tflite(frozen, representative_data=rep)
    m = kd.export.measure(tflite)
    full = [g.size for g in host.plan.groups]
    searchable_ids = [g.id for g in host.plan.groups if not g.frozen]
    kept = sum(counts[g] for g in searchable_ids) / max(1, sum(full[g] for g in searchable_ids))
    return dict(
        model=name, keep=keep, kept=kept,
        flash_pred=flash, flash_meas=m["flash_bytes"],
        head_pred=parts["head"], head_meas=m["host_arena_head_bytes"],
        tail_pred=parts["tail"], tail_meas=m["host_arena_tail_bytes"],
        total_pred=parts["total"], total_meas=m["host_arena_bytes"],
        soft=soft, tail32=parts32["tail"], total32=parts32["total"],
        t_eval=t_eval,
    )


def table(rows):
    lines = [
        "| model | channels kept | flash pred / meas (B) | err | head pred / meas (B) | "
        "host tail pred / meas (B) | err | arena total pred / meas (B) | err | "
        "soft RAM (B) | 32-bit tail / total, pred (B) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {100 * r['kept']:.0f} % "
            f"| {r['flash_pred']:,} / {r['flash_meas']:,} "
            f"| {err(r['flash_pred'], r['flash_meas']):+.2f} % "
            f"| {r['head_pred']:,} / {r['head_meas']:,} "
            f"{'(exact)' if r['head_pred'] == r['head_meas'] else '(**differs**)'} "
            f"| {r['tail_pred']:,} / {r['tail_meas']:,} | {r['tail_pred'] - r['tail_meas']:+d} B "
            f"| {r['total_pred']:,} / {r['total_meas']:,} "
            f"| {err(r['total_pred'], r['total_meas']):+.2f} % "
            f"| {r['soft']:,.0f} | {r['tail32']:,} / {r['total32']:,} |"
        )
    return "\n".join(lines)


def summary(rows):
    flash = [abs(err(r["flash_pred"], r["flash_meas"])) for r in rows]
    tail = [abs(r["tail_pred"] - r["tail_meas"]) for r in rows]
    heads = sum(r["head_pred"] == r["head_meas"] for r in rows)
    below = sum(r["soft"] <= r["total_pred"] for r in rows)
    build = {r["model"]: r["t_build"] for r in rows if r["t_build"] > 0.5}
    evals = [1000 * r["t_eval"] for r in rows]
    return (
        f"- head exact on {heads} / {len(rows)} variants; host tail error at most "
        f"{max(tail)} B; flash error at most {max(flash):.2f} % "
        f"(mean {np.mean(flash):.2f} %).\n"
        f"- soft RAM (liveness bound + tail) <= exact arena on {below} / {len(rows)}.\n"
        f"- building the memory model (2 conversions): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in build.items())
        + f"; one exact evaluation (planner replay): {min(evals):.1f} .. {max(evals):.1f} ms."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--keep", nargs="+", type=float, default=[1.0, 0.75, 0.4],
                        help="fraction of channels kept per variant (1.0: full width)")
    parser.add_argument("--untrained", action="store_true",
                        help="keep the zoo's initial weights (zero biases, unit BatchNorms)")
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for name in args.models:
        searchable, host, mcu, t_build = build(name, untrained=args.untrained)
        for k, keep in enumerate(args.keep):
            rows.append(measure_variant(searchable, host, mcu, keep, seed=k + 1))
            r = rows[-1]
            r.update(model=name, t_build=t_build if k == 0 else 0.0)
            print(f"# {name} keep={keep}: flash {r['flash_pred']}/{r['flash_meas']} "
                  f"head {r['head_pred']}/{r['head_meas']} tail {r['tail_pred']}/{r['tail_meas']}",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    text = (
        "Command: `python benchmarks/cost_fidelity.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + f"` ({wall:.0f} s wall, TF {_tf_version()}, keras {keras.__version__})\n\n"
        + table(rows) + "\n\n" + summary(rows) + "\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def _tf_version():
    import tensorflow as tf

    return tf.__version__


if __name__ == "__main__":
    main()
