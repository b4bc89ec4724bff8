"""Stopping training cleanly: Ctrl-C and SIGTERM become a flag checked after each
step, so the step in flight finishes and the checkpoint is consistent."""

from __future__ import annotations

import signal


class Abort(BaseException):
    """A second SIGINT or SIGTERM: stop at once, without writing a checkpoint (it could
    land anywhere, even inside a step or between an epoch's bookkeeping and its count,
    and a checkpoint of that state would resume onto another trajectory)."""


class NonFinite(Exception):
    """Too many non-finite steps in a row, first reached at (epoch, step), 1-based."""

    def __init__(self, epoch, step):
        super().__init__(epoch, step)
        self.epoch, self.step = epoch, step


class InterruptFlag:
    """Turns the first SIGINT or SIGTERM into a flag checked after each step.  In one
    process a second signal stops at once (:class:`Abort`), keeping the last checkpoint
    as it is.  Under torchrun (``patient``) the launcher passes the terminal's Ctrl-C on
    to the ranks again, so repeats are ignored: the ranks stop together at the next
    agreed step, and the launcher's SIGKILL after its grace period stays the hard stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, patient=False):
        self.flag = False
        self.patient = patient
        self._old = {}

    def _handler(self, signum, frame):
        if self.flag and not self.patient:
            raise Abort
        self.flag = True

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False
