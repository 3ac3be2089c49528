"""Background threads that are owned: named, stoppable, joined, and never silent.

A :class:`Worker` runs one function in a daemon thread named
``pipebit-<pipe>-<role>``.  If the function raises, the exception is kept and
re-raised to the owner (wrapped in :class:`WorkerError`) at its next call,
instead of being printed by the threading machinery and forgotten.
"""

from __future__ import annotations

import threading
from typing import Callable

from .errors import PipeBitError, WorkerError


class Worker:
    """One owned background thread running ``body(stop_event)``."""

    def __init__(self, name: str, body: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._body = body
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._body(self.stopping)
        except BaseException as exc:  # kept for the owner; nothing here may escape silently
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the body to return and wait up to ``timeout``; ``True`` if the thread ended."""
        self.stopping.set()
        if self._thread.ident is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        """Re-raise the body's failure in the caller's thread, if it failed.

        PipeBit's own errors (the pipe was removed, its contents are corrupt) are
        raised as they are; anything else is wrapped in :class:`WorkerError`.
        """
        error = self.error
        if error is None:
            return
        if isinstance(error, PipeBitError):
            raise error
        raise WorkerError(f"background thread {self.name} failed: {error!r}") from error
