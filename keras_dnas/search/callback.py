"""DNASCallback: hardware budgets as differentiable penalties inside ``model.fit``."""

import contextlib
import functools
import math
import warnings

import numpy as np

import keras
from keras import ops

from keras_dnas import _keras, masks, targets
from keras_dnas._data import (CALIBRATION_SAMPLES, calibration_sample, check_calibration_data,
                              needs_input_names, read_batches)
from keras_dnas.costs import model as cost_model
from keras_dnas.graph import counts as counts_lib
from keras_dnas.graph import bind
from keras_dnas.search.objectives import (METRICS, Budget, Minimize, base_strength, budget_list,
                                          ramp)


def _as_objectives(budgets, objectives):
    out = budget_list(budgets if budgets is not None else {})
    if isinstance(objectives, (str, Minimize)):
        objectives = [objectives]
    for obj in objectives or ():
        if isinstance(obj, str):
            obj = Minimize(obj)
        if not isinstance(obj, Minimize):
            hint = " (hard limits go in budgets=)" if isinstance(obj, Budget) else ""
            raise ValueError(f"objectives= takes Minimize objects or metric names{hint}. "
                             f"Received: {obj!r}")
        out.append(obj)
    return out


class _SearchState(keras.layers.Layer):
    """The variables a search changes between steps, as one non-trainable layer.

    Strengths, the masks' gradient scale, the per-epoch anchors of the masks
    and the penalty's running sum. While ``fit`` runs it is a tracked
    sub-layer of the model, so every backend hands these variables to the
    compiled train step as state (JAX's step is a pure function of the
    model's variables: any other variable would be traced once as a
    constant); afterwards it is detached and the model's weights are the
    user's again.
    """

    def __init__(self, n_strengths, mask_shapes):
        super().__init__(name=masks.SEARCH_STATE_ATTR, trainable=False)

        def variable(name, shape=(), initializer="zeros", aggregation="none"):
            return self.add_weight(shape=shape, initializer=initializer, trainable=False,
                                   autocast=False, aggregation=aggregation, name=name)

        self.grad_scale = variable("grad_scale")
        self.temperature = variable("choice_temperature", initializer="ones")
        self.distill = variable("choice_distill")  # 1 during warm-up: Choice blocks distill
        self.strengths = [variable(f"strength_{i}") for i in range(n_strengths)]
        # every replica adds the same penalty in a step: their mean is that step's value
        self.penalty_sum = variable("penalty_sum", aggregation="mean")
        self.penalty_steps = variable("penalty_steps", aggregation="mean")
        self.anchors = [variable(f"anchor_{i}", shape, "ones")
                        for i, shape in enumerate(mask_shapes)]
        self.built = True


def searched_model(model):
    """The model whose masks a search moves: ``model`` itself when it is Functional or
    Sequential, else the one such model with ``kd.layers.Masked*`` layers that a subclassed
    model wraps (a training wrapper with its own ``train_step`` or ``compute_loss`` around
    the result of ``kd.prepare``). Its regularizer's penalty reaches the wrapper's loss
    through ``model.losses``, as Keras' ``compute_loss`` adds them.

    Raises:
        ValueError: a subclassed model wrapping no searchable model, or several.
    """
    from keras_dnas.graph import walk
    from keras_dnas.layers.masked import is_masked

    if isinstance(model, (_keras.Functional, keras.Sequential)) or not isinstance(
            model, keras.Model):
        return model
    found, todo = [], list(model.layers)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, (_keras.Functional, keras.Sequential)):
            if any(is_masked(inner) for inner in walk.functional_of(layer).layers):
                found.append(layer)
        elif isinstance(layer, keras.Model):
            todo.extend(layer.layers)
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) wraps {len(found)} searchable "
            f"models ({', '.join(repr(m.name) for m in found)}); DNASCallback searches one. "
            "Search them one at a time, or build one Functional model of both and "
            "kd.prepare it.")
    walk.functional_of(model)  # the subclassed-model error, naming what to do
    return model


class _SearchProgress(keras.layers.Layer):
    """Where the search is, as variables saved with the model's weights: per objective its
    strength's base (NaN before it is set), boost, the seed's cost and the limit, the
    epochs done, and the best feasible epoch so far (its number + 1, 0 for none, and its
    score). ``BackupAndRestore`` saves and loads them with the weights, so a resumed
    search continues with the strengths of the interrupted one. Attached in ``set_model``,
    before any callback's ``on_train_begin`` (``BackupAndRestore`` loads there)."""

    def __init__(self, n_objectives):
        super().__init__(name=masks.SEARCH_PROGRESS_ATTR, trainable=False)
        self.table = self.add_weight(shape=(max(n_objectives, 1), 4), initializer="zeros",
                                     trainable=False, autocast=False, name="objectives")
        self.epochs = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                      autocast=False, name="epochs")
        self.best = self.add_weight(shape=(2,), initializer="zeros", trainable=False,
                                    autocast=False, name="best")
        self.built = True


def _attach_state(model, state, attribute=masks.SEARCH_STATE_ATTR):
    _keras.attach_sublayer(model, attribute, state)


def _detach_state(model, attribute=masks.SEARCH_STATE_ATTR):
    _keras.forget_sublayer(model, attribute)


class DNASCallback(keras.callbacks.Callback):
    """Search channel counts that meet hardware budgets, in one ``model.fit``.

    Adds ``sum_i lambda_i * max(0, C_i / T_i - 1)`` (paper B) plus optional
    ``lambda * C / C_seed`` objectives (paper A) to the training loss of a
    searchable model, through a regularizer on the mask variables, so any
    ordinary ``fit`` works. Strengths follow paper B: normalised by the
    warm-up task loss and the seed's distance to each budget, ramped from 1 %
    to 100 % over the first half of the search, then raised further each
    epoch a budget is still exceeded. Strengths are variables: changing them
    never retraces the train step.

    Every epoch it writes ``dnas/<metric>`` (exact value of the current hard
    masks), ``dnas/feasible``, ``dnas/task_loss`` (the training loss without
    the budget penalty) and ``dnas/penalty`` (its mean over the epoch's steps;
    Keras' ``loss`` is their sum) into ``logs`` (progress bar, History,
    CSVLogger, EarlyStopping and TensorBoard see them) and keeps the weights of
    the best feasible epoch by ``monitor``, restored at the end of training.
    If no search epoch meets every budget, it restores the least violating
    one (summed relative excess; ties broken by ``monitor``) and says so.
    A resumed search (``BackupAndRestore``, ``initial_epoch`` > 0 with a reloaded
    ``.keras`` checkpoint) ranks the interrupted fit's epochs too: their best
    feasible epoch's number and ``monitor`` value are saved with the progress,
    and ``best_epoch`` is the whole search's. Their weights are not saved: when
    the best epoch lies before the resume, the resumed fit restores its own best
    (``restored_epoch``) and warns naming the better one. A backup written by a
    callback listed before this one precedes the ranking of its epoch.

    Validation during the search measures the searched network as it would be
    frozen: the penalty is left out of ``val_loss``, and with
    ``calibration_data`` the BatchNormalization statistics are set exactly
    (:func:`keras_dnas.recalibrate_batchnorm`) on that sample before each
    validation, because the moving averages lag behind the moving masks and
    would otherwise rank epochs by stale statistics.

    The callback leaves its target, budgets and calibration sample on the
    model (``model.dnas_search``) so ``kd.freeze(model)`` certifies the same
    budgets and recalibrates BatchNormalization without repeating them.

    The model may be compiled with ``steps_per_execution=N`` (Keras then runs
    N steps per call, so on a CPU a core waits less for Python between
    steps): the search is the same step for step, except that without
    warm-up epochs the mean task loss of the first N steps, not of the first,
    sets the strengths. ``kd.freeze`` compiles the frozen model the same way.

    Args:
        target: a :class:`~keras_dnas.targets.HardwareTarget` (any board: name, clock,
            flash and RAM; ``energy_nj_per_cycle`` for energy) or a registered name
            (``"stm32h743"``, ``"nrf52840"``, ...).
        budgets: ``{metric: limit}`` (or a list of :class:`Budget`), limits absolute
            numbers in the metric's unit (numpy numbers too; a fraction of the seed's cost
            is ``0.6 * kd.summary(seed)["flash_bytes"]``), with metrics from
            :data:`keras_dnas.search.METRICS` (``flash_bytes``, ``ram_bytes``,
            ``latency_ms``, ``latency_cycles``, ``energy_uj``, ``params``,
            ``macs``). Default: the target's flash and RAM.
        objectives: ``Minimize`` objects (or metric names) to reduce beyond
            the budgets.
        warmup_epochs: epochs at the start of ``fit`` that train the weights
            only (masks and choice logits frozen, no penalty). With choice blocks
            they train every alternative: at equal logits the hard Gumbel-softmax
            samples each alternative of each block uniformly, one per step (a
            supernet warm-up, as PLiNIO's SuperNet trains all paths before it
            searches) -- unless ``choice_warmup="distill"`` (the default) and the
            block has a ``reference`` alternative (``kd.prepare`` sets the seed's own
            block): then the block outputs the reference only and the other
            alternatives learn to reproduce its output, because sampling
            untrained alternatives beside a trained seed trains the shared layers
            on their outputs and costs accuracy (BENCHMARKS.md, "Choice blocks").
        monitor: log key ranking feasible epochs (default ``val_loss``, which
            excludes the penalty, when validation data is given, else
            ``dnas/task_loss``).
        restore_best_weights: restore the best feasible epoch of this ``fit`` at the end
            (the least violating one if none is feasible); its number is then
            ``restored_epoch``, and ``best_epoch`` the best feasible epoch of the whole search.
        stop_when_feasible: stop after this many consecutive feasible epochs
            with unchanged channel counts once the ramp is complete
            (``None``: never).
        margin: the hinge aims this fraction below each limit, so masks that
            hover at the limit land on the feasible side.
        mask_lr_multiplier: the masks' learning rate relative to the
            optimizer's. Masks start at 1.0 and close at 0.5; with Adam each
            step moves them by about the learning rate, so at 1e-3 a channel
            needs ~500 steps to close. The papers afford hundreds of GPU
            epochs; the default 10 suits searches of tens of epochs.
        bn_momentum: BatchNormalization momentum during the search (restored
            afterwards). Closing channels changes the statistics BN normalises
            faster than the usual 0.99 moving average follows, which leaves
            inference-mode (validation) outputs wrong; ``None`` keeps the model's.
        centred_gradients: remove, in each group, the mean of the task
            loss's gradient over the open channels before it reaches the
            masks (see :func:`keras_dnas.masks.gate`). A common rescaling of
            a group is absorbed by the next layer's weights, so only the
            differences between channels carry information; without this the
            group feeding the classifier keeps every channel, because larger
            features mean larger logits and lower cross-entropy. Budget
            penalties are not centred.
        memory: a flash/RAM model (built from the model if omitted).
        calibration_data: training inputs: an array, a list or a dict by input
            name for several inputs, or batches (``tf.data``, a generator, a PyTorch
            ``DataLoader``) of them or of ``(x, y)``, whose labels are dropped; dicts and
            batches are read by the model's inputs when ``fit`` starts, and
            ``(x, y)`` as the argument itself is refused. Up to ``CALIBRATION_SAMPLES`` of them,
            drawn with a fixed seed, set BatchNormalization statistics
            before each validation and in :func:`keras_dnas.freeze`. Without
            it, validation uses the lagging moving averages.
        choice_temperature: ``(start, end)`` temperature of the ``kd.layers.Choice``
            blocks, annealed geometrically over the search epochs (a variable: no
            retracing). Costs weight the alternatives by ``softmax(logits / T)``, so at a
            low final temperature they approach the argmax alternative's exact costs.
        choice_lr_multiplier: the choice logits' learning rate relative to the
            optimizer's (default: ``mask_lr_multiplier``). At the optimizer's own rate a
            logit moves ~lr per Adam step while the masks move ten times as far, so the
            masks meet a budget before the choices move and the task loss then keeps
            the alternative the seed trained.
        choice_warmup: what warm-up epochs do to Choice blocks with a ``reference``:
            ``"distill"`` (default; see ``warmup_epochs``) or ``"sample"`` (every
            alternative sampled uniformly, as blocks without a reference are).
        arena_plan: ``"tflm"`` (default) budgets RAM with TFLite Micro's own arena layout;
            ``"offline"`` with the plan ``kd.export.to_tflite(..., arena_plan="offline")``
            writes (the soft RAM term is the liveness bound that plan reaches).
        verbose: 1 prints a line when the search starts and when budgets first hold.

    Example:

    >>> import numpy as np, keras, keras_dnas as kd
    >>> x = np.random.rand(64, 16).astype("float32"); y = (x.sum(1) > 8).astype("int32")
    >>> seed = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
    ...                          keras.layers.Dense(2)])
    >>> search = kd.prepare(seed)
    >>> search.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> cb = kd.DNASCallback("stm32h743", budgets={"params": 300}, verbose=0)
    >>> _ = search.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    >>> sorted(k for k in cb.history[-1] if k.startswith("dnas/"))
    ['dnas/feasible', 'dnas/params', 'dnas/penalty', 'dnas/task_loss']
    """

    #: Factor applied each epoch to a budget's strength while it still fails after the ramp.
    BOOST = 1.5
    #: Largest calibration sample kept (a few thousand samples fix BN statistics well).
    CALIBRATION_SAMPLES = CALIBRATION_SAMPLES
    #: Samples of it used before each validation (cheaper; ranks epochs, not deployed).
    VALIDATION_CALIBRATION_SAMPLES = 256

    def __init__(self, target, budgets=None, objectives=None, warmup_epochs=0, monitor=None,
                 restore_best_weights=True, stop_when_feasible=None, margin=0.02,
                 mask_lr_multiplier=10.0, bn_momentum=0.9, centred_gradients=True, memory=None,
                 calibration_data=None, verbose=1, arena_plan="tflm",
                 choice_temperature=(1.0, 0.1), choice_lr_multiplier=None,
                 choice_warmup="distill"):
        super().__init__()
        self.target = targets.get(target)
        self._budgets_arg = budgets
        self._objectives_arg = objectives
        self.objectives = _as_objectives(budgets, objectives)
        # which part of a batch or dict is which input is known once the model is: an array or
        # a list of arrays is read now, batches (read once here: a generator) and dicts at bind
        check_calibration_data(calibration_data)
        calibration_data = read_batches(calibration_data, self.CALIBRATION_SAMPLES)
        self._calibration_pending = None
        if needs_input_names(calibration_data):
            self._calibration_pending, calibration_data = calibration_data, None
        self.calibration_data = calibration_sample(calibration_data, self.CALIBRATION_SAMPLES)
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0. Received: "
                             f"warmup_epochs={warmup_epochs!r}")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5). Received: margin={margin!r}")
        if stop_when_feasible is not None and (not isinstance(stop_when_feasible, int)
                                               or stop_when_feasible < 1):
            raise ValueError("stop_when_feasible must be None or an int >= 1. Received: "
                             f"stop_when_feasible={stop_when_feasible!r}")
        self.warmup_epochs = warmup_epochs
        self.monitor = monitor
        self.restore_best_weights = restore_best_weights
        self.stop_when_feasible = stop_when_feasible
        self.margin = margin
        if not isinstance(mask_lr_multiplier, (int, float)) or mask_lr_multiplier <= 0:
            raise ValueError("mask_lr_multiplier must be a positive number. Received: "
                             f"mask_lr_multiplier={mask_lr_multiplier!r}")
        self.mask_lr_multiplier = float(mask_lr_multiplier)
        if bn_momentum is not None and not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1) or None. Received: "
                             f"bn_momentum={bn_momentum!r}")
        self.bn_momentum = bn_momentum
        self.centred_gradients = bool(centred_gradients)
        if not (isinstance(choice_temperature, (tuple, list)) and len(choice_temperature) == 2
                and all(isinstance(t, (int, float)) and t > 0 for t in choice_temperature)):
            raise ValueError("choice_temperature must be (start, end) with both > 0. "
                             f"Received: choice_temperature={choice_temperature!r}")
        self.choice_temperature = tuple(float(t) for t in choice_temperature)
        if choice_lr_multiplier is None:
            choice_lr_multiplier = self.mask_lr_multiplier
        if not isinstance(choice_lr_multiplier, (int, float)) or choice_lr_multiplier <= 0:
            raise ValueError("choice_lr_multiplier must be a positive number or None. "
                             f"Received: choice_lr_multiplier={choice_lr_multiplier!r}")
        self.choice_lr_multiplier = float(choice_lr_multiplier)
        if choice_warmup not in ("distill", "sample"):
            raise ValueError("choice_warmup must be 'distill' or 'sample'. "
                             f"Received: choice_warmup={choice_warmup!r}")
        self.choice_warmup = choice_warmup
        self.memory = memory
        from keras_dnas.export import offline

        self.arena_plan = offline.check_arena_plan(arena_plan)
        self.verbose = verbose
        self.history = []
        self.cost_model = None
        self._bound_model = None
        self._state = None
        self._state_model = None
        self._progress = None

    # ------------------------------------------------------------------ setup
    @property
    def budgets(self):
        return [o for o in self.objectives if isinstance(o, Budget)]

    def bind(self, model):
        """Tie masks, build the cost model and check budgets (before any training).

        ``fit`` calls it in ``on_train_begin``; call it yourself to use
        :meth:`penalty` in a custom training loop.

        Raises:
            ValueError: no searchable channels, an unknown metric, or a budget
                below the smallest reachable model (naming the metric and the
                minimum reachable value).
        """
        model = searched_model(model)  # a training wrapper: the searchable model inside
        plan = model.rebind() if hasattr(model, "rebind") else bind(model)
        if self._calibration_pending is not None:
            self.calibration_data = calibration_sample(
                self._calibration_pending, self.CALIBRATION_SAMPLES,
                names=[t.name for t in model.inputs])
        if not plan.searchable_groups():
            raise ValueError(
                f"Model '{model.name}' has no searchable channels. Use kd.prepare(model) or build "
                "it from kd.layers.Masked* layers (see the warnings of kd.prepare for frozen "
                "groups)."
            )
        memory = self.memory
        if memory is None and self._needs_memory() and plan.choices:
            from keras_dnas.choice_memory import ChoiceMemory

            memory = ChoiceMemory.from_model(model, plan, target=self.target)
        elif memory is None and self._needs_memory():
            from keras_dnas import memory as memory_lib

            memory = memory_lib.MemoryModel.from_model(model, plan, target=self.target)
        from keras_dnas.export import offline

        memory = offline.memory_for(memory, self.arena_plan)
        self.cost_model = cost_model.CostModel(plan, self.target, memory=memory)
        # rebuilt from the arguments on every bind: a second fit must not add the defaults twice
        self.objectives = _as_objectives(self._budgets_arg, self._objectives_arg)
        if self._budgets_arg is None:
            self.objectives = [Budget("flash_bytes", self.target.flash_bytes),
                               Budget("ram_bytes", self.target.ram_bytes)] + self.objectives
        available = self.cost_model.available()
        for o in self.objectives:
            if o.metric not in available:
                raise ValueError(f"Metric '{o.metric}' is not available. Available: {available}")
        self.metrics = list(dict.fromkeys(o.metric for o in self.objectives))
        self._check_not_vacuous()
        minimum = self.cost_model.evaluate(self.cost_model.min_counts(), self.metrics)
        for b in self.budgets:
            if not b.holds(minimum[b.metric]):
                from keras_dnas.report.floor import describe_floor
                from keras_dnas.report.format import fmt_quantity

                raise ValueError(
                    f"Budget {b.metric}={fmt_quantity(b.limit, METRICS[b.metric])} cannot be "
                    f"met on '{self.target.name}': the smallest reachable model (one channel "
                    f"per searchable group) needs "
                    f"{b.metric}={fmt_quantity(minimum[b.metric], METRICS[b.metric])}. Raise "
                    "the budget, or shrink the frozen layers (input, output, excluded). What "
                    "sets the floor:\n"
                    + describe_floor(self.cost_model, [b], self.cost_model.min_counts())
                )
        self._bound_model = model  # costs() reads the masks of the model being bound
        self.seed_costs = self.costs()
        self._owners = [o for o in counts_lib.group_owners(model, plan) if o is not None]
        # layers with searched taps: their dnas_beta / dnas_gamma, each with its own hooks
        # (anchor and learning-rate scale, as a channel mask's)
        self._tap_owners = counts_lib.tap_owners(model, plan)
        self._time_masks = [(v, masks.SearchHooks()) for t in self._tap_owners
                            for v in t._dnas_time_variables()]
        self._choices = counts_lib.choice_layers(model, plan)
        if self._state is not None and self._state_model is not None:
            _detach_state(self._state_model)
        strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's trainer only
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._state = _SearchState(len(self.objectives),
                                       [tuple(o.dnas_alpha.shape) for o in self._owners]
                                       + [tuple(v.shape) for v, _ in self._time_masks]
                                       + [tuple(c.dnas_choice.shape) for c in self._choices])
        self._state_model = None
        self._grad_scale = self._state.grad_scale
        self._strengths = list(self._state.strengths)
        self._penalty_sum = self._state.penalty_sum
        self._penalty_steps = self._state.penalty_steps
        for owner in self._owners:
            object.__setattr__(owner, masks.HOOKS_ATTR, masks.SearchHooks(
                grad_scale=self._grad_scale, centred=self.centred_gradients))
        for layer in self._tap_owners:  # the same warm-up gate and centring as the channels
            if not any(layer is o for o in self._owners):
                object.__setattr__(layer, masks.HOOKS_ATTR, masks.SearchHooks(
                    grad_scale=self._grad_scale, centred=self.centred_gradients))
            object.__setattr__(layer, masks.TIME_HOOKS_ATTR, {
                id(v): h for v, h in self._time_masks
                if any(v is w for w in layer._dnas_time_variables())})
        # choice blocks: logits frozen during warm-up and their learning rate scaled like the
        # masks' (the same hooks); annealed temperature
        self._temperature = self._state.temperature
        self._temperature.assign(self.choice_temperature[0])
        for layer in self._choices:
            object.__setattr__(layer, masks.HOOKS_ATTR, masks.SearchHooks(
                grad_scale=self._grad_scale))
            object.__setattr__(layer, "_dnas_temperature", self._temperature)
            if self.choice_warmup == "distill":
                object.__setattr__(layer, "_dnas_distill", self._state.distill)
        self._boost = [1.0] * len(self.objectives)
        self._base = None
        self._bound_model = model
        # what kd.freeze(model) reuses when its arguments are not given
        saved = (getattr(model, "dnas_search", None) or {}).get("progress")
        object.__setattr__(model, "dnas_search", {
            "target": self.target, "budgets": {b.metric: b for b in self.budgets},
            "memory": memory, "calibration_data": self.calibration_data,
            "arena_plan": self.arena_plan,
            "progress": saved})  # a fit from epoch > 0 resumes from it
        return plan

    def _check_not_vacuous(self):
        """A metric that is 0 at every width (energy on a target without energy per cycle)
        would make its budget hold and its Minimize term vanish without a word."""
        full = self.cost_model.evaluate(self.cost_model.full_counts(), self.metrics)
        for metric in self.metrics:
            if float(full[metric]) > 0:
                continue
            why = (f" because its energy_nj_per_cycle is {self.target.energy_nj_per_cycle:g}; "
                   "give the board's energy per cycle, e.g. kd.targets.HardwareTarget(..., "
                   "energy_nj_per_cycle=0.3)" if metric == "energy_uj" else "")
            raise ValueError(
                f"Metric '{metric}' is 0 for this model on '{self.target.name}' at every width"
                f"{why}, so its budget or objective cannot steer the search. Received: "
                f"{[o for o in self.objectives if o.metric == metric][0]!r}")

    def _distilling(self):
        """Whether warm-up epochs distill into some Choice block's alternatives."""
        return self.choice_warmup == "distill" and any(
            c.reference is not None and c.students for c in self._choices)

    def _searched_variables(self):
        """``[(variable, its SearchHooks, learning-rate multiplier)]``: the channel masks, the
        tap masks, the choice logits, in the order of the state's anchors."""
        return ([(o.dnas_alpha, o.__dict__[masks.HOOKS_ATTR], self.mask_lr_multiplier)
                 for o in self._owners]
                + [(v, h, self.mask_lr_multiplier) for v, h in self._time_masks]
                + [(c.dnas_choice, c.__dict__[masks.HOOKS_ATTR], self.choice_lr_multiplier)
                   for c in self._choices])

    def _needs_memory(self):
        metrics = {o.metric for o in self.objectives}
        return self._budgets_arg is None or bool(metrics & {"flash_bytes", "ram_bytes"})

    def costs(self, exact=True):
        """Exact costs of the current hard masks, ``{metric: number}``."""
        counts = counts_lib.hard_counts(self._model_for_costs(), self.cost_model.plan)
        return self._costs_at(counts, exact)

    def _costs_at(self, counts, exact=True):
        values = self.cost_model.evaluate(counts, self.metrics, exact=exact)
        return {k: cost_model.to_python(v) for k, v in values.items()}

    def _model_for_costs(self):
        return self._bound_model if self._bound_model is not None else self.model

    def penalty(self):
        """The penalty tensor (differentiable in the masks), for custom loops."""
        model = self._model_for_costs()
        counts = counts_lib.soft_counts(model, self.cost_model.plan)
        values = self.cost_model.soft_evaluate(counts, self.metrics)
        total = 0.0
        for obj, strength in zip(self.objectives, self._strengths):
            value = ops.cast(values[obj.metric], "float32")
            if isinstance(obj, Budget):
                term = ops.relu(value / (obj.limit * (1.0 - self.margin)) - 1.0)
            else:
                term = value / float(max(self.seed_costs[obj.metric], 1e-12))
            total = total + strength * term
        return total

    # ------------------------------------------------------------ resuming
    def set_model(self, model):
        super().set_model(model)
        # `fit` calls this before any callback's on_train_begin: the progress layer is then
        # the model's when BackupAndRestore loads the backed-up weights, whatever the order
        if isinstance(model, keras.Model):
            _detach_state(model, masks.SEARCH_PROGRESS_ATTR)  # another callback's, left
            n = len(_as_objectives(self._budgets_arg, self._objectives_arg)) + (
                2 if self._budgets_arg is None else 0)
            strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's trainer only
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self._progress = _SearchProgress(n)
            _attach_state(model, self._progress, masks.SEARCH_PROGRESS_ATTR)
            # Keras' get_weights / set_weights of a training wrapper would count the state
            # layers attached to it, so EarlyStopping(restore_best_weights=True) took a longer
            # list during fit than the model has after it: while attached, they leave them out
            # (as the searchable model's always do; a class's own methods are left alone)
            for name, method in (("get_weights", masks.get_user_weights),
                                 ("set_weights", masks.set_user_weights)):
                if getattr(type(model), name) is getattr(keras.layers.Layer, name):
                    object.__setattr__(model, name, functools.partial(method, model))

    def _detach_progress(self):
        if self._progress is not None and self.model is not None and \
                _keras.sublayer(self.model, masks.SEARCH_PROGRESS_ATTR) is self._progress:
            _detach_state(self.model, masks.SEARCH_PROGRESS_ATTR)
            for name in ("get_weights", "set_weights"):
                if isinstance(self.model.__dict__.get(name), functools.partial):
                    del self.model.__dict__[name]

    def on_test_end(self, logs=None):
        if not getattr(self, "_fitting", False):  # evaluate() with this callback
            self._detach_progress()
            return
        self._end_validation()

    def on_predict_end(self, logs=None):
        if not getattr(self, "_fitting", False):
            self._detach_progress()

    def _save_progress(self, epoch):
        """Write where the search is: to the progress variables (saved with the weights) and
        to ``model.dnas_search["progress"]`` (saved in the ``.keras`` config)."""
        rows = [[float("nan") if self._base is None else self._base[i], self._boost[i],
                 float(self.seed_costs[o.metric]), float(getattr(o, "limit", 0.0))]
                for i, o in enumerate(self.objectives)]
        if self._progress is not None and len(rows) == self._progress.table.shape[0]:
            self._progress.table.assign(np.array(rows, dtype="float32"))
            self._progress.epochs.assign(float(epoch + 1))
        self._bound_model.dnas_search["progress"] = {
            "epochs": epoch + 1, "base": None if self._base is None else list(self._base),
            "boost": list(self._boost), "seed_costs": dict(self.seed_costs),
            "limits": [r[3] for r in rows]}
        self._save_best()

    def _search_best(self):
        """``(epoch, score)`` of the best feasible epoch of the whole search (a resumed one
        counts the interrupted fit's epochs, :attr:`best_epoch`), or None."""
        own = None if self._best is None else (self._best_epoch, self._best_value)
        earlier = self._earlier_best
        if earlier is not None and (own is None or np.float32(earlier[1]) > np.float32(own[1])):
            return earlier
        return own

    def _save_best(self):
        # ranked in on_epoch_end, after the epoch's progress was saved at its last step
        best = self._search_best()
        if self._progress is not None:
            self._progress.best.assign(np.array([0.0, 0.0] if best is None else
                                                [best[0] + 1, best[1]], dtype="float32"))
        progress = self._bound_model.dnas_search.get("progress")
        if progress is not None:
            progress["best"] = None if best is None else [int(best[0]), float(best[1])]

    def _resume(self, epoch):
        """A fit that starts at ``epoch`` > 0 (``initial_epoch``, ``BackupAndRestore``)
        continues the search saved with the model: the strengths' bases and boosts and the
        seed's costs of the interrupted search, not new ones from the resumed model."""
        saved = None
        if self._progress is not None and float(
                keras.ops.convert_to_numpy(self._progress.epochs)) > 0:
            table = np.array(keras.ops.convert_to_numpy(self._progress.table), dtype="float64")
            if len(table) == len(self.objectives):
                best = keras.ops.convert_to_numpy(self._progress.best)
                saved = {"base": None if np.isnan(table[:, 0]).any() else list(table[:, 0]),
                         "boost": list(table[:, 1]),
                         "seed_costs": {o.metric: cost_model.to_python(v)
                                        for o, v in zip(self.objectives, table[:, 2])},
                         "limits": list(table[:, 3]),
                         "best": [int(best[0]) - 1, float(best[1])] if best[0] > 0 else None}
        if saved is None:
            saved = (getattr(self._bound_model, "dnas_search", None) or {}).get("progress")
        limits = [float(getattr(o, "limit", 0.0)) for o in self.objectives]
        if not saved or len(saved["boost"]) != len(limits) or not np.allclose(
                saved["limits"], limits, rtol=1e-6):
            return False
        self._base = None if saved["base"] is None else [float(b) for b in saved["base"]]
        self._boost = [float(b) for b in saved["boost"]]
        self.seed_costs = {**self.seed_costs, **saved["seed_costs"]}
        best = saved.get("best")  # (absent from a search saved before it was kept)
        self._earlier_best = None if best is None else (int(best[0]), float(best[1]))
        return True

    # -------------------------------------------------------------- callbacks
    def on_train_begin(self, logs=None):
        try:
            self.bind(self.model)
        except Exception:
            self._detach_progress()  # the model is the user's again
            raise
        self._epochs = self.params.get("epochs") or 1
        self._search_epochs = max(self._epochs - self.warmup_epochs, 1)
        self._best = None
        self._best_value = None
        self._least = None
        self.restored_epoch = None
        self.best_epoch = None
        self._earlier_best = None  # a resumed search's best feasible epoch before the resume
        self._feasible_streak = 0
        self._last_counts = None
        self._first_feasible = None
        self._fitting = True
        self._resumed = None  # decided at the first epoch (its number is known then)
        self._closed_epoch = None
        self._folded = True
        self._train_penalty = None
        self._calibrator = None
        self._regularized = self._owners[0].dnas_alpha
        self._regularized.regularizer = self._tracked_penalty
        self._penalty_fn = self.penalty
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Keras traces the train step twice (the last, smaller batch of an epoch relaxes
            # the shapes); the penalty graph (thousands of scalar ops for flash, RAM and
            # latency) takes no input, so one trace of it serves both.
            self._penalty_fn = tf.function(lambda: self.penalty(), autograph=False)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            masks.exclude_from_weight_decay(optimizer)
        # the masks' learning rate: the gate reads anchor + multiplier * (alpha - anchor)
        for (variable, hooks, lr_scale), anchor in zip(self._searched_variables(),
                                                       self._state.anchors, strict=True):
            hooks.anchor, hooks.lr_scale = anchor, lr_scale
            hooks.restart(variable)
        # the compiled step must see the search state as the model's (JAX passes only the
        # model's variables into its jitted step; others would be traced as constants)
        _attach_state(self.model, self._state)
        self._state_model = self.model
        self._saved_momentum = {}
        if self.bn_momentum is not None:
            for layer in self._bound_model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    self._saved_momentum[layer] = layer.momentum
                    layer.momentum = self.bn_momentum
        self.model.make_train_function(force=True)
        # the masked train step is the costliest trace of the flow: once, not twice
        _keras.build_before_first_step(self.model)
        if getattr(self.model, "test_function", None) is not None:
            self.model.make_test_function(force=True)
        if self.verbose:
            from keras_dnas.report.format import fmt_quantity

            seed = ", ".join(f"{k}={fmt_quantity(v, METRICS.get(k, ''))}"
                             for k, v in self.seed_costs.items())
            limits = ", ".join(f"{b.metric}<={fmt_quantity(b.limit, METRICS[b.metric])}"
                               for b in self.budgets)
            print(f"keras_dnas: search on {self.target.name}: seed {seed}; budgets {limits}")

    def _tracked_penalty(self, _variable):
        # the regularizer Keras adds to the loss; also summed so the logs can show it apart
        value = self._penalty_fn()
        self._penalty_sum.assign_add(ops.cast(value, "float32"))
        self._penalty_steps.assign_add(1.0)
        return value

    def on_epoch_begin(self, epoch, logs=None):
        if self._resumed is None:
            self._resumed = epoch > 0 and self._resume(epoch)
        searching = epoch >= self.warmup_epochs
        self._grad_scale.assign(1.0 if searching else 0.0)
        self._temperature.assign(self.temperature_at(epoch))
        self._state.distill.assign(0.0 if searching else 1.0)
        for variable, hooks, _ in self._searched_variables():  # the gate reads the variable
            hooks.restart(variable)  # itself at the start of each epoch
        self._folded = False
        self._assign_strengths(epoch)
        self._penalty_sum.assign(0.0)
        self._penalty_steps.assign(0.0)
        self._train_penalty = None

    def temperature_at(self, epoch):
        """Choice temperature of ``epoch``: the start value during warm-up, then geometric
        from start to end over the search epochs."""
        start, end = self.choice_temperature
        e = epoch - self.warmup_epochs
        if e <= 0 or self._search_epochs <= 1:
            return start
        return start * (end / start) ** (min(e, self._search_epochs - 1)
                                         / (self._search_epochs - 1))

    def on_train_batch_end(self, batch, logs=None):
        # Without warm-up, the first batch's task loss (no penalty yet) sets the strengths.
        if self._base is None and self._epoch >= self.warmup_epochs and logs and "loss" in logs:
            self._set_base(float(logs["loss"]))
            self._jax_sync()
            self._assign_strengths(self._epoch)
        steps = self.params.get("steps")
        if steps and batch + 1 >= steps:
            # the last step of the epoch: close it before any callback's on_epoch_end reads,
            # sets or saves the model (ModelCheckpoint, BackupAndRestore): the masks' variables
            # hold the masks again and the progress variables this epoch's boosts
            self._jax_sync()
            self._close_epoch(self._epoch, logs)

    def _jax_sync(self):
        # JAX keeps the state outside the variables during an epoch: write it back first, so
        # variables read and set here are current and the next step reads them (JAX only)
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _mean_penalty(self):
        steps = float(keras.ops.convert_to_numpy(self._penalty_steps))
        total = float(keras.ops.convert_to_numpy(self._penalty_sum))
        return total / steps if steps else 0.0

    def on_test_begin(self, logs=None):
        """Validation inside ``fit``: no penalty in ``val_loss``, exact BN statistics."""
        if not getattr(self, "_fitting", False):
            return
        self._train_penalty = self._mean_penalty()
        self._saved_strengths = [keras.ops.convert_to_numpy(v) for v in self._strengths]
        for var in self._strengths:
            var.assign(0.0)
        # nor in the test step's graph: it would be traced and run at every validation batch
        self._regularized.regularizer = None
        if self.calibration_data is not None:
            if getattr(self, "_calibrator", None) is None:  # traced once per fit, then reused
                from keras_dnas.freeze import BatchNormCalibrator

                self._calibrator = BatchNormCalibrator(self._bound_model)
            sample = [a[:self.VALIDATION_CALIBRATION_SAMPLES] for a in self.calibration_data]
            with masks.one_gate_per_group():  # its pass is one forward pass of the model
                self._calibrator(sample if len(sample) > 1 else sample[0])

    def _end_validation(self):
        self._regularized.regularizer = self._tracked_penalty
        if getattr(self, "_saved_strengths", None):
            for var, value in zip(self._strengths, self._saved_strengths):
                var.assign(value)
            self._saved_strengths = None

    def _set_base(self, task_loss):
        task_loss = task_loss if math.isfinite(task_loss) and task_loss > 0 else 1.0
        self._base = []
        for obj in self.objectives:
            if isinstance(obj, Budget):
                base = base_strength(task_loss, self.seed_costs[obj.metric], obj.limit)
            else:
                base = task_loss * obj.strength
            # as the progress variables keep it: a search resumed from them is the same
            self._base.append(float(np.float32(base)))

    def _assign_strengths(self, epoch):
        self._epoch = epoch
        e = epoch - self.warmup_epochs
        for i, var in enumerate(self._strengths):
            if self._base is None or e < 0:
                var.assign(0.0)
            else:
                var.assign(ramp(self._base[i], e, self._search_epochs) * self._boost[i])

    def _fold_masks(self):
        if getattr(self, "_folded", True):
            return
        for variable, hooks, _ in self._searched_variables():
            hooks.fold(variable)
        self._folded = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        values = self._close_epoch(epoch, logs)  # (at the last step when steps are known)
        counts = self._counts()
        if counts != self._epoch_counts:  # a callback before this one set masks
            values = self._costs_at(counts)
        penalty = self._train_penalty if self._train_penalty is not None else self._mean_penalty()
        if "loss" in logs:
            logs["dnas/task_loss"] = float(logs["loss"]) - penalty
        logs["dnas/penalty"] = penalty
        feasible = all(b.holds(values[b.metric]) for b in self.budgets)
        for metric, value in values.items():
            logs[f"dnas/{metric}"] = float(value)
        logs["dnas/feasible"] = float(feasible)
        self.history.append(dict(logs, epoch=epoch))
        searching = epoch >= self.warmup_epochs
        ramp_done = epoch - self.warmup_epochs + 1 >= self._search_epochs / 2.0
        if searching and feasible:
            if self._first_feasible is None:
                self._first_feasible = epoch
                if self.verbose:
                    print(f"\nkeras_dnas: every budget holds from epoch {epoch + 1}")
            self._keep_if_best(logs, epoch)
        elif searching and self._best is None:
            self._keep_if_least_violating(logs, epoch, values)
        stable = counts == self._last_counts
        self._last_counts = counts
        self._feasible_streak = self._feasible_streak + 1 if (feasible and stable and ramp_done) \
            else (1 if feasible and ramp_done else 0)
        if self.stop_when_feasible and self._feasible_streak >= self.stop_when_feasible:
            self.model.stop_training = True

    def _close_epoch(self, epoch, logs):
        """Once per epoch, before every callback's on_epoch_end when the steps are known:
        fold the masks, set the strengths' base at the end of warm-up, raise the strengths of
        budgets that still fail after the ramp, and save that progress. Returns the exact
        costs of the epoch's masks."""
        if self._closed_epoch == epoch:
            return self._epoch_values
        self._closed_epoch = epoch
        self._fold_masks()  # the masks' variables hold the masks again
        if not float(keras.ops.convert_to_numpy(self._penalty_steps)) and not getattr(
                self, "_warned_no_penalty", False):
            self._warned_no_penalty = True
            warnings.warn(
                f"DNASCallback: the budget penalty never reached the loss of model "
                f"'{self.model.name}' this epoch, so the budgets do not steer the search. A "
                "custom `train_step` must add the model's regularization losses (`model.losses`) "
                "to its loss, as `self.compute_loss(x, y, y_pred)` does.", stacklevel=2)
        if epoch == self.warmup_epochs - 1 and logs and "loss" in logs \
                and not self._distilling():
            # (a distilling warm-up's loss holds the imitation losses: the first search
            # step's task loss sets the strengths instead, as without warm-up)
            self._set_base(float(logs["loss"]))
        counts = self._counts()
        values = self._costs_at(counts)
        searching = epoch >= self.warmup_epochs
        ramp_done = epoch - self.warmup_epochs + 1 >= self._search_epochs / 2.0
        if searching and ramp_done:  # after the ramp, raise what still fails
            for i, obj in enumerate(self.objectives):
                if isinstance(obj, Budget) and not obj.holds(values[obj.metric]):
                    self._boost[i] *= self.BOOST
        self._save_progress(epoch)
        self._epoch_values, self._epoch_counts = values, counts
        return values

    def _counts(self):
        return tuple(counts_lib.hard_counts(self._bound_model, self.cost_model.plan))

    def _score(self, logs):
        """Monitor value as "higher is better"."""
        monitor = self.monitor or ("val_loss" if "val_loss" in logs else "dnas/task_loss")
        self._monitor_used = monitor
        value = logs.get(monitor)
        if value is None:
            if not getattr(self, "_warned_monitor", False):
                warnings.warn(f"DNASCallback: monitor '{monitor}' is not in the logs "
                              f"({sorted(logs)}); keeping the latest epoch.")
                self._warned_monitor = True
            return 0.0
        higher_is_better = "acc" in monitor or "auc" in monitor
        return float(value) if higher_is_better else -float(value)

    def _keep_if_best(self, logs, epoch):
        score = self._score(logs)
        if self._best_value is None or score >= self._best_value:
            self._best_value = score
            self._best = self._model_weights()
            self._best_epoch = epoch
            self._save_best()

    def _keep_if_least_violating(self, logs, epoch, values):
        violation = sum(b.violation(values[b.metric]) for b in self.budgets)
        rank = (violation, -self._score(logs))
        if self._least is None or rank <= self._least[0]:
            self._least = (rank, epoch, self._model_weights(),
                           {b.metric: values[b.metric] for b in self.budgets
                            if not b.holds(values[b.metric])})

    def on_train_end(self, logs=None):
        self._fitting = False
        self._fold_masks()  # an epoch interrupted by a callback still counts
        self._regularized.regularizer = None
        for layer, momentum in self._saved_momentum.items():
            layer.momentum = momentum
        for owner in self._owners + self._tap_owners:
            owner.__dict__.pop(masks.HOOKS_ATTR, None)
            owner.__dict__.pop(masks.TIME_HOOKS_ATTR, None)
        for layer in self._choices:
            layer.__dict__.pop(masks.HOOKS_ATTR, None)
            layer.__dict__.pop("_dnas_temperature", None)
            layer.__dict__.pop("_dnas_distill", None)
        self._state.distill.assign(0.0)
        _detach_state(self.model)
        self._detach_progress()
        self._state_model = None
        self.model.make_train_function(force=True)
        if getattr(self.model, "test_function", None) is not None:
            self.model.make_test_function(force=True)
        best = self._search_best()
        self.best_epoch = None if best is None else best[0]
        if best is not None and best is self._earlier_best and self.restore_best_weights:
            self._warn_earlier_best(best)
        if self._best is not None:
            if self.restore_best_weights:
                self._set_model_weights(self._best)
                self.restored_epoch = self._best_epoch
            return
        if best is not None:  # feasible before the resume: the least violating of this fit
            message = "DNASCallback: no epoch of this resumed fit met every budget."
        else:
            message = "DNASCallback: no search epoch met every budget."
        if self._least is not None and self.restore_best_weights:
            (violation, _), epoch, weights, over = self._least
            self._set_model_weights(weights)
            self.restored_epoch = epoch
            from keras_dnas.report.format import fmt_quantity

            # the units and separators of the start-of-search line (`:g` gave 3.0577e+06 B)
            excess = ", ".join(f"{m}={fmt_quantity(v, METRICS[m])} > "
                               f"{fmt_quantity(self._limit(m), METRICS[m])}"
                               for m, v in over.items())
            message += (f" Restored the least violating epoch, {epoch + 1} ({excess}; summed "
                        f"relative excess {violation:.3g}).")
        message += (" kd.freeze(model) closes channels until every budget holds; more search "
                    "epochs usually need fewer.")
        warnings.warn(message, stacklevel=2)
        if self.verbose:
            print(f"\nkeras_dnas: {message[len('DNASCallback: '):]}")

    def _warn_earlier_best(self, best):
        monitor = getattr(self, "_monitor_used", None) or self.monitor or "monitor"
        higher_is_better = "acc" in monitor or "auc" in monitor
        value = best[1] if higher_is_better else -best[1]
        instead = (f"the best of this fit, epoch {self._best_epoch + 1}" if self._best is not None
                   else "the least violating epoch of this fit")
        warnings.warn(
            f"DNASCallback: the best feasible epoch of this search by '{monitor}' is epoch "
            f"{best[0] + 1} ({monitor}={value:.6g}), before the search was resumed; its weights "
            f"are not saved with the model, so {instead} is restored. To keep that epoch's "
            "weights, save the model every epoch (keras.callbacks.ModelCheckpoint with "
            "'{epoch}' in its path) and load that epoch's file.", stacklevel=3)

    def _model_weights(self):
        """The model's weights without the search state (which is attached during ``fit``)."""
        return masks.get_user_weights(self.model)

    def _set_model_weights(self, weights):
        masks.set_user_weights(self.model, weights)

    def _limit(self, metric):
        return next(b.limit for b in self.budgets if b.metric == metric)
