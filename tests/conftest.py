import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

# scripts the tests run in child processes (another Keras backend, several devices): not
# test modules, and importing them would run them (setup.cfg collects doctests of every module)
collect_ignore = ["backend_flow.py", "distributed_flow.py"]


@pytest.fixture(autouse=True)
def _fixed_seed():
    keras.utils.set_random_seed(1234)
    yield
