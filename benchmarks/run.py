"""Real-data benchmarks: keras_dnas against the baselines a TinyML engineer would pick.

Data sets (all offline, from PyPI packages): UCI HAPT (TCN), 5,000 MNIST digits
(ResNet-8), scikit-learn digits (small CNN). Methods at the same budgets, same
optimiser (Adam) and same total epochs: (a) the seed without constraint, (b) the
widest uniform width multiplier that fits, trained from scratch, (c) structured
L1-norm filter pruning of the warm-up checkpoint to the budgets plus fine-tuning,
(d) keras_dnas (warm-up, DNASCallback search, certified freeze, fine-tune).
Budgets: flash and RAM as fractions of the seed's measured ``len(.tflite)`` and
TFLite Micro arena, latency as a fraction of the seed's estimated latency on
each target (stm32h743, nrf52840). Every model is exported to full int8 and
run in TFLite Micro on the test split.

Outputs in ``--out`` (default ``benchmarks/results``): ``<mode>_results.csv``,
``<mode>_tables.md`` and ``<mode>_pareto_<dataset>.png``.

Usage::

    python benchmarks/run.py --quick          # smoke run: digits subset, 1 epoch per phase
    python benchmarks/run.py --quick --datasets hapt,mnist,digits
    python benchmarks/run.py                  # full grid (35 min on 2 shared CPU cores)
    python benchmarks/run.py --datasets hapt --targets stm32h743
    python benchmarks/run.py --report-only    # tables and plots from an existing CSV
    python benchmarks/run.py --methods dnas --baselines-from benchmarks/results/full_results.csv
    python benchmarks/run.py --methods dnas,dnas_offline --points 1:0.5:1   # arena plans
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny subsets, 1 epoch per phase, one budget point on one target "
                        "(CI smoke test; no accuracy claims)")
    p.add_argument("--datasets", default=None,
                   help="comma-separated subset of hapt,mnist,digits (default: all; "
                        "with --quick: digits)")
    p.add_argument("--targets", default=None,
                   help="comma-separated targets (default: stm32h743,nrf52840)")
    p.add_argument("--points", default=None,
                   help="budget points as flash:ram:latency (or memory:latency) fractions of "
                        "the seed, run on every target, e.g. '0.5:0.5:0.75,0.25:0.5:1' "
                        "(default: the documented grid, see _bench/tasks.py)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--tag", default=None, help="file prefix (default: quick or full)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (initialisation, shuffling); the data splits stay fixed")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of hand,l1,dnas,dnas_offline to train (default: "
                        "hand,l1,dnas; the seed always trains: it gives the warm-up checkpoint; "
                        "dnas_offline: keras_dnas with arena_plan='offline')")
    p.add_argument("--baselines-from", default=None,
                   help="CSVs (comma-separated) of earlier runs with the same --seed: rows of the methods not "
                        "in --methods are copied from it (marked 'reused from' in the note)")
    p.add_argument("--no-memory", action="store_true",
                   help="do not use keras_dnas.memory even if present (params proxy)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--search-cost", action="store_true",
                   help="only the interleaved search-cost timing (seed training vs the whole "
                        "keras_dnas pipeline) at one budget point per data set")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --search-cost")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild tables and plots from <out>/<tag>_results.csv")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tag = args.tag or ("quick" if args.quick else "full")
    os.makedirs(args.out, exist_ok=True)
    if args.search_cost:
        return _search_cost(args, (args.tag or "searchcost") + ("_quick" if args.quick else ""))
    csv_path = os.path.join(args.out, f"{tag}_results.csv")
    from _bench import report

    if not args.report_only:
        rows, wall = _run(args, tag, csv_path)
    else:
        rows, wall = report.read_csv(csv_path), None
    rows = report.read_csv(csv_path)
    md_path = os.path.join(args.out, f"{tag}_tables.md")
    md = [f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
          ""]
    if wall is not None:
        md += [f"Total wall time: {wall / 60:.1f} min on {os.cpu_count()} CPU cores "
               f"({platform.processor() or platform.machine()}).", ""]
    elif os.path.exists(md_path):  # --report-only: keep the run's command and wall time
        with open(md_path) as f:
            md = [line.rstrip("\n") for line in f.readlines()[:4]
                  if line.startswith(("Command:", "Total wall time:")) or not line.strip()]
    md += ["## Results (compact: one table per data set)", ""] + report.compact(rows)
    md += report.summary_by_method(rows)
    md += ["## Results per data set and target", ""]
    md.append(report.markdown(rows))
    if not args.no_plots:
        paths = report.pareto_plots(rows, args.out, f"{tag}_")
        md += ["Plots: " + ", ".join(os.path.relpath(p, os.path.dirname(HERE)) for p in paths),
               ""]
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {csv_path} and {md_path}")
    return 0


def _run(args, tag, csv_path):
    import keras_dnas as kd  # noqa: F401  (import after the environment is set)
    from _bench import costs as costs_lib
    from _bench import report, runner, tasks

    tasks.SEED = args.seed
    datasets = args.datasets.split(",") if args.datasets else (
        list(tasks.QUICK_DATASETS) if args.quick else list(tasks.TASKS))
    targets = tuple(args.targets.split(",")) if args.targets else tasks.TARGETS
    points = tasks.parse_points(args.points) if args.points else None
    use_memory = costs_lib.memory_available() and not args.no_memory
    run_methods = tuple(args.methods.split(",")) if args.methods else runner.METHODS
    unknown = set(run_methods) - set(runner.METHODS + runner.EXTRA_METHODS)
    if unknown:
        raise SystemExit(f"--methods takes a subset of "
                         f"{','.join(runner.METHODS + runner.EXTRA_METHODS)}. "
                         f"Received: {args.methods}")
    reuse = {}
    if args.baselines_from:
        for path in args.baselines_from.split(","):
            for row in report.read_csv(path):
                row = dict(row, _source=os.path.basename(path))
                reuse[(row["dataset"], row["target"], row.get("point") or "", row["method"])] = row
    log = runner.Log()
    log(f"mode {tag}; datasets {datasets}; targets {targets}; memory model "
        f"{'on (flash + RAM budgets)' if use_memory else 'OFF (params proxy for flash)'}")
    writer = report.CsvWriter(csv_path)
    start = time.perf_counter()
    try:
        for name in datasets:
            runner.run_task(tasks.TASKS[name], args.quick, targets, points, use_memory, writer,
                            log, methods_to_run=run_methods, reuse=reuse)
    finally:
        writer.close()
    wall = time.perf_counter() - start
    log(f"done in {wall / 60:.1f} min")
    return None, wall


def _search_cost(args, tag):
    from _bench import costs as costs_lib
    from _bench import report, runner, search_cost, tasks

    datasets = args.datasets.split(",") if args.datasets else (
        list(tasks.QUICK_DATASETS) if args.quick else list(tasks.TASKS))
    target = args.targets.split(",")[0] if args.targets else tasks.TARGETS[0]
    spec = tasks.parse_points(args.points)[0] if args.points else (0.5, 0.5, 0.75, True)
    point = tasks.BudgetPoint(target, *spec[:3])
    use_memory = costs_lib.memory_available() and not args.no_memory
    csv_path = os.path.join(args.out, f"{tag}_results.csv")
    if os.path.exists(csv_path):
        os.remove(csv_path)
    log = runner.Log()
    start = time.perf_counter()
    rows = []
    for name in datasets:
        rows += search_cost.run(tasks.TASKS[name], args.quick, target, point, args.rounds,
                                use_memory, csv_path, log)
    wall = time.perf_counter() - start
    rows = report.read_csv(csv_path)
    md = [f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:])}`", "",
          f"Total wall time: {wall / 60:.1f} min on {os.cpu_count()} CPU cores.", ""]
    md += search_cost.markdown(rows)
    md_path = os.path.join(args.out, f"{tag}_tables.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
