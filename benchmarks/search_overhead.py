"""Search overhead: one epoch of the searchable model + DNASCallback vs the plain model.

For each model, the plain Keras model and ``kd.prepare(model)`` trained with a
``kd.DNASCallback`` see the same random data (shape-correct, for *speed* only,
never for accuracy), the same batch size and the same optimizer. Plain and
search runs are interleaved in rounds (the order reverses every round) so slow
drifts of the machine hit every variant; the first epoch of every ``fit`` call
(tracing, and the callback's retrace in ``on_train_begin``) is discarded; the
table shows the medians of the remaining epochs and their ratio, all from the
same run. The ratio of median process CPU times (all threads) is shown too: it
is less sensitive to other processes competing for the cores.

An epoch is timed from the first callback's ``on_epoch_begin`` to the last
callback's ``on_epoch_end``, so the DNAS callback's own per-epoch work (exact
costs, best-weights snapshot) is inside the search time.

Budgets: ``params``, ``macs`` and ``latency_ms`` at ``--fraction`` (50 %) of
the seed on ``stm32h743``; when ``keras_dnas.costs.memory`` is importable, a
second search variant adds ``flash`` and ``ram`` at the same fraction.

Usage::

    python benchmarks/search_overhead.py                  # ResNet-8 and DS-CNN, Markdown table
    python benchmarks/search_overhead.py --models ds_cnn --rounds 3 --samples 2048
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
import keras_dnas as kd  # noqa: E402
from keras_dnas.costs.model import CostModel  # noqa: E402

TARGET = "stm32h743"
GOAL = 1.15
MODELS = {
    "resnet8": (lambda: kd.zoo.resnet8(), (32, 32, 3), 10),
    "ds_cnn": (lambda: kd.zoo.ds_cnn(), (49, 10, 1), 12),
}
COMPUTE = ("params", "macs", "latency_ms")
MEMORY = ("flash", "ram")


class _EpochStart(keras.callbacks.Callback):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch, logs=None):
        self.clock["wall"], self.clock["cpu"] = time.perf_counter(), time.process_time()


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, clock, times):
        super().__init__()
        self.clock, self.times = clock, times

    def on_epoch_end(self, epoch, logs=None):
        self.times.append((time.perf_counter() - self.clock["wall"],
                           time.process_time() - self.clock["cpu"]))


def _memory_available():
    try:
        from keras_dnas.costs import memory  # noqa: F401
    except ImportError:
        return False
    return True


def _compile(model):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def _variants(plain, args, use_memory):
    """[(label, searchable model, budgets, memory model)]."""
    specs = [("search", COMPUTE, False)]
    if use_memory:
        specs.append(("search+memory", COMPUTE + MEMORY, True))
    out = []
    for label, metrics, with_memory in specs:
        search = _compile(kd.prepare(plain))
        memory = None
        if with_memory:
            from keras_dnas.costs import memory as memory_lib

            memory = memory_lib.MemoryModel.from_model(search, search.dnas_plan)
        cm = CostModel(search.dnas_plan, TARGET, memory=memory)
        seed = cm.evaluate(cm.full_counts(), list(metrics))
        budgets = {m: args.fraction * float(seed[m]) for m in metrics}
        out.append((label, search, budgets, memory))
    return out


def bench_model(name, args, use_memory):
    build, shape, classes = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples,) + shape).astype("float32")
    y = rng.integers(0, classes, args.samples).astype("int32")

    plain = _compile(build())
    runs = {"plain": (plain, None, None)}
    for label, search, budgets, memory in _variants(plain, args, use_memory):
        runs[label] = (search, budgets, memory)
    times = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.rounds):
        for kind in (order if r % 2 == 0 else order[::-1]):
            model, budgets, memory = runs[kind]
            callbacks = [] if budgets is None else [
                kd.DNASCallback(TARGET, budgets=budgets, memory=memory, verbose=0)]
            clock, t = {}, []
            timers = [_EpochStart(clock), *callbacks, _EpochEnd(clock, t)]
            model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs_per_round,
                      verbose=0, callbacks=timers)
            times[kind].extend(t[1:])  # the first epoch of every fit call traces
            print(f"  {name} round {r + 1}/{args.rounds} {kind:>16}: wall "
                  + " ".join(f"{w:.2f}" for w, _ in t) + " s, cpu "
                  + " ".join(f"{c:.2f}" for _, c in t) + " s", file=sys.stderr, flush=True)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    return [{"model": name, "variant": k, "budgets": runs[k][1], "plain": wall["plain"],
             "search": wall[k], "ratio": wall[k] / wall["plain"],
             "cpu_ratio": cpu[k] / cpu["plain"], "n": len(times[k])}
            for k in order[1:]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--epochs-per-round", type=int, default=3,
                   help="epochs per fit call; the first of each is discarded")
    p.add_argument("--fraction", type=float, default=0.5, help="budgets as a fraction of the seed")
    p.add_argument("--memory", choices=("auto", "on", "off"), default="auto",
                   help="also search with flash and ram budgets (needs keras_dnas.costs.memory)")
    args = p.parse_args(argv)
    if args.epochs_per_round < 2:
        p.error("--epochs-per-round must be >= 2 (the first epoch of each fit is discarded)")
    use_memory = args.memory == "on" or (args.memory == "auto" and _memory_available())

    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows += bench_model(name, args, use_memory)
    elapsed = time.perf_counter() - start

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = "python benchmarks/search_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(f"Command: `{command.strip()}`\n")
    print(f"Keras {keras.__version__} ({keras.backend.backend()}), "
          f"{platform.processor() or platform.machine()}, {cores} CPU cores; {args.samples} random "
          f"samples, batch {args.batch_size}, Adam, sparse CE; {args.rounds} interleaved rounds x "
          f"{args.epochs_per_round} epochs per fit, first epoch of each fit discarded, medians of "
          f"{rows[0]['n'] if rows else 0} epochs; budgets {args.fraction:.0%} of the seed on "
          f"{TARGET}; wall time {elapsed / 60:.1f} min.\n")
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
