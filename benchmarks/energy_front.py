"""Paper A's use: one search per strength of a ``kd.Minimize`` objective at a fixed memory
budget, and the accuracy / energy front the searches trace.

Same data, seed model, warm-up checkpoint, epochs, int8 conversion and TFLite Micro
measurement as ``run.py`` (HAPT TCN by default). Budgets: flash and RAM at ``--memory`` of the
seed's measured ``len(.tflite)`` and arena, no latency budget; the objective
``Minimize(--metric, strength)`` is added to ``kd.DNASCallback`` for each ``--strengths`` value
(0: budgets only). ``kd.freeze`` runs with ``fill=False``: reopening channels into the unused
memory budget would undo the objective. Latency and energy are the library's estimates for
``--target`` (from the frozen model's own plan), not measurements.

Outputs: ``<out>/<tag>_results.csv`` (one row per strength, written as each finishes),
``<out>/<tag>_tables.md`` and, unless ``--no-plots``, ``<out>/<tag>.png``.

Usage::

    python benchmarks/energy_front.py                      # HAPT, stm32h743, 75 % memory
    python benchmarks/energy_front.py --strengths 0,1 --metric latency_ms
"""

import argparse
import csv
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("dataset", "target", "memory_frac", "flash_limit", "ram_limit", "metric", "strength",
          "search", "channels", "kernels", "float_acc", "int8_acc", "flash", "arena", "params",
          "macs", "latency_ms", "energy_uj", "holds_memory", "certified", "removed",
          "first_feasible_epoch", "wall_s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="hapt", help="hapt, mnist or digits")
    p.add_argument("--target", default="stm32h743")
    p.add_argument("--memory", type=float, default=0.75,
                   help="flash and RAM budget as a fraction of the seed's measured values")
    p.add_argument("--metric", default="energy_uj", help="metric of the Minimize objective")
    p.add_argument("--strengths", default="0,0.25,1,4,16")
    p.add_argument("--search", default="channels,receptive_field,dilation",
                   help="kd.prepare(search=...) (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--tag", default="energy_front")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="tiny subsets, 1 epoch per phase (smoke run; no accuracy claims)")
    return p.parse_args(argv)


def frozen_costs(model, target):
    """params / MACs / latency / energy of a frozen model from its own plan (kernels as frozen)."""
    import keras_dnas as kd
    from keras_dnas.costs.model import CostModel, to_python

    cm = CostModel(kd.graph.analyze(model), target)
    values = cm.evaluate(cm.full_counts(), ["params", "macs", "latency_ms", "energy_uj"])
    return {k: float(to_python(v)) for k, v in values.items()}


def main(argv=None):
    args = parse_args(argv)
    import keras_dnas as kd
    from _bench import costs as costs_lib
    from _bench import evaluate, methods, runner, tasks

    tasks.SEED = args.seed
    task = tasks.TASKS[args.dataset]
    epochs = task.quick_epochs if args.quick else task.epochs
    search = tuple(args.search.split(","))
    strengths = [float(s) for s in args.strengths.split(",")]
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, f"{args.tag}_results.csv")
    log = runner.Log()
    data = task.load(args.quick)
    warm = methods.seed(task, data, epochs)
    seed_eval = evaluate.measure(warm["model"], data)
    seed_costs = costs_lib.SeedCosts(warm["model"], (args.target,), True)
    budgets = {"flash_bytes": float(int(args.memory * seed_eval["flash"])),
               "ram_bytes": float(int(args.memory * seed_eval["arena"]))}
    leaders = [g.leader for g in seed_costs.groups]
    log(f"seed int8 {seed_eval['int8_acc']:.4f} flash {seed_eval['flash']} arena "
        f"{seed_eval['arena']}; budgets {budgets}")
    rows = []
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()

        def emit(row):
            row = {"dataset": task.name, "target": args.target, "memory_frac": args.memory,
                   "flash_limit": budgets["flash_bytes"], "ram_limit": budgets["ram_bytes"],
                   "metric": args.metric, **row}
            rows.append(row)
            writer.writerow(row)
            f.flush()

        emit({"strength": "seed", "search": "-", **_row(warm["model"], seed_eval, leaders,
                                                      args.target, warm["wall"])})
        for strength in strengths:
            start = time.perf_counter()
            objectives = [kd.Minimize(args.metric, strength)] if strength > 0 else []
            result = methods.dnas(task, data, epochs, warm, args.target, budgets,
                                  seed_costs.memory, search=search,
                                  callback_options={"objectives": objectives},
                                  freeze_options={"fill": False})
            measured = evaluate.measure(result["model"], data)
            row = _row(result["model"], measured, leaders, args.target, result["wall"])
            row.update(strength=strength, search="+".join(search),
                       holds_memory=(measured["flash"] <= budgets["flash_bytes"]
                                     and measured["arena"] <= budgets["ram_bytes"]),
                       certified=result["certified"], removed=result["removed"],
                       first_feasible_epoch=result["first_feasible_epoch"])
            emit(row)
            log(f"strength {strength:g}: int8 {row['int8_acc']:.4f} {args.metric} "
                f"{row[args.metric]:.4g} channels {row['channels']} kernels {row['kernels']} "
                f"({time.perf_counter() - start:.0f}s)")
    md = [f"Command: `python benchmarks/energy_front.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
          "", table(rows)]
    if not args.no_plots:
        md += ["", f"Plot: {plot(rows, os.path.join(args.out, args.tag + '.png'), args.metric)}"]
    with open(os.path.join(args.out, f"{args.tag}_tables.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _row(model, measured, leaders, target, wall):
    import json

    from _bench import costs as costs_lib
    from _bench import runner

    config = costs_lib.SeedCosts.config_of(model, leaders)
    return {"channels": json.dumps([config[n] for n in leaders]),
            "kernels": runner._kernels(model),
            **{k: measured[k] for k in ("float_acc", "int8_acc", "flash", "arena")},
            **frozen_costs(model, target), "wall_s": wall}


def table(rows):
    lines = ["| Minimize strength | channels | kernels (taps@dilation) | int8 % | flash B | "
             "arena B | MACs | latency ms (est.) | energy µJ (est.) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['strength']} | {r['channels']} | {r['kernels']} | "
                     f"{100 * float(r['int8_acc']):.1f} | {int(r['flash']):,} | "
                     f"{int(r['arena']):,} | {int(float(r['macs'])):,} | "
                     f"{float(r['latency_ms']):.3g} | {float(r['energy_uj']):.4g} |")
    return "\n".join(lines)


def plot(rows, path, metric):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        x, y = float(r[metric]), 100 * float(r["int8_acc"])
        ax.plot(x, y, "s" if r["strength"] == "seed" else "o",
                color="grey" if r["strength"] == "seed" else "tab:blue")
        ax.annotate("seed" if r["strength"] == "seed" else f"{float(r['strength']):g}", (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{metric} (estimated, {rows[0]['target']})")
    ax.set_ylabel("int8 accuracy, TFLite Micro (%)")
    ax.set_title(f"{rows[0]['dataset']}: one search per Minimize strength")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.path.relpath(path, os.path.dirname(HERE))


if __name__ == "__main__":
    sys.exit(main())
