"""Float accuracy, full-int8 TFLite export and TFLite Micro measurement of a trained model."""

import time

import keras_dnas as kd
from keras_dnas.export import offline

REPRESENTATIVE = 256
"""Training samples used to calibrate the int8 quantisation."""


def measure(model, data, arena_plan="tflm"):
    """Export to full int8 and run it in TFLite Micro on the test split.

    ``arena_plan``: passed to ``kd.export.to_tflite`` (``"offline"``: the file carries its own
    arena plan, and the arena measured is that plan's).

    Returns:
        dict: ``float_acc`` (Keras, test split), ``int8_acc`` (TFLite Micro),
        ``flash`` (``len(.tflite)``), ``arena`` / ``arena_head`` / ``arena_tail``
        (TFLite Micro's recording allocator on this 64-bit host: the harness budgets and
        certifies with ``pointer_bytes=8`` memory models, see BENCHMARKS.md), ``agreement``,
        ``arena_plan`` (the plan the file carries), ``greedy_arena_head`` (the head TFLite
        Micro's own planner would need for the same file), ``eval_s``.
    """
    start = time.perf_counter()
    x, _ = data["train"]
    xt, yt = data["test"]
    tflite = kd.export.to_tflite(model, representative_data=x[:REPRESENTATIVE],
                                 arena_plan=arena_plan)
    r = kd.export.measure(tflite, data=(xt, yt), keras_model=model)
    return {"float_acc": r.float_accuracy, "int8_acc": r.accuracy, "agreement": r.agreement,
            "flash": int(r.flash_bytes), "arena": int(r.host_arena_bytes),
            "arena_head": int(r.host_arena_head_bytes),
            "arena_tail": int(r.host_arena_tail_bytes), "arena_plan": r.arena_plan,
            "greedy_arena_head": int(offline.greedy_head(tflite)),
            "eval_s": time.perf_counter() - start, "tflite": tflite}

