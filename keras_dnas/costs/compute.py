"""Parameter and MAC counts of one layer, from plain geometry and channel counts.

Every function has the cost signature ``fn(op, geometry, cin, cout, target=None)``
(``target`` is unused here; it is accepted so that all cost functions are
interchangeable). ``cin`` / ``cout`` may be Python numbers (exact integer
results for a frozen model) or Keras tensors (differentiable effective channel
counts during the search); only ``+`` and ``*`` are used, so the result has
the type of the inputs.

``op`` and ``geometry`` follow the ChannelPlan format (``notes/PLAN_FORMAT.md``):
``geometry["taps"]`` is the number of kernel taps ``K``,
``geometry["out_positions"]`` the output spatial size ``S_out``.

| op | weights | biases | MACs |
|---|---|---|---|
| conv | ``K * Cin / groups * Cout`` | ``Cout`` | ``K * Cin / groups * Cout * S_out`` |
| depthwise | ``K * C * dm`` | ``C * dm`` | ``K * C * dm * S_out`` |
| dense | ``Cin * Cout`` | ``Cout`` | ``Cin * Cout * S_out`` (``S_out = 1`` for 1-D inputs) |
| separable | ``K * Cin * dm + Cin * dm * Cout`` | ``Cout`` | weights ``* S_out`` |
| transpose_conv | ``K * Cin * Cout`` | ``Cout`` | ``K * Cin * Cout * S_in`` |
| prelu, layernorm, rescaling, normalization | ``P * C`` | 0 | 0 |
| any other op (element-wise, pooling, ...) | 0 | 0 | 0 |

(``dm`` is the depth multiplier; biases only when ``geometry["use_bias"]``. A
separable convolution is a depthwise one followed by a 1x1 conv, both at the
output positions. ``P = geometry["channel_params"]`` is the number of
parameters per channel a propagating layer keeps in the model: PReLU's alpha
per position, LayerNormalization's gamma and beta, per-channel Rescaling
constants, Normalization's mean and variance; channel-independent constants
are not counted.)
"""

import collections.abc

import numpy as np


def _taps(geometry):
    taps = geometry.get("taps")
    if taps is None:
        taps = 1
        for k in geometry.get("kernel_size") or ():
            taps *= int(k)
    return taps


def _dm(geometry):
    return geometry.get("depth_multiplier") or 1


def _positions(geometry, key="out_positions"):
    value = geometry.get(key)
    return 1 if value is None else value


def group_inputs(g, cin):
    """Input channels each output channel reads: ``cin / groups`` of a grouped convolution
    (``geometry["groups"]``, kept whole: grouped convolutions are never searched)."""
    groups = g.get("groups") or 1
    return cin if groups == 1 else cin // groups


def _channel_params(g, cin, cout):
    return (g.get("channel_params") or 0) * cout


_WEIGHT_RULES = {
    "conv": lambda g, cin, cout: _taps(g) * group_inputs(g, cin) * cout,
    "depthwise": lambda g, cin, cout: _taps(g) * cin * _dm(g),
    "dense": lambda g, cin, cout: cin * cout,
    "separable": lambda g, cin, cout: _taps(g) * cin * _dm(g) + cin * _dm(g) * cout,
    "transpose_conv": lambda g, cin, cout: _taps(g) * cin * cout,
    **{op: _channel_params for op in ("prelu", "layernorm", "rescaling", "normalization")},
}

_BIAS_RULES = {
    "conv": lambda g, cin, cout: cout,
    "depthwise": lambda g, cin, cout: cin * _dm(g),
    "dense": lambda g, cin, cout: cout,
    "separable": lambda g, cin, cout: cout,
    "transpose_conv": lambda g, cin, cout: cout,
}

#: Ops that carry weights (the keys of the weight rule table).
WEIGHTED_OPS = tuple(_WEIGHT_RULES)
#: Ops whose MACs are their weights times the output positions.
_MAC_OPS = ("conv", "depthwise", "dense", "separable")


def weights(op, geometry, cin, cout, target=None):
    """Number of kernel weights of one layer (int8 bytes once quantised).

    Args:
        op: plan op name (``"conv"``, ``"depthwise"``, ``"dense"``, ...).
        geometry: the layer's plan geometry dict.
        cin: (effective) input channels.
        cout: (effective) output channels (ignored for depthwise).
        target: unused.

    Returns:
        ``K*Cin*Cout`` (conv), ``K*C*dm`` (depthwise), ``Cin*Cout`` (dense),
        ``K*Cin*dm + Cin*dm*Cout`` (separable), ``P*C`` (per-channel layers), else 0.

    Example:

    >>> from keras_dnas.costs import compute
    >>> compute.weights("conv", {"taps": 9}, 16, 32)
    4608
    >>> compute.weights("add", {}, 16, 16)
    0
    """
    rule = _WEIGHT_RULES.get(op)
    return 0 if rule is None else rule(geometry, cin, cout)


def biases(op, geometry, cin, cout, target=None):
    """Number of biases (``Cout``, or ``C*dm`` for depthwise) if ``geometry["use_bias"]``.

    Example:

    >>> from keras_dnas.costs import compute
    >>> compute.biases("dense", {"use_bias": True}, 64, 10)
    10
    >>> compute.biases("dense", {"use_bias": False}, 64, 10)
    0
    """
    rule = _BIAS_RULES.get(op)
    if rule is None or not geometry.get("use_bias", True):
        return 0
    return rule(geometry, cin, cout)


def params(op, geometry, cin, cout, target=None, include_bias=True):
    """Weights plus (optionally) biases of one layer.

    Example:

    >>> from keras_dnas.costs import compute
    >>> compute.params("depthwise", {"taps": 9, "use_bias": True}, 64, 64)
    640
    """
    total = weights(op, geometry, cin, cout) + ((geometry or {}).get("fixed_params") or 0)
    if include_bias:
        total = total + biases(op, geometry, cin, cout)
    return total


def macs(op, geometry, cin, cout, target=None):
    """Multiply-accumulates of one layer: weights times output positions.

    Example:

    >>> from keras_dnas.costs import compute
    >>> g = {"taps": 9, "out_positions": 32 * 32}
    >>> compute.macs("conv", g, 3, 16)
    442368
    >>> compute.macs("dense", {}, 64, 10)
    640
    """
    if op == "transpose_conv":  # every input position scatters its kernel
        return weights(op, geometry, cin, cout) * _positions(geometry, "in_positions")
    if op not in _MAC_OPS:
        return 0
    return weights(op, geometry, cin, cout) * _positions(geometry)


def layer_fields(record):
    """``(name, op, geometry, cin, cout)`` of one layer record.

    A record is a dict with keys ``op``, ``geometry`` and optionally ``cin``,
    ``cout``, ``name``; an object with those attributes (a ChannelPlan
    ``LayerInfo``); a tuple ``(op, geometry, cin, cout)``; or a normalised
    ``(name, op, geometry, cin, cout)`` (returned as it is). Missing counts
    default to the full channel counts of the geometry (``in_channels``,
    ``out_channels``).

    Example:

    >>> from keras_dnas.costs import compute
    >>> compute.layer_fields(("dense", {"in_channels": 8, "out_channels": 2}, 4, 2))
    (None, 'dense', {'in_channels': 8, 'out_channels': 2}, 4, 2)
    >>> compute.layer_fields({"op": "dense", "geometry": {"in_channels": 8, "out_channels": 2}})[3:]
    (8, 2)
    """
    if isinstance(record, (tuple, list)) and len(record) == 5:  # already normalised
        return tuple(record)
    if isinstance(record, (tuple, list)):
        if len(record) != 4:
            raise ValueError(
                "A layer record tuple must be (op, geometry, cin, cout). "
                f"Received: record={record!r}"
            )
        op, geometry, cin, cout = record
        name = None
    elif isinstance(record, collections.abc.Mapping):
        if "op" not in record or "geometry" not in record:
            raise ValueError(
                "A layer record dict needs the keys 'op' and 'geometry'. "
                f"Received: keys={sorted(record)}"
            )
        op, geometry = record["op"], record["geometry"]
        cin, cout, name = record.get("cin"), record.get("cout"), record.get("name")
    elif hasattr(record, "op") and hasattr(record, "geometry"):
        op, geometry = record.op, record.geometry
        cin, cout = getattr(record, "cin", None), getattr(record, "cout", None)
        name = getattr(record, "name", None)
    else:
        raise ValueError(
            "A layer record must be a dict, an object with 'op' and 'geometry' attributes "
            f"or a tuple (op, geometry, cin, cout). Received: record={record!r}"
        )
    geometry = geometry or {}
    if cin is None:
        cin = geometry.get("in_channels") or 0
    if cout is None:
        cout = geometry.get("out_channels") or 0
    return name, op, geometry, cin, cout


def view_count(view, counts):
    """Effective channels of a tensor view: ``repeat * sum(counts of its groups)``."""
    total = 0
    for g in view.segments:
        total = total + counts[g]
    return total if view.repeat == 1 else total * view.repeat


def with_taps(plan, counts, taps=None):
    """``counts`` with the effective tap counts of the plan's searched layers appended.

    A counts list holds one entry per group, then one per layer whose taps are
    searched (:meth:`~keras_dnas.graph.ChannelPlan.tap_slot`). A list of group
    counts only is completed with ``taps`` (default: the full kernels).
    """
    missing = len(plan.groups) + len(plan.tap_layers()) - len(counts)
    if missing <= 0:
        return counts
    taps = plan.full_taps() if taps is None else list(taps)
    return list(counts) + taps[len(taps) - missing:]


class ViewCounts:
    """The ``cin`` / ``cout`` of every plan layer's record (:func:`layer_records`) at integer
    counts, as two products of integer matrices (built once per plan) with the counts: a
    projection or a fill evaluates thousands of trials, and a concatenation's view sums dozens
    of groups (DenseNet121: 1.4 million ``view_count`` terms in one fill)."""

    def __init__(self, plan):
        self.groups = len(plan.groups)
        self.inputs = np.zeros((len(plan.layers), self.groups), dtype=np.int64)
        self.outputs = np.zeros_like(self.inputs)
        for i, info in enumerate(plan.layers):
            # a depthwise layer's record has cin = cout
            source = info.output if info.op == "depthwise" else \
                (info.inputs[0] if info.inputs else None)
            for matrix, view in ((self.inputs, source), (self.outputs, info.output)):
                for g in view.segments if view is not None else ():
                    matrix[i, g] += view.repeat

    def arrays(self, counts):
        """``(cin, cout)``: int64 arrays, one entry per plan layer."""
        c = np.asarray(counts[:self.groups], dtype=np.int64)
        return self.inputs @ c, self.outputs @ c

    def __call__(self, counts):
        """``(cin, cout)``: lists of Python ints, one per plan layer."""
        cin, cout = self.arrays(counts)
        return cin.tolist(), cout.tolist()


def layer_records(layers, counts=None, views=None):
    """Normalise a list of layer records, a ChannelPlan (``.layers``) or a
    single record list into a list of ``(name, op, geometry, cin, cout)``.

    With ``counts`` (one channel count per group: ints, or tensors for soft counts),
    ``layers`` is a ChannelPlan and ``cin`` / ``cout`` are the counts its views give; a
    layer whose taps are searched gets ``geometry["taps"]`` = its effective tap count
    (:func:`with_taps`), so params, MACs, latency and energy follow it. ``views``: the
    plan's :class:`ViewCounts`, used when every count is a Python int (the same values).

    Example:

    >>> from keras_dnas.costs import compute
    >>> len(compute.layer_records([("dense", {}, 4, 2), ("add", {}, 2, 2)]))
    2
    """
    if counts is not None:
        counts = with_taps(layers, counts)
        records = []
        fast = views is not None and all(type(c) is int for c in counts)
        cins, couts = views(counts) if fast else (None, None)
        for i, info in enumerate(layers.layers):
            if fast:
                cin, cout = cins[i], couts[i]
            else:
                cin = view_count(info.inputs[0], counts) if info.inputs else 0
                cout = view_count(info.output, counts)
            if info.op == "depthwise":
                cin = cout
            geometry = info.geometry
            if getattr(info, "taps", None):
                geometry = dict(geometry, taps=counts[layers.tap_slot(info.name)])
            records.append((info.name, info.op, geometry, cin, cout))
        return records
    if hasattr(layers, "layers") and not isinstance(layers, collections.abc.Sequence):
        layers = layers.layers
    return [layer_fields(r) for r in layers]
