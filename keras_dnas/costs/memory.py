"""Flash and TFLite Micro arena of the frozen int8 model, as functions of channel counts.

The model is anchored on real conversions rather than on a formula: the
structure is converted to full-int8 TFLite twice, once at full width and once
as a *probe* in which every searchable group has a different, distinct channel
count. Comparing the two flatbuffers tells, for every tensor dimension (and
every per-channel quantisation array), which channel view of the ChannelPlan
it follows. For any other counts the tensors are rescaled and

- **RAM** (exact): TFLite Micro's greedy planner is replayed on the rescaled
  tensors (:func:`keras_dnas.costs.arena.tflite_arena`: head exact, tail
  modelled for the target's pointer size); the differentiable version is the
  liveness bound over the same buffers plus the per-channel tail;
- **flash**: ``len(full .tflite)`` plus the change of every constant buffer
  (4-byte aligned: the TF converter does not honour the schema's
  ``force_align: 16``) and of every per-channel quantisation array (float32
  scale + int64 zero point per channel).

The soft values (tensor counts) have the exact values (int counts) as their
forward value wherever the exact value is a closed formula: flash, the
per-channel tail and every buffer size (alignment is rounded with a
straight-through gradient). The soft RAM is therefore a lower bound of the
exact RAM: liveness bound <= planned head, and the same tail.

The conversions use a copy of the structure with random weights: sizes do not
depend on weight values, but the converter drops all-zero biases and shares
identical constants, which would make an untrained model's structure change
with the channel counts. A real model whose conversion does drop or share
constants is a little smaller than predicted (flash is then an upper bound).

Converting costs a few seconds per structure; the conversions are cached per
structure on the model object (for every pointer size), so a callback, a later
``freeze`` and ``kd.summary`` share them.
"""

import dataclasses

import numpy as np
from keras import ops

from keras_dnas.costs import arena
from keras_dnas.export import _flatbuffer

#: Flatbuffer bytes per output channel of a per-channel quantised tensor:
#: a float32 scale and an int64 zero point.
QUANT_BYTES_PER_CHANNEL = 4 + 8
#: Alignment of constant buffers in the flatbuffer the TF converter writes. The schema says
#: ``data:[ubyte] (force_align: 16)``, but the converter's exporter ignores it: buffer data
#: follows the 4-byte length prefix with only 4-byte padding (checked on TF 2.21 output).
BUFFER_ALIGNMENT = 4

_CACHE_ATTR = "_dnas_memory_cache"


def _view_key(view):
    return (view.repeat, tuple(sorted(view.segments)))


def _searchable_views(plan):
    """Keys of the channel views that contain a searchable group (the others never change)."""
    keys = {_view_key(v) for info in plan.layers for v in info.inputs + [info.output]}
    return sorted(k for k in keys if any(not plan.groups[g].frozen for g in k[1]))


def _probe_counts(plan, candidates, attempts=64):
    """Distinct channel counts per group such that no two channel views collide."""
    rng = np.random.default_rng(0)
    full = [g.size for g in plan.groups]
    for _ in range(attempts):
        probe = list(full)
        for g in plan.groups:
            if not g.frozen and g.size > 1:
                # At least 2 when possible: one channel may convert differently (per-tensor
                # instead of per-channel quantisation, broadcast constants).
                probe[g.id] = int(rng.integers(2 if g.size > 2 else 1, g.size))
        seen = {}
        ok = True
        for key in candidates:
            repeat, segs = key
            sig = (repeat * sum(full[s] for s in segs), repeat * sum(probe[s] for s in segs))
            if sig in seen and seen[sig] != key:
                ok = False
                break
            seen[sig] = key
        if ok:
            return probe
    raise RuntimeError("Could not find probe channel counts that tell every channel view apart.")


@dataclasses.dataclass
class _Dim:
    """A tensor dimension: fixed, or ``repeat * sum(counts[segments])``."""

    value: int
    segments: tuple = ()
    repeat: int = 1

    def count(self, counts):
        if not self.segments:
            return self.value
        total = 0
        for g in self.segments:
            total = total + counts[g]
        return total if self.repeat == 1 else total * self.repeat


class MemoryModel:
    """Flash bytes and arena bytes of a model structure for any channel counts.

    Use :meth:`from_model`; :class:`~keras_dnas.costs.model.CostModel` calls
    :meth:`flash` and :meth:`ram`.

    Args:
        plan: the ChannelPlan.
        full_bytes: int8 ``.tflite`` of the structure at full width.
        probe_bytes: int8 ``.tflite`` of the structure at ``probe_counts``.
        probe_counts: per-group counts of the probe.
        pointer_bytes: 4 for a 32-bit MCU, 8 for the host TFLite Micro interpreter.

    Example:

    >>> import keras_dnas as kd
    >>> from keras_dnas.costs.memory import MemoryModel
    >>> model = kd.zoo.ds_cnn()
    >>> mem = MemoryModel.from_model(model, pointer_bytes=8)
    >>> full = [g.size for g in mem.plan.groups]
    >>> mem.flash(full) == len(mem.full_bytes)
    True
    """

    def __init__(self, plan, full_bytes, probe_bytes, probe_counts, pointer_bytes=4):
        self.plan = plan
        self.full_bytes = full_bytes
        self.pointer_bytes = pointer_bytes
        self.full = _flatbuffer.read_tflite(full_bytes)
        probe = _flatbuffer.read_tflite(probe_bytes)
        full_counts = [g.size for g in plan.groups]
        if [op.name for op in self.full.operators] != [op.name for op in probe.operators] or \
                len(self.full.tensors) != len(probe.tensors):
            raise RuntimeError(
                "The converted graph changes with the channel counts; keras_dnas cannot "
                "model its memory. Operators at full width: "
                f"{[op.name for op in self.full.operators]}")
        table = {}
        for repeat, segments in _searchable_views(plan):
            counts = [repeat * sum(c[g] for g in segments) for c in (full_counts, probe_counts)]
            table.setdefault(tuple(counts), (repeat, segments))
        self._dims = []
        self._scales = []
        for tf, tp in zip(self.full.tensors, _align_tensors(self.full, probe)):
            if len(tf.shape) != len(tp.shape) or tf.type != tp.type:
                raise RuntimeError(
                    f"TFLite tensor '{tf.name}' changes rank or type with the channel counts "
                    f"({tf.shape} at full width, {tp.shape} in the probe); keras_dnas cannot "
                    "model its memory.")
            dims = [self._map(a, b, table, tf) for a, b in zip(tf.shape, tp.shape)]
            self._dims.append(dims)
            self._scales.append(self._map(tf.n_scales, tp.n_scales, table, tf)
                                if tf.n_scales > 1 else _Dim(tf.n_scales))
        self._full_arena = arena.tflite_arena(self.full, pointer_bytes=pointer_bytes)
        self._buffers = arena.tflite_buffers(self.full)
        request = {}  # position of each scratch buffer among its operator's requests
        for b in self._buffers:
            if b["kind"] == "scratch":
                b["request"] = request.get(b["op"], 0)
                request[b["op"]] = b["request"] + 1
        self._per_channel_ops = [
            i for i, op in enumerate(self.full.operators)
            if arena.TAIL_OPS.get(op.name, arena._UNKNOWN_OP)[4]
            and arena._per_channel_count(self.full, op) > 0
        ]

    @staticmethod
    def _map(full, probe, table, tensor):
        if full == probe:
            return _Dim(int(full))
        key = table.get((full, probe))
        if key is None:
            raise RuntimeError(
                f"TFLite tensor '{tensor.name}' has a dimension ({full} at full width, {probe} in "
                "the probe) that follows no channel group of the plan.")
        return _Dim(int(full), key[1], key[0])

    # ----------------------------------------------------------------- building
    @classmethod
    def from_model(cls, model, plan=None, target=None, pointer_bytes=None):
        """Convert ``model``'s structure (full width and a probe) and build the model.

        Args:
            model: an original, searchable or frozen Keras model (not modified).
            plan: its ChannelPlan (analysed if omitted).
            target: a HardwareTarget or name; gives ``pointer_bytes`` (default 4).
            pointer_bytes: overrides the target's pointer size (8 to compare with the
                ``tflite_micro`` host interpreter).
        """
        from keras_dnas import targets as targets_lib
        from keras_dnas.graph import analyze, walk
        from keras_dnas.layers.masked import is_masked

        if plan is None:
            searchable = any(is_masked(layer) for layer in walk.functional_of(model).layers)
            plan = analyze(model, masked_only=searchable)
        if pointer_bytes is None:
            pointer_bytes = targets_lib.get(target).pointer_bytes if target is not None else 4
        cache = model.__dict__.setdefault(_CACHE_ATTR, {})
        structure = plan.to_json()
        if (structure, pointer_bytes) not in cache:
            if structure not in cache:  # the conversions do not depend on the pointer size
                cache[structure] = cls._convert(model, plan)
            full_bytes, probe_bytes, probe_counts = cache[structure]
            cache[(structure, pointer_bytes)] = cls(
                plan, full_bytes, probe_bytes, probe_counts, pointer_bytes=pointer_bytes)
        return cache[(structure, pointer_bytes)]

    @staticmethod
    def _convert(model, plan):
        """``(full .tflite, probe .tflite, probe counts)`` of ``model``'s structure."""
        from keras_dnas import export
        from keras_dnas.freeze import rebuild_with

        probe_counts = _probe_counts(plan, _searchable_views(plan))
        keep_full = [np.ones(g.size, dtype=bool) for g in plan.groups]
        keep_probe = [np.arange(g.size) < n for g, n in zip(plan.groups, probe_counts)]
        rng = np.random.default_rng(0)
        rep = [rng.normal(size=(8,) + tuple(x.shape[1:])).astype("float32") for x in model.inputs]
        rep = rep[0] if len(rep) == 1 else rep
        blobs = []
        for keep in (keep_full, keep_probe):
            structure = rebuild_with(model, plan, keep)
            _generic_weights(structure)
            blobs.append(export.to_tflite(structure, representative_data=rep))
        return blobs[0], blobs[1], probe_counts

    # ----------------------------------------------------------------- exact
    def scaled_model(self, counts):
        """The decoded full-width model with every tensor rescaled to ``counts`` (ints)."""
        tensors = [
            dataclasses.replace(t, shape=[int(d.count(counts)) for d in dims],
                                n_scales=int(s.count(counts)),
                                n_zero_points=int(s.count(counts)) if t.n_zero_points > 1
                                else t.n_zero_points)
            for t, dims, s in zip(self.full.tensors, self._dims, self._scales)
        ]
        return dataclasses.replace(self.full, tensors=tensors)

    def ram_parts(self, counts):
        """``{"head", "tail", "total"}`` arena bytes (exact planner replay) for int counts."""
        counts = [int(c) for c in counts]
        report = arena.tflite_arena(self.scaled_model(counts), pointer_bytes=self.pointer_bytes)
        return {"head": report["head"], "tail": report["tail"], "total": report["total"]}

    def ram_mass(self, counts):
        """Total bytes of all planned buffers: shrinks with every channel removed, unlike
        the peak (used to break ties when closing channels for a RAM budget)."""
        model = self.scaled_model([int(c) for c in counts])
        return sum(b["size"] for b in arena.tflite_buffers(model))

    # ----------------------------------------------------------------- metrics
    def ram(self, counts, exact=True):
        """Arena bytes: exact replay (ints), or a differentiable lower bound of it.

        The soft value is the liveness bound of the head (every buffer, scratch included,
        sized from ``counts``) plus the tail, whose only channel-dependent part (the
        per-channel multipliers and shifts, ``2 x align16(4 x Cout)`` per conv-like
        operator) is exact at integer counts. So ``ram(c, exact=False) <= ram(c)``.
        """
        if exact:
            return self.ram_parts(counts)["total"]
        return self.head_bound(counts) + self.tail(counts)

    def head_bound(self, counts):
        """Liveness lower bound of the arena head (counts may be tensors)."""
        tensors = None
        buffers = []
        for b in self._buffers:
            if b["kind"] == "tensor":
                size = self._tensor_bytes(b["tensor"], counts)
            else:
                rule = arena.REFERENCE_SCRATCH[self.full.operators[b["op"]].name]
                if tensors is None:
                    tensors = self._symbolic_model(counts)
                size = rule(tensors, self.full.operators[b["op"]])[b["request"]]
            buffers.append((size, b["first"], b["last"]))
        return arena.liveness_bound(buffers)

    def tail(self, counts):
        """Persistent arena bytes for ``counts`` (ints or tensors; exact at integer counts)."""
        tail = self._full_arena["tail"]
        for i in self._per_channel_ops:
            op = self.full.operators[i]
            d = self._dims[op.outputs[0]][-1]
            if not d.segments:
                continue
            n = d.count(counts)
            per_channel = 2 * _aligned(4 * n, arena.ARENA_ALIGNMENT)
            if op.name == "FULLY_CONNECTED":
                # TFLM keeps per-channel arrays only for more than one weight scale.
                n_scales = self._scales[op.inputs[1]].count(counts)
                per_channel = per_channel * _step(n_scales, 1)
            tail = tail + per_channel - 2 * _aligned(4 * d.value, arena.ARENA_ALIGNMENT)
        return tail

    def _tensor_bytes(self, index, counts):
        size = self.full.tensors[index].itemsize
        for d in self._dims[index]:
            size = size * d.count(counts)
        return size

    def _symbolic_model(self, counts):
        """The decoded model with shapes from ``counts`` (entries may be tensors)."""
        tensors = [dataclasses.replace(t, shape=[d.count(counts) for d in dims])
                   for t, dims in zip(self.full.tensors, self._dims)]
        return dataclasses.replace(self.full, tensors=tensors)

    def flash(self, counts, exact=True):
        """Bytes of the int8 ``.tflite`` (``len``), for int or tensor counts.

        ``exact`` is accepted for symmetry with :meth:`ram`; the soft value (tensor counts)
        has the integer value as its forward value.
        """
        total = len(self.full_bytes)
        for t, dims, s in zip(self.full.tensors, self._dims, self._scales):
            if self.full.is_constant(t.index) and any(d.segments for d in dims):
                size = self._tensor_bytes(t.index, counts)
                total = total + _aligned(size, BUFFER_ALIGNMENT) \
                    - _aligned(t.nbytes, BUFFER_ALIGNMENT)
            if s.segments:
                total = total + QUANT_BYTES_PER_CHANNEL * (s.count(counts) - s.value)
        return total


def _align_tensors(full, probe):
    """Probe tensors in the order of ``full``'s: by name, then by position among equal names.

    The converter does not keep tensor order stable across channel counts.
    """
    by_name = {}
    for t in probe.tensors:
        by_name.setdefault(t.name, []).append(t)
    out = []
    for t in full.tensors:
        candidates = by_name.get(t.name)
        if not candidates:
            raise RuntimeError(f"TFLite tensor '{t.name}' has no counterpart in the probe model.")
        out.append(candidates.pop(0))
    return out


def _aligned(n, alignment):
    """``n`` rounded up to ``alignment``: an int for ints, else a tensor whose forward value is
    the rounded integer and whose gradient is 1 (straight-through)."""
    if isinstance(n, (int, np.integer)):
        return -(-int(n) // alignment) * alignment
    return arena._aligned(n, alignment)


def _step(n, above):
    """1 when ``n > above`` else 0 (ints), or its tensor with a zero gradient."""
    if isinstance(n, (int, np.integer)):
        return int(n > above)
    return ops.stop_gradient(ops.cast(ops.greater(n, above + 0.5), "float32"))


def _generic_weights(model, seed=0):
    """Give a throwaway copy random, distinct weights before converting it.

    Sizes do not depend on weight values, but the converter's *structure* does in degenerate
    cases: it drops all-zero biases, shares identical constant buffers and tensors (e.g. the
    folded biases of untrained BatchNorms, equal in every layer of the same width, but not at
    other widths) and folds splat constants. Random values give the generic structure at every
    channel count. BatchNorm variances and scales are kept positive.
    """
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "float" not in str(w.dtype):
            continue  # e.g. seed-generator states
        name = w.name.split("/")[-1]
        if name in ("gamma", "moving_variance", "variance"):
            value = rng.uniform(0.5, 1.5, tuple(w.shape))
        else:
            value = rng.normal(0.0, 0.3, tuple(w.shape))
        w.assign(value.astype(str(w.dtype)))


__all__ = ["MemoryModel", "QUANT_BYTES_PER_CHANNEL"]
