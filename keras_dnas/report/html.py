"""kd.report.write_report(): a search as a self-contained HTML page (charts) plus JSON.

The page shows, before (the seed) and after (the frozen model): channels and
costs per layer, every budget against its limit, optionally the accuracy of the
float Keras model and of the full-int8 model on TensorFlow Lite Micro, the
search history logged by :class:`~keras_dnas.DNASCallback` and the freeze
certificate. Charts are PNGs drawn with matplotlib's Agg canvas (no global
backend change, no pyplot) and embedded as base64: the file has no external
assets and can be mailed or attached to a CI run. The same numbers go to a JSON
file next to it.
"""

import base64
import html
import io
import json
import math
import os
import pathlib

import numpy as np

import keras

from keras_dnas import targets as targets_lib
from keras_dnas._data import input_arrays, labelled_pair
from keras_dnas._flatbuffer import read_tflite
from keras_dnas.report.summary import summary as summary_fn
from keras_dnas.report.summary import target_of
from keras_dnas.search.objectives import Budget, budget_list
from keras_dnas.vocabulary import METRICS, Results

#: Per-layer cost columns of kd.summary shown before/after: (key, chart title).
COST_COLUMNS = (
    ("params", "Parameters"),
    ("macs", "MACs"),
    ("cycles", "Cycles (estimated)"),
    ("activation_bytes", "Activation bytes (int8)"),
)

_EXTRA = "report"
_DPI = 100
_REPRESENTATIVE_SAMPLES = 256
_SEED_COLOR = "#b8c2cc"
_FINAL_COLOR = "#1f6fb4"
_HOLDS_COLOR = "#2a9d4a"
_EXCEEDED_COLOR = "#d1382e"
_LIMIT_COLOR = "#222222"
_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "figure.facecolor": "white",
}


def write_report(path, *, seed, frozen, target=None, callback=None, budgets=None, data=None,
                 title=None):
    """Write an HTML report of a search (charts embedded) and its numbers as JSON.

    The HTML file is self-contained (PNG charts as base64 ``data:`` URIs, inline
    CSS, no scripts, no links to other files). It shows:

    - every budget as bars (seed value, final value) against its limit, with
      holds / exceeded;
    - with ``data=(x, y)``: accuracy before and after, of the float Keras
      model and of the full-int8 model run on the TensorFlow Lite Micro
      interpreter (``kd.export.to_tflite`` calibrated on the first 256
      samples of ``x``, then ``kd.export.measure``), plus the measured flash
      (``len(.tflite)``) and tensor arena. Conversion takes seconds per
      model, so this part is optional;
    - channels per layer before/after (chart and table) and the cost of each
      layer (params, MACs, estimated cycles, int8 activation bytes) before
      and after;
    - with ``callback``: every ``dnas/<metric>`` over the epochs, its budget as a
      horizontal line and the epochs where every budget held shaded, and the
      loss / accuracy curves (the training loss includes the DNAS penalty);
    - the freeze certificate (``frozen.dnas_certificate``): budgets certified
      on exact costs and the channels closed at freeze.

    The JSON file (``path`` with the suffix ``.json``) holds the same numbers:
    ``seed`` and ``frozen`` are the complete :func:`keras_dnas.summary` dicts,
    plus ``layers`` (before/after per layer), ``budgets``, ``accuracy``,
    ``history`` (``callback.history``, non-finite numbers as ``null``),
    ``certificate`` and ``figures``.

    Needs matplotlib (``pip install "keras_dnas[report]"``).

    Args:
        path: the HTML file to write (``.html`` or ``.htm``); missing parent
            directories are created.
        seed: the model before the search (as given to ``kd.prepare``).
        frozen: the model after it (from ``kd.freeze``).
        target: a :class:`~keras_dnas.targets.HardwareTarget` or a built-in
            name (``"stm32h743"``, ...). Default: the one ``frozen`` was
            certified on (as :func:`~keras_dnas.summary`).
        callback: the :class:`~keras_dnas.DNASCallback` used in ``fit``
            (optional): its history and budgets.
        budgets: ``{metric: limit}`` or a list of :class:`~keras_dnas.Budget`.
            Default: the callback's budgets, else the certificate's, else none.
        data: ``(x, y)`` to measure accuracy on (optional; a few hundred
            samples are plenty, TFLite Micro runs them one by one).
        title: page title (default: ``"<frozen name> on <target>"``).

    Returns:
        The report as a dict: exactly what the JSON file holds.

    Raises:
        ValueError: for a path that does not end in ``.html`` / ``.htm``, a
            model that is not a ``keras.Model``, an unknown target or budget
            metric, or ``data`` that is not an ``(x, y)`` pair.
        ImportError: if matplotlib is not installed (naming the extra).

    Example:

    >>> import os, tempfile, keras, keras_dnas as kd
    >>> x = keras.Input((16,))
    >>> seed = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(32, name="hidden")(x)))
    >>> search = kd.prepare(seed)
    >>> _ = search.get_layer("hidden").dnas_alpha.assign([1.0] * 12 + [0.0] * 20)
    >>> frozen = kd.freeze(search, target="stm32h743", budgets={"params": 300}, verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "report.html")
    >>> report = kd.report.write_report(path, seed=seed, frozen=frozen, target="stm32h743")
    >>> [(r["metric"], r["limit"], r["seed"], r["final"], r["holds"]) for r in report["budgets"]]
    [('params', 300, 676, 298, True)]

    (``freeze`` reopened two of the closed channels: 14 of 32 fit in 300 parameters.)
    >>> os.path.exists(path[:-len(".html")] + ".json")
    True
    """
    from keras_dnas import __version__

    html_path = _check_path(path)
    for name, model in (("seed", seed), ("frozen", frozen)):
        if not isinstance(model, keras.Model):
            raise ValueError(f"{name}= must be a keras.Model. Received: {name}={model!r}")
    target = targets_lib.get(target if target is not None else target_of(frozen))
    certificate = getattr(frozen, "dnas_certificate", None)
    budget_list = _resolve_budgets(budgets, callback, certificate)
    if data is not None:
        x, y = labelled_pair(data, several_outputs=len(frozen.outputs) > 1)
        # one array per model input (a list or a dict by input name, as fit takes them)
        data = (input_arrays(x, "data[0]", names=[t.name for t in frozen.inputs], dtype=None), y)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None. Received: title={title!r}")
    classes = _matplotlib()  # fail before the slow part

    s_seed = summary_fn(seed, target)
    s_frozen = summary_fn(frozen, target)
    accuracy = _measure_accuracy(seed, frozen, target, data) if data is not None else None
    layers = _layer_rows(s_seed, s_frozen)
    budget_rows = _budget_rows(budget_list, s_seed, s_frozen, certificate, accuracy)
    history = _clean(list(getattr(callback, "history", None) or [])) if callback else []
    report = {
        "format": "keras_dnas.report",
        "format_version": 1,
        "keras_dnas_version": __version__,
        "title": title or f"{frozen.name} on {target.name}",
        "target": {"name": target.name, "flash_bytes": int(target.flash_bytes),
                   "ram_bytes": int(target.ram_bytes)},
        "seed": Results(_clean(dict(s_seed))),
        "frozen": Results(_clean(dict(s_frozen))),
        "layers": layers,
        "budgets": budget_rows,
        "all_budgets_hold": all(r["holds"] for r in budget_rows) if budget_rows else None,
        "accuracy": accuracy,
        "history": history,
        "certificate": _clean(certificate) if certificate is not None else None,
    }
    warmup = getattr(callback, "warmup_epochs", 0)
    search_keys, train_groups = _search_keys(history), _training_groups(history)
    charts = [  # (id, title, whether it is drawn, drawing function and its arguments)
        ("budgets", "Budgets: seed and final value against each limit", budget_rows,
         _draw_budgets, budget_rows),
        ("accuracy", "Accuracy before and after (float Keras, int8 TFLite Micro)",
         accuracy is not None, _draw_accuracy, accuracy),
        ("channels", "Output channels per layer", True, _draw_channels, layers),
        ("costs", "Cost per layer, before and after", True, _draw_costs, layers),
        ("search", "Search history: exact cost of the hard masks per epoch", search_keys,
         _draw_search, history, search_keys, budget_list, warmup),
        ("training", "Training curves", train_groups, _draw_training, history, train_groups,
         warmup),
    ]
    figures = [(fid, title, _render(classes, *draw)) for fid, title, shown, *draw in charts
               if shown]
    report["figures"] = [{"id": f, "title": t, "png_bytes": len(png)} for f, t, png in figures]
    report["json_file"] = html_path.with_suffix(".json").name

    html_path.parent.mkdir(parents=True, exist_ok=True)
    page = _render_html(report, {f: (t, png) for f, t, png in figures}, budget_list)
    html_path.write_text(page, encoding="utf-8")
    html_path.with_suffix(".json").write_text(
        json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    return report


# ---------------------------------------------------------------- arguments
def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file name ending in .html. Received: path={path!r}")
    p = pathlib.Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError("path must end in .html or .htm (the JSON is written next to it, "
                         f"with the suffix .json). Received: path={str(path)!r}")
    return p


def _resolve_budgets(budgets, callback, certificate):
    if budgets is None:
        if callback is not None and getattr(callback, "budgets", None):
            return list(callback.budgets)
        if certificate:
            return [Budget(r["metric"], r["limit"]) for r in certificate["budgets"]]
        return []
    if isinstance(budgets, dict):
        return budget_list(budgets)  # Budget() rejects an unknown metric
    if isinstance(budgets, (list, tuple)) and all(isinstance(b, Budget) for b in budgets):
        return list(budgets)
    raise ValueError("budgets must be a dict {metric: limit}, a list of kd.Budget or None. "
                     f"Received: budgets={budgets!r}")


def _matplotlib():
    """``(Figure, FigureCanvasAgg)`` or an ImportError naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "kd.report.write_report draws its charts with matplotlib, which is not installed. "
            f'Install it with: pip install "keras_dnas[{_EXTRA}]" (or pip install matplotlib).'
        ) from err
    return Figure, FigureCanvasAgg


# ------------------------------------------------------------------ numbers
def _clean(value):
    """JSON-safe copy: NumPy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _layer_rows(s_seed, s_frozen):
    """Before/after per layer, matched by name (and occurrence for shared layers)."""
    after, seen = {}, {}
    for r in s_frozen["layers"]:
        k = seen[r["name"]] = seen.get(r["name"], -1) + 1
        after[(r["name"], k)] = r
    rows, seen = [], {}
    for r in s_seed["layers"]:
        k = seen[r["name"]] = seen.get(r["name"], -1) + 1
        a = after.get((r["name"], k))
        row = {"name": r["name"], "op": r["op"], "role": r["role"],
               "channels_before": r["channels_kept"],
               "channels_after": None if a is None else a["channels_kept"]}
        for key, _ in COST_COLUMNS:
            row[f"{key}_before"] = r[key]
            row[f"{key}_after"] = None if a is None else a[key]
        rows.append(row)
    return rows


def _budget_rows(budgets, s_seed, s_frozen, certificate, accuracy):
    certified = {r["metric"]: r for r in (certificate or {}).get("budgets", [])}
    measured = {}
    if accuracy is not None:
        measured = {m: accuracy["frozen"][m] for m in ("flash_bytes", "ram_bytes")}
    rows = []
    for b in budgets:
        seed_value, final = s_seed[b.metric], s_frozen[b.metric]
        cert = certified.get(b.metric)
        rows.append({
            "metric": b.metric, "unit": METRICS[b.metric], "limit": b.limit,
            "seed": seed_value, "final": final,
            "seed_holds": b.holds(seed_value), "holds": b.holds(final),
            "final_percent_of_limit": 100.0 * final / b.limit,
            "certified": None if cert is None else _clean(cert["value"]),
            "measured": measured.get(b.metric),
        })
    return rows


def _measure_accuracy(seed, frozen, target, data):
    from keras_dnas import export

    arrays, y = data  # one array per input
    n = len(arrays[0])
    x = arrays[0] if len(arrays) == 1 else arrays
    out = {"num_samples": n, "representative_samples": min(n, _REPRESENTATIVE_SAMPLES)}
    representative = [a[:_REPRESENTATIVE_SAMPLES] for a in arrays]
    for key, model in (("seed", seed), ("frozen", frozen)):
        tflite = export.to_tflite(model, representative_data=representative[0]
                                  if len(arrays) == 1 else representative)
        m = export.measure(tflite, target=target, data=(x, y), keras_model=model)
        out["task"] = m["task"]
        names = read_tflite(tflite).output_names
        if len(names) > 1:  # measure scores the first output: say which
            out["scored_output"] = names[0]
        out[key] = Results(_clean({
            "float_accuracy": m["float_accuracy"], "int8_accuracy": m["accuracy"],
            "agreement": m["agreement"], "float_mse": m["float_mse"], "int8_mse": m["mse"],
            "flash_bytes": m["flash_bytes"], "ram_bytes": m["ram_bytes"],
        }))
    return out


def _search_keys(history):
    keys = []
    for entry in history:
        for k in entry:
            if k.startswith("dnas/") and k != "dnas/feasible" and k not in keys:
                keys.append(k)
    return keys


def _training_groups(history):
    """``{base name: [log keys]}``: loss first, then accuracy and other metrics (max 3)."""
    groups = {}
    for entry in history:
        for k in entry:
            if k.startswith("dnas/") or k in ("epoch", "learning_rate", "lr"):
                continue
            base = k[4:] if k.startswith("val_") else k
            groups.setdefault(base, [])
            if k not in groups[base]:
                groups[base].append(k)
    order = sorted(groups, key=lambda b: (b != "loss", "acc" not in b, b))
    return {b: sorted(groups[b], key=lambda k: k.startswith("val_")) for b in order[:3]}


def _fmt(value, unit=None):
    """Human number: thousands separators for big numbers, 4 significant digits else."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    v = float(value)
    if abs(v) >= 1000 or (v == int(v) and abs(v) >= 1):
        text = f"{v:,.0f}"
    elif v == 0:
        text = "0"
    else:
        text = f"{v:.4g}"
    if unit in ("ms", "uJ"):
        text = f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    if unit:
        text += f" {_unit_label(unit)}"
    return text


def _short(value):
    """Compact engineering notation: 22954 -> '23.0 k'."""
    v = float(value)
    for factor, prefix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{prefix}"
    return f"{v:.3g}"


def _change(before, after):
    if before in (None, 0) or after is None:
        return ""
    pct = 100.0 * (after - before) / before
    return f"{pct:+.0f} %" if abs(pct) >= 0.5 else "±0 %"


# ------------------------------------------------------------------- charts
def _render(classes, draw, *args):
    """PNG bytes of ``draw(fig, *args)`` on a private Agg canvas (no pyplot); ``draw`` sizes
    the figure."""
    import matplotlib

    figure_cls, canvas_cls = classes
    with matplotlib.rc_context(_RC):
        fig = figure_cls(dpi=_DPI, layout="constrained")
        canvas_cls(fig)
        draw(fig, *args)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _eng(axis):
    from matplotlib.ticker import EngFormatter

    axis.set_major_formatter(EngFormatter(sep="\u2009"))


def _unit_label(unit):
    return {"parameters": "params", "uJ": "µJ"}.get(unit, unit)


def _metric_label(metric):
    """The metric's name: its unit is in it (``flash_bytes``, ``latency_ms``) or it is one."""
    unit = _unit_label(METRICS.get(metric, ""))
    named = metric.rsplit("_", 1)[-1] in ("bytes", "ms", "cycles", "uj")
    return metric if named or not unit or unit.lower() in (metric, metric.rstrip("s")) else \
        f"{metric} ({unit})"


def _epoch_axis(ax, history, warmup):
    """Integer epochs on the x axis, the epochs where every budget held and the warm-up
    shaded; returns the epochs (1-based)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [int(e.get("epoch", i)) + 1 for i, e in enumerate(history)]
    for ep, entry in zip(epochs, history):
        if entry.get("dnas/feasible"):
            ax.axvspan(ep - 0.5, ep + 0.5, color=_HOLDS_COLOR, alpha=0.15, linewidth=0)
    if warmup:
        ax.axvspan(0.5, warmup + 0.5, color="#999999", alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    return epochs


def _draw_budgets(fig, rows):
    fig.set_size_inches(7.2, 0.5 + 1.05 * len(rows))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, rows):
        color = _HOLDS_COLOR if r["holds"] else _EXCEEDED_COLOR
        values = [r["seed"], r["final"]]
        ax.barh([1, 0], values, height=0.62, color=[_SEED_COLOR, color])
        ax.axvline(r["limit"], color=_LIMIT_COLOR, linestyle="--", linewidth=1.2)
        top = max(values + [r["limit"]]) * 1.3
        ax.set_xlim(0, top)
        ax.set_ylim(-0.55, 1.8)
        ax.set_yticks([1, 0], ["seed", "final"])
        ax.grid(axis="y", visible=False)
        for yy, v in zip([1, 0], values):
            # a label starting just short of the limit line would be crossed by it
            at = r["limit"] if 0 < r["limit"] - v < 0.32 * top else v
            ax.text(at + top * 0.01, yy, f"{_fmt(v, r['unit'])}  ({100 * v / r['limit']:.0f} % "
                    "of limit)", va="center", fontsize=8)
        ax.text(r["limit"], 1.8, f" limit {_fmt(r['limit'], r['unit'])}", fontsize=8,
                va="top", ha="left", color=_LIMIT_COLOR)
        status = "holds" if r["holds"] else "EXCEEDED"
        ax.set_title(f"{_metric_label(r['metric'])}: final {status}", loc="left", color=color)
        _eng(ax.xaxis)


def _draw_accuracy(fig, acc):
    from matplotlib.ticker import PercentFormatter

    fig.set_size_inches(5.2, 2.5)
    regression = acc.get("task") == "regression"
    keys = (("float_mse", "float (Keras)"), ("int8_mse", "int8 (TFLite Micro)")) if regression \
        else (("float_accuracy", "float (Keras)"), ("int8_accuracy", "int8 (TFLite Micro)"))
    ax = fig.subplots()
    width = 0.36
    for i, (model, color, label) in enumerate((("seed", _SEED_COLOR, "seed (before)"),
                                               ("frozen", _FINAL_COLOR, "frozen (after)"))):
        vals = [acc[model][k] for k, _ in keys]
        xs = [j + (i - 0.5) * width for j in range(len(keys))]
        bars = ax.bar(xs, [0 if v is None else v for v in vals], width * 0.95, color=color,
                      label=label)
        for b, v in zip(bars, vals):
            text = "–" if v is None else (f"{v:.3g}" if regression else f"{100 * v:.1f} %")
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), text, ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)), [name for _, name in keys])
    ax.grid(axis="x", visible=False)
    if regression:
        ax.set_ylabel("mean squared error")
    else:
        ax.set_ylim(0, 1.1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{acc['num_samples']:,} samples", loc="left", fontweight="normal")
    fig.legend(loc="outside upper right", ncols=2)


def _overlay_bars(ax, y, before, after):
    """Seed as a wide light bar, frozen as a narrow dark bar on top of it."""
    ax.barh(y, before, height=0.78, color=_SEED_COLOR, label="seed (before)")
    ax.barh(y, after, height=0.46, color=_FINAL_COLOR, label="frozen (after)")
    ax.set_ylim(-0.6, len(y) - 0.4)
    ax.grid(axis="y", visible=False)


def _draw_channels(fig, layers):
    rows = [r for r in layers if r["params_before"]] or _chart_layers(layers)
    fig.set_size_inches(7.2, 0.9 + 0.27 * len(rows))
    before = [r["channels_before"] for r in rows]
    after = [r["channels_after"] or 0 for r in rows]
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    _overlay_bars(ax, y, before, after)
    top = max(before + after + [1])
    for yy, b, a in zip(y, before, after):
        ax.text(max(a, b) + top * 0.01, yy, f"{a} / {b}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.set_xlabel("output channels (labels: kept / seed)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper right", ncols=2)


def _draw_costs(fig, layers):
    rows = _chart_layers(layers)
    fig.set_size_inches(7.6, 1.3 + 0.44 * len(rows))
    y = np.arange(len(rows))[::-1]
    axes = fig.subplots(2, 2, sharey=True).ravel()
    for ax, (key, label) in zip(axes, COST_COLUMNS):
        before = [r[f"{key}_before"] for r in rows]
        after = [r[f"{key}_after"] or 0 for r in rows]
        _overlay_bars(ax, y, before, after)
        ax.set_title(label, loc="left")
        ax.set_xlim(0, max(before + after + [1]) * 1.08)
        ax.set_yticks(y, [r["name"] for r in rows])
        _eng(ax.xaxis)
        how, agg = ("max", max) if key == "activation_bytes" else ("sum", sum)
        total_b, total_a = agg(before), agg(after)
        ax.set_xlabel(f"{how} {_short(total_b)} → {_short(total_a)} "
                      f"({_change(total_b, total_a)})", fontsize=8, color="#444444")
    for ax in axes[1::2]:
        ax.tick_params(labelleft=False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right", ncols=2)


def _draw_search(fig, history, keys, budgets, warmup):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig.set_size_inches(2.6 * ncols + 0.4, 0.55 + 2.0 * nrows)
    limits = {f"dnas/{b.metric}": b.limit for b in budgets}
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes, keys):
        metric = key[len("dnas/"):]
        epochs = _epoch_axis(ax, history, warmup)
        values = [e.get(key) for e in history]
        ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", color=_FINAL_COLOR,
                markersize=3.5, linewidth=1.5)
        known = [v for v in values if v is not None]
        if key in limits:
            ax.axhline(limits[key], color=_EXCEEDED_COLOR, linestyle="--", linewidth=1.2)
            known.append(limits[key])
        if known:
            lo, hi = min(known), max(known)
            pad = 0.1 * (hi - lo) if hi > lo else 0.1 * abs(hi) + 1e-9
            ax.set_ylim(min(0.0, lo) if lo - pad < 0 else lo - pad, hi + pad)
        ax.set_title(_metric_label(metric), loc="left")
        _eng(ax.yaxis)
    for i, ax in enumerate(axes[:len(keys)]):
        if i + ncols >= len(keys):  # nothing below it
            ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=_FINAL_COLOR, marker="o", markersize=3.5,
                      label="exact cost of the hard masks"),
               Line2D([], [], color=_EXCEEDED_COLOR, linestyle="--", label="budget"),
               Patch(color=_HOLDS_COLOR, alpha=0.3, label="every budget holds")]
    if warmup:
        handles.append(Patch(color="#999999", alpha=0.3, label="warm-up"))
    fig.legend(handles=handles, loc="outside upper left", ncols=len(handles))


def _draw_training(fig, history, groups, warmup):
    fig.set_size_inches(3.3 * len(groups) + 0.3, 2.4)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (base, keys) in zip(axes, groups.items()):
        epochs = _epoch_axis(ax, history, warmup)
        for key in keys:
            val = key.startswith("val_")
            ax.plot(epochs, [np.nan if e.get(key) is None else e[key] for e in history],
                    "s--" if val else "o-", markersize=3.5, linewidth=1.5,
                    color="#e07b1a" if val else _FINAL_COLOR,
                    label="validation" if val else "training")
        ax.set_title(base + (" (with DNAS penalty)" if base == "loss" else ""), loc="left")
        ax.set_xlabel("epoch")
        ax.legend()


def _chart_layers(layers):
    """Layers with weights or cycles (convolutions, dense, pooling, adds); all if none."""
    rows = [r for r in layers if r["params_before"] or r["macs_before"] or r["cycles_before"]]
    return rows or list(layers)


# --------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2329;
max-width:1000px;margin:24px auto;padding:0 16px;line-height:1.45;font-size:14px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;margin-top:34px;border-bottom:1px solid
#dde2e6;padding-bottom:4px}.sub{color:#5b6670;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #dde2e6;border-radius:8px;padding:8px 12px;min-width:120px}
.card .k{color:#5b6670;font-size:12px}.card .v{font-size:16px;font-weight:600}
.card .d{font-size:12px;color:#1f6fb4}
.ok{color:#2a9d4a;font-weight:600}.bad{color:#d1382e;font-weight:600}
.badge{display:inline-block;border-radius:12px;padding:2px 10px;color:#fff;font-weight:600}
.badge.ok{background:#2a9d4a;color:#fff}.badge.bad{background:#d1382e;color:#fff}
table{border-collapse:collapse;font-size:12.5px;margin:10px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eceff1;text-align:right;white-space:nowrap}
th{background:#f4f6f8;font-weight:600}td.l,th.l{text-align:left}
tr.changed td.after{font-weight:700;color:#1f6fb4}tr.total td{font-weight:700;
border-top:2px solid #c8d0d6}tr.minor td{color:#7a858f}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#5b6670;font-size:12.5px}code{background:#f4f6f8;padding:0 3px;border-radius:3px}
footer{margin-top:40px;color:#7a858f;font-size:12px}
"""


def _e(text):
    return html.escape(str(text), quote=True)


def _img(figures, fid):
    if fid not in figures:
        return ""
    title, png = figures[fid]
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(title)}" title="{_e(title)}" src="data:image/png;base64,{data}">'


def _table(head, rows, classes=None, left=1, col_classes=None):
    """An HTML table: the first ``left`` columns left-aligned, the rest right-aligned."""
    col_classes = col_classes or {}

    def cls(j):
        names = (["l"] if j < left else []) + ([col_classes[j]] if j in col_classes else [])
        return f' class="{" ".join(names)}"' if names else ""

    out = ["<table><thead><tr>"] + [f"<th{cls(j)}>{h}</th>" for j, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        row_cls = (classes or [""] * len(rows))[i]
        out.append((f'<tr class="{row_cls}">' if row_cls else "<tr>")
                   + "".join(f"<td{cls(j)}>{c}</td>" for j, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cards(report):
    s, f = report["seed"], report["frozen"]
    items = [("params", "params", None), ("MACs", "macs", None),
             ("latency (est.)", "latency_ms", "ms"), ("energy (est.)", "energy_uj", "uJ"),
             ("flash (est.)", "flash_bytes", "B"), ("RAM arena (est.)", "ram_bytes", "B")]
    out = ['<div class="cards">']
    for label, key, unit in items:
        if key not in s or key not in f:
            continue
        out.append(f'<div class="card"><div class="k">{_e(label)}</div><div class="v">'
                   f'{_e(_fmt(f[key], unit))}</div><div class="d">from {_e(_fmt(s[key], unit))} '
                   f'({_e(_change(s[key], f[key]))})</div></div>')
    acc = report["accuracy"]
    if acc is not None and acc.get("task") == "classification":
        a, b = acc["seed"]["int8_accuracy"], acc["frozen"]["int8_accuracy"]
        out.append(f'<div class="card"><div class="k">int8 accuracy (TFLM)</div>'
                   f'<div class="v">{100 * b:.1f} %</div><div class="d">from {100 * a:.1f} %'
                   f'</div></div>')
    out.append("</div>")
    return "".join(out)


def _render_html(report, figures, budgets):
    t = report["target"]
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(report['title'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(report['title'])}</h1>",
             f'<p class="sub">keras_dnas channel search: seed <code>{_e(report["seed"]["model"])}'
             f'</code> (before) and frozen <code>{_e(report["frozen"]["model"])}</code> (after) '
             f'on <b>{_e(t["name"])}</b> (flash {_fmt(t["flash_bytes"], "B")}, '
             f'RAM {_fmt(t["ram_bytes"], "B")}).</p>']
    hold = report["all_budgets_hold"]
    if hold is not None:
        n = len(report["budgets"])
        parts.append(f'<p><span class="badge {"ok" if hold else "bad"}">'
                     f'{"every budget holds" if hold else "a budget is EXCEEDED"}</span> '
                     f'({n} budget{"s" if n != 1 else ""})</p>')
    parts.append(_cards(report))
    parts.append('<p class="note">Estimated costs are keras_dnas cost models for the target '
                 "(<code>kd.summary</code>): latency and energy from its latency model, flash "
                 "from the int8 flatbuffer model, RAM as the TensorFlow Lite Micro arena "
                 "(planner replay plus persistent tail).</p>")

    # budgets
    parts.append("<h2>Budgets</h2>")
    if report["budgets"]:
        parts.append(_img(figures, "budgets"))
        has_cert = any(r["certified"] is not None for r in report["budgets"])
        has_meas = any(r["measured"] is not None for r in report["budgets"])
        head = ["metric", "limit", "seed", "final", "final / limit", "status"]
        head += ["certified at freeze"] if has_cert else []
        head += ["measured (TFLM)"] if has_meas else []
        rows = []
        for r in report["budgets"]:
            u = r["unit"]
            row = [_e(r["metric"]), _fmt(r["limit"], u), _fmt(r["seed"], u), _fmt(r["final"], u),
                   f'{r["final_percent_of_limit"]:.1f} %',
                   '<span class="ok">holds</span>' if r["holds"]
                   else '<span class="bad">EXCEEDED</span>']
            row += [_fmt(r["certified"], u)] if has_cert else []
            row += [_fmt(r["measured"], u) + (
                "" if r["measured"] is None else
                (' <span class="ok">✓</span>' if r["measured"] <= r["limit"]
                 else ' <span class="bad">✗</span>'))] if has_meas else []
            rows.append(row)
        parts.append(_table(head, rows))
        if has_meas:
            parts.append('<p class="note">Measured: flash is <code>len(.tflite)</code> of the '
                         "full-int8 model, RAM the tensor arena on the target "
                         "(<code>kd.export.measure</code>: the head TensorFlow Lite Micro "
                         "plans on this host plus the persistent tail for the target's "
                         "pointer size, the number <code>kd.summary</code> certifies).</p>")
    else:
        parts.append('<p class="note">No budgets: pass <code>budgets=</code>, a '
                     "<code>DNASCallback</code> or a frozen model with a certificate.</p>")

    # accuracy
    acc = report["accuracy"]
    parts.append("<h2>Accuracy</h2>")
    if acc is None:
        parts.append('<p class="note">Not measured: pass <code>data=(x, y)</code> to compare '
                     "the float Keras models and their full-int8 conversions on the "
                     "TensorFlow Lite Micro interpreter (takes a few seconds per model).</p>")
    else:
        parts.append(_img(figures, "accuracy"))
        reg = acc["task"] == "regression"
        head = ["model", "float MSE (Keras)" if reg else "float accuracy (Keras)",
                "int8 MSE (TFLM)" if reg else "int8 accuracy (TFLM)", "float/int8 agreement",
                ".tflite size", "TFLM arena"]
        rows = []
        for key, label in (("seed", "seed (before)"), ("frozen", "frozen (after)")):
            m = acc[key]
            if reg:
                vals = [_fmt(m["float_mse"]), _fmt(m["int8_mse"])]
            else:
                vals = [f'{100 * m["float_accuracy"]:.2f} %', f'{100 * m["int8_accuracy"]:.2f} %']
            agree = "–" if m["agreement"] is None else f'{100 * m["agreement"]:.1f} %'
            rows.append([label] + vals + [agree, _fmt(m["flash_bytes"], "B"),
                                          _fmt(m["ram_bytes"], "B")])
        parts.append(_table(head, rows))
        parts.append(f'<p class="note">{acc["num_samples"]:,} samples; int8 calibrated on the '
                     f'first {acc["representative_samples"]:,}. Float: the Keras model; int8: '
                     "<code>kd.export.to_tflite</code> run by <code>kd.export.measure</code> "
                     "on the TensorFlow Lite Micro interpreter."
                     + (f" Scored: the first output, {html.escape(acc['scored_output'])!r}."
                        if acc.get("scored_output") else "") + "</p>")

    # channels and per-layer costs
    parts.append("<h2>Channels per layer</h2>")
    parts.append(_img(figures, "channels"))
    parts.append("<h2>Cost per layer</h2>")
    parts.append(_img(figures, "costs"))
    parts.append('<p class="note">Charts show layers with weights or cycles; the table lists '
                 "every layer (normalisation, activation and reshape layers in grey). Cycles "
                 "are estimated by the target's latency model; activation bytes are the int8 "
                 "output tensor.</p>")
    parts.append(_layer_table(report))

    # history
    parts.append("<h2>Search history</h2>")
    if "search" in figures:
        parts.append(_img(figures, "search"))
        parts.append('<p class="note">Each point is the exact cost of the hard masks at the end '
                     "of an epoch (<code>dnas/&lt;metric&gt;</code> in the Keras logs); dashed: "
                     "budget; green: epochs where every budget held.</p>")
        parts.append(_img(figures, "training"))
    else:
        parts.append('<p class="note">No history: pass the <code>DNASCallback</code> used in '
                     "<code>fit</code> as <code>callback=</code>.</p>")

    # certificate
    parts.append("<h2>Freeze certificate</h2>")
    parts.append(_certificate_html(report["certificate"]))
    parts.append(f'<footer>Written by keras_dnas {_e(report["keras_dnas_version"])} '
                 f'(<code>kd.report.write_report</code>). Numbers: '
                 f'<code>{_e(report["json_file"])}</code>.</footer></body></html>')
    return "\n".join(p for p in parts if p)


def _layer_table(report):
    head = ["layer", "op", "channels<br>seed", "channels<br>final", "params<br>seed",
            "params<br>final", "MACs<br>seed", "MACs<br>final", "cycles<br>seed",
            "cycles<br>final", "act. bytes<br>seed", "act. bytes<br>final"]
    rows, classes = [], []
    for r in report["layers"]:
        row = [f"<code>{_e(r['name'])}</code>", _e(r["op"])]
        for key in ("channels", "params", "macs", "cycles", "activation_bytes"):
            row += [_fmt(r[f"{key}_before"]), _fmt(r[f"{key}_after"])]
        rows.append(row)
        minor = not (r["params_before"] or r["macs_before"] or r["cycles_before"])
        changed = r["channels_after"] != r["channels_before"]
        classes.append(" ".join(c for c, on in (("minor", minor), ("changed", changed)) if on))
    s, f = report["seed"], report["frozen"]
    rows.append(["total", "", "", "", _fmt(s["params"]), _fmt(f["params"]), _fmt(s["macs"]),
                 _fmt(f["macs"]), _fmt(s["latency_cycles"]), _fmt(f["latency_cycles"]),
                 "", ""])
    classes.append("total")
    return _table(head, rows, classes, left=2, col_classes={3: "after"})


def _certificate_html(cert):
    if cert is None:
        return ('<p class="note">No certificate: call <code>kd.freeze(search, target=..., '
                "budgets=...)</code> to certify every budget on exact costs.</p>")
    rows = [[_e(r["metric"]), _fmt(r["value"], r["unit"]), _fmt(r["limit"], r["unit"]),
             '<span class="ok">holds</span>' if r["holds"] else
             '<span class="bad">EXCEEDED</span>'] for r in cert["budgets"]]
    out = [f'<p>Certified on <b>{_e(cert["target"])}</b> with exact costs at freeze: '
           + ('<span class="ok">every budget holds</span>' if cert.get("all_hold")
              else '<span class="bad">a budget is exceeded</span>') + ".</p>",
           _table(["metric", "value", "limit", "status"], rows)]
    removed = cert.get("removed_channels") or []
    if not removed:
        out.append("<p>The search met every budget: freeze closed no further channel.</p>")
    else:
        by_layer = {}
        for r in removed:
            by_layer.setdefault(r["layer"], []).append(r["channel"])
        out.append(f"<p>Freeze closed <b>{len(removed)}</b> more channel"
                   f"{'s' if len(removed) != 1 else ''} (least important per unit of budget "
                   "saved) to make every budget hold:</p>")
        out.append(_table(["layer", "channels closed", "indices (in closing order)"],
                          [[f"<code>{_e(k)}</code>", len(v), _e(", ".join(map(str, v)))]
                           for k, v in by_layer.items()], left=1))
    return "".join(out)
