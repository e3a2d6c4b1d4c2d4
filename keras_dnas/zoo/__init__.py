"""Reference models to search: the MLPerf Tiny networks and a small TCN.

Every builder returns a plain functional ``keras.Model`` made of standard Keras layers, channels last,
with BatchNormalization and ReLU as separate layers. Convolution and dense kernels match the published
MLPerf Tiny reference models exactly (weights and MACs):

| builder | task | kernel weights | MACs | biases after BN folding |
|---|---|---|---|---|
| ``resnet8()`` | CIFAR-10 image classification | 77,360 | 12,501,632 | 346 |
| ``ds_cnn()`` | keyword spotting | 22,016 | 2,656,768 | 588 |
| ``mobilenet_v1()`` | visual wake words | 208,112 | 7,489,664 | 2,738 |
| ``fc_autoencoder()`` | anomaly detection | 264,192 | 264,192 | 1,672 |
| ``tcn()`` | sensor time series (HAR) | 14,816 | 1,872,064 | 246 |

MACs count conv ``K * Cin * Cout * S_out``, depthwise ``K * C * S_out`` and dense ``Cin * Cout``
(``K`` kernel taps, ``S_out`` output positions); pooling, additions, normalisation and activations are
not counted.

Example:

>>> from keras_dnas import zoo
>>> model = zoo.ds_cnn()
>>> model.name
'ds_cnn'
"""

from keras_dnas.zoo.autoencoder import fc_autoencoder
from keras_dnas.zoo.dscnn import ds_cnn
from keras_dnas.zoo.mobilenet import mobilenet_v1
from keras_dnas.zoo.resnet import resnet8
from keras_dnas.zoo.temporal import tcn

__all__ = ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder", "tcn"]
