"""Choice blocks ("paper_b") + channels against channels only: MNIST ResNet-8, tight flash points.

Issue 14's comparison at the grid's settings (``run.py``: same data, warm-up checkpoint, epochs,
budgets, target and 8-byte-pointer memory models): at each budget point keras_dnas with the
``"paper_b"`` pool (``kd.prepare(model, alternatives="paper_b")``) is searched, certified,
fine-tuned and measured in int8 on TFLite Micro, and compared with keras_dnas on channels only
(``kd.prepare(model)``), either run here or read from a grid CSV of the same training seed
(``--channels-from``).

The seed is not trained to the end here: only its warm-up epochs (the checkpoint every method
of the grid starts from, same training seed, data and order). The budgets need the seed's
``len(.tflite)`` and arena, which depend on its architecture, not on its weights.

The supernet's new alternatives start from the seed's block (``kd.prepare``: the 5x5 kernel is
the 3x3 zero-padded, the separable block a rank-1 factorisation of it; identity has no
weights); ``--choice-warmup`` search epochs (default 1) then distill the seed's block into them
with the choices and masks frozen (``DNASCallback(warmup_epochs=..., choice_warmup=...)``,
counted in the search epochs: both methods train the same number of epochs).
``--choice-warmup-mode sample`` restores the earlier warm-up (every alternative sampled).

Usage::

    nice -n 10 python benchmarks/choice_search.py --out benchmarks/results/choice_s0.jsonl \\
        --channels-from benchmarks/results/centred_full_results.csv
    python benchmarks/choice_search.py --quick                         # smoke run (1 epoch/phase)
    python benchmarks/choice_search.py --points 0.25:0.5:1 --seed 1
"""

import argparse
import csv
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _grid_row(path, target, point, method="dnas"):
    """The grid CSV's MNIST row of ``method`` at ``point`` (``F12.5%/R50%/L1x`` style)."""
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["dataset"] == "mnist" and row["target"] == target and \
                    row["point"] == point and row["method"] == method:
                return row
    return None


def _label(flash, ram, latency):
    return f"F{flash * 100:g}%/R{ram * 100:g}%/L{latency:g}x"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", default="0.125:0.5:1,0.25:0.5:1",
                   help="flash:ram:latency fractions of the seed (default: the two tight flash "
                        "points of the grid)")
    p.add_argument("--target", default="stm32h743")
    p.add_argument("--seed", type=int, default=0, help="training seed (as run.py --seed)")
    p.add_argument("--choice-warmup", type=int, default=1,
                   help="search epochs that train every alternative before the choices move")
    p.add_argument("--choice-warmup-mode", default="distill", choices=("distill", "sample"),
                   help="DNASCallback(choice_warmup=...)")
    p.add_argument("--channels-from", default=None,
                   help="grid CSV of the same --seed: channels-only rows are read from it "
                        "instead of being run again")
    p.add_argument("--choice-mode", default="gumbel", choices=("gumbel", "softmax"),
                   help="kd.prepare(choice_mode=...): how the Choice blocks train")
    p.add_argument("--quick", action="store_true", help="1 epoch per phase (no accuracy claim)")
    p.add_argument("--out", default=None, help="JSON lines file for the rows (appended "
                                                "after each run)")
    args = p.parse_args(argv)

    import keras_dnas as kd
    from _bench import costs as costs_lib
    from _bench import evaluate, methods, tasks

    tasks.SEED = args.seed
    task = tasks.TASKS["mnist"]
    epochs = task.quick_epochs if args.quick else task.epochs
    data = task.load(args.quick)
    start = time.perf_counter()
    warm = methods.warm_up(task, data, epochs)
    warm_model = task.build()
    warm_model.set_weights(warm["warm_weights"])
    warm_eval = evaluate.measure(warm_model, data)
    seed_costs = costs_lib.SeedCosts(warm_model, [args.target], True)
    seed_est = seed_costs.evaluate(args.target, seed_costs.full())
    print(f"warm-up checkpoint ({epochs.warmup} epochs, seed {args.seed}, "
          f"{time.perf_counter() - start:.0f} s): int8 {warm_eval['int8_acc']:.4f}; seed "
          f"architecture flash {warm_eval['flash']} B arena {warm_eval['arena']} B latency "
          f"{seed_est['latency_ms']:.3f} ms; epochs {epochs}", flush=True)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    for flash, ram, latency in (map(float, t.split(":")) for t in args.points.split(",")):
        point = tasks.BudgetPoint(args.target, flash, ram, latency)
        label = _label(flash, ram, latency)
        budgets = costs_lib.budgets_for(point, {"flash": warm_eval["flash"],
                                                "arena": warm_eval["arena"]},
                                        {args.target: seed_est["latency_ms"]}, True,
                                        seed_est["params"])
        runs = [("paper_b+channels", "paper_b")]
        grid = _grid_row(args.channels_from, args.target, label) if args.channels_from else None
        if grid is not None:
            same = float(grid["flash_limit"]) == budgets["flash_bytes"] and \
                float(grid["ram_limit"]) == budgets["ram_bytes"]
            emit({"point": label, "seed": args.seed, "method": "channels",
                  "int8_acc": float(grid["int8_acc"]), "flash": int(grid["flash"]),
                  "arena": int(grid["arena"]), "certified": grid["certified"] == "True",
                  "source": os.path.basename(args.channels_from), "same_budgets": same})
            hand = _grid_row(args.channels_from, args.target, label, "hand")
            if hand is not None:  # the hand-tuned width, trained from scratch in the grid
                emit({"point": label, "seed": args.seed, "method": "hand",
                      "int8_acc": float(hand["int8_acc"]), "flash": int(hand["flash"]),
                      "arena": int(hand["arena"]), "width": float(hand["width"]),
                      "source": os.path.basename(args.channels_from)})
        else:
            runs.insert(0, ("channels", None))
        for name, alternatives in runs:
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                if alternatives is None:  # the grid's run: the seed's memory model
                    result = methods.dnas(task, data, epochs, warm, args.target, budgets,
                                          seed_costs.memory)
                else:
                    warmup = min(args.choice_warmup, epochs.search - 1)
                    result = methods.dnas(task, data, epochs, warm, args.target, budgets, None,
                                          alternatives=alternatives,
                                          callback_options={
                                              "warmup_epochs": warmup,
                                              "choice_warmup": args.choice_warmup_mode},
                                          choice_mode=args.choice_mode)
                measured = evaluate.measure(result["model"], data)
                row = {"point": label, "seed": args.seed, "method": name,
                       "int8_acc": measured["int8_acc"], "float_acc": measured["float_acc"], "flash": measured["flash"],
                       "arena": measured["arena"],
                       "holds": measured["flash"] <= budgets["flash_bytes"]
                       and measured["arena"] <= budgets["ram_bytes"],
                       "certified": result["certified"], "chosen": result["chosen"],
                       "choices_fallback": result.get("choices_fallback"),
                       "history": result.get("history"),
                       "wall_s": round(time.perf_counter() - start, 1),
                       "cpu_s": round(time.process_time() - cpu_start, 1)}
            except Exception as e:  # noqa: BLE001 - report and go on with the next run
                row = {"point": label, "seed": args.seed, "method": name,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            emit(dict(row, budgets=budgets))
    return rows


if __name__ == "__main__":
    main()
