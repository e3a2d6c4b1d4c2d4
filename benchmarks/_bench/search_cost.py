"""Search cost: the whole keras_dnas pipeline against one ordinary training of the seed.

For each task, ``rounds`` rounds alternate the order of (a) one ordinary training of the
seed (``epochs.total`` epochs, BN recalibration) and (b) the whole keras_dnas pipeline run
standalone at one budget point: warm-up (``epochs.warmup`` epochs of the seed, BN
recalibration), building the flash / RAM model (one conversion; two before issue 13), prepare, search with
``DNASCallback``, certified freeze, fine-tune, BN recalibration; same total epochs. Wall
time and process CPU time (all threads) are recorded; CPU time is less sensitive to other
jobs on the machine. Export and TFLite Micro measurement are excluded from both.
"""

import csv
import os
import statistics
import time

import keras
import keras_dnas as kd

from _bench import costs as costs_lib
from _bench import methods
from _bench.tasks import Epochs


class _Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _dnas_pipeline(task, data, epochs, target, budgets, use_memory):
    warm = methods.seed(task, data, Epochs(epochs.warmup, 0, 0))
    model = task.build()
    model.set_weights(warm["warm_weights"])
    start = time.perf_counter()
    memory = None
    if use_memory:
        search = kd.prepare(model)
        memory = costs_lib.build_memory(search, kd.freeze_lib.kept_channels(search)[0])
    memory_s = time.perf_counter() - start
    result = methods.dnas(task, data, epochs, warm, target, budgets, memory)
    return result, memory_s


def run(task, quick, target, point, rounds, use_memory, out_csv, log):
    """Interleaved timing rounds for one task; appends rows to ``out_csv``; returns them."""
    epochs = task.quick_epochs if quick else task.epochs
    data = task.load(quick)
    rows, budgets = [], None
    for r in range(rounds):
        order = ("seed", "dnas") if r % 2 == 0 else ("dnas", "seed")
        for which in order:
            keras.backend.clear_session()
            if which == "seed":
                with _Timer() as t:
                    seed = methods.seed(task, data, epochs)
                if budgets is None:
                    costs = costs_lib.SeedCosts(seed["model"], (target,), use_memory)
                    full = costs.evaluate(target, costs.full())
                    budgets = {"latency_ms": point.latency * full["latency_ms"]}
                    if use_memory:
                        budgets = {"flash_bytes": float(int(point.flash * full["flash_bytes"])),
                                   "ram_bytes": float(int(point.ram * full["ram_bytes"])),
                                   **budgets}
                    else:
                        budgets["params"] = float(int(point.flash * full["params"]))
                note = ""
            else:
                with _Timer() as t:
                    result, memory_s = _dnas_pipeline(task, data, epochs, target, budgets,
                                                      use_memory)
                note = (f"memory model {memory_s:.1f}s, search {result['times']['search']:.1f}s, "
                        f"fine-tune {result['times']['finetune']:.1f}s")
            row = {"dataset": task.name, "round": r, "run": which, "target": target,
                   "point": point.label, "epochs_total": epochs.total,
                   "wall_s": round(t.wall, 2), "cpu_s": round(t.cpu, 2), "note": note}
            rows.append(row)
            log(f"search cost {task.name} round {r} {which}: wall {t.wall:.1f}s cpu {t.cpu:.1f}s "
                f"{note}")
            _append(out_csv, row)
    return rows


def _append(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def markdown(rows):
    out = ["### Search cost, interleaved timing", "",
           "Whole keras_dnas pipeline (warm-up + flash/RAM model + search + freeze + fine-tune + "
           "BN recalibration) against one ordinary training of the seed with the same total "
           "epochs; median over rounds, run order alternating.", "",
           "| data set | budget | target | rounds | seed wall s | keras_dnas wall s | ratio (wall) | "
           "seed CPU s | keras_dnas CPU s | ratio (CPU) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == ds]
        med = {(k, which): statistics.median(float(r[k]) for r in sel if r["run"] == which)
               for k in ("wall_s", "cpu_s") for which in ("seed", "dnas")}
        n = len({r["round"] for r in sel})
        out.append(f"| {ds} | {sel[0]['point']} | {sel[0]['target']} | {n} | "
                   f"{med['wall_s', 'seed']:.0f} | {med['wall_s', 'dnas']:.0f} | "
                   f"{med['wall_s', 'dnas'] / med['wall_s', 'seed']:.2f} | "
                   f"{med['cpu_s', 'seed']:.0f} | {med['cpu_s', 'dnas']:.0f} | "
                   f"{med['cpu_s', 'dnas'] / med['cpu_s', 'seed']:.2f} |")
    out.append("")
    return out
