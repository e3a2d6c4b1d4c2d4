"""keras_dnas: differentiable channel search for Keras 3 models that must fit a microcontroller.

Example:

>>> import keras_dnas as kd
>>> search = kd.prepare(kd.zoo.resnet8())      # masked clone, tied channel masks
>>> slim = kd.freeze(search)                   # plain Keras model, kept channels only
"""

from keras_dnas import _light

if not _light.runs_without_keras():
    from keras_dnas import _keras  # noqa: F401  (checks the Keras version before anything else)
    from keras_dnas import (choices, costs, datasets, export, graph, layers, masks, qat, report,
                            search, targets, zoo)
    from keras_dnas import freeze as freeze_lib
    from keras_dnas.prepare import SearchableModel, prepare
    from keras_dnas.freeze import freeze, recalibrate_batchnorm
    from keras_dnas.report import summary
    from keras_dnas.search import Budget, DNASCallback, Minimize
else:
    def __getattr__(name):
        """A `keras-dnas targets` process imported the package without Keras: the modules that
        command reads load alone, anything else loads the package whole (once)."""
        import importlib
        import sys

        if name.startswith("__") or _light.keras_was_needed():  # (then Python's import does it)
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if name in _light.MODULES:
            return importlib.import_module(f"{__name__}.{name}")
        _light.keras_needed()
        importlib.reload(sys.modules[__name__])
        return getattr(sys.modules[__name__], name)

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "DNASCallback",
    "Minimize",
    "SearchableModel",
    "choices",
    "costs",
    "datasets",
    "export",
    "freeze",
    "freeze_lib",
    "graph",
    "layers",
    "masks",
    "prepare",
    "qat",
    "recalibrate_batchnorm",
    "report",
    "search",
    "summary",
    "targets",
    "zoo",
]
