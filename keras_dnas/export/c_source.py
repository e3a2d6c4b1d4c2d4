"""C source for a TensorFlow Lite Micro application: the model array, the arena size, the ops.

`to_c(tflite, out_dir, target=...)` writes `<name>.h` and `<name>.cc`:

- `g_<name>[]` / `g_<name>_len`: the `.tflite` bytes as a 16-byte aligned constant array (TFLite
  Micro reads the flatbuffer in place; 16 bytes is the largest alignment its buffers ask for);
- `<NAME>_ARENA_SIZE` (and `<name>::kArenaSize` in C++): the tensor arena for the target, the
  number `kd.summary` / `kd.freeze` certify: TFLite Micro's greedy planner replayed on the
  model (`keras_dnas.costs.arena.tflite_arena`, head exact) plus the persistent tail for the
  target's pointer size, rounded up to 16 bytes. No extra margin is added: declare the arena
  `alignas(16)` (TFLite Micro aligns the arena's start up to 16 bytes and would otherwise lose
  up to 15 of them). The head counts the scratch buffers of TFLite Micro's *reference*
  kernels; optimised kernels (CMSIS-NN on Cortex-M, ...) request more scratch for
  convolutions and fully connected layers, so on such a build check `arena_used_bytes()` after
  `AllocateTensors()` or pass `arena_bytes=`;
- `<NAME>_OP_COUNT` / `<name>::kOpCount` and `<NAME>_REGISTER_OPS(resolver)`: the
  `MicroMutableOpResolver<N>` template size and one `Add<Op>()` call per builtin operator the
  model uses (an expression that is true when every registration succeeded).

The `.cc` file needs no TFLite Micro header (the macro is expanded where it is used).
"""

import os
import re

from keras_dnas import _flatbuffer, _ste
from keras_dnas.export.measure import _resolve_target, measure
from keras_dnas.export.ops import TFLM_BUILTIN_OPS

# `tflite::MicroMutableOpResolver` method of each builtin TFLite Micro has a kernel for
# (`TFLM_BUILTIN_OPS`, the one list): "Add" + the name in CamelCase, except where
# micro_mutable_op_resolver.h spells it otherwise.
_METHOD_SPELLINGS = {"BATCH_MATMUL": "AddBatchMatMul", "CUMSUM": "AddCumSum",
                     "PADV2": "AddPadV2",
                     "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM"}
RESOLVER_METHODS = {
    name: _METHOD_SPELLINGS.get(name) or "Add" + "".join(
        part if part[0].isdigit() else part.capitalize() for part in name.split("_"))
    for name in sorted(TFLM_BUILTIN_OPS)
}

MODEL_ALIGNMENT = 16  # bytes; alignas() of the model array
_BYTES_PER_LINE = 12
_MAX_PLAN_LINES = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# C and C++ keywords a `name` must not be (it becomes a namespace and part of identifiers).
_RESERVED = {
    "auto", "break", "case", "char", "class", "const", "continue", "default", "delete", "do",
    "double", "else", "enum", "extern", "float", "for", "goto", "if", "int", "long",
    "namespace", "new", "register", "return", "short", "signed", "sizeof", "static", "struct",
    "switch", "template", "this", "typedef", "union", "unsigned", "void", "volatile", "while",
}  # fmt: skip


def resolver_ops(tflite_bytes):
    """The `MicroMutableOpResolver` registrations a model needs, in order of first use.

    Args:
        tflite_bytes: The model as `bytes` or a path to a `.tflite` file.

    Returns:
        A list of `(operator name, resolver method)` pairs, one per distinct builtin
        operator of every subgraph.

    Raises:
        ValueError: naming an operator TFLite Micro's resolver has no method for (a custom
            operator, or a builtin without a TFLite Micro kernel).

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.export import to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Softmax()])
    >>> resolver_ops(to_tflite(model, np.random.rand(8, 4).astype("float32")))
    [('FULLY_CONNECTED', 'AddFullyConnected'), ('SOFTMAX', 'AddSoftmax')]
    """
    info = _flatbuffer.read_tflite(tflite_bytes)
    names = list(dict.fromkeys(op.name for op in info.all_operators))
    unknown = [n for n in names if n not in RESOLVER_METHODS]
    if unknown:
        raise ValueError(
            f"TensorFlow Lite Micro's MicroMutableOpResolver has no registration for the "
            f"operator(s) {unknown} of this model (custom operators need AddCustom() with your "
            "own kernel; other builtins have no TFLite Micro kernel: change the layer that "
            f"converts to them). Received: a model with operators {names}"
        )
    return [(n, RESOLVER_METHODS[n]) for n in names]


def _array_lines(data):
    return [
        "    " + " ".join(f"0x{b:02x}," for b in data[i:i + _BYTES_PER_LINE])
        for i in range(0, len(data), _BYTES_PER_LINE)
    ]


def _plan_comment(report, model):
    """Comment lines: the planner's layout (offset, size, lifetime) of every head buffer."""
    lines = [f"//   {'offset':>8} {'bytes':>8}  scopes  buffer"]
    rows = sorted(zip(report["offsets"], report["buffers"]), key=lambda r: (r[0], -r[1]["size"]))
    for offset, b in rows[:_MAX_PLAN_LINES]:
        what = (f"tensor {b['tensor']} '{model.tensors[b['tensor']].name}'"
                if b["kind"] == "tensor" else f"scratch of operator {b['op']}")
        lines.append(f"//   {offset:>8} {b['size']:>8}  {b['first']:>2}..{b['last']:<2}  "
                     f"{what[:80]}")
    if len(rows) > _MAX_PLAN_LINES:
        lines.append(f"//   ... {len(rows) - _MAX_PLAN_LINES} more buffers")
    return lines


def to_c(tflite_bytes, path, target=None, arena_bytes=None, name="model", verify=True):
    """Write `<name>.h` / `<name>.cc` for a TensorFlow Lite Micro application.

    The header declares the model array, the tensor arena size for the target and a macro
    registering exactly the model's operators in a `tflite::MicroMutableOpResolver`; the
    source holds the `.tflite` bytes (see the module docstring for what each number means).
    Use them as::

        #include "model.h"
        #include "tensorflow/lite/micro/micro_interpreter.h"
        #include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

        alignas(16) static uint8_t tensor_arena[MODEL_ARENA_SIZE];
        tflite::MicroMutableOpResolver<MODEL_OP_COUNT> resolver;
        if (!MODEL_REGISTER_OPS(resolver)) { /* a registration failed */ }
        tflite::MicroInterpreter interpreter(tflite::GetModel(g_model), resolver,
                                             tensor_arena, MODEL_ARENA_SIZE);

    Args:
        tflite_bytes: The model as `bytes` (e.g. from `to_tflite`) or a path to a `.tflite`.
        path: Directory to write the two files to (created if missing).
        target: Hardware target (a `HardwareTarget`, a registered name or a dict): its
            `pointer_bytes` sizes the persistent part of the arena. Default: a 32-bit MCU.
        arena_bytes: Arena size to write instead of the planner's (e.g. one measured on the
            board with optimised kernels); it must not be below the planner's.
        name: C identifier naming the files, the symbols (`g_<name>`, `g_<name>_len`), the
            C++ namespace and the macro prefix (`<NAME>_ARENA_SIZE`, ...).
        verify: If `True` (default), TFLite Micro prepares the model first (in a child
            process, as `measure` does): a model it cannot run raises here rather than on the
            board, and the arena is the larger of the planner replay and `measure`'s target
            arena (the host's measured head plus the target's tail; the two agree on every
            tested model with non-degenerate weights). If `False`, only the replay is used.

    Returns:
        A dict: `header` and `source` (paths), `arena_bytes` (written), `planned_arena_bytes`
        (the arena as planned, rounded up to 16 B), `replay_arena_bytes` (the planner replay
        alone, not rounded), `arena_head_bytes`, `arena_tail_bytes`, `pointer_bytes`,
        `target`, `model_bytes`, `ops` (operator names registered) and `resolver_methods`.

    Raises:
        ValueError: an invalid `name`, an operator TFLite Micro cannot register, or
            `arena_bytes` below the planned arena.
        RuntimeError: (with `verify`) TFLite Micro aborts on the model.

    Example:

    >>> import keras, numpy as np, tempfile
    >>> from keras_dnas.export import to_tflite, to_c
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> tflite = to_tflite(model, np.random.rand(8, 4).astype("float32"))
    >>> out = to_c(tflite, tempfile.mkdtemp(), target="stm32h743")
    >>> out["ops"], out["arena_bytes"] % 16, out["pointer_bytes"]
    (['FULLY_CONNECTED'], 0, 4)
    """
    from keras_dnas.costs import arena as arena_lib

    if not isinstance(name, str) or not _IDENTIFIER.match(name) or name in _RESERVED:
        raise ValueError(
            "name must be a C identifier (letters, digits, underscores; not a keyword): it "
            f"names the files and the symbols. Received: name={name!r}"
        )
    data = _flatbuffer.as_model_bytes(tflite_bytes)
    registrations = resolver_ops(data)
    resolved = _resolve_target(target)  # (name, flash, ram, pointer bytes) or None: 32-bit
    pointer_bytes, target_name = (4, None) if resolved is None else (resolved[3], resolved[0])
    model = _flatbuffer.read_tflite(data)
    report = arena_lib.tflite_arena(model, pointer_bytes=pointer_bytes)
    measured = None
    if verify:
        # TFLite Micro prepares the model (in a child process: an abort raises here, not on
        # the board); its target arena is what `measure` / `keras-dnas inspect` report.
        measured = measure(data, target=target)
        report = dict(report, head=measured.arena_head_bytes, tail=measured.arena_tail_bytes,
                      total=max(report["total"], measured.ram_bytes),
                      replay_total=report["total"])
    planned = _ste.align_up(report["total"], arena_lib.ARENA_ALIGNMENT)
    if arena_bytes is None:
        size = planned
    else:
        size = int(arena_bytes)
        if size < planned:
            raise ValueError(
                f"arena_bytes={size:,} is below the {planned:,} bytes TFLite Micro's planner "
                f"needs for this model on a {8 * pointer_bytes}-bit target "
                f"(head {report['head']:,} B + tail {report['tail']:,} B): AllocateTensors "
                "would fail. Leave arena_bytes=None to write the planned size."
            )
    macro = name.upper()
    guard = f"KERAS_DNAS_{macro}_H_"
    where = f"target '{target_name}'" if target_name else "a 32-bit MCU (no target given)"
    methods = [m for _, m in registrations]
    register = " && \\\n".join(f"    ((resolver).{m}() == kTfLiteOk)" for m in methods)
    header = [
        f"// {name}.h: generated by keras_dnas.export.to_c. Do not edit.",
        f"// Model: {len(data):,} bytes of .tflite flatbuffer; operators: "
        f"{', '.join(n for n, _ in registrations)}.",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stddef.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        f"// The .tflite flatbuffer, {MODEL_ALIGNMENT}-byte aligned (TFLite Micro reads it in "
        "place).",
        f"extern const unsigned char g_{name}[];",
        f"extern const unsigned int g_{name}_len;",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"// Tensor arena for {where}, {8 * pointer_bytes}-bit pointers:",
        f"//   planned {report['total']:,} B = head {report['head']:,} B (activations and "
        "scratch, TFLite Micro's greedy",
        f"//   planner) + tail {report['tail']:,} B (persistent structs for "
        f"{pointer_bytes}-byte",
        f"//   pointers), rounded up to {arena_lib.ARENA_ALIGNMENT} B.",
        "// Declare the arena alignas(16). Scratch buffers are those of TFLite Micro's "
        "reference kernels;",
        "// optimised kernels (e.g. CMSIS-NN) request more: check arena_used_bytes() after "
        "AllocateTensors().",
    ]
    if report.get("replay_total", report["total"]) != report["total"]:
        header.append(f"//   (the planner replay alone gives {report['replay_total']:,} B; the "
                      "larger number is used)")
    if size != planned:
        header.append(f"// Written: {size:,} B (arena_bytes= given; planned {planned:,} B).")
    header += [
        "// Planned layout of the head (offsets in bytes; scopes: operator i is scope i + 1):",
        *_plan_comment(report, model),
        f"#define {macro}_ARENA_SIZE {size}",
        "",
        "// Builtin operators to register: tflite::MicroMutableOpResolver<"
        f"{macro}_OP_COUNT> resolver;",
        f"// then `if (!{macro}_REGISTER_OPS(resolver)) {{ /* error */ }}` (include TFLite "
        "Micro's",
        "// micro_mutable_op_resolver.h before using the macro).",
        f"#define {macro}_OP_COUNT {len(methods)}",
        f"#define {macro}_REGISTER_OPS(resolver) ( \\",
        register + ")",
        "",
        "#ifdef __cplusplus",
        f"namespace {name} {{",
        f"constexpr size_t kArenaSize = {macro}_ARENA_SIZE;",
        f"constexpr unsigned int kOpCount = {macro}_OP_COUNT;",
        f"}}  // namespace {name}",
        "#endif",
        "",
        f"#endif  // {guard}",
        "",
    ]
    source = [
        f"// {name}.cc: generated by keras_dnas.export.to_c. Do not edit.",
        f'#include "{name}.h"',
        "",
        f"alignas({MODEL_ALIGNMENT}) const unsigned char g_{name}[] = {{",
        *_array_lines(data),
        "};",
        f"const unsigned int g_{name}_len = {len(data)};",
        "",
    ]
    os.makedirs(path, exist_ok=True)
    header_path = os.path.join(path, f"{name}.h")
    source_path = os.path.join(path, f"{name}.cc")
    with open(header_path, "w") as f:
        f.write("\n".join(header))
    with open(source_path, "w") as f:
        f.write("\n".join(source))
    return {
        "header": header_path,
        "source": source_path,
        "arena_bytes": size,
        "planned_arena_bytes": planned,
        "replay_arena_bytes": report.get("replay_total", report["total"]),
        "arena_head_bytes": report["head"],
        "arena_tail_bytes": report["tail"],
        "pointer_bytes": pointer_bytes,
        "target": target_name,
        "model_bytes": len(data),
        "ops": [n for n, _ in registrations],
        "resolver_methods": methods,
    }


__all__ = ["RESOLVER_METHODS", "resolver_ops", "to_c"]
