"""Choice blocks ("paper_b") + channels against channels only: MNIST ResNet-8, tight flash points.

Issue 14's reduced comparison: the seed and its warm-up checkpoint as in ``run.py`` (same data,
epochs, budgets), then at each budget point keras_dnas with channels only (``kd.prepare(model)``)
and with the ``"paper_b"`` pool (``kd.prepare(model, alternatives="paper_b")``), each searched,
certified, fine-tuned and measured in int8 on TFLite Micro. One training seed per run.

Usage::

    nice -n 10 python benchmarks/choice_search.py                      # 12.5 % and 25 % flash
    python benchmarks/choice_search.py --quick                         # smoke run (1 epoch/phase)
    python benchmarks/choice_search.py --points 0.25:0.5:1 --target stm32h743
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", default="0.125:0.5:1,0.25:0.5:1",
                   help="flash:ram:latency fractions of the seed (default: the two tight flash "
                        "points of the grid)")
    p.add_argument("--target", default="stm32h743")
    p.add_argument("--quick", action="store_true", help="1 epoch per phase (no accuracy claim)")
    p.add_argument("--out", default=None, help="JSON lines file for the rows (optional)")
    args = p.parse_args(argv)

    import keras_dnas as kd  # noqa: F401 - after the environment is set
    from _bench import costs as costs_lib
    from _bench import evaluate, methods, tasks

    task = tasks.TASKS["mnist"]
    epochs = task.quick_epochs if args.quick else task.epochs
    data = task.load(args.quick)
    seed = methods.seed(task, data, epochs)
    seed_eval = evaluate.measure(seed["model"], data)
    seed_costs = costs_lib.SeedCosts(seed["model"], [args.target], True)
    seed_est = seed_costs.evaluate(args.target, seed_costs.full())
    print(f"seed: int8 {seed_eval['int8_acc']:.4f} flash {seed_eval['flash']} arena "
          f"{seed_eval['arena']} latency {seed_est['latency_ms']:.3f} ms; epochs {epochs}",
          flush=True)
    rows = []
    for flash, ram, latency in (map(float, t.split(":")) for t in args.points.split(",")):
        point = tasks.BudgetPoint(args.target, flash, ram, latency)
        budgets = costs_lib.budgets_for(point, {"flash": seed_eval["flash"],
                                                "arena": seed_eval["arena"]},
                                        {args.target: seed_est["latency_ms"]}, True,
                                        seed_est["params"])
        for name, alternatives in (("channels", None), ("paper_b+channels", "paper_b")):
            start = time.perf_counter()
            try:
                result = methods.dnas(task, data, epochs, seed, args.target, budgets,
                                      seed_costs.memory, alternatives=alternatives)
                measured = evaluate.measure(result["model"], data)
                row = {"point": f"F{flash:g}/R{ram:g}/L{latency:g}x", "method": name,
                       "int8_acc": measured["int8_acc"], "flash": measured["flash"],
                       "arena": measured["arena"],
                       "holds": measured["flash"] <= budgets["flash_bytes"]
                       and measured["arena"] <= budgets["ram_bytes"],
                       "certified": result["certified"], "chosen": result["chosen"],
                       "wall_s": round(time.perf_counter() - start, 1)}
            except Exception as e:  # noqa: BLE001 - report and go on with the next run
                row = {"point": f"F{flash:g}/R{ram:g}/L{latency:g}x", "method": name,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            rows.append(row)
            print(json.dumps({**row, "budgets": budgets}), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
