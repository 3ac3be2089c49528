"""What every sender and receiver shares: argument checks, debug logging, the
context-manager protocol, and what happens at ``fork`` and at interpreter exit.

* ``debug`` output goes through :mod:`logging` (logger ``"pipebit"``); with
  ``debug=0`` an endpoint logs nothing at all.
* After ``fork``, the child's copies of endpoints are closed without touching
  the pipe: the parent still owns their slots and threads.  Using one raises
  :class:`PipeClosedError` saying so; the child opens its own.
* At interpreter exit, open senders are flushed and closed (so a script that
  sends and ends delivers every packet), then open receivers are closed.
* A name that selects a Redis server (see :mod:`pipebit._address`) makes
  :meth:`Endpoint.__new__` build the Redis flavour of the class called, from
  :mod:`pipebit._redis_base`: a subclass, so it *is* a ``SafeSender``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import weakref
from typing import Any, Callable, ClassVar, TypeVar

from . import _layout as L
from ._address import ENV_URL, is_url, parse
from ._pipe import Pipe, Slot, attach
from ._shm import validate_name
from ._stats import EndpointStats, endpoint_stats
from .errors import ArgumentTypeError, InvalidArgumentError, PipeClosedError

logger = logging.getLogger("pipebit")

_E = TypeVar("_E", bound="Endpoint")

_open_endpoints: weakref.WeakSet[Endpoint] = weakref.WeakSet()
_registry_lock = threading.Lock()


def check_debug(debug: object) -> bool:
    """``debug`` must be 0, 1, ``False`` or ``True``."""
    if type(debug) not in (int, bool) or debug not in (0, 1):
        raise InvalidArgumentError(f"debug must be 0, 1, False or True, not {debug!r}")
    return bool(debug)


# Timeouts of exactly these types (not bool) that are >= 0 need no check_timeout():
# receive() loops that poll millions of times test this inline instead.
PLAIN_SECONDS = (int, float)


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """The ``queue`` contract: ``None`` waits forever, a number >= 0 is seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"{what} must be None or a number of seconds, not {type(timeout).__name__!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"{what} must be None or a number of seconds >= 0, not {timeout!r}")
    return float(timeout)


MAX_SPIN = 1.0  # seconds: the longest a receiver may be asked to poll before sleeping


def check_spin(spin: object) -> float | None:
    """A receiver's ``spin``: ``"auto"`` (returned as ``None``) or seconds from 0 to :data:`MAX_SPIN`."""
    if spin == "auto":
        return None
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise ArgumentTypeError(f"spin must be 'auto' or a number of seconds, not {type(spin).__name__!r}")
    if not 0 <= spin <= MAX_SPIN:  # NaN fails this too
        raise InvalidArgumentError(f"spin must be 'auto' or a number of seconds from 0 to {MAX_SPIN}, not {spin!r}")
    return float(spin)


def check_count(value: object, what: str, *, minimum: int, maximum: int | None = None) -> int:
    """An int argument within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{what} must be an int, not {type(value).__name__!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidArgumentError(f"{what} must be at least {minimum}{upper}, not {value}")
    return value


def check_capacity(capacity: object) -> int | None:
    """``None`` (the pipe's own, or the default) or a byte count, rounded up to 8."""
    if capacity is None:
        return None
    return L.align(check_count(capacity, "capacity", minimum=L.MIN_RING, maximum=L.MAX_CAPACITY))


def _enable_debug_output() -> None:
    # Respect logging the application configured; otherwise print ours to stderr.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pipebit: %(message)s"))
        logger.addHandler(handler)


class Endpoint:
    """Base of the four endpoint classes.  Subclasses implement open/close."""

    _role: ClassVar[str] = "endpoint"
    _model: ClassVar[int] = L.MODEL_SAFE

    def __new__(cls: type[_E], *args: Any, **kwargs: Any) -> _E:
        name = args[0] if args else kwargs.get("name")
        if is_url(name) or (isinstance(name, str) and os.environ.get(ENV_URL)):
            parse(name)  # a wrong URL is an InvalidNameError before redis-py is even imported
            from ._redis_base import redis_class_for  # noqa: PLC0415 - optional redis-py, on first use

            return object.__new__(redis_class_for(cls))  # type: ignore[return-value]  # a subclass of cls
        return object.__new__(cls)

    def __init__(self, name: str, debug: Any, create: bool) -> None:
        self._name = validate_name(name)
        self._debug = check_debug(debug)
        self._create = bool(create)
        self._pipe: Pipe | None = None
        self._slot: Slot | None = None
        self._closed_reason = "it was closed with close_connection()"
        if self._debug:
            _enable_debug_output()

    @property
    def name(self) -> str:
        """The pipe's name."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether the endpoint is currently disconnected."""
        return self._pipe is None

    def _log(self, message: str) -> None:
        if self._debug:
            logger.info("%s %s: %s", self._role, self._name, message)

    def _require_pipe(self) -> Pipe:
        pipe = self._pipe
        if pipe is None:
            raise PipeClosedError(
                f"{self._role} of pipe {self._name!r} is not connected: {self._closed_reason}; "
                "call open_connection() to reconnect"
            )
        return pipe

    def _connect(self, role: int, init: Callable[[Pipe, int], None] | None = None, **options: Any) -> Pipe:
        """Open (or create) this endpoint's pipe, per its model, name and ``create``, and claim
        a slot in it as ``role`` (``self._slot``); see :func:`pipebit._pipe.attach`."""
        pipe, self._slot = attach(
            self._name,
            self._model,
            role,
            init=init,
            create=self._create,
            on_event=self._log if self._debug else None,
            **options,
        )
        return pipe

    def _abandon(self, pipe: Pipe) -> None:
        """Undo a connection that failed half-way: give back the slot, unmap."""
        if self._slot is not None:
            pipe.release_slot(self._slot)
            self._slot = None
        pipe.close()
        self._pipe = None

    def _disconnected(self, pipe: Pipe, slot: Slot) -> None:
        """The common end of close_connection(): forget the endpoint, free its slot, unmap."""
        self._unregister()
        pipe.release_slot(slot)
        self._slot = None
        pipe.close()
        self._closed_reason = "it was closed with close_connection()"
        self._log("disconnected")

    def _drop_inherited(self, pipe: Pipe | None, slot: Slot | None) -> None:
        """In a forked child: close our copies only; the parent still owns slot and lock."""
        if slot is not None:
            slot.lock.close()
        if pipe is not None:
            pipe.close()

    def _register(self) -> None:
        with _registry_lock:
            _open_endpoints.add(self)

    def _unregister(self) -> None:
        with _registry_lock:
            _open_endpoints.discard(self)

    def open_connection(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close_connection(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _forget_after_fork(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _counters(self) -> tuple[int, int, int]:  # pragma: no cover - overridden
        """(slot index, packets, pending) for :meth:`stats`."""
        raise NotImplementedError

    def stats(self) -> EndpointStats:
        """A snapshot of this endpoint and its pipe (see :class:`pipebit.EndpointStats`)."""
        pipe = self._require_pipe()
        slot, packets, pending = self._counters()
        return endpoint_stats(pipe, slot, self._role, packets, pending)

    def __enter__(self) -> Any:
        self.open_connection()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_connection()

    def __repr__(self) -> str:
        pipe = self._pipe
        if pipe is None:
            return f"<{type(self).__name__} {self._name!r} closed>"
        return f"<{type(self).__name__} {self._name!r} {L.MODEL_NAMES[pipe.model]} capacity={pipe.capacity}>"


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
