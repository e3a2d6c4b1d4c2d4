"""Graph analysis: channel groups (union-find over tensors) and mask binding.

The only package that reads Keras graph internals.
"""

from keras_dnas.graph.analyze import analyze, bind
from keras_dnas.graph.plan import ChannelPlan, Group, LayerInfo, View
from keras_dnas.graph.roles import ROLES

__all__ = ["ChannelPlan", "Group", "LayerInfo", "ROLES", "View", "analyze", "bind"]
