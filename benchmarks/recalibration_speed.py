"""How long ``kd.recalibrate_batchnorm`` takes on a calibration sample larger than one batch.

``kd.freeze`` sets the frozen model's BatchNormalization statistics on up to 2,048 calibration
samples in batches of 256: one pass over the samples per BN layer (each BN needs every sample
through the recalibrated BNs before it). Each model is built with random weights (speed only),
and the process CPU and wall seconds of one call are printed, after one untimed warm-up call
on a few samples (imports, first kernels).

Usage::

    python benchmarks/recalibration_speed.py                  # every model below
    python benchmarks/recalibration_speed.py --models resnet8_mnist --samples 2048
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras  # noqa: E402
import keras_dnas as kd  # noqa: E402

MODELS = {
    "resnet8_mnist": lambda: kd.zoo.resnet8(input_shape=(28, 28, 1), num_classes=10),
    "ds_cnn": lambda: kd.zoo.ds_cnn(),
    "mobilenet_v1": lambda: kd.zoo.mobilenet_v1(),
    "efficientnet_b0_48": lambda: keras.applications.EfficientNetB0(
        weights=None, input_shape=(48, 48, 3), classes=10),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args(argv)
    for name in args.models:
        keras.utils.set_random_seed(0)
        model = MODELS[name]()
        x = np.random.default_rng(0).random((args.samples,) + tuple(model.input_shape[1:]),
                                            dtype="float32")
        kd.recalibrate_batchnorm(model, x[:8])
        start = (time.process_time(), time.perf_counter())
        count = kd.recalibrate_batchnorm(model, x)
        cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
        print(f"{name}: {count} BN layers, {args.samples} samples: {cpu:.2f} s CPU, "
              f"{wall:.2f} s wall, load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
