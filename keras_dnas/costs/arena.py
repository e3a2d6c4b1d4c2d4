"""TFLite Micro tensor arena: an exact replay of the greedy planner, a tail model, a liveness bound.

TFLite Micro (TFLM) splits its one tensor arena into

- a **head** (non-persistent): every activation buffer (graph inputs, intermediates, graph
  outputs) and every kernel scratch buffer, laid out by `GreedyMemoryPlanner`; its size is the
  plan's high-water mark;
- a **tail** (persistent): allocator objects, one `TfLiteEvalTensor` per tensor, one
  `NodeAndRegistration` per operator, each kernel's `OpData` and per-channel arrays, the builtin
  option structs, and `TfLiteTensor` structs for the graph inputs and outputs.

`greedy_plan` replays the planner on plain data, `tflite_arena` builds its input from a
`.tflite` file (and adds the tail model), and `liveness_bound` is the smooth lower bound the
search optimises (written with `keras.ops`, so it also takes tensors).

Planner rules (read in TFLM's `greedy_memory_planner.cc`, `micro_allocation_info.cc` and
`micro_allocator.cc`, and checked against the `tflite_micro` Python interpreter by
`tests/test_costs_memory.py`):

1. Planned buffers: every tensor without data in the flatbuffer that is not a variable and has a
   non-zero size (graph inputs, intermediates, graph outputs), in tensor order, then every scratch
   buffer a kernel requested in `Prepare`, in request (operator) order. Sizes are rounded up to
   16 bytes (`MicroArenaBufferAlignment`).
2. Lifetimes in "allocation scopes": operator `i` is scope `i + 1`. Graph inputs (and outputs)
   are created at scope 0. An operator's outputs are created at its scope (this overwrites the
   scope-0 mark of a graph output) and last used there; its inputs are last used there; a
   scratch buffer lives exactly its operator's scope; graph outputs live to the last scope.
   Lifetimes are closed intervals: two buffers overlap when neither ends before the other starts.
3. Order: offline-planned buffers first (in add order, unsorted), then the online buffers sorted
   by size, largest first, with a stable bubble sort over the list built in **reverse** add order,
   so equal sizes are placed in reverse tensor order.
4. The first buffer goes to offset 0. Each next buffer walks the already placed buffers whose
   lifetime overlaps its own, in offset order, and takes the first gap (from the end of the
   furthest-reaching buffer seen so far to the next overlapping buffer's start) that fits it;
   otherwise it goes after the last one. The head is max(offset + size).
5. No in-place operators and no aliasing: Add, Reshape, Squeeze etc. get their own buffers.

Scratch buffers are those of TFLM's *reference* kernels (`REFERENCE_SCRATCH`), i.e. of the
`tflite_micro` Python package. A Cortex-M build with CMSIS-NN kernels also requests scratch
buffers for convolutions, depthwise convolutions and fully connected layers (im2col / kernel
sums, sized by CMSIS-NN's `*_get_buffer_size` for the core): pass your own `scratch` rules, as
the default under-counts the head on such a build. Only the first subgraph is planned (models
with control flow are rejected).
"""

import operator

import keras

from keras_dnas import _flatbuffer, _recorded
from keras_dnas._ste import align_up, aligned

ARENA_ALIGNMENT = 16  # MicroArenaBufferAlignment() in TFLM.

# ----------------------------------------------------------------------------------------------
# Planner replay
# ----------------------------------------------------------------------------------------------


def greedy_plan(buffers, alignment=ARENA_ALIGNMENT, offline_offsets=None, overlaps=None,
                memo=None):
    """Replays TFLite Micro's `GreedyMemoryPlanner` on plain data.

    Args:
        buffers: sequence of `(size_bytes, first_use, last_use)` in the order TFLM adds them
            (tensor order, then scratch buffers). Lifetimes are closed intervals of allocation
            scopes (see the module docstring).
        alignment: each size is rounded up to this many bytes first (TFLM: 16). Use 1 to plan
            the sizes as given.
        offline_offsets: optional sequence, one entry per buffer: a fixed offset, or `None` /
            -1 for a buffer the planner places (TFLM's `OfflineMemoryAllocation` metadata).
        overlaps: optional, per buffer the indices of the other buffers whose lifetimes meet
            its own (computed when not given; a caller planning the same lifetimes many
            times passes them once computed, see `_overlapping`).
        memo: optional dict, kept by a caller that plans the same lifetimes (and offline
            offsets) again and again with other sizes: the last call's placement is kept in
            it, and the buffers placed before the first one whose size or place in the order
            changed keep their offsets (a buffer's offset depends only on the buffers placed
            before it), so only the rest are placed again.

    Returns:
        `(offsets, head)`: the offset of each buffer (same order as `buffers`) and the arena head
        size in bytes, max(offset + aligned size), 0 when there is no buffer.

    Example:

    >>> greedy_plan([(100, 0, 1), (100, 1, 2), (100, 2, 3)])
    ([0, 112, 0], 224)
    """
    sizes = [align_up(s, alignment) for s, _, _ in buffers]
    n = len(sizes)
    if n == 0:
        return [], 0
    fixed = [None] * n
    if offline_offsets is not None:
        if len(offline_offsets) != n:
            raise ValueError(
                "`offline_offsets` needs one entry per buffer. Received: "
                f"{len(offline_offsets)} offsets for {n} buffers"
            )
        fixed = fixed_offsets(offline_offsets)
    if overlaps is None:
        overlaps = _overlapping([int(f) for _, f, _ in buffers], [int(l) for _, _, l in buffers])
    return plan_aligned(sizes, fixed, overlaps, memo)


def fixed_offsets(offline_offsets):
    """The planner's view of offline offsets: an int where the buffer is placed offline,
    ``None`` where the planner places it (no entry, or a negative one)."""
    return [None if (o is None or o < 0) else int(o) for o in offline_offsets]


def plan_aligned(sizes, fixed, overlaps, memo=None):
    """`greedy_plan` on sizes already aligned, with the fixed offsets (`None`: the planner
    places the buffer) and the overlaps given (a caller replaying the same lifetimes)."""
    n = len(sizes)
    # Order: offline buffers first in add order; online buffers in reverse add order, then a
    # stable sort by size, descending (TFLM's ReverseSortInPlace only swaps on strictly smaller;
    # Python's sort is stable, also with reverse=True).
    head_ids = [i for i in range(n) if fixed[i] is not None]
    online = [i for i in reversed(range(n)) if fixed[i] is None]
    online.sort(key=sizes.__getitem__, reverse=True)
    order = head_ids + online

    offsets = _place(sizes, order, fixed, overlaps, memo)
    head = max(map(operator.add, offsets, sizes))
    return offsets, head


def _place(sizes, order, fixed, overlaps, memo=None):
    """The planner's placement loop. TFLM walks every placed buffer in offset order (ties:
    placement order) and skips those not simultaneously active; walking only the active ones,
    in the same order, places each buffer at the same offset and costs O(overlaps) instead of
    O(buffers) per buffer. With ``memo`` (see `greedy_plan`) the unchanged head of the order
    keeps the last call's offsets."""
    n = len(sizes)
    offsets = [None] * n
    rank = [0] * n
    start = 0
    if memo and len(memo["order"]) == n:
        last_order, last_sizes, last_offsets = memo["order"], memo["sizes"], memo["offsets"]
        while start < n and order[start] == last_order[start] and \
                sizes[order[start]] == last_sizes[order[start]]:
            b = order[start]
            offsets[b], rank[b] = last_offsets[b], start
            start += 1
    for k in range(start, n):
        b = order[k]
        rank[b] = k
        if fixed[b] is not None:
            off = fixed[b]
        else:
            off = 0
            size = sizes[b]
            # the placed buffers that overlap b, in (offset, rank) order: one int each (offset
            # * n + rank) sorts without a key function
            keys = [offsets[p] * n + rank[p] for p in overlaps[b] if offsets[p] is not None]
            keys.sort()
            for key in keys:
                at = key // n
                if at - off >= size:
                    break  # the gap before this buffer fits
                end = at + sizes[order[key - at * n]]
                if end > off:
                    off = end
        offsets[b] = off
    if memo is not None:
        memo.update(order=order, sizes=sizes, offsets=offsets)
    return offsets


def _overlapping(first, last):
    """For each buffer, the other buffers whose closed lifetime interval meets its own (a
    sweep over the start order: lifetimes are short, so each list is)."""
    found = [[] for _ in first]
    live = []
    for i in sorted(range(len(first)), key=first.__getitem__):
        start = first[i]
        live = [j for j in live if last[j] >= start]
        for j in live:
            found[i].append(j)
            found[j].append(i)
        live.append(i)
    return found


# ----------------------------------------------------------------------------------------------
# Buffer list of a .tflite model
# ----------------------------------------------------------------------------------------------


def _scratch_reduce_mean(model, op):
    # reduce_common.cc, PrepareMeanOrSumHelper: an int32 accumulator per output element (int8 /
    # int16 only), then an int per input dimension ("input_iter") and an int per axis entry.
    inp = model.tensors[op.inputs[0]]
    out = model.tensors[op.outputs[0]]
    axis = model.tensors[op.inputs[1]]
    sizes = [4 * out.num_elements] if out.dtype in ("INT8", "INT16") else []
    return sizes + [4 * len(inp.shape), 4 * axis.num_elements]


def _scratch_reduce_min_max(model, op):
    # reduce_common.cc, PrepareMinMaxHelper: an int per input dimension, an int per axis entry.
    inp = model.tensors[op.inputs[0]]
    axis = model.tensors[op.inputs[1]]
    return [4 * len(inp.shape), 4 * axis.num_elements]


def _scratch_transpose_conv(model, op):
    # transpose_conv.cc: an int32 (int64 for int16 activations) accumulator per output element.
    out = model.tensors[op.outputs[0]]
    if out.dtype == "INT8":
        return [4 * out.num_elements]
    if out.dtype == "INT16":
        return [8 * out.num_elements]
    return []


# Scratch buffers the reference kernels (the `tflite_micro` Python package: TFLM without optimised
# kernels) request in Prepare, in request order: operator name -> fn(model, op) -> [bytes, ...].
REFERENCE_SCRATCH = {
    "MEAN": _scratch_reduce_mean,
    "SUM": _scratch_reduce_mean,
    "REDUCE_MAX": _scratch_reduce_min_max,
    "REDUCE_MIN": _scratch_reduce_min_max,
    "TRANSPOSE_CONV": _scratch_transpose_conv,
}


def tflite_buffers(tflite, scratch=None):
    """Lists the buffers TFLite Micro plans for a model, in the order the planner receives them.

    Args:
        tflite: the `.tflite` model (bytes) or a model decoded by
            `keras_dnas._flatbuffer.read_tflite`.
        scratch: dict operator name -> `fn(model, op) -> [bytes, ...]` of kernel scratch
            requests; default `REFERENCE_SCRATCH` (TFLM reference kernels).

    Returns:
        A list of dicts with keys `size` (bytes, not yet aligned), `first`, `last` (allocation
        scopes), `offline` (fixed offset or None), `kind` (`"tensor"` or `"scratch"`), `tensor`
        (tensor index, or None) and `op` (operator index of a scratch buffer, or None).
    """
    model = _flatbuffer.read_tflite(tflite)
    if model.num_subgraphs != 1:
        raise ValueError(
            "Only single-subgraph models (no IF / WHILE / CALL_ONCE) are supported. Received: "
            f"a model with {model.num_subgraphs} subgraphs"
        )
    scratch = REFERENCE_SCRATCH if scratch is None else scratch
    spans = tensor_lifetimes(len(model.tensors), [(op.inputs, op.outputs) for op in model.operators],
                             model.inputs, model.outputs)
    scratch_bufs = []
    for i, op in enumerate(model.operators):
        rule = scratch.get(op.name)
        for nbytes in rule(model, op) if rule is not None else ():
            scratch_bufs.append(dict(size=int(nbytes), first=i + 1, last=i + 1, offline=None,
                                     kind="scratch", tensor=None, op=i))
    offline = model.offline_offsets
    out = []
    for t in model.tensors:
        if model.is_constant(t.index) or t.is_variable or t.nbytes == 0:
            continue
        fixed = None
        if offline is not None and offline[t.index] >= 0:
            fixed = offline[t.index]
        out.append(
            dict(size=t.nbytes, first=spans[t.index][0], last=spans[t.index][1], offline=fixed,
                 kind="tensor", tensor=t.index, op=None)
        )
    return out + scratch_bufs


# ----------------------------------------------------------------------------------------------
# Persistent tail
# ----------------------------------------------------------------------------------------------

# Runtime structs TFLM allocates in the tail, by pointer size (bytes). 64-bit values were
# measured with the `tflite_micro` Python interpreter (each category of its recording allocator);
# 32-bit values follow from the same struct layouts with 4-byte pointers and `size_t`.
#   eval_tensor    TfLiteEvalTensor {data*, dims*, type}                    one per tensor
#   node           NodeAndRegistration {TfLiteNode (6 pointers + int), registration*}
#   tflite_tensor  TfLiteTensor (TF_LITE_STATIC_MEMORY layout), one per graph input / output
#   quantization   TfLiteAffineQuantization {scale*, zero_point*, quantized_dimension}
#   fixed          allocator objects, memory planner, builtin-data allocator, subgraph table.
#                  64-bit: 488 B measured; it includes the *recording* allocator's bookkeeping
#                  (about 208 B), so it is the Python interpreter's figure. 32-bit: 136 B,
#                  estimated from the plain MicroAllocator / SingleArenaBufferAllocator /
#                  GreedyMemoryPlanner layouts (unverified on hardware).
TAIL_STRUCTS = {
    8: dict(eval_tensor=24, node=64, tflite_tensor=64, quantization=24, pointer=8, fixed=488),
    4: dict(eval_tensor=12, node=32, tflite_tensor=40, quantization=12, pointer=4, fixed=136),
}

# Per-operator persistent data: name -> (OpData bytes on 64-bit, OpData bytes on 32-bit,
# builtin-options struct bytes, its alignment, per-channel arrays). OpData is allocated from the
# tail with 16-byte alignment in Init, the builtin options struct when the flatbuffer is parsed,
# and the per-channel arrays (output multiplier and shift, 4 bytes x Cout each, 16-byte aligned)
# in Prepare. 64-bit numbers are measured (one single-op model per row); 32-bit numbers are the
# struct layouts without TFLM compression support (the Python package is built with it: +8 B for
# conv / depthwise / FC) and 4-byte pointers, not measured. An alignment given as a pair is
# (64-bit, 32-bit): the 64-bit FC options struct is 8-byte aligned (a Conv -> Dense(softmax) model
# whose options before it end 4 bytes off an 8-byte boundary measured 16 B more tail than a 4-byte
# alignment replays; NASNetMobile missed a certified RAM budget by that); on 32 bits it stays 4.
TAIL_OPS = {
    "CONV_2D": (80, 56, 28, 4, True),
    "DEPTHWISE_CONV_2D": (80, 56, 28, 4, True),
    "FULLY_CONNECTED": (72, 48, 32, (8, 4), True),
    "MAX_POOL_2D": (32, 32, 40, 4, False),
    "AVERAGE_POOL_2D": (32, 32, 40, 4, False),
    "MEAN": (44, 44, 1, 1, False),
    "SUM": (44, 44, 1, 1, False),
    "REDUCE_MAX": (44, 44, 1, 1, False),
    "REDUCE_MIN": (44, 44, 1, 1, False),
    "SOFTMAX": (80, 60, 4, 4, False),
    "PAD": (56, 56, 0, 1, False),
    "PADV2": (56, 56, 0, 1, False),
    "ADD": (60, 60, 8, 4, False),
    "SUB": (52, 52, 8, 4, False),
    "MUL": (36, 36, 4, 4, False),
    "CONCATENATION": (80, 44, 8, 4, False),
    "RELU": (28, 28, 0, 1, False),
    "RELU6": (8, 8, 0, 1, False),
    "LEAKY_RELU": (24, 24, 4, 4, False),
    "LOGISTIC": (16, 16, 0, 1, False),
    "TANH": (16, 16, 0, 1, False),
    "HARD_SWISH": (20, 20, 0, 1, False),
    "MAXIMUM": (0, 0, 0, 1, False),
    "MINIMUM": (0, 0, 0, 1, False),
    "TRANSPOSE": (0, 0, 0, 1, False),
    "RESHAPE": (0, 0, 36, 4, False),
    "SQUEEZE": (0, 0, 36, 4, False),
    "EXPAND_DIMS": (0, 0, 0, 1, False),
    "SHAPE": (0, 0, 4, 4, False),
    "STRIDED_SLICE": (84, 84, 24, 4, False),
    # an unrolled LSTM / GRU's gates (the export's split rewrite): no OpData, no options
    "SLICE": (0, 0, 0, 1, False),
    "PACK": (0, 0, 8, 4, False),
    # an unrolled RNN's time steps. No OpData; options {num, axis}
    "UNPACK": (0, 0, 8, 4, False),
    "SPACE_TO_BATCH_ND": (4, 4, 0, 1, False),
    "BATCH_TO_SPACE_ND": (0, 0, 0, 1, False),
    "QUANTIZE": (32, 28, 0, 1, False),
    "DEQUANTIZE": (16, 16, 0, 1, False),
    # OpData: three pointers and three flags; options: three bools (adj_x, adj_y, asymmetric)
    "BATCH_MATMUL": (32, 16, 3, 1, False),
    # OpDataAbsRsqrt: four int32, a bool, two enums; no options
    "ABS": (28, 28, 0, 1, False),
    "RSQRT": (28, 28, 0, 1, False),
    # OpData {bool; ArithmeticParams (int64 members: 8-byte aligned)}; no options
    "SQUARED_DIFFERENCE": (112, 112, 0, 1, False),
    # OpDataDiv: seven int32 (zero points, activation range, multiplier, shift); options:
    # the fused activation (the export's ELU / SELU / CELU rewrite has one DIV each)
    "DIV": (28, 28, 4, 4, False),
    # no OpData; options {axis, batch_dims}; Prepare copies the output dims (_gather_prepare)
    "GATHER": (0, 0, 8, 4, False),
    # a U-Net's up-sampling. OpData {ConvParams, buffer indices, the two per-channel pointers,
    # activation range}: 88 B, the recording allocator's requested persistent bytes (a tail total
    # cannot tell 88 from 96 behind a 16-byte alignment); options {padding, stride_w, stride_h,
    # activation, quantized_bias_type}; 32-bit the 64-bit OpData less two 4-byte pointers
    "TRANSPOSE_CONV": (88, 80, 20, 4, True),
    # no OpData; options {align_corners, half_pixel_centers}: two bools, 1-byte aligned. A
    # one-resize model cannot show them (the next 16-byte aligned OpData absorbs 2 B); two or
    # more resizes can push the tail across a 16-byte boundary (16 B of a U-Net's tail missed)
    "RESIZE_BILINEAR": (0, 0, 2, 1, False),
    "RESIZE_NEAREST_NEIGHBOR": (0, 0, 2, 1, False),
}
_UNKNOWN_OP = (64, 48, 16, 4, False)  # an unlisted operator: a rough guess

_BATCH_MATMUL_QUANTIZATION = 28  # int8 / int16: multiplier, shift, min, max, 3 zero points


def batch_matmul_copies(model, op):
    """The input tensors TFLite Micro's BATCH_MATMUL keeps a transposed copy of in the tail
    (Prepare): the LHS with ``adj_x``, the RHS without ``adj_y`` (its kernel multiplies a
    transposed RHS). Each copy is a `TfLiteEvalTensor`, its dims and all of its data."""
    if op.name != "BATCH_MATMUL":
        return []
    adj_x, adj_y = op.adjoint
    return ([op.inputs[0]] if adj_x else []) + ([op.inputs[1]] if not adj_y else [])


def _dims_bytes(tensor):
    """A TfLiteIntArray of the tensor's dims: its size, then one int32 per dimension."""
    return 4 + 4 * len(tensor.shape)


def _batch_matmul_prepare(model, op, eval_tensor_bytes):
    """Bytes BATCH_MATMUL's Prepare takes from the tail, one 16-byte aligned request each."""
    sizes = [_dims_bytes(model.tensors[op.outputs[0]])]  # the output's writable dims
    if model.tensors[op.inputs[0]].dtype in ("INT8", "INT16"):
        sizes.append(_BATCH_MATMUL_QUANTIZATION)
    for t in batch_matmul_copies(model, op):
        tensor = model.tensors[t]
        sizes += [eval_tensor_bytes, _dims_bytes(tensor), tensor.nbytes]
    return sizes


def _gather_prepare(model, op, eval_tensor_bytes):
    """GATHER's Prepare copies its output's dims to the tail (writable dims)."""
    return [_dims_bytes(model.tensors[op.outputs[0]])]


# Operators whose Prepare takes more from the tail: name -> sizes of its 16-byte aligned requests.
_PREPARE_ALLOCATIONS = {"BATCH_MATMUL": _batch_matmul_prepare, "GATHER": _gather_prepare}


class _Tail:
    """Replays TFLM's tail allocator: each request moves the tail down, aligned down."""

    def __init__(self, start):
        self.top = -int(start)

    def alloc(self, size, align):
        if size > 0:
            self.top = ((self.top - int(size)) // align) * align

    @property
    def used(self):
        return -self.top


def _per_channel_count(model, op):
    out = model.tensors[op.outputs[0]]
    if op.name == "FULLY_CONNECTED" and model.tensors[op.inputs[1]].n_scales <= 1:
        return 0  # per-tensor FC: no per-channel arrays
    return out.shape[-1] if out.shape else 1


def tflite_tail(tflite, pointer_bytes=8, scratch=None, tensor_count=None):
    """Predicts TFLite Micro's persistent (tail) arena bytes for a model.

    The allocation sequence of `MicroInterpreter::AllocateTensors` is replayed with its
    alignments: fixed objects, one `TfLiteEvalTensor` per tensor, one `NodeAndRegistration` per
    operator, each operator's builtin options, each operator's OpData (Init), the per-channel
    arrays (Prepare), the scratch-buffer handles, variable tensors, then a pointer array and a
    `TfLiteTensor` with its quantisation for every graph input and output. With
    `pointer_bytes=8` this equals what the `tflite_micro` Python interpreter reports on every
    model of the test suite; with 4 it is an estimate for a 32-bit MCU (struct layouts, not
    measured; optimised kernels such as CMSIS-NN keep somewhat larger OpData).

    Args:
        tflite: the `.tflite` model (bytes) or a decoded model.
        pointer_bytes: 8 for the 64-bit Python interpreter (`tflite_micro`, exact on the test
            set), 4 for a 32-bit MCU such as Cortex-M (estimated, see `TAIL_OPS`).
        scratch: scratch request rules (default `REFERENCE_SCRATCH`); each request costs a handle.
        tensor_count: the number of tensors (one `TfLiteEvalTensor` each), when `tflite`'s
            tensor list is not the final one (default: its length).

    Returns:
        The tail size in bytes (int).
    """
    model = _flatbuffer.read_tflite(tflite)
    return TailReplay(model, pointer_bytes, scratch)(model, tensor_count)


class TailReplay:
    """`tflite_tail` of models that differ from ``model`` only in tensor shapes (the same
    operators, the same number of scratch requests per operator), replayed many times.

    Up to the operators' OpData the allocations depend only on the operators and the tensor
    count, so that part is replayed once per tensor count; each call replays the rest (the
    per-channel arrays and what follows) on the model it is given. A projection computes the
    tail of a rescaled model about 2,000 times (EfficientNetB0).
    """

    def __init__(self, model, pointer_bytes=8, scratch=None):
        if pointer_bytes not in TAIL_STRUCTS:
            raise ValueError(
                f"`pointer_bytes` must be 4 or 8. Received: pointer_bytes={pointer_bytes}")
        self.pointer_bytes = pointer_bytes
        st = self.structs = TAIL_STRUCTS[pointer_bytes]
        scratch = REFERENCE_SCRATCH if scratch is None else scratch
        rows = [TAIL_OPS.get(op.name, _UNKNOWN_OP) for op in model.operators]
        # after the tensors: nodes, builtin options (parsed from the flatbuffer), OpData (Init)
        self.fixed_allocs = [(st["node"] * len(model.operators), st["pointer"])]
        self.fixed_allocs += [(row[2], row[3] if isinstance(row[3], int)
                               else row[3][pointer_bytes == 4]) for row in rows]
        self.fixed_allocs += [(row[0] if pointer_bytes == 8 else row[1], ARENA_ALIGNMENT)
                              for row in rows]
        self.per_channel_ops = [i for i, row in enumerate(rows) if row[4]]
        self.prepare_ops = [i for i, op in enumerate(model.operators)
                            if op.name in _PREPARE_ALLOCATIONS]
        self.n_scratch = sum(len(scratch[op.name](model, op)) for op in model.operators
                             if op.name in scratch)
        self.variables = [t.index for t in model.tensors if t.is_variable]
        self.tops = {}  # tensor count -> the tail's top after the OpData

    def __call__(self, model, tensor_count=None):
        """The tail bytes of ``model`` (one like the model given at construction)."""
        st, ptr = self.structs, self.structs["pointer"]
        n_tensors = len(model.tensors) if tensor_count is None else tensor_count
        tail = _Tail(st["fixed"])
        top = self.tops.get(n_tensors)
        if top is None:
            tail.alloc(st["eval_tensor"] * n_tensors, ptr)
            for size, align in self.fixed_allocs:
                tail.alloc(size, align)
            top = self.tops[n_tensors] = tail.top
        operators = model.operators
        for i in self.per_channel_ops:  # Prepare: two arrays of n int32 (_Tail.alloc, inlined)
            size = 4 * _per_channel_count(model, operators[i])
            if size > 0:
                top = ((top - size) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
                top = ((top - size) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
        for i in self.prepare_ops:  # Prepare: writable dims, quantisation data, copies
            op = operators[i]
            for size in _PREPARE_ALLOCATIONS[op.name](model, op, st["eval_tensor"]):
                top = ((top - size) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
        tail.top = top
        tail.alloc(ptr * self.n_scratch, ptr)  # ScratchBufferHandle {void* data}
        for i in self.variables:  # variable tensors (state) live in the tail, 16-byte aligned
            tail.alloc(model.tensors[i].nbytes, ARENA_ALIGNMENT)
        for io in (model.inputs, model.outputs):
            tail.alloc(ptr * len(io), ARENA_ALIGNMENT)
            for t in io:
                tail.alloc(st["tflite_tensor"], ptr)
                tensor = model.tensors[t]
                if tensor.n_scales and tensor.n_zero_points:  # quantised: params + zero points
                    tail.alloc(st["quantization"], ptr)
                    tail.alloc(4 + 4 * tensor.n_scales, 4)  # TfLiteIntArray of zero points
        return tail.used


def tflite_arena(tflite, pointer_bytes=8, scratch=None):
    """Predicts the TFLite Micro tensor arena of a model: exact head, modelled tail.

    Args:
        tflite: the `.tflite` model (bytes) or a decoded model.
        pointer_bytes: 8 for the 64-bit Python interpreter, 4 for a 32-bit MCU (tail only; the
            head does not depend on it).
        scratch: kernel scratch request rules (default `REFERENCE_SCRATCH`, the reference
            kernels of the `tflite_micro` package; optimised kernels such as CMSIS-NN request
            more scratch and are not modelled).

    Returns:
        A dict with `head` (non-persistent bytes, the planner's high-water mark), `tail`
        (persistent bytes), `total` (head + tail, the minimum arena size), `buffers` (from
        `tflite_buffers`) and `offsets` (the planned offset of each buffer).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> report = tflite_arena(to_tflite(model, np.random.rand(8, 16).astype("float32")), 4)
    >>> report["total"] == report["head"] + report["tail"], report["head"] > 0
    (True, True)
    """
    model = _flatbuffer.read_tflite(tflite)
    buffers = tflite_buffers(model, scratch=scratch)
    offline = [b["offline"] for b in buffers]
    offsets, head = greedy_plan(
        [(b["size"], b["first"], b["last"]) for b in buffers],
        offline_offsets=offline if any(o is not None for o in offline) else None,
    )
    tail = tflite_tail(model, pointer_bytes=pointer_bytes, scratch=scratch)
    return dict(head=head, tail=tail, total=head + tail, buffers=buffers, offsets=offsets)


# ----------------------------------------------------------------------------------------------
# Differentiable lower bound
# ----------------------------------------------------------------------------------------------


def tensor_lifetimes(n_tensors, ops, inputs, outputs):
    """Allocation-scope lifetimes of tensors, with TFLite Micro's rules.

    Operator `i` (execution order) is scope `i + 1`; graph inputs live from scope 0; an
    operator's outputs are created at its scope; a tensor lives until its last consumer; graph
    outputs live until the last scope.

    Args:
        n_tensors: number of tensors (ids `0 .. n_tensors - 1`).
        ops: sequence of `(input_ids, output_ids)` in execution order.
        inputs: graph input tensor ids.
        outputs: graph output tensor ids.

    Returns:
        A list of `(first, last)` per tensor; `(-1, -1)` for a tensor no operator touches.

    Example:

    >>> tensor_lifetimes(3, [([0], [1]), ([1], [2])], inputs=[0], outputs=[2])
    [(0, 1), (1, 2), (2, 2)]
    """
    first = [-1] * n_tensors
    last = [-1] * n_tensors
    for t in list(inputs) + list(outputs):
        first[t] = last[t] = 0
    scope = 0
    for i, (ins, outs) in enumerate(ops):
        scope = i + 1
        for t in outs:
            if t >= 0:
                first[t] = last[t] = scope
        for t in ins:
            if t >= 0:
                last[t] = scope
    for t in outputs:
        last[t] = scope
    return list(zip(first, last))


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def liveness_bound(buffers, alignment=ARENA_ALIGNMENT):
    """A lower bound on the arena head: the largest sum of simultaneously live buffers.

    At every allocation scope `t` all buffers with `first <= t <= last` must coexist, so any
    placement (and TFLM's greedy one in particular) needs at least
    `max_t sum(aligned size of the buffers live at t)`. The bound is tight whenever the greedy
    planner finds a layout without holes at the peak scope (e.g. a plain chain of layers).

    Args:
        buffers: sequence of `(size_bytes, first, last)`. Sizes may be Python numbers or scalar
            keras tensors (e.g. `positions * channel_count` from soft channel counts); lifetimes
            are ints (see `tensor_lifetimes`).
        alignment: sizes are rounded up to this (16 in TFLM) with a straight-through gradient.

    Returns:
        A Python float when every size is a number, else a scalar keras tensor.

    Example:

    >>> liveness_bound([(100, 0, 1), (100, 1, 2), (100, 2, 3)])
    224.0
    """
    buffers = list(buffers)
    if not buffers:
        return 0.0
    sizes = [aligned(s, alignment) for s, _, _ in buffers]
    lo = min(int(f) for _, f, _ in buffers)
    hi = max(int(l) for _, _, l in buffers)
    scopes = range(lo, hi + 1)
    live = [[1.0 if f <= t <= l else 0.0 for (_, f, l) in buffers] for t in scopes]
    if all(_is_number(s) for s in sizes):
        return max(sum(m * s for m, s in zip(row, sizes)) for row in live)
    if any(isinstance(s, _recorded.Value) for s in sizes):
        return _recorded.maximum(sum(s for m, s in zip(row, sizes) if m) for row in live)
    vec = keras.ops.stack([keras.ops.cast(keras.ops.reshape(s, ()), "float32") for s in sizes])
    totals = keras.ops.matmul(keras.ops.convert_to_tensor(live, dtype="float32"), vec)
    return keras.ops.max(totals)
