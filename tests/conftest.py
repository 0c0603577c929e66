"""Every test fails loudly on a hang. Shared helpers live in `tests/helpers.py`."""

import faulthandler
import sys

import pytest

# A test that runs longer than this is taken for a hang: the stacks of every thread are written to stderr and the
# test session exits with status 1 (never a silent retry, never a CI run stuck until its own time limit).
TEST_TIMEOUT_SECONDS = 900


@pytest.fixture(autouse=True)
def fail_loudly_on_a_hang():
    faulthandler.dump_traceback_later(TEST_TIMEOUT_SECONDS, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()
