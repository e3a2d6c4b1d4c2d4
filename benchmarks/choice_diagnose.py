"""Where a ``"paper_b"`` choice search loses accuracy: one MNIST ResNet-8 point, stage by stage.

A cheap companion of ``choice_search.py`` (float accuracy on the test split, no int8 export):
the grid's warm-up checkpoint (cached in ``--cache``), ``kd.prepare(model, alternatives=...)``,
the search with ``DNASCallback`` options from the command line, ``kd.freeze`` with the same
budgets, fine-tuning. Printed: the checkpoint's accuracy, every alternative's accuracy when
it alone is selected in every block (before and after the supernet warm-up), the per-epoch
validation accuracy, the choice per block, and the accuracy of the searchable model's argmax
path, of the frozen model and of the fine-tuned model (BN statistics recalibrated before each).

Usage::

    nice -n 10 python benchmarks/choice_diagnose.py --flash 0.125 --warmup 1
    nice -n 10 python benchmarks/choice_diagnose.py --warmup 1 --option choice_temperature=1,1
"""

import argparse
import ast
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flash", type=float, default=0.125)
    p.add_argument("--ram", type=float, default=0.5)
    p.add_argument("--target", default="stm32h743")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="choice warm-up epochs (of the search)")
    p.add_argument("--search-epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--alternatives", default="paper_b",
                   help="'paper_b' or 'none' (channels only)")
    p.add_argument("--option", action="append", default=[],
                   help="DNASCallback option name=python literal (repeatable)")
    p.add_argument("--no-init", action="store_true",
                   help="leave paper_b's new alternatives at Keras' initialisation (as before "
                        "they were started from the seed's block)")
    p.add_argument("--skip-per-alternative", action="store_true")
    p.add_argument("--mode", default=None, help="set every Choice's mode (gumbel / softmax)")
    p.add_argument("--cache", default="/tmp/choice_diag_warm")
    args = p.parse_args(argv)

    import numpy as np
    import keras
    import keras_dnas as kd
    from _bench import costs as costs_lib
    from _bench import evaluate, methods, tasks
    from keras_dnas.graph import walk

    if args.no_init:
        import keras_dnas.choices

        keras_dnas.choices._initialise_from_seed = lambda pool, chain_ops: None
    tasks.SEED = args.seed
    task = tasks.TASKS["mnist"]
    epochs = task.epochs
    search_epochs = args.search_epochs or epochs.search
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None \
        else epochs.finetune
    data = task.load(False)
    cpu0 = time.process_time()
    cache = f"{args.cache}_s{args.seed}.npz"
    if os.path.exists(cache):
        stored = np.load(cache)
        warm = {"warm_weights": [stored[f"w{i}"] for i in range(len(stored.files) - 2)],
                "times": {"warmup": 0.0}}
        flash, arena = int(stored["flash"]), int(stored["arena"])
    else:
        warm = methods.warm_up(task, data, epochs)
        model = task.build()
        model.set_weights(warm["warm_weights"])
        measured = evaluate.measure(model, data)
        flash, arena = measured["flash"], measured["arena"]
        np.savez(cache, flash=flash, arena=arena,
                 **{f"w{i}": w for i, w in enumerate(warm["warm_weights"])})
    warm_model = task.build()
    warm_model.set_weights(warm["warm_weights"])
    seed_costs = costs_lib.SeedCosts(warm_model, [args.target], True)
    seed_est = seed_costs.evaluate(args.target, seed_costs.full())
    point = tasks.BudgetPoint(args.target, args.flash, args.ram, 1.0)
    budgets = costs_lib.budgets_for(point, {"flash": flash, "arena": arena},
                                    {args.target: seed_est["latency_ms"]}, True,
                                    seed_est["params"])
    xt, yt = data["test"]

    def acc(model, samples=methods.RECALIBRATION_SAMPLES):
        kd.recalibrate_batchnorm(model, data["train"][0][:samples])
        logits = model.predict(xt, batch_size=256, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == yt))

    print(f"budgets {budgets}; warm checkpoint test acc {acc(warm_model):.4f}", flush=True)
    options = {}
    for item in args.option:
        name, value = item.split("=", 1)
        options[name] = ast.literal_eval(value)
    alternatives = None if args.alternatives == "none" else args.alternatives

    keras.utils.set_random_seed(args.seed)
    model = task.build()
    model.set_weights(warm["warm_weights"])
    search = methods.compile_model(kd.prepare(model, alternatives=alternatives), task)
    choices = [layer for layer in walk.functional_of(search).layers
               if kd.layers.Choice is type(layer)]
    for c in choices if args.mode else []:
        c.mode = args.mode

    def per_alternative(tag):
        """Test accuracy with alternative ``i`` selected in every block that has it."""
        saved = [keras.ops.convert_to_numpy(c.dnas_choice) for c in choices]
        weights = search.get_weights()
        out = {}
        for i in range(max((c.num_alternatives for c in choices), default=0)):
            for c in choices:
                logits = np.zeros(c.num_alternatives, "float32")
                logits[min(i, c.num_alternatives - 1)] = 1.0
                c.dnas_choice.assign(logits)
            out[i] = round(acc(search, 512), 4)
            search.set_weights(weights)
        for c, s in zip(choices, saved):
            c.dnas_choice.assign(s)
        print(f"{tag}: test acc with alternative i in every block {out}", flush=True)

    if choices and not args.skip_per_alternative:
        per_alternative("prepared")

    memory = None
    if alternatives is not None:
        from keras_dnas.choice_memory import ChoiceMemory

        memory = ChoiceMemory.from_model(search, search.dnas_plan,
                                         pointer_bytes=costs_lib.POINTER_BYTES)
    else:
        memory = seed_costs.memory
    callback = kd.DNASCallback(args.target, budgets=dict(budgets), memory=memory, verbose=0,
                               warmup_epochs=args.warmup, **options)

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            h = callback.history[-1]
            chosen = [c.chosen() for c in choices]
            probs = [np.round(np.asarray(keras.ops.softmax(c.dnas_choice)), 2).tolist()
                     for c in choices]
            print(f"epoch {epoch}: loss {logs.get('loss'):.3f} acc {logs.get('accuracy'):.3f} "
                  f"val_acc {logs.get('val_accuracy'):.3f} flash {h['dnas/flash_bytes']:.0f} "
                  f"feasible {h['dnas/feasible']:.0f} chosen {chosen} "
                  f"p {probs if len(probs) < 8 else ''}", flush=True)
            if choices and epoch + 1 == args.warmup and not args.skip_per_alternative:
                per_alternative("after warm-up")

    x, y = data["train"]
    search.fit(x, y, batch_size=task.batch_size, epochs=search_epochs, verbose=0, shuffle=True,
               callbacks=[callback, Epochs()], validation_data=data["val"])
    print(f"restored epoch {callback.restored_epoch}; chosen {kd.choices.chosen(search)}",
          flush=True)
    before = acc(search)
    if alternatives is not None:
        picked = kd.choices.chosen(search)
        memory = memory.exact_memory([picked[b["name"]] for b in search.dnas_plan.choices])[0]
    slim = kd.freeze(search, target=args.target, budgets=dict(budgets), memory=memory,
                     verbose=0)
    after = acc(slim)
    keras.utils.set_random_seed(args.seed)
    methods.compile_model(slim, task)
    methods.fit(slim, task, data, finetune_epochs)
    tuned = acc(slim)
    cert = getattr(slim, "dnas_certificate", {}) or {}
    print(json.dumps({"flash_frac": args.flash, "options": options, "warmup": args.warmup,
                      "acc_search_argmax": round(before, 4), "acc_frozen": round(after, 4),
                      "acc_finetuned": round(tuned, 4), "certified": cert.get("all_hold"),
                      "removed": len(cert.get("removed_channels", [])),
                      "cpu_s": round(time.process_time() - cpu0, 1)}), flush=True)


if __name__ == "__main__":
    main()
