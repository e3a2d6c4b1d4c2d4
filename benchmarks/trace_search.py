"""Trace one keras_dnas search of the real-data benchmark: gates per group, epoch by epoch.

Runs the benchmark's keras_dnas pipeline (warm-up checkpoint, DNASCallback search, certified
freeze with fill, BN recalibration, fine-tune, BN recalibration) at one budget point on
stm32h743 and prints, every 20 steps and every epoch, each searchable group's open channels and
the median and largest ``|alpha|``; at the end the frozen channels and the **validation**
accuracy (float). Used to choose library defaults on validation data, never on the test split.

Usage::

    python benchmarks/trace_search.py mnist "F25%/R50%/L1x"                  # centred gradients
    python benchmarks/trace_search.py mnist "F25%/R50%/L1x" --no-centred     # the papers' STE
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import keras  # noqa: E402
from _bench import costs as costs_lib  # noqa: E402
from _bench import evaluate, methods, tasks  # noqa: E402

TARGET = "stm32h743"


class Trace(keras.callbacks.Callback):
    """Prints open channels and |alpha| (median, max) per searchable group."""

    def __init__(self, dnas, every=20):
        super().__init__()
        self.dnas = dnas
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == 0:
            self.show(f"  step {batch:4d}")

    def on_epoch_end(self, epoch, logs=None):
        costs = " ".join(f"{k[5:]}={v:,.0f}" for k, v in logs.items()
                         if k.startswith("dnas/") and k != "dnas/feasible")
        print(f"epoch {epoch + 1}: acc {logs.get('accuracy', 0):.3f} val_acc "
              f"{logs.get('val_accuracy', 0):.3f} feasible {bool(logs.get('dnas/feasible'))} "
              f"{costs}")
        self.show("  gates   ")

    def show(self, tag):
        cells = []
        for g in self.dnas.cost_model.plan.groups:
            if g.frozen:
                continue
            a = np.abs(keras.ops.convert_to_numpy(self.model.get_layer(g.leader).dnas_alpha))
            cells.append(f"{int((a > 0.5).sum())}/{g.size} [{np.median(a):.2f}, {a.max():.2f}]")
        print(tag, " ".join(cells), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=sorted(tasks.TASKS))
    p.add_argument("point", help="a grid label, e.g. 'F25%%/R50%%/L1x'")
    p.add_argument("--no-centred", action="store_true",
                   help="DNASCallback(centred_gradients=False): the papers' plain STE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tasks.SEED = args.seed
    task = tasks.TASKS[args.dataset]
    points = [pt for pt in tasks.grid(False, (TARGET,)) if pt.label == args.point]
    if not points:
        raise SystemExit(f"no point {args.point!r}; the grid has: "
                         + ", ".join(pt.label for pt in tasks.grid(False, (TARGET,))))
    data, epochs = task.load(False), task.epochs
    warm = methods.seed(task, data, tasks.Epochs(epochs.warmup, 0, 0))
    measured = evaluate.measure(warm["model"], data)
    seed_costs = costs_lib.SeedCosts(warm["model"], (TARGET,), True)
    latency = {TARGET: seed_costs.evaluate(TARGET, seed_costs.full())["latency_ms"]}
    budgets = costs_lib.budgets_for(points[0], {"flash": measured["flash"],
                                                "arena": measured["arena"]}, latency, True, None)
    print("budgets:", {k: round(v, 3) for k, v in budgets.items()})
    slim = methods.dnas(task, data, epochs, warm, TARGET, budgets, seed_costs.memory,
                        callback_options={"centred_gradients": not args.no_centred},
                        observers=lambda dnas: [Trace(dnas)], verbose=1)["model"]
    leaders = [g.leader for g in seed_costs.groups]
    config = costs_lib.SeedCosts.config_of(slim, leaders)
    print(f"frozen channels {[config[n] for n in leaders]}; validation accuracy (float) "
          f"{slim.evaluate(*data['val'], verbose=0)[1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
