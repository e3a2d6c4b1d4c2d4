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
    model = tflite if isinstance(tflite, _flatbuffer.TFLiteModel) else (
        _flatbuffer.read_tflite(tflite))
    return sum(_string_bytes(t.name) for t in model.tensors)


def tflite_payload_bytes(tflite):
    """The part of a `.tflite` that `layer_flash_bytes` models exactly: the weights, biases and
    per-channel scales / zero points of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED.

    Args:
        tflite: the model bytes (or a decoded model).

    Returns:
        int.
    """
    model = tflite if isinstance(tflite, _flatbuffer.TFLiteModel) else (
        _flatbuffer.read_tflite(tflite))
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
