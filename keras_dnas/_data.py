"""Input samples the user passes (calibration data): read once, one way.

Example:

>>> import numpy as np
>>> [a.shape for a in calibration_sample(np.zeros((5000, 3)), CALIBRATION_SAMPLES)]
[(2048, 3)]
"""

import numpy as np

#: Largest calibration sample kept (a few thousand samples fix BN statistics well).
CALIBRATION_SAMPLES = 2048


def calibration_sample(data, limit, seed=0):
    """Up to ``limit`` samples of ``data`` (array or list of arrays), drawn with a fixed seed.

    A random subset in random order (so any prefix of it is a random subset
    too), because training sets are often sorted by class and BN statistics
    of one class are wrong for the others. Returns a list of NumPy arrays
    (one per model input), or ``None``.

    Example:

    >>> import numpy as np
    >>> [a.shape for a in calibration_sample(np.zeros((5000, 3)), 2048)]
    [(2048, 3)]
    """
    if data is None:
        return None
    if isinstance(data, dict) or (isinstance(data, tuple) and len(data) == 2
                                  and np.ndim(data[1]) == 1):
        raise ValueError("calibration_data takes input samples only (an array, or a list of "
                         "arrays for several inputs), not (x, y) or a dict. Received: a "
                         f"{type(data).__name__}; pass x.")
    arrays = [np.asarray(a) for a in (data if isinstance(data, (list, tuple)) else [data])]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError("calibration_data needs at least one sample and the same number of "
                         f"samples in every input. Received lengths {[len(a) for a in arrays]}")
    idx = np.random.default_rng(seed).permutation(n)[:limit]
    return [a[idx] for a in arrays]
