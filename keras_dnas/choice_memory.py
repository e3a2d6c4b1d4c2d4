"""Flash and arena of a model with choice blocks, as expectations over the alternatives.

A searchable model with ``kd.layers.Choice`` blocks (a "supernet") is converted once, as
:class:`~keras_dnas.memory.MemoryModel` converts any searchable model, except that each
Choice merge becomes an ``Add`` of its alternatives (every alternative's weights and
activations are in that file). Each tensor of the file is attributed to the alternative whose
layers its name scopes name (a tensor named by no alternative, or by several, belongs to none).
Counts are those of :class:`~keras_dnas.costs.model.CostModel`: one per group, then one
effective tap count per layer whose taps are searched (``kd.prepare(search=(..., "receptive_field"))``:
the supernet's file is converted at full taps and its tap dimensions follow them), then one weight
vector per choice block (probabilities during the search, one-hot for exact values).

- **exact** values (integer counts, one-hot weights): those of the chosen structure itself, the
  searchable model with only the chosen alternatives (:func:`keras_dnas.prepare.collapse`),
  through its own :class:`~keras_dnas.memory.MemoryModel` (one more conversion per
  distinct choice of alternatives, cached): exactly what ``kd.freeze`` certifies;
- **soft** values (the search's penalty): flash is the supernet's at the group counts minus
  ``(1 - weight)`` times the bytes of each alternative's constants (weights, biases,
  per-channel scales and zero points), plus ``weight`` times the alternative's *fixed* flash:
  what its operators, tensor tables, names and activation quantisation take whatever the
  width (a separable block's second operator: ~1.1 KB on MNIST ResNet-8, more than its
  weights at one channel; an identity saves an operator's). That fixed part is measured once
  per alternative at full width, as the exact value of the structure that swaps this one
  block minus the soft value without it, so the soft flash is exact for every structure one
  block away from the built one at full width and, the fixed part not depending on the width,
  within tens of bytes of it at any width (swaps in several blocks add up: ResNet-8 with 3-4
  swapped blocks is over-estimated by 144-192 B). RAM is the liveness bound of the supernet's buffers
  with every tensor of an alternative weighted by its probability, plus the tail. Both are
  shifted by a constant so that they equal the exact value at the alternatives chosen when the
  model is built and every channel open (the arena's per-operator tail is not modelled per
  alternative). Estimates, differentiable in the channel counts and the probabilities;
  ``kd.freeze`` certifies on the chosen model's own conversion.
"""

import numpy as np

from keras_dnas import memory as memory_lib
from keras_dnas.costs import arena
from keras_dnas.costs import model as cost_model

_CACHE_ATTR = "_dnas_choice_memory_cache"


def _convert_supernet(model, plan):
    import keras

    from keras_dnas.slicing import rebuild_with
    from keras_dnas.graph import walk
    from keras_dnas.layers.choice import is_choice

    keep_full = [np.ones(g.size, dtype=bool) for g in plan.groups]
    structure = rebuild_with(model, plan, keep_full, full_taps=True)
    summed, _ = walk.rebuild(structure, lambda op: keras.layers.Add(name=op.name)
                             if is_choice(op) else op)
    return memory_lib.MemoryModel.convert_structure(summed)


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
        self._tap_slots = {}  # choice of alternatives -> supernet slot of each searched tap
        self._offsets = {"flash": 0, "ram": 0}
        # fixed flash of each alternative against the built one, per block (see _calibrate)
        self._fixed_flash = [[0] * len(b["alternatives"]) for b in plan.choices]
        self.unattributed = base.unattributed
        names = plan.choice_of()
        self.owner = []  # (block, alternative) or None, per tensor of the supernet file
        for named in base.tensors_named(names):
            found = {names[n] for n in named}
            self.owner.append(found.pop() if len(found) == 1 else None)
        # (tensor index, owner), one per buffer
        self._constants = [(i, self.owner[i]) for i in base.constant_tensors()
                           if self.owner[i] is not None]

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
        """Offsets making the soft values exact at the current choice, every channel open;
        then each other alternative's fixed flash, from the structure that swaps it in (one
        conversion per alternative, cached for the exact values)."""
        from keras_dnas.choices import chosen

        picked = chosen(self.model)
        built = [picked[b["name"]] for b in self.plan.choices]

        def one_hot(config):
            return [cost_model.one_hot(k, len(b["alternatives"]))
                    for b, k in zip(self.plan.choices, config)]

        sizes = [g.size for g in self.plan.groups] + self.plan.full_taps()
        for metric in ("flash", "ram"):
            exact = self._exact_value(metric, sizes, one_hot(built))
            soft = getattr(self, f"_soft_{metric}")(sizes, one_hot(built))
            self._offsets[metric] = exact - soft
        for b, block in enumerate(self.plan.choices):
            for j in range(len(block["alternatives"])):
                if j == built[b]:
                    continue
                config = list(built)
                config[b] = j
                weights = one_hot(config)
                self._fixed_flash[b][j] = int(self._exact_value("flash", sizes, weights) - (
                    self._soft_flash(sizes, weights) + self._offsets["flash"]))

    def _split(self, counts):
        """``(group and tap counts, choice weights)``: the supernet's own memory model reads
        the first (its tap dimensions follow the plan's tap slots)."""
        at = self.plan.choice_slot(0)
        return list(counts[:at]), list(counts[at:])

    @staticmethod
    def _hard(sizes, weights):
        ints = (int, np.integer)
        return all(isinstance(c, ints) for c in sizes) and all(
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
            # searched taps: each layer of the structure reads its slot of the supernet's counts
            self._tap_slots[config] = [self.plan.tap_slot(n) for n in kplan.tap_layers()]
        return self._exact[config]

    def _exact_value(self, metric, sizes, weights):
        config = [int(np.argmax(w)) for w in weights]
        memory, mapping = self.exact_memory(config)
        counts = [g.size if old is None else int(sizes[old])
                  for g, old in zip(memory.plan.groups, mapping)]
        counts += [int(sizes[slot]) for slot in self._tap_slots[tuple(config)]]
        return getattr(memory, metric)(counts, exact=True)

    def flash(self, counts, exact=True):
        """Bytes of the int8 file: exact for a choice of alternatives (one-hot weights and
        integer counts), else the supernet's minus the expected bytes left out."""
        sizes, weights = self._split(counts)
        if self._hard(sizes, weights):
            return self._exact_value("flash", sizes, weights)
        return self._soft_flash(sizes, weights) + self._offsets["flash"]

    def _soft_flash(self, sizes, weights):
        total = self.base.flash(sizes)
        for index, (b, j) in self._constants:
            w = weights[b][j]
            if isinstance(w, (int, np.integer)) and w == 1:
                continue
            total = total - (1 - w) * self.base.constant_bytes(index, sizes)
        for b, fixed in enumerate(self._fixed_flash):
            for j, bytes_j in enumerate(fixed):
                if bytes_j:  # weights[b] may be a symbolic tensor: indexed, not iterated
                    total = total + weights[b][j] * bytes_j
        return total

    def fixed_flash(self):
        """Per block, per alternative: its fixed flash (bytes that do not follow the
        channels) minus the built alternative's, as the soft flash counts it."""
        return [list(f) for f in self._fixed_flash]

    def ram(self, counts, exact=True):
        """Arena bytes: the chosen structure's planner replay (one-hot weights, integer counts,
        ``exact``), else the liveness bound with each alternative's tensors weighted."""
        sizes, weights = self._split(counts)
        if exact and self._hard(sizes, weights):
            return self._exact_value("ram", sizes, weights)
        return self._soft_ram(sizes, weights) + self._offsets["ram"]

    def _soft_ram(self, sizes, weights):
        buffers = []
        # kernel scratch: small, left out of the soft bound
        for index, size, first, last in self.base.activation_buffers(sizes):
            owner = self.owner[index]
            if owner is not None:
                size = weights[owner[0]][owner[1]] * size
            buffers.append((size, first, last))
        return arena.liveness_bound(buffers) + self.base.tail(sizes)
