"""Runs every method on every budget point of one task and writes one CSV row per result."""

import gc
import json
import time
import traceback

import keras

from _bench import costs as costs_lib
from _bench import evaluate, methods
from _bench.tasks import grid

METHODS = ("hand", "l1", "dnas")
EXTRA_METHODS = ("dnas_offline", "dnas_time")
"""Methods run only when asked for (``run.py --methods``): keras_dnas with
``arena_plan="offline"`` (search, certified freeze and file use the offline arena plan);
keras_dnas searching PIT's time axis too (``kd.prepare(search=TIME_SEARCH)``, Conv1D models)."""
TIME_SEARCH = ("channels", "receptive_field", "dilation")

FIELDS = (
    "dataset", "mode", "target", "point", "flash_frac", "ram_frac", "latency_frac",
    "flash_limit", "ram_limit", "latency_limit_ms", "enforced", "method", "status", "note",
    "width", "channels", "params", "macs", "latency_ms_est", "flash_est", "ram_est",
    "float_acc", "int8_acc", "agreement", "flash", "arena", "arena_head", "arena_tail",
    "holds_flash", "holds_ram", "holds_latency", "holds_all", "certified", "removed",
    "first_feasible_epoch", "epochs_total", "wall_s", "t_warmup", "t_scan", "t_prune",
    "t_prepare", "t_search", "t_freeze", "t_finetune", "t_train", "t_recalibrate", "eval_s",
    "seed_train_s",
    "search_cost_ratio", "arena_plan", "greedy_arena_head",
)


class Log:
    def __init__(self, verbose=True):
        self.verbose = verbose
        self.start = time.perf_counter()

    def __call__(self, msg):
        if self.verbose:
            print(f"[{time.perf_counter() - self.start:7.1f}s] {msg}", flush=True)


def run_task(task, quick, targets, points, use_memory, write_row, log, methods_to_run=METHODS,
             reuse=None):
    """All methods of one task; returns the rows written.

    ``methods_to_run``: the methods trained in this run. ``reuse``: rows of an
    earlier run (``{(dataset, target, point, method): row}``) copied, marked in
    their note, for the methods not run; the seed is always trained (it gives
    the warm-up checkpoint), and its accuracy is compared with the earlier run's.
    """
    reuse = reuse or {}
    mode = "quick" if quick else "full"
    epochs = task.quick_epochs if quick else task.epochs
    data = task.load(quick)
    log(f"{task.name}: train {len(data['train'][0])}, val {len(data['val'][0])}, "
        f"test {len(data['test'][0])}; epochs {epochs}")

    seed = methods.seed(task, data, epochs)
    log(f"{task.name}: seed trained in {seed['wall']:.1f}s "
        f"(warm-up {epochs.warmup} epochs: {seed['times']['warmup']:.1f}s)")
    seed_eval = evaluate.measure(seed["model"], data)
    seed_costs = costs_lib.SeedCosts(seed["model"], targets, use_memory)
    leaders = [g.leader for g in seed_costs.groups]
    seed_config = seed_costs.full()
    seed_est = {t: seed_costs.evaluate(t, seed_config) for t in targets}
    seed_latency = {t: seed_est[t]["latency_ms"] for t in targets}
    seed_measured = {"flash": seed_eval["flash"], "arena": seed_eval["arena"]}
    log(f"{task.name}: cost models built in {seed_costs.build_s:.1f}s "
        f"(flash / RAM model: {'yes' if seed_costs.memory is not None else 'no'})")
    log(f"{task.name}: seed float {seed_eval['float_acc']:.4f} int8 {seed_eval['int8_acc']:.4f} "
        f"flash {seed_eval['flash']} B arena {seed_eval['arena']} B; latency "
        + ", ".join(f"{t} {v:.3f} ms" for t, v in seed_latency.items()))

    rows = []
    base = {"dataset": task.name, "mode": mode, "epochs_total": epochs.total,
            "seed_train_s": seed["wall"]}

    def emit(row):
        row = {**base, **row}
        rows.append(row)
        write_row(row)

    points = grid(quick, targets, points)
    for target in dict.fromkeys(p.target for p in points):
        emit(_result_row(target, None, None, "seed", seed, seed_eval, seed_costs, leaders,
                         note="no constraint"))
        earlier = reuse.get((task.name, target, "", "seed"))
        if earlier is not None:
            log(f"{task.name}: seed int8 {seed_eval['int8_acc']:.4f} here, "
                f"{float(earlier['int8_acc']):.4f} in {earlier['_source']} "
                f"({'same' if abs(seed_eval['int8_acc'] - float(earlier['int8_acc'])) < 5e-6 else 'DIFFERENT'} "
                "warm-up training)")

    hand_cache, l1_cache = {}, {}
    for point in points:
        budgets = costs_lib.budgets_for(point, seed_measured, seed_latency, use_memory,
                                        seed_est[point.target]["params"])
        limits = _limits(point, seed_measured, seed_latency, budgets)
        minimum = seed_costs.minimum(point.target, list(budgets))
        if not costs_lib.holds(minimum, budgets):
            failing = ", ".join(f"{m} floor {minimum[m]:,.4g} > {budgets[m]:,.4g}"
                                for m in budgets if minimum[m] > budgets[m])
            log(f"{task.name} {point.key}: infeasible for every method ({failing})")
            for method in METHODS:
                emit({**limits, "method": method, "status": "infeasible",
                      "note": f"one channel per group exceeds the budget: {failing}"})
            continue
        log(f"{task.name} {point.key}: budgets "
            + ", ".join(f"{m}<={v:,.4g}" for m, v in budgets.items()))
        for method in METHODS + tuple(m for m in EXTRA_METHODS if m in methods_to_run):
            if method not in methods_to_run:
                earlier = reuse.get((task.name, point.target, point.label, method))
                if earlier is not None:
                    emit({k: v for k, v in earlier.items() if not k.startswith("_")}
                         | {"note": f"reused from {earlier['_source']}: {earlier.get('note', '')}"})
                continue
            start = time.perf_counter()
            try:
                row = _run_method(method, task, data, epochs, seed, seed_costs, leaders, point,
                                  budgets, use_memory, hand_cache, l1_cache)
            except Exception as e:  # noqa: BLE001 - record and continue with the next method
                traceback.print_exc()
                row = {"method": method, "status": "error",
                       "note": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            row = _with_holds({**limits, **row})
            emit(row)
            log(f"{task.name} {point.key} {method}: {row.get('status')} "
                f"int8 {_fmt(row.get('int8_acc'))} flash {row.get('flash')} "
                f"arena {row.get('arena')} lat {_fmt(row.get('latency_ms_est'))} "
                f"holds {row.get('holds_all')} ({time.perf_counter() - start:.0f}s)")
            gc.collect()
    keras.backend.clear_session()
    gc.collect()
    return rows


def _fmt(v):
    return "-" if v is None else f"{v:.4g}"


def _limits(point, seed_measured, seed_latency, budgets):
    return {"target": point.target, "point": point.label, "flash_frac": point.flash,
            "ram_frac": point.ram, "latency_frac": point.latency,
            "flash_limit": int(point.flash * seed_measured["flash"]),
            "ram_limit": int(point.ram * seed_measured["arena"]),
            "latency_limit_ms": point.latency * seed_latency[point.target],
            "enforced": "+".join(budgets)}


def _run_method(method, task, data, epochs, seed, seed_costs, leaders, point, budgets,
                use_memory, hand_cache, l1_cache):
    target = point.target
    if method == "hand":
        found = costs_lib.widest_uniform(seed_costs, target, budgets)
        if found is None:
            return {"method": method, "status": "infeasible",
                    "note": "no uniform width multiplier meets the budgets"}
        key = tuple(sorted(found[1].items()))
        if key not in hand_cache:
            result = methods.hand_tuned(task, data, epochs, seed_costs, target, budgets)
            hand_cache[key] = (result, evaluate.measure(result["model"], data))
            note = f"width {result['width']:.4g}, trained from scratch"
        else:
            note = f"width {hand_cache[key][0]['width']:.4g}, same model as an earlier point"
        result, measured = hand_cache[key]
        return _result_row(target, point, budgets, method, result, measured, seed_costs,
                           leaders, note=note, width=result["width"])
    if method == "l1":
        pruned = methods.l1_prune(task, seed, target, budgets, seed_costs.memory)
        if pruned["key"] not in l1_cache:
            result = methods.l1_finetune(task, data, epochs, seed,
                                         methods.l1_recalibrate(pruned, data))
            l1_cache[pruned["key"]] = (result, evaluate.measure(result["model"], data))
            note = f"closed {result['removed']} channels by L1 norm"
        else:
            note = (f"closed {pruned['removed']} channels by L1 norm; same channels as an "
                    "earlier point, fine-tuned model reused")
        result, measured = l1_cache[pruned["key"]]
        return _result_row(target, point, budgets, method, result, measured, seed_costs,
                           leaders, note=note, removed=result["removed"])
    if method in ("dnas", "dnas_offline", "dnas_time"):
        arena_plan = "offline" if method == "dnas_offline" else "tflm"
        search = TIME_SEARCH if method == "dnas_time" else ("channels",)
        result = methods.dnas(task, data, epochs, seed, target, budgets, seed_costs.memory,
                              arena_plan=arena_plan, search=search)
        measured = evaluate.measure(result["model"], data, arena_plan=arena_plan)
        note = (f"first feasible search epoch {result['first_feasible_epoch']}; "
                f"freeze closed {result['removed']} more channels")
        row = _result_row(target, point, budgets, method, result, measured, seed_costs,
                          leaders, note=note, removed=result["removed"],
                          certified=result["certified"],
                          first_feasible_epoch=result["first_feasible_epoch"],
                          ratio=result["wall"] / seed["wall"])
        if method == "dnas_time":  # the seed's plan has full kernels: estimate the frozen one
            row.update(_own_estimate(result["model"], target))
            row["note"] += "; kernels (taps@dilation) " + _kernels(result["model"])
        return row
    raise ValueError(method)


def _own_estimate(model, target):
    """params / MACs / latency of a frozen model from its own plan (its kernels as frozen)."""
    import keras_dnas as kd
    from keras_dnas.costs.model import CostModel, to_python

    cm = CostModel(kd.graph.analyze(model), target)
    est = {k: to_python(v) for k, v in
           cm.evaluate(cm.full_counts(), ["params", "macs", "latency_ms"]).items()}
    return {"params": int(est["params"]), "macs": int(est["macs"]),
            "latency_ms_est": est["latency_ms"], "flash_est": None, "ram_est": None}


def _kernels(model):
    return " ".join(f"{layer.kernel_size[0]}@{layer.dilation_rate[0]}" for layer in model.layers
                    if isinstance(layer, (keras.layers.Conv1D, keras.layers.DepthwiseConv1D)))


def _result_row(target, point, budgets, method, result, measured, seed_costs, leaders, note="",
                width=None, removed=None, certified=None, first_feasible_epoch=None, ratio=None):
    config = costs_lib.SeedCosts.config_of(result["model"], leaders)
    est = seed_costs.evaluate(target, config)
    times = result.get("times", {})
    row = {"target": target, "method": method, "status": "ok", "note": note,
           "width": width, "channels": json.dumps([config[n] for n in leaders]),
           "params": int(est["params"]), "macs": int(est["macs"]),
           "latency_ms_est": est["latency_ms"], "flash_est": est.get("flash_bytes"),
           "ram_est": est.get("ram_bytes"),
           **{k: measured[k] for k in ("float_acc", "int8_acc", "agreement", "flash", "arena",
                                       "arena_head", "arena_tail", "eval_s", "arena_plan",
                                       "greedy_arena_head")},
           "removed": removed, "certified": certified,
           "first_feasible_epoch": first_feasible_epoch, "wall_s": result["wall"],
           "search_cost_ratio": ratio}
    for k in ("warmup", "scan", "prune", "prepare", "search", "freeze", "finetune", "train",
              "recalibrate"):
        row[f"t_{k}"] = times.get(k)
    return row


def _with_holds(row):
    if row.get("status") != "ok":
        return row
    row["holds_flash"] = row["flash"] <= row["flash_limit"]
    row["holds_ram"] = row["arena"] <= row["ram_limit"]
    row["holds_latency"] = row["latency_ms_est"] <= row["latency_limit_ms"] * (1 + 1e-9)
    row["holds_all"] = row["holds_flash"] and row["holds_ram"] and row["holds_latency"]
    return row
