"""Budgets from the seed, the library's cost models, channel configurations.

A channel configuration is a dict ``{group leader layer name: channel count}``
over the searchable groups of the seed's prepared model; layer names survive
``kd.prepare``, ``kd.freeze``, ``freeze.rebuild_with`` and ``clone_model``, so
one dict describes a model of any method.
"""

import importlib.util
import time

import numpy as np

import keras_dnas as kd
from keras_dnas.costs.model import CostModel, to_python


def memory_available():
    """True once ``keras_dnas.memory`` (the flash / arena model) exists."""
    try:
        return importlib.util.find_spec("keras_dnas.memory") is not None
    except (ImportError, ValueError):
        return False


POINTER_BYTES = 8
"""Pointer size of the flash / RAM model. The arena is *measured* with the ``tflite_micro``
host interpreter (64-bit), whose persistent tail holds 8-byte pointers; budgets are
fractions of the seed's measured arena, so every method's cost model uses the same
8-byte pointers (on a 32-bit MCU the tail, hence the arena, is a little smaller: a
budget that holds here also holds there)."""


def build_memory(search_model, plan):
    from keras_dnas import memory as memory_lib

    return memory_lib.MemoryModel.from_model(search_model, plan, pointer_bytes=POINTER_BYTES)


class SeedCosts:
    """Cost models of one seed architecture on every target.

    Args:
        seed: the plain seed model (any weights).
        targets: target names.
        use_memory: build the flash / RAM model (``keras_dnas.memory``).
    """

    def __init__(self, seed, targets, use_memory):
        start = time.perf_counter()
        self.search = kd.prepare(seed)
        self.plan, _ = kd.freeze_lib.kept_channels(self.search)
        self.memory = build_memory(self.search, self.plan) if use_memory else None
        self.build_s = time.perf_counter() - start
        self.models = {t: CostModel(self.plan, t, memory=self.memory) for t in targets}
        self.groups = [g for g in self.plan.groups if not g.frozen]

    # ---------------------------------------------------------------- configurations
    def full(self):
        return {g.leader: g.size for g in self.groups}

    def counts_list(self, config):
        return [g.size if g.frozen else int(config[g.leader]) for g in self.plan.groups]

    def uniform(self, width):
        """Counts of a uniform width multiplier: ``max(1, round(width * C))`` per group."""
        return {g.leader: max(1, int(round(width * g.size))) for g in self.groups}

    @staticmethod
    def config_of(model, leaders):
        """Channel configuration of a plain (frozen / rebuilt) model, read from its layers."""
        out = {}
        for name in leaders:
            layer = model.get_layer(name)
            out[name] = int(getattr(layer, "filters", None) or layer.units)
        return out

    # ------------------------------------------------------------------------- costs
    def evaluate(self, target, config, metrics=None):
        cm = self.models[target]
        values = cm.evaluate(self.counts_list(config), metrics or cm.available(), exact=True)
        return {k: float(to_python(v)) for k, v in values.items()}

    def minimum(self, target, metrics):
        cm = self.models[target]
        values = cm.evaluate(cm.min_counts(), metrics, exact=True)
        return {k: float(to_python(v)) for k, v in values.items()}


def budgets_for(point, seed_measured, seed_latency_ms, use_memory, seed_params):
    """``{metric: limit}`` of a budget point.

    With the memory model: flash and RAM as fractions of the seed's *measured*
    ``len(.tflite)`` and TFLite Micro arena, latency as a fraction of the seed's
    estimated latency on the point's target. Without it (development only):
    ``params`` stands in for flash and RAM is not constrained.
    """
    budgets = {}
    if use_memory:
        budgets["flash_bytes"] = float(np.floor(point.flash * seed_measured["flash"]))
        budgets["ram_bytes"] = float(np.floor(point.ram * seed_measured["arena"]))
    else:
        budgets["params"] = float(np.floor(point.flash * seed_params))
    budgets["latency_ms"] = point.latency * seed_latency_ms[point.target]
    return budgets


def holds(values, budgets):
    return all(values[m] <= limit for m, limit in budgets.items())


def widest_uniform(costs, target, budgets, steps=64):
    """The largest uniform width multiplier ``k / steps`` whose exact costs meet ``budgets``.

    Returns:
        ``(width, config, values)`` or ``None`` when not even one channel per group fits.
    """
    metrics = list(budgets)
    seen = set()
    for k in range(steps, 0, -1):
        width = k / steps
        config = costs.uniform(width)
        key = tuple(sorted(config.items()))
        if key in seen:
            continue
        seen.add(key)
        values = costs.evaluate(target, config, metrics)
        if holds(values, budgets):
            return width, config, values
    return None
