"""HAPT TCN: keras_dnas searching channels + receptive field + dilation (PIT's time axis)
against channels only and the hand-tuned uniform width, at the benchmark grid's budgets.

A thin front end of ``run.py``: the same data, seed, warm-up checkpoint, epochs, budgets,
int8 conversion and TFLite Micro measurement; the methods are ``hand`` (uniform width),
``dnas`` (channels) and ``dnas_time`` (``kd.prepare(search=("channels", "receptive_field",
"dilation"))``, see ``_bench/runner.py``). Extra arguments go to ``run.py`` (``--points``,
``--targets``, ``--seed``, ``--out``, ...); the CSV and tables are
``<out>/time_axis_results.csv`` / ``time_axis_tables.md``. The ``dnas_time`` rows name the
frozen kernels (taps@dilation of every Conv1D) in their note.

Usage::

    python benchmarks/time_axis.py                    # the full grid, seed 0
    python benchmarks/time_axis.py --targets stm32h743 --points 0.25:0.5:1,0.125:0.5:1
    python benchmarks/time_axis.py --seeds-table benchmarks/results/time_seed*_results.csv
                                                      # mean +- std over the seeds' CSVs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def seeds_table(paths):
    """Markdown: per stm32h743 point, int8 accuracy (mean ± std over the CSVs, one per seed) of
    the hand-tuned width, channels only and channels + time, and channels + time minus each
    (mean ± standard error, and at how many seeds it is at least as accurate)."""
    import math
    import statistics

    import seeds

    acc, runs = seeds.read(paths)
    methods = (("hand", "hand-tuned width"), ("dnas", "keras_dnas, channels"),
               ("dnas_time", "keras_dnas, channels + time"))
    lines = ["| budget F / R / L | seeds | " + " | ".join(m[1] for m in methods)
             + " | time − hand (mean ± s.e.) | seeds time ≥ hand | time − channels (mean ± s.e.) "
               "| seeds time ≥ channels |",
             "|---|---:|" + "---:|" * (len(methods) + 4)]
    for (dataset, point), by in acc.items():
        n = min(len(by[m]) for m, _ in methods)
        if n == 0:
            continue
        cells = [point, str(n)] + [seeds._mean_std(by[m][:n]) for m, _ in methods]
        for other in ("hand", "dnas"):
            diff = [t - o for t, o in zip(by["dnas_time"][:n], by[other][:n])]
            se = statistics.stdev(diff) / math.sqrt(n) if n > 1 else float("nan")
            cells.append(f"{statistics.fmean(diff):+.1f} ± {se:.1f}" if n > 1
                         else f"{diff[0]:+.1f}")
            cells.append(f"{sum(d >= 0 for d in diff)}/{n}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nRuns read: " + ", ".join(
        f"{d} {k}" for d, k in sorted(runs.items())) + ".\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--seeds-table":
        print(seeds_table(argv[1:]))
        return 0
    defaults = {"--datasets": "hapt", "--methods": "hand,dnas,dnas_time", "--tag": "time_axis"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    return run.main(argv)


if __name__ == "__main__":
    main()
