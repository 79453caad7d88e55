"""Stop signals: SIGTERM and SIGINT become a flag the training loop checks between updates.

A batch scheduler, ``torchrun`` or Ctrl-C stops a run this way: the loop checkpoints where it
stands (mid-epoch included), records ``stopped`` and the signal, and the process exits
``128 + signal``. A second signal of the same kind kills at once (the handler is removed after
the first). Under ``largebatch sweep`` (``LARGEBATCH_PARENT_PID``) the flag also rises when the
sweep that started the run is gone.

    >>> with StopFlag() as stop:
    ...     stop.poll()
    ...     stop.signum is None
    True
"""

from __future__ import annotations

import os
import signal
from typing import Any


class Stopped(Exception):
    """A stop signal arrived; the run was checkpointed where it stood."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


PARENT_PID_ENV = "LARGEBATCH_PARENT_PID"
"""Set by ``largebatch sweep`` to its pid: a child whose parent is no longer that process (the
sweep died, kill -9 included, and the child was re-parented) stops as on SIGTERM."""


class StopFlag:
    """Turns SIGTERM / SIGINT into a flag the loop checks between updates (main thread only).
    Under a sweep (``LARGEBATCH_PARENT_PID``), :meth:`poll` also raises the flag once the sweep
    is gone, so an orphaned run checkpoints and exits instead of training on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        try:
            self._parent: int | None = int(os.environ.get(PARENT_PID_ENV, ""))
        except ValueError:
            self._parent = None

    def poll(self) -> None:
        """Once per update: a stop request if the parent sweep has died (one cheap syscall)."""
        if self.signum is None and self._parent is not None and os.getppid() != self._parent:
            self.signum = signal.SIGTERM

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one kills

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
