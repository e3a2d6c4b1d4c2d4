"""The whole keras_dnas flow against one plain training, per phase, CPU time, wall time, peak RSS.

Each variant runs in its own child process (so its peak RSS, ``ru_maxrss``, is its own) and
the variants alternate (plain, flow, flow, plain, ...) so that a change of machine load hits
both alike. The ratio that matters is the **process CPU time** (every thread of the child,
``time.process_time``): wall time on a shared machine also counts the other tenants.

- ``plain``: the task's seed trained ``warmup + search + finetune`` epochs with the
  validation split evaluated every epoch (the same data the flow validates on).
- ``flow``: what a user runs: ``warmup`` epochs of the seed, ``kd.prepare``, the flash/RAM
  model (``MemoryModel.from_model``, the conversion the callback and ``freeze`` reuse),
  ``search`` epochs with ``kd.DNASCallback`` (flash, RAM and latency budgets at
  ``--point`` of the seed, ``calibration_data`` = the training inputs), the certified
  ``kd.freeze`` (its int8 conversion and BN recalibration included), ``finetune`` epochs.

Both use the benchmark grid's tasks (``_bench/tasks.py``: model, data, epochs, Adam, batch 64).
Per phase the child prints CPU and wall seconds; per epoch too, so the steady epoch (the
epochs after the first of each ``fit``) of the search can be compared with plain epochs.

Usage::

    python benchmarks/search_cost.py --task digits --rounds 2
    python benchmarks/search_cost.py --task mnist --rounds 1 --profile /tmp/mnist_flow.prof
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class _Clock:
    """CPU and wall seconds of named phases (exclusive)."""

    def __init__(self):
        self.phases = {}
        self.rss_mb = {}  # peak RSS of the process at the end of each phase

    def __call__(self, name):
        clock = self

        class _Phase:
            def __enter__(self):
                self.cpu, self.wall = time.process_time(), time.perf_counter()

            def __exit__(self, *exc):
                cpu, wall = clock.phases.get(name, (0.0, 0.0))
                clock.phases[name] = (cpu + time.process_time() - self.cpu,
                                      wall + time.perf_counter() - self.wall)
                clock.rss_mb[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

        return _Phase()


def _epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = (time.process_time(), time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((time.process_time() - self._start[0],
                                time.perf_counter() - self._start[1]))

    return EpochClock()


def child(variant, task_name, point, profile=None):
    import numpy as np

    import keras
    import keras_dnas as kd
    from _bench import methods, tasks
    from keras_dnas import memory as memory_lib
    from keras_dnas.costs.model import CostModel

    task = tasks.TASKS[task_name]
    data = task.load(False)
    epochs = task.epochs
    x, y = data["train"]
    fit_args = dict(batch_size=task.batch_size, verbose=0, shuffle=True,
                    validation_data=data["val"])
    clock, per_epoch = _Clock(), {}
    keras.utils.set_random_seed(tasks.SEED)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = (time.process_time(), time.perf_counter())
    if variant == "plain":
        with clock("train"):
            model = methods.compile_model(task.build(), task)
            ec = _epoch_clock()
            model.fit(x, y, epochs=epochs.total, callbacks=[ec], **fit_args)
        per_epoch["train"] = ec.epochs
        info = {}
    else:
        flash_f, ram_f, latency_f = point
        with clock("warmup"):
            model = methods.compile_model(task.build(), task)
            ec = _epoch_clock()
            model.fit(x, y, epochs=epochs.warmup, callbacks=[ec], **fit_args)
        per_epoch["warmup"] = ec.epochs
        with clock("prepare"):
            search = methods.compile_model(kd.prepare(model), task)
        target = "stm32h743"
        with clock("memory model"):
            memory = memory_lib.MemoryModel.from_model(search, target=target)
        seed = CostModel(memory.plan if hasattr(memory, "plan") else kd.graph.analyze(
            search, masked_only=True), target, memory=memory)
        full = seed.evaluate(seed.full_counts(), ["flash", "ram", "latency_ms"])
        budgets = {"flash": int(flash_f * float(full["flash"])),
                   "ram": int(ram_f * float(full["ram"])),
                   "latency_ms": latency_f * float(full["latency_ms"])}
        with clock("search"):
            cb = kd.DNASCallback(target, budgets=budgets, calibration_data=x, verbose=0)
            ec = _epoch_clock()
            search.fit(x, y, epochs=epochs.search, callbacks=[cb, ec], **fit_args)
        per_epoch["search"] = ec.epochs
        with clock("freeze"):
            slim = kd.freeze(search, verbose=0)
        cert = getattr(slim, "dnas_certificate", {}) or {}
        with clock("finetune"):
            methods.compile_model(slim, task)
            ec = _epoch_clock()
            slim.fit(x, y, epochs=epochs.finetune, callbacks=[ec], **fit_args)
        per_epoch["finetune"] = ec.epochs
        acc = slim.evaluate(*data["test"], verbose=0)[1]
        info = {"budgets": budgets, "all_hold": cert.get("all_hold"),
                "flash_source": cert.get("flash_source"), "test_accuracy": float(acc)}
    total = (time.process_time() - start[0], time.perf_counter() - start[1])
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({
        "variant": variant, "task": task_name, "total": total, "phases": clock.phases,
        "epochs": per_epoch, "peak_rss_mb": rss_kb / 1024.0,
        "rss_after_phase_mb": clock.rss_mb, **info}), flush=True)


def _run_child(variant, task, point, profile):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--task", task,
           "--point", ":".join(str(v) for v in point)]
    if profile:
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {variant} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _steady(epochs_by_phase, phases):
    """Median CPU and wall seconds of the epochs after the first of each fit."""
    rows = [e for p in phases for e in epochs_by_phase.get(p, [])[1:]]
    if not rows:
        return float("nan"), float("nan")
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


def report(results, load):
    plain = [r for r in results if r["variant"] == "plain"]
    flow = [r for r in results if r["variant"] == "flow"]
    med = statistics.median
    p_cpu, p_wall = med(r["total"][0] for r in plain), med(r["total"][1] for r in plain)
    f_cpu, f_wall = med(r["total"][0] for r in flow), med(r["total"][1] for r in flow)
    p_rss, f_rss = med(r["peak_rss_mb"] for r in plain), med(r["peak_rss_mb"] for r in flow)
    sp = (med(_steady(r["epochs"], ["train"])[0] for r in plain),
          med(_steady(r["epochs"], ["train"])[1] for r in plain))
    ss = (med(_steady(r["epochs"], ["search"])[0] for r in flow),
          med(_steady(r["epochs"], ["search"])[1] for r in flow))
    task = results[0]["task"]
    lines = [f"task {task}: {len(plain)} plain / {len(flow)} flow runs; load average "
             f"{load[0]:.1f} -> {load[1]:.1f} (2 cores)",
             "| phase | CPU s | wall s | peak RSS MB at its end |", "|---|---:|---:|---:|"]
    for name in flow[0]["phases"]:
        rss = [r.get("rss_after_phase_mb", {}).get(name) for r in flow]
        rss = f"{med(rss):.0f}" if all(v is not None for v in rss) else "-"
        lines.append(f"| {name} | {med(r['phases'][name][0] for r in flow):.2f} | "
                     f"{med(r['phases'][name][1] for r in flow):.2f} | {rss} |")
    lines += [f"| **flow total** | {f_cpu:.2f} | {f_wall:.2f} | {f_rss:.0f} |",
              f"| plain training | {p_cpu:.2f} | {p_wall:.2f} | {p_rss:.0f} |",
              f"| **ratio** | {f_cpu / p_cpu:.2f}x | {f_wall / p_wall:.2f}x | "
              f"{f_rss / p_rss:.2f}x |",
              f"| steady epoch: plain / search | {sp[0]:.2f} / {ss[0]:.2f} = "
              f"{ss[0] / sp[0]:.2f}x | {sp[1]:.2f} / {ss[1]:.2f} = {ss[1] / sp[1]:.2f}x | |",
              ""]
    for r in flow:
        lines.append(f"flow: budgets {r['budgets']}, all hold {r['all_hold']}, "
                     f"{r['flash_source']}, test accuracy {r['test_accuracy']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="digits", choices=["digits", "mnist", "hapt"])
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (order alternates)")
    p.add_argument("--point", default="0.5:0.5:0.75",
                   help="flash:ram:latency budgets as fractions of the seed")
    p.add_argument("--profile", help="cProfile the (first) flow run into this file")
    p.add_argument("--only", choices=["plain", "flow"], help="run one variant once")
    p.add_argument("--child", choices=["plain", "flow"], help=argparse.SUPPRESS)
    p.add_argument("--json", help="append every run's result to this JSON-lines file")
    args = p.parse_args(argv)
    point = tuple(float(v) for v in args.point.split(":"))
    if args.child:
        return child(args.child, args.task, point, args.profile)
    load0 = os.getloadavg()[0]
    results = []
    order = [args.only] if args.only else []
    for r in range(0 if args.only else args.rounds):
        order += ["plain", "flow"] if r % 2 == 0 else ["flow", "plain"]
    for i, variant in enumerate(order):
        prof = args.profile if variant == "flow" and not any(
            x["variant"] == "flow" for x in results) else None
        res = _run_child(variant, args.task, point, prof)
        results.append(res)
        print(f"{variant}: CPU {res['total'][0]:.1f}s wall {res['total'][1]:.1f}s "
              f"RSS {res['peak_rss_mb']:.0f}MB phases "
              + ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in res["phases"].items()),
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    if not args.only:
        print(report(results, (load0, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
