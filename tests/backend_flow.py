"""The README's flow on whatever backend KERAS_BACKEND selects; prints one JSON line.

prepare -> fit 2 epochs with DNASCallback (flash, RAM and latency budgets) -> freeze (certified)
-> summary -> report -> QAT (1 epoch) -> int8 file. Run by tests/test_backends.py in a child
process per backend (Keras fixes its backend at import); also usable by hand:

    KERAS_BACKEND=jax python tests/backend_flow.py
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402

L = keras.layers


def digits(n=512):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    idx = np.random.default_rng(0).permutation(len(x))[:n]
    return x[idx], d.target[idx].astype("int32")


def seed_model():
    # named layers: the .tflite stores tensor names, so automatic names (conv2d_57 after many
    # models in one process) would change the seed's flash from one process to the other
    inp = keras.Input((8, 8, 1), name="image")
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv_a")(inp)
    h = L.BatchNormalization(name="bn_a")(h)
    h = L.ReLU(name="relu_a")(h)
    h = L.Conv2D(24, 3, padding="same", use_bias=False, name="conv_b")(h)
    h = L.BatchNormalization(name="bn_b")(h)
    h = L.ReLU(name="relu_b")(h)
    h = L.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inp, L.Dense(10, name="logits")(h), name="seed")


# the seed needs flash 7,888 B, RAM 3,836 B, 0.99 ms on stm32h743: every budget binds
BUDGETS = {"flash_bytes": 5_600, "ram_bytes": 2_600, "latency_ms": 0.3}


def main():
    t0 = time.time()
    keras.utils.set_random_seed(0)
    x, y = digits()
    seed = seed_model()
    search = kd.prepare(seed)
    search.compile(keras.optimizers.Adam(3e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    cb = kd.DNASCallback("stm32h743", budgets=BUDGETS, calibration_data=x, verbose=0,
                         mask_lr_multiplier=30.0)
    times = {}
    hist = search.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[cb])
    masks = [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
             for v in kd.masks.mask_variables(search)]
    # the search's state and progress layers are detached after fit (on PyTorch they stayed:
    # a torch Module keeps sub-layers in `_modules`)
    attached = [v.path for v in search.weights if v.path.startswith("dnas_search_")]
    times["fit"] = time.time() - t0
    seed.predict(x[:4], verbose=0)  # the seed is untouched (JAX: its buffers are not donated)
    slim = kd.freeze(search, verbose=0)
    times["freeze"] = time.time() - t0 - sum(times.values())
    cert = slim.dnas_certificate
    table = kd.summary(slim, "stm32h743", print_fn=lambda *a, **k: None)
    out = {"backend": keras.backend.backend(), "loss": [float(v) for v in hist.history["loss"]],
           "seed_costs": cb.seed_costs, "history": [{k: v for k, v in h.items()
                                                     if k.startswith("dnas/")}
                                                    for h in cb.history],
           "masks": masks, "certificate": cert, "attached_after_fit": attached, "summary_type": type(table).__name__}
    if os.environ.get("KD_FLOW_REPORT", "1") == "1":
        with tempfile.TemporaryDirectory() as tmp:
            kd.report.write_report(os.path.join(tmp, "r.html"), seed=seed_model(), frozen=slim,
                                   target="stm32h743", callback=cb, data=(x[:128], y[:128]))
            out["report_bytes"] = os.path.getsize(os.path.join(tmp, "r.html"))
    times["report"] = time.time() - t0 - sum(times.values())
    qat = kd.qat.quantize_aware(slim, x[:128])
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    blob = kd.export.to_tflite_qat(qat, representative_data=x[:64])
    out["qat_tflite_bytes"] = len(blob)
    times["qat"] = time.time() - t0 - sum(times.values())
    out["seconds"] = times
    print("BACKEND_FLOW " + json.dumps(out, default=float))


if __name__ == "__main__":
    main()
