"""MACs and an estimated latency of a `.tflite` model, from its operators and tensor shapes.

The operators of the main subgraph are turned into the layer records of the cost functions
(`op`, `geometry`, `cin`, `cout` as in the ChannelPlan format), so `keras_dnas.costs` can
estimate a model that exists only as a `.tflite` file. No TensorFlow is needed.
"""

import math

from keras_dnas import _flatbuffer
from keras_dnas.graph.plan import layer_geometry

# TFLite builtin -> cost-function op (ChannelPlan vocabulary) for element-wise and data ops.
_ELEMENTWISE = {
    "ADD": "add",
    "SUB": "subtract",
    "MUL": "multiply",
    "MAXIMUM": "maximum",
    "MINIMUM": "minimum",
    "SQUARED_DIFFERENCE": "subtract",
}
_KERNEL_ONLY = {
    "CONCATENATION": "concat",
    "PAD": "pad",
    "PADV2": "pad",
    "MIRROR_PAD": "pad",
    "RESHAPE": "reshape",
    "SQUEEZE": "reshape",
    "EXPAND_DIMS": "reshape",
}
_POOLS = {"AVERAGE_POOL_2D": "pool", "MAX_POOL_2D": "pool", "L2_POOL_2D": "pool"}
_REDUCTIONS = {"MEAN": "global_pool", "REDUCE_MAX": "global_pool", "SUM": "global_pool"}
_SHAPE_ONLY = {**_ELEMENTWISE, **_KERNEL_ONLY, **_POOLS, **_REDUCTIONS}  # costed from shapes


def _geometry(inp, out, kernel=(), use_bias=False, depth_multiplier=1, groups=1):
    """The geometry record of an operator from its (batch-first) tensor shapes."""
    return layer_geometry([[int(d) for d in inp.shape[1:]]], [int(d) for d in out.shape[1:]],
                          kernel_size=kernel, use_bias=use_bias,
                          depth_multiplier=depth_multiplier, groups=groups)


def _record(op, info):
    """The cost-function layer record of one TFLite operator, or None (no cost rule)."""
    tensors = info.tensors
    ins = [tensors[i] for i in op.inputs if 0 <= i < len(tensors)]
    outs = [tensors[i] for i in op.outputs if 0 <= i < len(tensors)]
    if not ins or not outs:
        return None
    x, y = ins[0], outs[0]
    has_bias = len(ins) > 2
    if op.name == "CONV_2D" and len(ins) >= 2:  # filter (Cout, kh, kw, Cin / groups)
        cout, kh, kw, group_cin = (int(d) for d in ins[1].shape)
        cin = int(x.shape[-1])
        geometry = _geometry(x, y, (kh, kw), has_bias, groups=max(cin // max(group_cin, 1), 1))
        return {"op": "conv", "geometry": geometry, "cin": cin, "cout": cout}
    if op.name == "DEPTHWISE_CONV_2D" and len(ins) >= 2:  # filter (1, kh, kw, C * dm)
        _, kh, kw, channels_out = (int(d) for d in ins[1].shape)
        cin = int(x.shape[-1])
        dm = max(channels_out // max(cin, 1), 1)
        geometry = _geometry(x, y, (kh, kw), has_bias, dm)
        return {"op": "depthwise", "geometry": geometry, "cin": cin, "cout": cin * dm}
    if op.name == "FULLY_CONNECTED" and len(ins) >= 2:  # weights (Cout, Cin)
        cout, cin = (int(d) for d in ins[1].shape[-2:])
        geometry = _geometry(x, y, (), has_bias)
        rows = math.prod(max(int(d), 1) for d in y.shape[:-1])  # batch 1: rows per invoke
        geometry["out_positions"] = geometry["in_positions"] = rows
        return {"op": "dense", "geometry": geometry, "cin": cin, "cout": cout}
    kind = _SHAPE_ONLY.get(op.name)
    if kind is None:
        return None
    # element-wise ops are costed on their output (a broadcast input is not); pools keep the
    # input's channels
    geometry = _geometry(y, y) if op.name in _ELEMENTWISE else _geometry(x, y)
    cin = geometry["in_channels"]
    cout = cin if kind in ("pool", "global_pool") else geometry["out_channels"]
    return {"op": kind, "geometry": geometry, "cin": cin, "cout": cout}


def tflite_layers(tflite_bytes):
    """Layer records (ChannelPlan ops and geometry) of the operators of a `.tflite` model.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.

    Returns:
        One dict per operator of the main subgraph, in execution order: `index`, `name` (the
        TFLite operator, e.g. `"CONV_2D"`), and for operators with a cost rule `op`
        (`"conv"`, `"depthwise"`, `"dense"`, `"add"`, `"pool"`, ...), `geometry`, `cin` and
        `cout`; operators without one (softmax, activations, quantize ...) have `op=None`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> from keras_dnas.export.estimate import tflite_layers
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> rows = tflite_layers(to_tflite(model, np.random.rand(8, 8, 8, 1).astype("float32")))
    >>> [(r["name"], r["op"], r["cin"], r["cout"]) for r in rows][::2]
    [('CONV_2D', 'conv', 1, 4), ('FULLY_CONNECTED', 'dense', 144, 2)]
    """
    info = _flatbuffer.read_tflite(tflite_bytes)
    rows = []
    for op in info.operators:
        record = _record(op, info) or {"op": None, "geometry": None, "cin": None, "cout": None}
        rows.append({"index": op.index, "name": op.name, **record})
    return rows


def estimate(tflite_bytes, target=None):
    """MACs and estimated cycles / latency of a `.tflite` model on a hardware target.

    Each operator becomes a layer record (`tflite_layers`) and is costed with the target's
    latency model (`keras_dnas.costs.latency`). It is an estimate: the per-op coefficients are
    the target's (see `target.sources` for which are measured), and operators without a cost
    rule (softmax, standalone activations, quantize ...) count as zero cycles.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.
        target: A `keras_dnas.targets.HardwareTarget` or a registered target name; None
            counts MACs only (`cycles`, `latency_ms`, `latency_model` are then None).

    Returns:
        A dict: `macs`, `cycles`, `latency_ms`, `latency_model`, `layers` (per operator:
        `index`, `name`, `op`, `macs`, `cycles`) and `unmodelled` (sorted names of the operators
        that were counted as zero cycles).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> from keras_dnas.export.estimate import estimate
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    >>> e = estimate(to_tflite(model, np.random.rand(8, 16).astype("float32")), "stm32h743")
    >>> e["macs"], e["latency_ms"] > 0
    (128, True)
    """
    from keras_dnas import targets
    from keras_dnas.costs import compute, latency

    target = None if target is None else targets.get(target)
    rows, unmodelled = [], set()
    total_macs, total_cycles = 0, 0.0
    for layer in tflite_layers(tflite_bytes):
        macs, cycles = 0, 0.0
        if layer["op"] is None:
            unmodelled.add(layer["name"])
        else:
            args = (layer["op"], layer["geometry"], layer["cin"], layer["cout"])
            macs = int(compute.macs(*args))
            cycles = None if target is None else float(latency.layer_cycles(*args, target))
        total_macs += macs
        total_cycles += cycles or 0.0
        rows.append({"index": layer["index"], "name": layer["name"], "op": layer["op"],
                     "macs": macs, "cycles": cycles})
    return {
        "macs": total_macs,
        "cycles": None if target is None else total_cycles,
        "latency_ms": None if target is None else float(latency.cycles_to_ms(total_cycles, target)),
        "latency_model": None if target is None else target.latency_model,
        "layers": rows,
        "unmodelled": sorted(unmodelled),
    }
