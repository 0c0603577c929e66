"""Every test fails loudly on a hang. Shared helpers live in `tests/helpers.py`."""

import faulthandler
import os
import sys

import pytest

from sparserl import compilation_cache

# A test that runs longer than this is taken for a hang: the stacks of every thread are written to stderr and the
# test session exits with status 1 (never a silent retry, never a CI run stuck until its own time limit).
TEST_TIMEOUT_SECONDS = 900


@pytest.fixture(autouse=True)
def fail_loudly_on_a_hang():
    faulthandler.dump_traceback_later(TEST_TIMEOUT_SECONDS, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session", autouse=True)
def one_compilation_cache_per_session(tmp_path_factory):
    """The CLI runs of a test session (and the runs in this process) share one persistent compilation cache, in a
    fresh directory of this session: a program that several tests compile (the same tiny run, the same seed alone
    and side by side) compiles once. Nothing outlives the session, so no test depends on an earlier session's
    cache; a cached program computes exactly what a fresh compile does. A test that needs its own cache, or none,
    sets `SPARSERL_COMPILATION_CACHE` itself."""
    previous = os.environ.get(compilation_cache.ENV_VAR)
    os.environ[compilation_cache.ENV_VAR] = str(tmp_path_factory.mktemp("compilation_cache"))
    yield
    if previous is None:
        del os.environ[compilation_cache.ENV_VAR]
    else:
        os.environ[compilation_cache.ENV_VAR] = previous
