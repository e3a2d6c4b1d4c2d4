"""PIT's time axis: trainable masks over the kernel taps of Conv1D / DepthwiseConv1D.

A temporal convolution with ``K`` taps at dilation ``d`` reads, for output step
``t``, the inputs ``t - a * d`` for tap *ages* ``a = 0 .. K-1`` (age 0 is the
newest sample, kernel index ``K-1``; with causal padding literally the present).
Two masks close taps, as in PIT (Risso et al., DAC 2021):

* ``dnas_beta`` (receptive field), one entry per age. Age ``a`` stays open while
  ``sum_{j >= a} |beta_j| > 0.5``: the sums only grow towards the newest tap, so
  taps vanish contiguously from the oldest end. The newest tap is always kept.
* ``dnas_gamma`` (power-of-two dilation), one entry per level ``i = 1 .. L``.
  Level ``i`` stays open while ``sum_{j <= i} |gamma_j| > 0.5``, so levels close
  from the finest one: with ``k`` levels closed only the ages that are multiples
  of ``2**k`` remain (the dilation grows to ``d * 2**k``). An age ``a > 0``
  needs level ``1 + (trailing zeros of a)``.

Each sum is binarised at 0.5 with a straight-through gradient (the forward value
is exactly 0/1). The kept ages are always ``{0, s, 2s, ...} below rf`` (``s`` a
power of two), i.e. a plain convolution with fewer taps and a larger dilation:
``kd.freeze`` builds exactly that.

Example:

>>> import numpy as np
>>> from keras_dnas.layers import taps
>>> beta = np.array([1.0, 1.0, 1.0, 0.3, 0.1], "float32")   # ages 3 and 4 close
>>> np.asarray(taps.tap_gate(beta, None, 5)).tolist()          # by age, newest first
[1.0, 1.0, 1.0, 0.0, 0.0]
>>> gamma = np.array([0.2, 1.0, 1.0], "float32")             # the finest level closes
>>> np.asarray(taps.tap_gate(None, gamma, 5)).tolist()
[1.0, 0.0, 1.0, 0.0, 1.0]
"""

import numpy as np
from keras import ops

from keras_dnas import masks
from keras_dnas._keras import in_stateless_scope
from keras_dnas._ste import scale_gradient, straight_through

BETA_NAME = masks.TIME_NAMES[0]
"""Name of every receptive-field mask variable."""
GAMMA_NAME = masks.TIME_NAMES[1]
"""Name of every dilation mask variable."""
AXES = ("receptive_field", "dilation")
"""The time-axis search names accepted by ``kd.prepare(search=...)``."""


def dilation_levels(kernel_size):
    """Number of dilation levels (entries of ``dnas_gamma``) of a ``kernel_size``-tap kernel.

    >>> [dilation_levels(k) for k in (1, 2, 3, 5, 9)]
    [0, 1, 2, 3, 4]
    """
    return max(int(kernel_size) - 1, 0).bit_length()


def _level_of_age(kernel_size):
    """Level each age needs (0 for age 0, which never closes)."""
    return np.array([0] + [(a & -a).bit_length() for a in range(1, kernel_size)])


def _ste(sums):
    theta = ops.convert_to_tensor(sums)
    return straight_through(ops.cast(ops.greater(theta, masks.THRESHOLD), theta.dtype), theta)


def _scaled_abs(variable, grad_scale):
    v = ops.cast(ops.convert_to_tensor(variable), "float32")
    if grad_scale is not None:  # 0 during warm-up: frozen, same forward value
        v = scale_gradient(v, grad_scale)
    return ops.abs(v)


def tap_gate(beta, gamma, kernel_size, grad_scale=None, centred=False):
    """Gate of every tap, by age (newest first), exactly 0/1 forward, straight-through backward.

    Args:
        beta: receptive-field parameters (``kernel_size`` entries) or ``None``.
        gamma: dilation parameters (:func:`dilation_levels` entries) or ``None``.
        kernel_size: ``K``.
        grad_scale: optional scalar multiplying the gradient (0 during warm-up).
        centred: remove from the gradient of the open taps its mean over them, as
            :func:`keras_dnas.masks.gate` does for channels: scaling every tap of a
            kernel by one factor scales the layer's output, which the task loss
            always wants larger and the next layers undo; it says nothing about
            which taps to keep. Used on the forward path only, not on costs.

    Returns:
        A float32 tensor of ``K`` gates; age 0 is always 1.
    """
    k = int(kernel_size)
    gate = ops.ones((k,), "float32")
    if beta is not None and k > 1:
        theta = _scaled_abs(beta, grad_scale)
        # sums[a] = sum_{j >= a} theta_j: upper-triangular ones
        upper = ops.convert_to_tensor(np.triu(np.ones((k, k), "float32")))
        sums = ops.matmul(upper, theta)
        keep = _ste(sums)
        newest = ops.convert_to_tensor(np.eye(1, k, dtype="float32")[0])
        gate = gate * (newest + (1.0 - newest) * keep)
    levels = dilation_levels(k)
    if gamma is not None and levels:
        theta = _scaled_abs(gamma, grad_scale)
        lower = ops.convert_to_tensor(np.tril(np.ones((levels, levels), "float32")))
        open_ = _ste(ops.matmul(lower, theta))  # open_[i-1]: level i
        # age a -> its level's gate (age 0 -> an always-open 1)
        pick = np.zeros((k, levels + 1), "float32")
        pick[np.arange(k), _level_of_age(k)] = 1.0
        with_one = ops.concatenate([ops.ones((1,), "float32"), open_], axis=0)
        gate = gate * ops.matmul(ops.convert_to_tensor(pick), with_one)
    if centred:
        hard = ops.stop_gradient(gate)
        residual = gate - hard  # forward value 0
        mean = ops.sum(hard * residual) / ops.maximum(ops.sum(hard), 1.0)
        gate = hard + residual - hard * mean
    return gate


def hard_tap_gate(beta, gamma, kernel_size):
    """NumPy boolean version of :func:`tap_gate` (by age, newest first).

    >>> hard_tap_gate([1.0, 1.0, 0.1], None, 3).tolist()
    [True, True, False]
    """
    k = int(kernel_size)
    keep = np.ones(k, dtype=bool)
    if beta is not None and k > 1:
        theta = np.abs(np.asarray(ops.convert_to_numpy(beta), "float64")).reshape(-1)
        keep &= np.cumsum(theta[::-1])[::-1] > masks.THRESHOLD
        keep[0] = True
    levels = dilation_levels(k)
    if gamma is not None and levels:
        theta = np.abs(np.asarray(ops.convert_to_numpy(gamma), "float64")).reshape(-1)
        open_ = np.concatenate([[True], np.cumsum(theta) > masks.THRESHOLD])
        keep &= open_[_level_of_age(k)]
    return keep


def grid_of(keep_by_age):
    """``(taps, step)`` of a kept-age pattern: ages ``0, step, ..., (taps-1)*step``.

    Raises:
        ValueError: if the pattern is not such a grid (never for the masks above).

    >>> grid_of([True, False, True, False, False])
    (2, 2)
    """
    ages = np.flatnonzero(np.asarray(keep_by_age, bool))
    if len(ages) == 0 or ages[0] != 0:
        raise ValueError(f"internal: the newest tap is closed ({list(keep_by_age)})")
    if len(ages) == 1:
        return 1, 1
    step = int(ages[1])
    if not np.array_equal(ages, np.arange(len(ages)) * step):
        raise ValueError(f"internal: kept taps {ages.tolist()} are not on one dilation grid")
    return int(len(ages)), step


class TimeMaskMixin:
    """Adds ``dnas_beta`` / ``dnas_gamma`` to a masked Conv1D or DepthwiseConv1D.

    The constructor is the Keras parent's; :meth:`dnas_search_time` (before the
    layer is built) chooses the :data:`AXES` to search, and the config keeps
    them as ``dnas_time`` (empty: the layer is its masked parent, unchanged).
    Only for ``strides=1``, ``data_format="channels_last"`` and
    ``depth_multiplier``/``groups`` as Keras allows; :func:`check` tells why not.
    """

    dnas_time = ()

    def dnas_search_time(self, axes):
        """Search the taps along ``axes`` (names of :data:`AXES`); call before the layer is
        built. Returns the layer.

        Raises:
            ValueError: for an unknown name, a built layer, or a layer that cannot
                search its taps (see :func:`check`).
        """
        axes = tuple(axes or ())
        unknown = [a for a in axes if a not in AXES]
        if unknown:
            raise ValueError(f"Layer '{self.name}': unknown time axes {unknown}. "
                             f"Known: {list(AXES)}")
        if self.built:
            raise ValueError(f"Layer '{self.name}' is built: choose its time axes before "
                             "calling it.")
        problem = check(self) if axes else None
        if problem:
            raise ValueError(f"Layer '{self.name}' cannot search {list(axes)}: {problem}.")
        self.dnas_time = axes
        return self

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        axes = config.pop("dnas_time", ())
        return super().from_config(config).dnas_search_time(axes)

    def get_config(self):
        config = super().get_config()
        if self.dnas_time:
            config["dnas_time"] = list(self.dnas_time)
        return config

    @property
    def dnas_taps(self):
        """Full number of taps ``K``."""
        return int(self.kernel_size[0])

    def build(self, input_shape):
        super().build(input_shape)
        self.dnas_beta = self.dnas_gamma = None
        if "receptive_field" in self.dnas_time:
            self.dnas_beta = self.add_weight(name=BETA_NAME, shape=(self.dnas_taps,),
                                             initializer="ones", trainable=True,
                                             autocast=False)
        if "dilation" in self.dnas_time and dilation_levels(self.dnas_taps):
            self.dnas_gamma = self.add_weight(name=GAMMA_NAME,
                                              shape=(dilation_levels(self.dnas_taps),),
                                              initializer="ones", trainable=True,
                                              autocast=False)

    def _dnas_time_variables(self):
        return [v for v in (getattr(self, "dnas_beta", None), getattr(self, "dnas_gamma", None))
                if v is not None]

    def dnas_tap_gate(self, centred=False):
        """Soft gate by age (``None`` without time masks). ``centred`` (the forward path)
        applies while a search enables it (the layer's ``masks.SearchHooks``, set by
        ``DNASCallback``, which also hold the warm-up gradient scale)."""
        if not self._dnas_time_variables():
            return None
        hooks = self.__dict__.get(masks.HOOKS_ATTR)
        moved = self.__dict__.get(masks.TIME_HOOKS_ATTR) or {}

        def effective(v):  # the mask's learning rate scaled as a channel mask's
            return v if v is None or id(v) not in moved else moved[id(v)].effective(v)

        return tap_gate(effective(self.dnas_beta), effective(self.dnas_gamma), self.dnas_taps,
                        grad_scale=hooks.grad_scale if hooks is not None else None,
                        centred=centred and hooks is not None and hooks.centred)

    def dnas_tap_count(self, exact=False):
        """Effective taps: a tensor (differentiable, forward value exact) or an int."""
        if exact:
            return int(self.dnas_kept_taps().sum())
        gate = self.dnas_tap_gate()
        return self.dnas_taps if gate is None else ops.sum(gate)

    def dnas_kept_taps(self):
        """Boolean keep-mask by age (newest first)."""
        return hard_tap_gate(self.dnas_beta, self.dnas_gamma, self.dnas_taps) \
            if self._dnas_time_variables() else np.ones(self.dnas_taps, dtype=bool)

    def _dnas_time_subs(self, subs):
        gate = self.dnas_tap_gate(centred=True)
        if gate is None:
            return subs
        kernel = self.__dict__.get("_kernel", self.__dict__.get("kernel"))
        # kernel axis 0 runs from the oldest tap (index 0) to the newest (K-1)
        by_index = ops.reshape(ops.flip(gate, axis=0), (self.dnas_taps, 1, 1))
        subs = list(subs)
        for i, (variable, value) in enumerate(subs):
            if variable is kernel:
                subs[i] = (variable, value * ops.cast(by_index, value.dtype))
                break
        else:
            subs.append((kernel, kernel * ops.cast(by_index, kernel.dtype)))
        if in_stateless_scope():  # the inner scope must hold every variable the call reads
            have = {id(v) for v, _ in subs}
            subs += [(v, v.value) for v in self.variables if id(v) not in have]
        return subs

    # A masked Conv saves its kernel and bias by index and its mask by name: the time masks
    # follow by name (a DepthwiseConv1D saves every variable by index, these included).
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and self._dnas_role == "defining":
            for v in self._dnas_time_variables():
                store[v.name] = v

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and self._dnas_role == "defining":
            for v in self._dnas_time_variables():
                v.assign(store[v.name])


def check(layer):
    """Why ``layer`` (a Conv1D / DepthwiseConv1D) cannot search its taps, or ``None``."""
    if tuple(getattr(layer, "strides", (1,))) != (1,):
        return f"strides={tuple(layer.strides)} (only strides=1 convolutions search their taps)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "data_format='channels_first' (only channels_last)"
    if getattr(layer, "groups", 1) != 1:
        return f"groups={layer.groups}"
    return None
