"""LFW face / non-face crops from scikit-image (200 images, 25x25x1), for experiments.

Moved out of `keras_dnas.datasets`: no example, benchmark or README section uses it. Same
contract as the package's loaders: ``((x_train, y_train), (x_test, y_test))``, float32 images
in ``[0, 1]``, int32 labels, a stratified split that depends only on ``seed``, and nothing is
ever downloaded.
"""

import functools
import os

import numpy as np

from keras_dnas.datasets import DatasetInfo
from keras_dnas.datasets._common import check_fraction, check_seed, stratified_split


@functools.lru_cache(maxsize=1)
def _lfw_raw():
    try:
        import skimage  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "`lfw_faces()` reads data shipped in the PyPI package `scikit-image`, which is not "
            f"installed ({e}). Install it with `pip install scikit-image`."
        ) from e
    # Read the array the wheel ships rather than calling skimage.data.lfw_subset(),
    # whose fetcher may fall back to a download when a file is missing.
    path = os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy")
    if not os.path.isfile(path):
        raise ImportError(
            "`lfw_faces()` needs `skimage/data/lfw_subset.npy`, which this "
            f"scikit-image installation ({getattr(skimage, '__version__', '?')}) does not ship "
            f"(looked for {path}). Reinstall it with `pip install scikit-image`."
        )
    x = np.load(path, allow_pickle=False)  # (200, 25, 25) float64 in [0, 1]
    if x.shape != (200, 25, 25):
        raise ValueError(f"Unexpected lfw_subset.npy shape. Received: shape={x.shape}")
    x = np.asarray(x, dtype=np.float32).reshape(200, 25, 25, 1)
    y = np.repeat(np.array([1, 0], dtype=np.int32), 100)  # first 100 are faces
    for a in (x, y):
        a.setflags(write=False)
    return x, y


def lfw_faces(test_fraction=0.2, seed=0):
    """Face / non-face 25x25 grey crops from scikit-image's ``lfw_subset()``.

    200 images: 100 faces picked at random from Labeled Faces in the Wild
    (Huang et al.) and 100 background crops of the same photos, resized to
    25x25. Label 1 is "face", 0 is "not a face". With the defaults the
    stratified split is 160 train / 40 test images (80 / 20 per class).

    Args:
        test_fraction: share of each class put in the test split, in (0, 1).
        seed: seed of the split and of the (shuffled) order of both splits.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 images of shape
        ``(N, 25, 25, 1)`` in ``[0, 1]`` and int32 labels in ``{0, 1}``.

    Raises:
        ImportError: scikit-image is not installed (``pip install scikit-image``).
        ValueError: ``test_fraction`` or ``seed`` is out of range.

    Example:

    >>> from benchmarks._bench.lfw import lfw_faces
    >>> (x, y), (xt, yt) = lfw_faces()
    >>> x.shape, xt.shape, int(y.sum()), int(yt.sum())
    ((160, 25, 25, 1), (40, 25, 25, 1), 80, 20)
    """
    test_fraction = check_fraction(test_fraction)
    seed = check_seed(seed)
    x, y = _lfw_raw()
    return stratified_split(x, y, test_fraction, seed)  # indexing copies: writable arrays


#: Source, size, split, licence and citation (the row `keras_dnas.datasets.DATASETS` had).
INFO = DatasetInfo(
    loader="lfw_faces",
    package="scikit-image",
    source="skimage/data/lfw_subset.npy (skimage.data.lfw_subset()): 100 LFW faces + "
    "100 background crops, resized to 25x25",
    size="200 x (25, 25, 1) float32 in [0, 1]; 2 classes x 100 (1 = face)",
    split="stratified per class, test_fraction=0.2: 160 train / 40 test",
    licence="LFW: no licence stated (news photographs, for research); scikit-image is "
    "BSD-3-Clause",
    citation="G. B. Huang, M. Ramesh, T. Berg, E. Learned-Miller. Labeled Faces in the "
    "Wild. UMass Amherst TR 07-49, 2007; subset: G. B. Huang, M. Mattar, H. Lee, "
    "E. Learned-Miller. Learning to align from scratch. NIPS 2012.",
)
