"""sparserl.run_lock: one process per run directory; a dead holder's lock is taken over with a note."""

import os
import subprocess
import sys

import pytest

from sparserl.run_lock import RunLock, RunLocked


def test_a_second_lock_on_a_held_run_is_refused_and_writes_nothing(tmp_path):
    first = RunLock(str(tmp_path / "run"))
    assert first.acquire() is None
    content = (tmp_path / "run" / "lock").read_text()
    assert content == f"pid {os.getpid()} on host {os.uname().nodename}\n"
    with pytest.raises(RunLocked, match=f"is in use by pid {os.getpid()} on host"):
        RunLock(str(tmp_path / "run")).acquire()
    assert (tmp_path / "run" / "lock").read_text() == content
    first.release()
    assert not (tmp_path / "run" / "lock").exists()
    second = RunLock(str(tmp_path / "run"))
    assert second.acquire() is None
    second.release()


def test_the_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    script = f"from sparserl.run_lock import RunLock; RunLock({str(tmp_path / 'run')!r}).acquire(); import os; os._exit(9)"
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9  # died holding the lock, file left behind
    holder = (tmp_path / "run" / "lock").read_text().strip()
    assert holder.startswith("pid ")
    lock = RunLock(str(tmp_path / "run"))
    assert lock.acquire() == f"took over the lock left by {holder}, which is no longer running"
    lock.release()
