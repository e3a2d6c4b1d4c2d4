"""Run a `.tflite` model in TensorFlow Lite Micro (and in LiteRT, for cross-checks)."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np

from keras_dnas import _flatbuffer
from keras_dnas._data import input_arrays
from keras_dnas.export import _tflm_child
from keras_dnas.export._quiet import captured_fds

_ARENA_RE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_DETAIL_RE = re.compile(r"'([^']+)' used (\d+) bytes")
_ARENA_RETRIES = 4
_MIN_ARENA = 4096


def quantize(x, tensor):
    """Float values -> the integer type of `tensor` (TFLite rounding: half away from zero)."""
    scale, zero_point = tensor.scales[0], tensor.zero_points[0] if tensor.zero_points else 0
    info = np.iinfo(tensor.numpy_dtype)
    v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    v = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(v + zero_point, info.min, info.max).astype(tensor.numpy_dtype)


def dequantize(q, tensor):
    """Integer values of `tensor` -> float32 (`(q - zero_point) * scale`)."""
    if not tensor.scales or np.issubdtype(np.asarray(q).dtype, np.floating):
        return np.asarray(q, dtype=np.float32)
    zero_point = tensor.zero_points[0] if tensor.zero_points else 0
    return ((np.asarray(q, dtype=np.int32) - zero_point) * np.float32(tensor.scales[0])).astype(
        np.float32
    )


def _prepare_inputs(info, x):
    """User inputs (array, list of arrays or dict by name) -> arrays in user order, typed."""
    names = [t.name for t in info.input_tensors]
    if isinstance(x, dict) and set(x) != set(names):
        # the converter names a file's inputs input_000, ...: a Keras model's names are gone
        raise ValueError(f"The .tflite file's inputs are {names}, in the Keras model's input "
                         "order; its Keras input names are not in the file. Pass x as a list "
                         f"of arrays in that order. Received: a dict with keys {sorted(x)}")
    arrays = input_arrays(x, "x", names=[t.name for t in info.input_tensors],
                          shapes=[tuple(t.shape[1:]) for t in info.input_tensors], dtype=None,
                          allow_empty=True)
    prepared, count = [], len(arrays[0])
    for arr, t in zip(arrays, info.input_tensors):
        if t.numpy_dtype is None:
            raise ValueError(f"Unsupported input tensor type {t.dtype} for {t.name!r}.")
        if np.issubdtype(t.numpy_dtype, np.integer) and t.scales and np.issubdtype(
            arr.dtype, np.floating
        ):
            arr = quantize(arr, t)
        else:
            arr = arr.astype(t.numpy_dtype, copy=False)
        prepared.append(arr)
    batch = info.input_tensors[0].shape[0] if info.input_tensors[0].shape else 1
    batch = max(int(batch), 1)
    if count % batch:
        raise ValueError(
            f"The model runs batches of {batch} samples; the number of samples must be a "
            f"multiple of it. Received: {count} samples"
        )
    return prepared, count, batch


def _finish_outputs(info, outputs, dequantize_outputs):
    result = []
    for arrs, t in zip(outputs, info.output_tensors):
        out = np.concatenate(arrs, axis=0) if arrs else np.zeros((0,) + t.shape[1:], t.numpy_dtype)
        result.append(dequantize(out, t) if dequantize_outputs else out)
    return result[0] if len(result) == 1 else result


def default_arena_size(info):
    """A generous arena for the TFLite Micro Python interpreter (it crashes when too small)."""
    size = (
        2 * info.activation_bytes
        + 1024 * (info.num_tensors + len(info.all_operators))
        + 16 * info.num_channel_params
        + 64 * 1024
    )
    return int(-(-size // 4096) * 4096)


_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tflm_child.py")
# `python -c`: drop the current directory from sys.path, then run the child file as __main__.
_BOOT = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
_NODE_RE = re.compile(r"Node (\w+) \(number (\d+)")


def _softmax_beta(data, op_index):
    sch = _flatbuffer.schema()
    op = sch.Model.GetRootAs(data, 0).Subgraphs(0).Operators(op_index)
    table = op.BuiltinOptions()
    if table is None:
        return 1.0
    options = sch.SoftmaxOptions()
    options.Init(table.Bytes, table.Pos)
    return float(options.Beta())


def tflm_preflight(tflite_bytes):
    """Known TFLite Micro preconditions a model breaks (TFLM aborts the process on them).

    Checks, per operator of the main subgraph: every quantised activation has a finite,
    positive scale; an int8 `SOFTMAX`'s `beta * input_scale * 2**26` exceeds 1 (TFLM's
    `PreprocessSoftmaxScaling` calls `QuantizeMultiplierGreaterThanOne` on it, which aborts
    otherwise: the layer before the softmax outputs (nearly) constant values, e.g. all
    channels pruned to zero or an untrained layer); an int8 `ADD` / `SUB`'s output multiplier
    `2 * max(input scales) / (2**20 * output scale)` is below 1 (`CalculateOpDataAdd` calls
    `QuantizeMultiplierSmallerThanOneExp` on it: an output that is constant on the
    representative data, e.g. a dead ReLU fused into the add, while an input varies).

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.

    Returns:
        A list of dicts `{"op_index", "op", "tensor", "reason"}`, empty when no known
        precondition is broken.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, tflm_preflight
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> tflm_preflight(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    []
    """
    data = _flatbuffer.as_model_bytes(tflite_bytes)
    return _preflight(data, _flatbuffer.read_tflite(data))


def _preflight(data, info):
    """`tflm_preflight` on a model already decoded (`info` is `read_tflite(data)`)."""
    problems = []
    for op in info.operators:
        for t in op.inputs + op.outputs:
            if t < 0 or info.tensors[t].is_constant or not info.tensors[t].scales:
                continue
            tensor = info.tensors[t]
            bad = [s for s in tensor.scales if not np.isfinite(s) or s <= 0]
            if bad:
                problems.append(dict(
                    op_index=op.index, op=op.name, tensor=tensor.name,
                    reason=f"tensor '{tensor.name}' has quantisation scale {bad[0]!r} (TFLite "
                    "Micro needs a finite, positive scale)"))
        multiplier = _add_output_multiplier(info, op)
        if multiplier is not None and not multiplier < 1.0:
            out = info.tensors[op.outputs[0]]
            problems.append(dict(
                op_index=op.index, op=op.name, tensor=out.name,
                reason=f"its int8 output '{out.name}' has scale {out.scales[0]:.3g}, so the "
                f"output multiplier 2 * max(input scales) / (2**20 * output scale) = "
                f"{multiplier:.3g} is not below 1 and TFLite Micro's "
                "QuantizeMultiplierSmallerThanOneExp (add/sub Prepare) aborts; the output is "
                "(nearly) constant on the representative data (e.g. a ReLU that is never "
                "positive) while an input varies: train the model, or calibrate with data "
                "on which that layer is active"))
        if op.name == "SOFTMAX" and op.inputs and info.tensors[op.inputs[0]].dtype == "INT8":
            tensor = info.tensors[op.inputs[0]]
            scale = float(tensor.scales[0]) if tensor.scales else 0.0
            beta = _softmax_beta(data, op.index)
            multiplier = beta * scale * 2.0 ** 26
            if multiplier <= 1.0:
                problems.append(dict(
                    op_index=op.index, op=op.name, tensor=tensor.name,
                    reason=f"its int8 input '{tensor.name}' has scale {scale:.3g}, so beta * "
                    f"scale * 2**26 = {multiplier:.3g} is not above 1 and TFLite Micro's "
                    "QuantizeMultiplierGreaterThanOne (softmax Prepare) aborts; the layer "
                    "before the softmax outputs (nearly) constant values on the "
                    "representative data (scale below 2**-26 = 1.49e-08): train the model, "
                    "or check that it does not prune every channel feeding the softmax"))
    return problems


def _add_output_multiplier(info, op):
    """The output rescale of an int8 ADD / SUB in TFLite Micro's Prepare (`add_common.cc`,
    `sub_common.cc`: inputs are left-shifted by 20 bits, so `2 * max(input scales) / (2**20 *
    output scale)`, which must be below 1), or None for other operators."""
    if op.name not in ("ADD", "SUB") or len(op.inputs) < 2 or not op.outputs:
        return None
    tensors = [info.tensors[t] for t in list(op.inputs[:2]) + [op.outputs[0]]]
    if any(t.dtype != "INT8" or not t.scales for t in tensors):
        return None
    a, b, out = (float(np.float32(t.scales[0])) for t in tensors)
    if not out > 0:
        return None  # reported as a non-positive scale
    return 2.0 * max(a, b) / (2.0 ** 20 * out)


def _crash_error(data, info, returncode, log, phase):
    """The exception for a TFLite Micro child that died: names the op and the reason."""
    import signal

    try:
        how = f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else \
            f"exited with status {returncode}"
    except ValueError:
        how = f"exited with status {returncode}"
    where = "while preparing the model (AllocateTensors: each operator's Prepare)"
    if phase.startswith("invoke"):
        where = f"while running the model ({phase.split()[-1].replace('=', ' ')})"
    elif phase.startswith("print_allocations"):
        where = "while reporting the arena usage"
    elif not phase:
        where = "while starting"
    lines = [f"TensorFlow Lite Micro {how} {where}; it ran in a child process, so only that "
             "process ended."]
    node = _NODE_RE.findall(log)
    problems = tflm_preflight(data) if not phase.startswith("print") else []
    if problems:
        for p in problems:
            lines.append(f"Operator {p['op_index']} ({p['op']}): {p['reason']}.")
    elif node:
        name, index = node[-1]
        lines.append(f"Operator {index} ({name}) failed (from TFLite Micro's log below).")
    else:
        lines.append("The operator is unknown: TFLite Micro printed no error and no known "
                     f"precondition is broken. Operators: {[op.name for op in info.operators]}.")
    text = "\n".join(line for line in log.splitlines()
                     if not line.startswith(_tflm_child.PHASE_PREFIX)).strip()
    if text:
        lines.append("TFLite Micro log:\n" + text[-4000:])
    return RuntimeError("\n".join(lines))


def _tflm_child_run(data, info, arrays=None, count=0, batch=1, arena_size=None,
                    allocations=False):
    """Run TFLite Micro in a child process (see `_tflm_child`); a crash raises RuntimeError.

    Returns the child's reply: `outputs` (per output, a list of per-batch arrays) and
    `allocations` (`print_allocations()` text when asked for).
    """
    if arena_size is not None and int(arena_size) < _MIN_ARENA:
        raise ValueError(
            f"arena_size must be at least {_MIN_ARENA} bytes (TFLite Micro's Python interpreter "
            f"crashes on tinier arenas); leave it None for a safe default. "
            f"Received: arena_size={arena_size}"
        )
    try:
        import tflite_micro  # noqa: F401  (fail here, with a clear message, not in the child)
    except ImportError as e:  # pragma: no cover - hard dependency
        raise ImportError("TFLite Micro measurement needs the `tflite-micro` package.") from e
    request = {
        "model": bytes(data),
        "arena_size": int(arena_size) if arena_size else default_arena_size(info),
        "tries": 1 if arena_size else _ARENA_RETRIES,
        "inputs": arrays,
        "count": count,
        "batch": batch,
        "input_positions": list(info.input_positions),
        "output_positions": list(info.output_positions),
        "zero_inputs": [(tuple(t.shape), t.numpy_dtype) for t in info.input_tensors],
        "allocations": bool(allocations),
    }
    for attempt in range(2):
        proc = subprocess.run([sys.executable, "-c", _BOOT, _CHILD],
                              input=pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL),
                              capture_output=True, check=False)
        log = proc.stderr.decode("utf-8", errors="replace")
        phases = [line[len(_tflm_child.PHASE_PREFIX):] for line in log.splitlines()
                  if line.startswith(_tflm_child.PHASE_PREFIX)]
        phase = phases[-1] if phases else ""
        if proc.returncode == 0 and proc.stdout:
            break
        # The Python interpreter can also crash on a too small arena: with the default arena
        # and no broken precondition, try once more with a much larger one.
        if attempt == 0 and arena_size is None and phase.startswith("prepare") and \
                not tflm_preflight(data):
            request["arena_size"] *= 16
            continue
        raise _crash_error(data, info, proc.returncode, log, phase)
    reply = pickle.loads(proc.stdout)
    if not reply["ok"]:
        text = "\n".join(line for line in log.splitlines()
                         if not line.startswith(_tflm_child.PHASE_PREFIX)).strip()
        raise ValueError(
            f"TensorFlow Lite Micro could not prepare the model with an arena of "
            f"{reply['arena_size']} bytes: {reply['error']}.\nTFLite Micro log:\n{text[-4000:]}"
        )
    return reply


def run_tflm(tflite_bytes, x, *, dequantize=False, arena_size=None):
    """Run a TFLite model sample by sample in the TensorFlow Lite Micro interpreter.

    Float inputs are quantised with the input tensor's scale and zero point (TFLite rounding);
    integer inputs of the input's type are passed unchanged. The interpreter runs in one child
    process per call (well under a second to start): TFLite Micro aborts its process when a
    kernel precondition fails, and that must not end the caller's; such a crash raises
    `RuntimeError` naming the operator and the reason (see `tflm_preflight`).

    Args:
        tflite_bytes: The model as `bytes` (e.g. from `to_tflite`) or a path to a `.tflite`.
        x: Inputs with a leading sample axis: an array, or for a model with several inputs a
            list of arrays (model order) or a dict keyed by input tensor name.
        dequantize: If `True`, return float32 outputs `(q - zero_point) * scale`.
        arena_size: Tensor arena in bytes; by default a generous size derived from the model.

    Returns:
        The raw outputs (int8 for an int8 model) stacked over samples: one array, or a list of
        arrays for a model with several outputs.

    Raises:
        ValueError: bad inputs, or TFLite Micro reports that it cannot allocate the model.
        RuntimeError: TFLite Micro crashed (the child process died); the message names the
            operator and the reason when they can be told.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, run_tflm
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.random.rand(8, 4).astype("float32")
    >>> run_tflm(to_tflite(model, x), x).dtype
    dtype('int8')
    """
    data = _flatbuffer.as_model_bytes(tflite_bytes)
    info = _flatbuffer.read_tflite(data)
    arrays, count, batch = _prepare_inputs(info, x)
    reply = _tflm_child_run(data, info, arrays, count, batch, arena_size)
    return _finish_outputs(info, reply["outputs"], dequantize)


def run_litert(tflite_bytes, x, reference=True, *, dequantize=False):
    """Run a TFLite model sample by sample in the LiteRT (TensorFlow Lite) interpreter.

    Same inputs and outputs as `run_tflm`, for cross-checking TensorFlow Lite Micro.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.
        x: Inputs with a leading sample axis (see `run_tflm`).
        reference: If `True` (default), use LiteRT's reference kernels
            (`OpResolverType.BUILTIN_REF`), the ones TensorFlow Lite Micro derives from;
            otherwise the optimised default kernels.
        dequantize: If `True`, return float32 outputs.

    Returns:
        The outputs stacked over samples: one array, or a list for several outputs.

    Note: with `reference=True` every int8 op is bit-exact with TensorFlow Lite Micro except
    FULLY_CONNECTED. LiteRT's reference FULLY_CONNECTED rescales its int32 accumulator in
    floating point with a single rounding, `round(acc * (double(s_in) * double(s_w) /
    double(s_out)))` (half away from zero; per-tensor and per-channel weights alike); TFLite
    Micro rescales in fixed point (quantised multiplier and shift) with gemmlowp's double
    rounding. No converter setting changes this. On the same input the two differ by at most
    one step, on a small fraction of the outputs; through a deep Dense stack the differences
    can grow.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, run_litert
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.random.rand(8, 4).astype("float32")
    >>> run_litert(to_tflite(model, x), x).shape
    (8, 2)
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = _flatbuffer.as_model_bytes(tflite_bytes)
    info = _flatbuffer.read_tflite(data)
    arrays, count, batch = _prepare_inputs(info, x)
    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    with captured_fds((2,)):
        interpreter = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    outputs = [[] for _ in info.output_tensors]
    for start in range(0, count, batch):
        for arr, pos in zip(arrays, info.input_positions):
            interpreter.set_tensor(in_details[pos]["index"], arr[start : start + batch])
        interpreter.invoke()
        for k, pos in enumerate(info.output_positions):
            outputs[k].append(np.array(interpreter.get_tensor(out_details[pos]["index"])))
    return _finish_outputs(info, outputs, dequantize)


def parse_allocations(text):
    """Parse the text `Interpreter.print_allocations()` writes into arena numbers.

    Args:
        text: Lines such as `[RecordingMicroAllocator] Arena allocation total 2080 bytes`.

    Returns:
        A dict with `arena_bytes`, `arena_head_bytes`, `arena_tail_bytes` (ints) and
        `arena_breakdown` (recorded allocation type -> bytes used, alignment included).

    Example:

    >>> parse_allocations("[RecordingMicroAllocator] Arena allocation total 16 bytes\\n"
    ...                   "[RecordingMicroAllocator] Arena allocation head 0 bytes\\n"
    ...                   "[RecordingMicroAllocator] Arena allocation tail 16 bytes")["arena_bytes"]
    16
    """
    found = {kind: int(n) for kind, n in _ARENA_RE.findall(text)}
    if set(found) != {"total", "head", "tail"}:
        raise ValueError(
            "Could not read the arena usage from TensorFlow Lite Micro's print_allocations() "
            f"output. Received: {text.strip()[:2000]!r}"
        )
    return {
        "arena_bytes": found["total"],
        "arena_head_bytes": found["head"],
        "arena_tail_bytes": found["tail"],
        "arena_breakdown": {name: int(n) for name, n in _DETAIL_RE.findall(text)},
    }


def arena_usage(tflite_bytes, arena_size=None):
    """Tensor arena TensorFlow Lite Micro needs for a model, as its recording allocator reports.

    The head holds the non-persistent buffers (activations, scratch) laid out by the memory
    planner; the tail holds persistent data (tensor structs, per-channel quantisation data,
    op data). Weights stay in flash and are not counted.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.
        arena_size: Arena given to the interpreter (only an upper bound; the usage reported
            does not depend on it). Default: a generous size derived from the model.

    Returns:
        A dict with `arena_bytes`, `arena_head_bytes`, `arena_tail_bytes` and
        `arena_breakdown` (see `parse_allocations`).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, arena_usage
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> usage = arena_usage(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    >>> usage["arena_bytes"] == usage["arena_head_bytes"] + usage["arena_tail_bytes"]
    True
    """
    data = _flatbuffer.as_model_bytes(tflite_bytes)
    info = _flatbuffer.read_tflite(data)
    # One inference first (on zeros), as TFLite Micro's documentation asks for
    # print_allocations().
    reply = _tflm_child_run(data, info, arena_size=arena_size, allocations=True)
    return parse_allocations(reply["allocations"])
