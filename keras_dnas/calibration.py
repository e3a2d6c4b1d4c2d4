"""Fit a target's latency coefficients to measured latencies (``kd.targets.calibrate``).

The latency models are linear in their coefficients once the scale is
factored out (:class:`keras_dnas.costs.latency.LatencyModel`)::

    cycles_i = s * sum_f c_f * F_if  +  sum_u c_u * F_iu

with ``F`` the features of measurement ``i`` (MACs, im2col elements, outputs,
weight bytes, kernel count ...). :func:`calibrate` minimises the squared
**relative** errors ``(predicted_i - measured_i) / measured_i``:

- ``fit="scale"`` (always used for a single measurement or a model without
  fittable coefficients, such as ``"gap8_paper"``): only ``s``, in closed form.
- ``fit="auto"``: ``s`` and every per-op coefficient, non-negative, with a
  prior that ties each scaled coefficient to ``s`` times its base value and
  each unscaled one (flash cycles per byte, per-op overhead) to its base value::

      sum_i (pred_i / y_i - 1)^2 + prior_weight * sum_f (c_f / c0_f - 1)^2

  The common scale costs nothing, so with few measurements only the
  directions the data identify move (for instance, a conv model plus the
  dense-only auto-encoder separate the conv and the dense/flash costs); with
  many measurements (per-layer CSV) the data dominate the prior. Solved by
  non-negative least squares (Lawson-Hanson).

The built-in ``stm32l4r5`` was fitted this way to MLPerf Tiny measurements.
It sits above ``costs`` (it sums the latency model's features over layer
records) and is re-exported by ``keras_dnas.targets`` on first use, so the
target data below ``costs`` do not import it.
"""

import csv
import math
import warnings

import numpy as np

from keras_dnas.costs import compute, latency
from keras_dnas.graph.plan import layer_geometry
from keras_dnas.targets import registry

#: Typical magnitude of the unscaled coefficients, used to normalise their
#: prior when the base value is zero or small.
_UNSCALED_REFERENCE = {"overhead": 1000.0, "flash_bytes": 0.5}

_OPS = (
    "conv", "depthwise", "dense", "add", "subtract", "multiply", "average", "maximum",
    "minimum", "pool", "global_pool", "concat", "pad", "flatten", "reshape", "batchnorm",
    "activation", "dropout", "input", "other", "separable", "scalar", "prelu", "rescaling",
    "normalization", "layernorm", "transpose_conv",
)


def nnls(a, b, max_iter=None):
    """Non-negative least squares ``argmin_{x >= 0} ||a x - b||`` (Lawson-Hanson).

    Args:
        a: ``(m, n)`` array.
        b: ``(m,)`` array.
        max_iter: inner-iteration limit (default ``30 * n``).

    Returns:
        The ``(n,)`` solution.

    Example:

    >>> import numpy as np
    >>> from keras_dnas.calibration import nnls
    >>> nnls(np.eye(2), np.array([1.0, -1.0])).tolist()
    [1.0, 0.0]
    """
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    m, n = a.shape
    max_iter = max_iter or 30 * n
    passive = np.zeros(n, dtype=bool)
    x = np.zeros(n)
    tol = 10 * np.finfo(float).eps * max(m, n) * max(np.abs(a).sum(axis=0).max(), 1.0)
    w = a.T @ (b - a @ x)
    iterations = 0
    while (~passive).any() and np.max(np.where(passive, -np.inf, w)) > tol:
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            iterations += 1
            if iterations > max_iter:
                return x
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


def model_features(layers, target):
    """Latency-model features summed over layer records: what the coefficients multiply.

    Example:

    >>> from keras_dnas.calibration import model_features
    >>> f = model_features([{"op": "dense", "geometry": {}, "cin": 64, "cout": 10}], "stm32l4r5")
    >>> f["dense"], f["requant"], f["flash_bytes"]
    (640.0, 10, 640)
    """
    target = registry.get(target)
    model = latency.latency_model(target)
    total = {}
    for _, op, g, cin, cout in compute.layer_records(layers):
        for k, v in model.features(op, g, cin, cout, target).items():
            total[k] = total.get(k, 0) + v
    return total


def _as_layers(obj):
    """Layer records of a measured model: records list, ChannelPlan or keras.Model."""
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if hasattr(obj, "layers") and obj.layers and hasattr(obj.layers[0], "geometry"):
        return obj
    import keras  # noqa: PLC0415

    if isinstance(obj, keras.Model):
        from keras_dnas import graph  # noqa: PLC0415

        return graph.analyze(obj)
    raise ValueError(
        "Each measurement must be (model_or_plan, latency_ms) where model_or_plan is a keras.Model, "
        "a ChannelPlan or a list of layer records. "
        f"Received: model_or_plan of type {type(obj).__name__}"
    )


def _check_positive(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number. Received: {what}={value!r}")
    return float(value)


def _fit_scale(base, model, rows):
    a = np.array([sum(model.coefficient(base, f) * F.get(f, 0) for f in model.scaled) / y
                  for F, y in rows])
    b = np.array([sum(model.coefficient(base, f) * F.get(f, 0) for f in model.unscaled) / y
                  for F, y in rows])
    if not np.any(a > 0):
        raise ValueError(
            "The measured layers contain no operation the latency model costs "
            f"(model '{model.name}'), so no scale can be fitted. Received: {len(rows)} measurement(s)"
        )
    scale = float(np.sum(a * (1.0 - b)) / np.sum(a * a))
    if scale <= 0:
        raise ValueError(
            "The unscaled cycles (flash reads, per-op overhead) of the base target already exceed the "
            "measured latencies; check the clock and the units (milliseconds). "
            f"Received: measured cycles={[round(y) for _, y in rows]}"
        )
    return scale


def _fit_auto(base, model, rows, scale0, prior_weight):
    scaled = [f for f in model.scaled if f in model.fitted and model.coefficient(base, f) > 0]
    fixed_scaled = [f for f in model.scaled if f not in scaled]
    unscaled = [f for f in model.unscaled if f in model.fitted]
    fixed_unscaled = [f for f in model.unscaled if f not in unscaled]
    c0 = {f: model.coefficient(base, f) for f in model.scaled + model.unscaled}
    ref = {f: scale0 * c0[f] for f in scaled}
    ref.update({f: max(c0[f], _UNSCALED_REFERENCE.get(f, 1.0)) for f in unscaled})
    names = scaled + unscaled
    n = len(names) + 1  # + the scale, normalised by scale0
    a_rows, b_rows = [], []
    for F, y in rows:
        row = [F.get(f, 0) * ref[f] / y for f in names]
        row.append(sum(c0[f] * F.get(f, 0) for f in fixed_scaled) * scale0 / y)
        a_rows.append(row)
        b_rows.append(1.0 - sum(c0[f] * F.get(f, 0) for f in fixed_unscaled) / y)
    root = math.sqrt(prior_weight)
    for j, f in enumerate(names):
        row = np.zeros(n)
        row[j] = root
        if f in scaled:  # theta_f / (scale0 c0_f) - s / scale0 = 0
            row[-1] = -root
            b_rows.append(0.0)
        else:  # u_f / ref_f = c0_f / ref_f
            b_rows.append(root * c0[f] / ref[f])
        a_rows.append(row)
    z = nnls(np.array(a_rows), np.array(b_rows))
    scale = z[-1] * scale0
    if scale <= 1e-9 * scale0:
        return None
    coefficients = {f: z[j] * ref[f] / scale for j, f in enumerate(scaled)}
    coefficients.update({f: z[len(scaled) + j] * ref[f] for j, f in enumerate(unscaled)})
    return scale, coefficients


def _calibrated_target(base, model, rows, clock_mhz, fit, prior_weight, name, what):
    if fit not in ("auto", "scale"):
        raise ValueError(f"fit must be 'auto' or 'scale'. Received: fit={fit!r}")
    prior_weight = _check_positive(prior_weight, "prior_weight")
    if not rows:
        raise ValueError("calibrate() needs at least one measurement. Received: measurements=[]")
    scale0 = _fit_scale(base, model, rows)
    result = None
    if fit == "auto" and len(rows) >= 2 and model.fitted:
        result = _fit_auto(base, model, rows, scale0, prior_weight)
    n = len(rows)
    sources = dict(base.sources)
    how = (f"fitted by calibrate() on {n} {what} (relative least squares, base '{base.name}'"
           f"{', prior_weight=%g' % prior_weight if result else ''})")
    changes = {"scale": scale0}
    sources["scale"] = how
    if result is not None:
        scale, coefficients = result
        cycles = dict(base.cycles)
        changes["scale"] = scale
        for f, value in coefficients.items():
            key = "flash_read_cycles" if f == "flash_bytes" else f"cycles.{f}"
            old = model.coefficient(base, f)
            if f == "flash_bytes":
                changes["flash_read_cycles"] = float(value)
            else:
                cycles[f] = float(value)
            sources[key] = f"{how}; base value {old:g}"
        changes["cycles"] = cycles
    changes["clock_mhz"] = float(clock_mhz)
    if clock_mhz != base.clock_mhz:
        sources["clock_mhz"] = "clock of the calibration measurements"
    changes["name"] = name or f"{base.name}_calibrated"
    changes["description"] = (base.description + f" Calibrated on {n} {what}.").strip()
    changes["sources"] = sources
    return base.replace(**changes)


def calibrate(base, measurements, clock_mhz=None, *, fit="auto", prior_weight=0.1, name=None):
    """A new target whose latency model reproduces measured whole-model latencies.

    Args:
        base: target (or name) providing the latency model, memory sizes and
            the prior coefficients.
        measurements: list of ``(model_or_plan, latency_ms)``: a
            ``keras.Model`` (analysed with ``keras_dnas.graph.analyze``), a
            ``ChannelPlan`` or a list of layer records, and its measured
            latency in milliseconds.
        clock_mhz: clock of the measurements (default: the base clock); the
            returned target runs at this clock.
        fit: ``"auto"`` (scale plus per-op coefficients with a prior, from two
            measurements on) or ``"scale"`` (scale only).
        prior_weight: strength of the prior that keeps per-op coefficients at
            their base ratios (``fit="auto"``).
        name: name of the new target (default ``"<base>_calibrated"``); it is
            not registered.

    Returns:
        A new :class:`~keras_dnas.targets.HardwareTarget`.

    Raises:
        ValueError: for malformed measurements or a non-positive fitted scale.

    Example:

    >>> from keras_dnas import targets, zoo
    >>> t = targets.calibrate("nrf52840", [(zoo.resnet8(), 389.56),
    ...                                    (zoo.fc_autoencoder(), 8.605)], clock_mhz=120)
    >>> round(t.scale, 2), t.clock_mhz
    (2.04, 120.0)
    """
    base = registry.get(base)
    model = latency.latency_model(base)
    clock = base.clock_mhz if clock_mhz is None else _check_positive(clock_mhz, "clock_mhz")
    rows = []
    for item in measurements:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(
                f"Each measurement must be a pair (model_or_plan, latency_ms). Received: {item!r}"
            )
        obj, ms = item
        ms = _check_positive(ms, "latency_ms")
        rows.append((model_features(_as_layers(obj), base), ms * clock * 1e3))
    return _calibrated_target(base, model, rows, clock, fit, prior_weight, name,
                              "whole-model measurement(s)")


def _row_number(row, key, default=None, line=None):
    text = (row.get(key) or "").strip()
    if not text:
        if default is None:
            raise ValueError(f"Calibration CSV line {line}: column '{key}' is required. "
                             f"Received: row={row!r}")
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"Calibration CSV line {line}: column '{key}' must be a number. "
                         f"Received: {key}={text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Calibration CSV line {line}: column '{key}' must be >= 0. "
                         f"Received: {key}={text!r}")
    return int(value) if value.is_integer() else value


def read_layer_csv(path):
    """Parse a per-layer calibration CSV into ``[(record, cycles_or_None, ms_or_None), ...]``.

    Format (header required, ``#`` comment lines allowed, column order free)::

        layer,op,taps,cin,cout,in_positions,out_positions,cycles
        conv1,conv,9,3,16,1024,1024,2151000
        fc,dense,1,64,10,1,1,2400

    - ``op``: plan op (``conv``, ``depthwise``, ``dense``, ``add``, ``pool``,
      ``global_pool``, ...); ``conv1x1`` is accepted for ``conv`` with ``taps=1``.
    - ``cin``, ``cout``: channels; ``taps``: kernel elements (default 1);
      ``out_positions``: output pixels/steps (default 1); ``in_positions``
      (default ``out_positions``); ``depth_multiplier`` (default 1);
      optional ``out_h``, ``out_w`` (used by the GAP8 model).
    - One of ``cycles``, ``latency_ms`` or ``latency_us`` per row.
    - ``layer`` (optional) names the row in error messages.

    Example:

    >>> import pathlib, tempfile
    >>> from keras_dnas.targets import read_layer_csv
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "layers.csv"
    >>> _ = path.write_text("layer,op,taps,cin,cout,out_positions,cycles\\n"
    ...                     "fc,dense,1,64,10,1,2400\\n")
    >>> record, cycles, ms = read_layer_csv(path)[0]
    >>> record["op"], record["cin"], cycles
    ('dense', 64, 2400)
    """
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        raise ValueError(f"Calibration CSV '{path}' is empty. Received: path={path!r}")
    out = []
    for i, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "") for k, v in raw.items()}
        op = row.get("op", "").strip().lower()
        taps = _row_number(row, "taps", 1, i)
        if op == "conv1x1":
            op, taps = "conv", 1
        if op not in _OPS:
            raise ValueError(f"Calibration CSV line {i}: unknown op. Known ops: {list(_OPS)} "
                             f"(and 'conv1x1'). Received: op={op!r}")
        cin = _row_number(row, "cin", None, i)
        cout = _row_number(row, "cout", None, i)
        out_pos = _row_number(row, "out_positions", 1, i)
        in_pos = _row_number(row, "in_positions", out_pos, i)
        dm = _row_number(row, "depth_multiplier", 1, i)
        h, w = row.get("out_h", "").strip(), row.get("out_w", "").strip()
        shape = ([_row_number(row, "out_h", 1, i), _row_number(row, "out_w", 1, i), cout]
                 if h or w else [out_pos, cout])
        # the CSV gives positions, not shapes: the input as (positions, channels)
        geometry = layer_geometry([[in_pos, cin]], shape, kernel_size=[taps], use_bias=True,
                                  depth_multiplier=dm, out_positions=out_pos)
        cycles = ms = None
        if row.get("cycles", "").strip():
            cycles = _row_number(row, "cycles", None, i)
        elif row.get("latency_ms", "").strip():
            ms = _row_number(row, "latency_ms", None, i)
        elif row.get("latency_us", "").strip():
            ms = _row_number(row, "latency_us", None, i) / 1e3
        else:
            raise ValueError(f"Calibration CSV line {i}: one of the columns 'cycles', 'latency_ms' "
                             f"or 'latency_us' is required. Received: row={row!r}")
        name = row.get("layer", "").strip() or f"line{i}"
        out.append(({"name": name, "op": op, "geometry": geometry, "cin": cin, "cout": cout},
                    cycles, ms))
    return out


def calibrate_from_csv(base, path, clock_mhz=None, *, fit="auto", prior_weight=0.1, name=None):
    """Calibrate from per-layer measurements in a CSV file (format: :func:`read_layer_csv`).

    Each row is one measurement of one layer (for instance TFLite Micro's
    ``MicroProfiler`` ticks per operator). Rows of ops the latency model does
    not cost (BatchNorm, activations, ...) are skipped with a warning.

    Args:
        base: target (or name) providing the latency model and priors.
        path: CSV file.
        clock_mhz: clock used to convert ``latency_ms`` / ``latency_us`` rows
            to cycles (default: base clock); the new target's clock.
        fit, prior_weight, name: as in :func:`calibrate`.

    Returns:
        A new :class:`~keras_dnas.targets.HardwareTarget`.

    Example:

    >>> import pathlib, tempfile
    >>> from keras_dnas import targets
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "layers.csv"
    >>> _ = path.write_text(
    ...     "layer,op,taps,cin,cout,out_positions,cycles\\n"
    ...     "conv,conv,9,16,16,1024,1000000\\n"
    ...     "fc,dense,1,256,128,1,90000\\n")
    >>> t = targets.calibrate_from_csv("stm32l4r5", path)
    >>> t.name
    'stm32l4r5_calibrated'
    """
    base = registry.get(base)
    model = latency.latency_model(base)
    clock = base.clock_mhz if clock_mhz is None else _check_positive(clock_mhz, "clock_mhz")
    rows, skipped = [], []
    for record, cycles, ms in read_layer_csv(path):
        feats = model_features([record], base)
        if not feats:
            skipped.append(record["name"])
            continue
        y = cycles if cycles is not None else ms * clock * 1e3
        if y <= 0:
            raise ValueError(f"Calibration CSV: layer '{record['name']}' has a non-positive latency. "
                             f"Received: {y!r}")
        rows.append((feats, float(y)))
    if skipped:
        warnings.warn(f"calibrate_from_csv(): skipped rows of ops the '{model.name}' latency model "
                      f"does not cost: {skipped}", stacklevel=2)
    return _calibrated_target(base, model, rows, clock, fit, prior_weight, name,
                              "per-layer measurement(s)")
