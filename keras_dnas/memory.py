"""Flash and TFLite Micro arena of the frozen int8 model, as functions of channel counts.

The model is anchored on **one** real conversion: the structure is converted to full-int8 TFLite
at full width (which copy: see below), and every dimension of every
tensor of that flatbuffer (and every per-channel quantisation array) is attributed to the
channel counts of the ChannelPlan, from the plan and the converted graph alone:

- activations (the last, channel axis), operator by operator in execution order: a
  convolution, depthwise or fully connected operator is matched to the Keras layer call it
  comes from (the plan's output size, its input view equal to the operator's input, its
  kernel and output positions, the layer name in the tensor names, each call used once); a
  concatenation adds its inputs; a flattening reshape scales its input by the positions;
  every other operator (pads, pools, means, element-wise, reshapes that keep the last axis)
  passes on the channels of an input of the same size; what is still open takes a layer named
  in the tensor name, then a view of unambiguous size;
- constants, through the operators that read them: a weight's dimensions follow the operator's
  output and input channels, a bias and the per-channel scales the output channels, a
  broadcast operand of an element-wise operator its output's channels.

A dimension that cannot be attributed is kept fixed (``MemoryModel.unattributed`` lists it
and a warning says so); nothing here raises for it. At full width every number is that of the
conversion itself: a plain (seed or frozen) model is measured exactly, ``flash == len(.tflite)``
and the arena is the planner replay of its own flatbuffer. For other counts the tensors are
rescaled and

- **RAM** (exact replay): TFLite Micro's greedy planner is replayed on the rescaled
  tensors (:func:`keras_dnas.costs.arena.tflite_arena`: head exact, tail
  modelled for the target's pointer size); the differentiable version is the
  liveness bound over the same buffers plus the per-channel tail;
- **flash**: ``len(full .tflite)`` plus the change of every constant buffer
  (4-byte aligned: the TF converter does not honour the schema's
  ``force_align: 16``) and of every per-channel quantisation array (float32
  scale + int64 zero point per channel), plus ``SHAPE_CONSTANT_BYTES`` per RESHAPE target
  shape that becomes distinct (the converter stores equal ones once, and they hold channel
  counts: two causal Conv1D of equal width share one at full width, not at other widths; the
  rescaled graph gets one shape tensor per distinct value, so the tail counts them too), and
  all-zero int32 vectors (the biases of bias-less layers) stored once per distinct size, plus
  ``BUFFER_ENTRY_BYTES`` per buffer.

This is exact wherever the converter emits the same graph at the other widths. Where it does
not (a dimension of 1 squeezed away, a one-channel tensor quantised per tensor, tensor names
of another length, constants that become equal and are stored once), the rescaled full-width
graph is the estimate the search uses (tens of bytes of flash on the models of
``tests/test_memory_model.py``), and ``kd.freeze`` certifies flash, and RAM with it, on the
conversion of the frozen model itself. Measured with ``benchmarks/memory_applications.py`` on
random frozen models (arena head exact on all three): MobileNetV2 +36 B, EfficientNetB0
+132 B, DenseNet121 +0 B (+10,376 B, +0.42 %, before the zero vectors were modelled).
Which constants are *equal* can also depend on the weights (a 1-element int8 kernel is +-127
by its weight's sign, and equal ones are stored once): the search-time value is then an
estimate too (fuzzer: 16-32 B on small graphs).

The soft values (tensor counts) have the exact values (int counts) as their
forward value wherever the exact value is a closed formula: flash, the
per-channel tail and every buffer size (alignment is rounded with a
straight-through gradient). The soft RAM is therefore a lower bound of the
exact RAM: liveness bound <= planned head, and the same tail.

Which model is converted: a **plain** (seed or frozen) model is converted as it is, with its
own weights, exactly as ``kd.export.to_tflite`` converts it (the cache key includes a digest of
its weights). A **searchable** model is converted as a plain copy of its full-width structure
with random, distinct, non-zero weights (BatchNorm scales and variances positive): sizes do not
depend on weight values, but the converter drops all-zero biases and stores equal constants
once (e.g. the folded biases of untrained BatchNorms, or the int8 kernels of one value per
channel, which quantise to +-127), which a trained model does not have. A trained model whose
conversion still shares constants is a little smaller than predicted.

Converting costs a few seconds per structure; the one conversion is cached on the model object
(for every pointer size), so a callback, a later ``freeze`` and ``kd.summary`` share it. Before
issue 13 a second, *probe* conversion at other channel counts was compared with the first;
it is gone (one conversion per structure instead of two, and no failure when the converter's
graph at the probe counts differed).
"""

import bisect
import dataclasses
import re
import struct
import warnings

import numpy as np
from keras import ops

from keras_dnas import _recorded
from keras_dnas.costs import arena
from keras_dnas import _flatbuffer
from keras_dnas._data import ENDLESS_REPRESENTATIVE_SAMPLES, input_arrays
from keras_dnas._ste import aligned as _aligned

#: Flatbuffer bytes per output channel of a per-channel quantised tensor:
#: a float32 scale and an int64 zero point.
QUANT_BYTES_PER_CHANNEL = 4 + 8
#: Alignment of constant buffers in the flatbuffer the TF converter writes. The schema says
#: ``data:[ubyte] (force_align: 16)``, but the converter's exporter ignores it: buffer data
#: follows the 4-byte length prefix with only 4-byte padding (checked on TF 2.21 output).
BUFFER_ALIGNMENT = 4
#: Flatbuffer bytes of one more int32 shape constant (a RESHAPE's target shape): the tensor
#: table, its name, shape and buffer. The converter stores each distinct value once, and the
#: values hold channel counts, so two reshapes of equal widths share one constant at full width
#: and not at other widths (or the reverse). Measured on TF 2.21 conversions of causal TCNs
#: (tests/test_memory_model.py); the name's length makes it vary by a few bytes.
SHAPE_CONSTANT_BYTES = 140
#: Alignment of the int64 zero-point vectors (``zero_point: [long]``). Flatbuffers aligns each
#: to 8 bytes from the end of the file as it is built (back to front), so the 0 or 4 padding
#: bytes before each one depend on the sizes written before it; the file's length is a multiple
#: of 8 as well. Everything else in the file is 4-byte aligned.
ZERO_POINT_ALIGNMENT = 8

#: Flatbuffer bytes of one more constant buffer besides its data: its offset in
#: ``Model.buffers``, the ``Buffer`` table (vtable offset and data offset; the vtable is shared)
#: and the data vector's length prefix.
BUFFER_ENTRY_BYTES = 4 + 8 + 4

_CACHE_ATTR = "_dnas_memory_cache"

#: TFLite operators whose output channels are new (a weight's output axis): matched to a
#: Keras layer call. Value: (data input, weight input, bias input, weight axes (out, in)).
_WEIGHT_OPS = {
    "CONV_2D": (0, 1, 2, (0, 3)),
    "DEPTHWISE_CONV_2D": (0, 1, 2, (3, None)),
    "FULLY_CONNECTED": (0, 1, 2, (0, 1)),
    "TRANSPOSE_CONV": (2, 1, 3, (0, 3)),
}
#: Plan ops (``LayerInfo.op``, graph/roles.py) each TFLite weight operator may come from, best
#: first (tests/test_memory_model.py checks them against the roles and a conversion). A
#: Conv1DTranspose / Conv2DTranspose is op "transpose_conv".
_KINDS = {
    "CONV_2D": ("conv", "separable", "dense"),
    "DEPTHWISE_CONV_2D": ("depthwise", "separable"),
    "FULLY_CONNECTED": ("dense", "conv"),
    "TRANSPOSE_CONV": ("transpose_conv",),
}
#: Element-wise operators whose constant operands are data broadcast against the output
#: (their other constants, e.g. a reshape's shape or a pad's paddings, never scale).
_ELEMENTWISE = frozenset({
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "PRELU", "SQUARED_DIFFERENCE", "POW",
    "FLOOR_DIV", "FLOOR_MOD", "SELECT", "SELECT_V2", "LESS", "GREATER", "EQUAL", "NOT_EQUAL",
    "LESS_EQUAL", "GREATER_EQUAL",
})


@dataclasses.dataclass(frozen=True)
class _Dim:
    """A tensor dimension: ``const + sum(coefficient * counts[group])``.

    ``value`` is the dimension at full width; ``terms`` holds the searchable groups only
    (frozen groups never change and are part of ``const``).
    """

    value: int
    terms: tuple = ()  # ((group, coefficient), ...), sorted
    const: int = None

    def __post_init__(self):
        if self.const is None:
            object.__setattr__(self, "const", int(self.value))

    @property
    def key(self):
        return (self.terms, self.const)

    def count(self, counts):
        if not self.terms:
            return self.const
        if self.terms[-1][0] >= len(counts):  # a tap count not given: the full kernel
            return self.value
        total = self.const
        for g, k in self.terms:
            total = total + (counts[g] if k == 1 else counts[g] * k)
        return total

    def scaled(self, factor):
        return _Dim(self.value * factor, tuple((g, k * factor) for g, k in self.terms),
                    self.const * factor)

    def __add__(self, other):
        terms = dict(self.terms)
        for g, k in other.terms:
            terms[g] = terms.get(g, 0) + k
        return _Dim(self.value + other.value, tuple(sorted(terms.items())),
                    self.const + other.const)


def _view_dim(plan, view):
    """The :class:`_Dim` of a channel view of the plan."""
    terms, const = {}, 0
    for g in view.segments:
        group = plan.groups[g]
        if group.frozen:
            const += view.repeat * group.size
        else:
            terms[g] = terms.get(g, 0) + view.repeat
    return _Dim(plan.view_size(view), tuple(sorted(terms.items())), const)


def _name_parts(tensor_name):
    """Name-scope components of a TFLite tensor name (``a/b/c;d/e`` -> a, b, c, d, e)."""
    return [p for part in tensor_name.split(";") for p in part.split("/") if p]


def _name_score(parts, layer_name):
    """2: a scope is the layer's name; 1: its name with the suffixes TF adds to keep scopes
    unique (``conv2d_1`` -> ``conv2d_1_2``); 0: not named."""
    suffixed = re.compile(re.escape(layer_name) + r"(_\d+)+")
    score = 0
    for p in parts:
        if p == layer_name:
            return 2
        if suffixed.fullmatch(p):
            score = 1
    return score


class _Attribution:
    """Attributes every dimension of the full-width decoded model to the plan's channels."""

    def __init__(self, plan, model):
        self.plan, self.model = plan, model
        n = len(model.tensors)
        self.last = [None] * n  # _Dim of each activation's last axis
        self.dims = [None] * n  # per-tensor list of _Dim (constants)
        self.scales = [None] * n
        self.notes = []
        self.used = set()
        self.views = {}  # full size -> {key: _Dim} of the searchable views
        self._matched = None  # plan layer of the weight operator being attributed
        for info in plan.layers:
            for v in info.inputs + [info.output]:
                d = _view_dim(plan, v)
                if d.terms:
                    self.views.setdefault(d.value, {})[d.key] = d
        self._run()

    # ----------------------------------------------------------------- helpers
    def _fixed(self, value):
        return _Dim(int(value))

    def _note(self, tensor, what):
        self.notes.append(f"'{tensor.name}' {what}")

    def _shape(self, index):
        return self.model.tensors[index].shape

    def _last(self, index):
        if index < 0:
            return None
        return self.last[index]

    def _ambiguous(self, value):
        return value in self.views

    # ----------------------------------------------------------------- activations
    def _inputs(self):
        free = list(self.plan.inputs)
        for i in self.model.inputs:
            shape = self._shape(i)
            if not shape:
                continue
            view = next((v for v in free if self.plan.view_size(v) == shape[-1]), None)
            if view is not None:
                free.remove(view)
                self.last[i] = _view_dim(self.plan, view)
            else:
                self.last[i] = self._fixed(shape[-1])

    def _match_layer(self, op):
        """The plan layer call a weight operator comes from (index into plan.layers) or None."""
        data, weight, bias, _ = _WEIGHT_OPS[op.name]
        out = self.model.tensors[op.outputs[0]]
        value = out.shape[-1] if out.shape else None
        x = self._last(op.inputs[data]) if data < len(op.inputs) else None
        names = _name_parts(out.name)
        if weight < len(op.inputs) and op.inputs[weight] >= 0:
            names += _name_parts(self.model.tensors[op.inputs[weight]].name)
        positions = int(np.prod(out.shape[1:-1])) if len(out.shape) > 2 else 1
        kinds = _KINDS[op.name]
        best, best_score = None, None
        for k, info in enumerate(self.plan.layers):
            if self.plan.view_size(info.output) != value:
                continue
            in_match = bool(info.inputs) and x is not None and \
                _view_dim(self.plan, info.inputs[0]).key == x.key
            shape = info.geometry.get("output_shape") or []
            geo_positions = shape[:-1]
            geo_match = all(d is not None for d in geo_positions) and \
                int(np.prod(geo_positions)) == positions if geo_positions else positions == 1
            score = (in_match, k not in self.used, geo_match, info.op in kinds,
                     _name_score(names, info.name), -k)
            if best_score is None or score > best_score:
                best, best_score = k, score
        if best is None or not (best_score[0] or best_score[4]):
            return None  # neither its input nor its name ties it to a layer
        return best

    def _depthwise_channels(self, op):
        """The output channels of a DEPTHWISE_CONV_2D: its input's, scaled by the depth
        multiplier; None when its input's channels are not known."""
        shape = self._shape(op.outputs[0])
        x = self._last(op.inputs[0]) if op.inputs else None
        if not shape or x is None or not x.value or shape[-1] % x.value:
            return None
        return x if shape[-1] == x.value else x.scaled(shape[-1] // x.value)

    def _propagate(self, op, out_index):
        """The channels an operator passes on from an input of the same size, else None."""
        shape = self._shape(out_index)
        if not shape:
            return None
        value = shape[-1]
        data = [i for i in op.inputs if i >= 0 and not self.model.is_constant(i)]
        if op.name == "CONCATENATION" and len(data) == len(op.inputs) and all(
                self._shape(i) and self.last[i] is not None for i in data) and \
                sum(self._shape(i)[-1] for i in data) == value and len(data) > 1:
            total = self.last[data[0]]
            for i in data[1:]:
                total = total + self.last[i]
            return total
        for i in data:
            d = self.last[i]
            if d is not None and self._shape(i) and self._shape(i)[-1] == value:
                return d
        if op.name == "RESHAPE" and data and self.last[data[0]] is not None:
            src = self._shape(data[0])
            trailing = 1
            for axis in range(len(src) - 1, 0, -1):
                trailing *= src[axis]
                if trailing == value and value % src[-1] == 0:
                    return self.last[data[0]].scaled(value // src[-1])  # flattening
        return None

    def _by_name(self, tensor):
        """A searchable view of the right size whose layer is named in the tensor name, or
        the only searchable view of that size."""
        value = tensor.shape[-1]
        candidates = self.views.get(value, {})
        if not candidates:
            return None
        parts = _name_parts(tensor.name)
        named = {}
        best = 0
        for info in self.plan.layers:  # frozen layers too: a tensor named after one is fixed
            d = _view_dim(self.plan, info.output)
            if d.value != value:
                continue
            s = _name_score(parts, info.name)
            if s > best:
                best, named = s, {d.key: d}
            elif s == best and s > 0:
                named[d.key] = d
        if len(named) == 1:
            d = next(iter(named.values()))
            # an Embedding's output (GATHER: no channel operator) of a searchable group's size
            # was given that group's channels: the kernel after it shrank with the wrong group
            return d if d.terms else self._fixed(value)
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return None

    def _activation(self, op, out_index):
        tensor = self.model.tensors[out_index]
        if not tensor.shape:
            return self._fixed(1)
        d = self._propagate(op, out_index)
        if d is None:
            d = self._by_name(tensor)
        if d is None:
            if self._ambiguous(tensor.shape[-1]):
                self._note(tensor, f"(output of {op.name}): its last dimension "
                                   f"{tensor.shape[-1]} is kept fixed")
            d = self._fixed(tensor.shape[-1])
        return d

    # ----------------------------------------------------------------- constants
    def _set_const(self, index, dims, scales=None):
        if index < 0 or not self.model.is_constant(index):
            return
        if self.dims[index] is not None:
            if [d.key for d in self.dims[index]] != [d.key for d in dims]:
                self._note(self.model.tensors[index], "is read by operators with different "
                                                      "channels: the first one is used")
            return
        self.dims[index] = dims
        if scales is not None:
            self.scales[index] = scales

    def _weights(self, op, out_dim):
        data, weight, bias, (out_axis, in_axis) = _WEIGHT_OPS[op.name]
        x = self._last(op.inputs[data]) if data < len(op.inputs) else None
        if weight < len(op.inputs) and op.inputs[weight] >= 0:
            w = self.model.tensors[op.inputs[weight]]
            dims = [self._fixed(v) for v in w.shape]
            for axis, d in ((out_axis, out_dim), (in_axis, x)):
                if axis is None or d is None or axis >= len(dims):
                    continue
                if w.shape[axis] == d.value:
                    dims[axis] = d
                elif d.terms:
                    self._note(w, f"(weights of {op.name}): axis {axis} is {w.shape[axis]}, "
                                  f"not {d.value}; kept fixed")
            self._tap_axis(w, dims, (out_axis, in_axis))
            scales = out_dim if w.n_scales > 1 and w.n_scales == out_dim.value else None
            self._set_const(w.index, dims, scales)
        if bias < len(op.inputs) and op.inputs[bias] >= 0:
            b = self.model.tensors[op.inputs[bias]]
            if len(b.shape) == 1 and b.shape[0] == out_dim.value:
                scales = out_dim if b.n_scales > 1 and b.n_scales == out_dim.value else None
                self._set_const(b.index, [out_dim], scales)

    def _tap_axis(self, w, dims, channel_axes):
        """The kernel axis of a layer whose taps are searched follows its tap count (a
        Conv1D / DepthwiseConv1D converts to a 2-D kernel of height 1: [O|1, 1, K, I|C])."""
        info = self.plan.layers[self._matched] if self._matched is not None else None
        if info is None or not info.taps or info.op not in ("conv", "depthwise"):
            return
        k = info.taps["kernel_size"]
        axes = [a for a in range(len(dims)) if a not in channel_axes and w.shape[a] == k]
        if not axes:
            self._note(w, f"(kernel of '{info.name}'): no axis of {k} taps; kept fixed")
            return
        # tap slots come after every group, so they never clash with a group's terms
        dims[axes[-1]] = _Dim(k, ((self.plan.tap_slot(info.name), 1),), 0)

    def _broadcast(self, op, out_dim):
        out_shape = self._shape(op.outputs[0])
        for i in op.inputs:
            if i < 0 or not self.model.is_constant(i):
                continue
            c = self.model.tensors[i]
            dims = [self._fixed(v) for v in c.shape]
            if c.shape and out_shape and len(c.shape) <= len(out_shape) and \
                    c.shape[-1] == out_dim.value and c.shape[-1] > 1:
                dims[-1] = out_dim
                scales = out_dim if c.n_scales > 1 and c.n_scales == out_dim.value else None
                self._set_const(i, dims, scales)

    # ----------------------------------------------------------------- walk
    def _run(self):
        self._inputs()
        for op in self.model.operators:
            if not op.outputs:
                continue
            out = op.outputs[0]
            passed = self._depthwise_channels(op) if op.name == "DEPTHWISE_CONV_2D" else None
            if passed is not None:
                # A depthwise operator's channels are its input's (times the multiplier), also
                # when it is the first half of a SeparableConv whose output has the same full
                # size (matching it to that layer took the pointwise output's group: fuzzer
                # seeds 50 and 80).
                self.last[out] = passed
                # which layer it is matters only for its taps, when they are searched
                self._matched = self._match_layer(op) if self.plan.tap_layers() else None
                self._weights(op, passed)
            elif op.name in _WEIGHT_OPS and self._shape(out):
                k = self._match_layer(op)
                self._matched = k
                if k is not None:
                    self.used.add(k)
                    d = _view_dim(self.plan, self.plan.layers[k].output)
                elif op.name == "DEPTHWISE_CONV_2D":
                    d = self._activation(op, out)
                else:
                    d = self._by_name(self.model.tensors[out])
                    if d is None:
                        d = self._activation(op, out)
                self.last[out] = d
                self._weights(op, d)
            else:
                for o in op.outputs:
                    if o >= 0 and not self.model.is_constant(o):
                        self.last[o] = self._activation(op, o)
                if op.name in _ELEMENTWISE and self.last[out] is not None:
                    self._broadcast(op, self.last[out])
        for t in self.model.tensors:
            if self.dims[t.index] is None:
                if self.last[t.index] is not None and t.shape:
                    self.dims[t.index] = [self._fixed(v) for v in t.shape[:-1]] + \
                        [self.last[t.index]]
                else:
                    self.dims[t.index] = [self._fixed(v) for v in t.shape]
            if self.scales[t.index] is None:
                self.scales[t.index] = self._fixed(t.n_scales)


class MemoryModel:
    """Flash bytes and arena bytes of a model structure for any channel counts.

    Use :meth:`from_model`; :class:`~keras_dnas.costs.model.CostModel` calls
    :meth:`flash` and :meth:`ram`.

    Args:
        plan: the ChannelPlan.
        full_bytes: int8 ``.tflite`` of the structure at full width.
        pointer_bytes: 4 for a 32-bit MCU, 8 for the host TFLite Micro interpreter.

    Attributes:
        unattributed: messages naming the tensors with a dimension kept fixed because it
            could not be attributed to the plan's channels (empty when all were).

    Example:

    >>> import keras_dnas as kd
    >>> from keras_dnas.memory import MemoryModel
    >>> model = kd.zoo.ds_cnn()
    >>> mem = MemoryModel.from_model(model, pointer_bytes=8)
    >>> full = [g.size for g in mem.plan.groups]
    >>> mem.flash(full) == len(mem.full_bytes)
    True
    >>> mem.unattributed
    []
    """

    def __init__(self, plan, full_bytes, pointer_bytes=4):
        self.plan = plan
        self.full_bytes = full_bytes
        self.pointer_bytes = pointer_bytes
        self.full = _flatbuffer.read_tflite(full_bytes)
        found = _Attribution(plan, self.full)
        self._dims, self._scales = found.dims, found.scales
        self.unattributed = found.notes
        if self.unattributed:
            warnings.warn(
                f"keras_dnas: {len(self.unattributed)} dimension(s) of the converted model of "
                f"'{plan.model_name}' follow no channel group keras_dnas could identify; they "
                "are kept at their full-width size in the flash/RAM model (kd.freeze still "
                "certifies flash on the real conversion): "
                + "; ".join(self.unattributed[:5])
                + (" ..." if len(self.unattributed) > 5 else ""), stacklevel=3)
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
        # operands TFLite Micro's BATCH_MATMUL copies, transposed, into the tail
        self._tail_copies = [t for op in self.full.operators
                             for t in arena.batch_matmul_copies(self.full, op)]
        self._shape_constants = self._find_shape_constants()
        self._full_distinct = self._distinct_shape_constants(
            [g.size for g in plan.groups])
        # Constant buffers whose size changes with the counts (a shared buffer counts once).
        seen = set()
        self._constants = []
        for t, dims in zip(self.full.tensors, self._dims):
            if not self.full.is_constant(t.index) or t.buffer in seen:
                continue
            seen.add(t.buffer)
            if any(d.terms for d in dims):
                self._constants.append(t.index)
        # All-zero int32 vectors: the biases the converter gives bias-less layers (the generic
        # weights make every other bias non-zero, and a trained model has no zero bias either).
        # Equal bytes are stored once, so there is one such buffer per distinct size, at any
        # counts (DenseNet-style BN-ReLU-Conv blocks: one at full width, one per width after).
        self._zero = self._zero_vectors()
        zero_buffers = {self.full.tensors[i].buffer for i in self._zero}
        self._constants = [i for i in self._constants
                           if self.full.tensors[i].buffer not in zero_buffers]
        self._zero_full = self._zero_bytes([self.full.tensors[i].nbytes for i in self._zero])
        # Tensors whose scales change: quantisation is per tensor, also where two tensors share
        # one buffer (each has its own scales and zero points).
        self._quantized = [t.index for t, s in zip(self.full.tensors, self._scales) if s.terms]
        self._padding = _ZeroPointPadding(full_bytes)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_model(cls, model, plan=None, target=None, pointer_bytes=None,
                   representative_data=None):
        """Convert ``model`` once (full width) and build the model.

        A searchable model (with ``kd.layers.Masked*`` layers) is converted as a plain copy of
        its full-width structure with realistic weights (what its channels will weigh once
        trained); a plain (seed or frozen) model is converted as it is, with its own weights,
        exactly as ``kd.export.to_tflite`` converts it, so its flash is ``len`` of that file
        and its arena the planner replay of it.

        Args:
            model: an original, searchable or frozen Keras model (not modified).
            plan: its ChannelPlan (analysed if omitted).
            target: a HardwareTarget or name; gives ``pointer_bytes`` (default 4).
            pointer_bytes: overrides the target's pointer size (8 to compare with the
                ``tflite_micro`` host interpreter).
            representative_data: calibration inputs for the conversion (an array, or a list
                of arrays for several inputs; default: 8 fixed random samples). Sizes do not
                depend on them except where calibration decides which constants are equal
                (a bias that saturates int32 on one data set and not on another makes the
                converter rescale that kernel): give the data the shipped file is converted
                with, and a plain model's flash is ``len`` of exactly that file.
        """
        from keras_dnas import targets as targets_lib
        from keras_dnas.graph import analyze, walk
        from keras_dnas.layers.masked import is_masked

        searchable = any(is_masked(layer) for layer in walk.functional_of(model).layers)
        if plan is None:
            plan = analyze(model, masked_only=searchable)
        if pointer_bytes is None:
            pointer_bytes = targets_lib.get(target).pointer_bytes if target is not None else 4
        if representative_data is not None:  # read once (a generator is consumed here)
            arrays = input_arrays(representative_data, "representative_data",
                                  names=[t.name for t in model.inputs],
                                  endless_samples=ENDLESS_REPRESENTATIVE_SAMPLES)
            representative_data = arrays[0] if len(arrays) == 1 else arrays
        cache = model.__dict__.setdefault(_CACHE_ATTR, {})
        # A plain model's conversion depends on its weights (the converter drops all-zero
        # biases and stores equal constants once): the key includes them.
        structure = (plan.to_json(), None if searchable else _fingerprint(model),
                     _data_fingerprint(representative_data))
        if (structure, pointer_bytes) not in cache:
            if structure not in cache:  # the conversion does not depend on the pointer size
                cache[structure] = cls._convert(model, plan, own_weights=not searchable,
                                                representative_data=representative_data)
            cache[(structure, pointer_bytes)] = cls(
                plan, cache[structure], pointer_bytes=pointer_bytes)
        return cache[(structure, pointer_bytes)]

    @staticmethod
    def _convert(model, plan, own_weights=False, representative_data=None):
        """The int8 ``.tflite`` of ``model`` (own weights) or of its full-width structure with
        realistic weights."""
        from keras_dnas.export.convert import to_tflite
        from keras_dnas.slicing import rebuild_with

        if own_weights:
            rep = representative_data
            return to_tflite(model, representative_data=representative_inputs(model)
                             if rep is None else rep)
        keep_full = [np.ones(g.size, dtype=bool) for g in plan.groups]
        return MemoryModel.convert_structure(
            rebuild_with(model, plan, keep_full, full_taps=True),
            representative_data=representative_data)

    @staticmethod
    def convert_structure(structure, representative_data=None):
        """The int8 ``.tflite`` of ``structure`` (a plain model, modified: a throwaway copy)
        with generic weights (see :func:`_generic_weights`): what a memory model is built on.
        ``representative_data``: calibration inputs (default: 8 fixed random samples)."""
        from keras_dnas.export.convert import to_tflite

        _generic_weights(structure)
        rep = representative_data
        return to_tflite(structure, representative_data=representative_inputs(structure)
                         if rep is None else rep)

    # ----------------------------------------------------------------- parts (ChoiceMemory)
    def constant_bytes(self, index, counts):
        """Bytes constant tensor ``index`` of the full-width file takes in the file at
        ``counts``: its data (buffer-aligned) plus its per-channel scales and zero points."""
        size = self._data_bytes(self.full.tensors[index].buffer,
                                self._tensor_bytes(index, counts))
        if self.full.tensors[index].n_scales > 1:
            size = size + QUANT_BYTES_PER_CHANNEL * self._scales[index].count(counts)
        return size

    def constant_tensors(self):
        """Indices of the full-width file's constant tensors, one per buffer (a buffer two
        tensors share counts once)."""
        seen, found = set(), []
        for t in self.full.tensors:
            if self.full.is_constant(t.index) and t.buffer not in seen:
                seen.add(t.buffer)
                found.append(t.index)
        return found

    def activation_buffers(self, counts):
        """``[(tensor index, bytes, first operator, last operator)]`` of the arena head's
        tensor buffers at ``counts`` (kernel scratch left out)."""
        return [(b["tensor"], self._tensor_bytes(b["tensor"], counts), b["first"], b["last"])
                for b in self._buffers if b["kind"] == "tensor"]

    def tensors_named(self, layer_names):
        """Per tensor of the full-width file, the set of ``layer_names`` its name's scopes
        name (how a tensor is attributed to a layer)."""
        found = []
        for t in self.full.tensors:
            parts = _name_parts(t.name)
            found.append({n for n in layer_names if _name_score(parts, n) > 0})
        return found

    # ----------------------------------------------------------------- exact
    def scaled_model(self, counts):
        """The decoded full-width model with every tensor rescaled to ``counts`` (ints).

        RESHAPE target shapes that hold channel counts are stored once per distinct value (as
        the converter does): where they become distinct or equal at ``counts``, the model gets
        one shape tensor per distinct value, so the tensor count (TFLite Micro's tail holds one
        ``TfLiteEvalTensor`` per tensor) is the converter's (fuzzer seed 256: 16 B of tail).
        """
        tensors = [self._scaled_tensor(i, counts) for i in range(len(self.full.tensors))]
        model = dataclasses.replace(self.full, tensors=tensors)
        return self._shared_shapes(model, counts)

    def _scaled_tensor(self, index, counts):
        """Tensor ``index`` of the full-width file with its shape and scales at ``counts``."""
        t, s = self.full.tensors[index], self._scales[index]
        return dataclasses.replace(
            t, shape=[int(d.count(counts)) for d in self._dims[index]],
            n_scales=int(s.count(counts)),
            n_zero_points=int(s.count(counts)) if t.n_zero_points > 1 else t.n_zero_points)

    def _shape_inputs(self, counts):
        """``({operator: shape tensor}, copied)``: the shape-constant tensor each RESHAPE of
        the buckets reads at ``counts``, one per distinct value; a value that became distinct
        from the full-width tensor it shared reads a copy of it, numbered after the full-width
        tensors (``copied`` lists the full-width tensor of each copy, in order). None when the
        full-width file's shape tensors stay as they are (no buckets, an offline arena plan,
        or every RESHAPE reading the tensor it reads at full width)."""
        if not self._shape_constants or self.full.offline_offsets is not None:
            return None
        inputs = {}  # operator -> new shape tensor
        copied = []
        taken = set()
        n = len(self.full.tensors)
        for bucket, ops_of in zip(self._shape_constants, self._shape_ops):
            tensor_of = {}  # value -> tensor
            for entries, (op_index, tensor) in zip(bucket, ops_of):
                value = tuple(int(d.count(counts)) for d in entries)
                if value not in tensor_of:
                    if tensor in taken:  # shared at full width, distinct here: a new tensor
                        copied.append(tensor)
                        tensor = n + len(copied) - 1
                    taken.add(tensor)
                    tensor_of[value] = tensor
                inputs[op_index] = tensor_of[value]
        if not copied and all(self.full.operators[i].inputs[1] == t for i, t in inputs.items()):
            return None
        return inputs, copied

    def _shared_shapes(self, model, counts):
        """``model`` with one shape-constant tensor per distinct value of each bucket."""
        moved = self._shape_inputs(counts)
        if moved is None:
            return model
        inputs, copied = moved
        extra = [dataclasses.replace(model.tensors[t], index=len(model.tensors) + k)
                 for k, t in enumerate(copied)]
        operators = list(model.operators)
        for i, t in inputs.items():
            op = operators[i]
            operators[i] = dataclasses.replace(op, inputs=[op.inputs[0], t] + op.inputs[2:])
        tensors = list(model.tensors) + extra
        # Shape tensors no operator reads any more (values that became equal) are dropped.
        read = {i for op in operators for i in op.inputs + op.outputs + op.intermediates}
        read |= set(model.inputs) | set(model.outputs)
        keep = [t for t in tensors if t.index in read]
        new = {t.index: k for k, t in enumerate(keep)}
        new[-1] = -1

        def remap(indices):
            return [new[i] for i in indices]

        return dataclasses.replace(
            model,
            tensors=[dataclasses.replace(t, index=k) for k, t in enumerate(keep)],
            operators=[dataclasses.replace(op, inputs=remap(op.inputs), outputs=remap(
                op.outputs), intermediates=remap(op.intermediates)) for op in operators],
            inputs=remap(model.inputs), outputs=remap(model.outputs))

    def ram_parts(self, counts):
        """``{"head", "tail", "total"}`` arena bytes (exact planner replay) for int counts.

        The same replay as ``arena.tflite_arena(self.scaled_model(counts))`` (a test checks
        it on random counts), from structures built once: the planned buffers and their
        lifetimes do not depend on the counts, only their sizes do (see :class:`_ArenaReplay`).
        """
        counts = [int(c) for c in counts]
        parts = self._replay().parts(counts)
        if parts is None:  # a buffer is empty at these counts: the full replay drops it
            report = arena.tflite_arena(self.scaled_model(counts),
                                        pointer_bytes=self.pointer_bytes)
            parts = {"head": report["head"], "tail": report["tail"], "total": report["total"]}
        return parts

    def ram_mass(self, counts):
        """Total bytes of all planned buffers: shrinks with every channel removed, unlike
        the peak (used to break ties when closing channels for a RAM budget)."""
        counts = [int(c) for c in counts]
        sizes = self._replay().sizes(counts)
        if sizes is None:
            return sum(b["size"] for b in arena.tflite_buffers(self.scaled_model(counts)))
        return int(sum(sizes))

    def _replay(self):
        if self.__dict__.get("_arena_replay") is None:
            self._arena_replay = _ArenaReplay(self)
        return self._arena_replay

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
            if not d.terms:
                continue
            n = d.count(counts)
            per_channel = 2 * _aligned(4 * n, arena.ARENA_ALIGNMENT)
            if op.name == "FULLY_CONNECTED":
                # TFLM keeps per-channel arrays only for more than one weight scale.
                n_scales = self._scales[op.inputs[1]].count(counts)
                per_channel = per_channel * _step(n_scales, 1)
            tail = tail + per_channel - 2 * _aligned(4 * d.value, arena.ARENA_ALIGNMENT)
        for t in self._tail_copies:
            tail = tail + (_aligned(self._tensor_bytes(t, counts), arena.ARENA_ALIGNMENT)
                           - _aligned(self.full.tensors[t].nbytes, arena.ARENA_ALIGNMENT))
        return tail

    def _data_bytes(self, buffer, size):
        """File bytes of ``size`` bytes of data in ``buffer``, padding included: the next
        4-byte boundary, measured from where the object above it starts (see
        ``_ZeroPointPadding.data_skew``: 2 bytes off the grid for the one buffer under the
        Buffer tables' shared 6-byte vtable, fuzzer seed 911)."""
        skew = self._padding.data_skew.get(buffer, 0)
        return _aligned(size + skew, BUFFER_ALIGNMENT) - skew

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

        Exact at integer counts when the converter writes the rescaled full-width tensors
        (the 8-byte padding before each zero-point vector is replayed, see
        :data:`ZERO_POINT_ALIGNMENT`). ``exact`` is accepted for symmetry with :meth:`ram`;
        the soft value (tensor counts) has the integer value as its forward value at
        integer-valued counts (the padding part has a zero gradient).
        """
        if all(isinstance(c, (int, np.integer)) for c in counts):
            return self._flash_at(counts)
        return self._flash_terms(counts)

    def _flash_terms(self, counts):
        """``flash`` term by term (ints or tensors; :meth:`_flash_at` is its vectorised form
        at integer counts)."""
        total = len(self.full_bytes)
        deltas = {}  # file position of each changed vector -> its change in bytes
        for index in self._constants:
            t = self.full.tensors[index]
            size = self._tensor_bytes(index, counts)
            deltas[self._padding.data_at[t.buffer]] = self._data_bytes(t.buffer, size) \
                - self._data_bytes(t.buffer, t.nbytes)
        for index in self._quantized:
            s = self._scales[index]
            # The zero points' own change is a multiple of 8: it never moves a padding.
            deltas[self._padding.scale_at[index]] = \
                QUANT_BYTES_PER_CHANNEL * (s.count(counts) - s.value)
        if self._zero:
            at = self._padding.data_at[self.full.tensors[self._zero[0]].buffer]
            sizes = [self._tensor_bytes(i, counts) for i in self._zero]
            deltas[at] = deltas.get(at, 0) + self._zero_bytes(sizes) - self._zero_full
        for delta in deltas.values():
            total = total + delta
        total = total + self._padding.change(deltas)
        if self._shape_constants:
            more = self._distinct_shape_constants(counts) - self._full_distinct
            total = total + SHAPE_CONSTANT_BYTES * more
        return total

    def _flash_at(self, counts):
        """``flash(counts)`` at integer counts, vectorised: the same sum (a test compares the
        two on random counts), from matrices built once per number of counts. A projection
        evaluates flash hundreds of times (EfficientNetB0: ~850), each over every constant and
        every quantised tensor."""
        v = self._flash_vectors(len(counts))
        counts = np.asarray(counts, dtype=np.int64)
        dims = v["dims"](counts)
        size = v["itemsize"] * np.prod(dims, axis=1)
        data = (size + v["skew"] + BUFFER_ALIGNMENT - 1) // BUFFER_ALIGNMENT * BUFFER_ALIGNMENT \
            - v["skew"]
        scales = v["scales"](counts)[:, 0]
        moved = np.zeros(v["segments"], dtype=np.int64)  # per padding segment (last: the front)
        np.add.at(moved, v["data_segment"], data - v["full_data"])
        np.add.at(moved, v["scale_segment"], QUANT_BYTES_PER_CHANNEL * (scales - v["scale_full"]))
        total = len(self.full_bytes) + int((data - v["full_data"]).sum()) + \
            QUANT_BYTES_PER_CHANNEL * int((scales - v["scale_full"]).sum())
        if self._zero:
            sizes = v["zero_itemsize"] * np.prod(v["zero_dims"](counts), axis=1)
            delta = self._zero_bytes(sizes.tolist()) - self._zero_full
            moved[v["zero_segment"]] += delta
            total += delta
        old = v["old_padding"]
        total += int(((old - moved) % ZERO_POINT_ALIGNMENT - old)[v["padded"]].sum())
        if self._shape_constants:
            more = self._distinct_shape_constants([int(c) for c in counts]) - self._full_distinct
            total = total + SHAPE_CONSTANT_BYTES * more
        return int(total)

    def _flash_vectors(self, width):
        """The matrices of :meth:`_flash_at` for ``width`` counts: every changing constant's
        dimensions and every changing scale vector's length are linear in the counts."""
        cache = self.__dict__.setdefault("_flash_by_width", {})
        if width in cache:
            return cache[width]
        tensors = self.full.tensors
        pad = self._padding
        positions = pad._positions

        def segment(at):  # the zero-point vector whose padding a change at ``at`` moves
            k = bisect.bisect_left(positions, at) - 1
            return k if k >= 0 else len(positions)  # the last entry: the front padding

        dims = _linear_dims([self._dims[i] for i in self._constants], width)
        scales = _linear_dims([[self._scales[i]] for i in self._quantized], width, rank=1)
        old = [pad._pads[at] for at in positions] + [pad._front]
        v = {
            "dims": dims,
            "itemsize": np.array([tensors[i].itemsize for i in self._constants], dtype=np.int64),
            "skew": np.array([pad.data_skew.get(tensors[i].buffer, 0) for i in self._constants],
                             dtype=np.int64),
            "full_data": np.array([self._data_bytes(tensors[i].buffer, tensors[i].nbytes)
                                   for i in self._constants], dtype=np.int64),
            "data_segment": np.array([segment(pad.data_at[tensors[i].buffer])
                                      for i in self._constants], dtype=np.int64),
            "scales": scales,
            "scale_full": np.array([self._scales[i].value for i in self._quantized],
                                   dtype=np.int64),
            "scale_segment": np.array([segment(pad.scale_at[i]) for i in self._quantized],
                                      dtype=np.int64),
            "segments": len(old),
            "old_padding": np.array([0 if o is None else o for o in old], dtype=np.int64),
            "padded": np.array([o is not None for o in old], dtype=bool),
        }
        if self._zero:
            v["zero_segment"] = segment(pad.data_at[tensors[self._zero[0]].buffer])
            v["zero_dims"] = _linear_dims([self._dims[i] for i in self._zero], width)
            v["zero_itemsize"] = np.array([tensors[i].itemsize for i in self._zero],
                                          dtype=np.int64)
        cache[width] = v
        return v

    # ----------------------------------------------------------------- zero vectors
    def _zero_vectors(self):
        """Every all-zero int32 vector constant, when one of them follows the channels."""
        found = [t.index for t in self.full.tensors
                 if t.dtype == "INT32" and len(t.shape) == 1 and self.full.is_constant(t.index)
                 and not np.any(_flatbuffer.read_constant(self.full_bytes, t.index))]
        return found if any(d.terms for i in found for d in self._dims[i]) else []

    @staticmethod
    def _zero_bytes(sizes):
        """Flash of all-zero vectors of byte ``sizes`` stored once per distinct size (ints, or
        tensors: the forward value is exact at integer counts; which sizes are equal has a zero
        gradient)."""
        if all(isinstance(n, (int, np.integer)) for n in sizes):  # each distinct size once
            return sum(_aligned(n, BUFFER_ALIGNMENT) + BUFFER_ENTRY_BYTES
                       for n in dict.fromkeys(int(n) for n in sizes))
        total = 0
        for i, n in enumerate(sizes):
            new = 1.0
            for m in sizes[:i]:
                same = _recorded.equal(n, m)
                new = new * (1.0 - same)
            total = total + new * (_aligned(n, BUFFER_ALIGNMENT) + BUFFER_ENTRY_BYTES)
        return total

    # ----------------------------------------------------------------- shape constants
    def _find_shape_constants(self):
        """The target shape of every RESHAPE with a constant one, entry by entry as
        :class:`_Dim` (an entry equal to the output's dimension follows it)."""
        found = []
        for index, op in enumerate(self.full.operators):
            if op.name != "RESHAPE" or len(op.inputs) < 2 or op.inputs[1] < 0 or \
                    not self.full.is_constant(op.inputs[1]):
                continue
            values = _flatbuffer.read_constant(self.full_bytes, op.inputs[1])
            if values is None:
                continue
            out = self._dims[op.outputs[0]]
            found.append((tuple(out[a] if a < len(out) and int(v) == out[a].value
                                else _Dim(int(v)) for a, v in enumerate(values)),
                          (index, op.inputs[1])))
        # Only shapes of one length can be equal; lengths without a channel entry never change.
        buckets = {}
        for entries, where in found:
            buckets.setdefault(len(entries), []).append((entries, where))
        kept = [b for b in buckets.values() if any(d.terms for e, _ in b for d in e)]
        self._shape_ops = [[where for _, where in b] for b in kept]  # (operator, tensor)
        return [[e for e, _ in b] for b in kept]

    def _distinct_shape_constants(self, counts):
        """Number of distinct values among the channel-dependent shape constants (ints for
        int counts; for tensors the same forward value with a zero gradient)."""
        symbolic = not all(isinstance(c, (int, np.integer)) for c in counts)
        if not symbolic:
            return sum(len({tuple(d.count(counts) for d in e) for e in bucket})
                       for bucket in self._shape_constants)
        counts = [_recorded.frozen(c) if not isinstance(
            c, (int, np.integer)) else float(c) for c in counts]
        total = 0.0
        for bucket in self._shape_constants:
            values = [[d.count(counts) for d in e] for e in bucket]
            for i, vi in enumerate(values):
                new = 1.0  # no earlier shape of the bucket has this value
                for vj in values[:i]:
                    same = 1.0
                    for a, b in zip(vi, vj):
                        if _is_number(a) and _is_number(b):
                            same = same * float(a == b)  # both fixed
                        else:
                            same = same * _recorded.equal(a, b)
                    new = new * (1.0 - same)
                total = total + new
        return total


class _ArenaReplay:
    """TFLite Micro's arena (planner replay and tail) of a memory model at integer counts,
    without building the rescaled model.

    Which buffers the planner gets, in which order, and their lifetimes depend only on the
    operators, not on the counts, and so do the tensors the tail and the scratch rules read:
    all of that is taken from the full-width file once. Per call, the tensor buffers' sizes
    are one matrix product (every dimension is linear in the counts), the tail and the
    scratch requests read rescaled copies of the few tensors they look at, and the tensor
    count follows the shape constants (``MemoryModel._shape_inputs``).
    """

    def __init__(self, memory):
        self.memory = memory
        full = memory.full
        buffers = memory._buffers
        self.tensor_ids = [b["tensor"] for b in buffers if b["kind"] == "tensor"]
        self.scratch = [b for b in buffers if b["kind"] == "scratch"]
        self.spans = [(b["first"], b["last"]) for b in buffers]
        self.overlaps = arena._overlapping([f for f, _ in self.spans], [e for _, e in self.spans])
        self.plan_memo = {}  # the last placement: the next call re-places only what changed
        self.tail = None  # arena.TailReplay, on first use
        self.fixed = arena.fixed_offsets([b["offline"] for b in buffers])
        self.itemsize = np.array([full.tensors[i].itemsize for i in self.tensor_ids],
                                 dtype=np.int64)
        self._dims_by_width = {}  # len(counts) -> (coefficients, constants)
        # tensors the tail model and the scratch rules read: rescaled at every call
        read = set(full.inputs) | set(full.outputs)
        read |= {t.index for t in full.tensors if t.is_variable}
        for op in full.operators:
            if op.name in arena.REFERENCE_SCRATCH:
                read |= {i for i in op.inputs + op.outputs if i >= 0}
            elif arena.TAIL_OPS.get(op.name, arena._UNKNOWN_OP)[4]:  # per-channel arrays
                read |= set(op.outputs[:1] + (op.inputs[1:2] if op.name == "FULLY_CONNECTED"
                                              else []))
        # (only those that change with the counts need a rescaled copy)
        self.read = sorted(i for i in read if memory._scales[i].terms
                           or any(d.terms for d in memory._dims[i]))
        self.read_groups = [sorted({g for d in list(memory._dims[i]) + [memory._scales[i]]
                                    for g, _ in d.terms}) for i in self.read]
        self.memo = [{} for _ in self.read]
        self.readers = {}  # group -> positions in self.read of the tensors that follow it
        for k, groups in enumerate(self.read_groups):
            for g in groups:
                self.readers.setdefault(g, []).append(k)
        self._last_read = None  # (counts, tensors) of the last call of model()
        self.requests = {}  # operator -> number of scratch requests at full width
        for b in self.scratch:
            self.requests[b["op"]] = self.requests.get(b["op"], 0) + 1
        # tensors some operator (or the graph) reads, without the shape inputs the counts move
        shape_ops = {i for ops_of in memory._shape_ops for i, _ in ops_of} \
            if memory._shape_constants else set()
        self.read_without_shapes = set(full.inputs) | set(full.outputs)
        for i, op in enumerate(full.operators):
            inputs = [op.inputs[0]] + op.inputs[2:] if i in shape_ops else op.inputs
            self.read_without_shapes |= set(inputs + op.outputs + op.intermediates)

    def _dims(self, width):
        """:class:`_Linear`: the planned tensors' dimensions (padded with 1s to one rank) at
        ``width`` counts."""
        if width not in self._dims_by_width:
            self._dims_by_width[width] = _linear_dims(
                [self.memory._dims[i] for i in self.tensor_ids], width)
        return self._dims_by_width[width]

    def sizes(self, counts, model=None):
        """Bytes of every planned buffer (tensors, then scratch) at ``counts``, or None when a
        tensor's is 0 (the full replay then drops it). ``model``: ``self.model(counts)``."""
        dims = self._dims(len(counts))(counts)
        tensor_bytes = self.itemsize * np.prod(dims, axis=1)
        if np.any(tensor_bytes <= 0):
            return None
        sizes = tensor_bytes.tolist()
        if self.requests:
            model = self.model(counts) if model is None else model
            for op_index, n in self.requests.items():
                op = model.operators[op_index]
                scratch = arena.REFERENCE_SCRATCH[op.name](model, op)
                if len(scratch) != n:
                    return None
                sizes += [int(v) for v in scratch]
        return sizes

    def model(self, counts):
        """The full-width model with the tensors the tail and the scratch rules read rescaled
        to ``counts`` (nothing here reads the others)."""
        width = len(counts)
        last = self._last_read
        if last is not None and len(last[0]) == width:
            # only the tensors following a group whose count changed since the last call
            tensors = list(last[1])
            moved = [g for g, (a, b) in enumerate(zip(counts, last[0])) if a != b]
            todo = sorted({k for g in moved for k in self.readers.get(g, ())})
        else:
            tensors = list(self.memory.full.tensors)
            todo = range(len(self.read))
        for k in todo:
            i, groups, memo = self.read[k], self.read_groups[k], self.memo[k]
            # a tensor follows a few groups: a projection's trials mostly leave them as they
            # were, so its copy at those counts is reused (the copies are never modified)
            key = (width,) + tuple(counts[g] if g < width else -1 for g in groups)
            t = memo.get(key)
            if t is None:
                if len(memo) > 64:
                    memo.clear()
                t = memo[key] = self.memory._scaled_tensor(i, counts)
            tensors[i] = t
        self._last_read = (list(counts), tensors)
        return dataclasses.replace(self.memory.full, tensors=tensors)

    def tensor_count(self, counts):
        """Tensors of the rescaled model (shape constants stored once per distinct value)."""
        n = len(self.memory.full.tensors)
        moved = self.memory._shape_inputs(counts)
        if moved is None:
            return n
        inputs, copied = moved
        read = self.read_without_shapes | set(inputs.values())
        return sum(1 for t in read if 0 <= t < n + len(copied))

    def parts(self, counts):
        """``{"head", "tail", "total"}`` at ``counts``, or None (see :meth:`sizes`)."""
        model = self.model(counts)
        sizes = self.sizes(counts, model)
        if sizes is None:
            return None
        alignment = arena.ARENA_ALIGNMENT
        aligned = (-(-np.asarray(sizes, dtype=np.int64) // alignment) * alignment).tolist()
        _, head = arena.plan_aligned(aligned, self.fixed, self.overlaps, memo=self.plan_memo)
        if self.tail is None or self.tail.pointer_bytes != self.memory.pointer_bytes:
            self.tail = arena.TailReplay(self.memory.full, self.memory.pointer_bytes)
        tail = self.tail(model, tensor_count=self.tensor_count(counts))
        return {"head": head, "tail": tail, "total": head + tail}


class _ZeroPointPadding:
    """The padding before the 8-byte aligned zero-point vectors of a converted file, replayed
    for other vector sizes.

    Flatbuffers builds the file from its end and pads so that each int64 vector starts a multiple
    of 8 bytes from the end. All other sizes are multiples of 4, so each padding is 0 or 4 bytes
    and between two zero-point vectors the offset is again a multiple of 8: the padding of one
    depends only on the bytes written between it and the next zero-point vector above it in the
    file (built just before it). The front padding (after the 8-byte header, making the length a
    multiple of 8) depends likewise on the bytes below the lowest one.

    Buffer data is padded up to the 4-byte grid of the object above it (built just before it).
    That object is the next buffer's table, 4-byte aligned, except for one buffer: the converter
    writes the ``Buffer`` tables' shared vtable (6 bytes, 2-byte aligned) with the first table
    that has data, right above the data of the next buffer it builds (unless an identical vtable
    was written earlier and is reused). That buffer's data takes ``align4(n + 2) - 2`` bytes, not
    ``align4(n)`` (fuzzer seed 911: the classifier kernel, 24 B + 2 B padding at full width,
    6 B without padding once frozen: 4 B less than ``align4``, and the front padding moves).

    Attributes:
        data_at: file position of each buffer's data (buffer index -> position).
        data_skew: buffer index -> how far (bytes, mod 4) the object right above its data is
            off the 4-byte grid, where it is (only buffers with a non-zero skew are listed).
        scale_at: file position of each quantised tensor's scale vector.
    """

    def __init__(self, tflite_bytes):
        data = bytes(_flatbuffer.as_model_bytes(tflite_bytes))
        sch = _flatbuffer.schema()
        model = sch.Model.GetRootAs(data, 0)
        self.data_at, self.scale_at, self.data_skew = {}, {}, {}
        starts = set()  # start (length prefix) of every vector located, to tell padding apart
        vtables = set()  # where the Buffer tables' vtables start
        ends = {}  # buffer index -> end of its data
        for i in range(model.BuffersLength()):
            tab = model.Buffers(i)._tab
            vtables.add(tab.Pos - struct.unpack_from("<i", data, tab.Pos)[0])
            o = tab.Offset(4)  # Buffer.data
            self.data_at[i] = tab.Vector(o) if o else -1
            if o:
                starts.add(tab.Vector(o) - 4)
                ends[i] = tab.Vector(o) + tab.VectorLen(o)
        for i, end in ends.items():
            above = [v for v in vtables if end <= v < end + BUFFER_ALIGNMENT]
            if above and (len(data) - above[0]) % BUFFER_ALIGNMENT:
                self.data_skew[i] = (len(data) - above[0]) % BUFFER_ALIGNMENT
        sg = model.Subgraphs(0)
        zero_points = []  # (position, end of the vector's data)
        for index in range(sg.TensorsLength()):
            t = sg.Tensors(index)
            for field in (4, 10):  # Tensor.shape, Tensor.name
                o = t._tab.Offset(field)
                if o:
                    starts.add(t._tab.Vector(o) - 4)
            q = t.Quantization()
            if q is None:
                continue
            o = q._tab.Offset(8)  # QuantizationParameters.scale
            if o:
                self.scale_at[index] = q._tab.Vector(o)
                starts.add(q._tab.Vector(o) - 4)
            o = q._tab.Offset(10)  # QuantizationParameters.zero_point
            if o:
                at = q._tab.Vector(o)
                zero_points.append((at, at + 8 * q._tab.VectorLen(o)))
                starts.add(at - 4)
        aligned = bool(zero_points) and len(data) % ZERO_POINT_ALIGNMENT == 0
        self._positions = sorted(at for at, _ in zero_points) if aligned else []
        self._pads = {}
        for at, end in zero_points if aligned else ():
            padded = end not in starts and data[end:end + 4] == bytes(4)
            self._pads[at] = 4 if padded else 0
        # Header: root offset and file identifier; the root table or its vtable comes next.
        root = struct.unpack_from("<I", data, 0)[0]
        first = min(root, root - struct.unpack_from("<i", data, root)[0])
        self._front = first - 8 if aligned and first - 8 in (0, 4) else None

    def change(self, deltas):
        """Change of the total padding for vector size changes ``{position: bytes}`` (ints, or
        tensors: then a tensor with a zero gradient, exact at integer-valued counts)."""
        segments = {}  # the zero-point vector (or None: the front) whose padding each change moves
        for at, delta in deltas.items():
            k = bisect.bisect_left(self._positions, at) - 1
            key = self._positions[k] if k >= 0 else None
            segments[key] = segments.get(key, 0) + delta
        total = 0
        for key, moved in segments.items():
            old = self._front if key is None else self._pads[key]
            if old is None:
                continue
            if isinstance(moved, (int, np.integer)):
                total += (old - moved) % ZERO_POINT_ALIGNMENT - old
            else:
                quarters = _recorded.round_(_recorded.frozen(moved) / 4.0)
                total = total + 4.0 * _recorded.mod(old // 4 - quarters, 2.0) - old
        return total


class _Linear:
    """``A @ counts + c`` at integer counts (an int64 array of one row per entry), as one
    float64 matrix product: every coefficient and count is a small integer, so the product is
    exact, and a BLAS product of DenseNet121's ~600 constants costs a fifth of NumPy's int64
    one (flash is evaluated thousands of times in a fill)."""

    def __init__(self, a, c):
        self.c = c
        self.a = a.reshape(-1, a.shape[-1]).astype(np.float64) if a.size else None

    def __call__(self, counts):
        if self.a is None:
            return self.c
        product = self.a @ np.asarray(counts, dtype=np.float64)
        return product.astype(np.int64).reshape(self.c.shape) + self.c


def _linear_dims(rows, width, rank=None):
    """:class:`_Linear` of ``(A, c)``, with ``A @ counts + c`` the dimensions of each row of
    :class:`_Dim` (rows padded with 1s to one rank) for ``width`` counts; a dimension following
    a tap count not given (beyond ``width``) keeps its full value, as in :meth:`_Dim.count`."""
    rank = max((len(r) for r in rows), default=0) if rank is None else rank
    a = np.zeros((len(rows), rank, width), dtype=np.int64)
    c = np.ones((len(rows), rank), dtype=np.int64)
    for row, dims in enumerate(rows):
        for axis, d in enumerate(dims):
            if d.terms and d.terms[-1][0] >= width:
                c[row, axis] = d.value
                continue
            c[row, axis] = d.const
            for g, k in d.terms:
                a[row, axis, g] += k
    return _Linear(a, c)


def representative_inputs(model):
    """Eight normal samples per input of ``model`` (calibration of a structure's conversion);
    an input of indices (integer, or read by an ``Embedding``) gets 0s and 1s, valid for any
    table of two rows or more (the exported GATHER rejects an index out of its table)."""
    import keras

    rng = np.random.default_rng(0)
    looked_up = set()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Embedding):
            try:
                looked_up.add(id(layer.input))
            except (AttributeError, ValueError):  # called on several tensors
                pass

    def sample(x):
        shape = (8,) + tuple(x.shape[1:])
        if np.issubdtype(np.dtype(x.dtype), np.integer) or id(x) in looked_up:
            return rng.integers(0, 2, size=shape).astype(x.dtype)
        return rng.normal(size=shape).astype("float32")

    rep = [sample(x) for x in model.inputs]
    return rep[0] if len(rep) == 1 else rep


def _is_number(x):
    return isinstance(x, (int, float, np.number))




def _step(n, above):
    """1 when ``n > above`` else 0 (ints), or its tensor with a zero gradient."""
    if isinstance(n, (int, np.integer)):
        return int(n > above)
    return _recorded.greater(n, above + 0.5)


def _fingerprint(model):
    """A digest of every weight's value (a plain model's conversion depends on them)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for w in model.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def _data_fingerprint(data):
    """A digest of calibration arrays (None for the default data), for the conversion cache."""
    if data is None:
        return None
    import hashlib

    arrays = data if isinstance(data, list) else [data]
    digest = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype="float32"))
        digest.update(repr(a.shape).encode() + a.tobytes())
    return digest.hexdigest()


def nonzero_values(rng, shape):
    """Random values with |value| in [0.05, 0.35]: never zero, so the converter drops nothing
    as all-zero, and distinct, so it shares nothing."""
    return rng.uniform(0.05, 0.35, shape) * rng.choice([-1.0, 1.0], shape)


def _generic_weights(model, seed=0):
    """Give a throwaway copy random, distinct, non-zero weights before converting it.

    Sizes do not depend on weight values, but the converter's *structure* does in degenerate
    cases: it drops all-zero biases, shares identical constant buffers and tensors (e.g. the
    folded biases of untrained BatchNorms, equal in every layer of the same width) and folds
    splat constants. Values drawn away from zero and different in every weight give the
    structure a trained model converts to. Kernels are scaled by ``1 / sqrt(fan_in)`` so that
    activations keep their scale through a deep network: with unscaled kernels they grow
    layer after layer (EfficientNetB0: by orders of magnitude), the int8 input scale of deep
    layers becomes so large that their int32 biases quantise to zero, and the converter stores
    those zero biases once (issue 13: EfficientNetB0 flash 1.55 % low). BatchNorm scales and
    variances are positive.

    Biases that are equal and not zero in ``model`` stay equal (one draw for them): the
    converter stores equal float constants once, and the int8 biases it quantises from that one
    constant lose their layers' names (``arith.constant``). A trained model has such biases
    where two biased convs or denses feed one Add (a projection shortcut): from Keras' zero
    initialisation they get the same gradients at every step. Drawn apart, the copy's file was
    longer by their names (ResNet50V2: 1,344 B; a two-conv residual toy: 192 B, 1.6 %).
    """
    rng = np.random.default_rng(seed)
    equal = {}  # id(bias) -> key shared by the biases of equal non-zero values
    for w in model.weights:
        if "float" in str(w.dtype) and w.name.split("/")[-1] == "bias":
            v = np.asarray(w.numpy())
            if v.any():
                equal[id(w)] = (v.shape, v.tobytes())
    drawn = {}
    for w in model.weights:
        if "float" not in str(w.dtype):
            continue  # e.g. seed-generator states
        name = w.name.split("/")[-1]
        shape = tuple(w.shape)
        key = equal.get(id(w))
        if key in drawn:
            w.assign(drawn[key])
            continue
        if name in ("gamma", "moving_variance", "variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = nonzero_values(rng, shape)
            if name.endswith("kernel") and len(shape) >= 2:
                # depthwise kernels (kh, kw, C, multiplier) sum over kh * kw inputs only
                fan_in = int(np.prod(shape[:-2] if name == "depthwise_kernel" else shape[:-1]))
                value = value * 3.0 / np.sqrt(max(fan_in, 1))
        w.assign(value.astype(str(w.dtype)))
        if key is not None:
            drawn[key] = value.astype(str(w.dtype))


__all__ = ["MemoryModel", "QUANT_BYTES_PER_CHANNEL"]
