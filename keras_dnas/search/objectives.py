"""Search objectives: hard budgets and soft minimisation terms, and their strengths."""

import dataclasses
import difflib
import math
import numbers

from keras import ops

from keras_dnas.vocabulary import METRICS, canonical


def _check_metric(obj):
    """Put an old metric spelling into the current vocabulary (with a warning), or raise."""
    metric = canonical(obj.metric)
    object.__setattr__(obj, "metric", metric)
    if metric not in METRICS:
        close = difflib.get_close_matches(str(metric), list(METRICS), n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"Unknown metric '{metric}'.{hint} Known metrics: {sorted(METRICS)}. Received: "
            f"metric={metric!r}"
        )


@dataclasses.dataclass(frozen=True)
class Budget:
    """A hard limit ``cost(metric) <= limit``, penalised by ``max(0, C / T - 1)``.

    The hinge is normalised by the limit, so strengths are unitless: a model
    10 % over its flash budget pays the same as one 10 % over its latency.

    Args:
        metric: one of :data:`METRICS` (``"flash_bytes"``, ``"ram_bytes"``,
            ``"latency_ms"``, ...; the old ``"flash"`` / ``"ram"`` still work and warn).
        limit: the budget, in the metric's unit (bytes, ms, ...).

    Example:

    >>> from keras_dnas.search import Budget
    >>> b = Budget("flash_bytes", 48_000)
    >>> float(b.penalty(60_000.0))
    0.25
    """

    metric: str
    limit: float

    def __post_init__(self):
        _check_metric(self)
        object.__setattr__(self, "limit", _limit(self.metric, self.limit))

    def penalty(self, value):
        """Normalised hinge ``max(0, value / limit - 1)`` (keras.ops)."""
        return ops.relu(ops.cast(value, "float32") / float(self.limit) - 1.0)

    def violation(self, value):
        """Exact relative violation of a number (0.0 when the budget holds)."""
        return max(0.0, float(value) / float(self.limit) - 1.0)

    def holds(self, value):
        return float(value) <= float(self.limit)

    def to_dict(self):
        return {"type": "Budget", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Minimize:
    """A soft objective ``strength * cost / cost(seed)`` (paper A's energy/latency term).

    Args:
        metric: one of :data:`METRICS`.
        strength: weight relative to the warm-up task loss: ``1.0`` makes the
            seed's own cost worth one task loss.

    Example:

    >>> from keras_dnas.search import Minimize
    >>> Minimize("energy_uj", strength=0.5).metric
    'energy_uj'
    """

    metric: str
    strength: float = 1.0

    def __post_init__(self):
        _check_metric(self)
        strength = _plain_number(self.strength)
        if strength is None or not math.isfinite(strength) or strength < 0:
            raise ValueError(f"Minimize needs a finite strength >= 0. Received: "
                             f"strength={self.strength!r}")
        object.__setattr__(self, "strength", strength)

    def to_dict(self):
        return {"type": "Minimize", **dataclasses.asdict(self)}


#: Metrics that count whole units: a limit below one of them cannot be met by any model.
_WHOLE_UNITS = ("flash_bytes", "ram_bytes", "params", "macs", "latency_cycles")


def _plain_number(value):
    """``value`` as a Python int / float (numpy scalars and 0-d arrays too), else ``None``.

    Budgets are often computed with numpy (``0.6 * summary["flash_bytes"]`` of an array,
    ``np.int64``); bools and strings are not numbers here.
    """
    if hasattr(value, "shape") and tuple(value.shape) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _limit(metric, value):
    """The limit of a budget as a plain positive number, or a ValueError saying how to write it."""
    unit = METRICS[metric]
    limit = _plain_number(value)
    if limit is None:
        example = {"bytes": "65_536 for 64 KiB", "ms": "8.0", "uJ": "50.0"}.get(unit, "10_000")
        raise ValueError(
            f"Budget '{metric}' must be a number in {unit} (e.g. {example}), not "
            f"{type(value).__name__}. Received: {metric}={value!r}")
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"A budget needs a positive finite limit (in {unit}). Received: "
                         f"{metric}={value!r}")
    if metric in _WHOLE_UNITS and limit < 1:
        raise ValueError(
            f"Budget '{metric}' is an absolute number of {unit}, and no model has less than "
            f"one: {limit!r} reads like a fraction of the seed. For a fraction, multiply the "
            f"seed's cost, e.g. {metric}=int({limit!r} * kd.summary(seed)['{metric}']). "
            f"Received: {metric}={value!r}")
    return limit


def budget_list(budgets):
    """Budgets as a list: ``{metric: limit}`` (a limit may be a :class:`Budget`), or Budgets.

    >>> from keras_dnas.search.objectives import budget_list
    >>> budget_list({"flash_bytes": 48_000, "ram_bytes": Budget("ram_bytes", 20_000)})
    [Budget(metric='flash_bytes', limit=48000), Budget(metric='ram_bytes', limit=20000)]
    >>> budget_list([Budget("latency_ms", 8.0)])
    [Budget(metric='latency_ms', limit=8.0)]
    """
    if isinstance(budgets, Budget):
        return [budgets]
    if isinstance(budgets, (list, tuple)) and all(isinstance(b, Budget) for b in budgets):
        return list(budgets)
    if not isinstance(budgets, dict):
        raise ValueError(
            "budgets= takes a dict {metric: limit}, e.g. {'flash_bytes': 48_000, "
            "'ram_bytes': 24_000}, or a list of kd.Budget. Received: "
            f"budgets={budgets!r}")
    out = []
    for metric, limit in budgets.items():
        if isinstance(limit, Budget):
            if canonical(metric) != limit.metric:
                raise ValueError(
                    f"budgets[{metric!r}] is a Budget of '{limit.metric}'. Use the same "
                    f"metric as key, or pass a list of kd.Budget. Received: "
                    f"{metric!r}: {limit!r}")
            out.append(limit)
        else:
            out.append(Budget(metric, limit))
    return out


def objective_from_dict(d):
    """Inverse of ``Budget.to_dict`` / ``Minimize.to_dict``."""
    d = dict(d)
    kind = d.pop("type")
    return {"Budget": Budget, "Minimize": Minimize}[kind](**d)


def base_strength(task_loss, seed_cost, limit, min_distance=0.05):
    """Paper B's normalisation for a normalised hinge.

    ``lambda = L_task / (C_seed / T - 1)``: a violation as large as the seed's
    own costs about one warm-up task loss. A seed within ``min_distance`` of
    its limit (or under it) is treated as ``min_distance`` away.

    Example:

    >>> from keras_dnas.search.objectives import base_strength
    >>> base_strength(2.0, seed_cost=200.0, limit=100.0)
    2.0
    """
    distance = max(float(seed_cost) / float(limit) - 1.0, min_distance)
    return float(task_loss) / distance


def ramp(strength, epoch, search_epochs):
    """Paper B's schedule: 1 % to 100 % over the first half of the search, then flat.

    ``min(lambda/100 + e * 0.99 * lambda / (E/2), lambda)`` for search epoch ``e``
    (0-based) of ``E``.

    Example:

    >>> from keras_dnas.search.objectives import ramp
    >>> [round(ramp(1.0, e, 4), 3) for e in range(4)]
    [0.01, 0.505, 1.0, 1.0]
    """
    half = max(search_epochs / 2.0, 1e-9)
    return min(strength / 100.0 + epoch * 0.99 * strength / half, strength)
