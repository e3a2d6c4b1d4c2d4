"""Search overhead: one epoch of the searchable model + DNASCallback vs the plain model.

For each model, the plain Keras model and ``kd.prepare(model)`` trained with a
``kd.DNASCallback`` see the same random data (shape-correct, for *speed* only,
never for accuracy), the same batch size and the same optimizer. Each variant
runs one ``fit`` of ``1 + --epochs`` epochs; the fits take turns epoch by
epoch (plain, search, ..., plain, search, ...; one runs at a time, each in its
own thread), so a slow phase of a shared machine hits every variant alike.
The first epoch of every fit (tracing, and the callback's retrace in
``on_train_begin``) is discarded. The table shows the median epoch times and
their ratio, all from the same run; the ratio of median process CPU times
(all threads) is shown too: other processes competing for the cores stretch
wall time, hardly CPU time.

An epoch is timed from the first callback's ``on_epoch_begin`` to the last
callback's ``on_epoch_end``, so the DNAS callback's own per-epoch work (exact
costs, best-weights snapshot) is inside the search time.

Budgets: ``params``, ``macs`` and ``latency_ms`` at ``--fraction`` (50 %) of
the seed on ``stm32h743``; when ``keras_dnas.memory`` is importable, a
second search variant adds ``flash`` and ``ram`` at the same fraction.

``--unfolded`` adds a variant whose masked layers multiply every gate into the
activations (gate folding off, i.e. the masked layers before the optimisation)
to show before and after in one run. ``--check`` verifies on both models
(random closed channels, random BN statistics) that folding changes nothing:
outputs, weight gradients and BN moving statistics bitwise equal in eager
mode, mask gradients equal up to summation order.

Usage::

    python benchmarks/search_overhead.py                  # ResNet-8 and DS-CNN, Markdown table
    python benchmarks/search_overhead.py --unfolded       # also the unfolded masked layers
    python benchmarks/search_overhead.py --models ds_cnn --epochs 6 --samples 2048
    python benchmarks/search_overhead.py --check          # folded == unfolded, then exit
    python benchmarks/search_overhead.py --backend jax    # the same on JAX (or torch)
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKENDS = ("tensorflow", "jax", "torch")


def _backend_argument(argv):
    """``--backend`` must take effect before Keras is imported (it fixes its backend then)."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if _backend_argument(sys.argv[1:]) in BACKENDS:
    os.environ["KERAS_BACKEND"] = _backend_argument(sys.argv[1:])

import numpy as np  # noqa: E402

import keras  # noqa: E402
import keras_dnas as kd  # noqa: E402
from keras_dnas.costs.model import CostModel  # noqa: E402
from keras_dnas.layers import masked  # noqa: E402

TARGET = "stm32h743"
GOAL = 1.15
MODELS = {
    "resnet8": (lambda: kd.zoo.resnet8(), (32, 32, 3), 10),
    "ds_cnn": (lambda: kd.zoo.ds_cnn(), (49, 10, 1), 12),
}
COMPUTE = ("params", "macs", "latency_ms")
MEMORY = ("flash_bytes", "ram_bytes")


@contextlib.contextmanager
def _unfolded(active=True):
    """Masked layers multiply every gate into the activations (the code before folding)."""
    if not active:
        yield
        return
    saved = masked._in_stateless_scope
    masked._in_stateless_scope = lambda: True  # folding is skipped inside stateless scopes
    try:
        yield
    finally:
        masked._in_stateless_scope = saved


class _Turns:
    """Round-robin token: the fits of the variants run one epoch at a time, in order."""

    def __init__(self, names):
        self.order = list(names)
        self.active = set(names)
        self.holder = self.order[0]
        self.cond = threading.Condition()

    def acquire(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.holder == name)

    def release(self, name, done=False):
        with self.cond:
            if done:
                self.active.discard(name)
            i = self.order.index(name)
            for step in range(1, len(self.order) + 1):
                nxt = self.order[(i + step) % len(self.order)]
                if nxt in self.active:
                    self.holder = nxt
                    break
            else:
                self.holder = None
            self.cond.notify_all()


class _TurnStart(keras.callbacks.Callback):
    """First callback: wait for the turn, start the clocks (and switch folding off if asked)."""

    def __init__(self, turns, name, unfolded, record):
        super().__init__()
        self.turns, self.name, self.unfolded, self.record = turns, name, unfolded, record
        self._patch = None

    def on_train_begin(self, logs=None):
        self.turns.acquire(self.name)  # held until the end of the first (tracing) epoch
        self._enter()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0:
            self.turns.acquire(self.name)
            self._enter()
        self.record["wall"], self.record["cpu"] = time.perf_counter(), time.process_time()

    def _enter(self):
        self._patch = _unfolded(self.unfolded)
        self._patch.__enter__()

    def leave(self):
        self._patch.__exit__(None, None, None)


class _TurnEnd(keras.callbacks.Callback):
    """Last callback: stop the clocks, hand the turn to the next variant."""

    def __init__(self, start, epochs):
        super().__init__()
        self.start, self.epochs, self.times = start, epochs, []

    def on_epoch_end(self, epoch, logs=None):
        rec = self.start.record
        self.times.append((time.perf_counter() - rec["wall"], time.process_time() - rec["cpu"]))
        self.start.leave()
        if epoch + 1 < self.epochs:
            self.start.turns.release(self.start.name)

    def on_train_end(self, logs=None):  # the callbacks' on_train_end run inside the last turn
        self.start.turns.release(self.start.name, done=True)


def _memory_available():
    try:
        from keras_dnas import memory  # noqa: F401
    except ImportError:
        return False
    return True


def _compile(model):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def _variants(plain, args, use_memory):
    """[(label, searchable model, budgets, memory model, unfolded)]."""
    specs = [("search", COMPUTE, False, False)]
    if args.unfolded:
        specs.append(("search, unfolded", COMPUTE, False, True))
    if use_memory:
        specs.append(("search+memory", COMPUTE + MEMORY, True, False))
    out = []
    for label, metrics, with_memory, unfolded in specs:
        search = _compile(kd.prepare(plain))
        memory = None
        if with_memory:
            from keras_dnas import memory as memory_lib

            memory = memory_lib.MemoryModel.from_model(search, search.dnas_plan)
        cm = CostModel(search.dnas_plan, TARGET, memory=memory)
        seed = cm.evaluate(cm.full_counts(), list(metrics))
        budgets = {m: args.fraction * float(seed[m]) for m in metrics}
        out.append((label, search, budgets, memory, unfolded))
    return out


def bench_model(name, args, use_memory):
    build, shape, classes = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples,) + shape).astype("float32")
    y = rng.integers(0, classes, args.samples).astype("int32")

    plain = _compile(build())
    runs = [("plain", plain, None, None, False)] + _variants(plain, args, use_memory)
    epochs = 1 + args.epochs
    turns = _Turns([r[0] for r in runs])
    ends, errors, threads = {}, [], []
    for label, model, budgets, memory, unfolded in runs:
        start = _TurnStart(turns, label, unfolded, {})
        ends[label] = end = _TurnEnd(start, epochs)
        callbacks = [start]
        if budgets is not None:
            callbacks.append(kd.DNASCallback(TARGET, budgets=budgets, memory=memory, verbose=0))
        callbacks.append(end)

        def fit(model=model, callbacks=callbacks, label=label):
            try:
                model.fit(x, y, batch_size=args.batch_size, epochs=epochs, verbose=0,
                          callbacks=callbacks)
            except BaseException as e:  # noqa: BLE001 - reported below, never deadlock
                errors.append((label, e))
                turns.release(label, done=True)

        threads.append(threading.Thread(target=fit, name=f"fit-{label}"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{name}: fit of {errors[0][0]} failed") from errors[0][1]

    times = {label: end.times[1:] for label, end in ends.items()}  # epoch 0 traces
    for label, t in times.items():
        print(f"  {name} {label:>16}: wall " + " ".join(f"{w:.2f}" for w, _ in t)
              + " s; cpu " + " ".join(f"{c:.2f}" for _, c in t) + " s",
              file=sys.stderr, flush=True)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    return [{"model": name, "variant": k, "budgets": b, "plain": wall["plain"],
             "search": wall[k], "ratio": wall[k] / wall["plain"],
             "cpu_ratio": cpu[k] / cpu["plain"], "n": len(times[k])}
            for k, _, b, _, _ in runs[1:]]


def check_equivalence(models):
    """Folded vs unfolded gates: bitwise equal in eager mode except the mask gradients."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    lines = []
    for name in models:
        build, shape, classes = MODELS[name]
        plain = build()
        for layer in plain.layers:  # non-trivial BN statistics, so a missing re-mask shows
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                                   for w in layer.get_weights()])
        search = kd.prepare(plain)
        for v in kd.masks.mask_variables(search):  # close about half of every group
            v.assign(np.where(rng.random(v.shape) < 0.5, 1.0, 0.2).astype("float32"))
        x = tf.constant(rng.normal(size=(16,) + shape).astype("float32"))
        y = tf.constant(rng.integers(0, classes, 16).astype("int32"))
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        variables = search.trainable_variables
        worst = 0.0
        for training in (True, False):
            results = []
            for unfolded in (True, False):
                stats = [v.numpy() for v in search.non_trainable_variables]
                with _unfolded(unfolded), tf.GradientTape() as tape:
                    out = search(x, training=training)
                    loss = loss_fn(y, out)
                grads = tape.gradient(loss, variables)
                results.append((out.numpy(), [None if g is None else g.numpy() for g in grads],
                                [v.numpy() for v in search.non_trainable_variables]))
                for v, value in zip(search.non_trainable_variables, stats):
                    v.assign(value)
            (out_a, g_a, s_a), (out_b, g_b, s_b) = results
            if not np.array_equal(out_a, out_b):
                raise AssertionError(f"{name}: outputs differ (training={training})")
            for v, a, b in zip(variables, g_a, g_b):
                if a is None or b is None:
                    if (a is None) != (b is None):
                        raise AssertionError(f"{name}: gradient of {v.path} in one variant only")
                elif v.name == kd.masks.ALPHA_NAME:
                    worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30)))
                elif not np.array_equal(a, b):
                    raise AssertionError(f"{name}: gradient of {v.path} differs")
            if not all(np.array_equal(a, b) for a, b in zip(s_a, s_b)):
                raise AssertionError(f"{name}: BN moving statistics differ")
        lines.append(f"{name}: outputs, weight gradients and BN statistics bitwise equal "
                     f"(training and inference); mask gradients within {worst:.1e} of their "
                     "largest entry (summation order)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--backend", choices=BACKENDS,
                   help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12,
                   help="timed epochs per variant (one more, the tracing one, is discarded)")
    p.add_argument("--fraction", type=float, default=0.5, help="budgets as a fraction of the seed")
    p.add_argument("--memory", choices=("auto", "on", "off"), default="auto",
                   help="also search with flash and ram budgets (needs keras_dnas.memory)")
    p.add_argument("--unfolded", action="store_true",
                   help="also time the masked layers without gate folding (before/after)")
    p.add_argument("--check", action="store_true",
                   help="only check that folded and unfolded gates compute the same, then exit")
    args = p.parse_args(argv)
    if args.check:
        for line in check_equivalence(args.models):
            print(line)
        return []
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    use_memory = args.memory == "on" or (args.memory == "auto" and _memory_available())

    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows += bench_model(name, args, use_memory)
    elapsed = time.perf_counter() - start

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python benchmarks/search_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(f"Command: `{command.strip()}`\n")
    print(f"Keras {keras.__version__} ({keras.backend.backend()}), "
          f"{platform.processor() or platform.machine()}, {cores} CPU cores (load average "
          f"{load:.1f} at the end); {args.samples} random samples, batch {args.batch_size}, Adam, "
          f"sparse CE; variants take turns epoch by epoch, medians of {args.epochs} epochs after "
          f"the tracing one; budgets {args.fraction:.0%} of the seed on {TARGET}; wall time "
          f"{elapsed / 60:.1f} min.\n")
    print("| model | variant | budgets | plain s/epoch | search s/epoch | ratio | CPU-time ratio "
          "| goal <= 1.15x |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        ok = "yes" if r["ratio"] <= GOAL else "no"
        print(f"| {r['model']} | {r['variant']} | {', '.join(r['budgets'])} | {r['plain']:.3f} | "
              f"{r['search']:.3f} | {r['ratio']:.3f}x | {r['cpu_ratio']:.3f}x | {ok} |")
    return rows


if __name__ == "__main__":
    main()
