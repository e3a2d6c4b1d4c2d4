"""What the search's budget penalty costs: its graph (ops, trace time) and the search fit's epochs.

Part 1 traces ``DNASCallback.penalty`` (flash, RAM and latency budgets at 50 % / 50 % / 0.75x of
the seed on stm32h743, as ``search_cost.py``) in a ``tf.function``, alone and with its gradient
in the mask variables, and prints the graph's op count, the trace's and the first call's CPU
seconds and the CPU milliseconds per later call. Part 2 (``--epochs N``) fits the prepared seed
``N`` epochs with that callback (``calibration_data`` = the training inputs) and prints each
epoch's CPU seconds: the first epoch holds the traces, the others are steady.

Run it once per code version, alternately, at the same load (``PYTHONPATH`` picks the version)::

    PYTHONPATH=/path/to/before python benchmarks/penalty_cost.py --task digits --epochs 6
    PYTHONPATH=. python benchmarks/penalty_cost.py --task digits --epochs 6
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="digits", choices=["digits", "mnist", "hapt"])
    p.add_argument("--epochs", type=int, default=0, help="also fit the search this many epochs")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_dnas as kd
    from _bench import methods, tasks
    from keras_dnas import memory as memory_lib
    from keras_dnas.costs.model import CostModel

    task = tasks.TASKS[args.task]
    keras.utils.set_random_seed(tasks.SEED)
    search = methods.compile_model(kd.prepare(task.build()), task)
    target = "stm32h743"
    memory = memory_lib.MemoryModel.from_model(search, target=target)
    seed = CostModel(memory.plan, target, memory=memory)
    full = seed.evaluate(seed.full_counts(), ["flash_bytes", "ram_bytes", "latency_ms"])
    budgets = {"flash_bytes": int(0.5 * float(full["flash_bytes"])),
               "ram_bytes": int(0.5 * float(full["ram_bytes"])),
               "latency_ms": 0.75 * float(full["latency_ms"])}
    print(f"keras_dnas from {os.path.dirname(kd.__file__)}; load {os.getloadavg()[0]:.1f}")

    if not args.epochs:
        cb = kd.DNASCallback(target, budgets=budgets, verbose=0)
        cb.bind(search)
        masks = kd.masks.mask_variables(search)

        def with_gradient():
            with tf.GradientTape() as tape:
                value = cb.penalty()
            return value, tape.gradient(value, masks)

        for label, fn in (("penalty", cb.penalty), ("penalty + gradient", with_gradient)):
            start = time.process_time()
            traced = tf.function(fn, autograph=False)
            ops = len(traced.get_concrete_function().graph.get_operations())
            traced_at = time.process_time()
            traced()
            first_at = time.process_time()
            for _ in range(50):
                traced()
            end = time.process_time()
            print(f"{label}: {ops} ops, trace {traced_at - start:.2f} s CPU, first call "
                  f"{first_at - traced_at:.2f} s, then {(end - first_at) / 50 * 1e3:.2f} ms "
                  "per call")
        return 0

    data = task.load(False)
    x, y = data["train"]
    cb = kd.DNASCallback(target, budgets=budgets, calibration_data=x, verbose=0)
    epochs = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append(time.process_time() - self.start)

    start = time.process_time()
    history = search.fit(x, y, epochs=args.epochs, batch_size=task.batch_size, verbose=0,
                         shuffle=True, validation_data=data["val"], callbacks=[cb, Clock()])
    print(f"search fit: {time.process_time() - start:.2f} s CPU; epochs "
          + ", ".join(f"{e:.2f}" for e in epochs)
          + f"; loss {history.history['loss'][-1]:.4f}, val_loss "
          f"{history.history['val_loss'][-1]:.4f}; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
