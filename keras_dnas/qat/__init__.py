"""Quantisation-aware fine-tuning (QAT), one package.

- `keras_dnas.qat.native`: `quantize_aware(model, representative_data)` (native Keras 3 QAT,
  any backend), `strip`, `calibrate`, `activation_ranges` and the quantised layers.
- `keras_dnas.qat.tflite`: `to_tflite_qat(qat_model, representative_data)`, the int8 `.tflite`
  of a fine-tuned quantisation-aware model.
- `keras_dnas.qat.tfmot`: `to_tflite_tfmot(model, train_data, ...)`, tensorflow-model-optimization's
  QAT in a child process (`keras_dnas[tfmot]` extra).

`kd.export.to_tflite_qat` and `kd.export.to_tflite_tfmot` are the same functions.
"""

from keras_dnas.qat.native import (
    FakeQuant,
    QuantConv1D,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv1D,
    QuantDepthwiseConv2D,
    activation_ranges,
    calibrate,
    fake_quant_layers,
    is_quantize_aware,
    quantize_aware,
    quantize_kernel,
    strip,
)
from keras_dnas.qat.tflite import to_tflite_qat
from keras_dnas.qat.tfmot import to_tflite_tfmot

__all__ = [
    "FakeQuant",
    "QuantConv1D",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv1D",
    "QuantDepthwiseConv2D",
    "activation_ranges",
    "calibrate",
    "fake_quant_layers",
    "is_quantize_aware",
    "quantize_aware",
    "quantize_kernel",
    "strip",
    "to_tflite_qat",
    "to_tflite_tfmot",
]
