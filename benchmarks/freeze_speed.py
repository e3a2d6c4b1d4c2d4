"""How long a budgeted ``kd.freeze`` takes, split by phase.

For each model: ``kd.prepare`` it, close a random ``1 - --keep`` of every
searchable group's channels (a search that stopped somewhere), set budgets at
``--fraction`` of the way from the smallest reachable model (one channel per
searchable group) to the seed, for flash, RAM and latency on ``stm32h743``, and
time ``kd.freeze(search, target, budgets)``. The phases (exclusive times):

- ``memory``: building the flash/RAM model (``MemoryModel.from_model``: the
  conversions; a search's callback has usually built and cached it already);
- ``project``: closing channels until every budget holds on exact costs;
- ``fill``: reopening channels into the budget left unused (``grow``);
- ``certify``: converting the frozen model to check flash (``_verify_flash``,
  without the projections it may re-run, which count under ``project``);
- ``total``: the whole ``kd.freeze`` call (includes rebuilding the model).

Weights are random and the masks arbitrary: this measures speed only.

Usage::

    python benchmarks/freeze_speed.py                       # zoo + MobileNetV2 + deep CNN
    python benchmarks/freeze_speed.py --models resnet8 efficientnet_b0
"""

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras  # noqa: E402
import keras_dnas as kd  # noqa: E402
freeze_lib = kd.freeze_lib
from keras_dnas import memory as memory_lib  # noqa: E402
from keras_dnas.costs.model import CostModel  # noqa: E402

TARGET = "stm32h743"
L = keras.layers


def deep_cnn(width=256, depth=12, size=24):
    """A synthetic plain CNN with ``width * depth`` searchable channels."""
    x = keras.Input((size, size, 3))
    h = x
    for i in range(depth):
        h = L.Conv2D(width, 3, padding="same", strides=2 if i in (2, 6) else 1)(h)
        h = L.BatchNormalization()(h)
        h = L.ReLU()(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)), name="deep_cnn")


MODELS = {
    "resnet8": kd.zoo.resnet8,
    "ds_cnn": kd.zoo.ds_cnn,
    "mobilenet_v1": kd.zoo.mobilenet_v1,
    "fc_autoencoder": kd.zoo.fc_autoencoder,
    "tcn": kd.zoo.tcn,
    "mobilenet_v2_035_96": lambda: keras.Sequential([
        keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3),
                                       alpha=0.35),
        L.GlobalAveragePooling2D(), L.Dense(10)], name="mobilenet_v2_035_96"),
    "efficientnet_b0_48": lambda: keras.applications.EfficientNetB0(
        weights=None, input_shape=(48, 48, 3), classes=10),
    "mobilenet_v3_small_32": lambda: keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, include_preprocessing=False),
    "densenet121_32": lambda: keras.applications.DenseNet121(
        weights=None, input_shape=(32, 32, 3), classes=10),
    "deep_cnn": deep_cnn,
}


class Phases:
    """Exclusive wall and process CPU seconds per phase, by wrapping the functions freeze calls.

    CPU time (every thread of this process) is the number to compare on a shared machine:
    wall time also counts the other tenants.
    """

    def __init__(self):
        self.seconds = {}  # phase -> wall seconds
        self.cpu = {}  # phase -> CPU seconds
        self.stack = []

    def wrap(self, module, name, phase):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = (time.perf_counter(), time.process_time())
            self.stack.append((0.0, 0.0))
            try:
                return original(*args, **kwargs)
            finally:
                inner = self.stack.pop()
                spent = (time.perf_counter() - start[0], time.process_time() - start[1])
                self.seconds[phase] = self.seconds.get(phase, 0.0) + spent[0] - inner[0]
                self.cpu[phase] = self.cpu.get(phase, 0.0) + spent[1] - inner[1]
                if self.stack:
                    outer = self.stack[-1]
                    self.stack[-1] = (outer[0] + spent[0], outer[1] + spent[1])
        setattr(module, name, timed)
        return original


@contextlib.contextmanager
def timing(phases):
    originals = [
        (memory_lib.MemoryModel, "from_model",
         phases.wrap(memory_lib.MemoryModel, "from_model", "memory")),
        (freeze_lib, "project", phases.wrap(freeze_lib, "project", "project")),
        (freeze_lib, "grow", phases.wrap(freeze_lib, "grow", "fill")),
        (freeze_lib, "_verify_flash", phases.wrap(freeze_lib, "_verify_flash", "certify")),
    ]
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original if owner is freeze_lib else classmethod(
                original.__func__))


def close_random(search, keep_fraction, seed=0):
    rng = np.random.default_rng(seed)
    for layer in search.layers:
        alpha = getattr(layer, "dnas_alpha", None)
        if alpha is None or not alpha.trainable:
            continue
        n = alpha.shape[0]
        order = rng.permutation(n)
        kept = max(1, int(round(keep_fraction * n)))
        value = np.empty(n, dtype="float32")
        value[order[:kept]] = np.linspace(1.0, 0.6, kept)
        value[order[kept:]] = np.linspace(0.45, 0.05, n - kept)
        alpha.assign(value)


def run(name, keep, fraction, fill, profile=None):
    import warnings

    model = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = kd.prepare(model)
    plan = search.dnas_plan
    searchable = sum(g.size for g in plan.searchable_groups())
    start = time.process_time()
    memory = memory_lib.MemoryModel.from_model(search, plan, target=TARGET)
    build_cpu = time.process_time() - start
    cm = CostModel(plan, TARGET, memory=memory)
    metrics = ["flash_bytes", "ram_bytes", "latency_ms"]
    full = cm.evaluate(cm.full_counts(), metrics)
    least = cm.evaluate(cm.min_counts(), metrics)
    # feasible by construction: a fraction of the way from one channel per group to the seed
    budgets = {m: float(least[m]) + fraction * (float(full[m]) - float(least[m]))
               for m in metrics}
    close_random(search, keep)
    phases = Phases()
    start = (time.perf_counter(), time.process_time())
    with timing(phases), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            slim = kd.freeze(search, target=TARGET, budgets=budgets, fill=fill, verbose=0)
            ok = slim.dnas_certificate["all_hold"]
        except ValueError as e:
            ok = f"error: {str(e)[:60]}"
        if profile:
            prof.disable()
            prof.dump_stats(profile)
    total = time.perf_counter() - start[0]
    total_cpu = time.process_time() - start[1]
    s = phases.seconds
    return dict(model=name, groups=len(plan.searchable_groups()), channels=searchable,
                build_cpu=build_cpu, project=s.get("project", 0.0), fill=s.get("fill", 0.0),
                certify=s.get("certify", 0.0), total=total, ok=ok,
                project_cpu=phases.cpu.get("project", 0.0), fill_cpu=phases.cpu.get("fill", 0.0),
                certify_cpu=phases.cpu.get("certify", 0.0), total_cpu=total_cpu,
                budgets=" / ".join(f"{m} {v:,.4g}" for m, v in budgets.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--keep", type=float, default=0.75, help="fraction of channels the masks keep")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="budgets: this fraction of the way from one channel per group to the seed")
    p.add_argument("--no-fill", action="store_true")
    p.add_argument("--profile", help="write cProfile stats of the freeze to PREFIX_<model>.prof")
    args = p.parse_args(argv)
    print(f"keras_dnas.freeze speed on {TARGET}: masks keep {args.keep:.0%} at random, "
          f"budgets at {args.fraction:.0%} of the way from one channel per group to the seed; "
          "wall seconds unless marked CPU (memory model built before freeze, cached)")
    head = ("model", "groups", "channels", "budgets", "memory build CPU", "project", "fill",
            "certify", "certify CPU", "freeze total", "freeze total CPU", "holds",
            "project CPU", "fill CPU")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in args.models:
        prof = f"{args.profile}_{name}.prof" if args.profile else None
        r = run(name, args.keep, args.fraction, not args.no_fill, prof)
        print(f"| {r['model']} | {r['groups']} | {r['channels']} | {r['budgets']} | "
              f"{r['build_cpu']:.2f} | {r['project']:.2f} | {r['fill']:.2f} | "
              f"{r['certify']:.2f} | {r['certify_cpu']:.2f} | {r['total']:.2f} | "
              f"{r['total_cpu']:.2f} | {r['ok']} | {r['project_cpu']:.2f} | "
              f"{r['fill_cpu']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
