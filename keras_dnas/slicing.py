"""The plain Keras model keeping given channels of a searchable one, weights sliced.

:func:`keras_dnas.freeze` uses it with the certified channels, the memory model with all of
them (the full-width structure it converts once).
"""

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
    elif op == "separable":
        if name == "depthwise_kernel":  # [..., in, depth_multiplier]
            return value[..., in_keep, :]
        if name == "pointwise_kernel":  # [1, (1,) in * depth_multiplier, out], in-major
            rows = np.repeat(in_keep, value.shape[-2] // len(in_keep))
            return value[..., rows, :][..., out_keep]
        if name == "bias":
            return value[out_keep]
    elif op == "batchnorm":
        return value[out_keep]
    elif op in ("prelu", "layernorm", "normalization"):
        # per-channel arrays have the channel axis last; shared ones (size 1) stay
        return _slice_last(value, out_keep)
    return value


def _slice_last(value, keep):
    """``value`` sliced along its last axis when that axis is the channel axis."""
    if np.ndim(value) and np.shape(value)[-1] == len(keep) and len(keep) > 1:
        return np.asarray(value)[..., keep]
    return value


def _config_update(op, info, keep):
    """Layer-config changes of the frozen copy (channel counts, per-channel constants)."""
    update = {}
    out_keep = _view_keep(info.output, keep)
    out_n = int(out_keep.sum())
    if info.role == "defining":
        update["units" if isinstance(op, L.Dense) else "filters"] = out_n
    elif isinstance(op, L.Reshape):
        shape = list(op.target_shape)
        update["target_shape"] = tuple(shape[:-1] + [out_n]) if info.role == "propagating" \
            else (out_n,)
    elif info.role == "propagating" and isinstance(op, L.Rescaling):
        for key in ("scale", "offset"):
            value = _slice_last(getattr(op, key), out_keep)
            update[key] = value.tolist() if isinstance(value, np.ndarray) else value
    elif info.role == "propagating" and isinstance(op, L.Normalization) \
            and op.input_mean is not None and info.geometry.get("channel_params"):
        for key, attr in (("mean", "input_mean"), ("variance", "input_variance")):
            update[key] = np.asarray(_slice_last(np.asarray(getattr(op, attr)),
                                                 out_keep)).tolist()
    return update


def rebuild_with(model, plan, keep):
    """The plain model keeping channels ``keep[group_id]`` (bool arrays) of ``model``.

    Used by :func:`freeze` and by cost models that need the frozen structure
    at other channel counts.
    """
    first = {}
    for info in plan.layers:
        first.setdefault(info.name, info)

    def replace(op):
        if not isinstance(op, keras.layers.Layer):
            return op
        info = first[op.name]
        update = _config_update(op, info, keep) if info.role != "opaque" else {}
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
        if op in ("prelu", "normalization") and not info.geometry.get("channel_params"):
            op = "other"  # parameters shared over the channel axis
        src = {w.name: w for w in layer.weights if w.name != masks.ALPHA_NAME}
        for w in new.weights:
            value = keras.ops.convert_to_numpy(src[w.name])
            w.assign(_slice(op, w.name, value, in_keep, out_keep))
        if isinstance(new, L.Normalization):
            new.finalize_state()  # its mean / variance constants come from its weights
    return frozen
