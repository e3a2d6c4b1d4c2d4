"""prepare(): clone a Keras model with masked layers and tied channel masks."""

import re
import warnings

import numpy as np

import keras

from keras_dnas import _keras, masks
from keras_dnas.graph import analyze, bind, walk
from keras_dnas.layers import taps
from keras_dnas.layers.choice import MODES, is_choice
from keras_dnas.layers.masked import MASKED_OF, plain_class

L = keras.layers

#: What ``prepare(search=...)`` can search.
SEARCH_SPACES = ("channels",) + taps.AXES


@keras.saving.register_keras_serializable(package="keras_dnas")
class SearchableModel(keras.Model):
    """A functional model whose masked layers are tied to their channel groups.

    ``kd.prepare`` returns one. On construction (and so on ``.keras`` reload)
    it analyses its own graph and binds every ``kd.layers.Masked*`` layer to
    its group's mask, so a reloaded model computes exactly what was saved.
    ``compile`` keeps the optimizer's weight decay off the mask variables.
    Build your own from masked layers like any functional model:

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((32,))
    >>> h = kd.layers.MaskedDense(16, activation="relu")(x)
    >>> model = kd.SearchableModel(x, kd.layers.MaskedDense(4)(h))
    >>> [g.size for g in model.dnas_plan.searchable_groups()]
    [16]
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rebind()

    def rebind(self):
        """Re-derive the channel plan from the graph and re-tie the masks."""
        object.__setattr__(self, "dnas_plan", bind(self))
        return self.dnas_plan

    def call(self, inputs, training=None, mask=None, **kwargs):
        if self.__dict__.get("_dnas_remat") is None:  # layers take their remat mode when made
            object.__setattr__(self, "_dnas_remat", _keras.uses_remat(self))
        if self._dnas_remat or _keras.remat_scope_active():
            # a rematerialised layer recomputes its gates in its own backward pass: a gate
            # shared from inside it would not reach the mask's gradient
            return super().call(inputs, training=training, mask=mask, **kwargs)
        with masks.one_gate_per_group():
            return super().call(inputs, training=training, mask=mask, **kwargs)

    # DNASCallback attaches its state layer for the length of ``fit``; the weights a user or
    # a callback takes then (EarlyStopping(restore_best_weights=True), ...) must fit the model
    # after it, so get_weights / set_weights leave the state out.
    def get_weights(self):
        return masks.get_user_weights(self)

    def set_weights(self, weights):
        masks.set_user_weights(self, weights)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        if getattr(self, "optimizer", None) is not None:
            masks.exclude_from_weight_decay(self.optimizer)

    def compile_from_config(self, config):
        # Keras skips (with a warning) the compile of a reloaded model whose class overrides
        # `compile`; ours only adds the weight-decay exclusion, so a reloaded search is compiled
        # as it was saved (and its optimizer state restored), ready to resume or to freeze.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # What DNASCallback leaves for kd.freeze (``dnas_search``) is saved in the ``.keras`` file
    # as plain config: the target (its JSON fields), the budgets' limits and the arena plan.
    # The calibration sample and the flash/RAM model are not: freeze rebuilds the latter, and
    # takes ``calibration_data=`` for the former.
    def get_config(self):
        config = super().get_config()
        search = getattr(self, "dnas_search", None)
        if search:
            target = search.get("target")
            config["dnas_search"] = {
                "target": None if target is None else target.to_dict(),
                "budgets": {m: float(getattr(b, "limit", b))
                            for m, b in (search.get("budgets") or {}).items()},
                "arena_plan": search.get("arena_plan"),
            }
            if search.get("progress"):  # where a resumed search continues (DNASCallback)
                config["dnas_search"]["progress"] = search["progress"]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        saved = config.pop("dnas_search", None)
        model = super().from_config(config, custom_objects=custom_objects)
        if saved:
            from keras_dnas.targets import HardwareTarget

            target = saved.get("target")
            object.__setattr__(model, "dnas_search", {
                "target": None if target is None else HardwareTarget.from_dict(target),
                "budgets": dict(saved.get("budgets") or {}),
                "arena_plan": saved.get("arena_plan"), "progress": saved.get("progress")})
        return model


def prepare(model, exclude=None, search=("channels",), alternatives=None, choice_mode="gumbel"):
    """A searchable copy of ``model``: masked Conv/Dense layers, tied channel masks.

    Every Conv1D/Conv2D/Dense that reads or writes a searchable channel group
    becomes the matching ``kd.layers.Masked*`` layer; BatchNormalization and
    depthwise convolutions inside searchable groups become their masked
    followers so pruned channels stay exactly zero. Weights are copied and all
    masks start open, so the result computes the same function as ``model``.
    The input model is not modified.

    Groups are tied as METHOD.md describes (Add-like layers join, channel
    Concatenate concatenates, Flatten tiles). Channels that reach a model
    output, come from a model input or touch a layer with no channel rule
    (Lambda, Reshape, grouped conv, ...) are frozen: such layers are kept as
    they are, and a warning names them (one line per kind of reason).

    Nested Functional / Sequential sub-models (e.g. a ``keras.applications``
    backbone inside a ``Sequential``) are inlined first
    (:func:`keras_dnas.graph.walk.flatten`): the result is one flat graph whose
    layers are those of the sub-models, with their weights, and they are
    searched like any other. Inner layers keep their names where unique; a
    clashing one becomes ``<sub-model>_<layer>``. A sub-model called twice
    stays shared (one set of weights).

    Args:
        model: a Functional or Sequential ``keras.Model``.
        exclude: names of layers to keep untouched (their input and output
            channels are frozen). Names are those of the flattened graph
            (``search.layers``); the name of a sub-model keeps that whole
            sub-model as one opaque, nested block (not searched, not
            flattened, so the frozen model contains it too).
        search: what to search: ``"channels"`` (always), plus PIT's time axis
            of every stride-1 ``Conv1D`` / ``DepthwiseConv1D``:
            ``"receptive_field"`` (taps close from the oldest end, mask
            ``dnas_beta``) and ``"dilation"`` (power-of-two dilation, mask
            ``dnas_gamma``); see :mod:`keras_dnas.layers.taps`. Their masks
            start open, so the result still computes what ``model`` does.
        alternatives: path-based search (``kd.layers.Choice`` blocks) on top of the
            channels: ``"paper_b"`` (every conv + BatchNormalization (+ activation) block
            becomes a choice of the block itself, a 5x5 kernel, a depthwise-separable
            block and, where shapes allow, identity; see :mod:`keras_dnas.choices`), or
            ``fn(layer) -> list | None`` giving the alternatives of a layer (Keras
            layers, Sequential / Functional blocks or ``"identity"``; the layer itself
            may be one of them and keeps its weights). The first alternative starts as
            the argmax, so put the layer itself first to start from the seed. With a
            time axis in ``search``, the alternatives' Conv1D / DepthwiseConv1D are
            searched on it too.
        choice_mode: how the Choice blocks mix their alternatives while training:
            ``"gumbel"`` (hard Gumbel-softmax: one sampled alternative per step,
            straight-through gradient) or ``"softmax"`` (every alternative, weighted by
            the softmax of the logits at the annealed temperature; on MNIST ResNet-8 at
            tight flash budgets it kept the shared layers trainable where sampling did
            not, BENCHMARKS.md "Choice blocks"). Inference uses the argmax either way.

    Returns:
        A :class:`SearchableModel`.

    Raises:
        ValueError: for a subclassed model, an unbuilt Sequential, unknown
            ``exclude`` names, unknown ``search`` names, or a model with no searchable channel group
            (the message says why each group is frozen).

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((28, 28, 1))
    >>> h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    >>> y = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    >>> search = kd.prepare(keras.Model(x, y))
    >>> type(search.get_layer("conv")).__name__
    'MaskedConv2D'
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"prepare() expects a keras.Model. Received: {type(model).__name__}")
    _warn_own_training(model)
    exclude = set(exclude or ())
    time_axes = _check_search(search)
    if choice_mode not in MODES:
        raise ValueError(f"prepare(): choice_mode must be one of {MODES}. "
                         f"Received: choice_mode={choice_mode!r}")
    model = walk.flatten(model, keep=exclude)
    if alternatives is not None:
        from keras_dnas import choices

        model, n_blocks = choices.add_choices(model, alternatives, mode=choice_mode)
        if not n_blocks:
            warnings.warn(f"kd.prepare(alternatives={alternatives!r}): no layer of model "
                          f"'{model.name}' got alternatives (no eligible conv block); only "
                          "channels are searched.", stacklevel=2)
        model = walk.flatten(model, keep=exclude)
    plan = analyze(model, exclude=exclude)
    searchable = {g.id for g in plan.searchable_groups()}
    to_mask = set()
    for info in plan.layers:
        touched = {g for v in info.inputs + [info.output] for g in v.segments}
        if info.role in ("defining", "propagating") and touched & searchable:
            to_mask.add(info.name)
    if not searchable:
        raise ValueError(
            f"kd.prepare: model '{model.name}' has no searchable channel group, so there is "
            "nothing to search. Why each group is frozen:\n" + "\n".join(_frozen_lines(plan))
            + "\n" + _fix_hint(exclude))
    _warn_frozen(plan, exclude)
    timed = _time_searched(model, plan, time_axes, exclude)
    to_mask |= set(timed)

    def replace(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # a stateless keras.ops operation
        cls = plain_class(op)
        if op.name in to_mask and cls in MASKED_OF:
            layer = walk.clone_layer(op, MASKED_OF[cls])
            return layer.dnas_search_time(time_axes) if op.name in timed else layer
        return walk.clone_layer(op)

    searchable_model, replaced = walk.rebuild(model, replace, model_class=SearchableModel)
    for gnode in walk.nodes(model):
        _copy_weights(gnode.operation, replaced[id(gnode.operation)])
    return searchable_model


_TRAINING_METHODS = ("train_step", "test_step", "predict_step", "compute_loss",
                     "compute_metrics")


def _warn_own_training(model):
    """A Functional / Sequential subclass's own training methods are not the searchable
    model's (a SearchableModel runs Keras' own): say so, and how to keep them."""
    base = next(c for c in (SearchableModel, keras.Sequential, _keras.Functional, keras.Model)
                if isinstance(model, c))
    own = [n for n in _TRAINING_METHODS if getattr(type(model), n, None) is not getattr(base, n)]
    if own:
        warnings.warn(
            f"kd.prepare: model '{model.name}' is a {type(model).__name__} with its own "
            f"{', '.join(own)}; the searchable model is a kd.SearchableModel and runs Keras' "
            f"own. To train with yours, wrap it: a keras.Model subclass whose `call` calls "
            f"the searchable model and which defines {', '.join(own)}; fit the wrapper with "
            "kd.DNASCallback (it searches the model wrapped) and kd.freeze the searchable "
            "model.", stacklevel=3)


def _check_search(search):
    """The time axes of a valid ``search=`` argument (a clear error otherwise)."""
    names = (search,) if isinstance(search, str) else tuple(search or ())
    unknown = [n for n in names if n not in SEARCH_SPACES]
    if unknown:
        raise ValueError(f"kd.prepare: unknown search= names {unknown}. Known: "
                         f"{list(SEARCH_SPACES)}, e.g. search=('channels', 'receptive_field', "
                         "'dilation').")
    if "channels" not in names:
        raise ValueError("kd.prepare: search= must include 'channels' (a search of the time "
                         f"axis alone is not supported). Received: search={names!r}; use "
                         f"search=('channels', {', '.join(repr(n) for n in names)}).")
    return tuple(a for a in taps.AXES if a in names)


def _time_searched(model, plan, axes, exclude):
    """Names of the Conv1D / DepthwiseConv1D layers whose taps are searched; warns about
    those that cannot be (strided, grouped, ...)."""
    if not axes:
        return []
    roles = {info.name: info.role for info in plan.layers}
    names, skipped = [], []
    for layer in walk.functional_of(model).layers:
        if plain_class(layer) not in (keras.layers.Conv1D, keras.layers.DepthwiseConv1D) \
                or layer.name in exclude or roles.get(layer.name, "opaque") == "opaque":
            continue
        problem = taps.check(layer)
        if problem is None and int(layer.kernel_size[0]) > 1:
            names.append(layer.name)
        elif problem is not None:
            skipped.append(f"'{layer.name}' ({problem})")
    if skipped:
        warnings.warn("keras_dnas.prepare: the taps of these layers are not searched: "
                      + ", ".join(skipped), stacklevel=3)
    if not names:
        warnings.warn(f"keras_dnas.prepare: search={list(axes)} found no Conv1D / "
                      "DepthwiseConv1D with more than one tap and strides=1; only channels "
                      "are searched.", stacklevel=3)
    return names


def _copy_weights(old, new):
    if old is new or not getattr(old, "weights", None):
        return
    if isinstance(old, keras.Model):
        new.set_weights(old.get_weights())
        return
    has_alpha = any(w.name == masks.ALPHA_NAME for w in old.weights)
    keep = [w for w in new.weights if has_alpha or w.name != masks.ALPHA_NAME]
    for dst, src in zip(keep, old.weights):
        # a copy: on JAX, assigning a variable shares its buffer, which the search's training
        # step then donates (deletes) under the seed model
        dst.assign(np.array(keras.ops.convert_to_numpy(src)))
    if isinstance(new, keras.layers.Normalization):
        new.finalize_state()  # its mean / variance constants come from its weights


def _frozen_lines(plan, skip_outputs=False, examples=4):
    """One line per kind of reason a group is frozen (reasons that differ only in the names
    and numbers they quote are one kind): the layers whose channels it freezes (a few names,
    then a count) and the first such reason. ``skip_outputs`` (the warning) leaves out the
    groups that reach a model output (always frozen) and those no Conv/Dense defines."""
    kinds = {}
    for g in plan.groups:
        reason = g.reason or "frozen"
        ownerless = not g.defined_by
        if not g.frozen or (ownerless and (skip_outputs or reason.startswith("model input"))):
            continue
        if skip_outputs and "model output" in reason:
            continue
        kind = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "''", reason))
        entry = kinds.setdefault(kind, [reason, [], 0])
        entry[1].extend(g.defined_by)
        entry[2] += 1
    lines = []
    for reason, names, n_groups in kinds.values():
        shown = "[" + ", ".join(f"'{n}'" for n in names[:examples])
        shown += f", ... {len(names) - examples} more]" if len(names) > examples else "]"
        similar = f" (and {n_groups - 1} similar)" if n_groups > 1 else ""
        # a group no Conv/Dense defines (e.g. the output of an opaque layer) has no owner
        owner = f"channels of {shown}" if names else "channels"
        lines.append(f"  - {owner} are frozen: {reason}{similar}")
    return lines


def _fix_hint(exclude):
    hint = ("To search them, use layers that have a channel rule (keras_dnas.graph.ROLES)")
    if exclude:
        hint += " or drop them from exclude="
    return hint + "."


def _warn_frozen(plan, exclude=()):
    lines = _frozen_lines(plan, skip_outputs=True)
    if lines:
        warnings.warn(
            "keras_dnas.prepare: some channel groups are frozen (kept at full width):\n"
            + "\n".join(lines) + "\n" + _fix_hint(exclude),
            stacklevel=3,
        )


def collapse(model, config=None):
    """A searchable model with only the argmax alternative of every Choice block.

    Masks carry over: a channel group that loses its leader (a layer of an alternative
    left out) takes the old leader's mask. Returns ``model`` itself when it has no Choice.

    Args:
        model: a searchable model.
        config: optional alternative index per choice block (``plan.choices`` order)
            instead of the argmax.
    """
    plan = getattr(model, "dnas_plan", None) or analyze(model, masked_only=True)
    if not plan.choices:
        return model

    inside = plan.choice_of()
    picked = {b["name"]: int(k) for b, k in zip(plan.choices, config)} if config else {}

    def replace(op):
        if is_choice(op):
            k = picked.get(op.name, op.chosen()) if picked else op.chosen()
            return lambda inputs, *args, **kwargs: inputs[k]
        if plain_class(op) is L.Identity and getattr(op, "name", None) in inside:
            return lambda x, *args, **kwargs: x  # an identity alternative leaves no layer
        if not isinstance(op, L.Layer):
            return op
        return walk.clone_layer(op)

    kept, replaced = walk.rebuild(model, replace, model_class=SearchableModel)
    for gnode in walk.nodes(model):
        new = replaced[id(gnode.operation)]
        if isinstance(new, L.Layer) and new.built:
            _copy_weights(gnode.operation, new)
    new_plan = kept.rebind()
    old_layers = {layer.name: layer for layer in walk.functional_of(model).layers}
    new_layers = {layer.name: layer for layer in walk.functional_of(kept).layers}
    for g in new_plan.searchable_groups():
        old_group = plan.groups[plan.layer(g.leader).output.segments[0]]
        alpha = new_layers[g.leader].dnas_alpha
        if old_group.frozen:
            alpha.assign(np.ones(alpha.shape, "float32"))
        else:
            alpha.assign(keras.ops.convert_to_numpy(old_layers[old_group.leader].dnas_alpha))
    return kept
