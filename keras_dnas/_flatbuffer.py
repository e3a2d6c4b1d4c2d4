"""The one `.tflite` flatbuffer reader of keras_dnas (export and cost models), without TensorFlow.

Decodes with the generated flatbuffer schema shipped with `tflite_micro` (falling back to the
copy in `ai_edge_litert`), imported on first use. Everything is returned as plain Python data,
in two views of the same decoding:

- `read_model` -> `ModelInfo`: what export needs to run and check a model (operators of every
  subgraph with fused activations, input / output tensors in user order with their
  quantisation values, activation bytes);
- `read_tflite` -> `TFLiteModel`: what the memory models need (`keras_dnas.costs.arena`,
  `flash`, `memory`): the first subgraph's tensors with TFLite Micro's sizes (type, buffer,
  variable flag, number of scales / zero points), operators with optional (-1) inputs and
  intermediates, buffer sizes, metadata and the `OfflineMemoryAllocation` plan.
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
# for types without a fixed size): the one dtype table of both views below.
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


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple
    dtype: str  # TensorType name, e.g. "INT8"
    scales: tuple
    zero_points: tuple
    quantized_dimension: int
    is_constant: bool

    @property
    def numpy_dtype(self):
        return _NUMPY_DTYPES.get(self.dtype)

    @property
    def nbytes(self):
        itemsize = np.dtype(self.numpy_dtype).itemsize if self.numpy_dtype else 8
        return int(np.prod([max(int(d), 1) for d in self.shape], dtype=np.int64)) * itemsize

    def to_dict(self):
        """Plain JSON-able description (name, shape, dtype and quantisation)."""
        return {
            "name": self.name,
            "shape": [int(d) for d in self.shape],
            "dtype": self.dtype.lower(),
            "scale": float(self.scales[0]) if len(self.scales) == 1 else None,
            "zero_point": int(self.zero_points[0]) if len(self.zero_points) == 1 else None,
        }


@dataclasses.dataclass(frozen=True)
class OpInfo:
    index: int
    name: str  # builtin name, or "CUSTOM:<code>"
    inputs: tuple
    outputs: tuple
    subgraph: int
    fused_activation: str = "NONE"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    ops: tuple  # OpInfo of every subgraph, main subgraph first
    tensors: tuple  # TensorInfo of the main subgraph
    inputs: tuple  # TensorInfo of the main subgraph's inputs, in user order
    outputs: tuple  # TensorInfo of the outputs, in user order
    input_positions: tuple  # position of each user-order input in the subgraph's input list
    output_positions: tuple
    num_tensors: int  # all subgraphs
    activation_bytes: int  # bytes of every non-constant tensor (all subgraphs)
    num_channel_params: int  # total number of quantisation scales

    @property
    def main_ops(self):
        return tuple(op for op in self.ops if op.subgraph == 0)


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


def _tensor_info(sch, tensor, index, buffers):
    q = tensor.Quantization()
    scales, zero_points, qdim = (), (), 0
    if q is not None and q.ScaleLength():
        scales = tuple(float(s) for s in q.ScaleAsNumpy())
        zero_points = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else ()
        qdim = int(q.QuantizedDimension())
    buf = tensor.Buffer()
    is_constant = False
    if 0 < buf < len(buffers):
        b = buffers[buf]
        is_constant = b.DataLength() > 0 or b.Offset() > 1
    return TensorInfo(
        index=index,
        name=tensor.Name().decode("utf-8", errors="replace"),
        shape=tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else (),
        dtype=_enum_names(sch.TensorType).get(tensor.Type(), str(tensor.Type())),
        scales=scales,
        zero_points=zero_points,
        quantized_dimension=qdim,
        is_constant=is_constant,
    )


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


def _operator_codes(sch, model):
    """`(code, name)` of every operator code: the builtin code is the larger of `builtin_code`
    and `deprecated_builtin_code`; custom operators are named `"CUSTOM:<custom_code>"`."""
    op_names = _enum_names(sch.BuiltinOperator)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = "CUSTOM:" + (custom.decode("utf-8", errors="replace") if custom else "?")
        codes.append((code, name))
    return codes


def _int_vector(length, as_numpy):
    return [int(i) for i in as_numpy()] if length else []


def read_model(tflite_bytes):
    """Parse operators, tensors, inputs and outputs of a TFLite model into a `ModelInfo`."""
    data = as_model_bytes(tflite_bytes)
    sch = schema()
    model = sch.Model.GetRootAs(data, 0)
    codes = [name for _, name in _operator_codes(sch, model)]
    buffers = [model.Buffers(i) for i in range(model.BuffersLength())]

    ops, num_tensors, activation_bytes, num_channel_params = [], 0, 0, 0
    main_tensors = ()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = tuple(
            _tensor_info(sch, sg.Tensors(t), t, buffers) for t in range(sg.TensorsLength())
        )
        if s == 0:
            main_tensors = tensors
        num_tensors += len(tensors)
        activation_bytes += sum(t.nbytes for t in tensors if not t.is_constant)
        num_channel_params += sum(len(t.scales) for t in tensors)
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name = codes[op.OpcodeIndex()]
            ops.append(
                OpInfo(
                    index=k,
                    name=name,
                    inputs=tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else (),
                    outputs=tuple(int(i) for i in op.OutputsAsNumpy())
                    if op.OutputsLength()
                    else (),
                    subgraph=s,
                    fused_activation=_fused_activation(sch, op, name),
                )
            )

    sg = model.Subgraphs(0)
    sub_inputs = [int(i) for i in sg.InputsAsNumpy()] if sg.InputsLength() else []
    sub_outputs = [int(i) for i in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    in_pos = list(range(len(sub_inputs)))
    out_pos = list(range(len(sub_outputs)))
    # With a signature (every converted Keras model has one), user order is the natural order
    # of the signature names: to_tflite names inputs input_000, input_001, ... in model order.
    for k in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(k)
        if sig.SubgraphIndex() != 0:
            continue
        ins = [(sig.Inputs(i).Name().decode(), sig.Inputs(i).TensorIndex())
               for i in range(sig.InputsLength())]
        outs = [(sig.Outputs(i).Name().decode(), sig.Outputs(i).TensorIndex())
                for i in range(sig.OutputsLength())]
        if sorted(t for _, t in ins) == sorted(sub_inputs) and sorted(
            t for _, t in outs
        ) == sorted(sub_outputs):
            in_pos = [sub_inputs.index(t) for _, t in sorted(ins, key=lambda p: _natural_key(p[0]))]
            out_pos = [
                sub_outputs.index(t) for _, t in sorted(outs, key=lambda p: _natural_key(p[0]))
            ]
        break

    return ModelInfo(
        ops=tuple(ops),
        tensors=main_tensors,
        inputs=tuple(main_tensors[sub_inputs[p]] for p in in_pos),
        outputs=tuple(main_tensors[sub_outputs[p]] for p in out_pos),
        input_positions=tuple(in_pos),
        output_positions=tuple(out_pos),
        num_tensors=num_tensors,
        activation_bytes=int(activation_bytes),
        num_channel_params=int(num_channel_params),
    )


# ----------------------------------------------------------------------------------------------
# Memory view (keras_dnas.costs): tensors as TFLite Micro allocates them
# ----------------------------------------------------------------------------------------------

# TensorType name -> bytes per element as TFLite Micro allocates it (None: no fixed size).
TYPE_BYTES = {name: size for name, (_, size) in TENSOR_TYPES.items()}


@dataclasses.dataclass
class Tensor:
    """One tensor of the first subgraph, as TFLite Micro sizes it.

    Attributes:
        index: position in the subgraph's tensor list.
        name: tensor name.
        shape: list of dimensions (empty for a scalar). The cost models may put keras tensors
            here (symbolic channel counts).
        type: TensorType enum value.
        dtype: TensorType name, e.g. `"INT8"`.
        itemsize: bytes per element (0 for types without a fixed size).
        buffer: index into the model's buffers.
        is_variable: the `is_variable` flag.
        n_scales: number of quantisation scales (0 when unquantised).
        n_zero_points: number of zero points.
    """

    index: int
    name: str
    shape: list
    type: int
    dtype: str
    itemsize: int
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
        """Bytes TFLite Micro allocates for the tensor's data (0 for unsized types)."""
        return self.num_elements * self.itemsize


@dataclasses.dataclass
class Operator:
    """One operator of the first subgraph.

    Attributes:
        opcode: builtin operator code (max of `builtin_code` and `deprecated_builtin_code`).
        name: builtin name (`"CONV_2D"`, ...; custom operators: `"CUSTOM:<code>"`).
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
    """The first subgraph of a `.tflite` model with what the memory models need.

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


def read_tflite(tflite_bytes):
    """Decode a `.tflite` model into a `TFLiteModel` (the memory view, first subgraph).

    Args:
        tflite_bytes: the model (bytes-like) or a path to a `.tflite` file.

    Returns:
        A `TFLiteModel`.

    Raises:
        ValueError: if the data is not a TFLite flatbuffer (identifier `TFL3`).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> m = read_tflite(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    >>> [op.name for op in m.operators], [t.nbytes for t in m.tensors if t.index in m.inputs]
    (['FULLY_CONNECTED'], [4])
    """
    data = as_model_bytes(tflite_bytes)
    sch = schema()
    model = sch.Model.GetRootAs(data, 0)
    type_names = _enum_names(sch.TensorType)
    codes = _operator_codes(sch, model)
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
    sg = model.Subgraphs(0)
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        dtype = type_names.get(t.Type(), str(t.Type()))
        tensors.append(
            Tensor(
                index=i,
                name=t.Name().decode("utf-8", errors="replace"),
                shape=_int_vector(t.ShapeLength(), t.ShapeAsNumpy),
                type=int(t.Type()),
                dtype=dtype,
                itemsize=TYPE_BYTES.get(dtype) or 0,
                buffer=int(t.Buffer()),
                is_variable=bool(t.IsVariable()),
                n_scales=q.ScaleLength() if q is not None else 0,
                n_zero_points=q.ZeroPointLength() if q is not None else 0,
            )
        )
    operators = []
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code, name = codes[op.OpcodeIndex()]
        operators.append(
            Operator(
                opcode=code,
                name=name,
                inputs=_int_vector(op.InputsLength(), op.InputsAsNumpy),
                outputs=_int_vector(op.OutputsLength(), op.OutputsAsNumpy),
                intermediates=_int_vector(op.IntermediatesLength(), op.IntermediatesAsNumpy),
            )
        )
    return TFLiteModel(
        tensors=tensors,
        operators=operators,
        inputs=_int_vector(sg.InputsLength(), sg.InputsAsNumpy),
        outputs=_int_vector(sg.OutputsLength(), sg.OutputsAsNumpy),
        buffer_sizes=buffer_sizes,
        metadata=metadata,
        num_subgraphs=int(model.SubgraphsLength()),
        num_operator_codes=int(model.OperatorCodesLength()),
        offline_offsets=offline,
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
