"""Random-graph fuzzer: build random Functional models from every layer role and check that
keras_dnas is exact on each (prepare, freeze, kd.summary vs the .tflite and TFLite Micro, the
search-time memory model vs the frozen model). Generator and checks: tests/fuzz_graphs_lib.py.

Every graph runs in a worker process (restarted if it dies or exceeds --timeout), so a crash
in a converter or interpreter is recorded as a failure of that seed, not the end of the run.
Graph ``i`` has seed ``--seed + i``; rerun one with ``--only SEED`` (same ``--roles``).

Usage::

    python benchmarks/fuzz_graphs.py --n 1000 --seed 0 --out benchmarks/results/fuzz_1000.json
    python benchmarks/fuzz_graphs.py --quick
    python benchmarks/fuzz_graphs.py --only 17 --only 42 --verbose
    python benchmarks/fuzz_graphs.py --seeds-from seeds.txt --out rerun.json  # a list of seeds
    python benchmarks/fuzz_graphs.py --n 200 --skip-roles nested,ops   # roles not searchable yet
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests import fuzz_graphs_lib as fz  # noqa: E402  (no TensorFlow import at module level)


def _serve(conn):
    """Worker loop: receive (seed, roles, checks), send back the result."""
    import warnings

    warnings.simplefilter("ignore")
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(fz.fuzz_one(*task))


class _Worker:
    """One persistent child process; replaced when it dies or hangs."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()

    def run(self, task, timeout):
        self.conn.send(task)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                code = self.proc.exitcode
                self.stop()
                return f"worker process died (exit code {code})"
        self.stop()
        return f"timed out after {timeout:.0f} s"

    def stop(self):
        if self.proc.is_alive():
            self.proc.kill()  # only the child this script started
        self.proc.join(5)


def _load_done(out, partial):
    """Results (and run records) of earlier runs: OUT's report, then OUT.partial.jsonl."""
    results, runs = {}, []
    if os.path.exists(out):
        with open(out) as f:
            report = json.load(f)
        results.update((r["seed"], r) for r in report["results"])
        runs = report.get("runs") or [{k: report.get(k) for k in (
            "started_utc", "command", "graphs", "wall_s")}]
    if os.path.exists(partial):
        counted = set(results)
        extra = []
        with open(partial) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r["seed"] not in counted:
                        extra.append(r)
                    results[r["seed"]] = r
        if extra:  # graphs of a run stopped before it wrote its report: wall from timestamps
            ends = [r["finished_utc_s"] for r in extra if r.get("finished_utc_s")]
            wall = (max(ends) - min(ends) + (extra[0].get("wall_s") or 0)) if ends else 0.0
            runs.append({"started_utc": None, "command": "(stopped run, from the .jsonl)",
                         "graphs": len(extra), "wall_s": round(wall, 1)})
    return list(results.values()), runs


def _merged(paths):
    """One report over the results of several --out files or .partial.jsonl files."""
    results, runs = {}, []
    for path in paths:
        if path.endswith(".jsonl"):
            part, more = _load_done(path[:-len(".partial.jsonl")] + ".none", path)
        else:
            part, more = _load_done(path, path + ".none")
        results.update((r["seed"], dict(r, source=path)) for r in part)
        runs += [dict(r, source=path) for r in more]
    results = sorted(results.values(), key=lambda r: r["seed"])
    classes, per_role, _ = summarise(results, fz.ALL_ROLES)
    na = not_applicable(results)
    cpu = sum(r.get("cpu_s") or 0 for r in results)
    # Runs may have been concurrent: wall time is the span from the first graph's start to the
    # last graph's end, where the results carry their end time.
    timed = [r for r in results if r.get("finished_utc_s")]
    span = (max(r["finished_utc_s"] for r in timed) - min(
        r["finished_utc_s"] - (r.get("wall_s") or 0) for r in timed)) if timed else None
    wall = span or sum(r.get("wall_s") or 0 for r in runs)
    return {
        "command": "python benchmarks/fuzz_graphs.py --summarise " + " ".join(paths),
        "runs": runs, "graphs": len(results),
        "graphs_failed": sum(bool(r["failures"]) for r in results),
        "wall_s": round(wall, 1), "worker_cpu_s": round(cpu, 1),
        "graphs_per_minute_wall": round(60 * len(results) / wall, 2) if wall else None,
        "graphs_per_minute_cpu": round(60 * len(results) / cpu, 2) if cpu else None,
        "check_d_skipped_structure_differs": na.get("d: operators differ", 0),
        "not_applicable": na, "failure_classes": classes, "per_role": per_role,
        "results": results,
    }


def _crash_result(seed, message):
    return {"seed": seed, "used": [], "failures": [
        {"check": "crash", "class": f"crash: {message.split(' (')[0]}", "detail": message}],
        "skipped": {}, "numbers": {}, "seconds": {}, "cpu_s": None, "wall_s": None}


def summarise(results, roles):
    """Failure classes (count, seeds, smallest example) and per-role counts."""
    classes = {}
    per_role = {r: {"graphs": 0, "failed": 0, "classes": defaultdict(int)} for r in roles}
    skipped = defaultdict(int)
    for r in results:
        for check in r.get("skipped", {}):
            skipped[check] += 1
        for role in r.get("used", []):
            per_role[role]["graphs"] += 1
            per_role[role]["failed"] += bool(r["failures"])
        for f in r["failures"]:
            f["class"] = re.sub(r"\d+", "N", f["class"])  # classes never depend on numbers
            c = classes.setdefault(f["class"], {"count": 0, "seeds": [], "example": None})
            c["count"] += 1
            c["seeds"].append(r["seed"])
            size = r.get("layers", 10 ** 6)
            if c["example"] is None or size < c["example"]["layers"]:
                c["example"] = {"seed": r["seed"], "layers": size, "detail": f["detail"],
                                "used": r.get("used", [])}
            for role in r.get("used", []):
                per_role[role]["classes"][f["class"]] += 1
    for p in per_role.values():
        p["classes"] = dict(p["classes"])
    return dict(sorted(classes.items(), key=lambda kv: -kv[1]["count"])), per_role, dict(skipped)


def not_applicable(results):
    """Graphs whose check was not applicable, by check and reason (the text before ':')."""
    counts = defaultdict(int)
    for r in results:
        for check, why in r.get("skipped", {}).items():
            counts[f"{check}: {why.split(':')[0]}"] += 1
    return dict(sorted(counts.items()))


def _print(report):
    print(f"\n{report['graphs']} graphs, {report['graphs_failed']} with failures; "
          f"{report['wall_s']:.0f} s wall ({report['graphs_per_minute_wall']} graphs/min), "
          f"worker CPU {report['worker_cpu_s']:.0f} s ({report['graphs_per_minute_cpu']} "
          f"graphs per CPU-minute); check d not comparable (operators differ) on "
          f"{report['check_d_skipped_structure_differs']}")
    print("Not applicable (graphs, by check and reason): " + ", ".join(
        f"{k} {v}" for k, v in report.get("not_applicable", {}).items()))
    print("\nFailure classes (graphs, smallest example seed):")
    for name, c in report["failure_classes"].items():
        print(f"  {c['count']:4d}  seed {c['example']['seed']:<6} {name}")
    print("\nPer role (graphs using it / of which failed):")
    for role, r in report["per_role"].items():
        if r["graphs"]:
            print(f"  {role:<11} {r['graphs']:4d} / {r['failed']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="number of graphs")
    p.add_argument("--seed", type=int, default=0, help="seed of the first graph")
    p.add_argument("--only", type=int, action="append", help="run only this graph seed")
    p.add_argument("--seeds-from", metavar="FILE",
                   help="run only the seeds listed in FILE (integers separated by white space "
                        "or commas; '#' starts a comment), after any --only")
    p.add_argument("--roles", default=",".join(fz.ALL_ROLES),
                   help="comma-separated roles the generator may use")
    p.add_argument("--skip-roles", default="", help="comma-separated roles to leave out")
    p.add_argument("--checks", default=",".join(fz.CHECKS), help="subset of a,b,c,d")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per graph")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop starting new graphs after this many seconds")
    p.add_argument("--quick", action="store_true", help="5 graphs (smoke run)")
    p.add_argument("--out", default=None,
                   help="JSON file for the results; each graph's result is also appended to "
                        "OUT.partial.jsonl as soon as it is done, so a stopped run keeps them")
    p.add_argument("--resume", action="store_true",
                   help="keep the graphs already in OUT.partial.jsonl (or OUT) and run only "
                        "the seeds they lack; the report covers all of them")
    p.add_argument("--verbose", action="store_true", help="print every failure's detail")
    p.add_argument("--summarise", metavar="JSON", nargs="+",
                   help="recompute the classes and per-role counts of earlier --out files "
                        "(or their .partial.jsonl); several files (parallel runs, reruns with "
                        "--only: a later file's result for a seed replaces an earlier one's) "
                        "are merged into --out")
    args = p.parse_args(argv)
    if args.summarise:
        if len(args.summarise) > 1 and not args.out:
            p.error("merging several --summarise files needs --out")
        report = _merged(args.summarise)
        _print(report)
        with open(args.out or args.summarise[0], "w") as f:
            json.dump(report, f, indent=1)
        return 0

    skip = {r for r in args.skip_roles.split(",") if r}
    roles = tuple(r for r in args.roles.split(",") if r and r not in skip)
    unknown = {r for r in set(roles) | skip if r not in fz.ALL_ROLES}
    if unknown:
        p.error(f"unknown roles {sorted(unknown)}; known: {','.join(fz.ALL_ROLES)}")
    checks = tuple(c for c in args.checks.split(",") if c)
    n = 5 if args.quick else args.n
    seeds = list(args.only or [])
    if args.seeds_from:
        with open(args.seeds_from) as f:
            text = re.sub(r"#[^\n]*", " ", f.read())
        for word in re.split(r"[\s,]+", text):
            if word and int(word) not in seeds:
                seeds.append(int(word))
    seeds = seeds or list(range(args.seed, args.seed + n))

    results, earlier_runs = [], []
    partial = args.out + ".partial.jsonl" if args.out else None
    if args.resume:
        if not partial:
            p.error("--resume needs --out")
        results, earlier_runs = _load_done(args.out, partial)
        done = {r["seed"] for r in results}
        print(f"resuming: {len(done)} graphs already done", flush=True)
        seeds = [s for s in seeds if s not in done]
    elif partial and os.path.exists(partial):
        os.remove(partial)  # a fresh run: do not mix in an older run's graphs
    first_new = len(results)

    worker = _Worker()
    start_wall, start = time.perf_counter(), time.time()
    try:
        for i, seed in enumerate(seeds):
            if args.time_budget and time.perf_counter() - start_wall > args.time_budget:
                print(f"time budget reached after {i} graphs")
                break
            out = worker.run((seed, roles, checks), args.timeout)
            if isinstance(out, str):  # crashed or hung: new worker for the next graph
                out = _crash_result(seed, out)
                worker = _Worker()
            out["finished_utc_s"] = round(time.time(), 1)
            results.append(out)
            if partial:
                with open(partial, "a") as f:
                    f.write(json.dumps(out) + "\n")
            status = "ok" if not out["failures"] else "; ".join(
                sorted({f["class"][:90] for f in out["failures"]}))
            print(f"[{i + 1}/{len(seeds)}] seed {seed} ({out.get('wall_s') or 0:.1f} s, "
                  f"{out.get('searchable', '-')} searchable groups): {status}", flush=True)
            if args.verbose:
                for f in out["failures"]:
                    print("    ", f["detail"])
    finally:
        worker.conn.send(None) if worker.proc.is_alive() else None
        worker.stop()
    runs = earlier_runs + [{
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
        "command": "python benchmarks/fuzz_graphs.py " + " ".join(argv or sys.argv[1:]),
        "graphs": len(results) - first_new,
        "wall_s": round(time.perf_counter() - start_wall, 1)}]
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["cpu_s"] or 0 for r in results)
    classes, per_role, skipped = summarise(results, fz.ALL_ROLES)
    failed = sum(bool(r["failures"]) for r in results)
    report = {
        "command": "python benchmarks/fuzz_graphs.py " + " ".join(argv or sys.argv[1:]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "runs": runs,
        "roles": list(roles), "checks": list(checks),
        "graphs": len(results), "graphs_failed": failed,
        "wall_s": round(wall, 1), "worker_cpu_s": round(cpu, 1),
        "graphs_per_minute_wall": round(60 * len(results) / wall, 2) if wall else None,
        "graphs_per_minute_cpu": round(60 * len(results) / cpu, 2) if cpu else None,
        "check_d_skipped_structure_differs": not_applicable(results).get(
            "d: operators differ", 0),
        "not_applicable": not_applicable(results),
        "failure_classes": classes, "per_role": per_role, "results": results,
    }
    _print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.out}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
