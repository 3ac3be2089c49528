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

import collections
import os
import threading
import time
import warnings
from typing import Any, Iterator, List, Union

from . import _codec
from . import _layout as L
from ._endpoint import PLAIN_SECONDS, Endpoint, check_capacity, check_count, check_spin, check_timeout
from ._pipe import Pipe
from ._ring import MAX_RECORD_PACKETS, Aborted, RingReader, RingWriter, max_packet_bytes, start_position
from ._worker import Worker
from .errors import (
    InvalidArgumentError,
    PacketSizeError,
    PipeClosedError,
    PipeTimeoutError,
    UndeliveredPacketsWarning,
)

Packet = List[Any]

DEFAULT_QUEUE_SIZE = 8192
DEFAULT_FLUSH_TIMEOUT = 5.0
DEFAULT_RECEIVE_TIMEOUT = 0.1
DEFAULT_MAX_CACHED = 65536
DEFAULT_MAX_CACHED_BYTES = 64 << 20
QUEUE_BYTES = 1 << 20  # with queue_size, bounds what send() holds in memory
STARTS = ("unread", "oldest", "new")
# A send() that finds the queue empty, this long after the previous such send()
# ended, writes its packet into the ring itself rather than waking the delivery
# thread.  Calls in a tight loop come closer together than this and are batched.
SPARSE_NS = 5_000
_ONE_PACKET = _codec.array_header(1)
_monotonic_ns = time.monotonic_ns
_sched_yield = getattr(os, "sched_yield", lambda: None)  # releases the GIL as well
# The longest the caching thread sleeps before looking by itself.  Senders wake
# it at once; this only bounds the cost of a wake-up lost to a crash.
SLEEP_SLICE = 2.0
# After a receive() call returns, the caching thread leaves the ring to the
# application for this long, so a receive() loop reads with no thread hand-off.
HANDBACK = 0.02
# spin="auto": receive() polls up to this long before sleeping, but only while the
# packets it waited for came within this long (see SafeReceiver._read_ring).
AUTO_SPIN_NS = 50_000
# A poll looks without pause this long, then yields the CPU between looks.
POLL_BEFORE_YIELD = 10e-6
# A receive() call stops reading the ring once it has decoded this many bytes of records
# (it always takes at least one record).  An application frees what one call returned
# all at once; megabytes of big packets freed together make glibc hand the memory back
# to the system, and the next packets then fault in fresh pages (a 1 MiB packet stream
# here: 75 page faults and ~350 us of receiver CPU per packet, against 3 and ~90 us).
READ_BYTES = 1 << 20


class SafeSender(Endpoint):
    """Sends packets into a Safe pipe, creating the pipe if it does not exist.

    ``SafeSender(name, debug=0)`` connects at once.  Keyword-only options:

    * ``size`` -- packet length the pipe enforces (``0``: any).  Applied when this
      sender creates the pipe or overrides it; otherwise the pipe's rule stands.
    * ``override`` -- discard the packets the pipe retains and apply ``size``
      (receivers already attached keep what they are owed).  Changing the pipe's
      ``capacity`` this way needs it idle.
    * ``capacity`` -- ring bytes, when this sender creates the pipe (default 4 MiB).
    * ``queue_size`` -- packets ``send()`` may queue before it blocks.
    * ``flush_timeout`` -- seconds ``close_connection()`` (and interpreter exit)
      wait for queued packets to reach the pipe.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`
      instead of being created.
    """

    _role = "sender"
    _model = L.MODEL_SAFE

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
        self._size = None if size is None else check_count(size, "size", minimum=0)
        if not isinstance(override, (bool, int)):
            raise InvalidArgumentError(f"override must be True or False, not {override!r}")
        self._override = bool(override)
        self._capacity = check_capacity(capacity)
        self._queue_size = check_count(queue_size, "queue_size", minimum=1)
        self._flush_timeout = check_timeout(flush_timeout, "flush_timeout")
        self._set_mutex(threading.Lock())
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0  # as of the last _settle(): send()'s fast path counts down _credit instead
        self._credit = self._granted = 0  # see _grant()
        self._pack = _codec.new_packer()  # used under self._mutex only
        self._in_flight = 0
        self._sent = 0
        self._worker_idle = False
        self._last_direct = 0  # monotonic ns: when the last send() that found the queue empty ended
        self._blocked = 0
        self._abort = threading.Event()
        self._worker: Worker | None = None
        self._healthy = False  # open, and the delivery thread has not failed: send()'s one check
        self.open_connection()
        self._override = False  # applies to the first connection only

    # ------------------------------------------------------------ connection
    def open_connection(self) -> None:
        """Connect to the pipe (creating it if needed) and start the delivery thread.

        A no-op when already connected.
        """
        if self._pipe is not None:
            return
        pipe = self._connect(
            L.ROLE_SENDER,
            capacity=self._capacity,
            packet_len=self._size,
            override=self._override,
        )
        assert self._slot is not None
        try:
            self._writer = RingWriter(pipe, self._slot)
            self._header = pipe.header
            self._required = pipe.header[L.PACKET_LEN]
            self._slot_count = self._slot.base + L.S_COUNT
            self._max_packet = max_packet_bytes(pipe.capacity)
            self._batch_bytes = max(self._max_packet // 4, 1)
            self._queue_bytes = min(pipe.capacity, QUEUE_BYTES)  # one bigger packet still fits when empty
            self._abort.clear()
            self._worker = Worker(f"pipebit-{self._name}-sender", self._deliver)
            self._pipe = pipe
            self._healthy = True
            self._worker.start()
        except BaseException:
            self._abandon(pipe)
            raise
        self._register()
        self._log(f"connected (slot {self._slot.index})")

    def close_connection(self, timeout: float | None = None) -> None:
        """Deliver what is queued (waiting up to ``timeout``, default ``flush_timeout``), then
        disconnect.  Packets that could not be delivered in time are dropped with an
        :class:`UndeliveredPacketsWarning`.  Idempotent.
        """
        pipe = self._pipe
        if pipe is None:
            return
        limit = self._flush_timeout if timeout is None else check_timeout(timeout)
        worker, slot = self._worker, self._slot
        assert worker is not None
        assert slot is not None
        with self._mutex:
            self._healthy = False  # no more send()s: what is queued now is all there is to flush
        self._wait_delivered(limit, report=False)
        self._abort.set()
        with self._mutex:
            worker.stopping.set()
            self._cond.notify_all()
        ended = worker.stop(timeout=10.0)
        with self._mutex:
            lost = len(self._queue) + self._in_flight
            self._queue.clear()
            self._queued_bytes = self._in_flight = self._credit = self._granted = 0
            self._cond.notify_all()
        self._pipe = None
        self._disconnected(pipe, slot)
        # Not "not delivered": a batch the ring took while we stopped counts as delivered.
        if lost or not ended:
            warnings.warn(
                f"pipe {self._name!r}: {lost} packet(s) were not delivered before the sender closed "
                f"(waited {limit}s; a receiver that is alive but not reading keeps the pipe full)",
                UndeliveredPacketsWarning,
                stacklevel=2,
            )

    def _forget_after_fork(self) -> None:
        pipe, slot = self._pipe, self._slot
        self._pipe = self._slot = self._worker = None
        self._healthy = False
        self._queue = collections.deque()
        self._queued_bytes = self._in_flight = self._credit = self._granted = 0
        self._set_mutex(threading.Lock())
        self._drop_inherited(pipe, slot)

    def _set_mutex(self, mutex: threading.Lock) -> None:
        """The lock over the queue and the counters, and the condition the delivery thread waits on."""
        self._mutex = mutex
        self._lock, self._unlock = mutex.acquire, mutex.release
        self._cond = threading.Condition(mutex)

    def _counters(self) -> tuple[int, int, int]:
        assert self._slot is not None
        with self._mutex:
            return self._slot.index, self._sent, len(self._queue) + self._in_flight

    # --------------------------------------------------------------- sending
    def send(self, data: Union[List[Any], tuple[Any, ...]], timeout: float | None = None) -> None:
        """Queue ``data`` (a list or tuple) for delivery and return.

        The packet is encoded now, so later changes to ``data`` do not affect it,
        and a value PipeBit cannot carry raises :class:`PacketTypeError` here.
        Blocks only while the send queue is full: ``timeout=None`` waits as long
        as it takes, otherwise :class:`PipeTimeoutError` after ``timeout`` seconds.
        """
        # The hot path of the library: every line here is paid per packet.
        kind = data.__class__
        if kind is not list and kind is not tuple and not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        required = self._required
        if required and len(data) != required:
            raise PacketSizeError(f"pipe {self._name!r} carries packets of {required} elements, got {len(data)}")
        self._lock()  # acquire()/release() rather than "with": half the cost, on every packet
        try:
            if not self._healthy:  # closed, forked, or the delivery thread failed
                self._raise_unhealthy()
            try:
                encoded = self._pack(data)  # the snapshot: later changes to data do not matter
            except Exception as exc:
                error = _codec.encoding_error(exc)
                if error is exc:
                    raise
                raise error from exc
            # The common case in a stream: the packet fits the credit _grant() left, so the
            # queue has room, the packet is not too big and the delivery thread is awake.
            credit = self._credit - len(encoded)
            if credit >= 0:
                self._credit = credit
                self._queue.append(encoded)
            else:
                self._enqueue(encoded, timeout)
        finally:
            self._unlock()

    def _enqueue(self, encoded: bytes, timeout: float | None) -> None:
        """send()'s other cases, under the mutex: a packet too big, a full queue, an idle thread."""
        self._settle()
        n = len(encoded)
        if n > self._max_packet:
            raise PacketSizeError(
                f"packet encodes to {n} bytes; pipe {self._name!r} carries at most {self._max_packet} "
                f"bytes per packet.  A pipe's capacity is set when it is created: pass a larger capacity "
                f"in every process and recreate the pipe, with override=True on a sender while no other "
                f"process is attached, or by removing it first (`pipebit rm {self._name}`)"
            )
        queue = self._queue
        if queue:
            if self._no_room_for(n):
                self._wait_for_room(n, timeout)
                queue = self._queue
        elif self._worker_idle and self._commit_sparse(encoded):
            return
        queue.append(encoded)
        self._queued_bytes += n
        if self._worker_idle:
            self._worker_idle = False
            self._cond.notify()
        self._grant()

    def _grant(self) -> None:
        """Give send()'s fast path a credit of bytes to queue without the slow checks.

        Under the mutex, with a packet just queued (so the delivery thread is awake).
        Every encoded packet is at least one byte, so a credit no larger than the room
        left in packets, in bytes, and than the largest packet keeps every bound however
        the fast path spends it.  Whoever reads or changes ``_queued_bytes`` settles first.
        """
        room = min(self._queue_bytes - self._queued_bytes, self._queue_size - len(self._queue), self._max_packet)
        if room > 0:
            self._credit = self._granted = room

    def _no_room_for(self, n: int) -> bool:
        """Whether the queue is full for a packet of ``n`` bytes (settled; under the mutex).
        An empty queue always takes one packet, however big."""
        queue = self._queue
        return len(queue) >= self._queue_size or bool(queue and self._queued_bytes + n > self._queue_bytes)

    def _settle(self) -> None:
        """Count what the fast path queued on credit into ``_queued_bytes``; no credit is left."""
        self._queued_bytes += self._granted - self._credit
        self._credit = self._granted = 0

    def _commit_sparse(self, encoded: bytes) -> bool:
        """Write a lone packet straight into the ring, if traffic is sparse and there is room.

        Called under the mutex with the queue empty and the delivery thread idle
        (so the ring writer is ours).  A packet that follows the previous one
        closely is left to the delivery thread instead, which batches a burst
        into few records; one that comes alone skips the thread hand-off, which
        is most of the latency of a request/reply exchange.
        """
        now = _monotonic_ns()
        if now - self._last_direct < SPARSE_NS or not self._writer.try_commit(_ONE_PACKET, 1, rest=encoded):
            self._last_direct = now
            return False
        self._last_direct = _monotonic_ns()  # the gap to the next send() counts from here
        self._sent += 1
        self._header[self._slot_count] += 1
        return True

    def _raise_unhealthy(self) -> None:
        self._require_pipe()
        if self._worker is not None:
            self._worker.check()
        raise PipeClosedError(f"sender of pipe {self._name!r} is closing: close_connection() was called")

    def _wait_for_room(self, n: int, timeout: float | None) -> None:
        # Called with the mutex held.
        deadline = None if timeout is None else time.monotonic() + check_timeout(timeout)  # type: ignore[operator]
        self._blocked += 1
        try:
            while True:
                if not self._healthy:  # closing (or closed, or the delivery thread failed): the
                    self._raise_unhealthy()  # packet is not accepted, and the caller is told so
                self._settle()  # another thread may have queued on credit meanwhile
                if not self._no_room_for(n):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PipeTimeoutError(
                        f"send() waited {timeout}s for room in the queue of pipe {self._name!r}; "
                        "its receivers are not keeping up"
                    )
                self._cond.wait(remaining if remaining is not None else 0.5)
        finally:
            self._blocked -= 1

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every packet sent so far is in the pipe (not necessarily read).

        :class:`PipeTimeoutError` after ``timeout`` seconds; ``None`` waits as long as it takes.
        """
        self._require_pipe()
        if not self._wait_delivered(check_timeout(timeout), report=True):
            raise PipeTimeoutError(
                f"flush() waited {timeout}s; {len(self._queue) + self._in_flight} packet(s) of pipe "
                f"{self._name!r} are not delivered yet (its receivers are not keeping up)"
            )

    def _wait_delivered(self, timeout: float | None, *, report: bool) -> bool:
        """Wait for an empty queue; ``False`` on timeout or a dead delivery thread, whose
        error is raised if ``report``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            while self._queue or self._in_flight:
                if self._worker is not None and not self._worker.alive:
                    if report:
                        self._worker.check()
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def _deliver(self, stopping: threading.Event) -> None:
        """The delivery thread: move queued packets into the ring, a batch per record."""
        try:
            self._deliver_batches(stopping)
        except BaseException:
            self._healthy = False  # send() finds out at its next call; Worker keeps the error
            raise

    def _deliver_batches(self, stopping: threading.Event) -> None:
        writer = self._writer
        abort = self._abort.is_set
        batch_bytes = self._batch_bytes
        header = self._header
        while True:
            with self._mutex:
                while not self._queue:
                    if stopping.is_set():
                        return
                    self._worker_idle = True
                    self._cond.notify_all()  # flushers wait for an empty queue
                    self._cond.wait()
                self._worker_idle = False
                self._settle()
                queue = self._queue
                if len(queue) <= MAX_RECORD_PACKETS and self._queued_bytes <= batch_bytes:
                    batch, size = queue, self._queued_bytes  # all of it: swap, do not copy
                    self._queue = collections.deque()
                else:
                    batch = collections.deque([queue.popleft()])
                    size = len(batch[0])
                    while queue and len(batch) < MAX_RECORD_PACKETS and size + len(queue[0]) <= batch_bytes:
                        item = queue.popleft()
                        batch.append(item)
                        size += len(item)
                self._queued_bytes -= size
                self._in_flight = count = len(batch)
                if self._blocked:
                    self._cond.notify_all()
            try:
                if count == 1:  # often a big packet: spare it the copy a join would make
                    writer.commit(_codec.array_header(1), 1, abort, rest=batch[0])
                else:
                    writer.commit(_codec.join_batch(batch), count, abort)
            except Aborted:
                return
            with self._mutex:
                self._in_flight = 0
                self._sent += count
                header[self._slot_count] += count
                self._required = header[L.PACKET_LEN]  # another sender's override may change it


class SafeReceiver(Endpoint):
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

    Who reads the ring: a ``receive()`` call reads it itself (and sleeps on it
    itself), so a waiting application gets a packet with no thread hand-off.
    When the application has not been in ``receive()`` for a few milliseconds,
    the background thread reads ahead into the cache instead, so senders are
    not held back while the application is busy elsewhere.
    """

    _role = "receiver"
    _model = L.MODEL_SAFE

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: str = "unread",
        capacity: int | None = None,
        max_cached: int = DEFAULT_MAX_CACHED,
        max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
        spin: Union[float, str] = "auto",
        create: bool = True,
    ) -> None:
        super().__init__(name, debug, create)
        if start not in STARTS:
            raise InvalidArgumentError(f"start must be 'unread', 'oldest' or 'new', not {start!r}")
        self._start = start
        self._capacity = check_capacity(capacity)
        self._max_cached = check_count(max_cached, "max_cached", minimum=1)
        self._max_cached_bytes = check_count(max_cached_bytes, "max_cached_bytes", minimum=1)
        self._spin = check_spin(spin)  # None: "auto"
        self._quick = False  # "auto": the last packet waited for came within AUTO_SPIN_NS
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._cache: list[Packet] = []
        self._cached_bytes = 0  # ring bytes of the records in the cache
        self._reader_blocked = False
        # Whoever holds the read lock may use the ring reader: a receive() call, or
        # the caching thread.  The thread gives way while calls are in progress and
        # for HANDBACK seconds after the last one.
        self._read_lock = threading.Lock()
        self._callers = 0
        self._last_call = 0.0
        # Damage met in the ring, raised by receive() once the packets before it are returned:
        # the first _problem_at cached packets come first.  While one waits, no more is cached.
        self._problem: Exception | None = None
        self._problem_at = 0
        self._problem_end = (0, 0)  # (cursor, next_seq) after the damaged record
        self._cache_start = (0, 0)  # (cursor, next_seq) of the first cached packet
        self._worker: Worker | None = None
        self._resume: tuple[int, int, int] | None = None  # (created_ns, cursor, next_seq)
        self._returned = 0
        self.open_connection()

    # ------------------------------------------------------------ connection
    def open_connection(self) -> None:
        """Attach to the pipe (creating it if needed) and start caching packets.

        After a ``close_connection()``, reconnecting resumes where this receiver
        stopped if the pipe still retains those packets.  A no-op when connected.
        """
        if self._pipe is not None:
            return
        resume = self._resume

        def place(pipe: Pipe, base: int) -> None:
            h = pipe.header
            if resume is not None and resume[0] == pipe.created_ns and h[L.TAIL] <= resume[1] <= h[L.HEAD]:
                cursor, seq = resume[1], resume[2]
            else:
                cursor, seq = start_position(pipe, self._start)
            h[base + L.S_CURSOR] = cursor
            h[base + L.S_NEXT_SEQ] = seq

        pipe = self._connect(
            L.ROLE_RECEIVER,
            place,
            capacity=self._capacity,
            packet_len=None,
            override=False,
        )
        assert self._slot is not None
        try:
            self._reader = RingReader(pipe, self._slot)
            self._worker = Worker(f"pipebit-{self._name}-receiver", self._collect)
            self._pipe = pipe
            self._worker.start()
        except BaseException:
            self._abandon(pipe)
            raise
        self._register()
        self._log(f"connected (slot {self._slot.index}, start={self._start})")

    def close_connection(self) -> None:
        """Detach from the pipe and stop caching.  Packets cached but not yet returned by
        ``receive()`` are discarded; a ``receive()`` waiting in another thread raises
        :class:`PipeClosedError`.  Idempotent.
        """
        pipe = self._pipe
        if pipe is None:
            return
        worker, slot, reader = self._worker, self._slot, self._reader
        assert worker is not None
        assert slot is not None
        with self._mutex:
            self._pipe = None  # receive() calls now fail, and waiting ones leave when woken
            worker.stopping.set()
            self._cond.notify_all()
        # Wake whoever sleeps on the ring (the thread, or a receive() call) until the
        # thread has ended and no call holds the reader: then the ring can be unmapped.
        deadline = time.monotonic() + 10.0
        while worker.alive and time.monotonic() < deadline:
            reader.interrupt()
            worker.stop(timeout=0.05)
        while not self._read_lock.acquire(timeout=0.05):
            reader.interrupt()
        try:
            # Resume after the last packet receive() returned: what was cached and not yet
            # returned is read again on reconnecting (if the pipe still holds it).
            cursor, seq = self._cache_start if self._cache else (reader.cursor, reader.next_seq)
            self._resume = (pipe.created_ns, cursor, seq)
            with pipe.lock:  # before the slot is let go: an "unread" start must see one or the other
                pipe.mark_read(cursor)
            with self._mutex:
                if self._problem_at:  # the discarded cache is read again, and the damage met again
                    self._problem = None
                self._cache = []
                self._cached_bytes = 0
            if pipe.header[L.WRITERS_WAITING]:  # our cursor no longer holds them back
                pipe.writer_semaphore().release()
            self._disconnected(pipe, slot)
        finally:
            self._read_lock.release()

    def _forget_after_fork(self) -> None:
        pipe, slot = self._pipe, self._slot
        self._pipe = self._slot = self._worker = None
        self._cache = []
        self._cached_bytes = 0
        self._problem = None
        self._callers = 0
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._read_lock = threading.Lock()
        self._drop_inherited(pipe, slot)

    # ------------------------------------------------------------- receiving
    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT) -> list[Packet]:
        """Return every packet received since the last call, oldest first (``[]`` if none).

        When none is waiting it waits for one: up to ``timeout`` seconds
        (default 0.1, so a ``while True: receive()`` loop sleeps instead of
        spinning), forever with ``None``, not at all with ``0``.  One call
        returns at most ``max_cached`` packets beyond those already cached, and
        stops reading the pipe after about 1 MiB of packets (at least one): the
        rest comes with the next call.
        """
        # A request/reply exchange pays this per packet: one mutex round on the way in
        # (which also takes the ring when it is free) and one on the way out.
        limit = (
            timeout
            if timeout is not None and timeout.__class__ in PLAIN_SECONDS and timeout >= 0
            else check_timeout(timeout)
        )
        with self._mutex:
            if self._cache:
                cached = self._take_cache()
                self._returned += len(cached)
                return cached
            self._require_pipe()
            if self._problem is not None:
                self._take_cache()  # raises it
            assert self._worker is not None
            self._worker.check()
            self._callers += 1
            # Taken under the mutex with the cache empty, the ring stays ours and the cache
            # empty: the caching thread only adds to the cache while it holds the read lock.
            handed_over = not self._read_lock.acquire(blocking=False)
        packets: list[Packet] = []
        try:
            if handed_over:
                self._reader.interrupt()  # the caching thread sleeps on the ring: it hands over
                self._read_lock.acquire()
            try:
                packets = self._read_ring(limit, look_at_cache=handed_over)
                return packets
            finally:
                self._read_lock.release()
        finally:
            with self._mutex:
                self._callers -= 1
                self._last_call = time.monotonic()
                self._returned += len(packets)

    def _take_cache(self) -> list[Packet]:
        """What receive() returns from the cache: all of it, or the packets before damage met
        after them.  Raises the damage's error when it is next.  Under the mutex; the caller
        counts the packets as returned."""
        if self._reader_blocked:
            self._cond.notify_all()
        problem = self._problem
        if problem is None:
            packets = self._cache
            self._cache = []
            self._cached_bytes = 0
            return packets
        cut = self._problem_at
        if cut == 0:
            self._problem = None
            raise problem
        packets, self._cache = self._cache[:cut], self._cache[cut:]
        self._problem_at = 0
        self._cache_start = self._problem_end
        if not self._cache:
            self._cached_bytes = 0
        return packets

    def _read_ring(self, limit: float | None, *, look_at_cache: bool) -> list[Packet]:
        """Read the ring in the caller's thread, waiting up to ``limit``.  Holds the read lock.

        ``look_at_cache``: first return what the caching thread read before it handed
        over the ring (after each wait this is looked at anyway).
        """
        deadline = None if limit is None else time.monotonic() + limit
        reader = self._reader
        while True:
            if look_at_cache:
                with self._mutex:
                    self._require_pipe()  # closed while we waited
                    if self._cache or self._problem is not None:  # the thread read that first
                        return self._take_cache()
            look_at_cache = True
            packets = reader.read(self._max_cached, READ_BYTES)
            if reader.problem is not None:  # raised now, or by the next call, after these packets
                if not packets:
                    raise reader.problem
                with self._mutex:
                    self._problem, self._problem_at = reader.problem, 0
            if packets:
                return packets
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._quick = False
                return []
            spin = self._spin
            if spin is None:  # "auto": poll only while polling has been paying off
                waited_from = time.time_ns()
                if self._quick and self._poll(reader, AUTO_SPIN_NS / 1e9, remaining):
                    continue
                if reader.wait(SLEEP_SLICE if remaining is None else min(remaining, SLEEP_SLICE)):
                    # Would a poll have caught it?  The ring says when the newest record went in.
                    self._quick = reader.last_write_ns() - waited_from <= AUTO_SPIN_NS
                else:
                    self._quick = False
                continue
            if spin and self._poll(reader, spin, remaining):
                continue
            reader.wait(SLEEP_SLICE if remaining is None else min(remaining, SLEEP_SLICE))

    @staticmethod
    def _poll(reader: RingReader, spin: float, remaining: float | None) -> bool:
        """Watch the ring for up to ``spin`` seconds; ``True`` if a record arrived.

        After the first few microseconds, each look is followed by sched_yield(2),
        which lets any other runnable process (on a busy machine, perhaps the very
        sender being waited for) have the CPU, and costs a microsecond or so when
        there is none.
        """
        clock = time.perf_counter
        now = clock()
        until = now + (spin if remaining is None else min(spin, remaining))
        polite = now + POLL_BEFORE_YIELD
        available = reader.available
        pause = _sched_yield
        while now < until:
            if available():
                return True
            if now > polite:
                pause()
            now = clock()
        return False

    def _counters(self) -> tuple[int, int, int]:
        assert self._slot is not None
        with self._mutex:
            return self._slot.index, self._returned, len(self._cache)

    def __iter__(self) -> Iterator[Packet]:
        """Yield packets as they arrive, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch

    def _collect(self, stopping: threading.Event) -> None:
        """The caching thread: while the application is not in receive(), read ahead
        into the cache until it is full."""
        reader = self._reader
        while not stopping.is_set():
            with self._mutex:
                while not stopping.is_set():
                    idle = time.monotonic() - self._last_call
                    if self._callers or idle < HANDBACK:  # the application reads for itself
                        self._cond.wait(HANDBACK if self._callers else HANDBACK - idle)
                    elif (
                        len(self._cache) >= self._max_cached
                        or self._cached_bytes >= self._max_cached_bytes
                        or self._problem is not None  # reported before reading on: one at a time
                    ):
                        self._reader_blocked = True
                        self._cond.wait(0.5)
                    else:
                        break
                self._reader_blocked = False
                room = self._max_cached - len(self._cache)
                byte_room = self._max_cached_bytes - self._cached_bytes
            with self._read_lock:
                if stopping.is_set() or self._callers:
                    continue
                start = (reader.cursor, reader.next_seq)
                packets = reader.read(room, byte_room)
                problem = reader.problem
                if packets or problem is not None:
                    with self._mutex:
                        if not self._cache:
                            self._cache_start = start
                        self._cache += packets
                        self._cached_bytes += reader.bytes_read
                        if problem is not None:  # for receive() to raise after these packets
                            self._problem, self._problem_at = problem, len(self._cache)
                            self._problem_end = (reader.cursor, reader.next_seq)
                elif not self._callers:
                    reader.wait(SLEEP_SLICE)


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
