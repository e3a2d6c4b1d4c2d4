"""Accuracy over several training seeds of the real-data grid (`run.py --seed N` CSVs).

One run of `benchmarks/run.py` is one training seed; differences of a point or so between methods
are within the spread of training itself. This script reads the CSVs of several runs (same grid,
different `--seed`), and prints, per data set and stm32h743 budget point, each method's int8
accuracy in TensorFlow Lite Micro as mean ± standard deviation over the seeds, the mean difference
keras_dnas − hand-tuned width with its standard error, and how many seeds keras_dnas was at least as
accurate.

Usage::

    python benchmarks/seeds.py benchmarks/results/full_results.csv \\
        benchmarks/results/seed1_*_results.csv benchmarks/results/seed2_*_results.csv
"""

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict

METHODS = (("hand", "hand-tuned width"), ("l1", "L1 filter pruning"), ("dnas", "keras_dnas"))
TARGET = "stm32h743"  # every distinct budget point runs on it (see tasks.py)


def read(paths):
    """{(dataset, point): {method: [int8 accuracy per seed]}} and the seeds seen per data set."""
    acc = defaultdict(lambda: defaultdict(list))
    runs = defaultdict(int)
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for dataset in {r["dataset"] for r in rows}:
            runs[dataset] += 1
        for r in rows:
            if r["target"] == TARGET and r["status"] == "ok" and r["method"] != "seed":
                acc[(r["dataset"], r["point"])][r["method"]].append(100 * float(r["int8_acc"]))
    return acc, runs


def _mean_std(values):
    if len(values) < 2:
        return f"{statistics.fmean(values):.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(acc, runs, before=None):
    """Markdown table; ``before``: ``read()`` of earlier runs of the same seeds, whose keras_dnas
    accuracy is added as a column (its first ``n`` seeds, in the order given)."""
    extra = " | keras_dnas before" if before is not None else ""
    lines = ["| data set | budget F / R / L | seeds | " + " | ".join(m[1] for m in METHODS)
             + extra
             + " | keras_dnas − hand (mean ± s.e.) | seeds keras_dnas ≥ hand | seeds keras_dnas ≥ L1 |",
             "|---|---|---:|" + "---:|" * (len(METHODS) + 3 + (before is not None))]
    for (dataset, point), by_method in acc.items():
        n = min(len(by_method[m]) for m, _ in METHODS)
        if n == 0:
            continue
        cells = [dataset, point, str(n)] + [_mean_std(by_method[m][:n]) for m, _ in METHODS]
        if before is not None:
            earlier = before.get((dataset, point), {}).get("dnas", [])
            cells.append(_mean_std(earlier[:n]) if len(earlier) >= n else "-")
        diff = [d - h for d, h in zip(by_method["dnas"][:n], by_method["hand"][:n])]
        se = statistics.stdev(diff) / math.sqrt(n) if n > 1 else float("nan")
        cells.append(f"{statistics.fmean(diff):+.1f} ± {se:.1f}" if n > 1
                     else f"{diff[0]:+.1f}")
        cells.append(f"{sum(d >= h for d, h in zip(by_method['dnas'], by_method['hand']))}/{n}")
        cells.append(f"{sum(d >= l for d, l in zip(by_method['dnas'], by_method['l1']))}/{n}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(f"{d} {k}" for d, k in sorted(runs.items()))
    return "\n".join(lines) + f"\n\nRuns read per data set: {seeds}.\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+", help="results CSVs of run.py, one per seed and data set")
    parser.add_argument("--before", nargs="+", default=None,
                        help="CSVs of an earlier run of the same seeds, in the same order: adds "
                             "their keras_dnas accuracy as a column")
    args = parser.parse_args(argv)
    acc, runs = read(args.csv)
    print(table(acc, runs, read(args.before)[0] if args.before else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
