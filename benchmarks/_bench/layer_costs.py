"""Cost totals over lists of layer records (the MLPerf Tiny reference layers).

Sums and per-layer unit conversions of the cost functions of `keras_dnas.costs` over layer
records (`compute.layer_records`): what the latency fidelity study and the tests of the cost
tables read. The package itself costs a `ChannelPlan` (`keras_dnas.costs.model`); the sum of
latency features that calibration fits is `keras_dnas.calibration.model_features`.
"""

from keras_dnas import targets
from keras_dnas.costs import compute, latency


def _model_total(fn, layers, **kwargs):
    total = 0
    for _, op, geometry, cin, cout in compute.layer_records(layers):
        total = total + fn(op, geometry, cin, cout, **kwargs)
    return total


def model_params(layers, include_bias=True):
    """Sum of `compute.params` over layer records (see `compute.layer_fields`).

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> layer_costs.model_params(mlperf.reference_layers("ic"), include_bias=False)
    77360
    """
    return _model_total(compute.params, layers, include_bias=include_bias)


def model_weights(layers):
    """Sum of `compute.weights` over layer records.

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> layer_costs.model_weights(mlperf.reference_layers("kws"))
    22016
    """
    return _model_total(compute.weights, layers)


def model_macs(layers):
    """Sum of `compute.macs` over layer records.

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> layer_costs.model_macs(mlperf.reference_layers("vww"))
    7489664
    """
    return _model_total(compute.macs, layers)


def layer_latency_ms(op, geometry, cin, cout, target):
    """Latency of one layer in milliseconds (`latency.layer_cycles` / clock).

    Example:

    >>> from benchmarks._bench import layer_costs
    >>> layer_costs.layer_latency_ms("dense", {}, 128, 128, "gap8")  # 64 * 32 cycles at 100 MHz
    0.02048
    """
    return latency.cycles_to_ms(latency.layer_cycles(op, geometry, cin, cout, target), target)


def layer_energy_uj(op, geometry, cin, cout, target):
    """Energy of one layer in microjoules (`latency.layer_cycles` x nJ per cycle).

    Example:

    >>> from benchmarks._bench import layer_costs
    >>> e = layer_costs.layer_energy_uj("dense", {}, 128, 128, "gap8")
    >>> round(e, 6)
    0.3072
    """
    return latency.cycles_to_uj(latency.layer_cycles(op, geometry, cin, cout, target), target)


def per_layer_cycles(layers, target):
    """``[(name, op, cycles), ...]`` for every record (free ops included with 0).

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> rows = layer_costs.per_layer_cycles(mlperf.reference_layers("ad"), "gap8")
    >>> rows[0]
    ('dense', 'dense', 10240)
    """
    target = targets.get(target)
    return [(name, op, latency.layer_cycles(op, g, cin, cout, target))
            for name, op, g, cin, cout in compute.layer_records(layers)]


def model_cycles(layers, target):
    """Cycles of a whole model: the sum of `latency.layer_cycles` over its layer records.

    Args:
        layers: list of layer records (dicts with `op`, `geometry`, `cin`, `cout`;
            `(op, geometry, cin, cout)` tuples; or plan `LayerInfo` objects, whose counts
            default to the full sizes), or a ChannelPlan.
        target: a `HardwareTarget` or its name.

    Returns:
        Total cycles (number or tensor, like the counts).

    Example:

    >>> from keras_dnas import graph, zoo
    >>> from benchmarks._bench import layer_costs
    >>> layer_costs.model_cycles(graph.analyze(zoo.resnet8()), "gap8")  # MLPerf Tiny's ResNet-8
    766624
    """
    return _model_total(latency.layer_cycles, layers, target=targets.get(target))


def model_latency_ms(layers, target):
    """Latency of a whole model in milliseconds.

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> round(layer_costs.model_latency_ms(mlperf.reference_layers("ic"), "gap8"), 3)
    7.666
    """
    return latency.cycles_to_ms(model_cycles(layers, target), target)


def model_energy_uj(layers, target):
    """Energy of one inference of a whole model in microjoules.

    Example:

    >>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
    >>> layers = mlperf.reference_layers("kws")
    >>> import math
    >>> from keras_dnas import targets
    >>> from keras_dnas.costs import latency
    >>> t = targets.get("stm32l4r5")
    >>> cycles = layer_costs.model_cycles(layers, t)
    >>> math.isclose(layer_costs.model_energy_uj(layers, t), cycles * t.energy_nj_per_cycle / 1e3)
    True
    """
    return latency.cycles_to_uj(model_cycles(layers, target), target)
