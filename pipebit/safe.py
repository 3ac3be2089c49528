"""The Safe pipeline: lossless, ordered, broadcast.

Guarantees
----------
* Every receiver that is attached gets every packet sent after it attached,
  exactly once and in send order.  Several receivers each get every packet;
  several senders may share a pipe, and each sender's own order is kept.
* The pipe retains its most recent packets (up to its capacity) with no
  receiver attached and after every sender has exited, for receivers that start
  later.  By default (``start="unread"``) a receiver first gets the retained
  packets that no receiver has read -- so a receiver started after its sender
  gets everything, and a second run does not replay what the first consumed --
  then every new one.  ``start="oldest"`` replays everything retained;
  ``start="new"`` skips it.
* A packet that ``send()`` accepts is one every receiver can decode.  Bytes in
  the pipe that do not decode (another process wrote them) cost only their own
  record's packets from the damage on: ``receive()`` returns the packets before
  the damage, then raises :class:`CorruptPacketError`, then goes on.
* Memory is bounded on both sides.  ``send()`` appends to a bounded in-process
  queue and returns at once, blocking only while that queue is full.  A
  background thread moves batches of packets into the ring, waiting while
  attached receivers have not read the bytes it would overwrite.  A receiver's
  background thread reads ahead into a bounded cache and stops when it is full,
  so a receiver that stops calling ``receive()`` holds the senders back: it is
  alive, so the packets are still owed to it.
* A receiver whose process dies (even by ``SIGKILL``) stops holding senders
  back within about a second.
* A script that sends and exits delivers everything it sent into the pipe; if a
  stalled receiver keeps the ring full, exit waits ``flush_timeout`` seconds,
  then warns how many packets were not delivered.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterator, Union

from . import _codec, _transport
from ._frames import Held, OutOfBand, release_views
from ._group_receive import GroupReceive
from ._limits import (
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_CACHED,
    DEFAULT_MAX_CACHED_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RECEIVE_TIMEOUT,
    PLAIN_SECONDS,
    QUEUE_BYTES,
    SAFE_STARTS,
    Packet,
    SafeStart,
    Sendable,
    Spin,
    check_capacity,
    check_count,
    check_flag,
    check_group,
    check_size,
    check_spin,
    check_start,
    check_timeout,
    wrong_length,
)
from ._receive_cache import ReceiveCache
from ._send_queue import SendQueue
from ._worker import Worker
from .errors import InvalidArgumentError, PipeClosedError, PipeTimeoutError, UndeliveredPacketsWarning

STARTS = SAFE_STARTS
__all__ = ["BitPackReceiver", "BitPackSender", "SafeReceiver", "SafeSender"]


class SafeSender(SendQueue):
    """Sends packets into a Safe pipe, creating the pipe if it does not exist.

    ``SafeSender(name, debug=0)`` connects at once.  Keyword-only options:

    * ``size`` -- packet length the pipe enforces (``0``: any).  Applied when this
      sender creates the pipe or overrides it; otherwise the pipe's rule stands.
    * ``override`` -- discard the packets the pipe retains and apply ``size``
      (receivers already attached keep what they are owed).  Changing the pipe's
      ``capacity`` this way needs it idle.
    * ``capacity`` -- ring bytes, when this sender creates the pipe (default 4 MiB).
      One that differs from an existing pipe's raises :class:`CapacityMismatchError`.
    * ``queue_size`` -- packets ``send()`` may queue before it blocks.
    * ``flush_timeout`` -- seconds ``close_connection()`` (and interpreter exit)
      wait for queued packets to reach the pipe.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`
      instead of being created.

    asyncio: ``await asend(packet)``, ``await aflush()``, ``async with`` (``docs/asyncio.md``).

    Thread safety: any number of threads may call ``send()``, ``flush()`` and
    ``stats()`` at once; each thread's packets keep their order.
    ``close_connection()`` may be called while other threads are in ``send()`` or
    ``flush()``: a ``send()`` waiting for room then raises :class:`PipeClosedError`.
    Connect and disconnect (``open_connection()``, ``close_connection()``) from one
    thread at a time.
    """

    _role = "sender"
    _model = "safe"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        size: int | None = None,
        override: bool = False,
        capacity: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        flush_timeout: float | None = DEFAULT_FLUSH_TIMEOUT,
        create: bool = True,
    ) -> None:
        super().__init__(name, debug, create)
        self._size = check_size(size)
        self._override = check_flag(override, "override")
        self._capacity = check_capacity(capacity)
        self._flush_timeout = check_timeout(flush_timeout, "flush_timeout")
        self._init_queue(check_count(queue_size, "queue_size", minimum=1))
        self.open_connection()
        self._override = False  # applies to the first connection only

    # ------------------------------------------------------------ connection
    def open_connection(self) -> None:
        """Connect to the pipe (creating it if needed) and start the delivery thread.

        A no-op when already connected.
        """
        if self._backend is not None:
            return
        writer = _transport.open_safe_writer(
            self._address,
            capacity=self._capacity,
            packet_len=self._size,
            override=self._override,
            create=self._create,
            log=self._logger,
        )
        try:
            self._required = writer.packet_len
            self._max_packet = writer.max_packet
            self._capacity_now = writer.capacity
            self._batch_bytes = max(self._max_packet // 4, 1)
            self._queue_bytes = min(writer.capacity, QUEUE_BYTES)  # one bigger packet still fits when empty
            self._inline = writer.inline
            self._abort.clear()
            self._worker = Worker(f"pipebit-{self._name}-sender", self._deliver)
            self._writer = self._backend = writer
            self._healthy = True
            self._worker.start()
        except BaseException:
            self._writer = self._backend = None
            writer.close()
            raise
        self._register()
        self._log("connected")

    def close_connection(self, timeout: float | None = None) -> None:
        """Deliver what is queued (waiting up to ``timeout``, default ``flush_timeout``), then
        disconnect.  Packets that could not be delivered in time are dropped with an
        :class:`UndeliveredPacketsWarning` saying how many.  A ``send()`` waiting for room
        in another thread raises :class:`PipeClosedError` (its packet is not accepted).
        Idempotent; a second thread closing meanwhile waits for the first to finish.
        """
        with self._close_lock:
            self._close_sender(timeout)

    def _close_sender(self, timeout: float | None) -> None:
        writer, worker = self._writer, self._worker
        if writer is None or worker is None:
            return
        limit = self._flush_timeout if timeout is None else check_timeout(timeout)
        with self._mutex:
            self._healthy = False  # no more send()s: what is queued now is all there is to flush
            self._cond.notify_all()  # a send() waiting for room leaves, raising PipeClosedError
            self._wake_async()  # and so does a coroutine in asend() or aflush()
        self._wait_delivered(limit, report=False)
        self._abort.set()
        with self._mutex:
            worker.stopping.set()
            self._cond.notify_all()
        ended = worker.stop(timeout=10.0)
        with self._mutex:
            while self._direct:  # a send() writing a large packet itself sees the close and stops
                self._cond.wait(0.1)
            lost = len(self._queue) + self._in_flight
            self._queue.clear()
            self._queued_bytes = self._in_flight = self._credit = self._granted = 0
            self._cond.notify_all()
        self._writer = self._backend = None
        writer.close()
        self._closed()
        # Not "not delivered": a batch the pipe took while we stopped counts as delivered.
        if lost or not ended:
            warnings.warn(
                f"pipe {self._shown!r}: {lost} packet(s) were not delivered before the sender closed "
                f"(waited {limit}s; {writer.stall_hint})",
                UndeliveredPacketsWarning,
                stacklevel=3,
            )

    def _forget_after_fork(self) -> None:
        self._reset_queue()
        super()._forget_after_fork()

    def _counters(self) -> tuple[int, int]:
        with self._mutex:
            return self._sent, len(self._queue) + self._in_flight

    def _size_text(self) -> str:
        writer = self._writer
        return f"capacity={writer.capacity}" if writer is not None else ""

    # --------------------------------------------------------------- sending
    def send(self, data: Sendable, timeout: float | None = None) -> None:
        """Queue ``data`` (a list or tuple) for delivery and return.

        The packet is encoded now, so later changes to ``data`` do not affect it,
        and a value PipeBit cannot carry raises :class:`PacketTypeError` here.
        Blocks only while the send queue is full: ``timeout=None`` waits as long
        as it takes, otherwise :class:`PipeTimeoutError` after ``timeout`` seconds.
        A sender closed meanwhile (from another thread) raises :class:`PipeClosedError`:
        every packet ``send()`` returned for is either delivered or counted as lost.
        """
        # The hot path of the library: every line here is paid per packet.
        kind = data.__class__
        if kind is not list and kind is not tuple and not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        required = self._required
        if required and len(data) != required:
            raise wrong_length(self._shown, required, len(data))
        # acquire()/release() rather than "with": half the cost, on every packet.  Inside the
        # try: an exception a signal handler raises as acquire() returns (Ctrl-C in a sending
        # loop) must not leave the lock held -- released only if this thread holds it.
        try:
            self._lock()
            if not self._healthy:  # closed, forked, or the delivery thread failed
                self._raise_unhealthy()
            try:
                encoded = self._pack(data)  # the snapshot: later changes to data do not matter
            except Exception as exc:
                if exc.__class__ is not OutOfBand:
                    _codec.raise_encoding_error(exc, data)
                self._send_framed(data, timeout)  # it holds a large array: a record of its own
                self._unlock()
                return
            # The common case in a stream: the packet fits the credit _grant() left, so the
            # queue has room, the packet is not too big and the delivery thread is awake.
            credit = self._credit - len(encoded)
            if credit >= 0:
                self._credit = credit
                self._queue.append(encoded)
            else:
                self._enqueue(encoded, timeout)
        except BaseException:
            if self._owned():
                self._unlock()
            raise
        self._unlock()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every packet sent so far is in the pipe (not necessarily read).

        :class:`PipeTimeoutError` after ``timeout`` seconds; ``None`` waits as long as it takes.
        """
        self._require_open()
        if not self._wait_delivered(check_timeout(timeout), report=True):
            raise PipeTimeoutError(
                f"flush() waited {timeout}s; {len(self._queue) + self._in_flight} packet(s) of pipe "
                f"{self._shown!r} are not delivered yet (its receivers are not keeping up)"
            )


class SafeReceiver(ReceiveCache, GroupReceive):
    """Receives every packet of a Safe pipe, creating the pipe if it does not exist.

    ``SafeReceiver(name, debug=0)`` attaches at once.  Keyword-only options:

    * ``start`` -- where to begin among the packets the pipe retains.
      ``"unread"`` (default): after every packet some receiver has read (one
      attached now, or one that has left: as far as its ``receive()`` returned),
      so a receiver started after its sender gets all it sent, and a later run
      does not get them again.  ``"oldest"``: every retained packet.  ``"new"``:
      only packets sent after attaching.
    * ``capacity`` -- ring bytes, when this receiver creates the pipe.
    * ``max_cached`` -- packets read ahead before the background thread stops
      reading (it may overshoot by one record of at most 8192 packets); also the
      most one ``receive()`` reads from the ring at once (which also stops after
      about 1 MiB of packets, so big ones come a few per call).
    * ``max_cached_bytes`` -- the same bound in bytes (as the packets take in the
      ring; default 64 MiB), so that big packets cannot fill memory either.
    * ``spin`` -- how long a waiting ``receive()`` polls the ring before it goes
      to sleep.  ``"auto"`` (default): up to 50 microseconds, and only while the
      packets it waited for came that quickly (a request/reply exchange), so
      an idle receiver or a sparse stream sleeps at once.  ``0``: always sleep
      at once.  A number of seconds (up to 1): always poll that long, for
      latency-critical traffic with longer gaps, at the cost of a busy core
      while it lasts.  Polling saves the tens of microseconds of waking a
      sleeping process.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`
      instead of being created.
    * ``group`` -- join the receiver group of this name (created, at ``start``, by
      its first member; it outlives its members until ``pipebit.remove_group()``).
      Each packet goes to one member of each group, and stays the member's until it
      acknowledges it by calling ``receive()`` again, ``ack()`` or
      ``close_connection()``; a member that dies first has it handed to another
      member.  A member reads no ahead: ``max_cached`` bounds one batch.
      See ``docs/groups.md``.
    * ``batch`` -- group members only: the most packets one ``receive()`` claims.
      By default a member claims its share of what is waiting (divided among the
      members), at most what it processes in about 5 ms at its own pace.

    Who reads the pipe: on shared memory a ``receive()`` call reads the ring
    itself (and sleeps on it itself), so a waiting application gets a packet
    with no thread hand-off; when the application has not been in ``receive()``
    for a few milliseconds, the background thread reads ahead into the cache
    instead, so senders are not held back while the application is busy
    elsewhere.  Over Redis the background thread always reads (``spin`` is
    accepted and changes nothing there).

    asyncio: ``await areceive()``, ``async for packet in receiver``, ``async with``, and
    ``fileno()`` for other event loops (``docs/asyncio.md``).

    Thread safety: any number of threads may call ``receive()`` (or iterate) and
    ``stats()`` at once; each packet goes to one ``receive()`` call only, the one
    that takes it.  ``close_connection()`` may be called while other threads are in
    ``receive()``: a waiting call raises :class:`PipeClosedError`, and iteration
    ends.  Connect and disconnect (``open_connection()``, ``close_connection()``)
    from one thread at a time.
    """

    _role = "receiver"
    _model = "safe"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: SafeStart = "unread",
        capacity: int | None = None,
        max_cached: int = DEFAULT_MAX_CACHED,
        max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
        spin: Spin = "auto",
        create: bool = True,
        group: str | None = None,
        batch: int | None = None,
    ) -> None:
        super().__init__(name, debug, create)
        self._group = None if group is None else check_group(group, self._shown)
        self._batch = None if batch is None else check_count(batch, "batch", minimum=1)
        if batch is not None and group is None:
            raise InvalidArgumentError(f"pipe {self._shown!r}: batch= applies to a member of a receiver group (group=)")
        self._member = None
        self._start = check_start(start, SAFE_STARTS)
        self._capacity = check_capacity(capacity)
        self._spin = check_spin(spin)  # None: "auto"
        self._init_cache(
            check_count(max_cached, "max_cached", minimum=1),
            check_count(max_cached_bytes, "max_cached_bytes", minimum=1),
        )
        self._resume: Any = None
        self.open_connection()

    # ------------------------------------------------------------ connection
    def open_connection(self) -> None:
        """Attach to the pipe (creating it if needed) and start caching packets.

        After a ``close_connection()``, reconnecting resumes after the last packet
        ``receive()`` returned, if the pipe still retains what follows it.  A no-op
        when connected.
        """
        if self._backend is not None:
            return
        if self._group is not None:
            self._open_member()
            return
        reader = _transport.open_safe_reader(
            self._address,
            start=self._start,
            capacity=self._capacity,
            spin=self._spin,
            max_cached=self._max_cached,
            resume=self._resume,
            create=self._create,
            log=self._logger,
        )
        try:
            self._reads_in_caller = reader.reads_in_caller
            self._collecting = True
            self._worker = Worker(f"pipebit-{self._name}-receiver", self._collect)
            self._reader = self._backend = reader
            self._worker.start()
        except BaseException:
            self._reader = self._backend = None
            reader.close(reader.position())
            raise
        self._register()
        self._log(f"connected (start={self._start})")

    def close_connection(self) -> None:
        """Detach from the pipe and stop caching.  Packets cached but not yet returned by
        ``receive()`` are let go (reconnecting reads them again, if the pipe still holds
        them); a ``receive()`` waiting in another thread raises :class:`PipeClosedError`.
        Idempotent; a second thread closing meanwhile waits for the first to finish.
        """
        with self._close_lock:
            self._close_receiver()

    def _close_receiver(self) -> None:
        if self._group is not None:
            self._close_member()
            return
        reader, worker = self._reader, self._worker
        if reader is None or worker is None:
            return
        with self._mutex:
            self._reader = self._backend = None  # receive() calls now fail, and waiting ones leave
            worker.stopping.set()
            self._cond.notify_all()
            self._retire_readiness()  # and so do waiting coroutines
        # Wake whoever waits on the pipe (the thread, or a receive() call) until the thread
        # has ended and no call holds the reader: then the reader can let the pipe go.
        deadline = time.monotonic() + 10.0
        while worker.alive and time.monotonic() < deadline:
            reader.interrupt()
            worker.stop(timeout=0.05)
        while not self._read_lock.acquire(timeout=0.05):
            reader.interrupt()
        try:
            with self._mutex:
                # Resume after the last packet receive() returned, not after the read-ahead.
                returned = self._cache_start if self._cache else reader.position()
                if self._problem_at:  # the dropped cache is read again, and the damage met again
                    self._problem = None
                    self._problem_at = 0
                self._cache = []
                self._cached_bytes = 0
            self._resume = reader.close(returned)
            self._closed()
        finally:
            self._read_lock.release()

    def _forget_after_fork(self) -> None:
        self._reader = self._worker = None
        if self._ready is not None:
            self._ready.forget()
            self._ready = None
        self._front.clear()  # the parent's
        self._forget_member_after_fork()
        self._clear_cache()
        self._new_locks()
        super()._forget_after_fork()

    def _counters(self) -> tuple[int, int]:
        with self._mutex:
            return self._returned, len(self._cache)

    def _size_text(self) -> str:
        reader = self._reader or self._member
        group = f" group={self._group!r}" if self._group is not None else ""
        return f"capacity={getattr(reader, 'capacity', 0)}{group}"

    # ------------------------------------------------------------- receiving
    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT, *, copy: bool = True) -> list[Packet]:
        """Return every packet received since the last call, oldest first (``[]`` if none).

        When none is waiting it waits for one: up to ``timeout`` seconds
        (default 0.1, so a ``while True: receive()`` loop sleeps instead of
        spinning), forever with ``None``, not at all with ``0``.  One call
        returns at most ``max_cached`` packets beyond those already cached, and
        stops reading the pipe after about 1 MiB of packets (at least one): the
        rest comes with the next call.

        Bytes in the pipe that do not decode (another process wrote them), or
        packets lost over Redis while this receiver could not check in, raise
        :class:`CorruptPacketError` or :class:`TransportError` once, after the
        packets before them have been returned; the next call goes on after them.

        A member of a receiver group first acknowledges what the last call returned,
        then returns the next batch it claims: packets handed back by a member that
        died first, else the next ones in send order.

        numpy arrays come back as arrays the application owns.  With ``copy=False``,
        an array of at least 4 KiB comes back as a **read-only view of the pipe's own
        memory** instead, with no copy: until the application drops it (and every array
        derived from it), the pipe counts its bytes as unread, so no sender overwrites
        them -- a receiver that keeps views holds its senders back, as one that does not
        read does.  Over Redis the view is of the bytes the server sent.  Smaller arrays
        are copied either way.
        """
        return self._handed(self._receive(timeout), copy)

    def _claims_in_calls(self) -> bool:
        return self._group is not None

    def _handed(self, packets: list[Packet], copy: bool) -> list[Packet]:
        reader = self._reader
        if packets and (reader is None or reader.framed):  # some packets may view the pipe
            packets = [release_views(p, copy) if type(p) is Held else p for p in packets]
        return packets

    def _receive(self, timeout: float | None) -> list[Packet]:
        # A request/reply exchange pays this per packet: one mutex round on the way in
        # (which also takes the pipe when it is free) and one on the way out.
        limit = (
            timeout
            if timeout is not None and timeout.__class__ in PLAIN_SECONDS and timeout >= 0
            else check_timeout(timeout)
        )
        if self._group is not None:  # what a cancelled areceive() claimed comes first
            return self._take_front() if self._front else self._receive_as_member(limit)
        with self._mutex:
            if self._front:  # left by `async for`: they come first
                return self._take_front()
            if self._cache:
                cached = self._take_cache()
                self._returned += len(cached)
                return cached
            reader = self._require_open()
            if self._problem is not None:
                self._take_cache()  # raises it
            assert self._worker is not None
            self._worker.check()
            if not self._reads_in_caller or self._ready is not None:  # only the caching thread reads
                return self._wait_for_cache(limit)
            self._callers += 1
            # Taken under the mutex with the cache empty, the pipe stays ours and the cache
            # empty: the caching thread only adds to the cache while it holds the read lock.
            handed_over = not self._read_lock.acquire(blocking=False)
        packets: list[Packet] = []
        try:
            if handed_over:
                reader.interrupt()  # the caching thread waits on the pipe: it hands over
                self._read_lock.acquire()
            try:
                packets = self._read_in_call(reader, limit, look_at_cache=handed_over)
                return packets
            finally:
                self._read_lock.release()
        finally:
            with self._mutex:
                self._callers -= 1
                self._last_call = time.monotonic()
                self._returned += len(packets)

    def __iter__(self) -> Iterator[Packet]:
        """Yield packets as they arrive, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch


class BitPackSender(SafeSender):
    """The original PipeBit name of :class:`SafeSender`: ``BitPackSender(name, size, override)``.

    ``size`` is the packet length the pipe enforces (``0``: any); ``override=True``
    discards the pipe's retained packets and applies ``size``; ``override=False``
    keeps the existing pipe, its size and its retained packets.
    """

    def __init__(
        self, name: str, size: int = 0, override: bool = False, debug: Union[int, bool] = 0, **options: Any
    ) -> None:
        super().__init__(name, debug, size=size, override=override, **options)


class BitPackReceiver(SafeReceiver):
    """The original PipeBit name of :class:`SafeReceiver`: ``BitPackReceiver(name)``."""

    def __init__(self, name: str, debug: Union[int, bool] = 0, **options: Any) -> None:
        super().__init__(name, debug, **options)
