"""One vocabulary for costs: metric names (the unit in the name) and the old spellings.

Budgets, ``DNASCallback`` logs (``dnas/<metric>``), ``kd.summary``, the freeze
certificate, ``kd.export.measure``, the report and ``keras-dnas inspect`` all use
these names. The model's RAM is its tensor arena on the target, so it is
``ram_bytes`` everywhere (``arena_head_bytes`` / ``arena_tail_bytes`` are its
parts); ``target_ram_bytes`` is the board's. Old spellings still work and warn.

Example:

>>> from keras_dnas.vocabulary import METRICS, canonical
>>> METRICS["ram_bytes"]
'bytes'
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     canonical("ram")
'ram_bytes'
>>> str(caught[0].message)
"keras_dnas: 'ram' is deprecated, use 'ram_bytes'."
"""

import json
import os
import sys
import warnings

#: Metric name -> unit. Budgets, logs and results use these names.
METRICS = {
    "flash_bytes": "bytes",
    "ram_bytes": "bytes",
    "params": "parameters",
    "macs": "MACs",
    "latency_ms": "ms",
    "latency_cycles": "cycles",
    "energy_uj": "uJ",
}

#: Old spelling -> new one, for budget metrics and result keys alike.
RENAMED = {
    "flash": "flash_bytes",
    "ram": "ram_bytes",
    "arena_bytes": "ram_bytes",
    "tflite_bytes": "flash_bytes",
    "tflm_arena_bytes": "ram_bytes",
}

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _outside_stacklevel():
    """The ``stacklevel`` of the first caller outside keras_dnas (where the old name is)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                 or frame.f_code.co_filename == "<string>"):  # dataclass init
        frame, level = frame.f_back, level + 1
    return level


def canonical(name):
    """``name`` in the current vocabulary; an old spelling warns (``DeprecationWarning``)."""
    new = RENAMED.get(name) if isinstance(name, str) else None
    if new is None:
        return name
    warnings.warn(f"keras_dnas: '{name}' is deprecated, use '{new}'.", DeprecationWarning,
                  stacklevel=_outside_stacklevel())
    return new


class Results(dict):
    """A JSON-ready ``dict`` of results whose old key spellings still read (with a warning).

    Example:

    >>> import warnings
    >>> r = Results(ram_bytes=400)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     r["arena_bytes"], r.get("arena_bytes"), r.get("nothing", 0)
    (400, 400, 0)
    """

    def __missing__(self, key):
        new = RENAMED.get(key) if isinstance(key, str) else None
        if new is None or not dict.__contains__(self, new):
            raise KeyError(key)
        return self[canonical(key)]

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def to_json(self, **kwargs):
        """The results as a JSON string (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(dict(self), **kwargs)
