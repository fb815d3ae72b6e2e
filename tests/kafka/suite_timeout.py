"""A per-test time limit for ringmq's run of kafka-python's integration suite (pytest-timeout
is not in the venv): SIGALRM fails a test that runs past RINGMQ_SUITE_TEST_TIMEOUT_S seconds
(default 60), so one hung test costs a minute, not the whole stage. Loaded with
`-p suite_timeout` (tests/kafka on PYTHONPATH)."""

import os
import signal

import pytest

LIMIT_S = int(os.environ.get("RINGMQ_SUITE_TEST_TIMEOUT_S", "60"))


class TestTimedOut(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    def fire(signum, frame):
        raise TestTimedOut(f"{item.nodeid} ran past {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
