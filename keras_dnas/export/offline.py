"""Offline arena plans in `.tflite` files: TFLite Micro's `OfflineMemoryAllocation` metadata.

TFLite Micro (`micro_allocation_info.cc`, `GetOfflinePlannedOffsets`) reads the metadata
named `OfflineMemoryAllocation`: a buffer of little-endian int32 words
`[version, subgraph, n, offset of tensor 0, ..., offset of tensor n-1]`, where `n` must equal
the number of tensors of *all* subgraphs (it refuses the model otherwise) and -1 means "plan
this tensor online". Offsets of tensors that need no arena memory (constants, variables,
empty tensors) are ignored; we write -1 for them. Offsets are bytes from the start of the
arena head.

Kernel scratch buffers (requested in `Prepare`, e.g. by MEAN) are never in the file: TFLM's
greedy planner places them online, after and around the fixed tensors (first fit, largest
first). We plan tensors and scratch buffers together, write the tensor offsets, then replay
TFLM's placement of the scratch buffers around them (`keras_dnas.costs.arena.greedy_plan`
with offline offsets, checked against the interpreter by `tests/test_costs_memory.py`): that
replay is the predicted head. A plan is written only when the replayed head is smaller than
TFLM's own plan, and only after `check_offsets` has verified it (alignment, no overlap of
buffers live together); otherwise the file is returned unchanged.
"""

import dataclasses
import struct

import numpy as np

from keras_dnas.costs import arena
from keras_dnas.costs.offline_plan import (
    DEFAULT_MAX_NODES,
    best_operator_order,
    check_offsets,
    plan_offsets,
)
from keras_dnas import _flatbuffer, _ste

METADATA_NAME = "OfflineMemoryAllocation"
ARENA_PLANS = ("tflm", "offline")


def check_arena_plan(arena_plan):
    """Validates an `arena_plan=` argument (`"tflm"` or `"offline"`) and returns it."""
    if arena_plan not in ARENA_PLANS:
        raise ValueError(
            f"`arena_plan` must be one of {ARENA_PLANS}: 'tflm' leaves the arena layout to "
            "TFLite Micro's greedy planner, 'offline' writes a better layout into the file. "
            f"Received: arena_plan={arena_plan!r}"
        )
    return arena_plan


def plan_tflite(tflite, scratch=None, max_nodes=DEFAULT_MAX_NODES):
    """Plans the arena of a `.tflite` model better than TFLite Micro's greedy planner.

    Args:
        tflite: the model (bytes, path or a decoded `TFLiteModel`), without an offline plan.
        scratch: kernel scratch rules (default: TFLM's reference kernels, see
            `keras_dnas.costs.arena.REFERENCE_SCRATCH`).
        max_nodes: work limit of the planner's branch and bound (see `plan_offsets`).

    Returns:
        A dict: `tensor_offsets` (one per tensor of the subgraph, -1 where TFLM plans online),
        `head` (the head TFLM will report with these offsets), `greedy_head` (TFLM's own
        plan), `bound` (liveness lower bound), `optimal` (the planner proved its layout
        optimal) and `method`.
    """
    model = _flatbuffer.read_tflite(tflite)
    buffers = arena.tflite_buffers(model, scratch=scratch)
    if any(b["offline"] is not None for b in buffers):
        raise ValueError(
            "The model already carries an OfflineMemoryAllocation plan; plan the file "
            "without it (as `to_tflite(..., arena_plan='tflm')` writes it)."
        )
    spans = [(b["size"], b["first"], b["last"]) for b in buffers]
    plan = plan_offsets(spans, max_nodes=max_nodes)
    tensor_offsets = [-1] * len(model.tensors)
    for b, off in zip(buffers, plan["offsets"]):
        if b["kind"] == "tensor":
            tensor_offsets[b["tensor"]] = int(off)
    head = replay_head(model, tensor_offsets, scratch=scratch)
    return dict(tensor_offsets=tensor_offsets, head=head, greedy_head=plan["greedy_head"],
                bound=plan["bound"], optimal=plan["optimal"] and head == plan["head"],
                method=plan["method"])


def replay_head(tflite, tensor_offsets, scratch=None):
    """Verifies tensor offsets and returns the head TFLite Micro reaches with them.

    Scratch buffers are placed as TFLM places them (online, around the fixed tensors); the
    whole layout, scratch included, is checked with `check_offsets`.

    Raises:
        ValueError: if the offsets are malformed (count, alignment, overlap of live buffers).
    """
    model = _flatbuffer.read_tflite(tflite)
    if len(tensor_offsets) != len(model.tensors):
        raise ValueError(
            f"Invalid arena plan: {len(tensor_offsets)} offsets for a subgraph of "
            f"{len(model.tensors)} tensors."
        )
    buffers = arena.tflite_buffers(model, scratch=scratch)
    fixed = []
    for b in buffers:
        off = tensor_offsets[b["tensor"]] if b["kind"] == "tensor" else -1
        if b["kind"] == "tensor" and (not isinstance(off, (int, np.integer)) or off < 0):
            raise ValueError(
                f"Invalid arena plan: tensor {b['tensor']} needs arena memory but has offset "
                f"{off!r}; every planned tensor needs an offset (>= 0)."
            )
        fixed.append(int(off) if off >= 0 else None)
    spans = [(b["size"], b["first"], b["last"]) for b in buffers]
    offsets, head = arena.greedy_plan(spans, offline_offsets=fixed)
    check_offsets(spans, [int(o) for o in offsets])
    return head


def _aligned_buffer_class(sch):
    class AlignedBufferT(sch.BufferT):
        """A buffer whose data starts on a 16-byte boundary (as the TFLite converter writes)."""

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                raw = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            sch.BufferStart(builder)
            if data is not None:
                sch.BufferAddData(builder, data)
            sch.BufferAddOffset(builder, self.offset)
            sch.BufferAddSize(builder, self.size)
            return sch.BufferEnd(builder)

    return AlignedBufferT


def _unpack(data):
    sch = _flatbuffer.schema()
    model = sch.ModelT.InitFromObj(sch.Model.GetRootAs(data, 0))
    aligned = _aligned_buffer_class(sch)
    for b in model.buffers or []:
        b.__class__ = aligned
    return sch, model


def _pack(sch, model):
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write_offline_plan(tflite, tensor_offsets, scratch=None):
    """Returns the model with `tensor_offsets` as its `OfflineMemoryAllocation` metadata.

    The offsets are verified first (`replay_head`): a malformed plan raises `ValueError` and
    nothing is written. An existing plan is replaced. Single-subgraph models only.
    """
    data = _flatbuffer.as_model_bytes(tflite)
    model = _flatbuffer.read_tflite(data)
    if model.num_subgraphs != 1:
        raise ValueError(
            "Offline arena plans are written for single-subgraph models only. Received: a "
            f"model with {model.num_subgraphs} subgraphs"
        )
    planned = [-1 if model.is_constant(t.index) or t.is_variable or t.nbytes == 0 else o
               for t, o in zip(model.tensors, tensor_offsets)]
    replay_head(model, planned, scratch=scratch)  # raises on a malformed plan
    sch, fb = _unpack(data)
    words = struct.pack(f"<{3 + len(planned)}i", 1, 0, len(planned), *planned)
    buf = _aligned_buffer_class(sch)()
    buf.data = np.frombuffer(words, dtype=np.uint8)
    metadata = [m for m in (fb.metadata or []) if m.name not in (METADATA_NAME,
                                                                  METADATA_NAME.encode())]
    fb.buffers.append(buf)
    meta = sch.MetadataT()
    meta.name = METADATA_NAME
    meta.buffer = len(fb.buffers) - 1
    fb.metadata = metadata + [meta]
    return _pack(sch, fb)


def _best_order(model, scratch=None):
    """The lower-peak operator order of a decoded model, or None when the current one is best."""
    if model.num_subgraphs != 1:
        return None
    scratch_rules = arena.REFERENCE_SCRATCH if scratch is None else scratch
    sizes = [0 if model.is_constant(t.index) or t.is_variable else t.nbytes
             for t in model.tensors]
    per_op = [sum(_ste.align_up(b, arena.ARENA_ALIGNMENT)
                  for b in (scratch_rules[op.name](model, op) if op.name in scratch_rules else []))
              for op in model.operators]
    order, peak, current = best_operator_order(
        len(model.tensors), [(op.inputs, op.outputs) for op in model.operators],
        model.inputs, model.outputs, sizes, scratch=per_op)
    return order if peak < current else None


def plan_model(model, scratch=None, max_nodes=DEFAULT_MAX_NODES, reorder=True):
    """The plan `with_offline_plan` makes, on a decoded model (no bytes written).

    Returns:
        `(plan, order)`: the dict described in `with_offline_plan` and the operator order
        (None: unchanged).
    """
    plan = plan_tflite(model, scratch=scratch, max_nodes=max_nodes)
    plan.update(reordered=False, written=plan["head"] < plan["greedy_head"])
    plan["head"] = min(plan["head"], plan["greedy_head"])
    order = _best_order(model, scratch=scratch) if reorder else None
    if order is not None:
        moved = dataclasses.replace(model, operators=[model.operators[i] for i in order])
        other = plan_tflite(moved, scratch=scratch, max_nodes=max_nodes)
        other.update(reordered=True, written=other["head"] < other["greedy_head"])
        other["head"] = min(other["head"], other["greedy_head"])
        if other["head"] < plan["head"]:
            other["greedy_head"] = plan["greedy_head"]
            return other, order
    return plan, None


def with_offline_plan(tflite, scratch=None, max_nodes=DEFAULT_MAX_NODES, reorder=True):
    """`(tflite bytes, plan)`: the model with an offline plan when it beats TFLM's own plan.

    With `reorder` the operators are also put in the order with the lowest peak of live
    buffers (`costs.offline_plan.best_operator_order`) when that gives a smaller head. When nothing beats
    TFLite Micro's greedy plan of the file as given, the bytes are returned unchanged (TFLM
    plans the arena itself, at the same head).

    Returns:
        The bytes and a dict: `head` (the arena head of the returned file on TFLM),
        `greedy_head` (TFLM's head for the file as given), `bound` (liveness bound of the
        returned file's order), `tensor_offsets`, `optimal`, `method`, `written` (an
        `OfflineMemoryAllocation` plan was written) and `reordered` (operators moved).
    """
    data = _flatbuffer.as_model_bytes(tflite)
    plan, order = plan_model(_flatbuffer.read_tflite(data), scratch=scratch,
                             max_nodes=max_nodes, reorder=reorder)
    if order is not None:
        sch, fb = _unpack(data)
        fb.subgraphs[0].operators = [fb.subgraphs[0].operators[i] for i in order]
        data = _pack(sch, fb)
    if not plan["written"]:
        return data, plan
    out = write_offline_plan(data, plan["tensor_offsets"], scratch=scratch)
    # The written file must replay to the predicted head (the reader decodes what we wrote).
    written = arena.tflite_arena(out, scratch=scratch)["head"]
    if written != plan["head"]:  # pragma: no cover - a bug in the writer
        raise RuntimeError(
            f"The offline plan written reads back as a head of {written} B, not {plan['head']} B."
        )
    return out, plan


def carried_plan(tflite):
    """`"offline"` when the file carries an `OfflineMemoryAllocation` plan, else `"tflm"`."""
    return "offline" if _flatbuffer.read_tflite(tflite).offline_offsets is not None else "tflm"


def greedy_head(tflite, scratch=None):
    """The head TFLite Micro's own greedy planner would need (offline plan ignored)."""
    buffers = arena.tflite_buffers(tflite, scratch=scratch)
    return arena.greedy_plan([(b["size"], b["first"], b["last"]) for b in buffers])[1]


class OfflineArenaMemory:
    """A flash / RAM model for files written with `arena_plan="offline"`.

    Wraps a `keras_dnas.memory.MemoryModel` (everything else is delegated to it):

    - `ram(counts)` / `ram_parts(counts)` (integer counts): the head of the offline plan that
      `to_tflite(..., arena_plan="offline")` would write for the model at these counts (the
      same planner, the same limits, scratch buffers placed as TFLM places them), or TFLM's
      own head when no plan beats it; the tail is unchanged.
    - `ram(counts, exact=False)`: the differentiable liveness bound of the head plus the tail
      (the base model's soft value): the bound the offline plan aims at, and reaches on the
      zoo models (`BENCHMARKS.md`).
    - `flash(counts)`: plus the bytes the plan adds to the file (metadata and re-serialised
      flatbuffer, measured once at full width) when a plan is written at these counts.

    Example:

    >>> import keras_dnas as kd
    >>> from keras_dnas.memory import MemoryModel
    >>> import keras
    >>> x = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    >>> h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    >>> search = kd.prepare(keras.Model(x, y))
    >>> mem = OfflineArenaMemory(MemoryModel.from_model(search, target="stm32h743"))
    >>> parts = mem.ram_parts([g.size for g in search.dnas_plan.groups])
    >>> sorted(parts)[:4], parts["head"] <= parts["greedy_head"]
    (['greedy_head', 'head', 'tail', 'total'], True)
    """

    arena_plan = "offline"

    def __init__(self, memory, max_nodes=DEFAULT_MAX_NODES):
        self.base = memory
        self.max_nodes = max_nodes
        self._cache = {}
        full = memory.full_bytes
        plan = plan_tflite(full, max_nodes=max_nodes)
        if plan["head"] < plan["greedy_head"]:
            self._flash_extra = len(write_offline_plan(full, plan["tensor_offsets"])) - len(full)
        else:  # no plan at full width: measure the cost of writing one anyway
            self._flash_extra = len(write_offline_plan(full, greedy_tensor_offsets(full))) \
                - len(full)

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def arena_plan_for(self, counts):
        """The `plan_tflite` dict of the model at integer `counts` (cached)."""
        key = tuple(int(c) for c in counts)
        if key not in self._cache:
            self._cache[key] = plan_model(self.base.scaled_model(list(key)),
                                          max_nodes=self.max_nodes)[0]
        return self._cache[key]

    def ram_parts(self, counts):
        parts = dict(self.base.ram_parts(counts))
        plan = self.arena_plan_for(counts)
        head = min(plan["head"], plan["greedy_head"])
        parts.update(head=head, total=head + parts["tail"], greedy_head=plan["greedy_head"])
        return parts

    def ram(self, counts, exact=True):
        if exact:
            return self.ram_parts(counts)["total"]
        return self.base.ram(counts, exact=False)

    def flash(self, counts, exact=True):
        flash = self.base.flash(counts, exact=exact)
        if all(isinstance(c, (int, np.integer)) for c in counts):
            plan = self.arena_plan_for(counts)
            return flash + (self._flash_extra if plan["written"] else 0)
        return flash


def greedy_tensor_offsets(tflite, scratch=None):
    """Tensor offsets of TFLM's own greedy plan (-1 for tensors it does not plan)."""
    model = _flatbuffer.read_tflite(tflite)
    buffers = arena.tflite_buffers(model, scratch=scratch)
    offsets, _ = arena.greedy_plan([(b["size"], b["first"], b["last"]) for b in buffers])
    out = [-1] * len(model.tensors)
    for b, off in zip(buffers, offsets):
        if b["kind"] == "tensor":
            out[b["tensor"]] = int(off)
    return out


def memory_for(memory, arena_plan):
    """`memory` as is for `arena_plan="tflm"`, wrapped in `OfflineArenaMemory` for
    `"offline"` (None stays None)."""
    check_arena_plan(arena_plan)
    if memory is None or arena_plan == "tflm" or isinstance(memory, OfflineArenaMemory):
        return memory
    return OfflineArenaMemory(memory)
