"""Registry of hardware targets: built-ins from JSON data files plus user targets."""

import difflib
import importlib.resources
import json

from keras_dnas.targets.target import HardwareTarget

_REGISTRY = {}
_BUILTINS_LOADED = False


def _normalise(name):
    return name.strip().lower().replace("-", "_")


def _load_builtins():
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    data = importlib.resources.files("keras_dnas.targets") / "data"
    for entry in sorted(data.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        config = json.loads(entry.read_text(encoding="utf-8"))
        try:
            target = HardwareTarget.from_dict(config)
        except ValueError as e:
            raise ValueError(f"Invalid built-in target file '{entry.name}': {e}") from e
        _REGISTRY.setdefault(_normalise(target.name), target)


def builtin_names():
    """Names of the targets shipped as JSON files in ``keras_dnas/targets/data``.

    Example:

    >>> from keras_dnas import targets
    >>> "stm32h743" in targets.builtin_names()
    True
    """
    data = importlib.resources.files("keras_dnas.targets") / "data"
    return sorted(p.name[: -len(".json")] for p in data.iterdir() if p.name.endswith(".json"))


def names():
    """Sorted names of all registered targets (built-in and user).

    Example:

    >>> from keras_dnas import targets
    >>> targets.names()[:3]
    ['gap8', 'nrf52840', 'stm32f746']
    """
    _load_builtins()
    return sorted(_REGISTRY)


def list_targets():
    """All registered :class:`HardwareTarget` objects, sorted by name.

    Example:

    >>> from keras_dnas import targets
    >>> [t.clock_mhz for t in targets.list_targets() if t.name == "stm32f746"]
    [216.0]
    """
    _load_builtins()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get(name):
    """Look up a target by name; a :class:`HardwareTarget` passes through.

    Names are matched case-insensitively, with ``-`` equivalent to ``_``.

    Args:
        name: a registered name such as ``"stm32h743"``, or a ``HardwareTarget``.

    Returns:
        The :class:`HardwareTarget`.

    Raises:
        ValueError: for an unknown name (the message lists the known names)
            or an argument that is neither a string nor a target.

    Example:

    >>> from keras_dnas import targets
    >>> targets.get("STM32H743").ram_bytes
    524288
    >>> targets.get(targets.get("gap8")).latency_model
    'gap8_paper'
    >>> targets.get("stm32h7")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown hardware target. Did you mean 'stm32h743'? Known targets: ['gap8', ...]. For a board not listed, pass kd.targets.HardwareTarget(...) or register one (kd.targets.register). Received: name='stm32h7'
    """
    if isinstance(name, HardwareTarget):
        return name
    if not isinstance(name, str):
        hint = (" For a dict of target fields, pass kd.targets.HardwareTarget.from_dict(d)."
                if isinstance(name, dict) else "")
        raise ValueError(
            f"Expected a target name (str) or a HardwareTarget.{hint} "
            f"Received: name={name!r} of type {type(name).__name__}"
        )
    _load_builtins()
    key = _normalise(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"Unknown hardware target.{hint} Known targets: {sorted(_REGISTRY)}. For a board not "
        "listed, pass kd.targets.HardwareTarget(...) or register one (kd.targets.register). Received: "
        f"name={name!r}"
    )


def register(target, overwrite=False):
    """Add a target to the registry so that ``get(target.name)`` finds it.

    Args:
        target: a :class:`HardwareTarget` (or a dict accepted by
            :meth:`HardwareTarget.from_dict`).
        overwrite: replace an existing target of the same name.

    Returns:
        The registered target.

    Raises:
        ValueError: if the name is taken and ``overwrite`` is False.

    Example:

    >>> from keras_dnas import targets
    >>> t = targets.get("stm32l4r5").replace(name="my_l4r5_80mhz", clock_mhz=80)
    >>> targets.register(t, overwrite=True).name
    'my_l4r5_80mhz'
    >>> targets.get("my_l4r5_80mhz").clock_mhz
    80.0
    """
    if isinstance(target, dict):
        target = HardwareTarget.from_dict(target)
    if not isinstance(target, HardwareTarget):
        raise ValueError(
            f"register() expects a HardwareTarget or a dict. Received: target={target!r}"
        )
    _load_builtins()
    key = _normalise(target.name)
    if key in _REGISTRY and not overwrite and _REGISTRY[key] != target:
        raise ValueError(
            f"A target named '{key}' is already registered; pass overwrite=True to replace it. "
            f"Received: name={target.name!r}"
        )
    _REGISTRY[key] = target
    return target


def unregister(name):
    """Remove a target from the registry (until the next Python session for built-ins).

    Example:

    >>> from keras_dnas import targets
    >>> _ = targets.register(targets.get("gap8").replace(name="tmp_gap8"), overwrite=True)
    >>> targets.unregister("tmp_gap8")
    >>> "tmp_gap8" in targets.names()
    False
    """
    _load_builtins()
    key = _normalise(name)
    if key not in _REGISTRY:
        raise ValueError(f"No registered target to remove. Known targets: {sorted(_REGISTRY)}. "
                         f"Received: name={name!r}")
    del _REGISTRY[key]
