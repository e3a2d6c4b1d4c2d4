"""Child processes of a few slow tests, started when collection ends and run beside the others.

The benchmark smoke run and the data-parallel runs are child processes their tests only wait for.
pytest runs one test at a time in one process, which keeps about one of two cores busy; started
in the background when collection ends (one job at a time, in collection order), these children
use the other core while the in-process tests run, and the tests that wait for them run last
(tests/conftest.py). Each job is a function without arguments; the test gets what it returns (or
the exception it raised) from `result(key)` and checks it exactly as it would have checked the
children it started itself.

A test marked `@pytest.mark.background(key)` declares that it waits for job `key`; a test
module registers its jobs with `register(key, function)` when it is imported.
"""

import concurrent.futures

JOBS = {}  # key -> function, registered by test modules at import
_futures = {}
_pool = []


def register(key, function):
    JOBS[key] = function
    return key


def start(keys):
    """Queue the jobs `keys` (those not queued yet), one running at a time."""
    if not _pool:
        _pool.append(concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tests-background"))
    for key in keys:
        if key not in _futures and key in JOBS:  # not registered: the test skips
            _futures[key] = _pool[0].submit(JOBS[key])


def result(key):
    """What job `key` returned; waits for it (starts it first if nothing started it)."""
    start([key])
    return _futures[key].result()


def stop():
    """Drop the jobs not started yet (the session ends: a test failed with -x, or a selection)."""
    if _pool:
        _pool[0].shutdown(wait=False, cancel_futures=True)
