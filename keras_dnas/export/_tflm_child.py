"""Child process that runs TensorFlow Lite Micro for `keras_dnas.export.runtime`.

TFLite Micro aborts the whole process when a kernel's precondition fails (e.g. `SOFTMAX`'s
`QuantizeMultiplierGreaterThanOne` on a degenerate input scale), so the parent never loads it:
it starts this file with `python -c`, sends one pickled request on stdin and reads one pickled
reply from stdout. A crash only ends this child; the parent turns it into a Python exception.

Imports numpy and `tflite_micro` only (no keras_dnas, no Keras: the child starts in well under
a second). Everything native code prints goes to stderr, which the parent captures; progress
lines starting with `PHASE_PREFIX` tell the parent where a crash happened.

Request: dict with `model` (bytes), `arena_size` (int), `tries` (arena growths on a failed
allocation), `inputs` (list of arrays, one per model input, or None), `input_positions`,
`output_positions`, `batch`, `count`, `zero_inputs` (list of `(shape, dtype)` for one
inference on zeros when `inputs` is None) and `allocations` (bool: also return
`print_allocations()`'s text).
Reply: dict with `ok`, `arena_size` and either `outputs` (list of lists of arrays) and
`allocations` (text or None), or `error` for an allocation TFLite Micro reported as failed
(its log is in the child's stderr).
"""

import os
import pickle
import sys
import tempfile

PHASE_PREFIX = "[keras_dnas tflm phase] "


def _phase(text):
    sys.stderr.write(PHASE_PREFIX + text + "\n")
    sys.stderr.flush()


def _captured_stderr(fn):
    """Run `fn()` with fd 2 pointed at a temporary file; return (result, text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read().decode("utf-8", errors="replace")


def serve(request):
    import numpy as np
    from tflite_micro import runtime as tflm

    size = int(request["arena_size"])
    error = None
    interpreter = None
    for attempt in range(int(request["tries"])):
        _phase(f"prepare arena_size={size}")
        try:
            interpreter = tflm.Interpreter.from_bytes(request["model"], arena_size=size)
            break
        except RuntimeError as e:
            error = str(e)
            if attempt + 1 < int(request["tries"]):
                size *= 4
    if interpreter is None:
        return {"ok": False, "error": error, "arena_size": size}
    outputs = [[] for _ in request["output_positions"]]
    inputs = request["inputs"]
    if inputs is None:  # one inference on zeros (print_allocations wants one first)
        inputs = [np.zeros(shape, dtype) for shape, dtype in request["zero_inputs"]]
        count, batch = 1, 1
        keep = False
    else:
        count, batch, keep = int(request["count"]), int(request["batch"]), True
    for start in range(0, count, batch):
        _phase(f"invoke sample={start}")
        for arr, pos in zip(inputs, request["input_positions"]):
            interpreter.set_input(arr[start:start + batch] if keep else arr, pos)
        interpreter.invoke()
        if keep:
            for k, pos in enumerate(request["output_positions"]):
                outputs[k].append(np.array(interpreter.get_output(pos), copy=True))
    allocations = None
    if request.get("allocations"):
        _phase("print_allocations")
        _, allocations = _captured_stderr(interpreter.print_allocations)
    return {"ok": True, "outputs": outputs, "allocations": allocations, "arena_size": size}


def main():
    # The reply goes to the original stdout; anything native code prints there goes to stderr.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    request = pickle.load(sys.stdin.buffer)
    reply = serve(request)
    with os.fdopen(reply_fd, "wb") as out:
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    main()
