"""What running TensorFlow Lite Micro in a child process costs (`kd.export.run_tflm`, `measure`).

`keras_dnas.export` runs TFLite Micro in one child process per call so that an abort inside
TFLite Micro (e.g. a degenerate int8 softmax scale) raises instead of ending the caller. This
script times, on DS-CNN (random weights, int8) and a batch of random inputs:

- in-process: the `tflite_micro` interpreter created and invoked in this process (what
  keras_dnas did before);
- child: `kd.export.run_tflm` (start a Python child, import numpy + tflite_micro, same work).

Usage: python benchmarks/tflm_child_overhead.py [--samples 200] [--repeats 3]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_dnas as kd  # noqa: E402
from keras_dnas import _flatbuffer  # noqa: E402
from keras_dnas.export import runtime  # noqa: E402


def in_process(tflite, x):
    from tflite_micro import runtime as tflm

    info = _flatbuffer.read_tflite(tflite)
    arrays, count, batch = runtime._prepare_inputs(info, x)
    interpreter = tflm.Interpreter.from_bytes(tflite, arena_size=runtime.default_arena_size(info))
    out = []
    for start in range(0, count, batch):
        interpreter.set_input(arrays[0][start:start + batch], info.input_positions[0])
        interpreter.invoke()
        out.append(np.array(interpreter.get_output(info.output_positions[0]), copy=True))
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = kd.zoo.ds_cnn()
    rng = np.random.default_rng(0)
    for w in model.weights:  # BN scales and variances positive
        positive = w.name.split("/")[-1] in ("gamma", "moving_variance")
        value = rng.uniform(0.5, 1.5, w.shape) if positive else rng.normal(0.0, 0.3, w.shape)
        w.assign(value.astype("float32"))
    x = rng.normal(size=(args.samples,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    tflite = kd.export.to_tflite(model, representative_data=x[:8])
    same = np.array_equal(in_process(tflite, x), kd.export.run_tflm(tflite, x))
    for name, fn in (("in-process", lambda: in_process(tflite, x)),
                     ("child", lambda: kd.export.run_tflm(tflite, x)),
                     ("child, measure() no data", lambda: kd.export.measure(tflite))):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"{name:<26} {args.samples} samples: best {min(times):.3f} s, "
              f"median {sorted(times)[len(times) // 2]:.3f} s")
    print(f"outputs identical (in-process vs child): {same}")


if __name__ == "__main__":
    main()
