"""Flash and arena of a model with choice blocks, as expectations over the alternatives.

A searchable model with ``kd.layers.Choice`` blocks (a "supernet") is converted once, as
:class:`~keras_dnas.memory.MemoryModel` converts any searchable model, except that each
Choice merge becomes an ``Add`` of its alternatives (every alternative's weights and
activations are in that file). Each tensor of the file is attributed to the alternative whose
layers its name scopes name (a tensor named by no alternative, or by several, belongs to none).
Counts are those of :class:`~keras_dnas.costs.model.CostModel`: one per group, then one weight
vector per choice block (probabilities during the search, one-hot for exact values).

- **exact** values (integer counts, one-hot weights): those of the chosen structure itself, the
  searchable model with only the chosen alternatives (:func:`keras_dnas.prepare.collapse`),
  through its own :class:`~keras_dnas.memory.MemoryModel` (one more conversion per
  distinct choice of alternatives, cached): exactly what ``kd.freeze`` certifies;
- **soft** values (the search's penalty): flash is the supernet's at the group counts minus
  ``(1 - weight)`` times the bytes of each alternative's constants (weights, biases,
  per-channel scales and zero points); RAM is the liveness bound of the supernet's buffers with
  every tensor of an alternative weighted by its probability, plus the tail. Both are shifted
  by a constant so that they equal the exact value at the alternatives chosen when the model
  is built and every channel open (operator and tensor tables and the merges' additions are
  not modelled per alternative). Estimates, differentiable in the channel counts and the
  probabilities; ``kd.freeze`` certifies on the chosen model's own conversion.
"""

import numpy as np

from keras_dnas import memory as memory_lib
from keras_dnas.costs import arena

_CACHE_ATTR = "_dnas_choice_memory_cache"


def _convert_supernet(model, plan):
    import keras

    from keras_dnas.export.convert import to_tflite
    from keras_dnas.slicing import rebuild_with
    from keras_dnas.graph import walk
    from keras_dnas.layers.choice import is_choice

    keep_full = [np.ones(g.size, dtype=bool) for g in plan.groups]
    structure = rebuild_with(model, plan, keep_full)
    summed, _ = walk.rebuild(structure, lambda op: keras.layers.Add(name=op.name)
                             if is_choice(op) else op)
    memory_lib._generic_weights(summed)
    rng = np.random.default_rng(0)
    rep = [rng.normal(size=(8,) + tuple(x.shape[1:])).astype("float32") for x in model.inputs]
    return to_tflite(summed, representative_data=rep[0] if len(rep) == 1 else rep)


class ChoiceMemory:
    """Flash / RAM of a model with choice blocks (see the module docstring).

    Use :meth:`from_model`. Same interface as :class:`~keras_dnas.memory.MemoryModel`
    (``flash(counts, exact)``, ``ram(counts, exact)``); ``base`` is the supernet's model.
    ``ram_mass`` (used by ``kd.freeze``) is not provided: freeze certifies the chosen
    structure with its own memory model.
    """

    def __init__(self, plan, base, model=None):
        self.plan = plan
        self.base = base
        self.model = model
        self.pointer_bytes = base.pointer_bytes
        self._exact = {}  # choice of alternatives -> (MemoryModel of that structure, group map)
        self._offsets = {"flash": 0, "ram": 0}
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
            found = cls(plan, base, model)
            found._calibrate()
            cache[(key, pointer_bytes)] = found
        return cache[(key, pointer_bytes)]

    def _calibrate(self):
        """Offsets making the soft values exact at the current choice, every channel open."""
        from keras_dnas.choices import chosen

        picked = chosen(self.model)
        counts = [g.size for g in self.plan.groups] + self.plan.full_taps() + [
            [1 if j == picked[b["name"]] else 0 for j in range(len(b["alternatives"]))]
            for b in self.plan.choices]
        groups, weights = self._split(counts)
        for metric in ("flash", "ram"):
            exact = self._exact_value(metric, groups, weights)
            soft = getattr(self, f"_soft_{metric}")(groups, weights)
            self._offsets[metric] = exact - soft

    def _split(self, counts):
        n = len(self.plan.groups)
        return list(counts[:n]), list(counts[self.plan.choice_slot(0):])

    @staticmethod
    def _hard(groups, weights):
        ints = (int, np.integer)
        return all(isinstance(c, ints) for c in groups) and all(
            isinstance(w, (list, tuple)) and all(isinstance(v, ints) for v in w)
            and sum(w) == 1 for w in weights)

    def exact_memory(self, config):
        """``(MemoryModel, group map)`` of the structure keeping alternative ``config[b]`` of
        each block; the map gives, per group of that structure, the supernet group (or None)."""
        config = tuple(int(k) for k in config)
        if config not in self._exact:
            from keras_dnas.prepare import collapse

            if self.model is None:
                raise ValueError("ChoiceMemory needs the model (ChoiceMemory.from_model) for "
                                 "exact values.")
            kept = collapse(self.model, config)
            kplan = kept.dnas_plan
            mapping = []
            for g in kplan.groups:
                old = None
                if not g.frozen:
                    old = self.plan.layer(g.leader).output.segments[0]
                    old = None if self.plan.groups[old].frozen else old
                mapping.append(old)
            memory = memory_lib.MemoryModel.from_model(kept, kplan,
                                                       pointer_bytes=self.pointer_bytes)
            self._exact[config] = (memory, mapping)
        return self._exact[config]

    def _exact_value(self, metric, groups, weights):
        config = [int(np.argmax(w)) for w in weights]
        memory, mapping = self.exact_memory(config)
        counts = [g.size if old is None else int(groups[old])
                  for g, old in zip(memory.plan.groups, mapping)]
        return getattr(memory, metric)(counts, exact=True)

    def flash(self, counts, exact=True):
        """Bytes of the int8 file: exact for a choice of alternatives (one-hot weights and
        integer counts), else the supernet's minus the expected bytes left out."""
        groups, weights = self._split(counts)
        if self._hard(groups, weights):
            return self._exact_value("flash", groups, weights)
        return self._soft_flash(groups, weights) + self._offsets["flash"]

    def _soft_flash(self, groups, weights):
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
        """Arena bytes: the chosen structure's planner replay (one-hot weights, integer counts,
        ``exact``), else the liveness bound with each alternative's tensors weighted."""
        groups, weights = self._split(counts)
        if exact and self._hard(groups, weights):
            return self._exact_value("ram", groups, weights)
        return self._soft_ram(groups, weights) + self._offsets["ram"]

    def _soft_ram(self, groups, weights):
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
