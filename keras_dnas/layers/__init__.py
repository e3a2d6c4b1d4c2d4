"""Masked drop-in replacements for Keras layers (see :mod:`keras_dnas.layers.masked`)."""

from keras_dnas.layers.choice import Choice, is_choice
from keras_dnas.layers.masked import (
    MaskedBatchNormalization,
    MaskedConv1D,
    MaskedConv1DTranspose,
    MaskedConv2D,
    MaskedConv2DTranspose,
    MaskedDense,
    MaskedDepthwiseConv1D,
    MaskedDepthwiseConv2D,
    MaskedLayerNormalization,
    MaskedSeparableConv1D,
    MaskedSeparableConv2D,
    is_masked,
    plain_class,
)

__all__ = [
    "Choice",
    "is_choice",
    "MaskedBatchNormalization",
    "MaskedConv1D",
    "MaskedConv1DTranspose",
    "MaskedConv2D",
    "MaskedConv2DTranspose",
    "MaskedDense",
    "MaskedDepthwiseConv1D",
    "MaskedDepthwiseConv2D",
    "MaskedLayerNormalization",
    "MaskedSeparableConv1D",
    "MaskedSeparableConv2D",
    "is_masked",
    "plain_class",
]
