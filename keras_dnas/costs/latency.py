"""Latency (cycles, ms) and energy of layers on a :class:`~keras_dnas.targets.HardwareTarget`.

Cost functions have the signature ``fn(op, geometry, cin, cout, target)``.
``cin`` / ``cout`` may be Python numbers, which gives exact certified values
(integers where the model is integral), or Keras tensors, which gives a
differentiable value: wherever hardware works in channel multiples the
forward pass steps exactly like the hardware and the gradient is the
identity (straight-through), e.g. ``ceil_ste(x) = x + stop_gradient(ceil(x) - x)``.

Two latency models are registered in :data:`LATENCY_MODELS`; a target names
one in ``target.latency_model``.

``"cmsis_nn"`` -- TFLite Micro / microTVM with CMSIS-NN int8 kernels on
Cortex-M (``shared/data/README.md``). Per layer, with ``s = target.scale``,
``c = target.cycles``, ``m = target.channel_multiple``,
``p = target.scalar_penalty`` and ``eff(n) = n + (p - 1) * (n - m*floor(n/m))``
(SIMD steps of ``m``; the leftover elements run scalar, ``p`` times slower)::

    conv (K > 1):  s * (c.conv * S_out*Cout*eff(K*Cin) + c.im2col * S_out*K*Cin
                        + c.requant * S_out*Cout)
    conv (K = 1):  s * (c.conv1x1 * S_out*Cout*eff(Cin) + c.requant * S_out*Cout)
    depthwise:     s * (c.depthwise * S_out*K*eff(C) + c.requant * S_out*C)
                   (depth multiplier dm > 1: generic kernel, p * S_out*K*C*dm)
    dense:         s * (c.dense * S_out*Cout*eff(Cin) + c.requant * S_out*Cout)
    separable:     depthwise (C = Cin) + conv K = 1 (Cin*dm -> Cout), two kernels
    add, ...:      s * c.add * S_out*C           (element-wise joins; also a keras.ops
                                                  scalar op and PReLU: one pass)
    rescaling, normalization: 2 passes (MUL, ADD); layernorm: 2 reductions over
                   the channels (c.pool) and 4 element-wise passes (an estimate of
                   the MEAN / SQUARED_DIFFERENCE / RSQRT / MUL / ADD / SUB chain)
    (global) pool: s * c.pool * S_in*C
    every kernel:  + c.overhead                  (conv, depthwise, dense, joins,
                                                  pools, concat, pad, flatten, reshape)
    weighted ops:  + target.flash_read_cycles * weight bytes (int8, read once)

BatchNorm, activations and dropout cost nothing (folded or fused by the
converter). ``S_out`` / ``S_in`` are the output / input positions, ``K`` the
kernel taps.

``"gap8_paper"`` -- paper B's GreenWaves GAP8 model (METHOD.md section 2),
``H, W`` the **output** height and width (the seed ResNet-8 then costs exactly
766,624 cycles; with input sizes it would be 1,237,024), times ``target.scale``::

    conv:      ceil(H/2) * ceil(W/8) * (2*K*Cin + ceil(Cout/4) * (5 + 14*ceil(K*Cin/4) + 10))
    depthwise: 4 * ceil(C/4) * H * W * K
    dense:     ceil(Cin/2) * ceil(Cout/4)

Each ``ceil(x/N)`` is a straight-through ceil of ``x/N``, so its gradient with
respect to ``x`` is ``1/N`` (PLiNIO's ``FloorSTE`` passes 1 instead; the forward
values are identical). A 1-D layer (output ``[T, C]``) uses ``H = 1, W = T``.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_dnas import _recorded
from keras_dnas._ste import straight_through
from keras_dnas.costs.compute import _dm, _positions, _taps, group_inputs
from keras_dnas.targets import registry

_NUMBER_TYPES = (int, float, np.integer, np.floating)


def _is_number(x):
    return isinstance(x, _NUMBER_TYPES) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _as_float_tensor(x):
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return x


def ceil_ste(x):
    """Ceil with a straight-through (identity) gradient.

    Python numbers give an exact Python ``int``; tensors give
    ``x + stop_gradient(ceil(x) - x)``.

    Example:

    >>> from keras_dnas.costs.latency import ceil_ste
    >>> ceil_ste(2.25)
    3
    >>> import numpy as np
    >>> float(ceil_ste(np.float32(2.0)))
    2.0
    """
    if _is_number(x):
        return math.ceil(float(x))
    if isinstance(x, _recorded.Value):
        return _recorded.ceil_div(x, 1)
    x = _as_float_tensor(x)
    return straight_through(ops.ceil(x), x)


def floor_ste(x):
    """Floor with a straight-through (identity) gradient (see :func:`ceil_ste`).

    Example:

    >>> from keras_dnas.costs.latency import floor_ste
    >>> floor_ste(2.75)
    2
    """
    if _is_number(x):
        return math.floor(float(x))
    if isinstance(x, _recorded.Value):
        return _recorded.floor_div(x, 1)
    x = _as_float_tensor(x)
    return straight_through(ops.floor(x), x)


def ceil_div(x, n):
    """``ceil(x / n)``: exact integer division for Python ints, else :func:`ceil_ste` of ``x / n``.

    Example:

    >>> from keras_dnas.costs.latency import ceil_div
    >>> ceil_div(10, 4), ceil_div(8, 4)
    (3, 2)
    """
    if isinstance(x, (int, np.integer)) and isinstance(n, (int, np.integer)):
        return -(-int(x) // int(n))
    if _is_number(x):
        return ceil_ste(float(x) / n)
    if isinstance(x, _recorded.Value):  # the quotient as the tensor path computes it
        return _recorded.ceil_div(x, n)
    return ceil_ste(_as_float_tensor(x) / n)


def floor_div(x, n):
    """``floor(x / n)`` with a straight-through gradient for tensors.

    Example:

    >>> from keras_dnas.costs.latency import floor_div
    >>> floor_div(10, 4)
    2
    """
    if isinstance(x, (int, np.integer)) and isinstance(n, (int, np.integer)):
        return int(x) // int(n)
    if _is_number(x):
        return floor_ste(float(x) / n)
    if isinstance(x, _recorded.Value):
        return _recorded.floor_div(x, n)
    return floor_ste(_as_float_tensor(x) / n)


def simd_length(n, multiple, penalty):
    """Effective inner-loop length of ``n`` elements processed ``multiple`` at a time.

    The ``n mod multiple`` leftover elements run scalar and cost ``penalty``
    times a SIMD element: ``n + (penalty - 1) * (n - multiple * floor(n / multiple))``.
    Forward values step like the hardware; the gradient is 1 (straight-through).

    Example:

    >>> from keras_dnas.costs.latency import simd_length
    >>> simd_length(8, 4, 2.0), simd_length(9, 4, 2.0), simd_length(27, 4, 2.25)
    (8.0, 10.0, 30.75)
    """
    leftover = n - multiple * floor_div(n, multiple)
    return n + (penalty - 1.0) * leftover


def _resolve(target):
    return registry.get(target)


# --------------------------------------------------------------------------- CMSIS-NN


def _cmsis_conv(g, cin, cout, t):
    taps, pos = _taps(g), _positions(g)
    m, p = t.channel_multiple, t.scalar_penalty
    cin_g = group_inputs(g, cin)  # a grouped conv's output channel reads its group only
    feats = {"requant": pos * cout, "overhead": 1, "flash_bytes": taps * cin_g * cout}
    if _is_number(taps):
        if taps == 1:
            feats["conv1x1"] = pos * cout * simd_length(cin_g, m, p)
        else:
            feats["conv"] = pos * cout * simd_length(taps * cin_g, m, p)
            feats["im2col"] = pos * taps * cin
        return feats
    # searched taps (a tensor): the 1x1 kernel once one tap is left, as the frozen model
    one = _recorded.less(taps, 1.5)
    feats["conv1x1"] = one * (pos * cout * simd_length(cin_g, m, p))
    feats["conv"] = (1.0 - one) * (pos * cout * simd_length(taps * cin_g, m, p))
    feats["im2col"] = (1.0 - one) * (pos * taps * cin)
    return feats


def _cmsis_transpose_conv(g, cin, cout, t):
    # Not calibrated on a board: priced as a convolution of the same MACs (each input position
    # times the kernel), requantising every output element.
    feats = _cmsis_conv(dict(g, out_positions=_positions(g, "in_positions")), cin, cout, t)
    feats["requant"] = _positions(g) * cout
    return feats


def _cmsis_depthwise(g, cin, cout, t):
    taps, pos, dm = _taps(g), _positions(g), _dm(g)
    if dm == 1:
        macs = pos * taps * simd_length(cin, t.channel_multiple, t.scalar_penalty)
    else:  # CMSIS-NN falls back to the generic, scalar kernel
        macs = t.scalar_penalty * pos * taps * cin * dm
    return {"depthwise": macs, "requant": pos * cin * dm, "overhead": 1,
            "flash_bytes": taps * cin * dm}


def _cmsis_dense(g, cin, cout, t):
    pos = _positions(g)
    return {"dense": pos * cout * simd_length(cin, t.channel_multiple, t.scalar_penalty),
            "requant": pos * cout, "overhead": 1, "flash_bytes": cin * cout}


def _cmsis_elementwise(g, cin, cout, t):
    return {"add": _positions(g) * cout, "overhead": 1}


def _cmsis_pool(g, cin, cout, t):
    return {"pool": _positions(g, "in_positions") * cin, "overhead": 1}


def _cmsis_kernel_only(g, cin, cout, t):
    return {"overhead": 1}


def _merged(*parts):
    total = {}
    for feats in parts:
        for k, v in feats.items():
            total[k] = total[k] + v if k in total else v
    return total


def _cmsis_separable(g, cin, cout, t):
    pointwise = dict(g, taps=1, kernel_size=[1])
    return _merged(_cmsis_depthwise(g, cin, cin, t),
                   _cmsis_conv(pointwise, cin * _dm(g), cout, t))


def _cmsis_passes(passes, reductions=0):
    def rule(g, cin, cout, t):
        feats = {"add": passes * _positions(g) * cout, "overhead": passes + reductions}
        if reductions:
            feats["pool"] = reductions * _positions(g) * cout
        return feats
    return rule


_CMSIS_RULES = {
    "conv": _cmsis_conv,
    "depthwise": _cmsis_depthwise,
    "dense": _cmsis_dense,
    **{op: _cmsis_elementwise
       for op in ("add", "subtract", "multiply", "average", "maximum", "minimum")},
    "pool": _cmsis_pool,
    "global_pool": _cmsis_pool,
    **{op: _cmsis_kernel_only for op in ("concat", "pad", "flatten", "reshape")},
    "separable": _cmsis_separable,
    "transpose_conv": _cmsis_transpose_conv,
    "scalar": _cmsis_passes(1),
    "prelu": _cmsis_passes(1),
    "rescaling": _cmsis_passes(2),
    "normalization": _cmsis_passes(2),
    "layernorm": _cmsis_passes(4, reductions=2),
}

# --------------------------------------------------------------------------- GAP8 (paper B)


def _output_hw(g):
    shape = list(g.get("output_shape") or [])
    if len(shape) >= 3:
        return shape[-3], shape[-2]
    if len(shape) == 2:
        return 1, shape[0]
    return 1, 1


def _gap8_conv(g, cin, cout, t):
    h, w = _output_hw(g)
    k, cin_g = _taps(g), group_inputs(g, cin)
    inner = 2 * k * cin + ceil_div(cout, 4) * (5 + 14 * ceil_div(k * cin_g, 4) + 10)
    return {"gap8": ceil_div(h, 2) * ceil_div(w, 8) * inner}


def _gap8_depthwise(g, cin, cout, t):
    h, w = _output_hw(g)
    return {"gap8": 4 * ceil_div(cin, 4) * h * w * _taps(g)}


def _gap8_dense(g, cin, cout, t):
    return {"gap8": ceil_div(cin, 2) * ceil_div(cout, 4)}


def _gap8_separable(g, cin, cout, t):
    pointwise = dict(g, taps=1, kernel_size=[1])
    return {"gap8": _gap8_depthwise(g, cin, cin, t)["gap8"] * _dm(g)
            + _gap8_conv(pointwise, cin * _dm(g), cout, t)["gap8"]}


_GAP8_RULES = {"conv": _gap8_conv, "depthwise": _gap8_depthwise, "dense": _gap8_dense,
               "separable": _gap8_separable}


class LatencyModel:
    """A latency model: per-op feature rules and how features become cycles.

    ``cycles = scale * sum(coef[f] * feature[f] for f in scaled)
    + sum(coef[f] * feature[f] for f in unscaled)``. The decomposition into
    features is what :func:`keras_dnas.targets.calibrate` fits.

    Attributes:
        name: registry key (``target.latency_model``).
        rules: op -> ``fn(geometry, cin, cout, target) -> {feature: amount}``.
        scaled: feature names whose coefficients are multiplied by ``target.scale``.
        unscaled: feature names added without the scale.
        fitted: feature names whose coefficients calibration may change (the
            scale is always fitted).

    Example:

    >>> from keras_dnas.costs import latency
    >>> latency.LATENCY_MODELS["cmsis_nn"].scaled[:3]
    ('conv', 'conv1x1', 'depthwise')
    """

    def __init__(self, name, rules, scaled, unscaled, fitted):
        self.name, self.rules = name, rules
        self.scaled, self.unscaled, self.fitted = tuple(scaled), tuple(unscaled), tuple(fitted)

    def coefficient(self, target, feature):
        """The target's coefficient of ``feature`` (without the scale).

        Example:

        >>> from keras_dnas import targets
        >>> from keras_dnas.costs import latency
        >>> latency.LATENCY_MODELS["cmsis_nn"].coefficient(targets.get("stm32f746"), "flash_bytes")
        0.23
        """
        if feature == "flash_bytes":
            return target.flash_read_cycles
        if feature in target.cycles:
            return target.cycles[feature]
        return 1

    def features(self, op, geometry, cin, cout, target):
        """``{feature: amount}`` of one layer (empty for free ops).

        Example:

        >>> from keras_dnas import targets
        >>> from keras_dnas.costs import latency
        >>> latency.LATENCY_MODELS["cmsis_nn"].features("add", {"out_positions": 4}, 8, 8,
        ...                                              targets.get("stm32h743"))
        {'add': 32, 'overhead': 1}
        """
        rule = self.rules.get(op)
        return {} if rule is None else rule(geometry or {}, cin, cout, target)

    def cycles_from_features(self, feats, target):
        """Combine features with the target's coefficients into cycles.

        Example:

        >>> from keras_dnas import targets
        >>> from keras_dnas.costs import latency
        >>> latency.LATENCY_MODELS["gap8_paper"].cycles_from_features({"gap8": 1000},
        ...                                                           targets.get("gap8"))
        1000
        """
        scaled = 0
        for f in self.scaled:
            if f in feats:
                scaled = scaled + self.coefficient(target, f) * feats[f]
        total = scaled if target.scale == 1 else target.scale * scaled
        for f in self.unscaled:
            if f in feats:
                total = total + self.coefficient(target, f) * feats[f]
        return total


_CMSIS_SCALED = ("conv", "conv1x1", "depthwise", "dense", "im2col", "requant", "add", "pool")

#: Registered latency models by name (``HardwareTarget.latency_model``).
LATENCY_MODELS = {
    "cmsis_nn": LatencyModel("cmsis_nn", _CMSIS_RULES, _CMSIS_SCALED, ("overhead", "flash_bytes"),
                             fitted=_CMSIS_SCALED + ("overhead", "flash_bytes")),
    "gap8_paper": LatencyModel("gap8_paper", _GAP8_RULES, ("gap8",), (), fitted=()),
}


def latency_model(target):
    """The :class:`LatencyModel` a target uses.

    Example:

    >>> from keras_dnas.costs import latency
    >>> latency.latency_model("gap8").name
    'gap8_paper'
    """
    target = _resolve(target)
    try:
        return LATENCY_MODELS[target.latency_model]
    except KeyError:
        raise ValueError(
            f"Target '{target.name}' names an unknown latency model. Known models: "
            f"{sorted(LATENCY_MODELS)}. Received: latency_model={target.latency_model!r}"
        ) from None


# --------------------------------------------------------------------------- public API


def layer_cycles(op, geometry, cin, cout, target):
    """Cycles of one layer on ``target`` (per its ``latency_model``).

    Args:
        op: plan op name.
        geometry: plan geometry dict of the layer.
        cin: (effective) input channels: number or Keras tensor.
        cout: (effective) output channels: number or Keras tensor.
        target: a :class:`~keras_dnas.targets.HardwareTarget` or its name.

    Returns:
        Cycles: a Python number for numeric counts, a tensor for tensor counts.

    Example:

    >>> from keras_dnas.costs import latency
    >>> g = {"taps": 9, "output_shape": [16, 16, 32], "out_positions": 256}
    >>> latency.layer_cycles("conv", g, 16, 32, "gap8")
    71040
    >>> round(latency.layer_cycles("conv", g, 16, 32, "stm32l4r5"))
    4295877
    """
    target = _resolve(target)
    model = latency_model(target)
    return model.cycles_from_features(model.features(op, geometry, cin, cout, target), target)


def cycles_to_ms(cycles, target):
    """Cycles / clock, in milliseconds.

    Example:

    >>> from keras_dnas.costs import latency
    >>> latency.cycles_to_ms(480_000, "stm32h743")
    1.0
    """
    return cycles / (_resolve(target).clock_mhz * 1e3)


def cycles_to_uj(cycles, target):
    """Energy in microjoules: cycles x ``energy_nj_per_cycle`` / 1000.

    Example:

    >>> from keras_dnas.costs import latency
    >>> latency.cycles_to_uj(1_000_000, "stm32l4r5")  # 0.433 nJ per cycle
    433.0
    """
    return cycles * (_resolve(target).energy_nj_per_cycle / 1e3)
