"""MLPerf Tiny reference models as layer records.

The four reference networks are written out by hand, layer by layer, in the
ChannelPlan format (``op`` + ``geometry``), independently of
``keras_dnas.zoo`` and the graph reader so that each checks the other (the record
itself is `keras_dnas.graph.plan.layer_geometry`, the one builder of it).
Only the operators TFLite Micro executes are listed (BatchNorm is folded,
ReLU fused, the final softmax is free in the latency model).

The published latencies of these models and the fidelity study of the latency
model against them live in ``benchmarks/_bench/mlperf_fidelity.py``.

Example:

>>> from benchmarks._bench import layer_costs, mlperf_reference as mlperf
>>> [layer_costs.model_macs(mlperf.reference_layers(b)) for b in mlperf.BENCHMARKS]
[12501632, 2656768, 7489664, 264192]
"""

from keras_dnas.graph.plan import layer_geometry

#: Benchmark keys: ic = ResNet-8 (CIFAR-10), kws = DS-CNN, vww = MobileNetV1-0.25
#: at 96x96, ad = FC auto-encoder (one 640-value inference).
BENCHMARKS = ("ic", "kws", "vww", "ad")

MODEL_NAMES = {
    "ic": "ResNet-8",
    "kws": "DS-CNN",
    "vww": "MobileNetV1-0.25",
    "ad": "FC-AutoEncoder",
}


def _layer(name, op, in_shape, out_shape, kernel=(), strides=(), dm=1, n_inputs=1):
    geometry = layer_geometry(
        [list(in_shape)] * n_inputs, out_shape, kernel_size=kernel, strides=strides,
        dilation_rate=[1] * len(kernel),
        padding="same" if op in ("conv", "depthwise") else "valid",
        use_bias=op in ("conv", "depthwise", "dense"), depth_multiplier=dm)
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

    >>> from benchmarks._bench import mlperf_reference as mlperf
    >>> [layer["op"] for layer in mlperf.reference_layers("kws")][:3]
    ['conv', 'depthwise', 'conv']
    """
    try:
        builder = _BUILDERS[benchmark]
    except KeyError:
        raise ValueError(f"Unknown MLPerf Tiny benchmark. Known: {list(BENCHMARKS)}. "
                         f"Received: benchmark={benchmark!r}") from None
    return builder()
