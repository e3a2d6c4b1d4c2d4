"""Float accuracy, full-int8 TFLite export and TFLite Micro measurement of a trained model."""

import time

import keras_dnas as kd

REPRESENTATIVE = 256
"""Training samples used to calibrate the int8 quantisation."""


def measure(model, data):
    """Export to full int8 and run it in TFLite Micro on the test split.

    Returns:
        dict: ``float_acc`` (Keras, test split), ``int8_acc`` (TFLite Micro),
        ``flash`` (``len(.tflite)``), ``arena`` / ``arena_head`` / ``arena_tail``
        (TFLite Micro's recording allocator on this 64-bit host: the harness budgets and
        certifies with ``pointer_bytes=8`` memory models, see BENCHMARKS.md), ``agreement``,
        ``eval_s``.
    """
    start = time.perf_counter()
    x, _ = data["train"]
    xt, yt = data["test"]
    tflite = kd.export.to_tflite(model, representative_data=x[:REPRESENTATIVE])
    r = kd.export.measure(tflite, data=(xt, yt), keras_model=model)
    return {"float_acc": r.float_accuracy, "int8_acc": r.accuracy, "agreement": r.agreement,
            "flash": int(r.flash_bytes), "arena": int(r.host_arena_bytes),
            "arena_head": int(r.host_arena_head_bytes),
            "arena_tail": int(r.host_arena_tail_bytes),
            "eval_s": time.perf_counter() - start, "tflite": tflite}

