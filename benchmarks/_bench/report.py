"""CSV output, Markdown tables and Pareto plots of the benchmark rows."""

import csv
import math
import os

from _bench.runner import FIELDS

METHOD_NAMES = {"seed": "seed (no constraint)", "hand": "hand-tuned width",
                "l1": "L1 filter pruning", "dnas": "keras_dnas",
                "dnas_offline": "keras_dnas, offline arena plan",
                "dnas_time": "keras_dnas, channels + time"}
COLORS = {"seed": "black", "hand": "tab:blue", "l1": "tab:orange", "dnas": "tab:green",
          "dnas_offline": "tab:purple", "dnas_time": "tab:red"}
MARKERS = {"seed": "*", "hand": "s", "l1": "^", "dnas": "o", "dnas_offline": "D",
           "dnas_time": "v"}


class CsvWriter:
    """Appends one row at a time (flushed), so a long run keeps what it finished."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS, extrasaction="ignore")
        self._writer.writeheader()
        self._file.flush()

    def __call__(self, row):
        self._writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
        self._file.flush()

    def close(self):
        self._file.close()


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _yes(v):
    return str(v) in ("True", "1", "true")


# ------------------------------------------------------------------------------ tables


def _acc(v):
    x = _num(v)
    return "-" if x is None else f"{100 * x:.1f}"


def _bytes(v, limit=None):
    x = _num(v)
    if x is None:
        return "-"
    return f"{int(x):,}" + (f" / {int(_num(limit)):,}" if _num(limit) else "")


def _holds(r):
    if r["status"] != "ok" or not r["point"]:
        return "-"
    marks = [("F", r["holds_flash"]), ("R", r["holds_ram"]), ("L", r["holds_latency"])]
    text = " ".join(f"{k}{'✓' if _yes(v) else '✗'}" for k, v in marks)
    return ("**yes**" if _yes(r["holds_all"]) else "no") + f" ({text})"


def markdown(rows, title=None):
    """Markdown: one results table per data set and target, then the search-cost table."""
    out = []
    if title:
        out += [f"## {title}", ""]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for ds in datasets:
        ds_rows = [r for r in rows if r["dataset"] == ds]
        for target in dict.fromkeys(r["target"] for r in ds_rows):
            t_rows = [r for r in ds_rows if r["target"] == target]
            out += [f"### {ds} on {target}", "",
                    "| budget (flash / RAM / latency, of the seed) | method | float acc % | "
                    "int8 acc % (TFLM) | flash B (measured / limit) | arena B (measured / limit) "
                    "| latency ms (est. / limit) | every budget holds | wall s |",
                    "|---|---|---:|---:|---:|---:|---:|---|---:|"]
            for r in t_rows:
                point = r["point"] or "none (seed)"
                lat = _num(r["latency_ms_est"])
                lat_lim = _num(r["latency_limit_ms"])
                lat_s = "-" if lat is None else (f"{lat:.3g}" + (f" / {lat_lim:.3g}"
                                                                   if lat_lim else ""))
                if r["status"] != "ok":
                    out.append(f"| {point} | {METHOD_NAMES[r['method']]} | {r['status']}: "
                               f"{r['note']} | | | | | | |")
                    continue
                wall = _num(r["wall_s"])
                out.append(
                    f"| {point} | {METHOD_NAMES[r['method']]} | {_acc(r['float_acc'])} | "
                    f"{_acc(r['int8_acc'])} | {_bytes(r['flash'], r['flash_limit'])} | "
                    f"{_bytes(r['arena'], r['ram_limit'])} | {lat_s} | {_holds(r)} | "
                    f"{wall:.0f} |")
            out.append("")
    out += search_cost(rows)
    return "\n".join(out)


def compact(rows):
    """One table per data set (both targets), infeasible points listed below it."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == ds]
        out += [f"#### {ds}", "",
                "| target | budget F / R / L | method | channels | float % | int8 % | "
                "flash B / limit | arena B / limit | latency ms / limit | holds | wall s |",
                "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
        seen_seed = False
        infeasible = {}
        for r in ds_rows:
            if r["method"] == "seed":
                if seen_seed:
                    continue
                seen_seed = True
            if r["status"] == "infeasible":
                infeasible.setdefault(r["point"], set()).add(r["target"])
                continue
            if r["status"] != "ok":
                out.append(f"| {r['target']} | {r['point']} | {METHOD_NAMES[r['method']]} | "
                           f"{r['status']}: {r['note']} | | | | | | | |")
                continue
            lat, lim = _num(r["latency_ms_est"]), _num(r["latency_limit_ms"])
            lat_s = f"{lat:.3g}" + (f" / {lim:.3g}" if lim else "")
            reused = " (reused)" if "same" in (r["note"] or "") else ""
            target = "any" if r["method"] == "seed" else r["target"]
            out.append(
                f"| {target} | {r['point'] or '-'} | {METHOD_NAMES[r['method']]}{reused} | "
                f"{r['channels']} | {_acc(r['float_acc'])} | {_acc(r['int8_acc'])} | "
                f"{_bytes(r['flash'], r['flash_limit'])} | {_bytes(r['arena'], r['ram_limit'])} | "
                f"{lat_s} | {'yes' if _yes(r['holds_all']) else ('-' if not r['point'] else 'NO')}"
                f" | {_num(r['wall_s']):.0f} |")
        out.append("")
        if infeasible:
            notes = {r["point"]: r["note"].split(": ", 1)[-1] for r in ds_rows
                     if r["status"] == "infeasible"}
            out.append("Infeasible for every method (even one channel per searchable group "
                       "exceeds a budget), not run: "
                       + "; ".join(f"{p} on {', '.join(sorted(t))} ({notes[p]})"
                                   for p, t in infeasible.items()) + ".")
            out.append("")
    return out


def search_cost(rows):
    """keras_dnas wall time (warm-up + search + freeze + fine-tune) over one seed training."""
    out = ["### Search cost", "",
           "keras_dnas wall time (warm-up + prepare + search + freeze + fine-tune, same total "
           "epochs) divided by one ordinary training of the seed, measured in the same run.", "",
           "| data set | target | budget | warm-up s | search s | freeze s | fine-tune s | "
           "total s | seed training s | ratio |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for r in rows:
        if r["method"] != "dnas" or r["status"] != "ok":
            continue
        ratio = _num(r["search_cost_ratio"])
        ratios.append(ratio)
        out.append(f"| {r['dataset']} | {r['target']} | {r['point']} | "
                   f"{_num(r['t_warmup']):.0f} | {_num(r['t_search']):.0f} | "
                   f"{_num(r['t_freeze']):.1f} | {_num(r['t_finetune']):.0f} | "
                   f"{_num(r['wall_s']):.0f} | {_num(r['seed_train_s']):.0f} | {ratio:.2f} |")
    if ratios:
        ratios.sort()
        out += ["", f"Median ratio {ratios[len(ratios) // 2]:.2f} "
                    f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}) over {len(ratios)} searches."]
    out.append("")
    return out


def summary_by_method(rows):
    """Per data set and method: mean int8 accuracy over the points where every method ran."""
    out = ["### Mean over the feasible budget points", "",
           "| data set | method | points | mean int8 acc % | mean float acc % | "
           "budgets held (measured) | mean wall s |", "|---|---|---:|---:|---:|---:|---:|"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == ds and r["point"]]
        keys = {}
        for r in ds_rows:
            keys.setdefault((r["target"], r["point"]), {})[r["method"]] = r
        common = [v for v in keys.values()
                  if all(v.get(m, {}).get("status") == "ok" for m in ("hand", "l1", "dnas"))]
        for m in ("hand", "l1", "dnas"):
            sel = [v[m] for v in common]
            if not sel:
                continue
            acc = sum(_num(r["int8_acc"]) for r in sel) / len(sel)
            facc = sum(_num(r["float_acc"]) for r in sel) / len(sel)
            held = sum(_yes(r["holds_all"]) for r in sel)
            wall = sum(_num(r["wall_s"]) for r in sel) / len(sel)
            out.append(f"| {ds} | {METHOD_NAMES[m]} | {len(sel)} | {100 * acc:.1f} | "
                       f"{100 * facc:.1f} | {held}/{len(sel)} | {wall:.0f} |")
    out.append("")
    return out


# ------------------------------------------------------------------------------- plots


def _pareto(points):
    """Non-dominated (cost low, accuracy high) points, sorted by cost."""
    front, best = [], -1.0
    for c, a in sorted(points):
        if a > best:
            front.append((c, a))
            best = a
    return front


def pareto_plots(rows, out_dir, prefix):
    """One PNG per data set: int8 accuracy vs measured flash, measured arena, est. latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == ds and r["status"] == "ok"]
        targets = list(dict.fromkeys(r["target"] for r in ds_rows))
        axes_spec = [("flash", "flash (measured len(.tflite), kB)", None, 1e-3),
                     ("arena", "RAM (measured TFLite Micro arena, kB)", None, 1e-3)]
        axes_spec += [("latency_ms_est", f"latency on {t} (estimated, ms)", t, 1.0)
                      for t in targets]
        fig, axes = plt.subplots(1, len(axes_spec), figsize=(4.2 * len(axes_spec), 3.8))
        for ax, (key, label, target, scale) in zip(axes, axes_spec):
            for m in METHOD_NAMES:
                sel = [r for r in ds_rows if r["method"] == m
                       and (target is None or r["target"] == target)]
                pts = sorted({(_num(r[key]) * scale, _num(r["int8_acc"]) * 100) for r in sel})
                if not pts:
                    continue
                ax.scatter(*zip(*pts), c=COLORS[m], marker=MARKERS[m],
                           s=90 if m == "seed" else 36, label=METHOD_NAMES[m], alpha=0.85,
                           zorder=3)
                front = _pareto(pts)
                if m != "seed" and len(front) > 1:
                    ax.plot(*zip(*front), c=COLORS[m], lw=1, alpha=0.7, zorder=2)
            ax.set_xlabel(label)
            ax.set_ylabel("int8 accuracy in TFLite Micro (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="lower right")
        fig.suptitle(f"{ds}: accuracy vs cost (lines: Pareto fronts per method)")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{prefix}pareto_{ds}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
