"""MLPerf Tiny reference models as layer records, and the published latencies.

The four reference networks are written out by hand, layer by layer, in the
ChannelPlan format (``op`` + ``geometry``), independently of
``keras_dnas.zoo`` and ``keras_dnas.graph`` so that each checks the other.
Only the operators TFLite Micro executes are listed (BatchNorm is folded,
ReLU fused, the final softmax is free in the latency model).

``data/mlperf_tiny_results.csv`` is a copy of the published per-inference
latencies and energies of these models on Cortex-M boards, parsed from the
``mlcommons/tiny_results_v0.5 ... v1.3`` repositories (every row names repo,
commit and file).

Example:

>>> from keras_dnas.targets import mlperf
>>> from keras_dnas.costs import compute
>>> [compute.model_macs(mlperf.reference_layers(b)) for b in mlperf.BENCHMARKS]
[12501632, 2656768, 7489664, 264192]
"""

import csv
import importlib.resources
import itertools
import math

#: Benchmark keys: ic = ResNet-8 (CIFAR-10), kws = DS-CNN, vww = MobileNetV1-0.25
#: at 96x96, ad = FC auto-encoder (one 640-value inference).
BENCHMARKS = ("ic", "kws", "vww", "ad")

MODEL_NAMES = {
    "ic": "ResNet-8",
    "kws": "DS-CNN",
    "vww": "MobileNetV1-0.25",
    "ad": "FC-AutoEncoder",
}

#: All calibration pairs.
ALL_PAIRS = tuple(itertools.combinations(BENCHMARKS, 2))

#: The documented calibration choice: one conv model plus the dense-only
#: auto-encoder. A pair of conv models says nothing about the cost of
#: weight-streaming dense layers, whose cost relative to convolutions varies
#: 0.94x-1.40x across the CMSIS-NN boards in the data.
CALIBRATION_PAIRS = (("ic", "ad"), ("kws", "ad"), ("vww", "ad"))


def _layer(name, op, in_shape, out_shape, kernel=(), strides=(), dm=1, n_inputs=1):
    geometry = {
        "kernel_size": list(kernel),
        "taps": math.prod(kernel) if kernel else 1,
        "strides": list(strides),
        "dilation_rate": [1] * len(kernel),
        "padding": "same" if op in ("conv", "depthwise") else "valid",
        "use_bias": op in ("conv", "depthwise", "dense"),
        "depth_multiplier": dm,
        "input_shapes": [list(in_shape)] * n_inputs,
        "output_shape": list(out_shape),
        "in_positions": math.prod(in_shape[:-1]),
        "out_positions": math.prod(out_shape[:-1]),
        "in_channels": in_shape[-1],
        "out_channels": out_shape[-1],
    }
    return {"name": name, "op": op, "geometry": geometry, "cin": in_shape[-1],
            "cout": out_shape[-1]}


def _conv(name, hw_in, cin, hw_out, cout, k, s):
    return _layer(name, "conv", (*hw_in, cin), (*hw_out, cout), (k, k), (s, s))


def _resnet8():
    layers = [_conv("conv1", (32, 32), 3, (32, 32), 16, 3, 1)]
    hw, c = (32, 32), 16
    for stack, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        hw_out = (hw[0] // stride, hw[1] // stride)
        layers.append(_conv(f"stack{stack}_conv1", hw, c, hw_out, cout, 3, stride))
        layers.append(_conv(f"stack{stack}_conv2", hw_out, cout, hw_out, cout, 3, 1))
        if stride != 1:
            layers.append(_conv(f"stack{stack}_shortcut", hw, c, hw_out, cout, 1, stride))
        layers.append(_layer(f"stack{stack}_add", "add", (*hw_out, cout), (*hw_out, cout),
                             n_inputs=2))
        hw, c = hw_out, cout
    layers.append(_layer("avg_pool", "pool", (8, 8, 64), (1, 1, 64), (8, 8), (8, 8)))
    layers.append(_layer("flatten", "flatten", (1, 1, 64), (64,)))
    layers.append(_layer("fc", "dense", (64,), (10,)))
    return layers


def _ds_cnn():
    layers = [_layer("conv1", "conv", (49, 10, 1), (25, 5, 64), (10, 4), (2, 2))]
    for i in range(1, 5):
        layers.append(_layer(f"dw{i}", "depthwise", (25, 5, 64), (25, 5, 64), (3, 3), (1, 1)))
        layers.append(_conv(f"pw{i}", (25, 5), 64, (25, 5), 64, 1, 1))
    layers.append(_layer("avg_pool", "pool", (25, 5, 64), (1, 1, 64), (25, 5), (25, 5)))
    layers.append(_layer("flatten", "flatten", (1, 1, 64), (64,)))
    layers.append(_layer("fc", "dense", (64,), (12,)))
    return layers


def _mobilenet_v1():
    layers = [_conv("conv1", (96, 96), 3, (48, 48), 8, 3, 2)]
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 \
        + [(256, 2), (256, 1)]
    hw, c = 48, 8
    for i, (cout, stride) in enumerate(blocks, start=1):
        out = hw // stride
        layers.append(_layer(f"dw{i}", "depthwise", (hw, hw, c), (out, out, c), (3, 3),
                             (stride, stride)))
        layers.append(_conv(f"pw{i}", (out, out), c, (out, out), cout, 1, 1))
        hw, c = out, cout
    layers.append(_layer("avg_pool", "pool", (3, 3, 256), (1, 1, 256), (3, 3), (3, 3)))
    layers.append(_layer("flatten", "flatten", (1, 1, 256), (256,)))
    layers.append(_layer("fc", "dense", (256,), (2,)))
    return layers


def _fc_autoencoder():
    sizes = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    return [_layer(f"dense{i}" if i else "dense", "dense", (a,), (b,))
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


_BUILDERS = {"ic": _resnet8, "kws": _ds_cnn, "vww": _mobilenet_v1, "ad": _fc_autoencoder}


def reference_layers(benchmark):
    """Layer records of an MLPerf Tiny reference model, in execution order.

    Args:
        benchmark: ``"ic"``, ``"kws"``, ``"vww"`` or ``"ad"``.

    Returns:
        A list of dicts ``{"name", "op", "geometry", "cin", "cout"}`` (full
        channel counts), usable by every cost function.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> [layer["op"] for layer in mlperf.reference_layers("kws")][:3]
    ['conv', 'depthwise', 'conv']
    """
    try:
        builder = _BUILDERS[benchmark]
    except KeyError:
        raise ValueError(f"Unknown MLPerf Tiny benchmark. Known: {list(BENCHMARKS)}. "
                         f"Received: benchmark={benchmark!r}") from None
    return builder()


_NUMERIC = ("mhz", "macs", "latency_ms", "cycles", "cycles_per_mac", "energy_uJ", "avg_power_mW",
            "nJ_per_cycle", "pJ_per_mac")


def load_results(path=None):
    """Rows of the published MLPerf Tiny results CSV (numbers converted, blanks ``None``).

    Args:
        path: CSV path; default the copy shipped in ``keras_dnas/targets/data``.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> rows = mlperf.load_results()
    >>> sorted({r["benchmark"] for r in rows})
    ['ad', 'ic', 'kws', 'vww']
    """
    if path is None:
        path = importlib.resources.files("keras_dnas.targets") / "data" / "mlperf_tiny_results.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in _NUMERIC:
            value = (row.get(key) or "").strip()
            row[key] = float(value) if value else None
    return rows


def is_cmsis_nn_stack(stack, round_=None):
    """True for TFLite Micro or microTVM with CMSIS-NN kernels, not the v0.5 reference.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> mlperf.is_cmsis_nn_stack("microTVM + CMSIS-NN (BYOC)")
    True
    >>> mlperf.is_cmsis_nn_stack("X-CUBE-AI 7.3.0"), mlperf.is_cmsis_nn_stack(
    ...     "TFLM 2.3.1 + CMSIS-NN (reference, mbed-os)", "v0.5")
    (False, False)
    """
    if "CMSIS-NN" not in stack or round_ == "v0.5" or "reference" in stack.lower():
        return False
    return stack.startswith(("TFLM", "microTVM"))


def configurations(rows=None, select=is_cmsis_nn_stack):
    """Board + stack submissions with all four benchmarks, grouped.

    Args:
        rows: output of :func:`load_results` (default: the shipped CSV).
        select: ``fn(stack, round) -> bool`` choosing stacks (default: CMSIS-NN
            based TFLM / microTVM).

    Returns:
        A list of dicts with ``round``, ``submitter``, ``board``, ``core``,
        ``mhz``, ``stack`` and ``latency_ms`` / ``energy_uJ`` dicts keyed by
        benchmark.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> sorted({c["board"] for c in mlperf.configurations()})
    ['NUCLEO-L4R5ZI', 'RX65N Cloud Kit', 'nRF5340-DK']
    """
    rows = load_results() if rows is None else rows
    groups = {}
    for r in rows:
        if not select(r["stack"], r["round"]):
            continue
        key = (r["round"], r["submitter"], r["system"], r["board"], r["stack"], r["supply"])
        g = groups.setdefault(key, {
            "round": r["round"], "submitter": r["submitter"], "board": r["board"],
            "core": r["core"], "mhz": r["mhz"], "stack": r["stack"], "supply": r["supply"],
            "latency_ms": {}, "energy_uJ": {}, "cycles": {},
        })
        g["latency_ms"][r["benchmark"]] = r["latency_ms"]
        g["energy_uJ"][r["benchmark"]] = r["energy_uJ"]
        g["cycles"][r["benchmark"]] = r["cycles"]
    return [g for g in groups.values() if all(b in g["latency_ms"] for b in BENCHMARKS)]


def fidelity(base="nrf52840", pairs=CALIBRATION_PAIRS, configs=None, **calibrate_kwargs):
    """Calibrate on two reference models, predict the other two, for every configuration.

    Args:
        base: prior target (default ``"nrf52840"``, whose coefficients are the
            generic, unmeasured Cortex-M4 + CMSIS-NN defaults).
        pairs: calibration pairs (default :data:`CALIBRATION_PAIRS`; use
            :data:`ALL_PAIRS` for all six).
        configs: output of :func:`configurations` (default: CMSIS-NN stacks).
        **calibrate_kwargs: passed to :func:`keras_dnas.targets.calibrate`.

    Returns:
        A list of dicts: ``board``, ``stack``, ``round``, ``mhz``,
        ``calibrated_on`` (e.g. ``"ic+ad"``), ``model`` (benchmark key),
        ``measured_ms``, ``predicted_ms``, ``error`` (relative), ``scale``.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> rows = mlperf.fidelity()
    >>> max(abs(r["error"]) for r in rows) < 0.20
    True
    """
    from keras_dnas.costs import latency  # noqa: PLC0415
    from keras_dnas.targets.calibration import calibrate  # noqa: PLC0415

    configs = configurations() if configs is None else configs
    layers = {b: reference_layers(b) for b in BENCHMARKS}
    out = []
    for cfg in configs:
        for pair in pairs:
            target = calibrate(base, [(layers[b], cfg["latency_ms"][b]) for b in pair],
                               clock_mhz=cfg["mhz"], **calibrate_kwargs)
            for b in BENCHMARKS:
                if b in pair:
                    continue
                predicted = float(latency.model_latency_ms(layers[b], target))
                measured = cfg["latency_ms"][b]
                out.append({
                    "round": cfg["round"], "submitter": cfg["submitter"], "board": cfg["board"],
                    "core": cfg["core"], "mhz": cfg["mhz"], "stack": cfg["stack"],
                    "calibrated_on": "+".join(pair), "model": b, "measured_ms": measured,
                    "predicted_ms": predicted, "error": predicted / measured - 1.0,
                    "scale": target.scale,
                })
    return out


def format_table(rows, markdown=True):
    """Render :func:`fidelity` rows as a Markdown (or plain text) table.

    Example:

    >>> from keras_dnas.targets import mlperf
    >>> print(mlperf.format_table(mlperf.fidelity()).splitlines()[0])
    | board | stack | calibrated on | model | measured ms | predicted ms | error |
    """
    header = ["board", "stack", "calibrated on", "model", "measured ms", "predicted ms", "error"]
    body = [[f"{r['board']} ({r['round']})", r["stack"], r["calibrated_on"],
             MODEL_NAMES[r["model"]], f"{r['measured_ms']:.2f}", f"{r['predicted_ms']:.2f}",
             f"{100 * r['error']:+.1f} %"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join(fmt.format(*row) for row in [header] + body)
