"""Arena head with TFLite Micro's own plan vs an offline plan vs the liveness bound.

For every zoo model (random weights, logits instead of softmax: with random weights the int8
softmax of mobilenet_v1 aborts the ``tflite_micro`` host interpreter) and three branchy toys:
convert to full int8 (``kd.export.to_tflite``), plan offline
(``keras_dnas.export.offline.with_offline_plan``), and measure both files in the
``tflite_micro`` interpreter (recording allocator: arena head). The offline file may also
have its operators reordered (the topological order with the lowest peak of live buffers).
Also checks that the prediction equals the measurement and that the int8 outputs are
bit-identical.

Usage::

    python benchmarks/offline_arena.py                # Markdown table on stdout
    python benchmarks/offline_arena.py --models mobilenet_v1
    python benchmarks/offline_arena.py --keep 0.5     # frozen, randomly pruned variants
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


def measure_one(name, keep=None):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    if keep is not None:
        model = pruned(model, keep)
    x = np.random.default_rng(0).standard_normal((4,) + tuple(model.input_shape[1:]))
    x = x.astype("float32")
    tflite = kd.export.to_tflite(model, x)
    start = time.perf_counter()
    planned, plan = offline.with_offline_plan(tflite)
    plan_s = time.perf_counter() - start
    tflm_head = runtime.arena_usage(tflite)["arena_head_bytes"]
    offline_head = runtime.arena_usage(planned)["arena_head_bytes"]
    same = bool(np.array_equal(runtime.run_tflm(planned, x), runtime.run_tflm(tflite, x)))
    return dict(model=name, tflm=tflm_head, offline=offline_head, predicted=plan["head"],
                bound=plan["bound"], optimal=plan["optimal"], method=plan["method"],
                written=plan["written"], reordered=plan["reordered"], same=same, plan_s=plan_s,
                extra_flash=len(planned) - len(tflite))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--keep", type=float, default=None,
                        help="freeze each model with about this fraction of every mask's "
                             "channels kept (random masks) before converting")
    args = parser.parse_args(argv)
    print("| model | TFLM head | offline head (measured) | predicted | liveness bound | saved "
          "| proven optimal | found by | operators reordered | outputs bit-identical | plan time "
          "| file bytes added |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|")
    for name in args.models:
        r = measure_one(name, args.keep)
        saved = 100.0 * (r["tflm"] - r["offline"]) / r["tflm"]
        print(f"| {r['model']} | {r['tflm']:,} | {r['offline']:,} | {r['predicted']:,} | "
              f"{r['bound']:,} | {saved:.1f} % | {'yes' if r['optimal'] else 'no'} | "
              f"{r['method'] if r['written'] else 'greedy (no plan written)'} | "
              f"{'yes' if r['reordered'] else 'no'} | "
              f"{'yes' if r['same'] else 'NO'} | {r['plan_s']:.2f} s | {r['extra_flash']:,} |",
              flush=True)


if __name__ == "__main__":
    main()
