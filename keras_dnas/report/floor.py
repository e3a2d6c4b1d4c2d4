"""Why a budget cannot hold: the layers that set a metric's floor.

With one channel left in every searchable group, what remains of a metric is set by the
layers whose channels cannot be searched (frozen groups: model inputs and outputs, excluded
layers, opaque ops...). `budget_floor` lists, per budget that fails at that floor, the layers
with the largest share of the metric, marking the frozen ones and why they are frozen, so an
"unreachable budget" error can say what to change.
"""

from keras_dnas.costs import compute, latency
from keras_dnas.costs.model import to_python
from keras_dnas.report.format import fmt_quantity
from keras_dnas.vocabulary import METRICS

# metric -> (per-layer quantity, its unit, what it stands for)
_LAYER_METRIC = {
    "flash_bytes": ("params", "parameters", "weights (about one flash byte per int8 parameter)"),
    "params": ("params", "parameters", "parameters"),
    "macs": ("macs", "MACs", "MACs"),
    "latency_ms": ("cycles", "cycles", "estimated cycles"),
    "latency_cycles": ("cycles", "cycles", "estimated cycles"),
    "energy_uj": ("cycles", "cycles", "estimated cycles"),
    "ram_bytes": ("activation_bytes", "bytes", "arena buffers (int8 activations)"),
}


def layer_rows(plan, counts, target):
    """Per-layer costs at ``counts``: the rows of `kd.summary` and of `budget_floor`.

    One dict per layer call of ``plan`` in execution order: ``name``, ``op``, ``role``,
    ``channels_kept``, ``channels_total``, ``params`` (a shared layer's counted at its first
    call), ``macs``, ``activation_bytes`` (int8 output) and ``cycles`` on ``target``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((8, 8, 3))
    >>> plan = kd.graph.analyze(keras.Model(x, keras.layers.Conv2D(4, 3, name="c")(x)))
    >>> row = layer_rows(plan, [3, 4], kd.targets.get("stm32h743"))[0]
    >>> row["name"], row["params"], row["macs"], row["activation_bytes"]
    ('c', 112, 3888, 144)
    """
    rows, seen = [], set()
    for info, (_, op, geo, cin, cout) in zip(plan.layers, compute.layer_records(plan, counts)):
        first = info.name not in seen
        seen.add(info.name)
        rows.append({
            "name": info.name, "op": op, "role": info.role,
            "channels_kept": int(cout), "channels_total": int(plan.view_size(info.output)),
            "params": int(compute.params(op, geo, cin, cout)) if first else 0,
            "macs": int(compute.macs(op, geo, cin, cout)),
            "activation_bytes": int(geo["out_positions"] * cout),
            "cycles": float(to_python(latency.layer_cycles(op, geo, cin, cout, target))),
        })
    return rows


def _frozen_reason(plan, info):
    groups = [plan.groups[g] for g in info.output.segments]
    frozen = [g for g in groups if g.frozen]
    if not frozen or len(frozen) < len(groups):
        return None
    return frozen[0].reason or "frozen"


def budget_floor(cost_model, budgets, counts=None, top=5):
    """The failing budgets at the floor and the layers that set it.

    Args:
        cost_model: a `keras_dnas.costs.model.CostModel` (with a memory model for flash / RAM).
        budgets: `Budget`s (objects with `metric`, `limit` and `holds(value)`).
        counts: per-group channel counts of the floor (default: one channel per searchable
            group, `cost_model.min_counts()`).
        top: how many layers to name per budget.

    Returns:
        A list, one dict per budget that does not hold at the floor: `metric`, `limit`,
        `floor` (the metric's value there), `unit`, `what` (the per-layer quantity), `fixed`
        (text on the part of a flash / RAM floor no layer's width changes, or `None`) and
        `layers`: the `top` layers with the largest per-layer quantity, each
        `{"name", "op", "value", "share", "frozen"}` (`frozen`: why its output channels
        cannot be searched, or `None`).

    Example:

    >>> import keras, keras_dnas as kd
    >>> from keras_dnas.costs.model import CostModel
    >>> from keras_dnas.search.objectives import Budget
    >>> x = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(8, 3, name="c1")(x)
    >>> y = keras.layers.Dense(100, name="head")(keras.layers.Flatten()(h))
    >>> cm = CostModel(kd.graph.analyze(keras.Model(x, y)), "stm32h743")
    >>> row = budget_floor(cm, [Budget("params", 500)])[0]
    >>> row["floor"], row["layers"][0]["name"], row["layers"][0]["frozen"] is not None
    (3728, 'head', True)
    """
    plan = cost_model.plan
    counts = cost_model.min_counts() if counts is None else list(counts)
    metrics = [b.metric for b in budgets]
    values = {m: to_python(v) for m, v in cost_model.evaluate(counts, metrics).items()}
    failing = [b for b in budgets if not b.holds(values[b.metric])]
    if not failing:
        return []
    rows = [dict(row, frozen=_frozen_reason(plan, info)) for info, row in
            zip(plan.layers, layer_rows(plan, counts, cost_model.target))]
    # Graph inputs are arena buffers too (frozen: the data's channels).
    for k, view in enumerate(plan.inputs):
        consumer = next((info for info in plan.layers
                         if info.inputs and info.inputs[0].segments == view.segments), None)
        if consumer is not None:
            channels = view.repeat * sum(counts[g] for g in view.segments)
            rows.append({"name": f"model input {k}", "op": "input", "frozen": "model input",
                         "params": 0, "macs": 0, "cycles": 0.0,
                         "activation_bytes": int(consumer.geometry.get("in_positions", 1) * channels)})
    out = []
    for b in failing:
        key, unit, what = _LAYER_METRIC.get(b.metric, ("params", "parameters", "parameters"))
        candidates = rows
        if b.metric == "ram_bytes":  # folded / fused into the previous operator: no buffer of their own
            candidates = [r for r in rows if r["op"] not in _FUSED_OPS]
        total = sum(r[key] for r in candidates) or 1
        ranked = sorted(candidates, key=lambda r: -r[key])[:top]
        out.append({
            "metric": b.metric, "limit": float(b.limit), "floor": values[b.metric],
            "unit": METRICS.get(b.metric, ""), "what": what, "fixed": _fixed_part(
                cost_model, b.metric, counts, values[b.metric], sum(r[key] for r in rows)),
            "layers": [{"name": r["name"], "op": r["op"], "value": r[key],
                        "share": r[key] / total, "frozen": r["frozen"], "unit": unit}
                       for r in ranked if r[key] > 0],
        })
    return out


_FUSED_OPS = ("batchnorm", "activation", "dropout")


def _fixed_part(cost_model, metric, counts, floor, layer_total):
    """Text for the part of the floor no layer's channels change, or None."""
    if metric == "flash_bytes":
        fixed = floor - layer_total
        if fixed > 0:
            return (f"{fmt_quantity(fixed, 'bytes')} of it is the flatbuffer's fixed part "
                    "(operators, tensors, quantisation parameters, biases' int32 width)")
    if metric == "ram_bytes" and getattr(cost_model, "memory", None) is not None:
        parts = cost_model.memory.ram_parts(counts)
        return (f"head (activations) {fmt_quantity(parts['head'], 'bytes')} + persistent tail "
                f"{fmt_quantity(parts['tail'], 'bytes')} (TFLite Micro structs per tensor and "
                "operator)")
    return None


def describe_floor(cost_model, budgets, counts=None, top=5):
    """`budget_floor` as text for an error message (empty when every budget holds).

    Example:

    >>> import keras, keras_dnas as kd
    >>> from keras_dnas.costs.model import CostModel
    >>> from keras_dnas.search.objectives import Budget
    >>> x = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(8, 3, name="c1")(x)
    >>> y = keras.layers.Dense(100, name="head")(keras.layers.Flatten()(h))
    >>> cm = CostModel(kd.graph.analyze(keras.Model(x, y)), "stm32h743")
    >>> print(describe_floor(cm, [Budget("params", 500)], top=1))  # doctest: +ELLIPSIS
    params: limit 500 parameters, 3,728 parameters with one channel per searchable group; largest parameters there: head (dense, frozen: ...) 3,700 parameters (99 %)
    """
    parts = []
    for row in budget_floor(cost_model, budgets, counts, top):
        layers = ", ".join(
            f"{r['name']} ({r['op']}, " + (f"frozen: {r['frozen']}" if r["frozen"] else
                                           "searchable, at one channel")
            + f") {fmt_quantity(r['value'], r['unit'])} ({100 * r['share']:.0f} %)"
            for r in row["layers"])
        fixed = f" ({row['fixed']})" if row["fixed"] else ""
        parts.append(
            f"{row['metric']}: limit {fmt_quantity(row['limit'], row['unit'])}, "
            f"{fmt_quantity(row['floor'], row['unit'])} with one channel per searchable "
            f"group{fixed}; largest {row['what']} there: {layers}")
    return "\n".join(parts)


__all__ = ["budget_floor", "describe_floor", "layer_rows"]
