"""Child process that converts a Keras model to TFLite under the TensorFlow backend.

The TFLite converter reads TensorFlow graphs, and Keras fixes its backend when it is first
imported: a search on JAX or PyTorch cannot convert in its own process. `convert.to_tflite`
then saves the model as `.keras` and asks this child (started once, kept for the session,
`KERAS_BACKEND=tensorflow`) to convert it, with the same `to_tflite`.

Protocol, as `_tflm_child`: pickled requests on stdin, one pickled reply each on the original
stdout (anything native code prints goes to stderr). Request: dict with `path` (the `.keras`
file), `representative_data` (an array, a list of arrays or None), `quantization`,
`allow_float_ops`, `arena_plan`. Reply: dict with `ok` and `tflite` (bytes), or `error`
(message) and `error_type` (`"ValueError"` or another exception's class name).
"""

import os
import pickle
import sys


def serve(request):
    import keras

    from keras_dnas.export.convert import to_tflite

    try:
        model = keras.saving.load_model(request["path"], compile=False, safe_mode=False)
        blob = to_tflite(model, representative_data=request["representative_data"],
                         quantization=request["quantization"],
                         allow_float_ops=request["allow_float_ops"],
                         arena_plan=request["arena_plan"])
        return {"ok": True, "tflite": bytes(blob)}
    except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
        return {"ok": False, "error": str(e), "error_type": type(e).__name__}


def main():
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    with os.fdopen(reply_fd, "wb") as out:
        while True:
            try:
                request = pickle.load(sys.stdin.buffer)
            except EOFError:
                return
            pickle.dump(serve(request), out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()


if __name__ == "__main__":
    main()
