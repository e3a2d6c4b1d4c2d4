"""HAPT TCN: keras_dnas searching channels + receptive field + dilation (PIT's time axis)
against channels only and the hand-tuned uniform width, at the benchmark grid's budgets.

A thin front end of ``run.py``: the same data, seed, warm-up checkpoint, epochs, budgets,
int8 conversion and TFLite Micro measurement; the methods are ``hand`` (uniform width),
``dnas`` (channels) and ``dnas_time`` (``kd.prepare(search=("channels", "receptive_field",
"dilation"))``, see ``_bench/runner.py``). Extra arguments go to ``run.py`` (``--points``,
``--targets``, ``--seed``, ``--out``, ...); the CSV and tables are
``<out>/time_axis_results.csv`` / ``time_axis_tables.md``. The ``dnas_time`` rows name the
frozen kernels (taps@dilation of every Conv1D) in their note.

Usage::

    python benchmarks/time_axis.py                    # the full grid, seed 0
    python benchmarks/time_axis.py --targets stm32h743 --points 0.25:0.5:1,0.125:0.5:1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {"--datasets": "hapt", "--methods": "hand,dnas,dnas_time", "--tag": "time_axis"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    return run.main(argv)


if __name__ == "__main__":
    main()
