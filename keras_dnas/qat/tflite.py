"""Full-int8 TFLite export of a quantisation-aware model (`keras_dnas.qat.quantize_aware`)."""

from keras_dnas.export.convert import to_tflite

_METHODS = ("auto", "fake_quant", "ptq")


def to_tflite_qat(qat_model, representative_data, *, method="auto"):
    """Convert a fine-tuned quantisation-aware model to a full-int8 TFLite Micro model.

    The int8 weights are the ones the model trained with (the kernels are exported on their
    per-channel int8 grid, which the converter's per-channel quantisation reproduces exactly;
    BatchNormalization is already folded). The activation scales depend on `method`:

    - `"fake_quant"` (TensorFlow backend): the learnt ranges are exported as
      `tf.quantization.fake_quant_with_min_max_vars` ops, which the TFLite converter turns into
      the int8 scales and zero points, so the `.tflite` computes what the fake-quantised model
      computed. `representative_data` only calibrates tensors without a quantiser (e.g. the
      inner MUL of a BatchNormalization that could not be folded).
    - `"ptq"` (any backend): the quantisers are dropped and the converter calibrates every
      activation range on `representative_data` (post-training quantisation of the fine-tuned
      weights).
    - `"auto"` (default): `"fake_quant"` on the TensorFlow backend, `"ptq"` otherwise (the
      JAX / PyTorch fake quantiser is plain arithmetic that the converter cannot recognise).

    Args:
        qat_model: A model from `keras_dnas.qat.quantize_aware` (fine-tuned or not).
        representative_data: Typical inputs, as for `to_tflite`.
        method: `"auto"`, `"fake_quant"` or `"ptq"`.

    Returns:
        The `.tflite` flatbuffer (`bytes`), checked to hold only int8 TensorFlow Lite Micro
        operators (as `to_tflite` checks).

    Raises:
        ValueError: For a model without quantisation-aware layers, an unknown `method`,
            `"fake_quant"` on a backend other than TensorFlow, or a conversion failure.

    Example:

    >>> import keras, numpy as np
    >>> from keras_dnas.qat import quantize_aware
    >>> from keras_dnas.export import op_names
    >>> from keras_dnas.qat.tflite import to_tflite_qat
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
    ...                           keras.layers.Dense(2)])
    >>> x = np.random.rand(64, 8).astype("float32")
    >>> q = quantize_aware(model, representative_data=x)
    >>> op_names(to_tflite_qat(q, representative_data=x))
    ['FULLY_CONNECTED', 'FULLY_CONNECTED']
    """
    import keras

    from keras_dnas import qat

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}. Received: method={method!r}")
    if not isinstance(qat_model, keras.Model) or not qat.is_quantize_aware(qat_model):
        raise ValueError(
            "to_tflite_qat() expects a model from keras_dnas.qat.quantize_aware(); convert a "
            "plain model with to_tflite(). Received: "
            + (f"model '{qat_model.name}'" if isinstance(qat_model, keras.Model)
               else type(qat_model).__name__)
        )
    backend = keras.backend.backend()
    if method == "auto":
        method = "fake_quant" if backend == "tensorflow" else "ptq"
    if method == "fake_quant" and backend != "tensorflow":
        raise ValueError(
            "method='fake_quant' needs the TensorFlow backend (the converter reads "
            "tf.quantization.fake_quant_* ops); use method='ptq'. "
            f"Received: method='fake_quant' with the {backend!r} backend"
        )
    plain = qat.strip(qat_model, keep_activation_ranges=method == "fake_quant")
    return to_tflite(plain, representative_data=representative_data, quantization="int8")
