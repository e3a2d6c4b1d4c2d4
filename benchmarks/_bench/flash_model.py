"""Flash size of a full-int8 TFLite model, from per-layer geometry.

`len(model.tflite)` is modelled as

    model constant
    + sum over layers of  payload(layer) + overhead[layer kind]
    + opcode bytes x number of distinct operator kinds
    + tensor-name bytes

- **payload** (exact): int8 weights (conv `taps*cin*cout`, depthwise `taps*cin*depth_multiplier`,
  dense `cin*cout`), int32 biases (`4*cout`; TFLite always keeps a bias for conv and depthwise,
  even with `use_bias=False`) and per-channel quantisation parameters: one float32 scale and one
  int64 zero point per output channel for the weights and again for the bias (24 B x cout).
- **overhead[kind]** (fitted): the flatbuffer tables of the layer's operator(s), its output
  activation tensor(s) with their per-tensor quantisation, the constant tensors' tables and
  buffers (with their padding), and small int32 constants (axes, shapes, paddings).
- **opcode bytes** (fitted): one `OperatorCode` entry per distinct TFLite builtin.
- **model constant** (fitted): header, subgraph, graph-input tensor, signature, metadata.
- **names**: TFLite keeps every tensor's name (fused names can be hundreds of bytes: a conv with
  folded BatchNorm and ReLU lists all of them). Names do not depend on channel counts, so pass
  the names of a real conversion (`tflite_name_bytes`), or 0 for a flatbuffer whose names were
  stripped; the default is a rough per-layer allowance (`DEFAULT_NAME_BYTES`).

Channel counts may be Python numbers or keras tensors (the soft counts of a search); only
`+` and `*` touch them, so the result is differentiable in the counts.

The constants were fitted by least squares on 120 real conversions (chains of 0..3 layers of
every kind appended to small base models, and 40 random small CNNs; TF 2.21 converter, batch-1
full-int8 export as `keras_dnas.export.to_tflite` does it) by
`benchmarks/fit_flash_constants.py`: rms error 26 B, largest 145 B. The residual is flatbuffer
layout noise a count model cannot see (vtable sharing, 4 / 8-byte padding, identical int32
constants stored once). On the held-out toy models of `tests/test_costs_memory.py` (and their
narrower variants) the error is within 2 % or 200 B for every one, largest 187 B (1.8 %, a
Conv1D TCN); with the default name allowance instead of real names, rms 127 B on 56 models.
"""

from keras_dnas import _flatbuffer
from keras_dnas._ste import align_up as _align_up
from keras_dnas._ste import aligned as _aligned
from keras_dnas.costs.arena import (
    ARENA_ALIGNMENT,
    TAIL_OPS,
    TAIL_STRUCTS,
    _is_number,
    _UNKNOWN_OP,
)

# ---- Fitted constants (benchmarks/fit_flash_constants.py) ------------------------------------
FLASH_MODEL_BYTES = 684  # header, subgraph, one graph input, signature, metadata
FLASH_OPCODE_BYTES = 57  # per distinct builtin operator (OperatorCode, options vtable)
FLASH_LAYER_OVERHEAD = {
    "conv": 330,
    "conv1d": 342,  # the CONV_2D; the RESHAPEs around a run of Conv1D are counted per run
    "depthwise": 350,
    "dense": 296,
    "add": 123,
    "subtract": 135,
    "multiply": 135,
    "maximum": 115,
    "minimum": 115,
    "average": 310,  # ADD, then MUL by a 1 / n constant
    "concat": 143,
    "pool": 145,
    "avg_pool": 159,
    "global_pool": 165,
    "global_max_pool": 177,
    "flatten": 145,
    "reshape": 156,
    "pad": 168,
    "activation": 110,  # an unfused activation op (LOGISTIC, TANH, RELU after a pool, ...)
    "softmax": 105,
    "batchnorm": 486,  # MUL and ADD with per-channel constants
    "fused_activation": 5,
}
FIT_MAX_ERROR = 145  # bytes: largest residual of the least-squares fit (120 conversions)
FIT_RMS_ERROR = 26  # bytes

# Each per-channel quantised tensor stores a float32 scale and an int64 zero point per channel.
QUANT_BYTES_PER_CHANNEL = 4 + 8

# Layer kind -> TFLite operator(s) it converts to (used to count distinct operator codes).
KIND_OPCODES = {
    "conv": ("CONV_2D",),
    "conv1d": ("CONV_2D", "RESHAPE"),
    "depthwise": ("DEPTHWISE_CONV_2D",),
    "dense": ("FULLY_CONNECTED",),
    "add": ("ADD",),
    "subtract": ("SUB",),
    "multiply": ("MUL",),
    "maximum": ("MAXIMUM",),
    "minimum": ("MINIMUM",),
    "average": ("ADD", "MUL"),
    "concat": ("CONCATENATION",),
    "pool": ("MAX_POOL_2D",),
    "avg_pool": ("AVERAGE_POOL_2D",),
    "global_pool": ("MEAN",),
    "global_max_pool": ("REDUCE_MAX",),
    "flatten": ("RESHAPE",),
    "reshape": ("RESHAPE",),
    "pad": ("PAD",),
    "activation": ("LOGISTIC",),
    "softmax": ("SOFTMAX",),
    "batchnorm": ("MUL", "ADD"),
}

# Kinds that add nothing to the flatbuffer (folded or fused by the converter, or no-ops).
FREE_KINDS = ("dropout", "fused_batchnorm")

# Name allowance per layer kind (bytes) when no conversion is at hand, fitted by least squares
# on the names of 56 conversions of models with Keras default names ("functional_N",
# "conv2d_K"): median error 1 %, largest 9 % of the name bytes. A folded BatchNorm or a fused
# ReLU lengthens the fused tensor names of its conv / dense. Explicit short layer names give
# far fewer bytes: prefer `tflite_name_bytes` of a real conversion.
DEFAULT_NAME_BYTES = {
    "conv": 240,
    "conv1d": 560,
    "depthwise": 320,
    "dense": 130,
    "fused_batchnorm": 480,
    "fused_activation": 110,
    "global_pool": 150,
    "global_max_pool": 140,
    "flatten": 80,
    "reshape": 80,
    "input": 0,
    "dropout": 0,
}
DEFAULT_NAME_BYTES_OTHER = 50
DEFAULT_MODEL_NAME_BYTES = 70  # the graph input and output names


def _channel_payload(op, taps, cin, cout, use_bias, depth_multiplier):
    """int8 weights + int32 bias + per-channel scale / zero point of the weights and bias."""
    if op in ("conv", "conv1d"):
        weights = taps * cin * cout
        bias_channels = cout  # the converter always gives a conv a bias
    elif op == "depthwise":
        cout = cin * depth_multiplier
        weights = taps * cout
        bias_channels = cout
    elif op == "dense":
        weights = cin * cout
        bias_channels = cout if use_bias else 0
    else:
        return 0
    return weights + 4 * bias_channels + QUANT_BYTES_PER_CHANNEL * (cout + bias_channels)


def _check_kind(op):
    if op not in FLASH_LAYER_OVERHEAD and op not in FREE_KINDS and op != "input":
        raise ValueError(
            "Unknown layer kind for the flash model. Expected one of "
            f"{sorted(FLASH_LAYER_OVERHEAD) + list(FREE_KINDS) + ['input']}. Received: op={op!r}"
        )


def layer_flash_bytes(op, taps=1, cin=0, cout=0, use_bias=True, n_activations=1,
                      depth_multiplier=1):
    """Flash bytes one layer adds to a full-int8 `.tflite` (names and opcode table excluded).

    Args:
        op: layer kind: "conv" (2-D), "conv1d", "depthwise", "dense", "add", "subtract",
            "multiply", "maximum", "minimum", "average", "concat", "pool", "avg_pool",
            "global_pool", "global_max_pool", "flatten", "reshape", "pad", "activation"
            (an activation the converter cannot fuse, e.g. sigmoid), "softmax", "batchnorm"
            (not foldable into a preceding conv / dense), "fused_activation" (ReLU / ReLU6
            fused into the preceding conv / dense / add), "input" (a graph input: the first
            one is part of the model constant, each further one costs an activation tensor),
            or a free kind (`FREE_KINDS`: "dropout", "fused_batchnorm").
        taps: kernel taps (product of the kernel size) for conv / depthwise.
        cin: input channels (conv, depthwise, dense). Number or keras tensor.
        cout: output channels (conv, dense). Number or keras tensor.
        use_bias: whether a dense layer has a bias (conv / depthwise always get one in TFLite).
        n_activations: activation tensors the layer produces in TFLite when this differs from
            the kind's usual one (each extra one is costed like an unfused activation op).
        depth_multiplier: depthwise channel multiplier.

    Returns:
        Bytes (a Python number, or a keras tensor when a channel count is a tensor).

    Raises:
        ValueError: for an unknown `op`.

    Example:

    >>> layer_flash_bytes("conv", taps=9, cin=8, cout=16) > 9 * 8 * 16 + 4 * 16
    True
    """
    _check_kind(op)
    if op in FREE_KINDS or op == "input":
        return 0
    extra = (n_activations - 1) * FLASH_LAYER_OVERHEAD["activation"]
    return (
        _channel_payload(op, taps, cin, cout, use_bias, depth_multiplier)
        + FLASH_LAYER_OVERHEAD[op]
        + extra
    )


def flash_features(layers):
    """Splits a layer list into the exact payload and the counts the fitted constants multiply.

    Args:
        layers: as for `model_flash_bytes`.

    Returns:
        `(payload, counts, default_name_bytes)`: payload bytes (number or tensor), a dict
        `{"model": 1, "opcode": distinct operator codes, <kind>: number of layers, ...}` and the
        default name allowance.
    """
    layers = [dict(layer) for layer in layers]
    names = DEFAULT_MODEL_NAME_BYTES
    for layer in layers:
        _check_kind(layer["op"])
        names += DEFAULT_NAME_BYTES.get(layer["op"], DEFAULT_NAME_BYTES_OTHER)
    n_inputs = sum(layer["op"] == "input" for layer in layers)
    layers = [layer for layer in layers if layer["op"] not in FREE_KINDS + ("input",)]
    payload = 0
    counts = {"model": 1}
    if n_inputs > 1:  # the model constant holds one graph input tensor
        counts["activation"] = n_inputs - 1
    opcodes = set()

    def add(kind, n=1):
        counts[kind] = counts.get(kind, 0) + n

    for k, layer in enumerate(layers):
        spec = dict(layer)
        op = spec.pop("op")
        causal = spec.pop("padding", None) == "causal"
        n_act = spec.pop("n_activations", 1)
        payload = payload + _channel_payload(
            op, spec.get("taps", 1), spec.get("cin", 0), spec.get("cout", 0),
            spec.get("use_bias", True), spec.get("depth_multiplier", 1))
        add(op)
        if n_act != 1:
            add("activation", n_act - 1)
        opcodes.update(KIND_OPCODES.get(op, ()))
        if op == "conv1d":
            # Conv1D runs as RESHAPE -> CONV_2D ... CONV_2D -> RESHAPE; causal padding is a PAD
            # on the 3-D tensor, which ends the run.
            prev_run = k > 0 and layers[k - 1]["op"] == "conv1d" and not causal
            nxt = layers[k + 1] if k + 1 < len(layers) else {}
            next_run = nxt.get("op") == "conv1d" and nxt.get("padding") != "causal"
            add("reshape", int(not prev_run) + int(not next_run))
            opcodes.add("RESHAPE")
            if causal:
                add("pad")
                opcodes.add("PAD")
    counts["opcode"] = len(opcodes)
    return payload, counts, names


def model_flash_bytes(layers, name_bytes=None):
    """Predicted `len(tflite)` of a full-int8 model from its layers.

    Args:
        layers: iterable of dicts with the keyword arguments of `layer_flash_bytes` (at least
            `op`), in execution order. A "conv1d" dict may also carry `padding` ("causal" adds
            the PAD the converter emits); consecutive Conv1D layers share the RESHAPE pair
            around them. Channel counts may be keras tensors.
        name_bytes: bytes of tensor names in the flatbuffer. Use `tflite_name_bytes(tflite)`
            of a conversion of the same model (names do not change with channel counts), 0 if
            names are stripped, or None for a rough default allowance.

    Returns:
        Predicted flash bytes (number or keras tensor).

    Example:

    >>> layers = [dict(op="input"), dict(op="conv", taps=9, cin=3, cout=8),
    ...           dict(op="global_pool"), dict(op="dense", cin=8, cout=4)]
    >>> model_flash_bytes(layers, name_bytes=0) > 9 * 3 * 8 + 8 * 4
    True
    """
    payload, counts, names = flash_features(layers)
    constants = dict(FLASH_LAYER_OVERHEAD, model=FLASH_MODEL_BYTES, opcode=FLASH_OPCODE_BYTES)
    overhead = sum(constants[k] * n for k, n in counts.items())
    return payload + overhead + (names if name_bytes is None else name_bytes)


# ----------------------------------------------------------------------------------------------
# Measuring a real flatbuffer
# ----------------------------------------------------------------------------------------------


def _string_bytes(s):
    n = 4 + len(s.encode("utf-8")) + 1  # length prefix, characters, NUL
    return (n + 3) // 4 * 4


def tflite_name_bytes(tflite):
    """Bytes the tensor names take in a `.tflite` flatbuffer (length prefix, NUL, padding).

    Args:
        tflite: the model bytes (or a decoded model).

    Returns:
        int.
    """
    model = _flatbuffer.read_tflite(tflite)
    return sum(_string_bytes(t.name) for t in model.tensors)


def tflite_payload_bytes(tflite):
    """The part of a `.tflite` that `layer_flash_bytes` models exactly: the weights, biases and
    per-channel scales / zero points of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED.

    Args:
        tflite: the model bytes (or a decoded model).

    Returns:
        int.
    """
    model = _flatbuffer.read_tflite(tflite)
    total = 0
    for op in model.operators:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        for t in op.inputs[1:3]:
            if t >= 0 and model.is_constant(t):
                tensor = model.tensors[t]
                total += model.buffer_sizes[tensor.buffer]
                total += 4 * tensor.n_scales + 8 * tensor.n_zero_points
    return total


# ----------------------------------------------------------------------------- persistent tail
# (moved from keras_dnas/costs/arena.py: the arena model of plan-level layer lists, used with
# this flash model only; the runtime replays the real .tflite instead.)

# Plan-level layer kinds (the layer dicts of this module) -> (TFLite operators,
# tensors they add: outputs, weights, biases, int32 constants). Conv1D runs add RESHAPEs and a
# causal Conv1D a PAD, as in `flash_features`.
_KIND_TAIL = {
    "conv": (("CONV_2D",), 3),
    "conv1d": (("CONV_2D",), 3),
    "depthwise": (("DEPTHWISE_CONV_2D",), 3),
    "dense": (("FULLY_CONNECTED",), 3),
    "add": (("ADD",), 1),
    "subtract": (("SUB",), 1),
    "multiply": (("MUL",), 1),
    "maximum": (("MAXIMUM",), 1),
    "minimum": (("MINIMUM",), 1),
    "average": (("ADD", "MUL"), 3),
    "concat": (("CONCATENATION",), 1),
    "pool": (("MAX_POOL_2D",), 1),
    "avg_pool": (("AVERAGE_POOL_2D",), 1),
    "global_pool": (("MEAN",), 2),
    "global_max_pool": (("REDUCE_MAX",), 2),
    "flatten": (("RESHAPE",), 2),
    "reshape": (("RESHAPE",), 2),
    "pad": (("PAD",), 2),
    "activation": (("LOGISTIC",), 1),
    "softmax": (("SOFTMAX",), 1),
    "batchnorm": (("MUL", "ADD"), 4),
}
_KIND_SCRATCH = {"global_pool": 3, "global_max_pool": 2}  # scratch requests (handles)


def _align_number(n, alignment):
    return n if alignment <= 1 else _align_up(n, alignment)


def _op_tail(name, pointer_bytes):
    opdata_64, opdata_32, builtin, builtin_align, _ = TAIL_OPS.get(name, _UNKNOWN_OP)
    opdata = opdata_64 if pointer_bytes == 8 else opdata_32
    st = TAIL_STRUCTS[pointer_bytes]
    return _align_up(opdata, ARENA_ALIGNMENT) + _align_number(builtin, 4) + st["node"]


def layer_tail_bytes(op, cin=0, cout=0, depth_multiplier=1, pointer_bytes=4, **unused):
    """Persistent (tail) bytes one layer adds to the TFLite Micro arena.

    The per-channel output multipliers and shifts of a conv / depthwise / dense layer
    (2 x 4 B x Cout, each 16-byte aligned) are the part that depends on channels; the rest is
    the layer's OpData, builtin options, `NodeAndRegistration` and `TfLiteEvalTensor`s (see
    `TAIL_OPS`, `TAIL_STRUCTS`). Alignment between allocations is approximated, so a sum of
    layers is within a few percent of `tflite_tail` (which replays it exactly).

    Args:
        op: layer kind, as in `layer_flash_bytes`.
        cin: input channels (depthwise: the output is `cin * depth_multiplier`).
        cout: output channels (conv, conv1d, dense). Number or keras tensor.
        depth_multiplier: depthwise channel multiplier.
        pointer_bytes: 4 for a 32-bit MCU (default), 8 for the 64-bit Python interpreter.
        **unused: other layer-dict keys (taps, use_bias, ...) are accepted and ignored.

    Returns:
        Bytes (number, or keras tensor when a channel count is a tensor).

    Example:

    >>> layer_tail_bytes("conv", cout=16, pointer_bytes=8)
    372
    """
    if op not in _KIND_TAIL:
        return 0  # input, dropout, folded batchnorm, fused activation
    st = TAIL_STRUCTS[pointer_bytes]
    names, n_tensors = _KIND_TAIL[op]
    fixed = sum(_op_tail(n, pointer_bytes) for n in names) + st["eval_tensor"] * n_tensors
    fixed += st["pointer"] * _KIND_SCRATCH.get(op, 0)
    if op in ("conv", "conv1d", "dense"):
        channels = cout
    elif op == "depthwise":
        channels = cin * depth_multiplier
    else:
        return fixed
    per_channel = _aligned(4 * channels, ARENA_ALIGNMENT)
    if _is_number(per_channel):
        per_channel = int(per_channel)
    return fixed + 2 * per_channel


def model_tail_bytes(layers, pointer_bytes=4, n_outputs=1):
    """Persistent (tail) bytes of a model from its layer dicts (see `layer_tail_bytes`).

    Adds the fixed allocator objects, one `TfLiteEvalTensor` and one persistent `TfLiteTensor`
    (with per-tensor quantisation) per graph input and output, and the RESHAPE / PAD operators a
    Conv1D run converts to.

    Args:
        layers: layer dicts in execution order (`op` plus channel counts), the format of
            `model_flash_bytes`.
        pointer_bytes: 4 for a 32-bit MCU (default), 8 for the 64-bit Python interpreter.
        n_outputs: number of graph outputs.

    Returns:
        Bytes (number, or keras tensor when a channel count is a tensor).
    """
    if pointer_bytes not in TAIL_STRUCTS:
        raise ValueError(f"`pointer_bytes` must be 4 or 8. Received: pointer_bytes={pointer_bytes}")
    st = TAIL_STRUCTS[pointer_bytes]
    layers = [dict(layer) for layer in layers]
    n_inputs = sum(layer["op"] == "input" for layer in layers) or 1
    io = st["tflite_tensor"] + st["quantization"] + 8
    total = st["fixed"] + (n_inputs + n_outputs) * io
    total += _align_up(st["pointer"] * n_inputs, ARENA_ALIGNMENT)
    total += _align_up(st["pointer"] * n_outputs, ARENA_ALIGNMENT)
    total += st["eval_tensor"] * n_inputs
    body = [layer for layer in layers if layer["op"] in _KIND_TAIL]
    reshape = _op_tail("RESHAPE", pointer_bytes) + 2 * st["eval_tensor"]
    pad = _op_tail("PAD", pointer_bytes) + 2 * st["eval_tensor"]
    for k, layer in enumerate(body):
        spec = dict(layer)
        total = total + layer_tail_bytes(spec.pop("op"), pointer_bytes=pointer_bytes, **spec)
        if layer["op"] == "conv1d":
            causal = layer.get("padding") == "causal"
            prev_run = k > 0 and body[k - 1]["op"] == "conv1d" and not causal
            nxt = body[k + 1] if k + 1 < len(body) else {}
            next_run = nxt.get("op") == "conv1d" and nxt.get("padding") != "causal"
            total += reshape * (int(not prev_run) + int(not next_run)) + (pad if causal else 0)
    return total
