"""Hardware targets: the microcontrollers (and inference stacks) a search fits.

A :class:`HardwareTarget` is frozen data: flash, the largest contiguous SRAM
block for the tensor arena, clock, the latency model and its per-op cycle
coefficients, energy per cycle, and the source of every number. Built-ins
live as JSON files in ``keras_dnas/targets/data``:

| name | core | clock | arena RAM | flash | latency model |
|---|---|---|---|---|---|
| ``stm32h743`` | Cortex-M7 | 480 MHz | 512 KiB | 2 MiB | cmsis_nn (estimated) |
| ``stm32f746`` | Cortex-M7 | 216 MHz | 320 KiB | 1 MiB | cmsis_nn (estimated) |
| ``stm32l4r5`` | Cortex-M4F | 120 MHz | 640 KiB | 2 MiB | cmsis_nn (fitted to MLPerf Tiny) |
| ``nrf52840`` | Cortex-M4F | 64 MHz | 256 KiB | 1 MiB | cmsis_nn (generic M4 defaults) |
| ``gap8`` | 8-core RISC-V | 100 MHz | 512 KiB | 8 MiB | gap8_paper (paper B) |

Use :func:`calibrate` / :func:`calibrate_from_csv` to fit a target to your own
measurements (they live in :mod:`keras_dnas.calibration`, above the cost
functions they sum, and load on first use: the target data here stay below
``costs``).

Example:

>>> from keras_dnas import targets
>>> t = targets.get("stm32h743")
>>> t.core, t.clock_mhz, t.ram_bytes // 1024
('Cortex-M7', 480.0, 512)
"""

from keras_dnas.targets.registry import (
    builtin_names,
    get,
    list_targets,
    names,
    register,
    unregister,
)
from keras_dnas.targets.target import COEFFICIENTS, DEFAULT_CYCLES, LATENCY_MODELS, HardwareTarget

__all__ = [
    "COEFFICIENTS",
    "DEFAULT_CYCLES",
    "LATENCY_MODELS",
    "HardwareTarget",
    "builtin_names",
    "calibrate",
    "calibrate_from_csv",
    "get",
    "list_targets",
    "names",
    "read_layer_csv",
    "register",
    "unregister",
]

# Calibration sums the latency model's features (keras_dnas.costs), which read the target
# data of this package: imported on first use, so loading a target never imports the costs.
_CALIBRATION = ("calibrate", "calibrate_from_csv", "read_layer_csv")


def __getattr__(name):
    if name in _CALIBRATION:
        from keras_dnas import calibration  # noqa: PLC0415

        return getattr(calibration, name)
    raise AttributeError(f"module 'keras_dnas.targets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CALIBRATION))
