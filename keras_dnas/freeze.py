"""freeze(): rebuild a plain Keras model with the kept channels and sliced weights."""

import numpy as np

import keras

from keras_dnas import masks
from keras_dnas.graph import analyze, walk
from keras_dnas.layers.masked import plain_class

L = keras.layers


def kept_channels(model, plan=None):
    """Boolean keep-mask of every channel group of a searchable model.

    Returns:
        ``(plan, keep)`` with ``keep[group_id]`` a NumPy bool array.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((4,))
    >>> m = kd.SearchableModel(x, kd.layers.MaskedDense(2)(kd.layers.MaskedDense(3)(x)))
    >>> plan, keep = kd.freeze_lib.kept_channels(m)
    >>> [k.tolist() for k in keep if len(k) == 3]
    [[True, True, True]]
    """
    plan = plan or analyze(model, masked_only=True)
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    keep = []
    for g in plan.groups:
        if g.frozen:
            keep.append(np.ones(g.size, dtype=bool))
        else:
            keep.append(masks.hard_gate(by_name[g.leader].dnas_alpha))
    return plan, keep


def _view_keep(view, keep):
    return masks.hard_view_mask([keep[g] for g in view.segments], view.repeat)


def _slice(op, name, value, in_keep, out_keep):
    """Slice one weight of a layer along its channel axes."""
    if op in ("conv", "dense"):
        if name == "kernel":
            return value[..., in_keep, :][..., out_keep]
        if name == "bias":
            return value[out_keep]
    elif op == "depthwise":
        if name == "kernel":
            return value[..., out_keep, :]
        if name == "bias":
            return value[out_keep]
    elif op == "batchnorm":
        return value[out_keep]
    return value


def freeze(model):
    """A plain Keras model with only the channels the masks keep.

    Conv/Dense filters shrink to the kept channels; kernels, biases, BN
    statistics and depthwise kernels are sliced, including Dense layers after
    Flatten (tiled masks), concatenations and residual adds. The result uses
    standard Keras layers only (loads without custom objects) and computes
    the same outputs as ``model`` in inference mode. ``model`` is not modified.

    Args:
        model: a searchable model (from ``kd.prepare`` or built from
            ``kd.layers.Masked*``).

    Returns:
        A plain functional ``keras.Model``.

    Example:

    >>> import numpy as np, keras, keras_dnas as kd
    >>> x = keras.Input((8,))
    >>> s = kd.prepare(keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(6)(x))))
    >>> s.get_layer("dense").dnas_alpha.assign([1, 0, 1, 0, 1, 0])
    >>> slim = kd.freeze(s)
    >>> slim.get_layer("dense").units
    3
    """
    plan, keep = kept_channels(model)
    first = {}
    for info in plan.layers:
        first.setdefault(info.name, info)

    def replace(op):
        if not isinstance(op, keras.layers.Layer):
            return op
        info = first[op.name]
        update = {}
        out_n = int(_view_keep(info.output, keep).sum())
        if info.role == "defining":
            update["units" if isinstance(op, L.Dense) else "filters"] = out_n
        elif info.role == "flattening" and isinstance(op, L.Reshape):
            update["target_shape"] = (out_n,)
        return walk.clone_layer(op, plain_class(op), update)

    frozen, replaced = walk.rebuild(model, replace)
    for layer in walk.functional_of(model).layers:
        new = replaced.get(id(layer))
        if new is None or not layer.weights:
            continue
        if isinstance(layer, keras.Model):
            new.set_weights(layer.get_weights())
            continue
        info = first[layer.name]
        in_keep = _view_keep(info.inputs[0], keep) if info.inputs else None
        out_keep = _view_keep(info.output, keep)
        op = info.op if info.role != "opaque" else "other"
        src = {w.name: w for w in layer.weights if w.name != masks.ALPHA_NAME}
        for w in new.weights:
            value = keras.ops.convert_to_numpy(src[w.name])
            w.assign(_slice(op, w.name, value, in_keep, out_keep))
    return frozen
