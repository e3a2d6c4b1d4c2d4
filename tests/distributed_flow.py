"""A budgeted search on one device or data-parallel on two CPU devices; prints one JSON line.

    python tests/distributed_flow.py tf 1|2     # TensorFlow; 2: MirroredStrategy
    python tests/distributed_flow.py jax 1|2    # JAX; 2: keras.distribution.DataParallel
    TF_CONFIG=... python tests/distributed_flow.py tfmw 2   # one MultiWorkerMirroredStrategy worker

(``--no-freeze``: skip kd.freeze at the end. ``--one-device-first``, with 2 devices: first the same
search on one device in the same process, no strategy and no freeze, printed as its own line; the
test compares the two lines without paying a second interpreter and Keras import.)

Two logical CPU devices stand in for two GPUs. The same global batches in the same order
(no shuffling) reach both runs, so the masks after the search must agree up to float
rounding. Run by tests/test_distributed.py.
"""

import json
import os
import sys

engine, devices = sys.argv[1], int(sys.argv[2])
freeze = "--no-freeze" not in sys.argv
one_device_first = "--one-device-first" in sys.argv
os.environ["KERAS_BACKEND"] = "jax" if engine == "jax" else "tensorflow"
if engine == "jax" and devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402
from tests.backend_flow import digits  # noqa: E402

L = keras.layers
# seed: flash ~7.2 kB, RAM ~3.6 kB on stm32h743; both budgets bind
BUDGETS = {"flash_bytes": 5_000, "ram_bytes": 2_600}


def seed_model():
    # no BatchNormalization: per-replica batch statistics would differ from the global ones
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = L.Conv2D(24, 3, padding="same", activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(10)(h))


def build_and_search(x, y):
    keras.utils.set_random_seed(0)
    search = kd.prepare(seed_model())
    search.compile(keras.optimizers.Adam(3e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epochs_seen = []
    cb = kd.DNASCallback("stm32h743", budgets=BUDGETS, verbose=0, mask_lr_multiplier=30.0)
    count = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: epochs_seen.append(e))
    hist = search.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0,
                      callbacks=[cb, count])
    return search, cb, hist, epochs_seen


def report(search, cb, hist, epochs_seen, replicas, slim):
    out = {"engine": engine, "replicas": replicas,
           "masks": [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                     for v in kd.masks.mask_variables(search)],
           "loss": [float(v) for v in hist.history["loss"]],
           "history": [{k: v for k, v in h.items() if k.startswith("dnas/")} for h in cb.history],
           "epochs_seen": epochs_seen, "seed_costs": cb.seed_costs,
           "restored_epoch": cb.restored_epoch,
           "certificate": slim.dnas_certificate if slim is not None else None}
    print("DISTRIBUTED_FLOW " + json.dumps(out, default=float), flush=True)


def main():
    x, y = digits(512)
    strategy = None
    if engine == "tfmw":
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if engine == "tf" and devices > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
    if engine == "jax" and devices > 1:
        import jax

        assert len(jax.devices()) == devices, jax.devices()
    if one_device_first and devices > 1:
        # before any distribution is set: the default (first) device only
        report(*build_and_search(x, y), replicas=1, slim=None)
        keras.backend.clear_session()  # the next run starts from Keras' state of a fresh process
    if engine == "jax" and devices > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    if strategy is not None:
        with strategy.scope():
            search, cb, hist, epochs_seen = build_and_search(x, y)
        replicas = strategy.num_replicas_in_sync
    else:
        search, cb, hist, epochs_seen = build_and_search(x, y)
        replicas = devices
    slim = kd.freeze(search, verbose=0) if freeze else None
    report(search, cb, hist, epochs_seen, replicas, slim)


if __name__ == "__main__":
    main()
