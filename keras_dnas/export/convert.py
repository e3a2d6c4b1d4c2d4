"""Keras model -> TFLite flatbuffer for TensorFlow Lite Micro (full int8 or float32)."""

import atexit
import contextlib
import dataclasses
import gc
import os
import pickle
import re
import subprocess
import sys
import tempfile
import warnings

from keras_dnas import _keras
from keras_dnas._data import ENDLESS_REPRESENTATIVE_SAMPLES, input_arrays
from keras_dnas.export import ops as _ops
from keras_dnas.export._quiet import captured_fds


@dataclasses.dataclass(frozen=True)
class _Mode:
    ops_set: str  # name of the tf.lite.OpsSet member
    integer_io: bool
    needs_data: bool


# quantization= value -> converter settings.
_MODES = {
    "int8": _Mode(ops_set="TFLITE_BUILTINS_INT8", integer_io=True, needs_data=True),
    "float32": _Mode(ops_set="TFLITE_BUILTINS", integer_io=False, needs_data=False),
}

_INPUT_NAME = "input_{:03d}"  # signature names; natural order = model order


def _quantization_key(quantization):
    """The `_MODES` key of a `quantization=` value ("INT8" is "int8")."""
    key = quantization.strip().lower() if isinstance(quantization, str) else quantization
    if key not in _MODES:
        raise ValueError(
            f"Unknown quantization. Expected one of {sorted(_MODES)} (TensorFlow Lite Micro "
            "runs int8 models; float32 for a reference). "
            f"Received: quantization={quantization!r}"
        )
    return key


def _model_inputs(model):
    """(structure of Keras input tensors, flat list) or (None, None) for subclassed models."""
    try:
        flat = list(model.inputs or [])
    except AttributeError:
        flat = []
    if not flat:
        return None, None
    if len(flat) == 1:
        return flat[0], flat
    try:
        structure = model.input  # list or dict for a multi-input functional model
    except (AttributeError, ValueError):
        structure = flat
    return structure, flat


def _input_signature(model):
    """Batch-1 input specs named input_000, ... (TFLite Micro runs one sample at a time)."""
    import keras

    structure, flat = _model_inputs(model)
    if flat is None:
        return None, None
    for t in flat:
        if any(d is None for d in t.shape[1:]):
            raise ValueError(
                "TensorFlow Lite Micro needs static shapes, but model input "
                f"{t.name!r} has shape {tuple(t.shape)}. Build the model with a fixed "
                "`keras.Input(shape=...)`."
            )
    position = {id(t): i for i, t in enumerate(flat)}

    def spec(t):
        return keras.InputSpec(
            shape=(1,) + tuple(t.shape[1:]),
            dtype=t.dtype,
            name=_INPUT_NAME.format(position[id(t)]),
        )

    return [keras.tree.map_structure(spec, structure)], flat


def _calibration_arrays(representative_data, flat_inputs):
    """representative_data -> list of arrays (one per model input, samples first, typed)."""
    if representative_data is None:
        raise ValueError(
            "Full-integer (int8) quantisation needs a representative dataset to calibrate the "
            "activation ranges: pass a few hundred typical input samples, e.g. "
            "`to_tflite(model, representative_data=x_train[:256])` (an array of inputs, one "
            "array per input for a multi-input model), or use quantization='float32'. "
            "Received: representative_data=None"
        )
    if not flat_inputs:  # subclassed model: one input, shape unknown
        return input_arrays(representative_data, "representative_data", names=[None],
                            endless_samples=ENDLESS_REPRESENTATIVE_SAMPLES)
    arrays = input_arrays(representative_data, "representative_data",
                          endless_samples=ENDLESS_REPRESENTATIVE_SAMPLES,
                          names=[t.name for t in flat_inputs],
                          shapes=[tuple(t.shape[1:]) for t in flat_inputs])
    # the signature's dtype (float32 unless the model says otherwise)
    return [arr.astype(t.dtype, copy=False) for arr, t in zip(arrays, flat_inputs)]


def _all_layers(model):
    """``model`` and every layer inside it, nested models' layers included."""
    layers, stack = [], [model]
    while stack:
        layer = stack.pop()
        layers.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
    return layers


def _layer_names(model):
    return [layer.name for layer in _all_layers(model)[1:]]


def _check_no_recurrent_loop(model):
    """Refuse, before converting, a recurrent layer that loops over time steps (int8 only).

    TensorFlow's int8 calibration runs the converted `WHILE` loop of a Keras `LSTM` / `GRU` /
    `SimpleRNN` (`unroll=False`) and crashes the whole process on it (segmentation fault,
    TensorFlow 2.21), so no Python error could name the layer afterwards.
    """
    import keras

    for sub in _all_layers(model)[1:]:
        inner = [sub]
        if isinstance(sub, keras.layers.Bidirectional):
            inner = [sub.forward_layer, sub.backward_layer]
        elif isinstance(sub, keras.layers.Wrapper):  # e.g. TimeDistributed
            inner = [sub.layer]
        for rnn in inner:
            if isinstance(rnn, keras.layers.RNN) and not rnn.unroll:
                raise ValueError(
                    f"Layer {sub.name!r} ({type(sub).__name__}) runs its time steps in a "
                    "loop (`unroll=False`), which the int8 converter cannot quantise "
                    "(TensorFlow's calibration of the loop crashes the process). Build it "
                    f"with `keras.layers.{type(rnn).__name__}(..., unroll=True)` (a fixed "
                    "number of time steps; the weights load unchanged), or convert with "
                    "quantization='float32'."
                )


# One line of `ops.tflm_problems` about an operator: its kind, its layer and the reason.
_PROBLEM_RE = re.compile(r"^operator (?P<op>\S+) \(operator #\d+.*?(?:, layer (?P<layer>'[^']*'))?\) "
                         r"(?P<reason>.*)$")
_SHOWN_PER_KIND = 2  # problems written out in full per (operator, reason); then their layers


def _grouped(problems):
    """``problems`` with the repeats of an (operator, reason) pair folded into one line that
    names their layers: a ConvNeXt has 18 GELU and 23 LayerNormalization problems."""
    kinds, lines = {}, []
    for text in problems:
        m = _PROBLEM_RE.match(text)
        if m is None:
            lines.append(text)
            continue
        key = (m["op"], m["reason"])
        if key not in kinds:
            kinds[key] = []
            lines.append(key)
        kinds[key].append((text, m["layer"]))
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
            continue
        found = kinds[line]
        out.extend(text for text, _ in found[:_SHOWN_PER_KIND])
        rest = found[_SHOWN_PER_KIND:]
        if rest:
            layers = list(dict.fromkeys(layer for _, layer in rest if layer))
            named = ", ".join(layers[:6]) + (f", ... ({len(layers) - 6} more)"
                                             if len(layers) > 6 else "")
            out.append(f"{len(rest)} more {line[0]} operator(s), the same problem"
                       + (f": layers {named}" if named else ""))
    return out


_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_convert_child.py")
# `python -c`: drop the current directory from sys.path, then run the child file as __main__.
_BOOT = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
_converter = {}  # the TensorFlow child of this process: "proc", "log"


def _stop_converter():
    proc = _converter.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()


def _converter_process():
    proc = _converter.get("proc")
    if proc is not None and proc.poll() is None:
        return proc
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    # the child imports this copy of keras_dnas, installed or not
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", _BOOT, _CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, env=env)
    if not _converter:
        atexit.register(_stop_converter)
    _converter.update(proc=proc, log=log)
    return proc


def _convert_in_tensorflow(model, arrays, quantization, allow_float_ops, arena_plan):
    """`to_tflite` in a child process under the TensorFlow backend (for JAX and PyTorch).

    The model goes as a `.keras` file; the child stays up for the next conversion.
    """
    data = None if arrays is None else (arrays[0] if len(arrays) == 1 else list(arrays))
    with tempfile.TemporaryDirectory(prefix="keras_dnas_convert_") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        request = {"path": path, "representative_data": data, "quantization": quantization,
                   "allow_float_ops": allow_float_ops, "arena_plan": arena_plan}
        proc = _converter_process()
        try:
            pickle.dump(request, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            reply = pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as e:
            log = _converter["log"]
            log.seek(0)
            text = log.read().decode("utf-8", errors="replace")[-3000:]
            _stop_converter()
            raise RuntimeError(
                "The TensorFlow process converting the model to TFLite ended unexpectedly "
                f"(the search runs on the {_backend()!r} backend; conversion needs "
                f"TensorFlow). Its log (end):\n{text}") from e
    if not reply["ok"]:
        error = ValueError if reply["error_type"] == "ValueError" else RuntimeError
        raise error(reply["error"])
    return reply["tflite"]


def _backend():
    import keras

    return keras.backend.backend()


def _output_layers(model):
    """Names of the layers that produce the model outputs, in output order (best effort)."""
    try:
        return [_keras.producer(t).name for t in model.outputs]
    except (AttributeError, TypeError):
        layers = getattr(model, "layers", None)
        return [layers[-1].name] if layers else []


def _conversion_error(error, log_text, layer_names):
    """Summarise a converter failure: the TF ops and the layers involved."""
    text = f"{error}\n{log_text}"
    tf_ops = sorted(set(re.findall(r"'(tf\.\w+)' op", text)))
    select = re.findall(r"TF Select ops: ([^\n]+)", text)
    places = []
    for loc in re.findall(r'fused\["[^"]*", "([^"@]+)@', text):
        if loc not in places and "StatefulPartitionedCall" not in loc:
            places.append(loc)
    layers = []
    for place in places:
        layer = _ops._layer_hint(place, set(layer_names))
        if layer and layer not in layers:
            layers.append(layer)
    parts = ["Converting the model to TFLite failed."]
    if tf_ops or select:
        ops_text = ", ".join(tf_ops) if tf_ops else select[0]
        parts.append(
            f"TensorFlow ops without a TFLite builtin kernel: {ops_text} (TensorFlow Lite "
            "Micro cannot run Flex/SELECT_TF_OPS)."
        )
    if layers:
        parts.append(f"Layer(s) involved: {', '.join(repr(n) for n in layers)}.")
    elif places:
        parts.append(f"Graph location(s): {', '.join(places[:5])}.")
    errors = [line.strip() for line in str(error).splitlines() if "error:" in line]
    parts.append(f"Converter error: {errors[0] if errors else str(error).strip()[:1000]}")
    log_lines = [
        line for line in log_text.splitlines()
        if line.strip() and not re.match(r"^[IW]\d{4} ", line)  # absl INFO / WARNING lines
    ]
    if log_lines:
        tail = "\n".join(log_lines)[-3000:]
        parts.append(f"Converter log (end):\n{tail}")
    return "\n".join(parts)


def _write_saved_model(model, path, signature):
    """The SavedModel the converter reads: what `model.export(path, format="tf_saved_model")`
    writes for the converter, with the model traced once.

    The serving function is `model.__call__` in inference mode (`training=False`) under the
    batch-1 input signature, as `model.export` makes it, saved with the same `serve` / `serving_default` signatures and the variables the
    function uses. Three things `model.export` spends most of a conversion's time on are left
    out (issues 13 and 17; EfficientNetB0: 17 of 28 profiled seconds):
    - its walk of every tracked layer looking for lookup tables (tracing each layer's
      functions; TensorFlow Lite Micro has no kernel for lookup tables anyway);
    - a second trace of the whole model: a `tf.function` attribute is re-traced under
      `tf.saved_model.save`'s context (another variable policy), so the root holds the
      concrete function of the one trace instead;
    - a gradient function traced per custom-gradient op (49 for EfficientNetB0's swish):
      inference never reads them (`experimental_custom_gradients=False`);
    - the saver's save and restore functions (`_saver_restores_only`): the converter only
      restores, which operations in the exported graph do.
    The converter reads the same signature graph, so the file is byte for byte the one
    `model.export` gives (`tests/test_export.py::test_lean_saved_model_writes_the_same_file`).
    Without a signature (a subclassed model, float32, no data) `model.export` infers one.
    """
    import keras

    if signature is None:
        model.export(path, format="tf_saved_model", verbose=False)
        return
    import tensorflow as tf

    specs = keras.tree.map_structure(
        lambda s: tf.TensorSpec(s.shape, s.dtype, name=s.name), signature)
    def __call__(inputs):  # named as `model.export`'s traced method is
        # Inference: left to its default, a layer whose call defaults to `training=True`
        # (Keras' RandomFlip / RandomRotation / ... augmentation) would put its random ops in
        # the file, which TFLite cannot run; Dropout and BN already read None as inference.
        return model(inputs, training=False)

    serve = tf.function(__call__, input_signature=specs, autograph=False)
    concrete = serve.get_concrete_function()
    root = tf.Module()
    root.serve = concrete
    trainable = list(concrete.trainable_variables)
    seen = {id(v) for v in trainable}
    root._all_variables = trainable + [v for v in concrete.variables if id(v) not in seen]
    with _saver_restores_only():
        tf.saved_model.save(root, path,
                            signatures={"serve": concrete, "serving_default": concrete},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


@contextlib.contextmanager
def _saver_restores_only():
    """`tf.saved_model.save` traces two functions for the SavedModel's own saver: one that
    writes every variable to a checkpoint and one that restores them (about 8 graph operations
    and a captured handle per variable; EfficientNetB0's ~310 variables: 0.7 s CPU). The
    converter loads the SavedModel only to read it: it runs the restore operation (TensorFlow's
    loader, `saver_def.restore_op_name`) and never the save function. While `to_tflite` writes
    its SavedModel the saver is its restore operations alone, built right in the exported graph
    (as TensorFlow 1's savers were: no function, no captures), and its save tensor names the
    file name placeholder (saving through this SavedModel's saver would write nothing; nothing
    does). The variables' checkpoint itself is written as before, and the converter reads the
    same serving graph: the same bytes (`tests/test_export.py::
    test_lean_saved_model_writes_the_same_file`; `test_lean_saved_model_saver_only_restores`
    loads it in a session, which runs the restore). Writing EfficientNetB0's SavedModel: 1.9 ->
    1.3 s CPU. TensorFlow-private (`functional_saver.MultiDeviceSaver`): if it moved, the saver
    is traced as before."""
    try:
        from tensorflow.core.protobuf import saver_pb2
        from tensorflow.python.checkpoint import functional_saver
        from tensorflow.python.framework import dtypes, ops
        from tensorflow.python.ops import array_ops

        saver_class = functional_saver.MultiDeviceSaver
        real = saver_class.__dict__["to_proto"]
        saver_class.restore  # noqa: B018 - the restore this relies on
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def to_proto(self):
        filename = array_ops.placeholder(shape=[], dtype=dtypes.string, name="saver_filename")
        graph = filename.graph
        made = len(graph.get_operations())
        # the restore operations right in the exported graph (as TensorFlow 1 savers wrote
        # them), not in a function of their own: no capture of every variable's handle
        restored = self.restore(filename)
        assigns = [op for op in graph.get_operations()[made:] if op.type == "AssignVariableOp"]
        with ops.device("cpu:0"), ops.control_dependencies(list(restored.values()) + assigns):
            restore = array_ops.identity(filename).op
        return saver_pb2.SaverDef(filename_tensor_name=filename.name,
                                  save_tensor_name=filename.name,
                                  restore_op_name=restore.name,
                                  version=saver_pb2.SaverDef.V2)

    saver_class.to_proto = to_proto
    try:
        yield
    finally:
        saver_class.to_proto = real


class _SavedModelProtos:
    """What TFLite's converter reads from the SavedModel it loads, taken from the protos: the
    signature keys, whether the root has a `serve` endpoint (`model.export`'s) or a
    `_default_save_signature`, and the graph debug info (none is written)."""

    def __init__(self, signature_keys, children, graph_debug_info):
        for name in children:
            setattr(self, name, None)
        self.signatures = dict.fromkeys(signature_keys)
        self.graph_debug_info = graph_debug_info

    @classmethod
    def read(cls, export_dir):
        """The view, or None when the SavedModel carries debug info (then the real load)."""
        from tensorflow.python.saved_model import loader_impl

        proto, debug_info = loader_impl.parse_saved_model_with_debug_info(export_dir)
        if len(proto.meta_graphs) != 1 or debug_info.ByteSize():
            return None
        meta_graph = proto.meta_graphs[0]
        nodes = meta_graph.object_graph_def.nodes
        children = [c.local_name for c in nodes[0].children] if nodes else []
        # the loaded object's signatures leave out the initialiser the protos list with them
        keys = [k for k in meta_graph.signature_def if k != "__saved_model_init_op"]
        return cls(keys, children, debug_info)

    @staticmethod
    def graph_def(export_dir, tags):
        """The graph of the one meta graph with ``tags`` (None if there is not one)."""
        from tensorflow.python.saved_model import loader_impl

        proto = loader_impl.parse_saved_model(export_dir)
        found = [m for m in proto.meta_graphs if set(m.meta_info_def.tags) == set(tags or [])]
        return found[0].graph_def if len(found) == 1 else None


@contextlib.contextmanager
def _converter_reads_protos_only():
    """`TFLiteConverter.from_saved_model` loads the SavedModel as Python objects (restoring
    every function and variable) only to read its signature keys, and `convert()` loads it
    again only for its graph debug info, and imports its whole graph into a Python graph only
    for the input and output tensors its SavedModel path never reads; the conversion itself
    reads the graph from the protos. EfficientNetB0: the two loads are 3.5 of 13 profiled
    seconds of a conversion, the import ~0.1 s CPU. During `to_tflite`'s conversion the
    converter's loader reads the protos instead (`_SavedModelProtos`): the converter sees the
    same keys, endpoints, (empty) debug info and graph, so it writes the same bytes
    (`tests/test_export.py::test_lean_saved_model_writes_the_same_file` compares with the real
    loader). TensorFlow-private (`tensorflow.lite.python.lite._load` and
    `TFLiteConverterBaseV2._load_saved_model`): if a name is gone, or the SavedModel has debug
    info, or the converter leaves its SavedModel path, the converter loads it as before."""
    try:
        from tensorflow.lite.python import lite as tflite_lib

        real = tflite_lib._load
        base = tflite_lib.TFLiteConverterBaseV2
        real_graph = base.__dict__["_load_saved_model"]
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def load(export_dir, tags=None, options=None):
        try:
            view = _SavedModelProtos.read(export_dir) if options is None else None
        except (ImportError, AttributeError):  # the protos reader moved: TensorFlow's loader
            view = None
        return real(export_dir, tags, options) if view is None else view

    def load_graph(self, saved_model_dir, saved_model_tags):
        # the tensors are read only where the converter falls back to a frozen graph
        if not (self.saved_model_dir and self.experimental_new_converter):
            return real_graph(self, saved_model_dir, saved_model_tags)
        try:
            graph_def = _SavedModelProtos.graph_def(saved_model_dir, saved_model_tags)
        except (ImportError, AttributeError):
            graph_def = None
        if graph_def is None:
            return real_graph(self, saved_model_dir, saved_model_tags)
        return graph_def, [], []

    tflite_lib._load = load
    base._load_saved_model = load_graph
    try:
        yield
    finally:
        tflite_lib._load = real
        base._load_saved_model = real_graph


@contextlib.contextmanager
def _collector_skips_older_objects():
    """`TFLiteConverter.convert` ends with a full `gc.collect()` (to free the SavedModel it loads
    again for debug info), and tracing makes enough objects to start collections of its own. In
    a process holding TensorFlow, Keras, a model and its data each walks every Python object:
    0.26 s of resnet8's 1.1 s conversion CPU, 1.2 profiled seconds of EfficientNetB0's. During
    the conversion the objects that existed before it are out of the collector's sight
    (`gc.freeze`), so it walks only what the conversion makes; they are back under it as usual
    afterwards. Left alone if the process froze objects itself."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def to_tflite(model, representative_data=None, quantization="int8", *, allow_float_ops=False,
              arena_plan="tflm"):
    """Convert a Keras model to a TFLite flatbuffer that TensorFlow Lite Micro can run.

    With `quantization="int8"` (default) the model is fully integer quantised: int8 weights
    (per channel) and activations, int8 input and output, only `TFLITE_BUILTINS_INT8`
    operators (never Flex / SELECT_TF_OPS). BatchNormalization is folded into the preceding
    convolution and ReLU / ReLU6 are fused by the converter. The batch size is fixed to 1, as
    TensorFlow Lite Micro runs one sample at a time. The converter's log (C++ / MLIR output
    on stdout and stderr) is swallowed and shown only if the conversion fails. Afterwards every
    operator is checked against `TFLM_BUILTIN_OPS`.

    Args:
        model: A built Keras 3 model (Functional or Sequential; a subclassed model works if
            it has been called once).
        representative_data: Typical inputs to calibrate activation ranges (needed for int8):
            an array with samples first (a few hundred samples are plenty), a list of arrays
            or a dict keyed by input name for a multi-input model, or an iterable of batches
            (e.g. a `tf.data.Dataset` of `x` or `(x, y)`). Ignored for float32.
        quantization: `"int8"` (full integer) or `"float32"` (no quantisation).
        allow_float_ops: With int8, accept layers that only have a float kernel (the
            converter then wraps them in DEQUANTIZE / QUANTIZE). Default `False`: such layers
            raise an error naming them.
        arena_plan: `"tflm"` (default): TFLite Micro lays out the tensor arena itself (its
            greedy planner). `"offline"`: keras_dnas plans the layout (never worse than
            TFLM's, exact for small graphs; see `keras_dnas.costs.offline_plan`) and, when it
            needs a smaller arena head, writes it into the file as `OfflineMemoryAllocation`
            metadata (verified before writing), which TFLite Micro honours.

    Returns:
        The `.tflite` flatbuffer as `bytes`.

    Raises:
        ValueError: For an unknown `quantization`, missing or malformed representative data,
            a conversion failure (naming the TensorFlow ops and layers involved), or an
            operator TensorFlow Lite Micro does not support.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> model = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(2),
    ... ])
    >>> x = np.random.rand(32, 16, 16, 3).astype("float32")
    >>> tflite = to_tflite(model, representative_data=x)
    >>> tflite[4:8]
    b'TFL3'
    """
    return _to_tflite_decoded(model, representative_data, quantization, allow_float_ops,
                              arena_plan)[0]


def _computing_in_float32(model):
    """``model``, or a float32 copy with its weights if a mixed precision policy makes layers
    compute in float16 / bfloat16: the converter quantises float32 graphs, and a float16 graph's
    ops are 'neither a custom op nor a flex op' to it. The variables of a mixed policy are
    float32 already, so the copy computes what the model would in float32."""
    import keras

    mixed = sorted({layer.dtype_policy.name for layer in _all_layers(model)
                    if getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32")
                    in ("float16", "bfloat16")})
    if not mixed:
        return model

    def float32_layer(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    try:
        copy = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
        copy.set_weights(model.get_weights())
    except Exception as e:  # e.g. a subclassed model: no graph to clone
        raise ValueError(
            f"Model {model.name!r} computes in {mixed} (a mixed precision policy) and a float32 "
            "copy of it could not be built for the int8 converter. Build or load the model under "
            "keras.mixed_precision.set_global_policy('float32') before converting. "
            f"Received: {type(e).__name__}: {e}") from e
    return copy


def _to_tflite_decoded(model, representative_data, quantization, allow_float_ops, arena_plan):
    """`to_tflite`, and the file decoded once (`_flatbuffer.read_tflite`) for its checks, for a
    caller that reads it too (`freeze` certifies the arena on it)."""
    from keras_dnas import _flatbuffer

    quantization = _quantization_key(quantization)
    mode = _MODES[quantization]
    from keras_dnas.export import offline as _offline  # imports the cost models: on first use

    _offline.check_arena_plan(arena_plan)
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a Keras 3 model (`keras.Model`). Received: model of type "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"The model {model.name!r} is not built yet; give it a `keras.Input` or call "
            "it on a batch of data before converting."
        )
    if mode.integer_io:
        _check_no_recurrent_loop(model)
    model = _computing_in_float32(model)
    signature, flat_inputs = _input_signature(model)
    arrays = _calibration_arrays(representative_data, flat_inputs) if mode.needs_data else None
    if _backend() != "tensorflow":  # the converter reads TensorFlow graphs
        tflite = _convert_in_tensorflow(model, arrays, quantization, allow_float_ops, arena_plan)
        return tflite, _flatbuffer.read_tflite(tflite)
    if signature is None and arrays is not None and len(arrays) == 1:
        # Subclassed model: take the (batch-1) input shape from the calibration samples.
        signature = [
            keras.InputSpec(shape=(1,) + arrays[0].shape[1:], dtype="float32",
                            name=_INPUT_NAME.format(0))
        ]
    layer_names = _layer_names(model)

    def representative_dataset():
        for i in range(arrays[0].shape[0]):
            if signature is None:
                yield [arr[i : i + 1] for arr in arrays]
            else:
                yield {_INPUT_NAME.format(k): arr[i : i + 1] for k, arr in enumerate(arrays)}

    error, tflite = None, None
    with tempfile.TemporaryDirectory(prefix="keras_dnas_export_") as tmp:
        with captured_fds() as log, warnings.catch_warnings():
            # TF's calibrator still uses tf.lite.Interpreter and warns about it: not actionable.
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            try:
                import tensorflow as tf

                with _collector_skips_older_objects():
                    with _keras.export_rewrites():
                        _write_saved_model(model, tmp, signature)
                    with _converter_reads_protos_only():
                        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
                    converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, mode.ops_set)]
                    if mode.integer_io:
                        converter.optimizations = [tf.lite.Optimize.DEFAULT]
                        converter.representative_dataset = representative_dataset
                        converter.inference_input_type = tf.int8
                        converter.inference_output_type = tf.int8
                    with _converter_reads_protos_only():
                        tflite = converter.convert()
            except Exception as e:  # noqa: BLE001 - re-raised below with the converter log
                error = e
    if error is not None:
        raise ValueError(_conversion_error(error, log.text, layer_names)) from error

    tflite = bytes(tflite)
    info = _flatbuffer.read_tflite(tflite)
    problems = _ops.tflm_problems(
        info,
        quantization,
        layer_names=layer_names,
        allow_float_ops=allow_float_ops,
        output_layers=_output_layers(model),
    )
    if problems:
        raise ValueError(
            f"The converted model {model.name!r} (quantization={quantization!r}) cannot run "
            "as is on TensorFlow Lite Micro:\n  - " + "\n  - ".join(_grouped(problems))
            + "\nReplace these "
            "layers with TFLite Micro-friendly ones (see keras_dnas.export.TFLM_BUILTIN_OPS)"
            + ("" if allow_float_ops or quantization != "int8"
               else ", or pass allow_float_ops=True to keep float layers") + "."
        )
    if quantization == "int8":
        _warn_tflm_aborts(tflite, info, model, layer_names)
    if arena_plan == "offline":
        tflite, _ = _offline.with_offline_plan(tflite)
        tflite = bytes(tflite)
        info = _flatbuffer.read_tflite(tflite)
    return tflite, info


def _warn_tflm_aborts(tflite, info, model, layer_names):
    """Warn, naming the layer, when TFLite Micro would abort on the converted model (a kernel
    precondition its quantisation breaks, `runtime.tflm_preflight`): measuring or deploying it
    would fail, so say so at export, not later. ``info``: the file decoded."""
    from keras_dnas.export import runtime

    problems = runtime._preflight(tflite, info)
    if not problems:
        return
    lines = []
    for p in problems:
        op = next(o for o in info.operators if o.index == p["op_index"])
        layer = _ops._op_layer(op, info, set(layer_names), _output_layers(model))
        where = f"layer {layer!r}, " if layer else ""
        lines.append(f"{where}operator {p['op_index']} ({p['op']}): {p['reason']}")
    warnings.warn(
        f"The int8 model {model.name!r} would abort TensorFlow Lite Micro (keras_dnas runs it "
        "in a child process, so measuring it raises RuntimeError instead):\n  - "
        + "\n  - ".join(lines), stacklevel=4)  # the caller of to_tflite
