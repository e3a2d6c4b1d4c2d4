"""The one `.tflite` flatbuffer reader of keras_dnas (export and cost models), without TensorFlow.

Decodes with the generated flatbuffer schema shipped with `tflite_micro` (falling back to the
copy in `ai_edge_litert`), imported on first use. `read_tflite` returns one plain-data view,
`TFLiteModel`, that export, measurement and the memory models (`keras_dnas.costs.arena`,
`keras_dnas.memory`) all read: the main subgraph's tensors with TFLite Micro's sizes and their
quantisation, operators (with optional (-1) inputs, intermediates and fused activations),
inputs and outputs in user order, buffer sizes, metadata and the `OfflineMemoryAllocation` plan.
"""

import dataclasses
import os
import re
import struct

import numpy as np

_FILE_IDENTIFIER = b"TFL3"


def schema():
    """The generated `schema_py_generated` module (TFLite Micro's copy, else LiteRT's)."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError:  # pragma: no cover - tflite_micro is a hard dependency
        from ai_edge_litert import schema_py_generated
    return schema_py_generated


def _enum_names(enum_cls):
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}


# TensorType name -> (NumPy dtype or None, bytes per element as TFLite Micro allocates it, None
# for types without a fixed size): the one dtype table.
TENSOR_TYPES = {
    "FLOAT32": (np.float32, 4),
    "FLOAT16": (np.float16, 2),
    "INT32": (np.int32, 4),
    "UINT8": (np.uint8, 1),
    "INT64": (np.int64, 8),
    "STRING": (None, None),
    "BOOL": (np.bool_, 1),
    "INT16": (np.int16, 2),
    "COMPLEX64": (None, 8),
    "INT8": (np.int8, 1),
    "FLOAT64": (np.float64, 8),
    "COMPLEX128": (None, 16),
    "UINT64": (np.uint64, 8),
    "RESOURCE": (None, None),
    "VARIANT": (None, None),
    "UINT32": (np.uint32, 4),
    "UINT16": (np.uint16, 2),
    "INT4": (np.int8, 1),  # unpacked to one byte per element by TFLite Micro
    "BFLOAT16": (None, 2),
    "INT2": (None, 1),
}
_NUMPY_DTYPES = {name: dtype for name, (dtype, _) in TENSOR_TYPES.items() if dtype is not None}
TYPE_BYTES = {name: size for name, (_, size) in TENSOR_TYPES.items()}


def as_model_bytes(tflite_bytes):
    """`bytes` of a TFLite model given as bytes-like or as a path to a `.tflite` file."""
    if isinstance(tflite_bytes, (str, os.PathLike)):
        with open(tflite_bytes, "rb") as f:
            data = f.read()
    elif isinstance(tflite_bytes, (bytes, bytearray, memoryview)):
        data = bytes(tflite_bytes)
    else:
        raise ValueError(
            "Expected the TFLite model as bytes (the result of `to_tflite`) or a path to a "
            f".tflite file. Received: tflite_bytes of type {type(tflite_bytes).__name__}"
        )
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise ValueError(
            "The data is not a TFLite flatbuffer (missing the 'TFL3' file identifier). "
            f"Received: {len(data)} bytes starting with {data[:8]!r}"
        )
    return data


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _fused_activation(sch, op, op_name):
    options_cls = {
        "CONV_2D": "Conv2DOptions",
        "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
        "FULLY_CONNECTED": "FullyConnectedOptions",
        "ADD": "AddOptions",
        "SUB": "SubOptions",
        "MUL": "MulOptions",
        "CONCATENATION": "ConcatenationOptions",
        "AVERAGE_POOL_2D": "Pool2DOptions",
        "MAX_POOL_2D": "Pool2DOptions",
    }.get(op_name)
    table = op.BuiltinOptions()
    if options_cls is None or table is None:
        return "NONE"
    options = getattr(sch, options_cls)()
    options.Init(table.Bytes, table.Pos)
    return _enum_names(sch.ActivationFunctionType).get(options.FusedActivationFunction(), "NONE")


def _adjoint(sch, op, op_name):
    table = op.BuiltinOptions() if op_name == "BATCH_MATMUL" else None
    if table is None:
        return (False, False)
    options = sch.BatchMatMulOptions()
    options.Init(table.Bytes, table.Pos)
    return (bool(options.AdjX()), bool(options.AdjY()))


def _operator_names(sch, model):
    """The name of every operator code: the builtin code is the larger of `builtin_code` and
    `deprecated_builtin_code`; custom operators are named `"CUSTOM:<custom_code>"`."""
    op_names = _enum_names(sch.BuiltinOperator)
    names = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = "CUSTOM:" + (custom.decode("utf-8", errors="replace") if custom else "?")
        names.append(name)
    return names


def _int_vector(length, as_numpy):
    return [int(i) for i in as_numpy()] if length else []


@dataclasses.dataclass
class Tensor:
    """One tensor of the main subgraph, as TFLite Micro sizes it.

    Attributes:
        index: position in the subgraph's tensor list.
        name: tensor name.
        shape: the dimensions (empty for a scalar). The memory models put their rescaled
            channel counts here.
        dtype: TensorType name, e.g. `"INT8"`.
        itemsize: bytes per element (0 for types without a fixed size).
        buffer: index into the model's buffers.
        is_variable: the `is_variable` flag.
        is_constant: the data lives in the flatbuffer (weights, biases, shapes).
        n_scales: number of quantisation scales (0 when unquantised); the memory models
            rescale it without values.
        n_zero_points: number of zero points.
        scales, zero_points: the quantisation values as read.
    """

    index: int
    name: str
    shape: tuple
    dtype: str
    itemsize: int
    buffer: int
    is_variable: bool
    is_constant: bool
    n_scales: int
    n_zero_points: int
    scales: tuple = ()
    zero_points: tuple = ()

    @property
    def numpy_dtype(self):
        return _NUMPY_DTYPES.get(self.dtype)

    @property
    def num_elements(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self):
        """Bytes TFLite Micro allocates for the tensor's data (0 for unsized types)."""
        return self.num_elements * self.itemsize

    def to_dict(self):
        """Plain JSON-able description (name, shape, dtype and quantisation)."""
        return {
            "name": self.name,
            "shape": [int(d) for d in self.shape],
            "dtype": self.dtype.lower(),
            "scale": float(self.scales[0]) if len(self.scales) == 1 else None,
            "zero_point": int(self.zero_points[0]) if len(self.zero_points) == 1 else None,
        }


@dataclasses.dataclass
class Operator:
    """One operator.

    Attributes:
        name: builtin name (`"CONV_2D"`, ...; custom operators: `"CUSTOM:<code>"`).
        inputs: input tensor indices (-1 marks an omitted optional input).
        outputs: output tensor indices.
        intermediates: intermediate tensor indices.
        index: position in its subgraph's operator list.
        subgraph: the subgraph it belongs to (0: the main one).
        fused_activation: the fused activation of its options (`"NONE"`, `"RELU"`, ...).
        adjoint: BATCH_MATMUL's `(adj_x, adj_y)` options (which operands come transposed).
    """

    name: str
    inputs: list
    outputs: list
    intermediates: list
    index: int = 0
    subgraph: int = 0
    fused_activation: str = "NONE"
    adjoint: tuple = (False, False)


@dataclasses.dataclass
class TFLiteModel:
    """A decoded `.tflite` model: the one view export, measurement and the memory models read.

    Attributes:
        tensors: list of `Tensor` of the main subgraph.
        operators: list of `Operator` of the main subgraph, in execution order.
        inputs: the main subgraph's input tensor indices, in user order (the natural order of
            the signature names: `to_tflite` names them input_000, input_001, ... in model
            order; the subgraph's own order without a signature).
        outputs: the output tensor indices, in user order.
        buffer_sizes: bytes of data held by each model buffer.
        metadata: dict metadata name -> buffer index.
        num_subgraphs: number of subgraphs in the model.
        offline_offsets: per-tensor arena offsets from the `OfflineMemoryAllocation` metadata
            (-1: planned online), or None when the model has no such metadata.
        all_operators: `Operator` of every subgraph, the main subgraph's first.
        input_positions: position of each user-order input in the subgraph's input list.
        output_positions: the same for the outputs.
        num_tensors: tensors of every subgraph.
        activation_bytes: bytes of every non-constant tensor of every subgraph (unknown
            dimensions count 1, types without a NumPy dtype 8 bytes: sizes a host arena).
        num_channel_params: quantisation scales of every subgraph.
        output_names: the signature's name of each output, in user order (a dict-output
            model's keys, `output_0`, ... for a list; empty without a signature).

    The memory models' rescaled copies (`keras_dnas.memory`) replace `tensors`, `operators`,
    `inputs` and `outputs` only; the whole-file fields after them describe the file as read.
    """

    tensors: list
    operators: list
    inputs: list
    outputs: list
    buffer_sizes: list
    metadata: dict
    num_subgraphs: int
    offline_offsets: list = None
    all_operators: list = ()
    input_positions: tuple = ()
    output_positions: tuple = ()
    num_tensors: int = 0
    activation_bytes: int = 0
    num_channel_params: int = 0
    output_names: tuple = ()

    def is_constant(self, tensor_index):
        """True when the tensor's data lives in the flatbuffer (weights, biases, shapes)."""
        t = self.tensors[tensor_index]
        return 0 <= t.buffer < len(self.buffer_sizes) and self.buffer_sizes[t.buffer] > 0

    @property
    def input_tensors(self):
        """The input `Tensor`s, in user order."""
        return [self.tensors[i] for i in self.inputs]

    @property
    def output_tensors(self):
        """The output `Tensor`s, in user order."""
        return [self.tensors[i] for i in self.outputs]


def _tensor(t, index, type_names, buffer_sizes):
    q = t.Quantization()
    dtype = type_names.get(t.Type(), str(t.Type()))
    scales = tuple(float(v) for v in q.ScaleAsNumpy()) if q is not None and q.ScaleLength() else ()
    zero_points = (tuple(int(z) for z in q.ZeroPointAsNumpy())
                   if q is not None and q.ZeroPointLength() else ())
    buf = int(t.Buffer())
    return Tensor(
        index=index,
        name=t.Name().decode("utf-8", errors="replace"),
        shape=tuple(_int_vector(t.ShapeLength(), t.ShapeAsNumpy)),
        dtype=dtype,
        itemsize=TYPE_BYTES.get(dtype) or 0,
        buffer=buf,
        is_variable=bool(t.IsVariable()),
        is_constant=0 <= buf < len(buffer_sizes) and buffer_sizes[buf] > 0,
        n_scales=len(scales),
        n_zero_points=len(zero_points),
        scales=scales,
        zero_points=zero_points,
    )


def _user_order(model, sub_inputs, sub_outputs):
    """Positions of the inputs and outputs in user order (see `TFLiteModel.inputs`), and
    the outputs' signature names in that order (empty without a signature)."""
    in_pos, out_pos, names = list(range(len(sub_inputs))), list(range(len(sub_outputs))), ()
    for k in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(k)
        if sig.SubgraphIndex() != 0:
            continue
        ins = [(sig.Inputs(i).Name().decode(), sig.Inputs(i).TensorIndex())
               for i in range(sig.InputsLength())]
        outs = [(sig.Outputs(i).Name().decode(), sig.Outputs(i).TensorIndex())
                for i in range(sig.OutputsLength())]
        if (sorted(t for _, t in ins) == sorted(sub_inputs)
                and sorted(t for _, t in outs) == sorted(sub_outputs)):
            in_pos = [sub_inputs.index(t) for _, t in sorted(ins, key=lambda p: _natural_key(p[0]))]
            outs = sorted(outs, key=lambda p: _natural_key(p[0]))
            out_pos = [sub_outputs.index(t) for _, t in outs]
            names = tuple(name for name, _ in outs)
        break
    return in_pos, out_pos, names


def read_tflite(tflite_bytes):
    """Decode a `.tflite` model into a `TFLiteModel`.

    Args:
        tflite_bytes: the model (bytes-like), a path to a `.tflite` file, or a `TFLiteModel`
            (returned as it is, so a function can take a model decoded once or its bytes).

    Returns:
        A `TFLiteModel`.

    Raises:
        ValueError: if the data is not a TFLite flatbuffer (identifier `TFL3`).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> m = read_tflite(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    >>> [op.name for op in m.operators], [t.nbytes for t in m.input_tensors]
    (['FULLY_CONNECTED'], [4])
    """
    if isinstance(tflite_bytes, TFLiteModel):
        return tflite_bytes
    data = as_model_bytes(tflite_bytes)
    sch = schema()
    model = sch.Model.GetRootAs(data, 0)
    type_names = _enum_names(sch.TensorType)
    op_names = _operator_names(sch, model)
    buffer_sizes = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        # Buffers stored outside the flatbuffer (> 2 GB models) give offset and size.
        buffer_sizes.append(b.DataLength() or (int(b.Size()) if b.Offset() > 1 else 0))
    metadata = {}
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        metadata[m.Name().decode("utf-8", errors="replace")] = int(m.Buffer())
    offline = None
    if "OfflineMemoryAllocation" in metadata:
        # int32 words: [version, subgraph, number of tensors, offset per tensor ...]
        raw = model.Buffers(metadata["OfflineMemoryAllocation"]).DataAsNumpy().tobytes()
        words = struct.unpack("<%di" % (len(raw) // 4), raw)
        offline = list(words[3 : 3 + words[2]])
    subgraphs, operators, activation_bytes = [], [], 0
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = [_tensor(sg.Tensors(i), i, type_names, buffer_sizes)
                   for i in range(sg.TensorsLength())]
        subgraphs.append(tensors)
        activation_bytes += sum(
            int(np.prod([max(d, 1) for d in t.shape], dtype=np.int64))
            * (np.dtype(t.numpy_dtype).itemsize if t.numpy_dtype else 8)
            for t in tensors if not t.is_constant)
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name = op_names[op.OpcodeIndex()]
            operators.append(Operator(
                name=name,
                inputs=_int_vector(op.InputsLength(), op.InputsAsNumpy),
                outputs=_int_vector(op.OutputsLength(), op.OutputsAsNumpy),
                intermediates=_int_vector(op.IntermediatesLength(), op.IntermediatesAsNumpy),
                index=k,
                subgraph=s,
                fused_activation=_fused_activation(sch, op, name),
                adjoint=_adjoint(sch, op, name),
            ))
    sg = model.Subgraphs(0)
    sub_inputs = _int_vector(sg.InputsLength(), sg.InputsAsNumpy)
    sub_outputs = _int_vector(sg.OutputsLength(), sg.OutputsAsNumpy)
    in_pos, out_pos, out_names = _user_order(model, sub_inputs, sub_outputs)
    return TFLiteModel(
        tensors=subgraphs[0],
        operators=[op for op in operators if op.subgraph == 0],
        inputs=[sub_inputs[p] for p in in_pos],
        outputs=[sub_outputs[p] for p in out_pos],
        buffer_sizes=buffer_sizes,
        metadata=metadata,
        num_subgraphs=int(model.SubgraphsLength()),
        offline_offsets=offline,
        all_operators=operators,
        input_positions=tuple(in_pos),
        output_positions=tuple(out_pos),
        num_tensors=sum(len(t) for t in subgraphs),
        activation_bytes=int(activation_bytes),
        num_channel_params=sum(t.n_scales for ts in subgraphs for t in ts),
        output_names=out_names,
    )


def read_constant(tflite_bytes, tensor_index):
    """The data of constant tensor ``tensor_index`` of the first subgraph as a flat NumPy
    array of its type (e.g. the int32 shape operand of a RESHAPE), or None without data."""
    data = as_model_bytes(tflite_bytes)
    sch = schema()
    model = sch.Model.GetRootAs(data, 0)
    tensor = model.Subgraphs(0).Tensors(tensor_index)
    buf = model.Buffers(tensor.Buffer())
    dtype = _NUMPY_DTYPES.get(_enum_names(sch.TensorType).get(tensor.Type()))
    if dtype is None or not buf.DataLength():
        return None
    return np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtype)
