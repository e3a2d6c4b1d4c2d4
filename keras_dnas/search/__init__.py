"""Constrained search: budgets, objectives, strength schedules and the DNAS callback."""

from keras_dnas.search.callback import DNASCallback
from keras_dnas.search.objectives import METRICS, Budget, Minimize, base_strength, ramp

__all__ = ["METRICS", "Budget", "DNASCallback", "Minimize", "base_strength", "ramp"]
