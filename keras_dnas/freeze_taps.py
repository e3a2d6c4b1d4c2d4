"""Freezing searched kernel taps: fewer taps, a larger dilation, the output kept aligned.

The masks of :mod:`keras_dnas.layers.taps` keep the tap ages ``0, s, ...,
(n-1)*s`` of a ``K``-tap kernel at dilation ``d``: a plain convolution with
``n`` taps at dilation ``d*s`` reading the same samples. Only the padding
differs, because the kernel got shorter: output step ``t`` must still read
input ``t + right - a*d`` for the kept ages ``a`` (``right`` = the original
padding after the sequence):

* ``causal``: ``right = 0``; Keras' causal padding of the new kernel is exact.
* ``same``: ``right = ceil((K-1)*d / 2)``; the new kernel needs ``(n-1)*s*d - right``
  zeros before the sequence (a crop of the first samples if negative) and
  ``right`` after. Keras' own ``"same"`` when that is what it pads, else an
  explicit ``ZeroPadding1D`` (and ``Cropping1D``) before a ``"valid"`` conv.
* ``valid``: ``right = 0`` and nothing before, so the first
  ``(K-1)*d - (n-1)*s*d`` input samples are cropped (``Cropping1D``).
"""

import keras
import numpy as np

from keras_dnas.graph import walk

L = keras.layers


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


def clone(op, cls, update, frozen_taps):
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
