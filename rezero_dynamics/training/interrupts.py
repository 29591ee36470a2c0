"""Deferral of SIGINT and SIGTERM to the end of a training step.

A signal that arrives mid-step would leave the model, optimiser and schedule at
different steps, so a checkpoint taken then could not resume exactly. Inside
``DeferredSignals`` the first SIGINT or SIGTERM is only noted. The training loop calls
``stop_if_requested`` at the end of every step, which saves the finished step and then
delivers the signal to the handler installed before: Python's KeyboardInterrupt for
SIGINT, the command line's exception for SIGTERM. A second signal is delivered at once,
for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """Context manager that holds back SIGINT and SIGTERM until ``stop_if_requested``.

    Signal handlers can only be set from the main thread. In another thread, or with
    ``enabled=False``, nothing is deferred, and neither is a signal whose previous
    handler ignores it.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "DeferredSignals":
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        for number in SIGNALS:
            previous = signal.getsignal(number)
            if previous in (signal.SIG_IGN, None):
                continue
            self._previous[number] = previous
            signal.signal(number, self._note)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        pending = self.received if exc_type is None else None
        self._restore()
        if pending is not None:  # arrived after the last step: the run finished, then it stops
            self._deliver(pending)

    def _note(self, number: int, frame: object) -> None:
        if self.received is not None:
            self._deliver(number)  # a second signal: stop now
        self.received = number

    def _restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    def _deliver(self, number: int) -> None:
        self.received = None
        self._restore()
        signal.raise_signal(number)  # runs the previous handler, which raises or ends the process

    def stop_if_requested(self, before_stopping: Callable[[], None]) -> None:
        """Call ``before_stopping`` and deliver the held-back signal, if one arrived."""
        if self.received is None:
            return
        before_stopping()
        self._deliver(self.received)
