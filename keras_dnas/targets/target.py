"""The :class:`HardwareTarget` dataclass: one microcontroller + inference stack.

A target is plain, immutable data: memory sizes, clock, the latency model that
turns layer geometry into cycles and that model's coefficients, energy per
cycle, and for every number where it comes from (``sources``). Built-in
targets are JSON files in ``keras_dnas/targets/data``; users register their own
or derive one from measurements with :func:`keras_dnas.targets.calibrate`.
"""

import dataclasses
import json
import math
import numbers
import types

#: Per-op cycle coefficients of the ``"cmsis_nn"`` latency model (keys of
#: ``HardwareTarget.cycles``) and their units.
COEFFICIENTS = {
    "conv": "cycles per MAC of a standard (im2col) convolution",
    "conv1x1": "cycles per MAC of a 1x1 convolution",
    "depthwise": "cycles per MAC of a depthwise convolution",
    "dense": "cycles per MAC of a fully connected layer",
    "im2col": "cycles per copied kernel element (taps x Cin) per output pixel, standard conv only",
    "requant": "cycles per output element of conv/depthwise/dense (int32 -> int8 requantisation)",
    "add": "cycles per output element of an element-wise Add/Subtract/Multiply/...",
    "pool": "cycles per input element of a (global) pooling layer",
    "overhead": "cycles per kernel invocation (not multiplied by the scale)",
}

#: Names of the latency models a target may name (implemented in
#: :mod:`keras_dnas.costs.latency`).
LATENCY_MODELS = ("cmsis_nn", "gap8_paper")

# the arena's persistent tail is modelled (costs/arena.py) for 32- and 64-bit pointers only
_POINTER_BYTES = (4, 8)


def _field_names():
    return [f.name for f in dataclasses.fields(HardwareTarget)]


def _source_keys():
    return set(_field_names()) | {f"cycles.{k}" for k in COEFFICIENTS}


def _finite_number(value, field, minimum=None, strict=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars too
        raise ValueError(
            f"HardwareTarget field '{field}' must be a number. Received: {field}={value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"HardwareTarget field '{field}' must be finite. Received: {field}={value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(
            f"HardwareTarget field '{field}' must be {bound}. Received: {field}={value!r}"
        )
    return float(value)


def _positive_int(value, field):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"HardwareTarget field '{field}' must be a positive integer. Received: {field}={value!r}"
        )
    return int(value)  # a numpy integer would not serialise to JSON


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardwareTarget:
    """A microcontroller and inference stack, as plain immutable data.

    Latency of one layer under the ``"cmsis_nn"`` model (see
    :mod:`keras_dnas.costs.latency`)::

        cycles = scale * (cycles[op] * MACeff + cycles["im2col"] * im2col elements
                          + cycles["requant"] * outputs + ...)
                 + flash_read_cycles * weight bytes + cycles["overhead"]

    where ``MACeff`` counts the inner dimension in ``channel_multiple`` steps
    with leftovers costing ``scalar_penalty`` times more. The
    ``"gap8_paper"`` model is paper B's closed-form GAP8 formula times
    ``scale`` (its per-op coefficients are unused).

    Attributes:
        name: registry key (lower case, e.g. ``"stm32h743"``).
        description: one line for humans.
        core: CPU core, e.g. ``"Cortex-M7"``.
        clock_mhz: core clock in MHz (cycles / clock = latency).
        flash_bytes: flash available for the model (weights, flatbuffer).
        ram_bytes: largest contiguous SRAM block usable for the tensor arena.
        pointer_bytes: size of a pointer (4 on 32-bit Cortex-M / RISC-V MCUs).
        channel_multiple: SIMD width of the kernels in channels (4 for CMSIS-NN
            int8 on Cortex-M4/M7/M33).
        latency_model: one of :data:`LATENCY_MODELS`.
        cycles: per-op cycle coefficients, keys :data:`COEFFICIENTS`.
        scale: ``s``, the per-(board, stack) factor on the relative per-op
            costs, fitted from whole-model latencies.
        flash_read_cycles: ``k_w``, extra cycles per weight byte streamed from
            flash (not scaled).
        energy_nj_per_cycle: ``e_cyc``; energy = cycles x e_cyc.
        scalar_penalty: cost of a leftover (non-SIMD) element relative to a
            SIMD one.
        sources: field name (or ``"cycles.<key>"``) -> where the value comes
            from: a published figure with its source, or ``"estimated ..."``.

    Raises:
        ValueError: naming the field, when a value is missing or invalid.

    Example:

    >>> from keras_dnas.targets import HardwareTarget
    >>> t = HardwareTarget(name="my_m4", clock_mhz=80, flash_bytes=512 * 1024,
    ...                    ram_bytes=128 * 1024, energy_nj_per_cycle=0.3)
    >>> t.cycles["conv"], t.scale
    (1.5, 2.0)
    >>> HardwareTarget.from_dict(t.to_dict()) == t
    True
    >>> HardwareTarget(name="bad", clock_mhz=0, flash_bytes=1, ram_bytes=1)
    Traceback (most recent call last):
    ...
    ValueError: HardwareTarget field 'clock_mhz' must be > 0. Received: clock_mhz=0
    """

    name: str
    description: str = ""
    core: str = ""
    clock_mhz: float
    flash_bytes: int
    ram_bytes: int
    pointer_bytes: int = 4
    channel_multiple: int = 4
    latency_model: str = "cmsis_nn"
    cycles: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_CYCLES))
    scale: float = 2.0
    flash_read_cycles: float = 0.5
    energy_nj_per_cycle: float = 0.0
    scalar_penalty: float = 2.25
    sources: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(
                f"HardwareTarget field 'name' must be a non-empty string. Received: name={self.name!r}"
            )
        for field in ("description", "core"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(
                    f"HardwareTarget field '{field}' must be a string. "
                    f"Received: {field}={getattr(self, field)!r}"
                )
        set_ = object.__setattr__
        set_(self, "clock_mhz", _finite_number(self.clock_mhz, "clock_mhz", 0, strict=True))
        set_(self, "flash_bytes", _positive_int(self.flash_bytes, "flash_bytes"))
        set_(self, "ram_bytes", _positive_int(self.ram_bytes, "ram_bytes"))
        if self.pointer_bytes not in _POINTER_BYTES or isinstance(self.pointer_bytes, bool):
            raise ValueError(
                f"HardwareTarget field 'pointer_bytes' must be one of {list(_POINTER_BYTES)} "
                "(TFLite Micro's persistent arena structs are modelled for 32- and 64-bit "
                f"pointers). Received: pointer_bytes={self.pointer_bytes!r}"
            )
        set_(self, "channel_multiple", _positive_int(self.channel_multiple, "channel_multiple"))
        if self.latency_model not in LATENCY_MODELS:
            raise ValueError(
                f"HardwareTarget field 'latency_model' must be one of {list(LATENCY_MODELS)}. "
                f"Received: latency_model={self.latency_model!r}"
            )
        if not isinstance(self.cycles, (dict, types.MappingProxyType)):
            raise ValueError(
                "HardwareTarget field 'cycles' must be a dict of per-op coefficients "
                f"{sorted(COEFFICIENTS)}. Received: cycles={self.cycles!r}"
            )
        unknown = sorted(set(self.cycles) - set(COEFFICIENTS))
        missing = sorted(set(COEFFICIENTS) - set(self.cycles))
        if unknown or missing:
            raise ValueError(
                f"HardwareTarget field 'cycles' must have exactly the keys {sorted(COEFFICIENTS)}; "
                f"unknown: {unknown}, missing: {missing}. Received: cycles={dict(self.cycles)!r}"
            )
        cycles = {
            k: _finite_number(self.cycles[k], f"cycles.{k}", 0) for k in COEFFICIENTS
        }
        set_(self, "cycles", types.MappingProxyType(cycles))
        set_(self, "scale", _finite_number(self.scale, "scale", 0, strict=True))
        set_(self, "flash_read_cycles", _finite_number(self.flash_read_cycles, "flash_read_cycles", 0))
        set_(self, "energy_nj_per_cycle",
             _finite_number(self.energy_nj_per_cycle, "energy_nj_per_cycle", 0))
        set_(self, "scalar_penalty", _finite_number(self.scalar_penalty, "scalar_penalty", 1))
        if not isinstance(self.sources, (dict, types.MappingProxyType)):
            raise ValueError(
                f"HardwareTarget field 'sources' must be a dict. Received: sources={self.sources!r}"
            )
        known = _source_keys()
        for key, text in self.sources.items():
            if key not in known:
                raise ValueError(
                    f"HardwareTarget field 'sources' has an unknown key {key!r}; keys are field names "
                    f"or 'cycles.<coefficient>': {sorted(known)}. Received: sources key {key!r}"
                )
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"HardwareTarget field 'sources' must map to non-empty strings. "
                    f"Received: sources[{key!r}]={text!r}"
                )
        set_(self, "sources", types.MappingProxyType(dict(self.sources)))

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def replace(self, **changes):
        """A copy with some fields changed (validated again).

        Example:

        >>> from keras_dnas import targets
        >>> fast = targets.get("stm32l4r5").replace(name="l4r5_80mhz", clock_mhz=80)
        >>> fast.clock_mhz
        80.0
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """Plain JSON-compatible dict (inverse of :meth:`from_dict`).

        Example:

        >>> from keras_dnas import targets
        >>> targets.get("nrf52840").to_dict()["clock_mhz"]
        64.0
        """
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, types.MappingProxyType) else value
        return out

    @classmethod
    def from_dict(cls, config):
        """Build a target from :meth:`to_dict` output (or a JSON file's content).

        Raises:
            ValueError: for unknown keys (listing the valid ones) or invalid values.

        Example:

        >>> from keras_dnas.targets import HardwareTarget
        >>> HardwareTarget.from_dict({"name": "m4", "clock_mhz": 100,
        ...                           "flash_bytes": 1 << 20, "ram_bytes": 1 << 17}).name
        'm4'
        """
        if not isinstance(config, dict):
            raise ValueError(f"HardwareTarget.from_dict() expects a dict. Received: config={config!r}")
        names = _field_names()
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown HardwareTarget field(s) {unknown}. Valid fields: {names}. "
                f"Received: keys={sorted(config)}"
            )
        missing = [n for n in ("name", "clock_mhz", "flash_bytes", "ram_bytes") if n not in config]
        if missing:
            raise ValueError(
                f"HardwareTarget field(s) {missing} are required. Received: keys={sorted(config)}"
            )
        return cls(**config)

    def to_json(self, **kwargs):
        """JSON text of :meth:`to_dict` (the format of the built-in data files).

        Example:

        >>> from keras_dnas import targets
        >>> '"latency_model": "gap8_paper"' in targets.get("gap8").to_json()
        True
        """
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text):
        """Inverse of :meth:`to_json`.

        Example:

        >>> from keras_dnas import targets
        >>> t = targets.get("stm32f746")
        >>> targets.HardwareTarget.from_json(t.to_json()) == t
        True
        """
        return cls.from_dict(json.loads(text))

    def summary(self):
        """Multi-line description with the source of every number.

        Example:

        >>> from keras_dnas import targets
        >>> print(targets.get("gap8").summary().splitlines()[0])
        gap8: GreenWaves GAP8 (8-core RISC-V cluster), paper B latency model
        """
        lines = [f"{self.name}: {self.description}".rstrip(": ")]
        for f in dataclasses.fields(self):
            if f.name in ("name", "description", "sources"):
                continue
            value = getattr(self, f.name)
            if f.name == "cycles":
                for k, v in value.items():
                    src = self.sources.get(f"cycles.{k}", self.sources.get("cycles", ""))
                    lines.append(f"  cycles.{k} = {v:g}" + (f"  [{src}]" if src else ""))
                continue
            src = self.sources.get(f.name, "")
            lines.append(f"  {f.name} = {value}" + (f"  [{src}]" if src else ""))
        return "\n".join(lines)


#: Relative per-op CMSIS-NN costs read from the int8 inner loops on a
#: Cortex-M4 with DSP (shared/data/README.md); ``overhead`` is unknown.
DEFAULT_CYCLES = types.MappingProxyType({
    "conv": 1.5,
    "conv1x1": 1.4,
    "depthwise": 2.75,
    "dense": 1.75,
    "im2col": 1.75,
    "requant": 15.0,
    "add": 10.0,
    "pool": 2.0,
    "overhead": 0.0,
})
