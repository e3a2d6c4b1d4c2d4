"""The four methods, each returning a trained plain Keras model and its wall times.

All methods use the same optimiser (Adam, the task's learning rate), batch size,
loss and total number of epochs (``task.epochs.total``):

- ``seed``: the seed, no constraint, ``total`` epochs. Its weights after
  ``warmup`` epochs are the shared warm-up checkpoint of ``l1`` and ``dnas``.
- ``hand``: uniform width multiplier, the largest ``k/64`` whose exact costs meet
  every budget; the narrow architecture is built by keeping the first
  ``round(w * C)`` channels of every searchable group (``freeze.rebuild_with``
  on a prepared seed), then re-initialised (``keras.models.clone_model``) and
  trained from scratch for ``total`` epochs.
- ``l1``: structured L1-norm filter pruning (Li et al., ICLR 2017) of the
  warm-up checkpoint: a channel's score is the L1 norm of its filter in every
  Conv/Dense defining its group, each layer's norms divided by their mean, summed
  over the group's layers. ``freeze.project`` then closes, one at a time, the
  lowest-scoring channel of the group where score / (budget violation removed)
  is smallest, until the exact costs meet every budget (cost-aware, global
  ranking); fine-tune ``search + finetune`` epochs.
- ``dnas``: keras_dnas: warm-up checkpoint, ``kd.prepare``, ``search`` epochs
  with ``kd.DNASCallback`` (validation split picks the checkpoint),
  ``kd.freeze(..., budgets=...)`` (certified), fine-tune ``finetune`` epochs.
- ``dnas_offline`` (only when asked for, ``run.py --methods``): ``dnas`` with
  ``arena_plan="offline"`` in the callback, ``kd.freeze`` and the exported file.

BatchNormalization statistics are recalibrated exactly (``kd.recalibrate_batchnorm``
on ``RECALIBRATION_SAMPLES`` training samples, as ``examples/quickstart.py`` does) at
the same places for every method: on the warm-up checkpoint, after pruning / freezing,
and on every final model, seed included. Its time counts in each method's wall time.
"""

import time

import numpy as np

import keras
import keras_dnas as kd
from keras_dnas.costs.model import CostModel
from keras_dnas.freeze import kept_channels, project, rebuild_with
from keras_dnas.search import Budget

from _bench import costs as costs_lib
from _bench import tasks


RECALIBRATION_SAMPLES = 2048


def recalibrate(model, data):
    """Exact BN statistics from the first training samples; returns the seconds spent."""
    start = time.perf_counter()
    kd.recalibrate_batchnorm(model, data["train"][0][:RECALIBRATION_SAMPLES])
    return time.perf_counter() - start


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_model(model, task):
    model.compile(optimizer=keras.optimizers.Adam(task.learning_rate), loss=_loss(),
                  metrics=["accuracy"])
    return model


class _EpochClock(keras.callbacks.Callback):
    """Wall time at the end of every epoch, and the weights after ``snapshot_at`` epochs."""

    def __init__(self, snapshot_at=None):
        super().__init__()
        self.snapshot_at = snapshot_at
        self.ends = []
        self.snapshot = None

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter() - self.start)
        if self.snapshot_at is not None and epoch + 1 == self.snapshot_at:
            self.snapshot = [np.array(w) for w in self.model.get_weights()]


def fit(model, task, data, epochs, callbacks=(), validation=False):
    """Train ``epochs`` epochs; returns the wall time in seconds (0 for 0 epochs)."""
    if epochs <= 0:
        return 0.0
    x, y = data["train"]
    start = time.perf_counter()
    model.fit(x, y, batch_size=task.batch_size, epochs=epochs, verbose=0, shuffle=True,
              callbacks=list(callbacks),
              validation_data=data["val"] if validation else None)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ methods


def seed(task, data, epochs):
    """(a) The seed, trained ``epochs.total`` epochs; also yields the warm-up checkpoint."""
    keras.utils.set_random_seed(tasks.SEED)
    model = compile_model(task.build(), task)
    clock = _EpochClock(snapshot_at=epochs.warmup)
    train = fit(model, task, data, epochs.total, callbacks=[clock])
    warm = clock.snapshot if epochs.warmup > 0 else [np.array(w) for w in task.build().get_weights()]
    warm_time = clock.ends[epochs.warmup - 1] if epochs.warmup > 0 else 0.0
    # the warm-up checkpoint with exact BN statistics, shared by L1 pruning and keras_dnas
    warm_model = task.build()
    warm_model.set_weights(warm)
    warm_time += recalibrate(warm_model, data)
    warm = [np.array(w) for w in warm_model.get_weights()]
    recal = recalibrate(model, data)
    return {"model": model, "warm_weights": warm,
            "times": {"train": train, "warmup": warm_time, "recalibrate": recal},
            "wall": train + recal, "epoch_ends": clock.ends}


def warm_up(task, data, epochs):
    """The warm-up checkpoint of :func:`seed` without training the seed to the end.

    The same initialisation, data order and ``epochs.warmup`` epochs as :func:`seed`'s first
    epochs, then the same exact BN statistics (for benchmarks that need the checkpoint only).
    """
    keras.utils.set_random_seed(tasks.SEED)
    model = compile_model(task.build(), task)
    train = fit(model, task, data, epochs.warmup)
    recal = recalibrate(model, data)
    return {"warm_weights": [np.array(w) for w in model.get_weights()],
            "times": {"warmup": train + recal}}


def hand_tuned(task, data, epochs, seed_costs, target, budgets):
    """(b) The widest uniform width multiplier meeting every budget, trained from scratch."""
    start = time.perf_counter()
    found = costs_lib.widest_uniform(seed_costs, target, budgets)
    scan = time.perf_counter() - start
    if found is None:
        raise ValueError("no uniform width multiplier meets the budgets")
    width, config, _ = found
    keras.utils.set_random_seed(tasks.SEED)
    search = kd.prepare(task.build())
    plan, keep = kept_channels(search)
    keep = [k if g.frozen else np.arange(g.size) < config[g.leader]
            for g, k in zip(plan.groups, keep)]
    narrow = rebuild_with(search, plan, keep)
    keras.utils.set_random_seed(tasks.SEED)
    model = compile_model(keras.models.clone_model(narrow), task)  # fresh initialisation
    train = fit(model, task, data, epochs.total)
    recal = recalibrate(model, data)
    return {"model": model, "width": width, "config": config,
            "times": {"scan": scan, "train": train, "recalibrate": recal},
            "wall": scan + train + recal}


FLOOR_SCORE = 1e6


def l1_scores(search, plan):
    """Per searchable group: summed, per-layer mean-normalised L1 norms of the defining filters."""
    scores = {}
    for g in plan.groups:
        if g.frozen:
            continue
        total = np.zeros(g.size)
        for name in g.defined_by:
            kernel = np.asarray(keras.ops.convert_to_numpy(search.get_layer(name).kernel))
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
            total += norms / max(norms.mean(), 1e-12)
        scores[g.id] = total / len(g.defined_by)
    return scores


def l1_prune(task, warm, target, budgets, memory):
    """(c), first half: prune the warm-up checkpoint by L1 norm until every budget holds.

    Returns:
        dict: ``model`` (pruned, not fine-tuned), ``key`` (the keep sets, hashable),
        ``removed`` (channels closed), ``prune_s``.
    """
    start = time.perf_counter()
    model = task.build()
    model.set_weights(warm["warm_weights"])
    search = kd.prepare(model)
    plan, keep = kept_channels(search)
    scores = l1_scores(search, plan)
    for g in plan.groups:  # project() ranks channels by |alpha|: put the L1 scores there
        if not g.frozen:
            score = scores[g.id].copy()
            # Soft floor of two channels per group, as kd.freeze's projection has: the two
            # best channels of a group are closed only if nothing else can meet the budgets
            # (introduced when kd.export could not convert a one-channel Conv1D residual Add).
            score[np.argsort(score)[-2:]] += FLOOR_SCORE
            search.get_layer(g.leader).dnas_alpha.assign(score.astype("float32"))
    cost_model = CostModel(plan, target, memory=memory)
    all_open = [np.ones(g.size, bool) for g in plan.groups]
    keep, removed, _ = project(search, cost_model, [Budget(m, v) for m, v in budgets.items()],
                               plan=plan, keep=all_open)
    pruned = rebuild_with(search, plan, keep)
    key = tuple(np.packbits(k).tobytes() for k in keep)
    return {"model": pruned, "key": key, "removed": len(removed),
            "prune_s": time.perf_counter() - start}


def l1_recalibrate(pruned, data):
    """(c): exact BN statistics of the pruned model before fine-tuning (cached with it)."""
    pruned["prune_s"] += recalibrate(pruned["model"], data)
    return pruned


def l1_finetune(task, data, epochs, warm, pruned):
    """(c), second half: fine-tune the pruned model ``search + finetune`` epochs."""
    keras.utils.set_random_seed(tasks.SEED)
    model = compile_model(pruned["model"], task)
    finetune = fit(model, task, data, epochs.search + epochs.finetune)
    recal = recalibrate(model, data)
    times = {"warmup": warm["times"]["warmup"], "prune": pruned["prune_s"], "finetune": finetune,
             "recalibrate": recal}
    return {"model": model, "removed": pruned["removed"], "times": times,
            "wall": sum(times.values())}


def dnas(task, data, epochs, warm, target, budgets, memory, callback_options=None,
         observers=None, verbose=0, arena_plan="tflm", search=("channels",),
         alternatives=None, freeze_options=None, choice_mode="gumbel"):
    """(d) keras_dnas: warm-up checkpoint, search with DNASCallback, certified freeze, fine-tune.

    ``callback_options``: extra ``DNASCallback`` arguments (e.g. ``centred_gradients``);
    ``observers(callback)``: returns more Keras callbacks for the search (``trace_search.py``);
    ``verbose``: passed to ``kd.freeze``; ``arena_plan``: passed to ``DNASCallback`` and
    ``kd.freeze`` (``"offline"``: RAM is budgeted and certified against the arena plan
    ``kd.export.to_tflite(..., arena_plan="offline")`` writes); ``search``: passed to
    ``kd.prepare`` (with the time axis the searchable model has its own flash / RAM model,
    built here with the same 8-byte pointers); ``alternatives``: passed to ``kd.prepare``
    (choice blocks; the seed's ``memory`` does not describe that model, so the callback and
    freeze build their own) with ``choice_mode``; ``freeze_options``: extra ``kd.freeze``
    arguments (``energy_front.py`` passes ``fill=False``: reopening channels into the unused memory
    budget would undo a ``Minimize`` objective).
    """
    keras.utils.set_random_seed(tasks.SEED)
    start = time.perf_counter()
    model = task.build()
    model.set_weights(warm["warm_weights"])
    search = compile_model(kd.prepare(model, search=search, alternatives=alternatives,
                                      choice_mode=choice_mode), task)
    if alternatives is not None:
        # the supernet's own flash / RAM model, with the same 8-byte pointers as the seed's
        from keras_dnas.choice_memory import ChoiceMemory

        memory = ChoiceMemory.from_model(search, search.dnas_plan,
                                         pointer_bytes=costs_lib.POINTER_BYTES)
    elif tuple(search.dnas_plan.tap_layers()):
        memory = costs_lib.build_memory(search, search.dnas_plan)
    # The seed's flash / RAM model (8-byte pointers, see _bench.costs.POINTER_BYTES), built
    # once per architecture and shared by every method, goes to the callback and freeze.
    callback = kd.DNASCallback(target, budgets=dict(budgets), memory=memory, verbose=0,
                               arena_plan=arena_plan, **(callback_options or {}))
    extra = list(observers(callback)) if observers is not None else []
    prepare = time.perf_counter() - start
    search_time = fit(search, task, data, epochs.search, callbacks=[callback, *extra],
                      validation=True)
    start = time.perf_counter()
    if alternatives is not None:  # freeze certifies the chosen structure: its memory model
        picked = kd.choices.chosen(search)
        memory = memory.exact_memory([picked[b["name"]] for b in search.dnas_plan.choices])[0]
    slim = kd.freeze(search, target=target, budgets=dict(budgets), memory=memory,
                     verbose=verbose, arena_plan=arena_plan, **(freeze_options or {}))
    freeze = time.perf_counter() - start
    recal = recalibrate(slim, data)
    keras.utils.set_random_seed(tasks.SEED)
    compile_model(slim, task)
    finetune = fit(slim, task, data, epochs.finetune)
    recal += recalibrate(slim, data)
    certificate = getattr(slim, "dnas_certificate", None) or {}
    feasible_epochs = [int(h["epoch"]) + 1 for h in callback.history if h.get("dnas/feasible")]
    times = {"warmup": warm["times"]["warmup"], "prepare": prepare, "search": search_time,
             "freeze": freeze, "finetune": finetune, "recalibrate": recal}
    return {"model": slim, "times": times, "wall": sum(times.values()),
            "chosen": kd.choices.chosen(search),
            # blocks kd.freeze gave another alternative (the chosen one could not fit)
            "choices_fallback": certificate.get("choices_fallback"),
            "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                         if k in ("epoch", "dnas/flash_bytes", "dnas/feasible", "val_accuracy")}
                        for h in callback.history],
            "removed": len(certificate.get("removed_channels", [])),
            "certified": certificate.get("all_hold"),
            "first_feasible_epoch": feasible_epochs[0] if feasible_epochs else None}
