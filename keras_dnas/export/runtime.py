"""Run a `.tflite` model in TensorFlow Lite Micro (and in LiteRT, for cross-checks)."""

import re

import numpy as np

from keras_dnas.export import _flatbuffer
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
    names = [t.name for t in info.inputs]
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        if missing:
            raise ValueError(
                f"Missing model inputs {missing}; the model's inputs are {names}. "
                f"Received: keys {sorted(x)}"
            )
        arrays = [x[n] for n in names]
    elif isinstance(x, (list, tuple)) and len(info.inputs) > 1:
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(info.inputs):
        raise ValueError(
            f"The model has {len(info.inputs)} inputs ({names}); pass one array per input. "
            f"Received: {len(arrays)} arrays"
        )
    prepared, count = [], None
    for arr, t in zip(arrays, info.inputs):
        arr = np.asarray(arr)
        if arr.ndim != len(t.shape) or tuple(arr.shape[1:]) != tuple(t.shape[1:]):
            raise ValueError(
                f"Input {t.name!r} expects samples of shape {tuple(t.shape[1:])} (batch first, "
                f"model shape {tuple(t.shape)}). Received: x of shape {arr.shape}"
            )
        if count is not None and arr.shape[0] != count:
            raise ValueError(
                f"All inputs need the same number of samples. Received: {count} and "
                f"{arr.shape[0]}"
            )
        count = arr.shape[0]
        if t.numpy_dtype is None:
            raise ValueError(f"Unsupported input tensor type {t.dtype} for {t.name!r}.")
        if np.issubdtype(t.numpy_dtype, np.integer) and t.scales and np.issubdtype(
            arr.dtype, np.floating
        ):
            arr = quantize(arr, t)
        else:
            arr = arr.astype(t.numpy_dtype, copy=False)
        prepared.append(arr)
    batch = info.inputs[0].shape[0] if info.inputs[0].shape else 1
    batch = max(int(batch), 1)
    if count % batch:
        raise ValueError(
            f"The model runs batches of {batch} samples; the number of samples must be a "
            f"multiple of it. Received: {count} samples"
        )
    return prepared, count, batch


def _finish_outputs(info, outputs, dequantize_outputs):
    result = []
    for arrs, t in zip(outputs, info.outputs):
        out = np.concatenate(arrs, axis=0) if arrs else np.zeros((0,) + t.shape[1:], t.numpy_dtype)
        result.append(dequantize(out, t) if dequantize_outputs else out)
    return result[0] if len(result) == 1 else result


def default_arena_size(info):
    """A generous arena for the TFLite Micro Python interpreter (it crashes when too small)."""
    size = (
        2 * info.activation_bytes
        + 1024 * (info.num_tensors + len(info.ops))
        + 16 * info.num_channel_params
        + 64 * 1024
    )
    return int(-(-size // 4096) * 4096)


def _tflm_interpreter(data, info, arena_size=None):
    """Create a TFLite Micro interpreter quietly, growing the arena until allocation works."""
    try:
        from tflite_micro import runtime as tflm
    except ImportError as e:  # pragma: no cover - hard dependency
        raise ImportError("TFLite Micro measurement needs the `tflite-micro` package.") from e
    if arena_size is not None and int(arena_size) < _MIN_ARENA:
        raise ValueError(
            f"arena_size must be at least {_MIN_ARENA} bytes (TFLite Micro's Python interpreter "
            f"crashes on tinier arenas); leave it None for a safe default. "
            f"Received: arena_size={arena_size}"
        )
    size = int(arena_size) if arena_size else default_arena_size(info)
    tries = 1 if arena_size else _ARENA_RETRIES
    for attempt in range(tries):
        with captured_fds((2,)) as log:
            try:
                return tflm.Interpreter.from_bytes(data, arena_size=size)
            except RuntimeError as e:
                error = e
        if attempt + 1 < tries:
            size *= 4
    raise ValueError(
        f"TensorFlow Lite Micro could not prepare the model with an arena of {size} bytes: "
        f"{error}.\nTFLite Micro log:\n{log.tail()}"
    ) from error


def run_tflm(tflite_bytes, x, *, dequantize=False, arena_size=None):
    """Run a TFLite model sample by sample in the TensorFlow Lite Micro interpreter.

    Float inputs are quantised with the input tensor's scale and zero point (TFLite rounding);
    integer inputs of the input's type are passed unchanged.

    Args:
        tflite_bytes: The model as `bytes` (e.g. from `to_tflite`) or a path to a `.tflite`.
        x: Inputs with a leading sample axis: an array, or for a model with several inputs a
            list of arrays (model order) or a dict keyed by input tensor name.
        dequantize: If `True`, return float32 outputs `(q - zero_point) * scale`.
        arena_size: Tensor arena in bytes; by default a generous size derived from the model.

    Returns:
        The raw outputs (int8 for an int8 model) stacked over samples: one array, or a list of
        arrays for a model with several outputs.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite, run_tflm
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.random.rand(8, 4).astype("float32")
    >>> run_tflm(to_tflite(model, x), x).dtype
    dtype('int8')
    """
    data = _flatbuffer.as_model_bytes(tflite_bytes)
    info = _flatbuffer.read_model(data)
    arrays, count, batch = _prepare_inputs(info, x)
    interpreter = _tflm_interpreter(data, info, arena_size)
    outputs = [[] for _ in info.outputs]
    for start in range(0, count, batch):
        for arr, pos in zip(arrays, info.input_positions):
            interpreter.set_input(arr[start : start + batch], pos)
        interpreter.invoke()
        for k, pos in enumerate(info.output_positions):
            outputs[k].append(np.array(interpreter.get_output(pos), copy=True))
    return _finish_outputs(info, outputs, dequantize)


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
    info = _flatbuffer.read_model(data)
    arrays, count, batch = _prepare_inputs(info, x)
    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    with captured_fds((2,)):
        interpreter = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    outputs = [[] for _ in info.outputs]
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
    info = _flatbuffer.read_model(data)
    interpreter = _tflm_interpreter(data, info, arena_size)
    # One inference first, as TFLite Micro's documentation asks for print_allocations().
    for t, pos in zip(info.inputs, info.input_positions):
        interpreter.set_input(np.zeros(t.shape, t.numpy_dtype), pos)
    with captured_fds((2,)) as log:
        interpreter.invoke()
        interpreter.print_allocations()
    return parse_allocations(log.text)
