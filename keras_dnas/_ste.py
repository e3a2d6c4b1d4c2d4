"""Straight-through and alignment helpers shared by the masks, the layers and the costs.

A straight-through value has the forward value of a hard (rounded, thresholded) quantity and
the gradient of the soft one it came from; a scaled gradient keeps the forward value and
multiplies the gradient. Sizes in bytes are rounded up to an alignment exactly for integers
and straight-through for tensors (soft channel counts during the search).

Example:

>>> import numpy as np
>>> float(straight_through(np.float32(3.0), np.float32(2.4)))
3.0
>>> align_up(13, 16), aligned(13, 4), aligned(12.999999, 4)
(16, 16, 16.0)
"""

import math

import numpy as np
from keras import ops

from keras_dnas import _recorded


def straight_through(hard, soft):
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return soft + ops.stop_gradient(hard - soft)


def scale_gradient(x, scale):
    """``x`` in the forward pass, its gradient times ``scale`` (0: frozen, same value)."""
    s = ops.cast(scale, x.dtype)
    return x * s + ops.stop_gradient(x * (1.0 - s))


def align_up(n, alignment):
    """The integer ``n`` rounded up to a multiple of ``alignment``."""
    return -(-int(n) // alignment) * alignment


def aligned(size, alignment):
    """A size in bytes rounded up to ``alignment``: exact for integers, else straight-through.

    Python floats give a float; tensors a tensor whose forward value is the rounded size and
    whose gradient is 1. A non-integer size is rounded to the nearest integer first, so float
    noise in soft channel counts (12.999999 for 13) cannot push it over an alignment boundary.
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return align_up(size, alignment)
    if alignment <= 1:
        return size
    if isinstance(size, _recorded.Value):
        return _recorded.aligned(size, alignment)
    if isinstance(size, float):
        return float(math.ceil(round(size) / alignment) * alignment)
    x = ops.convert_to_tensor(size, dtype="float32")
    return straight_through(ops.ceil(ops.round(x) / alignment) * alignment, x)
