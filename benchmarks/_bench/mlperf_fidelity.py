"""Fidelity of the latency model against the published MLPerf Tiny results (a study, not runtime).

``data/mlperf_tiny_results.csv`` is a copy of the published per-inference latencies and
energies of the MLPerf Tiny reference models on Cortex-M boards, parsed from the
``mlcommons/tiny_results_v0.5 ... v1.3`` repositories (every row names repo, commit and file).
:func:`fidelity` calibrates a target on two benchmarks and predicts the others.

Example:

>>> from benchmarks._bench import mlperf_fidelity as mlperf
>>> sorted({r["benchmark"] for r in mlperf.load_results()})
['ad', 'ic', 'kws', 'vww']
"""

import csv
import itertools
import os

from keras_dnas.targets import calibrate
from benchmarks._bench.layer_costs import model_latency_ms
from benchmarks._bench.mlperf_reference import BENCHMARKS, MODEL_NAMES, reference_layers

#: All calibration pairs.
ALL_PAIRS = tuple(itertools.combinations(BENCHMARKS, 2))

#: The documented calibration choice: one conv model plus the dense-only
#: auto-encoder. A pair of conv models says nothing about the cost of
#: weight-streaming dense layers, whose cost relative to convolutions varies
#: 0.94x-1.40x across the CMSIS-NN boards in the data.
CALIBRATION_PAIRS = (("ic", "ad"), ("kws", "ad"), ("vww", "ad"))


_NUMERIC = ("mhz", "macs", "latency_ms", "cycles", "cycles_per_mac", "energy_uJ", "avg_power_mW",
            "nJ_per_cycle", "pJ_per_mac")


def load_results(path=None):
    """Rows of the published MLPerf Tiny results CSV (numbers converted, blanks ``None``).

    Args:
        path: CSV path; default the copy in ``benchmarks/_bench/data``.

    Example:

    >>> from benchmarks._bench import mlperf_fidelity as mlperf
    >>> rows = mlperf.load_results()
    >>> sorted({r["benchmark"] for r in rows})
    ['ad', 'ic', 'kws', 'vww']
    """
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mlperf_tiny_results.csv")
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

    >>> from benchmarks._bench import mlperf_fidelity as mlperf
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

    >>> from benchmarks._bench import mlperf_fidelity as mlperf
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

    >>> from benchmarks._bench import mlperf_fidelity as mlperf
    >>> rows = mlperf.fidelity()
    >>> max(abs(r["error"]) for r in rows) < 0.20
    True
    """

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
                predicted = float(model_latency_ms(layers[b], target))
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

    >>> from benchmarks._bench import mlperf_fidelity as mlperf
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
