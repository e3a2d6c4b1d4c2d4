"""keras.applications models a user brings, through the README's whole flow, one per process.

``weights=None``, ``classes=10``, small inputs, random data (64 samples, batch 16): seed
``fit`` 1 epoch -> ``kd.summary(seed)`` -> ``kd.prepare`` -> ``fit`` 2 epochs with
``DNASCallback("stm32h743", budgets={flash: 0.6 x seed, RAM: 0.7 x seed}, calibration_data=x)``
-> ``kd.freeze`` (certifies) -> ``freeze`` at full masks against the seed -> ``slim.fit`` 1 epoch
-> ``to_tflite`` -> ``measure`` (the budgets against the measured file) -> ``kd.summary(slim)``
-> ``search.save`` / ``load_model`` / ``freeze`` of the reload -> ``slim.save`` and
``load_model`` in a fresh process without custom objects. Prints each step's wall seconds and
every distinct warning with its count; ``PROFILE=<step>`` writes a cProfile of that step to
``$TMPDIR/applications_flow/<key>/profile_<step>.txt``.

Usage::

    python benchmarks/applications_flow.py mb1_025_96          # one key of MODELS
    python benchmarks/applications_flow.py r50 64 search1      # stop after one search epoch
    python benchmarks/applications_flow.py convnext 64 summary # stop after kd.prepare
"""
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import numpy as np
import keras
import keras_dnas as kd
A = keras.applications
L = keras.layers

def headed(base_fn, shape):
    base = base_fn(include_top=False, weights=None, input_shape=shape)
    x = L.GlobalAveragePooling2D()(base.output)
    x = L.Dropout(0.2)(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(base.input, out)

def headed_seq(base_fn, shape):
    base = base_fn(include_top=False, weights=None, input_shape=shape)
    return keras.Sequential([keras.Input(shape), base, L.GlobalAveragePooling2D(), L.Dense(10)])

MODELS = {
 "mb1_025_96": lambda: A.MobileNet(alpha=0.25, weights=None, input_shape=(96, 96, 3), classes=10),
 "mb1_05_64": lambda: A.MobileNet(alpha=0.5, weights=None, input_shape=(64, 64, 3), classes=10),
 "mb1_025_notop": lambda: headed(lambda **k: A.MobileNet(alpha=0.25, **k), (96, 96, 3)),
 "mb1_025_seq": lambda: headed_seq(lambda **k: A.MobileNet(alpha=0.25, **k), (96, 96, 3)),
 "v3l_min": lambda: A.MobileNetV3Large(weights=None, input_shape=(64, 64, 3), classes=10, minimalistic=True),
 "v3l": lambda: A.MobileNetV3Large(weights=None, input_shape=(64, 64, 3), classes=10, minimalistic=False),
 "v3l_nopre": lambda: A.MobileNetV3Large(weights=None, input_shape=(64, 64, 3), classes=10, include_preprocessing=False, alpha=0.75),
 "v3l_notop": lambda: headed(lambda **k: A.MobileNetV3Large(minimalistic=True, **k), (64, 64, 3)),
 "effv2b0": lambda: A.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3), classes=10),
 "effv2b0_nopre": lambda: A.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3), classes=10, include_preprocessing=False),
 "effv2b0_notop": lambda: headed(A.EfficientNetV2B0, (64, 64, 3)),
 "nasnet": lambda: A.NASNetMobile(weights=None, input_shape=(32, 32, 3), classes=10),
 "r50v2": lambda: A.ResNet50V2(weights=None, input_shape=(32, 32, 3), classes=10),
 "r50": lambda: A.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
 "r50_notop": lambda: headed(A.ResNet50, (32, 32, 3)),
 "xception": lambda: A.Xception(weights=None, input_shape=(71, 71, 3), classes=10),
 "incv3": lambda: A.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=10),
 "convnext": lambda: A.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10),
 "convnext_nopre": lambda: A.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10, include_preprocessing=False),
}

def main():
    key = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    upto = sys.argv[3] if len(sys.argv) > 3 else "all"   # "summary" / "search1" / "all"
    profile = os.environ.get("PROFILE")  # step name to cProfile
    out_dir = os.path.join(tempfile.gettempdir(), "applications_flow", key); os.makedirs(out_dir, exist_ok=True)
    T = {}
    warn_count = {}
    def showwarning(message, category, filename, lineno, file=None, line=None):
        k = f"{category.__name__}: {str(message)[:150]}"
        warn_count[k] = warn_count.get(k, 0) + 1
    warnings.showwarning = showwarning

    def step(name, fn):
        t = time.perf_counter()
        try:
            if profile == name:
                import cProfile, pstats
                pr = cProfile.Profile(); pr.enable(); r = fn(); pr.disable()
                s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
                open(f"{out_dir}/profile_{name}.txt", "w").write(s.getvalue())
            else:
                r = fn()
        except Exception:
            T[name] = round(time.perf_counter() - t, 1)
            print(f"STEP {name} FAILED after {T[name]} s"); traceback.print_exc()
            print("TIMES", T); print("WARNINGS", json.dumps(warn_count, indent=1)); sys.exit(1)
        T[name] = round(time.perf_counter() - t, 1)
        print(f"STEP {name} ok {T[name]} s", flush=True)
        return r

    keras.utils.set_random_seed(0)
    model = step("build", MODELS[key])
    print("params", model.count_params(), "input", model.input_shape, "output", model.output_shape)
    shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255 if "pre" not in key else 1, (n,) + shape).astype("float32")
    y = rng.integers(0, 10, n)
    logits = not (model.layers[-1].get_config().get("activation") == "softmax")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    model.compile("adam", loss, metrics=["accuracy"])
    step("seed_fit", lambda: model.fit(x, y, epochs=1, batch_size=16, verbose=0))
    seed = step("seed_summary", lambda: kd.summary(model, "stm32h743"))
    print("seed flash", seed["flash_bytes"], "ram", seed["ram_bytes"])
    search = step("prepare", lambda: kd.prepare(model))
    if upto == "summary":
        print("TIMES", T); print("WARNINGS", json.dumps(warn_count, indent=1)); sys.exit(0)
    search.compile("adam", loss, metrics=["accuracy"])
    budgets = {"flash_bytes": int(0.6 * seed["flash_bytes"]), "ram_bytes": int(0.7 * seed["ram_bytes"])}
    cb = kd.DNASCallback("stm32h743", budgets=budgets, calibration_data=x)
    epochs = 1 if upto == "search1" else 2
    h = step("search_fit", lambda: search.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[cb]))
    print({k: v[-1] for k, v in h.history.items() if k.startswith("dnas/")})
    if upto == "search1":
        print("TIMES", T); print("WARNINGS", json.dumps(warn_count, indent=1)); sys.exit(0)
    slim = step("freeze", lambda: kd.freeze(search))
    cert = slim.dnas_certificate
    print("certified", cert["all_hold"])
    # exactness at full masks
    full = step("freeze_full", lambda: kd.freeze(kd.prepare(model), budgets={}, verbose=0))
    xe = x[:8]
    d = float(np.max(np.abs(np.asarray(full(xe, training=False)) - np.asarray(model(xe, training=False)))))
    print("freeze(full masks) vs seed max abs diff", d)
    step("slim_fit", lambda: slim.fit(x, y, epochs=1, batch_size=16, verbose=0))
    tfl = step("to_tflite", lambda: kd.export.to_tflite(slim, representative_data=x[:64]))
    m = step("measure", lambda: kd.export.measure(tfl, target="stm32h743", data=(x, y)))
    print("measure", m)
    fl = m.get("flash_bytes"); ram = m["ram_bytes"]
    print("HOLD flash", fl, "<=", budgets["flash_bytes"], fl is not None and fl <= budgets["flash_bytes"],
          "ram", ram, "<=", budgets["ram_bytes"], ram is not None and ram <= budgets["ram_bytes"])
    step("summary_slim", lambda: kd.summary(slim))
    step("search_save", lambda: search.save(f"{out_dir}/search.keras"))
    s2 = step("search_load", lambda: keras.models.load_model(f"{out_dir}/search.keras"))
    slim2 = step("freeze_reloaded", lambda: kd.freeze(s2, calibration_data=x))
    d2 = float(np.max(np.abs(np.asarray(slim2(xe, training=False)) - np.asarray(kd.freeze(search, calibration_data=x, verbose=0)(xe, training=False)))))
    print("reloaded freeze vs freeze max abs diff", d2)
    step("slim_save", lambda: slim.save(f"{out_dir}/slim.keras"))
    ref = np.asarray(slim(xe, training=False)); np.save(f"{out_dir}/xe.npy", xe); np.save(f"{out_dir}/ref.npy", ref)
    code = ("import numpy as np, keras; m = keras.models.load_model('%s/slim.keras'); "
            "xe = np.load('%s/xe.npy'); r = np.load('%s/ref.npy'); "
            "print('fresh-process reload max abs diff', float(np.max(np.abs(np.asarray(m(xe, training=False)) - r))))") % (out_dir, out_dir, out_dir)
    r = step("fresh_load", lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True))
    print(r.stdout.strip())
    print("TIMES", T)
    print("WARNINGS", json.dumps(warn_count, indent=1))


if __name__ == "__main__":
    main()
