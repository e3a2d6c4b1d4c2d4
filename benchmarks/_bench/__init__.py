"""Helpers of ``benchmarks/run.py`` (real-data benchmarks of keras_dnas against baselines).

- :mod:`_bench.tasks`: data sets, seed models, epochs, the budget grid (quick / full).
- :mod:`_bench.costs`: budgets from the seed, cost models, feasibility.
- :mod:`_bench.methods`: seed, hand-tuned width multiplier, L1-norm filter pruning, keras_dnas.
- :mod:`_bench.evaluate`: float and TFLite Micro int8 accuracy, measured flash and arena.
- :mod:`_bench.report`: CSV, Markdown tables, Pareto plots.
"""
