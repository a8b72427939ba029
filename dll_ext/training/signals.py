"""SIGINT (Ctrl-C) and SIGTERM (Slurm, torchrun, kill) stop training cleanly: the current step
finishes, a checkpoint is saved, and the process exits with 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM), as a shell reports a process the signal ended. A second signal takes
its usual immediate effect; the atomic checkpoint write leaves the previous checkpoint intact."""
import signal
import threading
from contextlib import contextmanager
from typing import Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    return 128 + signum


class StopSignals:
    """While entered, remembers the first stop signal instead of dying of it. `stop_after_steps`
    makes step N behave as if SIGINT had arrived during it (how the tests interrupt a run at an
    exact point)."""

    def __init__(self, stop_after_steps: Optional[int] = None):
        self.stop_after_steps = stop_after_steps
        self.received = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        # Handlers can only be installed from the main thread; elsewhere signals keep their effect.
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int) -> int:
        """The signal to stop for after `step` steps, or 0 to go on."""
        if self.received:
            return self.received
        if self.stop_after_steps is not None and step >= self.stop_after_steps:
            return int(signal.SIGINT)
        return 0


@contextmanager
def signals_held():
    """Hold SIGINT/SIGTERM back (they stay pending) in this block: around the fork of DataLoader
    workers, which inherit the mask, set the signals to be ignored and only then unblock them
    (init_worker), so a signal sent to the whole process group is never fatal to a worker
    that has just been started. This process receives it at the end of the block."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def init_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGINT/SIGTERM, which a terminal or Slurm sends to the
    whole process group, to the main process; it finishes its step, saves a checkpoint and shuts
    the workers down itself (a worker killed by the signal would make it fail instead). The
    loader itself seeds each worker's torch, NumPy and Python generators from its generator."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held back by signals_held
