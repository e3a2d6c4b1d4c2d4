"""The plain Keras model keeping given channels of a searchable one, weights sliced.

:func:`keras_dnas.freeze` uses it with the certified channels, the memory model with all of
them (the full-width structure it converts once).
"""

import numpy as np

import keras

from keras_dnas import _keras, masks
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
    if op == "batchnorm" or (name == "bias" and op in ("conv", "dense", "depthwise",
                                                        "separable", "transpose_conv")):
        return value[out_keep]
    if name == "kernel" and op in ("conv", "dense"):
        return value[..., in_keep, :][..., out_keep]
    if name == "kernel" and op == "transpose_conv":  # [..., out, in]
        return value[..., out_keep, :][..., in_keep]
    if name == "kernel" and op == "depthwise":
        return value[..., out_keep, :]
    if op == "separable" and name == "depthwise_kernel":  # [..., in, depth_multiplier]
        return value[..., in_keep, :]
    if op == "separable" and name == "pointwise_kernel":  # [1, (1,) in * mult, out], in-major
        rows = np.repeat(in_keep, value.shape[-2] // len(in_keep))
        return value[..., rows, :][..., out_keep]
    if op in ("prelu", "layernorm", "normalization"):
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


def rebuild_with(model, plan, keep, full_taps=False):
    """The plain model keeping channels ``keep[group_id]`` (bool arrays) of ``model``.

    Layers whose taps are searched keep the taps their masks keep (all of them
    with ``full_taps``), behind explicit padding where the shorter kernel needs
    it (see :func:`frozen_geometry`).

    Used by :func:`freeze` and by cost models that need the frozen structure
    at other channel counts.
    """
    first = {}
    for info in plan.layers:
        first.setdefault(info.name, info)
    taps = tap_plans(model, plan, full=full_taps)
    sliced = {}  # id(new layer) -> {weight name: its value}

    def replace(op):
        if not isinstance(op, keras.layers.Layer):
            return op
        info = first[op.name]
        update = _config_update(op, info, keep) if info.role != "opaque" else {}
        config = op.get_config()
        if "dnas_time" in config or op.name in taps:
            return _clone_timed(op, plain_class(op), update, taps.get(op.name))
        new = walk.clone_layer(op, plain_class(op), update, config=config)
        if op.weights and not isinstance(op, keras.Model):
            sliced[id(new)] = _sliced_weights(op, info, keep, taps)
        return new

    # the new layers create their weights with the sliced values (no initializer to run, no
    # assignment after); the others are assigned below
    with _keras.initial_weights(sliced) as made:
        frozen, replaced = walk.rebuild(model, replace)
    for layer in walk.functional_of(model).layers:
        new = replaced.get(id(layer))
        new = getattr(new, "dnas_layer", new)  # a conv behind explicit padding
        if new is None or not layer.weights:
            continue
        if isinstance(layer, keras.Model):
            new.set_weights(layer.get_weights())
            continue
        values = sliced.get(id(new)) or _sliced_weights(layer, first[layer.name], keep, taps)
        names = list(values)  # the old layer's weights in order, without the masks
        for i, w in enumerate(new.weights):
            if (id(new), w.name) not in made:
                # a weight made by `add_weight` without a name (e.g. ConvNeXt's LayerScale) is
                # auto-named anew in the clone: it is the one at the same position
                w.assign(values[w.name] if w.name in values else values[names[i]])
        if isinstance(new, L.Normalization):
            new.finalize_state()  # its mean / variance constants come from its weights
    return frozen


def _sliced_weights(layer, info, keep, taps):
    """``{weight name: value}`` of ``layer``'s weights sliced to the kept channels (and the
    kept taps of a searched kernel); ``{position: value}`` where two of its weights share a
    name (a Bidirectional's two RNNs, MultiHeadAttention's projections: sub-layers' weights)."""
    in_keep = _view_keep(info.inputs[0], keep) if info.inputs else None
    out_keep = _view_keep(info.output, keep)
    op = info.op if info.role != "opaque" else "other"
    if op in ("prelu", "normalization") and not info.geometry.get("channel_params"):
        op = "other"  # parameters shared over the channel axis
    weights = [w for w in layer.weights if w.name != masks.ALPHA_NAME]
    by_name = len({w.name for w in weights}) == len(weights)
    values = {}
    for position, w in enumerate(weights):
        value = keras.ops.convert_to_numpy(w)
        if w.name == "kernel" and layer.name in taps:
            value = value[taps[layer.name]["kernel_index"]]
        values[w.name if by_name else position] = _slice(op, w.name, value, in_keep, out_keep)
    return values


# ------------------------------------------------------------------ searched taps (PIT)
# Freezing searched kernel taps: fewer taps, a larger dilation, the output kept aligned.
#
# The masks of :mod:`keras_dnas.layers.taps` keep the tap ages ``0, s, ...,
# (n-1)*s`` of a ``K``-tap kernel at dilation ``d``: a plain convolution with
# ``n`` taps at dilation ``d*s`` reading the same samples. Only the padding
# differs, because the kernel got shorter: output step ``t`` must still read
# input ``t + right - a*d`` for the kept ages ``a`` (``right`` = the original
# padding after the sequence):
#
# * ``causal``: ``right = 0``; Keras' causal padding of the new kernel is exact.
# * ``same``: ``right = ceil((K-1)*d / 2)``; the new kernel needs ``(n-1)*s*d - right``
#   zeros before the sequence (a crop of the first samples if negative) and
#   ``right`` after. Keras' own ``"same"`` when that is what it pads, else an
#   explicit ``ZeroPadding1D`` (and ``Cropping1D``) before a ``"valid"`` conv.
# * ``valid``: ``right = 0`` and nothing before, so the first
#   ``(K-1)*d - (n-1)*s*d`` input samples are cropped (``Cropping1D``).


def tap_plans(model, plan, full=False):
    """``{layer name: frozen-tap plan}`` of the plan's searched layers.

    A frozen-tap plan is a dict: ``kernel_index`` (kept kernel indices, oldest
    first), ``kernel_size``, ``dilation_rate``, ``padding`` and the
    ``pad``/``crop`` ``(before, after)`` of the input (``None``: none).
    ``full`` keeps every tap (the full-width structure).
    """
    from keras_dnas.layers.taps import grid_of

    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}
    plans = {}
    for name in plan.tap_layers():
        layer = by_name[name]
        k, d = int(layer.kernel_size[0]), int(layer.dilation_rate[0])
        kept = np.ones(k, bool) if full else layer.dnas_kept_taps()
        n, step = grid_of(kept)
        plans[name] = frozen_geometry(k, d, layer.padding, n, step)
    return plans


def frozen_geometry(kernel_size, dilation, padding, taps, step):
    """The frozen-tap plan of a ``kernel_size``-tap kernel keeping ``taps`` ages ``step`` apart.

    >>> g = frozen_geometry(5, 1, "same", 2, 2)
    >>> g["kernel_index"], g["kernel_size"], g["dilation_rate"], g["padding"], g["pad"]
    ([2, 4], 2, 2, 'valid', (0, 2))
    >>> frozen_geometry(5, 2, "valid", 3, 1)["crop"]
    (4, 0)
    """
    k, d, n, s = int(kernel_size), int(dilation), int(taps), int(step)
    span, new_span = (k - 1) * d, (n - 1) * s * d
    out = {"kernel_index": [k - 1 - a * s for a in range(n)][::-1], "kernel_size": n,
           "dilation_rate": s * d if n > 1 else d, "padding": padding, "pad": None,
           "crop": None}
    if n == 1:
        out["dilation_rate"] = 1  # one tap: the dilation means nothing; Keras wants 1
    if new_span == span or padding == "causal":
        return out
    if padding == "valid":
        out["crop"] = (span - new_span, 0)
        return out
    right = span - span // 2
    before = new_span - right
    if before == new_span // 2 and right == new_span - new_span // 2:
        return out  # Keras' own "same" of the new kernel
    out["padding"] = "valid"
    if before < 0:
        out["crop"] = (-before, 0)
    out["pad"] = (max(before, 0), right)
    return out


class _Padded:
    """Calls the explicit padding / cropping layers, then the conv (``dnas_layer``)."""

    def __init__(self, pre, layer):
        self.pre, self.dnas_layer = pre, layer

    def __call__(self, x, *args, **kwargs):
        for p in self.pre:
            x = p(x)
        return self.dnas_layer(x, *args, **kwargs)


def _clone_timed(op, cls, update, frozen_taps):
    """A plain copy of a time-searched layer (``frozen_taps`` from :func:`tap_plans`, or
    ``None``: all taps), behind its explicit padding when it needs one."""
    config = op.get_config()
    config.pop("dnas_time", None)
    config.update(update)
    if frozen_taps is None:
        return cls.from_config(config)
    config.update(kernel_size=(frozen_taps["kernel_size"],),
                  dilation_rate=(frozen_taps["dilation_rate"],),
                  padding=frozen_taps["padding"])
    layer = cls.from_config(config)
    pre = []
    if frozen_taps["crop"]:
        pre.append(L.Cropping1D(frozen_taps["crop"], name=f"{op.name}_crop"))
    if frozen_taps["pad"] and any(frozen_taps["pad"]):
        pre.append(L.ZeroPadding1D(frozen_taps["pad"], name=f"{op.name}_pad"))
    return _Padded(pre, layer) if pre else layer
