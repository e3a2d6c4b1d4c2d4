"""Flash and arena of a model with choice blocks, as expectations over the alternatives.

A searchable model with ``kd.layers.Choice`` blocks (a "supernet") is converted once, as
:class:`~keras_dnas.costs.memory.MemoryModel` converts any searchable model, except that each
Choice merge becomes an ``Add`` of its alternatives (every alternative's weights and
activations are in that file). Each tensor of the file is attributed to the alternative whose
layers its name scopes name (a tensor named by no alternative, or by several, belongs to none).
Counts are those of :class:`~keras_dnas.costs.model.CostModel`: one per group, then one weight
vector per choice block (probabilities during the search, one-hot for exact values).

- **flash**: the supernet's flash at the group counts, minus ``(1 - weight)`` times the bytes
  of each alternative's constants (weights, biases, per-channel scales and zero points). The
  operator and tensor tables of the alternatives left out (~100 B per operator) are not
  subtracted, so the one-hot value slightly over-estimates the chosen structure's flash;
- **RAM**: exact values replay TFLite Micro's planner on the supernet with the tensors of the
  alternatives not chosen removed; the soft value is the liveness bound with every tensor of an
  alternative weighted by its probability, plus the tail.

These are search-time estimates. ``kd.freeze`` first keeps only the argmax alternatives and then
certifies flash and RAM on that model's own conversion, like any searchable model.
"""

import dataclasses

import numpy as np

from keras_dnas.costs import arena
from keras_dnas.costs import memory as memory_lib

_CACHE_ATTR = "_dnas_choice_memory_cache"


def _convert_supernet(model, plan):
    import keras

    from keras_dnas import export
    from keras_dnas.freeze import rebuild_with
    from keras_dnas.graph import walk
    from keras_dnas.layers.choice import is_choice

    keep_full = [np.ones(g.size, dtype=bool) for g in plan.groups]
    structure = rebuild_with(model, plan, keep_full)
    summed, _ = walk.rebuild(structure, lambda op: keras.layers.Add(name=op.name)
                             if is_choice(op) else op)
    memory_lib._generic_weights(summed)
    rng = np.random.default_rng(0)
    rep = [rng.normal(size=(8,) + tuple(x.shape[1:])).astype("float32") for x in model.inputs]
    return export.to_tflite(summed, representative_data=rep[0] if len(rep) == 1 else rep)


class ChoiceMemory:
    """Flash / RAM of a model with choice blocks (see the module docstring).

    Use :meth:`from_model`. Same interface as :class:`~keras_dnas.costs.memory.MemoryModel`
    (``flash(counts, exact)``, ``ram(counts, exact)``); ``base`` is the supernet's model.
    """

    def __init__(self, plan, base):
        self.plan = plan
        self.base = base
        self.pointer_bytes = base.pointer_bytes
        self.unattributed = base.unattributed
        names = plan.choice_of()
        self.owner = []  # (block, alternative) or None, per tensor of the supernet file
        for t in base.full.tensors:
            parts = memory_lib._name_parts(t.name)
            found = {names[n] for n in names if memory_lib._name_score(parts, n) > 0}
            self.owner.append(found.pop() if len(found) == 1 else None)
        seen, self._constants = set(), []  # (tensor index, owner), one per buffer
        for t, owner in zip(base.full.tensors, self.owner):
            if owner is None or not base.full.is_constant(t.index) or t.buffer in seen:
                continue
            seen.add(t.buffer)
            self._constants.append((t.index, owner))

    @classmethod
    def from_model(cls, model, plan, target=None, pointer_bytes=None):
        from keras_dnas import targets as targets_lib

        if pointer_bytes is None:
            pointer_bytes = targets_lib.get(target).pointer_bytes if target is not None else 4
        cache = model.__dict__.setdefault(_CACHE_ATTR, {})
        key = plan.to_json()
        if key not in cache:
            cache[key] = _convert_supernet(model, plan)
        if (key, pointer_bytes) not in cache:
            base = memory_lib.MemoryModel(plan, cache[key], pointer_bytes=pointer_bytes)
            cache[(key, pointer_bytes)] = cls(plan, base)
        return cache[(key, pointer_bytes)]

    def _split(self, counts):
        n = len(self.plan.groups)
        return list(counts[:n]), list(counts[n:])

    def flash(self, counts, exact=True):
        """Bytes of the int8 file: the supernet's minus the expected bytes left out."""
        groups, weights = self._split(counts)
        total = self.base.flash(groups)
        for index, (b, j) in self._constants:
            w = weights[b][j]
            if isinstance(w, (int, np.integer)) and w == 1:
                continue
            t = self.base.full.tensors[index]
            size = memory_lib._aligned(self.base._tensor_bytes(index, groups),
                                       memory_lib.BUFFER_ALIGNMENT)
            if t.n_scales > 1:
                size = size + memory_lib.QUANT_BYTES_PER_CHANNEL * \
                    self.base._scales[index].count(groups)
            total = total - (1 - w) * size
        return total

    def ram(self, counts, exact=True):
        """Arena bytes: planner replay without the alternatives not chosen (one-hot weights),
        or the liveness bound with each alternative's tensors weighted (soft)."""
        groups, weights = self._split(counts)
        if exact:
            groups = [int(c) for c in groups]
            model = self.base.scaled_model(groups)
            tensors = [dataclasses.replace(t, shape=[0]) if owner is not None
                       and not weights[owner[0]][owner[1]] else t
                       for t, owner in zip(model.tensors, self.owner)]
            model = dataclasses.replace(model, tensors=tensors)
            return arena.tflite_arena(model, pointer_bytes=self.pointer_bytes)["total"]
        buffers = []
        for b in self.base._buffers:
            if b["kind"] != "tensor":
                continue  # kernel scratch: small, left out of the soft bound
            size = self.base._tensor_bytes(b["tensor"], groups)
            owner = self.owner[b["tensor"]]
            if owner is not None:
                size = weights[owner[0]][owner[1]] * size
            buffers.append((size, b["first"], b["last"]))
        return arena.liveness_bound(buffers) + self.base.tail(groups)
