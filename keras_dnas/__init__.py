"""keras_dnas: differentiable channel search for Keras 3 models that must fit a microcontroller.

Example:

>>> import keras_dnas as kd
>>> search = kd.prepare(kd.zoo.resnet8())      # masked clone, tied channel masks
>>> slim = kd.freeze(search)                   # plain Keras model, kept channels only
"""

from keras_dnas import _keras  # noqa: F401  (checks the Keras version before anything else)
from keras_dnas import choices, costs, datasets, export, graph, layers, masks, qat, report, search, targets, zoo
from keras_dnas import freeze as freeze_lib
from keras_dnas.prepare import SearchableModel, prepare
from keras_dnas.freeze import freeze, recalibrate_batchnorm
from keras_dnas.report import summary
from keras_dnas.search import Budget, DNASCallback, Minimize

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
