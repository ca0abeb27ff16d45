"""Preemption: SIGTERM (what a preemptible VM or a batch scheduler sends before it kills a job)
and SIGINT (Ctrl-C) during training stop the run at the end of the current step, after a
checkpoint and the metrics are written; the command exits with ``EXIT_PREEMPTED`` and the same
command resumes exactly.

With many processes the signal may reach them at different steps (or only some of them): at
every step the processes all-gather their flags, so all stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 3  # distinct from 0 (done), 1 (a bug) and 2 (a user error)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """A context that records SIGTERM/SIGINT instead of dying; a second signal interrupts at
    once (KeyboardInterrupt). ``received``: the first signal's name, or None."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def stop(self) -> bool:
        """Whether to stop after this step: a signal reached this process or, with many
        processes, any of them (the same answer everywhere)."""
        mine = self.received is not None
        if jax.process_count() == 1:
            return mine
        anyone = bool(np.any(multihost_utils.process_allgather(np.array(mine))))
        if anyone and not mine:
            self.received = "a signal to another process"
        return anyone
