"""What every sender and receiver shares, whatever its model and transport: the back-end it
holds, debug logging, the context-manager protocol, and what happens at ``fork`` and at
interpreter exit.

* ``debug`` output goes through :mod:`logging` (logger ``"pipebit"``); with
  ``debug=0`` an endpoint logs nothing at all.
* After ``fork``, the child's copies of endpoints are closed without touching
  the pipe: the parent still owns their slots and threads.  Using one raises
  :class:`PipeClosedError` saying so; the child opens its own.
* At interpreter exit, open senders are flushed and closed (so a script that
  sends and ends delivers every packet), then open receivers are closed.  The
  same holds when a :mod:`multiprocessing` child process ends normally, whatever
  its start method: its function returns (or raises), as a ``Process`` target,
  a ``Pool`` task or a ``ProcessPoolExecutor`` task, and its worker loop ends.
  Up to Python 3.12, multiprocessing's exit comes before it waits for the
  child's other (non-daemon) threads: one still sending gets
  :class:`PipeClosedError`.  From 3.13 it waits for them first, as a script does.
  A process killed by a signal (``SIGKILL``, or ``SIGTERM`` without a handler)
  runs nothing at its end: what its senders still had queued is lost.  An
  exception a signal handler raises into the exit flush (``SystemExit``,
  ``KeyboardInterrupt``) stops it there, with an :class:`UndeliveredPacketsWarning`
  saying how many packets that dropped; so does a sender whose close fails.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from ._limits import check_debug
from ._stats import EndpointStats
from ._transport import Backend, locate
from .errors import PipeClosedError, UndeliveredPacketsWarning

if TYPE_CHECKING:
    from multiprocessing.util import Finalize

logger = logging.getLogger("pipebit")

_open_endpoints: weakref.WeakSet[Endpoint] = weakref.WeakSet()
_registry_lock = threading.Lock()

# In a multiprocessing child: the finalizer that runs _close_all_at_exit() when the
# child ends (see _close_all_at_child_exit()); None until this process registers one.
_child_exit: Finalize[None] | None = None
# multiprocessing.util._exit_function() runs the finalizers of priority >= 0, highest
# first, before it terminates the child's daemon children and joins the others.
# Pool's 15 is the standard library's highest: at 20, senders flush while this
# process's own children and pools -- perhaps where their receivers are -- still run.
CHILD_EXIT_PRIORITY = 20

# What ``with SafeSender(...) as s`` gives a type checker for ``s``: the endpoint's own class
# (typing.Self needs Python 3.11, and typing_extensions is not a dependency).
EndpointT = TypeVar("EndpointT", bound="Endpoint")


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
        self._close_lock = threading.Lock()  # one close_connection() at a time
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
            _close_all_at_child_exit()

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
        self._close_lock = threading.Lock()  # the parent may have held it at fork time
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

    def __enter__(self: EndpointT) -> EndpointT:
        """Connect (if not connected) and return this endpoint, of its own class."""
        self.open_connection()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Disconnect (``close_connection()``), whether the block ended normally or not."""
        self.close_connection()

    def __repr__(self) -> str:
        if self._backend is None:
            return f"<{type(self).__name__} {self._shown!r} closed>"
        return f"<{type(self).__name__} {self._shown!r} {self._model} {self._size_text()}>"


def _after_fork_in_child() -> None:
    global _registry_lock, _child_exit
    _registry_lock = threading.Lock()  # the parent may have held it at fork time
    _child_exit = None  # the parent's finalizer is the parent's (Finalize ignores it here)
    endpoints = list(_open_endpoints)
    _open_endpoints.clear()
    for endpoint in endpoints:
        endpoint._forget_after_fork()
        endpoint._closed_reason = (
            f"it was opened in process {os.getppid()} and this process is a fork of it; "
            "open a new endpoint in this process"
        )


def _close_all_at_child_exit() -> None:
    """In a :mod:`multiprocessing` child, make the child's end run :func:`_close_all_at_exit`.

    A child started with ``fork`` or ``forkserver`` ends with ``os._exit()``.  Up to
    Python 3.12 nothing of :mod:`atexit` runs there: ``BaseProcess._bootstrap()`` runs
    the process's function, then ``multiprocessing.util._exit_function()`` (in a
    ``finally``, so also when the function raises), then joins the non-daemon threads.
    From 3.13, ``popen_fork`` and ``forkserver`` empty the inherited atexit callbacks,
    register ``_exit_function()`` and run atexit before ``os._exit()``, after
    ``_bootstrap()`` joined the threads.  Either way ``_exit_function()`` calls the
    callbacks registered in this process with ``multiprocessing.util.Finalize(...,
    exitpriority=...)``.  So register one, once per process (under ``_registry_lock``,
    from :meth:`Endpoint._register`).

    A ``spawn`` child also ends through ``_exit_function()``, then exits the
    interpreter, which runs PipeBit's own atexit callback as well: the second
    close-all finds only endpoints opened since the first, if any.  In the main
    process atexit alone closes all, as before.  A program that does not import
    :mod:`multiprocessing` pays one dict lookup.
    """
    global _child_exit
    # Not active once it has run: an endpoint opened after that (by another exit
    # callback) gets a new one, which _exit_function()'s last round of finalizers runs.
    if _child_exit is not None and _child_exit.still_active():
        return
    process = sys.modules.get("multiprocessing.process")
    # _bootstrap() sets the parent process before it runs the child's function (and
    # empties the Finalize registry before that); the main process has none.
    if process is None or process.parent_process() is None:
        return
    from multiprocessing import util  # noqa: PLC0415 - loaded already: _bootstrap() imports it

    _child_exit = util.Finalize(None, _close_all_at_exit, exitpriority=CHILD_EXIT_PRIORITY)


def _close_all_at_exit() -> None:
    """Flush and close every open endpoint, senders first: run by :mod:`atexit`, and in a
    multiprocessing child by multiprocessing's exit (see :func:`_close_all_at_child_exit`)."""
    with _registry_lock:
        endpoints = list(_open_endpoints)
    # Senders first: their flush may need receivers in this process to make room.
    for endpoint in sorted(endpoints, key=lambda e: e._role != "sender"):
        try:
            endpoint.close_connection()
        except Exception as exc:  # exit must go on; say what was lost
            _report_failed_close(endpoint, f"closing it at exit failed: {exc}")
        except BaseException as exc:
            # A signal handler raised into the flush (SystemExit, KeyboardInterrupt): the
            # process asked to stop waiting.  Say what that drops, then let it go on --
            # multiprocessing's _run_finalizers() would pass it on silently.
            _report_failed_close(endpoint, f"{type(exc).__name__} interrupted the flush at exit")
            raise
        # What a thread still using it is told from now on (a daemon thread, or in a
        # multiprocessing child any thread; in the instant before, close_connection()'s words).
        endpoint._closed_reason = "it was closed as this process ended"


def _report_failed_close(endpoint: Endpoint, what: str) -> None:
    """Say that closing ``endpoint`` at exit went wrong: for a sender, with an
    :class:`UndeliveredPacketsWarning` counting the packets that drops."""
    if endpoint._role != "sender":
        logger.warning("%r: %s", endpoint, what)
        return
    try:
        dropped = str(endpoint.stats().pending)
    except Exception:  # whatever state the failure left it in, warn anyway
        dropped = "its queued"
    warnings.warn(
        f"pipe {endpoint.name!r}: {what}; {dropped} packet(s) were not delivered",
        UndeliveredPacketsWarning,
        stacklevel=2,
    )


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
