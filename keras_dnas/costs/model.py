"""Whole-model costs from a ChannelPlan and per-group channel counts.

Counts are one entry per channel group: Keras tensors (straight-through soft
counts, differentiable) during the search, Python ints for certification. The
same functions serve both, so the hard value of a searchable model equals the
exact value of its frozen model.
"""

import numpy as np
from keras import ops

from keras_dnas import masks, targets
from keras_dnas.costs import compute, latency
from keras_dnas.graph import walk


def view_count(view, counts):
    """Effective channels of a tensor view: ``repeat * sum(counts of its groups)``."""
    total = 0
    for g in view.segments:
        total = total + counts[g]
    return total if view.repeat == 1 else total * view.repeat


def with_taps(plan, counts, taps=None):
    """``counts`` with the effective tap counts of the plan's searched layers appended.

    A counts list holds one entry per group, then one per layer whose taps are
    searched (:meth:`~keras_dnas.graph.ChannelPlan.tap_slot`). A list of group
    counts only is completed with ``taps`` (default: the full kernels).
    """
    missing = len(plan.groups) + len(plan.tap_layers()) - len(counts)
    if missing <= 0:
        return counts
    taps = plan.full_taps() if taps is None else list(taps)
    return list(counts) + taps[len(taps) - missing:]


def layer_records(plan, counts):
    """Per layer call: dict(name, op, geometry, cin, cout) with effective counts.

    A layer whose taps are searched gets ``geometry["taps"]`` = its effective
    tap count (so params, MACs, latency and energy follow it).
    """
    counts = with_taps(plan, counts)
    records = []
    for info in plan.layers:
        cin = view_count(info.inputs[0], counts) if info.inputs else 0
        cout = view_count(info.output, counts)
        if info.op == "depthwise":
            cin = cout
        geometry = info.geometry
        if info.taps:
            geometry = dict(geometry, taps=counts[plan.tap_slot(info.name)])
        records.append({"name": info.name, "op": info.op, "geometry": geometry,
                        "cin": cin, "cout": cout})
    return records


def group_owners(model, plan):
    """Layer holding each searchable group's mask (``None`` for frozen groups)."""
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    return [None if g.frozen else by_name[g.leader] for g in plan.groups]


def soft_counts(model, plan):
    """Differentiable channel counts (forward value = the hard count), then tap counts."""
    return [g.size if owner is None else ops.sum(masks.owner_gate(owner))
            for g, owner in zip(plan.groups, group_owners(model, plan))] + \
        [layer.dnas_tap_count() for layer in tap_owners(model, plan)]


def hard_counts(model, plan):
    """Integer channel counts of the current masks, then tap counts."""
    return [g.size if owner is None else int(masks.hard_gate(owner.dnas_alpha).sum())
            for g, owner in zip(plan.groups, group_owners(model, plan))] + \
        [layer.dnas_tap_count(exact=True) for layer in tap_owners(model, plan)]


def tap_owners(model, plan):
    """The layers of ``plan.tap_layers()`` (they hold ``dnas_beta`` / ``dnas_gamma``)."""
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    return [by_name[n] for n in plan.tap_layers()]


class CostModel:
    """All metrics of one model structure on one target.

    Args:
        plan: the model's ChannelPlan.
        target: a :class:`~keras_dnas.targets.HardwareTarget` or its name.
        memory: optional flash/RAM estimator with ``flash(counts, exact)`` and
            ``ram(counts, exact)`` (see :mod:`keras_dnas.costs.memory`); without
            it the ``flash`` and ``ram`` metrics are unavailable.

    Example:

    >>> import keras_dnas as kd
    >>> from keras_dnas.costs.model import CostModel
    >>> plan = kd.graph.analyze(kd.zoo.resnet8())
    >>> cm = CostModel(plan, "gap8")
    >>> cm.evaluate(cm.full_counts(), ["latency_cycles"])["latency_cycles"]
    766624
    """

    def __init__(self, plan, target, memory=None, taps=None):
        self.plan = plan
        # tap counts that complete a counts list of groups only (kd.freeze: the hard ones)
        self.taps = plan.full_taps() if taps is None else list(taps)
        self.target = targets.get(target)
        self.memory = memory
        self._seen = self._first_calls()

    def _first_calls(self):
        seen, first = set(), []
        for info in self.plan.layers:
            first.append(info.name not in seen)
            seen.add(info.name)
        return first

    def full_counts(self):
        return [g.size for g in self.plan.groups] + self.plan.full_taps()

    def min_counts(self):
        """Counts of the smallest reachable model: one channel per searchable group (and
        one tap per searched kernel)."""
        return [g.size if g.frozen else 1 for g in self.plan.groups] + \
            [1] * len(self.plan.tap_layers())

    def available(self):
        names = ["params", "macs", "latency_cycles", "latency_ms", "energy_uj"]
        return names + (["flash", "ram"] if self.memory is not None else [])

    def evaluate(self, counts, metrics=None, exact=True):
        """``{metric: value}`` for the given per-group counts.

        Args:
            counts: one count per group (ints, or tensors for a soft value).
            metrics: names (default: every available metric).
            exact: for ``ram``: the exact TFLite Micro planner replay (ints)
                rather than the differentiable liveness bound.
        """
        metrics = list(metrics or self.available())
        counts = with_taps(self.plan, counts, self.taps)
        records = layer_records(self.plan, counts)
        out = {}
        for m in metrics:
            if m == "params":
                out[m] = _sum(compute.params(r["op"], r["geometry"], r["cin"], r["cout"])
                              for r, first in zip(records, self._seen) if first)
            elif m == "macs":
                out[m] = _sum(compute.macs(r["op"], r["geometry"], r["cin"], r["cout"])
                              for r in records)
            elif m in ("latency_cycles", "latency_ms", "energy_uj"):
                if "_cycles" not in out:
                    out["_cycles"] = latency.model_cycles(records, self.target)
                cycles = out["_cycles"]
                out[m] = {"latency_cycles": cycles,
                          "latency_ms": latency.cycles_to_ms(cycles, self.target),
                          "energy_uj": latency.cycles_to_uj(cycles, self.target)}[m]
            elif m in ("flash", "ram"):
                if self.memory is None:
                    raise ValueError(
                        f"Metric '{m}' needs a memory model (CostModel(..., memory=...)); "
                        f"available here: {self.available()}"
                    )
                out[m] = getattr(self.memory, m)(counts, exact=exact)
            else:
                raise ValueError(f"Unknown metric '{m}'. Available: {self.available()}")
        out.pop("_cycles", None)
        return out


def _sum(values):
    total = 0
    for v in values:
        total = total + v
    return total


def to_python(value):
    """A cost value as a Python number (tensors are converted)."""
    if isinstance(value, (int, float)):
        return value
    arr = np.asarray(ops.convert_to_numpy(value))
    return arr.item()
