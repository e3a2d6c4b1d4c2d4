"""Fits the flatbuffer-overhead constants of `benchmarks/_bench/flash_model.py` on real int8 conversions.

For every layer kind a chain of 0..3 such layers is appended to a small base model, converted to
full-int8 TFLite (batch 1, like `keras_dnas.export.to_tflite`), and the part of `len(tflite)`
that is not the layer payload (int8 weights, int32 biases, per-channel scales / zero points) nor
tensor names is regressed on the number of layers per kind and the number of distinct operator
codes, by least squares. The fitted numbers are printed as Python literals to paste into
`benchmarks/_bench/flash_model.py`, followed by a validation on mixed models.

The fit set is the chains plus 40 random small CNNs; the toy models of
`tests/test_costs_memory.py` are held out and reported as validation.

Run from the repository root: `python benchmarks/fit_flash_constants.py` (a few minutes).
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras  # noqa: E402

from benchmarks._bench import flash_model as flash  # noqa: E402
from keras_dnas._flatbuffer import read_tflite  # noqa: E402

L = keras.layers


def to_int8(model, n=16, seed=0):
    """Full-int8 TFLite, batch-1 input signature (as keras_dnas.export.to_tflite)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    names = [f"input_{k:03d}" for k in range(len(model.inputs))]
    specs = [
        keras.InputSpec(shape=(1,) + tuple(t.shape[1:]), dtype=t.dtype, name=nm)
        for nm, t in zip(names, model.inputs)
    ]

    def rep():
        for _ in range(n):
            yield {
                nm: rng.standard_normal((1,) + tuple(t.shape[1:])).astype("float32")
                for nm, t in zip(names, model.inputs)
            }

    with tempfile.TemporaryDirectory() as d:
        model.export(d, verbose=False, input_signature=specs if len(specs) == 1 else [specs])
        conv = tf.lite.TFLiteConverter.from_saved_model(d)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        return conv.convert()


def randomize(model, seed=0):
    """Non-zero weights everywhere (a zero bias may be dropped by the converter)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights(
                [
                    rng.normal(0, 0.3, w.shape).astype("float32")
                    if w.ndim > 1
                    else rng.uniform(0.1, 1.0, w.shape).astype("float32")
                    for w in ws
                ]
            )
    return model


# kind -> (base builder, layer builder, max repeats). A base returns (input, x, skip).
def _base2d(size=8, ch=8):
    i = keras.Input((size, size, ch), name="inp")
    x = L.Conv2D(ch, 3, padding="same", name="b0")(i)
    return i, x, x


def _base1d():
    i = keras.Input((16,), name="inp")
    # ReLU: the converter moves the bias of a linear Dense into the next Dense (W2 b1 + b2).
    x = L.Dense(16, activation="relu", name="b0")(i)
    return i, x, x


def _base_seq():
    i = keras.Input((32, 8), name="inp")
    x = L.Conv1D(8, 3, padding="same", name="b0")(i)
    return i, x, x


def _binary(cls):
    return lambda x, skip, k: cls(name=f"l{k}")([x, skip])


EXPERIMENTS = {
    "conv": (_base2d, lambda x, s, k: L.Conv2D(8, 3, padding="same", name=f"l{k}")(x), 3),
    "depthwise": (
        _base2d, lambda x, s, k: L.DepthwiseConv2D(3, padding="same", name=f"l{k}")(x), 3),
    "dense": (_base1d, lambda x, s, k: L.Dense(16, name=f"l{k}")(x), 3),
    "add": (_base2d, _binary(L.Add), 3),
    "subtract": (_base2d, _binary(L.Subtract), 3),
    "multiply": (_base2d, _binary(L.Multiply), 3),
    "maximum": (_base2d, _binary(L.Maximum), 3),
    "minimum": (_base2d, _binary(L.Minimum), 3),
    "average": (_base2d, _binary(L.Average), 3),
    "concat": (_base2d, lambda x, s, k: L.Concatenate(name=f"l{k}")([x, s]), 3),
    "pool": (lambda: _base2d(16), lambda x, s, k: L.MaxPooling2D(2, name=f"l{k}")(x), 3),
    "avg_pool": (lambda: _base2d(16), lambda x, s, k: L.AveragePooling2D(2, name=f"l{k}")(x), 3),
    "global_pool": (_base2d, lambda x, s, k: L.GlobalAveragePooling2D(name=f"l{k}")(x), 1),
    "global_max_pool": (_base2d, lambda x, s, k: L.GlobalMaxPooling2D(name=f"l{k}")(x), 1),
    "flatten": (_base2d, lambda x, s, k: L.Flatten(name=f"l{k}")(x), 1),
    "pad": (_base2d, lambda x, s, k: L.ZeroPadding2D(1, name=f"l{k}")(x), 3),
    "activation": (_base2d, lambda x, s, k: L.Activation("sigmoid", name=f"l{k}")(x), 3),
    "softmax": (_base1d, lambda x, s, k: L.Softmax(name=f"l{k}")(x), 1),
    # A BatchNormalization the converter cannot fold (after an Add): each repeat also adds an Add.
    "batchnorm": (
        _base2d,
        lambda x, s, k: L.BatchNormalization(name=f"l{k}")(L.Add(name=f"a{k}")([x, s])),
        3,
    ),
    "conv1d": (_base_seq, lambda x, s, k: L.Conv1D(8, 3, padding="same", name=f"l{k}")(x), 3),
    "conv1d_causal": (
        _base_seq, lambda x, s, k: L.Conv1D(8, 3, padding="causal", name=f"l{k}")(x), 3),
}


def random_dag(seed):
    """A random small CNN (convs, depthwise, adds, concats, pools) for the fit and validation."""
    import random

    r = random.Random(seed)
    size, ch = r.choice([8, 12, 16]), r.choice([4, 8])
    i = keras.Input((size, size, ch), name="inp")
    nodes = [(i, ch, size)]
    for k in range(r.randint(4, 9)):
        kind = r.choice(["conv", "conv", "conv", "dw", "add", "concat", "pool"])
        x, c, h = r.choice(nodes[-3:])
        if kind == "conv":
            co = r.choice([8, 8, 16, 16, 24])
            s = 2 if (h > 4 and r.random() < 0.2) else 1
            act = r.choice(["relu", None])
            y = L.Conv2D(co, r.choice([1, 3]), strides=s, padding="same", activation=act,
                         name=f"n{k}")(x)
            nodes.append((y, co, (h + s - 1) // s))
        elif kind == "dw":
            y = L.DepthwiseConv2D(3, padding="same", activation="relu", name=f"n{k}")(x)
            nodes.append((y, c, h))
        elif kind == "add":
            same = [n for n in nodes if n[1] == c and n[2] == h and n[0] is not x]
            if same:
                nodes.append((L.Add(name=f"n{k}")([x, r.choice(same)[0]]), c, h))
        elif kind == "concat":
            same = [n for n in nodes if n[2] == h and n[0] is not x]
            if same:
                z, cz, _ = r.choice(same)
                nodes.append((L.Concatenate(name=f"n{k}")([x, z]), c + cz, h))
        elif h >= 4:
            pool = r.choice([L.MaxPooling2D, L.AveragePooling2D])(2, name=f"n{k}")
            nodes.append((pool(x), c, h // 2))
    x = nodes[-1][0]
    x = L.GlobalAveragePooling2D(name="head")(x) if r.random() < 0.5 else L.Flatten(name="head")(x)
    return keras.Model(i, L.Dense(r.choice([4, 10]), name="out")(x), name=f"rand{seed}")


def collect():
    """Fit set (chain experiments, random graphs) and validation set (the test toys)."""
    from tests.test_costs_memory import SPECIALS, TOYS

    items = []
    for kind, (base, layer, reps) in EXPERIMENTS.items():
        for k in range(reps + 1):
            acts = {"conv": (None, "relu"), "dense": ("relu",)}.get(kind, (None,))
            for act in acts:
                keras.utils.set_random_seed(0)
                i, x, skip = base()
                for j in range(k):
                    x = layer(x, skip, j)
                    if act:
                        x = L.ReLU(name=f"r{j}")(x)
                items.append((f"{kind}{'+relu' if act else ''} x{k}", keras.Model(i, x, name="m")))
    items += [(f"rand{s}", random_dag(s)) for s in range(40)]
    held_out = []
    for name, (builder, wide, narrow) in TOYS.items():
        held_out += [(name, lambda b=builder, w=wide: b(w)),
                     (name + "_narrow", lambda b=builder, w=narrow: b(w))]
    held_out += list(SPECIALS.items())

    def convert(tag, model):
        keras.utils.set_random_seed(7)
        model = randomize(model)
        print(f"  converting {tag}", flush=True)
        return tag, model, to_int8(model)

    fit_set = [convert(tag, model) for tag, model in items]
    validation = [convert(tag, build()) for tag, build in held_out]
    return fit_set, validation


def _design(samples):
    from tests.test_costs_memory import keras_to_flash_layers

    feats, targets = [], []
    for tag, model, tflite in samples:
        payload, counts, _ = flash.flash_features(keras_to_flash_layers(model))
        assert payload == flash.tflite_payload_bytes(tflite), tag  # the payload is exact
        feats.append(counts)
        targets.append(len(tflite) - flash.tflite_name_bytes(tflite) - payload)
    return feats, targets


def fit(samples):
    """Least squares of len - names - payload on the per-kind counts of `flash_features`."""
    feats, targets = _design(samples)
    cols = sorted({k for c in feats for k in c})
    X = np.array([[c.get(k, 0) for k in cols] for c in feats], float)
    y = np.array(targets, float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    err = X @ coef - y
    print(f"fit: max |error| {np.abs(err).max():.1f} B, rms {np.sqrt((err ** 2).mean()):.1f} B "
          f"over {len(y)} conversions")
    return dict(zip(cols, coef)), err


def main():
    fit_set, validation = collect()
    c, err = fit(fit_set)
    feats, targets = _design(validation)
    print("\nheld-out toys: model, len(tflite), prediction error (B, %)")
    for (tag, _, tflite), f, t in zip(validation, feats, targets):
        e = sum(c.get(k, 0.0) * n for k, n in f.items()) - t
        print(f"  {tag:24s} {len(tflite):7d} {e:+7.1f} {100 * e / len(tflite):+6.2f}%")
    print("\nFLASH_MODEL_BYTES =", round(c.pop("model")))
    print("FLASH_OPCODE_BYTES =", round(c.pop("opcode")))
    print("FLASH_LAYER_OVERHEAD = {")
    for kind in sorted(c):
        print(f"    {kind!r}: {round(c[kind])},")
    print("}")
    print("\nfit set: model, len(tflite), fit error (B)")
    for (tag, _, tflite), e in zip(fit_set, err):
        print(f"  {tag:24s} {len(tflite):7d} {e:+7.1f}")


if __name__ == "__main__":
    main()
