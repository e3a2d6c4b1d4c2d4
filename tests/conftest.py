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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "background(key): the test waits for child processes that tests/background.py "
        "started when collection ended (the test runs last)")


def pytest_collection_modifyitems(session, config, items):
    # tests that wait for background children run last: the children had the whole run to finish
    waiting = [item for item in items if item.get_closest_marker("background")]
    if waiting:
        items[:] = [item for item in items if item not in waiting] + waiting


def pytest_collection_finish(session):
    from tests import background

    keys = []
    for item in session.items:
        marker = item.get_closest_marker("background")
        if marker and marker.args[0] not in keys:
            keys.append(marker.args[0])
    background.start(keys)


def pytest_sessionfinish(session):
    from tests import background

    background.stop()
