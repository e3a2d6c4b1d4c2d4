"""prepare(): clone a Keras model with masked layers and tied channel masks."""

import warnings

import keras

from keras_dnas import masks
from keras_dnas.graph import analyze, bind, walk
from keras_dnas.layers.masked import MASKED_OF, plain_class


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

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        if getattr(self, "optimizer", None) is not None:
            masks.exclude_from_weight_decay(self.optimizer)


def prepare(model, exclude=None):
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
    they are, and a warning names them.

    Args:
        model: a Functional or Sequential ``keras.Model``.
        exclude: names of layers to keep untouched (their input and output
            channels are frozen), e.g. a nested model or a custom layer.

    Returns:
        A :class:`SearchableModel`.

    Raises:
        ValueError: for a subclassed model, an unbuilt Sequential, a nested
            model that is not excluded, or unknown ``exclude`` names.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((28, 28, 1))
    >>> h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    >>> y = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    >>> search = kd.prepare(keras.Model(x, y))
    >>> type(search.get_layer("conv2d")).__name__
    'MaskedConv2D'
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"prepare() expects a keras.Model. Received: {type(model).__name__}")
    exclude = set(exclude or ())
    for gnode in walk.nodes(model):
        op = gnode.operation
        if isinstance(op, keras.Model) and op.name not in exclude:
            raise ValueError(
                f"Layer '{op.name}' is a nested model; keras_dnas searches one flat graph. "
                f"Either build the model without nesting, or pass exclude=['{op.name}'] to "
                "keep it as it is (its input and output channels are then frozen)."
            )
    plan = analyze(model, exclude=exclude)
    searchable = {g.id for g in plan.searchable_groups()}
    to_mask = set()
    for info in plan.layers:
        touched = {g for v in info.inputs + [info.output] for g in v.segments}
        if info.role in ("defining", "propagating") and touched & searchable:
            to_mask.add(info.name)
    _warn_frozen(plan)

    def replace(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # a stateless keras.ops operation
        cls = plain_class(op)
        if op.name in to_mask and cls in MASKED_OF:
            return walk.clone_layer(op, MASKED_OF[cls])
        return walk.clone_layer(op)

    searchable_model, replaced = walk.rebuild(model, replace, model_class=SearchableModel)
    for gnode in walk.nodes(model):
        _copy_weights(gnode.operation, replaced[id(gnode.operation)])
    return searchable_model


def _copy_weights(old, new):
    if old is new or not getattr(old, "weights", None):
        return
    if isinstance(old, keras.Model):
        new.set_weights(old.get_weights())
        return
    has_alpha = any(w.name == masks.ALPHA_NAME for w in old.weights)
    keep = [w for w in new.weights if has_alpha or w.name != masks.ALPHA_NAME]
    for dst, src in zip(keep, old.weights):
        dst.assign(src)
    if isinstance(new, keras.layers.Normalization):
        new.finalize_state()  # its mean / variance constants come from its weights


def _warn_frozen(plan):
    msgs = []
    for g in plan.groups:
        if g.frozen and g.defined_by and "model output" not in (g.reason or ""):
            msgs.append(f"channels of {g.defined_by} are frozen: {g.reason}")
    if msgs:
        warnings.warn(
            "keras_dnas.prepare: " + "; ".join(msgs) + ". To search them, use layers that "
            "have a channel rule (keras_dnas.graph.ROLES) or drop them from exclude=.",
            stacklevel=3,
        )
