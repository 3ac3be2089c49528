"""What every sender and receiver shares, whatever its model and transport: the back-end it
holds, debug logging, the context-manager protocol, and what happens at ``fork`` and at
interpreter exit.

* ``debug`` output goes through :mod:`logging` (logger ``"pipebit"``); with
  ``debug=0`` an endpoint logs nothing at all.
* After ``fork``, the child's copies of endpoints are closed without touching
  the pipe: the parent still owns their slots and threads.  Using one raises
  :class:`PipeClosedError` saying so; the child opens its own.
* At interpreter exit, open senders are flushed and closed (so a script that
  sends and ends delivers every packet), then open receivers are closed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Any, Callable, ClassVar

from ._limits import check_debug
from ._stats import EndpointStats
from ._transport import Backend, locate
from .errors import PipeClosedError

logger = logging.getLogger("pipebit")

_open_endpoints: weakref.WeakSet[Endpoint] = weakref.WeakSet()
_registry_lock = threading.Lock()


def _enable_debug_output() -> None:
    # Respect logging the application configured; otherwise print ours to stderr.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pipebit: %(message)s"))
        logger.addHandler(handler)


class Endpoint:
    """Base of the four endpoint classes.  A subclass opens its back-end in
    ``open_connection()`` (kept in ``_backend`` while connected) and lets it go in
    ``close_connection()``."""

    _role: ClassVar[str] = "endpoint"
    _model: ClassVar[str] = "safe"

    def __init__(self, name: str, debug: Any, create: bool) -> None:
        # Where the pipe lives is settled here, once: PIPEBIT_URL changing later moves nothing.
        self._address, self._name, self._shown = locate(name)
        self._debug = check_debug(debug)
        self._create = bool(create)
        self._backend: Backend | None = None
        self._closed_reason = "it was closed with close_connection()"
        if self._debug:
            _enable_debug_output()

    @property
    def name(self) -> str:
        """The pipe's name (without the server, for a pipe on a Redis server)."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether the endpoint is currently disconnected."""
        return self._backend is None

    def _log(self, message: str) -> None:
        if self._debug:
            logger.info("%s %s: %s", self._role, self._shown, message)

    @property
    def _logger(self) -> Callable[[str], None] | None:
        """What a back-end logs through: nothing at all without ``debug``."""
        return self._log if self._debug else None

    def _require_open(self) -> Any:
        """The back-end, or :class:`PipeClosedError` saying why there is none."""
        backend = self._backend
        if backend is None:
            raise PipeClosedError(
                f"{self._role} of pipe {self._shown!r} is not connected: {self._closed_reason}; "
                "call open_connection() to reconnect"
            )
        return backend

    def _register(self) -> None:
        with _registry_lock:
            _open_endpoints.add(self)

    def _unregister(self) -> None:
        with _registry_lock:
            _open_endpoints.discard(self)

    def _closed(self) -> None:
        """The common end of close_connection(), once the back-end has let the pipe go."""
        self._unregister()
        self._closed_reason = "it was closed with close_connection()"
        self._log("disconnected")

    def open_connection(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close_connection(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _forget_after_fork(self) -> None:
        """In a forked child: drop this endpoint's copies of the parent's resources.  Subclasses
        renew their locks and queues, then call this."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.forget()

    def _counters(self) -> tuple[int, int]:  # pragma: no cover - overridden
        """(packets, pending) for :meth:`stats`."""
        raise NotImplementedError

    def stats(self) -> EndpointStats:
        """A snapshot of this endpoint and its pipe (see :class:`pipebit.EndpointStats`)."""
        backend: Backend = self._require_open()
        packets, pending = self._counters()
        return backend.stats(self._role, packets, pending)

    def _size_text(self) -> str:  # pragma: no cover - overridden
        """What ``repr()`` says of the pipe's size while connected."""
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.open_connection()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_connection()

    def __repr__(self) -> str:
        if self._backend is None:
            return f"<{type(self).__name__} {self._shown!r} closed>"
        return f"<{type(self).__name__} {self._shown!r} {self._model} {self._size_text()}>"


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent may have held it at fork time
    endpoints = list(_open_endpoints)
    _open_endpoints.clear()
    for endpoint in endpoints:
        endpoint._forget_after_fork()
        endpoint._closed_reason = (
            f"it was opened in process {os.getppid()} and this process is a fork of it; "
            "open a new endpoint in this process"
        )


def _close_all_at_exit() -> None:
    with _registry_lock:
        endpoints = list(_open_endpoints)
    # Senders first: their flush may need receivers in this process to make room.
    for endpoint in sorted(endpoints, key=lambda e: e._role != "sender"):
        try:
            endpoint.close_connection()
        except Exception as exc:  # exit must go on; say what was lost
            logger.warning("closing %r at exit failed: %s", endpoint, exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
