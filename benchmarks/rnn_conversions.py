"""Does an unrolled LSTM / GRU convert to full int8 every time? One model, one calibration set,
``kd.export.to_tflite`` called N times in one process: how many conversions TFLite Micro could
run in int8 (the export refuses the others, naming the operator left in float), how many
distinct files, their operators, and for the first good file the flash and TFLite Micro's
measured host arena against the tail replay (`costs.arena.tflite_tail`).

Usage::

    python benchmarks/rnn_conversions.py                   # LSTM and GRU, T=16 and 32, N=8
    python benchmarks/rnn_conversions.py lstm 16 8         # one kind, steps, conversions
"""
import collections
import sys

import numpy as np
import keras

import keras_dnas as kd
from keras_dnas import _flatbuffer
from keras_dnas.costs import arena


def run(kind, steps, n):
    keras.utils.set_random_seed(0)
    rnn = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[kind]
    model = keras.Sequential([keras.Input((steps, 6)), rnn(16, unroll=True),
                              keras.layers.Dense(4)])
    x = np.random.RandomState(0).rand(64, steps, 6).astype("float32")
    files, refused = set(), collections.Counter()
    for _ in range(n):
        try:
            files.add(kd.export.to_tflite(model, representative_data=x))
        except ValueError as e:
            refused[next((w for w in str(e).split() if w.isupper() and len(w) > 3), "?")] += 1
    line = f"{kind} T={steps}: int8 {n - sum(refused.values())}/{n}, refused {dict(refused)}, " \
           f"{len(files)} distinct file(s)"
    if files:
        tflite = sorted(files)[0]
        ops = collections.Counter(op.name for op in _flatbuffer.read_tflite(tflite).operators)
        m = kd.export.measure(tflite)
        line += (f"; ops {dict(ops)}; flash {len(tflite)} B; host arena measured "
                 f"{m.host_arena_bytes} B (tail {m.host_arena_tail_bytes} B), tail replayed "
                 f"{arena.tflite_tail(tflite, pointer_bytes=8)} B")
    print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    else:
        for kind in ("lstm", "gru"):
            for steps in (16, 32):
                run(kind, steps, 8)
