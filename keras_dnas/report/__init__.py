"""Summaries and reports of searches.

- `summary(model, target)`: per-layer costs and totals against a target (a printable dict).
- `write_report(path, seed=..., frozen=..., target=...)`: a self-contained HTML page with
  before/after charts (channels, per-layer costs, budgets, accuracy, search history, freeze
  certificate) and the same numbers as JSON next to it. Needs matplotlib
  (`pip install "keras_dnas[report]"`).
"""

from keras_dnas.report.html import write_report
from keras_dnas.report.summary import Summary, summary

__all__ = ["Summary", "summary", "write_report"]
