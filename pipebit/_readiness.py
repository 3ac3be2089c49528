"""Readiness: a descriptor an event loop can wait on, readable while an endpoint holds
something to take; and the loop's side of a receiver's wake socket.  A face part.

A Safe receiver's caching thread reads ahead into its cache and sets the
descriptor when the cache gains packets; a Fast receiver's watcher thread does the
same with the newest value.  Why a descriptor rather than ``call_soon_threadsafe``
per waiting future: it holds the state in the kernel, level-triggered, so no
wake-up can be lost between "nothing there" and "now waiting", it costs a system
call only when the cache goes from empty to not empty (not per packet), it wakes
the loop's ``epoll`` directly (no polling: an idle waiter costs nothing), and the
same descriptor serves ``selectors``, Tk's ``createfilehandler`` and other loops
through ``fileno()``.

A receiver over shared memory also has a *wake socket* (:mod:`pipebit._wake`):
writers wake a coroutine through it, and the coroutine reads the pipe itself, so
that a packet reaches it with one wake-up (the loop's) rather than two (the
thread's, then the loop's).  A loop keeps watching the wake socket between waits:
registering a descriptor with a loop and taking it off again costs ~5 us, as much
as the rest of a wait.  It stops when a wake-up finds no coroutine waiting, and
when the socket closes (from the loop's own thread, before the socket is closed:
no loop ever watches a closed number).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from ._wake import WakeSocket

_ONE = (1).to_bytes(8, sys.byteorder)  # an eventfd takes 8-byte counts; a pipe takes any byte


def _running_loop() -> asyncio.AbstractEventLoop:
    # Imported here: asyncio costs ~35 ms to import, and only coroutines (whose caller
    # has it loaded already) need it.
    import asyncio  # noqa: PLC0415 - see above

    return asyncio.get_running_loop()


def _wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` (in its loop's thread); it carries no packet, so cancelling it loses none."""
    if not future.done():
        future.set_result(None)


def _wake_all(futures: set[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def _resolved(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], deadline: float | None) -> None:
    """Await ``future``, resolved at loop time ``deadline`` at the latest."""
    timer = None if deadline is None else loop.call_at(deadline, _wake, future)
    try:
        await future
    finally:
        if timer is not None:
            timer.cancel()


class Readiness:
    """A file descriptor that is readable while an endpoint holds something to take.

    An ``eventfd`` on Linux (Python 3.10+), otherwise the read end of a pipe.  Its
    owner calls :meth:`set` after it gains packets and :meth:`clear` when they are
    taken, under its own mutex, so the level always matches its state; each is a
    system call only on a change.  Coroutines that wait on it count as ``users``;
    :meth:`retire` (closing) leaves it readable for ever and closes it once the last
    user has left the loop's selector, so that no loop ever watches a closed number.
    """

    def __init__(self) -> None:
        self._read_fd: int
        self._write_fd: int
        eventfd = getattr(os, "eventfd", None)
        if eventfd is not None:
            self._read_fd = self._write_fd = eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self.is_set = False
        self._users = 0
        self.retired = self._closed = False
        # The futures waiting on the descriptor, per event loop, each loop watching it once.
        self.waiting: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
        # A receiver's socket that writers wake a waiting coroutine through (pipebit._wake):
        # the endpoint binds it when it has one; closed with the descriptor.
        self.wake: WakeSocket | None = None
        self._woken = 0  # coroutines waiting on the wake socket rather than the descriptor
        # The loops watching the wake socket (kept between waits), with their waiting futures.
        self._wake_waiting: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
        self._unwatching = 0  # loops yet to stop watching it before it may close

    def fileno(self) -> int:
        return self._read_fd

    def set(self) -> None:
        if not self.is_set:
            with self._lock:
                if not self.is_set and not self._closed:
                    self.is_set = True
                    os.write(self._write_fd, _ONE)
                    if self._woken and self.wake is not None:  # they watch the wake socket instead
                        self.wake.poke()

    def clear(self) -> None:
        if self.is_set:
            with self._lock:
                if self.is_set and not self.retired and not self._closed:
                    self.is_set = False
                    try:
                        os.read(self._read_fd, 64)
                    except BlockingIOError:  # not written yet: nothing to drain
                        pass

    def use(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self.retired and not self._users:
                self._close()

    def retire(self) -> None:
        """The endpoint closes: readable from now on, closed once no coroutine uses it."""
        self.set()
        with self._lock:
            self.retired = True
            if not self._users:
                self._close()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the descriptors (the loops
        that watch them are the parent's)."""
        with self._lock:
            self.retired = True
            self._wake_waiting.clear()
            self._close()

    def _close(self) -> None:
        """Under the lock."""
        if self._closed:
            return
        self._closed = True
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)
        if self.wake is None:
            return
        # Every loop watching the wake socket stops, in its own thread, before it closes.
        here = _loop_of_this_thread()
        fd = self.wake.fileno()
        for loop in self._wake_waiting:
            if loop.is_closed():
                continue
            if loop is here:
                loop.remove_reader(fd)
                continue
            try:
                loop.call_soon_threadsafe(self._unwatched_elsewhere, loop)
            except RuntimeError:  # closed meanwhile: its selector is gone
                continue
            self._unwatching += 1
        self._wake_waiting.clear()
        if not self._unwatching:
            self.wake.close()

    def _unwatched_elsewhere(self, loop: asyncio.AbstractEventLoop) -> None:
        """In ``loop``'s thread, after closing: stop watching the wake socket; the last loop
        to stop closes it.  (A loop that never runs again keeps it open: nothing worse.)"""
        wake = self.wake
        assert wake is not None
        loop.remove_reader(wake.fileno())
        with self._lock:
            self._unwatching -= 1
            if not self._unwatching:
                wake.close()

    def _woken_up(self, loop: asyncio.AbstractEventLoop) -> None:
        """The wake socket is readable (in ``loop``'s thread): wake the coroutines of this
        loop that wait; with none waiting, stop watching it."""
        wake = self.wake
        assert wake is not None
        with self._lock:
            waiting = self._wake_waiting.get(loop)
            if waiting is None:  # closing: the loop stops watching it
                loop.remove_reader(wake.fileno())
                return
            wake.drain()
            if not waiting:
                del self._wake_waiting[loop]
                loop.remove_reader(wake.fileno())
                return
        _wake_all(waiting)

    async def wait(self, deadline: float | None, *, woken: bool = False) -> None:
        """Return once the descriptor is readable (or at loop time ``deadline``); the caller
        looks at the endpoint's state after.  With ``woken`` (and a wake socket), wait on
        the wake socket instead, which :meth:`set` then wakes too: one descriptor to
        watch, not two."""
        loop = _running_loop()
        future: asyncio.Future[None] = loop.create_future()
        wake = self.wake
        if woken and wake is not None:
            with self._lock:
                if self.is_set:  # closed, or something to take already
                    return
                self._woken += 1
                waiting = self._wake_waiting.get(loop)
                if waiting is None:  # this loop starts watching it, and keeps watching it
                    for gone in [other for other in self._wake_waiting if other.is_closed()]:
                        del self._wake_waiting[gone]  # (asyncio.run() ended: its selector went with it)
                    waiting = self._wake_waiting[loop] = set()
                    loop.add_reader(wake.fileno(), self._woken_up, loop)
                waiting.add(future)
            try:
                await _resolved(loop, future, deadline)
            finally:
                with self._lock:
                    waiting.discard(future)
                    self._woken -= 1
            return
        waiting = self.waiting.get(loop)
        if waiting is None:  # the first waiter of this loop makes the loop watch the descriptor
            waiting = self.waiting[loop] = set()
            loop.add_reader(self._read_fd, _wake_all, waiting)
        waiting.add(future)
        try:
            await _resolved(loop, future, deadline)
        finally:
            waiting.discard(future)
            if not waiting:
                del self.waiting[loop]
                loop.remove_reader(self._read_fd)


def _loop_of_this_thread() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if one is (asyncio is loaded if any is)."""
    asyncio = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()
