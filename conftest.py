"""Doctests of the package run with the test suite (``testpaths`` in setup.cfg).

Docstring examples get the same fixed seed as the tests, so their random data is the same
whatever ran before.
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_doctest(request):
    if type(request.node).__name__ == "DoctestItem":
        keras.utils.set_random_seed(1234)
    yield


def pytest_collection_finish(session):
    # TensorFlow's SavedModel converter runs a full gc.collect() per conversion, and a full
    # collection scans every tracked object: after collection ~0.5 M of them (TensorFlow, Keras,
    # the test modules), long-lived. Frozen, they are left out of every later collection, which
    # then scans only what the tests create.
    gc.collect()
    gc.freeze()
