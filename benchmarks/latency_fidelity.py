"""Latency-model fidelity against published MLPerf Tiny results (for BENCHMARKS.md).

For every CMSIS-NN based board + stack in the MLPerf Tiny results (TFLite Micro
or microTVM with CMSIS-NN kernels; the v0.5 reference and vendor engines are
excluded) that reports all four benchmarks, calibrate the ``cmsis_nn`` latency
model on two reference models and predict the other two.

- Documented choice: one conv model + the dense-only FC auto-encoder
  (``mlperf_fidelity.CALIBRATION_PAIRS``); all six pairs are summarised too.
- Prior: the built-in ``nrf52840`` target, i.e. the generic, unmeasured
  Cortex-M4 + CMSIS-NN coefficients of ``shared/data/README.md``.

Usage::

    python benchmarks/latency_fidelity.py            # Markdown tables
    python benchmarks/latency_fidelity.py --all      # also ONNC + CMSIS-NN (informational)
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_dnas import targets  # noqa: E402
from keras_dnas.costs import latency  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._bench import layer_costs, mlperf_fidelity  # noqa: E402
from benchmarks._bench import mlperf_reference as mlperf  # noqa: E402


def _summary(rows):
    by_config = {}
    for r in rows:
        key = (f"{r['board']} ({r['round']})", r["stack"])
        s = by_config.setdefault(key, {"conv": 0.0, "ad": None})
        if r["model"] == "ad":
            s["ad"] = r["error"] if s["ad"] is None or abs(r["error"]) > abs(s["ad"]) else s["ad"]
        else:
            s["conv"] = max(s["conv"], abs(r["error"]))
    lines = ["| board | stack | worst conv-model error, any pair | worst AD error, pairs without AD |",
             "|---|---|---|---|"]
    for (board, stack), s in by_config.items():
        lines.append(f"| {board} | {stack} | {100 * s['conv']:.1f} % | {100 * s['ad']:+.1f} % |")
    return "\n".join(lines)


def _fitted(configs, base):
    names = ["scale"] + list(latency.LATENCY_MODELS["cmsis_nn"].scaled) + ["overhead", "k_w"]
    lines = ["| board | stack | " + " | ".join(names) + " | max error on the 4 fitted |",
             "|" + "---|" * (len(names) + 3)]
    layers = {b: mlperf.reference_layers(b) for b in mlperf.BENCHMARKS}
    for cfg in configs:
        t = targets.calibrate(base, [(layers[b], cfg["latency_ms"][b]) for b in mlperf.BENCHMARKS],
                                  clock_mhz=cfg["mhz"])
        err = max(abs(float(layer_costs.model_latency_ms(layers[b], t)) / cfg["latency_ms"][b] - 1)
                  for b in mlperf.BENCHMARKS)
        values = [t.scale] + [t.cycles[k] for k in names[1:-1]] + [t.flash_read_cycles]
        lines.append(f"| {cfg['board']} ({cfg['round']}) | {cfg['stack']} | "
                     + " | ".join(f"{v:.3g}" for v in values) + f" | {100 * err:.1f} % |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true",
                        help="also show ONNC + CMSIS-NN submissions (not part of the claim)")
    parser.add_argument("--base", default="nrf52840", help="prior target (default nrf52840)")
    args = parser.parse_args()
    start = time.perf_counter()
    configs = mlperf_fidelity.configurations()
    rows = mlperf_fidelity.fidelity(args.base, pairs=mlperf_fidelity.CALIBRATION_PAIRS, configs=configs)
    worst = max(abs(r["error"]) for r in rows)
    print(f"## Latency fidelity: calibrate on a conv model + AD, predict the other two "
          f"(prior '{args.base}')\n")
    print(mlperf_fidelity.format_table(rows))
    print(f"\nWorst error: {100 * worst:.1f} % over {len(rows)} predictions "
          f"({len(configs)} board/stack submissions).\n")
    all_rows = mlperf_fidelity.fidelity(args.base, pairs=mlperf_fidelity.ALL_PAIRS, configs=configs)
    print("## All six calibration pairs\n")
    print(_summary(all_rows))
    print("\n## Coefficients fitted on all four models (scale x coefficient = cycles per unit)\n")
    print(_fitted(configs, args.base))
    if args.all:
        onnc = mlperf_fidelity.configurations(
            select=lambda stack, round_: "ONNC" in stack and "CMSIS-NN" in stack)
        print("\n## Informational: ONNC + CMSIS-NN (a different graph compiler; not in the claim)\n")
        print(mlperf_fidelity.format_table(mlperf_fidelity.fidelity(args.base, configs=onnc)))
    g = layer_costs.model_cycles(mlperf.reference_layers("ic"), "gap8")
    print(f"\nGAP8 paper-B model, seed ResNet-8: {g:,} cycles (paper: 766,624).")
    print(f"\n({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
