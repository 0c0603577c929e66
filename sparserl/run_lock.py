"""One process per run directory: a lock file `{run_dir}/lock` holding the owner's pid and host.

The lock is an advisory `flock` on that file, which the operating system
releases when its process dies, however it dies. The pid and host written
into the file only name the holder in messages. A second process on a locked
run is refused; a lock file left by a dead process is taken over with a note.
"""

import fcntl
import os
import socket


class RunLocked(Exception):
    """Another live process trains in this run directory."""


class RunLock:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "lock")
        self._file = None

    def acquire(self) -> str | None:
        """Takes the lock; returns a note when a lock left by a dead process was taken over, else None.

        Raises RunLocked (writing nothing) when a live process holds it.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        lock_file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "an unknown process"
            lock_file.close()
            raise RunLocked(f"{os.path.dirname(self.path)} is in use by {holder}") from None
        lock_file.seek(0)
        previous = lock_file.read().strip()
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        lock_file.flush()
        self._file = lock_file
        return f"took over the lock left by {previous}, which is no longer running" if previous else None

    def release(self) -> None:
        if self._file is not None:
            os.remove(self.path)
            self._file.close()
            self._file = None
