"""sparserl.preemption: the first SIGTERM/SIGINT asks for a clean stop, a second exits at once."""

import os
import signal
import subprocess
import sys

import pytest

from sparserl.preemption import StopRequests


@pytest.fixture
def restore_handlers():
    saved = {signal_number: signal.getsignal(signal_number) for signal_number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signal_number, handler in saved.items():
        signal.signal(signal_number, handler)


@pytest.mark.parametrize("signal_number, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_first_signal_is_recorded_for_the_loop(restore_handlers, signal_number, status):
    requests = StopRequests()
    requests.install()
    assert not requests.requested
    os.kill(os.getpid(), signal_number)
    assert requests.requested
    stopped = requests.stopped(1234)
    assert (stopped.step, stopped.exit_status, str(stopped)) == (1234, status, "stopped at step 1,234")


def test_a_second_signal_exits_at_once():
    script = ("import os, signal, time; from sparserl.preemption import StopRequests; r = StopRequests(); r.install(); "
              "os.kill(os.getpid(), signal.SIGTERM); assert r.requested; os.kill(os.getpid(), signal.SIGINT); "
              "time.sleep(30); print('not reached')")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 130
    assert "not reached" not in completed.stdout
