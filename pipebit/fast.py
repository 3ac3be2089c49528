"""The Fast pipeline: a latest-value register for telemetry, GUI state and sensor readings.

Guarantees
----------
* ``send()`` never waits for receivers, however many there are and however slow:
  it writes the packet into the sender's own lane of the pipe and publishes it,
  taking no lock at all.  Receivers read without any lock either.
* A receiver never sees a torn or mixed packet, even while a sender writes or
  after a sender was killed mid-write: each lane has two buffers, a sender
  writes the one it did not publish last, and a reader checks the buffer's
  sequence number before and after copying.
* ``receive()`` returns ``[newest packet]`` when a value newer than the one this
  receiver last returned has been published, else ``[]``.  Values a receiver
  sees never go backwards, and no value is returned twice.
* The value persists: a receiver attaching after the write (or after the sender
  exited) gets it on its first ``receive()``.  ``override=True`` clears it.
* Several senders may write (up to 8 at a time); the last published write wins.
* Over Redis, ``send()`` leaves the value for a background thread that publishes
  the newest one (it never waits for the network either); ``flush()`` waits
  until the value last sent is on the server.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Iterator, Union

from . import _codec, _transport
from ._async import AsyncReceiving, AsyncSending, LatestValueWatcher, wait_in_thread
from ._limits import (
    DEFAULT_RECEIVE_TIMEOUT,
    FAST_STARTS,
    PLAIN_SECONDS,
    FastStart,
    Packet,
    Sendable,
    check_flag,
    check_size,
    check_slot_size,
    check_start,
    check_timeout,
)
from ._readiness import Readiness
from .errors import PipeClosedError, PipeTimeoutError, UndeliveredPacketsWarning

__all__ = ["FastReceiver", "FastSender"]


class FastSender(AsyncSending):
    """Publishes packets as the current value of a Fast pipe, creating the pipe if needed.

    ``FastSender(name, debug=0)`` connects at once.  Keyword-only options:

    * ``size`` -- packet length the pipe enforces (``0``: any), applied when this
      sender creates the pipe or overrides it.
    * ``override`` -- clear the pipe's current value and apply ``size``.
    * ``slot_size`` -- largest encoded packet in bytes (at least 64, rounded up to
      a multiple of 8), when this sender creates the pipe (default 64 KiB).  One that
      differs from an existing pipe's raises :class:`CapacityMismatchError`.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`.

    asyncio: ``await asend(packet)``, ``await aflush()``, ``async with`` (``docs/asyncio.md``).

    Thread safety: any number of threads may call ``send()``, ``flush()`` and
    ``stats()`` at once; concurrent ``send()`` calls take turns (one writer per
    lane), and the last to publish wins.  ``close_connection()`` may be called while
    other threads are in ``send()``.  Connect and disconnect (``open_connection()``,
    ``close_connection()``) from one thread at a time.
    """

    _role = "sender"
    _model = "fast"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        size: int | None = None,
        override: bool = False,
        slot_size: int | None = None,
        create: bool = True,
    ) -> None:
        super().__init__(name, debug, create)
        self._size = check_size(size)
        self._override = check_flag(override, "override")
        self._slot_size = check_slot_size(slot_size)
        self._set_send_lock(threading.RLock())
        self._pack = _codec.new_packer()  # used under the send lock only
        self._writer: _transport.FastWriter | None = None
        self._sent_before = 0  # packets sent over earlier connections
        self.open_connection()
        self._override = False  # applies to the first connection only

    def open_connection(self) -> None:
        """Connect to the pipe (creating it if needed) and take a lane.  No-op when connected."""
        if self._backend is not None:
            return
        writer = _transport.open_fast_writer(
            self._address,
            slot_size=self._slot_size,
            packet_len=self._size,
            override=self._override,
            create=self._create,
            log=self._logger,
            send_lock=self._send_lock,
            pack=self._pack,
            on_closed=self._require_open,
        )
        self._writer = self._backend = writer
        if type(self).send is FastSender.send:  # not overridden by a subclass
            # The back-end's send() is the whole send, checks included: bound here, an update
            # costs one call (see FastWriter.send).  Dropped when the connection closes.
            self.send = writer.send  # type: ignore[method-assign]
        self._register()
        self._log("connected")

    def close_connection(self) -> None:
        """Disconnect.  The value last sent stays in the pipe for later receivers (over Redis,
        once published: closing waits up to 5 s for that, and warns if it could not).
        Idempotent."""
        with self._send_lock:
            writer = self._writer
            if writer is None:
                return
            self._writer = self._backend = None
            self.__dict__.pop("send", None)
            self._sent_before += writer.published()
            lost = writer.close()
        self._closed()
        if lost:
            warnings.warn(
                f"Fast pipe {self._shown!r}: the last value was not published before the sender closed "
                "(its Redis server could not be reached)",
                UndeliveredPacketsWarning,
                stacklevel=2,
            )

    def _forget_after_fork(self) -> None:
        self._writer = None
        self.__dict__.pop("send", None)
        self._set_send_lock(threading.RLock())
        super()._forget_after_fork()

    def _set_send_lock(self, lock: threading.RLock) -> None:
        # Reentrant only so that the back-end's send() can tell whether it holds it.
        self._send_lock = lock

    def _counters(self) -> tuple[int, int]:
        writer = self._writer
        if writer is None:
            return self._sent_before, 0
        return self._sent_before + writer.published(), writer.pending()

    def _size_text(self) -> str:
        writer = self._writer
        return f"slot_size={writer.slot_size}" if writer is not None else ""

    def send(self, data: Sendable) -> None:
        """Publish ``data`` (a list or tuple) as the pipe's current value.  Never blocks on receivers.

        Raises :class:`PacketTypeError` for values PipeBit cannot carry and
        :class:`PacketSizeError` for a packet of the wrong length or larger than
        the pipe's slot.
        """
        # While connected, the back-end's send() stands in for this method (bound in
        # open_connection()); this runs for a subclass that overrides send(), and after close.
        writer = self._writer
        if writer is None:
            self._require_open()  # raises
        else:
            writer.send(data)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the value last sent is published.  On shared memory ``send()``
        publishes before it returns, so this returns at once (over Redis it waits for
        the background thread).  :class:`PipeClosedError` if the sender is closed."""
        limit = check_timeout(timeout)
        writer = self._writer
        if writer is None:
            self._require_open()
            return
        writer.flush(limit)

    async def asend(self, data: Sendable, timeout: float | None = None) -> None:
        """``send()`` for a coroutine (it never waits: ``timeout`` is accepted for the Safe
        model's signature and checked)."""
        check_timeout(timeout)
        self.send(data)

    async def aflush(self, timeout: float | None = None) -> None:
        """``flush()`` for a coroutine.  Over Redis a helper thread of the loop's executor
        waits for the publication, in slices, so that a cancelled ``aflush()`` leaves no
        thread waiting for long; the loop runs meanwhile."""
        limit = check_timeout(timeout)
        writer = self._writer
        if writer is None:
            self._require_open()
            return
        if not writer.pending():  # shared memory: always
            return

        def flushed(seconds: float) -> bool:
            try:
                writer.flush(seconds)
            except PipeTimeoutError:
                return False
            return True

        if not await wait_in_thread(flushed, limit):
            raise PipeTimeoutError(
                f"aflush() waited {timeout}s; the value last sent to Fast pipe {self._shown!r} is not published yet"
            )


class FastReceiver(AsyncReceiving):
    """Reads the newest value of a Fast pipe, creating the pipe if it does not exist.

    ``FastReceiver(name, debug=0)`` attaches at once.  Keyword-only options:

    * ``start`` -- ``"current"`` (default): the first ``receive()`` returns the
      value published before this receiver attached, if any -- which may be from an
      earlier run: ``stats().pipe.last_write_at`` says when it was published;
      ``"new"``: only values published after it attached.
    * ``slot_size`` -- largest encoded packet, when this receiver creates the pipe.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`.

    asyncio: ``await areceive()``, ``async for value in receiver``, ``async with``, and
    ``fileno()`` for other event loops (``docs/asyncio.md``).

    Thread safety: any number of threads may call ``receive()`` (or iterate) and
    ``stats()`` at once; a value goes to one ``receive()`` call only.
    ``close_connection()`` may be called while other threads are in ``receive()``: a
    waiting call raises :class:`PipeClosedError`, and iteration ends.  Connect and
    disconnect (``open_connection()``, ``close_connection()``) from one thread at a time.
    """

    _role = "receiver"
    _model = "fast"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: FastStart = "current",
        slot_size: int | None = None,
        create: bool = True,
    ) -> None:
        super().__init__(name, debug, create)
        self._start = check_start(start, FAST_STARTS)
        self._slot_size = check_slot_size(slot_size)
        # The back-end's reader, or in event mode the watcher that reads it.
        self._reader: _transport.FastReader | LatestValueWatcher | None = None
        self._returned = 0
        self._new_locks()
        self._init_async()
        self.open_connection()

    def open_connection(self) -> None:
        """Attach to the pipe (creating it if needed).  No-op when connected."""
        if self._backend is not None:
            return
        reader = _transport.open_fast_reader(
            self._address, start=self._start, slot_size=self._slot_size, create=self._create, log=self._logger
        )
        self._reader = self._backend = reader
        self._register()
        self._log("connected")

    def close_connection(self) -> None:
        """Detach from the pipe; a receive() waiting in another thread raises
        :class:`PipeClosedError`.  Idempotent."""
        with self._users:
            reader = self._reader
            if reader is None:
                return
            self._reader = self._backend = None
            deadline = time.monotonic() + 10
            while self._active and time.monotonic() < deadline:
                reader.interrupt()  # it sees the endpoint closed and leaves
                self._users.wait(0.05)
        reader.close()
        self._closed()

    def _forget_after_fork(self) -> None:
        if isinstance(self._reader, LatestValueWatcher):
            self._reader.forget()
        self._reader = None
        self._new_locks()
        super()._forget_after_fork()

    def _new_locks(self) -> None:
        # The calls in progress, so that close_connection() (from any thread) can wake them
        # and wait for them to leave before the reader lets the pipe go.  Bound
        # acquire/release: a polling loop calls receive(timeout=0) millions of times.
        users_lock = threading.Lock()
        self._users = threading.Condition(users_lock)
        self._users_acquire, self._users_release = users_lock.acquire, users_lock.release
        self._active = 0

    def _counters(self) -> tuple[int, int]:
        return self._returned, 0

    def _open_readiness(self) -> Readiness:
        """Switch event mode on: a watcher thread reads the register from now on, and
        receive() takes what it holds (see :class:`LatestValueWatcher`)."""
        with self._users:
            reader = self._reader
            if reader is None:
                self._require_open()  # raises
            if not isinstance(reader, LatestValueWatcher):
                assert reader is not None
                reader = self._reader = LatestValueWatcher(reader, self._name)
            reader.readiness.use()
            return reader.readiness

    def _take_ready(self) -> list[Packet]:
        reader = self._reader
        if not isinstance(reader, LatestValueWatcher):
            self._require_open()  # closed, or reconnected since: event mode starts again
            return []
        got = reader.take()
        if got:
            self._returned += 1
        elif self._reader is None:
            self._require_open()  # closed meanwhile: raise
        return got

    def _size_text(self) -> str:
        reader = self._reader
        return f"slot_size={reader.slot_size}" if reader is not None else ""

    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT, *, copy: bool = True) -> list[Packet]:
        """``[newest packet]`` if a newer value was published since this receiver's last
        receive(), else ``[]``.

        With nothing new it waits for a new value: up to ``timeout`` seconds (default
        0.1), forever with ``None``, not at all with ``0``.

        ``copy`` is accepted for the same calls as :meth:`SafeReceiver.receive`, but a
        Fast value is always copied out (its buffer is overwritten by the next value but
        one), so arrays are always the application's own.
        """
        # Readers poll with timeout=0 in tight loops: this is a hot path too.
        limit = (
            timeout
            if timeout is not None and timeout.__class__ in PLAIN_SECONDS and timeout >= 0
            else check_timeout(timeout)
        )
        self._users_acquire()
        try:
            reader = self._reader
            if reader is None:
                reader = self._require_open()  # raises
            self._active += 1
        finally:
            self._users_release()
        try:
            got = reader.read(limit)
        finally:
            self._call_ended()
        if got:
            self._returned += 1
        elif self._reader is None:
            self._require_open()  # closed while it waited: raise
        return got

    def _call_ended(self) -> None:
        """A receive() call leaves; a close_connection() may be waiting for that."""
        self._users_acquire()
        self._active -= 1
        if self._reader is None:
            self._users.notify_all()
        self._users_release()

    def __iter__(self) -> Iterator[Packet]:
        """Yield each new value as it is published, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch
