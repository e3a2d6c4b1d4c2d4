"""Projection quality: the channels ``kd.freeze``'s projection closes, another freeze.py vs this.

Same model, same masks (75 % of every group kept at random, ``freeze_speed.close_random``), same
budgets (``--fractions`` of the way from one channel per group to the seed, on ``stm32h743``), ``fill`` off:
for each, the channels closed, the summed ``|alpha|`` of the closed channels (the importance the
projection gives away; lower is better), the time and whether every budget holds on exact costs.

Usage::

    python benchmarks/projection_quality.py --old /path/to/other/keras_dnas/freeze.py resnet8 ds_cnn
"""

import argparse
import importlib.util
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import keras_dnas as kd  # noqa: E402
import freeze_speed as fs  # noqa: E402
from keras_dnas.memory import MemoryModel  # noqa: E402
from keras_dnas.costs.model import CostModel  # noqa: E402
from keras_dnas.search.objectives import Budget  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", choices=list(fs.MODELS))
    p.add_argument("--old", required=True, help="path of the freeze.py to compare with")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6])
    args = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("old_freeze", args.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    new = kd.freeze_lib
    metrics = ["flash_bytes", "ram_bytes", "latency_ms"]
    print("| model | budgets | fraction | old: closed, lost abs(alpha), s, holds "
          "| new: closed, lost abs(alpha), s, holds |")
    print("|---|---|---|---|---|")
    for name in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search = kd.prepare(fs.MODELS[name]())
        plan = search.dnas_plan
        cm = CostModel(plan, fs.TARGET, memory=MemoryModel.from_model(search, plan,
                                                                    target=fs.TARGET))
        fs.close_random(search, 0.75)
        _, keep0 = new.kept_channels(search, plan)
        theta = {g.id: np.abs(np.asarray(search.get_layer(g.leader).dnas_alpha))
                 for g in plan.groups if not g.frozen}
        full, least = cm.evaluate(cm.full_counts(), metrics), cm.evaluate(cm.min_counts(), metrics)
        for combo in (["flash_bytes"], ["ram_bytes"], metrics):
            for frac in args.fractions:
                budgets = [Budget(m, float(least[m]) + frac * (float(full[m]) - float(least[m])))
                           for m in combo]
                cells = []
                for lib in (old, new):
                    start = time.perf_counter()
                    keep, removed, costs = lib.project(search, cm, budgets, plan=plan, keep=keep0)
                    seconds = time.perf_counter() - start
                    lost = sum(float(theta[g][~keep[g] & keep0[g]].sum()) for g in theta)
                    holds = all(b.holds(costs[b.metric]) for b in budgets)
                    cells.append(f"{len(removed)}, {lost:.2f}, {seconds:.2f}, {holds}")
                print(f"| {name} | {'+'.join(combo)} | {frac:.1f} | {cells[0]} | {cells[1]} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
