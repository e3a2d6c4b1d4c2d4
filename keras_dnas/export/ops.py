"""Which TFLite operators TensorFlow Lite Micro can run, and checks of a converted model."""

import re

from keras_dnas import _flatbuffer

# Builtin operators with a TFLite Micro kernel (`MicroMutableOpResolver::Add*`, tflite-micro
# 2025/2026). Read off the kernels registered in the `tflite_micro` Python package. Signal and
# vendor custom ops (RFFT, FILTER_BANK, ETHOSU, ...) are custom codes, not builtins, and are
# not listed. Not every kernel supports every type: TFLite Micro's int8 kernels cover the
# operators a quantised CNN / MLP / TCN converts to.
TFLM_BUILTIN_OPS = frozenset(
    {
        "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D",
        "BATCH_MATMUL", "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE",
        "CAST", "CEIL", "CONCATENATION", "CONV_2D", "COS", "CUMSUM", "DEPTH_TO_SPACE",
        "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "DYNAMIC_UPDATE_SLICE", "ELU",
        "EMBEDDING_LOOKUP", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR", "FLOOR_DIV",
        "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL",
        "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU", "LESS",
        "LESS_EQUAL", "LOG", "LOG_SOFTMAX", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR",
        "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "NEG",
        "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE",
        "REDUCE_ALL", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RESHAPE",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "ROUND", "RSQRT",
        "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND",
        "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
        "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE",
        "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "VAR_HANDLE", "WHILE",
        "ZEROS_LIKE",
    }
)  # fmt: skip

# Operators TensorFlow Lite Micro runs in float only (its kernels refuse an int8 input at
# Prepare: "input->type != kTfLiteFloat32"): in an int8 model they stop the interpreter.
# EXP is what softplus, mish, CELU and exponential activations convert to.
TFLM_FLOAT_ONLY_OPS = frozenset({"EXP", "LOG", "SIN", "COS", "SQRT", "SQUARE"})

# What to use instead, for the operators activations users pick convert to.
_FIXES = {
    "GELU": "the exact (erf) GELU has no TFLite Micro kernel; its tanh approximation "
            "(`keras.activations.gelu(x, approximate=True)`) exports to int8 operators",
    "EXP": "softplus, mish and exponential activations compute exp; ELU, SELU, CELU, "
           "swish / silu, hard_swish, tanh and sigmoid export to int8 operators",
}

# Operators that may legitimately produce a float tensor inside an int8 model: none. A float
# tensor between int8 input and int8 output means some layer has no int8 kernel.
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64")


def op_names(tflite_bytes):
    """Names of the operators of the main subgraph of a TFLite model, in execution order.

    Args:
        tflite_bytes: The model as `bytes` (e.g. from `to_tflite`) or a path to a `.tflite`.

    Returns:
        A list of builtin operator names such as `"CONV_2D"`; custom operators appear as
        `"CUSTOM:<custom code>"`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, op_names
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> op_names(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    ['FULLY_CONNECTED']
    """
    return [op.name for op in _flatbuffer.read_tflite(tflite_bytes).operators]


def _layer_hint(tensor_name, layer_names):
    """Best guess of the Keras layer behind a TF graph tensor name like `model/conv_1/Relu`.

    The export traces the model's call again in one graph, and TensorFlow makes every scope of
    that trace unique with a suffix: layer `conv2d` is scope `conv2d_1`, layer `conv2d_1` is
    `conv2d_1_2`, the model `functional` is `functional_1`. Where the first scope (the model's)
    carries such a suffix, a scope is matched without its suffix first, so a model with Keras'
    default names (`conv2d`, `conv2d_1`, ...) gets the right layer named, not the next one.
    """
    if not layer_names:
        return None
    parts = [p for p in re.split(r"[/;@:]", tensor_name) if p]
    suffixed = bool(parts) and parts[0] not in layer_names and re.search(r"_\d+$", parts[0])
    best = None
    for part in parts:
        candidates = [part]
        for _ in range(2):
            stripped = re.sub(r"_\d+$", "", candidates[-1])
            if stripped == candidates[-1]:
                break
            candidates.append(stripped)
        if suffixed and len(candidates) > 1:
            candidates = candidates[1:] + candidates[:1]
        best = next((c for c in candidates if c in layer_names), best)
    return best


def _op_layer(op, info, layer_names, output_layers, depth=3):
    """Keras layer behind an operator: from its output tensor name, or the model output it feeds."""
    outputs = [info.tensors[t] for t in op.outputs if 0 <= t < len(info.tensors)]
    for t in outputs:
        layer = _layer_hint(t.name, layer_names)
        if layer:
            return layer
    model_outputs = list(info.outputs)
    for t in outputs:
        if t.index in model_outputs and len(output_layers) == len(model_outputs):
            return output_layers[model_outputs.index(t.index)]
    if depth:
        produced = set(op.outputs)
        for consumer in info.operators:
            if op.subgraph == 0 and produced & set(consumer.inputs):
                layer = _op_layer(consumer, info, layer_names, output_layers, depth - 1)
                if layer:
                    return layer
    return None


def _describe_op(op, info, layer_names, output_layers):
    names = [info.tensors[t].name for t in op.outputs if 0 <= t < len(info.tensors)]
    text = f"{op.name} (operator #{op.index}"
    if op.subgraph:
        text += f" of subgraph {op.subgraph}"
    if names:
        text += f", output tensor {names[0]!r}"
    layer = _op_layer(op, info, layer_names, output_layers) if op.subgraph == 0 else None
    if layer:
        text += f", layer {layer!r}"
    return text + ")"


def tflm_problems(
    tflite_bytes, quantization="int8", layer_names=(), allow_float_ops=False, output_layers=()
):
    """Reasons a model would not run (or not run fully in int8) on TensorFlow Lite Micro.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.
        quantization: `"int8"` also reports float tensors computed between the int8 input
            and output; `"float32"` only checks the operators.
        layer_names: Optional Keras layer names, used to name the layer behind an operator.
        allow_float_ops: With int8, do not report float operators inside the model.
        output_layers: Optional names of the layers producing the model outputs, in order.

    Returns:
        A list of human-readable problems; empty when the model is fine.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, tflm_problems
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> tflm_problems(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    []
    """
    info = _flatbuffer.read_tflite(tflite_bytes)
    layer_names = set(layer_names or ())
    output_layers = list(output_layers or ())
    problems = []
    def describe(op):
        return _describe_op(op, info, layer_names, output_layers)

    for op in info.all_operators:
        if op.name not in TFLM_BUILTIN_OPS:
            problems.append(
                f"operator {describe(op)} is not supported by TensorFlow Lite Micro"
                + (f" ({_FIXES[op.name]})" if op.name in _FIXES else "")
            )
    if quantization == "int8":
        # An integer input (token ids into an Embedding's GATHER) stays what the model takes:
        # the converter quantises float inputs only, and TFLite Micro reads int32 indices.
        for t in info.input_tensors:
            if t.dtype not in ("INT8", "INT32"):
                problems.append(f"model input {t.name!r} is {t.dtype}, not INT8 (or INT32 "
                                "indices)")
        for t in info.output_tensors:
            if t.dtype != "INT8":
                problems.append(f"model output {t.name!r} is {t.dtype}, not INT8")
        for op in () if allow_float_ops else info.operators:
            if op.name == "DEQUANTIZE":
                continue
            if op.name in TFLM_FLOAT_ONLY_OPS and any(
                    0 <= t < len(info.tensors) and info.tensors[t].dtype == "INT8"
                    for t in op.inputs):
                problems.append(
                    f"operator {describe(op)} has no int8 kernel in TensorFlow Lite Micro (its "
                    "kernel is float only" + (f"; {_FIXES[op.name]})" if op.name in _FIXES else ")")
                )
                continue
            float_out = [
                t for t in op.outputs
                if 0 <= t < len(info.tensors) and info.tensors[t].dtype in _FLOAT_TYPES
            ]
            if float_out:
                problems.append(
                    f"operator {describe(op)} computes in float inside the int8 model (no "
                    "int8 kernel for this layer)"
                )
    return problems
