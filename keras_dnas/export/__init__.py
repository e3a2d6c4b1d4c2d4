"""Export to TFLite and measurement in TensorFlow Lite Micro.

The only part of keras_dnas that uses TensorFlow, and only inside `to_tflite` (imported on
first use, so `import keras_dnas` stays light). Measuring needs `tflite_micro` only; the LiteRT
cross-check needs `ai_edge_litert`.

- `to_tflite(model, representative_data, quantization="int8", arena_plan="tflm")`: full-integer
  `.tflite` bytes, TFLite Micro operators only; `arena_plan="offline"` also writes a verified
  arena layout (and operator order) that needs less RAM than TFLite Micro's own planner
  (`keras_dnas.export.offline`).
- `measure(tflite, target=None, data=None)`: flash, tensor arena on the target (head / tail;
  the host interpreter's as `host_arena_*`), operators, quantisation, accuracy in TFLite Micro
  (run in a child process: a TFLite Micro abort raises `RuntimeError`).
- `to_c(tflite, out_dir, target=...)`: `<name>.h` / `<name>.cc` for a TFLite Micro application
  (aligned model array, the target's arena size, the op resolver registrations).
- `run_tflm` / `run_litert`: run a model sample by sample (raw or dequantised outputs).
- `to_tflite_qat` (native Keras 3 QAT) / `to_tflite_tfmot` (tensorflow-model-optimization's QAT in
  a child process, `keras_dnas[tfmot]` extra).
- `arena_usage`, `op_names`, `tflm_problems`, `TFLM_BUILTIN_OPS`: the pieces.
"""

from keras_dnas.export.c_source import resolver_ops, to_c
from keras_dnas.export.convert import to_tflite
from keras_dnas.export.estimate import estimate, tflite_layers
from keras_dnas.export.measure import MeasureResult, measure
from keras_dnas.export.ops import TFLM_BUILTIN_OPS, op_names, tflm_problems
from keras_dnas.qat.tflite import to_tflite_qat
from keras_dnas.export.runtime import (
    arena_usage,
    parse_allocations,
    run_litert,
    run_tflm,
    tflm_preflight,
)
from keras_dnas.qat.tfmot import to_tflite_tfmot

__all__ = [
    "MeasureResult",
    "TFLM_BUILTIN_OPS",
    "arena_usage",
    "estimate",
    "measure",
    "op_names",
    "parse_allocations",
    "run_litert",
    "resolver_ops",
    "run_tflm",
    "tflite_layers",
    "tflm_preflight",
    "tflm_problems",
    "to_c",
    "to_tflite",
    "to_tflite_qat",
    "to_tflite_tfmot",
]
