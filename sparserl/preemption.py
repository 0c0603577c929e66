"""Pre-emption: SIGTERM (what clusters send) and Ctrl-C stop a run cleanly at the next step boundary.

The first signal asks the training loop to finish its current step, write a
checkpoint at that step and stop; `train` then prints `stopped at step N;
rerun the same command to resume` and exits with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT). A second signal exits at once: checkpoints
and CSV rows are written atomically (docs/design.md contract 7), so even then the run
resumes from its last complete checkpoint.
"""

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Raised by a training loop once it has checkpointed the step at which a stop was asked for."""

    def __init__(self, step: int, signal_number: int):
        super().__init__(f"stopped at step {step:,}")
        self.step = step
        self.signal_number = signal_number

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number


class StopRequests:
    """Records the first SIGTERM/SIGINT; the loop polls `requested` once per step (no work inside the handler)."""

    def __init__(self):
        self.signal_number: int | None = None

    def install(self) -> None:
        for signal_number in STOP_SIGNALS:
            signal.signal(signal_number, self._handle)

    def _handle(self, signal_number: int, frame) -> None:
        del frame
        if self.signal_number is not None:
            os._exit(128 + signal_number)
        self.signal_number = signal_number
        print(f"\n{signal.Signals(signal_number).name}: stopping after this step with a checkpoint "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def stopped(self, step: int) -> Stopped:
        return Stopped(step, self.signal_number)
