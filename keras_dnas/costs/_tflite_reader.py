"""A tiny, dependency-free reader for the parts of a `.tflite` flatbuffer the cost models need.

Only what the arena replay and the flash model use is decoded: operator codes, the first
subgraph's tensors (shape, type, buffer, quantisation, variable flag), its inputs, outputs and
operators, the buffers' data sizes and the metadata entries. Field numbers follow TensorFlow
Lite's `schema.fbs` (stable since schema version 3). Reading the file this way avoids importing
TensorFlow (several seconds) just to look at a few tables.
"""

import dataclasses
import struct

# TensorType enum of schema.fbs -> bytes per element (None: not a fixed-size type).
TENSOR_TYPE_BYTES = {
    0: 4,  # FLOAT32
    1: 2,  # FLOAT16
    2: 4,  # INT32
    3: 1,  # UINT8
    4: 8,  # INT64
    5: None,  # STRING
    6: 1,  # BOOL
    7: 2,  # INT16
    8: 8,  # COMPLEX64
    9: 1,  # INT8
    10: 8,  # FLOAT64
    11: 16,  # COMPLEX128
    12: 8,  # UINT64
    13: None,  # RESOURCE
    14: None,  # VARIANT
    15: 4,  # UINT32
    16: 2,  # UINT16
    17: 1,  # INT4 (TFLM unpacks to one byte per element)
    18: 2,  # BFLOAT16
}

# BuiltinOperator enum of schema.fbs (the subset a Keras CNN / MLP / TCN converts to).
BUILTIN_NAMES = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    25: "SOFTMAX",
    28: "TANH",
    34: "PAD",
    39: "TRANSPOSE",
    40: "MEAN",
    41: "SUB",
    43: "SQUEEZE",
    45: "STRIDED_SLICE",
    49: "SPLIT",
    55: "MAXIMUM",
    57: "MINIMUM",
    60: "PADV2",
    67: "TRANSPOSE_CONV",
    70: "EXPAND_DIMS",
    74: "SUM",
    81: "REDUCE_PROD",
    82: "REDUCE_MAX",
    83: "PACK",
    88: "UNPACK",
    89: "REDUCE_MIN",
    97: "RESIZE_NEAREST_NEIGHBOR",
    98: "LEAKY_RELU",
    114: "QUANTIZE",
    117: "HARD_SWISH",
    126: "BATCH_MATMUL",
}


@dataclasses.dataclass
class Tensor:
    """One tensor of the subgraph.

    Attributes:
        index: position in the subgraph's tensor list.
        name: tensor name.
        shape: list of dimensions (empty for a scalar).
        type: TensorType enum value.
        buffer: index into the model's buffers.
        is_variable: the `is_variable` flag.
        n_scales: number of quantisation scales (0 when unquantised).
        n_zero_points: number of zero points.
    """

    index: int
    name: str
    shape: list
    type: int
    buffer: int
    is_variable: bool
    n_scales: int
    n_zero_points: int

    @property
    def num_elements(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self):
        """Bytes TFLM allocates for the tensor's data (0 for unsized types)."""
        return self.num_elements * (TENSOR_TYPE_BYTES.get(self.type) or 0)


@dataclasses.dataclass
class Operator:
    """One operator of the subgraph.

    Attributes:
        opcode: builtin operator code (max of `builtin_code` and `deprecated_builtin_code`).
        name: builtin name if known, else `"BUILTIN_<code>"` (custom ops: `"CUSTOM"`).
        inputs: input tensor indices (-1 marks an omitted optional input).
        outputs: output tensor indices.
        intermediates: intermediate tensor indices.
    """

    opcode: int
    name: str
    inputs: list
    outputs: list
    intermediates: list


@dataclasses.dataclass
class TFLiteModel:
    """The decoded parts of a `.tflite` model (first subgraph only).

    Attributes:
        tensors: list of `Tensor`.
        operators: list of `Operator` in execution order.
        inputs: graph input tensor indices.
        outputs: graph output tensor indices.
        buffer_sizes: bytes of data held by each model buffer.
        metadata: dict metadata name -> buffer index.
        num_subgraphs: number of subgraphs in the model.
        num_operator_codes: number of entries in the operator code table.
        offline_offsets: per-tensor arena offsets from the `OfflineMemoryAllocation` metadata
            (-1: planned online), or None when the model has no such metadata.
    """

    tensors: list
    operators: list
    inputs: list
    outputs: list
    buffer_sizes: list
    metadata: dict
    num_subgraphs: int
    num_operator_codes: int
    offline_offsets: list = None

    def is_constant(self, tensor_index):
        """True when the tensor's data lives in the flatbuffer (weights, biases, shapes)."""
        t = self.tensors[tensor_index]
        return 0 <= t.buffer < len(self.buffer_sizes) and self.buffer_sizes[t.buffer] > 0


class _Table:
    """A flatbuffer table at absolute position `pos` of `buf`."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf, pos):
        self.buf = buf
        self.pos = pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, slot):
        off = 4 + 2 * slot
        if off >= self.vt_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vt + off)[0]

    def scalar(self, slot, fmt, default=0):
        o = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def _indirect(self, slot):
        o = self._field(slot)
        if not o:
            return None
        p = self.pos + o
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, slot):
        p = self._indirect(slot)
        return None if p is None else _Table(self.buf, p)

    def vector_len(self, slot):
        p = self._indirect(slot)
        return 0 if p is None else struct.unpack_from("<I", self.buf, p)[0]

    def vector(self, slot, fmt):
        p = self._indirect(slot)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        return list(struct.unpack_from("<%d%s" % (n, fmt), self.buf, p + 4))

    def tables(self, slot):
        p = self._indirect(slot)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        out = []
        for i in range(n):
            q = p + 4 + 4 * i
            out.append(_Table(self.buf, q + struct.unpack_from("<I", self.buf, q)[0]))
        return out

    def string(self, slot):
        p = self._indirect(slot)
        if p is None:
            return ""
        n = struct.unpack_from("<I", self.buf, p)[0]
        return bytes(self.buf[p + 4 : p + 4 + n]).decode("utf-8", "replace")


def read_tflite(tflite_bytes):
    """Decodes the parts of a `.tflite` flatbuffer the cost models need.

    Args:
        tflite_bytes: the model (`bytes`, `bytearray` or `memoryview`).

    Returns:
        A `TFLiteModel`.

    Raises:
        ValueError: if the bytes are not a TFLite flatbuffer (identifier `TFL3`).
    """
    buf = bytes(tflite_bytes)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ValueError(
            "Expected a TFLite flatbuffer (file identifier 'TFL3'). Received: "
            f"{len(buf)} bytes starting with {buf[:8]!r}"
        )
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    opcodes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, "b"), oc.scalar(3, "i"))
        opcodes.append(code)
    buffer_sizes = []
    for b in model.tables(4):
        n = b.vector_len(0)
        if n == 0:
            n = b.scalar(2, "Q")  # buffers stored outside the flatbuffer (> 2 GB models)
        buffer_sizes.append(n)
    metadata = {m.string(0): m.scalar(1, "I") for m in model.tables(6)}
    offline = None
    if "OfflineMemoryAllocation" in metadata:
        # int32 words: [version, subgraph, number of tensors, offset per tensor ...]
        words = model.tables(4)[metadata["OfflineMemoryAllocation"]].vector(0, "B")
        words = struct.unpack("<%di" % (len(words) // 4), bytes(words))
        offline = list(words[3 : 3 + words[2]])
    subgraphs = model.tables(2)
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tables(0)):
        q = t.table(4)
        tensors.append(
            Tensor(
                index=i,
                name=t.string(3),
                shape=t.vector(0, "i"),
                type=t.scalar(1, "b"),
                buffer=t.scalar(2, "I"),
                is_variable=bool(t.scalar(5, "B")),
                n_scales=q.vector_len(2) if q else 0,
                n_zero_points=q.vector_len(3) if q else 0,
            )
        )
    operators = []
    for op in sg.tables(3):
        code = opcodes[op.scalar(0, "I")]
        name = "CUSTOM" if code == 32 else BUILTIN_NAMES.get(code, f"BUILTIN_{code}")
        operators.append(
            Operator(
                opcode=code,
                name=name,
                inputs=op.vector(1, "i"),
                outputs=op.vector(2, "i"),
                intermediates=op.vector(8, "i"),
            )
        )
    return TFLiteModel(
        tensors=tensors,
        operators=operators,
        inputs=sg.vector(1, "i"),
        outputs=sg.vector(2, "i"),
        buffer_sizes=buffer_sizes,
        metadata=metadata,
        num_subgraphs=len(subgraphs),
        num_operator_codes=len(opcodes),
        offline_offsets=offline,
    )
