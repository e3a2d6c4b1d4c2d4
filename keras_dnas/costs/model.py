"""Whole-model costs from a ChannelPlan and per-group channel counts.

Counts are one entry per channel group: Keras tensors (straight-through soft
counts, differentiable) during the search, Python ints for certification. The
same functions serve both, so the hard value of a searchable model equals the
exact value of its frozen model.

A plan with choice blocks (``plan.choices``) takes one more entry per block after
the groups and the tap counts (``ChannelPlan.choice_slot``): the weight of each alternative (its probability during the search, the
one-hot of the argmax for exact values; :mod:`keras_dnas.graph.counts` gives both).
Every layer inside an alternative counts with that weight, so params, MACs, latency
and energy are the probability-weighted sums over the alternatives, and exactly the
chosen alternative's at a one-hot.
"""

import numpy as np
from keras import ops

from keras_dnas import _recorded
from keras_dnas.costs import compute, latency
from keras_dnas.targets import registry
from keras_dnas.vocabulary import Results, canonical


class CostModel:
    """All metrics of one model structure on one target.

    Args:
        plan: the model's ChannelPlan.
        target: a :class:`~keras_dnas.targets.HardwareTarget` or its name.
        memory: optional flash/RAM estimator with ``flash(counts, exact)`` and
            ``ram(counts, exact)`` (see :mod:`keras_dnas.memory`); without
            it the ``flash_bytes`` and ``ram_bytes`` metrics are unavailable.

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
        self.target = registry.get(target)
        self.memory = memory
        self._seen = self._first_calls()
        self._views = compute.ViewCounts(plan)  # cin / cout of every layer at int counts
        self._fixed_geometry = not plan.tap_layers() and not plan.choices
        self._width = len(plan.groups) + len(plan.tap_layers())  # counts with their taps
        self._recordings = {}  # (counts layout, metrics) -> [(Recording or None, metrics)]
        #: metrics whose soft value :meth:`soft_evaluate` could not record (evaluated directly)
        self.unrecorded = []

    def _first_calls(self):
        seen, first = set(), []
        for info in self.plan.layers:
            first.append(info.name not in seen)
            seen.add(info.name)
        return first

    def full_counts(self):
        """Every channel open, every tap kept (and the first alternative of each choice block)."""
        return [g.size for g in self.plan.groups] + self.plan.full_taps() + [
            one_hot(0, len(block["alternatives"])) for block in self.plan.choices]

    def min_counts(self):
        """Counts of the smallest reachable model: one channel per searchable group, one tap
        per searched kernel (and, in each choice block, the alternative with the fewest MACs
        there, fewest params on ties)."""
        counts = [g.size if g.frozen else 1 for g in self.plan.groups] + \
            [1] * len(self.plan.tap_layers())
        if not self.plan.choices:
            return counts
        records = compute.layer_records(self.plan, counts)
        by_name = {}
        for r in records:
            by_name.setdefault(r[0], r)

        def cost(names):
            rs = [by_name[n] for n in names if n in by_name]
            return (sum(compute.macs(*r[1:]) for r in rs), sum(compute.params(*r[1:]) for r in rs))

        for block in self.plan.choices:
            costs = [cost(names) for names in block["alternatives"]]
            counts.append(one_hot(costs.index(min(costs)), len(costs)))
        return counts

    def _model_cycles(self, records):
        """The sum of ``latency.layer_cycles`` over ``records``, each layer's cycles kept for its
        counts: projection and fill evaluate thousands of trials that each change one group,
        so most layers keep their counts (EfficientNetB0: 239 layers a trial)."""
        # (layer index, cin, cout) -> (its geometry, cycles)
        memo = self.__dict__.setdefault("_cycles_memo", {})
        if len(memo) > 200_000:
            memo.clear()
        total = 0
        for i, (_, op, geometry, cin, cout) in enumerate(records):
            if type(cin) is not int or type(cout) is not int:  # soft counts: tensors
                total = total + latency.layer_cycles(op, geometry, cin, cout, self.target)
                continue
            hit = memo.get((i, cin, cout))
            if hit is None or hit[0] is not geometry:  # a searched layer's taps: a new dict
                hit = memo[(i, cin, cout)] = (geometry, latency.layer_cycles(
                    op, geometry, cin, cout, self.target))
            total = total + hit[1]
        return total

    def _int_cycles(self, counts):
        """:meth:`_model_cycles` at Python-int counts when every layer's geometry is fixed (no
        searched taps, no choice blocks): only the layers whose cin / cout differ from the last
        call's are looked up, and the cycles are summed in the same order (the same number)."""
        cin, cout = self._views.arrays(counts)
        layers = self.plan.layers
        last = self.__dict__.get("_last_cycles")
        if last is None:
            changed, cycles = range(len(layers)), [None] * len(layers)
        else:
            changed = np.flatnonzero((cin != last[0]) | (cout != last[1])).tolist()
            cycles = list(last[2])
        memo = self.__dict__.setdefault("_cycles_memo", {})
        if len(memo) > 200_000:
            memo.clear()
        for i in changed:
            info, ci, co = layers[i], int(cin[i]), int(cout[i])
            hit = memo.get((i, ci, co))
            if hit is None or hit[0] is not info.geometry:
                hit = memo[(i, ci, co)] = (info.geometry, latency.layer_cycles(
                    info.op, info.geometry, ci, co, self.target))
            cycles[i] = hit[1]
        self._last_cycles = (cin, cout, cycles)
        total = 0
        for value in cycles:
            total = total + value
        return total

    def _weights(self, counts):
        """Per plan layer call: 1, or its alternative's weight inside a choice block."""
        if not self.plan.choices:
            return [1] * len(self.plan.layers)
        inside = self.plan.choice_of()
        n = self.plan.choice_slot(0)
        out = []
        for info in self.plan.layers:
            b, j = inside.get(info.name, (None, None))
            out.append(1 if b is None else counts[n + b][j])
        return out

    def available(self):
        names = ["params", "macs", "latency_cycles", "latency_ms", "energy_uj"]
        return names + (["flash_bytes", "ram_bytes"] if self.memory is not None else [])

    def evaluate(self, counts, metrics=None, exact=True):
        """``{metric: value}`` for the given per-group counts.

        Args:
            counts: one count per group (ints, or tensors for a soft value).
            metrics: names (default: every available metric; old spellings such as
                ``"ram"`` warn, and their values come back under the name asked for).
            exact: for ``ram_bytes``: the exact TFLite Micro planner replay (ints)
                rather than the differentiable liveness bound.
        """
        metrics = list(metrics or self.available())
        names = [canonical(m) for m in metrics]
        if len(counts) < self._width:
            counts = compute.with_taps(self.plan, counts, self.taps)
        out = {}
        if self._fixed_geometry and any(m in _LATENCY for m in names) and \
                all(type(c) is int for c in counts):
            out["_cycles"] = self._int_cycles(counts)
        if all(m in ("flash_bytes", "ram_bytes") or (m in _LATENCY and "_cycles" in out)
               for m in names):
            records = weights = ()  # not read (RAM-only trials, latency at int counts)
        else:
            records = compute.layer_records(self.plan, counts, self._views)
            weights = self._weights(counts)
        asked = {}
        for m, name in zip(metrics, names):
            if name != m:
                asked[name] = m
            m = name
            if m == "params":
                out[m] = _sum(_weighted(w, compute.params(*r[1:]))
                              for r, w, first in zip(records, weights, self._seen) if first)
            elif m == "macs":
                out[m] = _sum(_weighted(w, compute.macs(*r[1:])) for r, w in zip(records, weights))
            elif m in _LATENCY:
                if "_cycles" not in out and not self.plan.choices:
                    out["_cycles"] = self._model_cycles(records)
                elif "_cycles" not in out:
                    out["_cycles"] = _sum(_weighted(w, latency.layer_cycles(*r[1:], self.target))
                                          for r, w in zip(records, weights))
                cycles = out["_cycles"]
                out[m] = {"latency_cycles": cycles,
                          "latency_ms": latency.cycles_to_ms(cycles, self.target),
                          "energy_uj": latency.cycles_to_uj(cycles, self.target)}[m]
            elif m in ("flash_bytes", "ram_bytes"):
                if self.memory is None:
                    raise ValueError(
                        f"Metric '{m}' needs a memory model (CostModel(..., memory=...)); "
                        f"available here: {self.available()}"
                    )
                out[m] = (self.memory.flash if m == "flash_bytes" else self.memory.ram)(
                    counts, exact=exact)
            else:
                raise ValueError(f"Unknown metric '{m}'. Available: {self.available()}")
        out.pop("_cycles", None)
        return Results({asked.get(k, k): v for k, v in out.items()})

    def soft_evaluate(self, counts, metrics):
        """``evaluate(counts, metrics, exact=False)`` for soft (tensor) counts, in a few
        vectorised ops.

        The first call with counts of a layout runs :meth:`evaluate` once on recorded values
        (:mod:`keras_dnas._recorded`): the same functions give the same values and
        straight-through gradients, as plain data that later calls (the search's train step)
        evaluate with a gather, a product and a segment sum per stage instead of thousands of
        scalar ops. A metric whose functions cannot be recorded is evaluated directly and
        listed in :attr:`unrecorded`.
        """
        metrics = list(metrics)
        key = (_recorded.layout_of(counts), tuple(metrics))
        if key not in self._recordings:
            self._recordings[key] = self._record(counts, metrics)
        out = {}
        for recording, names in self._recordings[key]:
            if recording is None:
                out.update(self.evaluate(counts, names, exact=False))
            else:
                out.update(recording(counts))
        return Results({m: out[m] for m in metrics})

    def _record(self, counts, metrics):
        """``[(Recording, metrics)]``, one for all metrics, else one per metric, with
        ``(None, [metric])`` for a metric that could not be recorded."""

        def soft(names):
            return lambda c: dict(self.evaluate(c, names, exact=False))

        try:
            return [(_recorded.record(soft(metrics), counts), metrics)]
        except Exception:  # noqa: BLE001 -- a cost we cannot record is evaluated directly
            pass
        parts = []
        for m in metrics:
            try:
                parts.append((_recorded.record(soft([m]), counts), [m]))
            except Exception:  # noqa: BLE001
                parts.append((None, [m]))
                self.unrecorded.append(m)
        return parts


_LATENCY = ("latency_cycles", "latency_ms", "energy_uj")


def one_hot(index, n):
    """``[0, ..., 1, ..., 0]``: the weights of choosing alternative ``index`` of ``n``."""
    return [1 if j == index else 0 for j in range(n)]


def _weighted(weight, value):
    return value if isinstance(weight, int) and weight == 1 else weight * value


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
