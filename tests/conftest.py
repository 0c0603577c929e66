"""Every test fails loudly on a hang. Shared helpers live in `tests/helpers.py`."""

import faulthandler
import os
import shutil
import sys
import tempfile

import pytest

from sparserl import compilation_cache
from tests.helpers import PREFETCHED_RUNS, UNOPTIMISED_CODEGEN

# A test that runs longer than this is taken for a hang: the stacks of every thread are written to stderr and the
# test session exits with status 1 (never a silent retry, never a CI run stuck until its own time limit).
TEST_TIMEOUT_SECONDS = 900


@pytest.fixture(autouse=True)
def fail_loudly_on_a_hang():
    faulthandler.dump_traceback_later(TEST_TIMEOUT_SECONDS, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


_PREVIOUS_CACHE_SETTING = os.environ.get(compilation_cache.ENV_VAR)
_PREVIOUS_XLA_FLAGS = os.environ.get("XLA_FLAGS")


def pytest_configure(config):
    """One persistent compilation cache per test session, in a fresh directory, for this process and the CLI runs
    it starts: a program that several tests compile (the same tiny run, the same seed alone and side by side, the
    same agent made again from new closures) compiles once. Enabled here, before collection, because test modules
    compute arrays at import and JAX decides on the cache at its first compile. Nothing outlives the session, so
    no test depends on an earlier session's cache; a cached program computes exactly what a fresh compile does.
    A test that needs its own cache, or none, sets `SPARSERL_COMPILATION_CACHE` for its subprocesses itself."""
    os.environ[compilation_cache.ENV_VAR] = tempfile.mkdtemp(prefix="sparserl_test_compilation_cache_")
    os.environ["XLA_FLAGS"] = f"{_PREVIOUS_XLA_FLAGS or ''} {UNOPTIMISED_CODEGEN}".strip()
    compilation_cache.enable()


def pytest_collection_finish(session):
    """The registered CLI runs of the collected tests' module fixtures start in the background (`PrefetchedRuns`)."""
    if not session.config.option.collectonly:
        PREFETCHED_RUNS.start(session.items)


def pytest_unconfigure(config):
    PREFETCHED_RUNS.stop()
    shutil.rmtree(os.environ[compilation_cache.ENV_VAR], ignore_errors=True)
    if _PREVIOUS_CACHE_SETTING is None:
        del os.environ[compilation_cache.ENV_VAR]
    else:
        os.environ[compilation_cache.ENV_VAR] = _PREVIOUS_CACHE_SETTING
    if _PREVIOUS_XLA_FLAGS is None:
        del os.environ["XLA_FLAGS"]
    else:
        os.environ["XLA_FLAGS"] = _PREVIOUS_XLA_FLAGS
