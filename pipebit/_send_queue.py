"""A Safe sender's bounded queue and the thread that delivers it, whatever the transport.

:class:`SendQueue` is the part of :class:`pipebit.SafeSender` that sits between
``send()`` and the back-end: a queue bounded in packets and in bytes (so memory
stays bounded however fast the application sends), the credit that lets
``send()`` skip the bound checks while a stream flows, and the delivery thread
that moves batches to the back-end's ``commit_batch()`` -- or, for a lone packet
while the thread is idle, the back-end's ``commit_now()`` from ``send()`` itself.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Callable

from . import _codec
from ._async import AsyncSending
from ._frames import LIFT_BYTES, Buffer, OutOfBand, has_large_buffer
from ._limits import MAX_RECORD_PACKETS, Sendable, check_timeout, too_big
from ._transport import SafeWriter
from ._worker import Worker
from .errors import PipeClosedError, PipeTimeoutError

# A send() that finds the queue empty, this long after the previous such send()
# ended, writes its packet into the pipe itself rather than waking the delivery
# thread.  Calls in a tight loop come closer together than this and are batched.
SPARSE_NS = 5_000
ONE_PACKET = _codec.array_header(1)
# While packets are large, send() looks in each for large bytes to send out of band
# (_pack_looking); this many small packets in a row and it stops looking.
SMALL_TO_STOP_LOOKING = 16


class Framed(bytes):
    """A queued framed record (a packet holding a large array, :mod:`pipebit._frames`): the
    snapshot of its whole payload, delivered as a record of its own, never in a batch."""

    __slots__ = ()


_monotonic_ns = time.monotonic_ns


class SendQueue(AsyncSending):
    """The queue, its credit and its delivery thread (see the module's docstring).

    Attributes are set by :meth:`_init_queue` (once) and :meth:`_start_delivery` (per
    connection); the face holds the rest.
    """

    _pack: Callable[[object], bytes]  # what send() packs with: _pack_plain, or _pack_looking
    _pack_plain: Callable[[object], bytes]
    _small_in_a_row: int  # small packets _pack_looking() has packed since the last large one
    _queue: collections.deque[bytes]
    _queued_bytes: int  # as of the last _settle(): send()'s fast path counts down _credit instead
    _credit: int  # see _grant()
    _granted: int
    _in_flight: int
    _sent: int
    _worker_idle: bool
    _last_direct: int  # monotonic ns: when the last send() that found the queue empty ended
    _blocked: int
    _queue_size: int
    _queue_bytes: int
    _max_packet: int
    _capacity_now: int
    _batch_bytes: int
    _required: int
    _inline: bool
    _healthy: bool  # open, and the delivery thread has not failed: send()'s one check
    _abort: threading.Event
    _worker: Worker | None
    _writer: SafeWriter | None
    _framed: int  # Framed records in the queue: _take_batch() ends a batch before each
    _direct: bool  # a send() writes a framed record itself (_commit_in_send)
    # Coroutines waiting for room or for delivery (asend(), aflush()): each a function that
    # wakes one through its loop, called once by the delivery thread when the queue moves.
    _async_wakers: list[Callable[[], None]]

    def _init_queue(self, queue_size: int) -> None:
        self._pack = self._pack_plain = _codec.new_safe_packer()  # used under the mutex only
        self._small_in_a_row = 0
        self._queue_size = queue_size
        self._set_mutex(threading.RLock())
        self._queue = collections.deque()
        self._queued_bytes = self._credit = self._granted = self._framed = 0
        self._direct = False
        self._in_flight = self._sent = self._blocked = self._last_direct = 0
        self._worker_idle = self._healthy = False
        self._abort = threading.Event()
        self._worker = None
        self._writer = None
        self._async_wakers = []

    def _reset_queue(self) -> None:
        """In a forked child: the parent's queue and locks are the parent's."""
        self._writer = self._worker = None
        self._healthy = False
        self._queue = collections.deque()
        self._queued_bytes = self._in_flight = self._credit = self._granted = self._framed = 0
        self._async_wakers = []
        self._set_mutex(threading.RLock())

    def _enqueue(self, encoded: bytes, timeout: float | None) -> None:
        """send()'s other cases, under the mutex: a packet too big, a full queue, an idle thread."""
        self._settle()
        n = len(encoded)
        if n > self._max_packet:
            raise too_big(self._shown, n, self._max_packet, what="capacity", setting=self._capacity_now)
        if n >= LIFT_BYTES:
            self._pack = self._pack_looking
            self._small_in_a_row = 0
        queue = self._queue
        if queue:
            if self._no_room_for(n):
                self._wait_for_room(n, timeout)
                queue = self._queue
        elif self._worker_idle and self._inline and self._commit_sparse(encoded):
            return
        queue.append(encoded)
        self._queued_bytes += n
        if self._worker_idle:
            self._worker_idle = False
            self._cond.notify()
        self._grant()

    def _pack_looking(self, data: object) -> bytes:
        """send()'s packer while packets are large: one holding a large ``bytes`` or
        ``bytearray`` raises :class:`OutOfBand`, so that it goes as a framed record and its
        bytes are copied once, into the pipe -- packed, they would be copied into the
        packer's buffer, into the packet's ``bytes`` and into the pipe.  The packer only
        learns that a packet is large by packing it, and looking costs a walk of the
        packet: so the first large packet switches looking on (:meth:`_enqueue`), and
        :data:`SMALL_TO_STOP_LOOKING` small ones in a row switch it off."""
        if has_large_buffer(data):
            raise OutOfBand
        encoded = self._pack_plain(data)
        if len(encoded) >= LIFT_BYTES:
            self._small_in_a_row = 0
        else:
            self._small_in_a_row += 1
            if self._small_in_a_row >= SMALL_TO_STOP_LOOKING:
                self._pack = self._pack_plain
        return encoded

    def _send_framed(self, data: object, timeout: float | None) -> None:
        """send() for a packet holding a large array or ``bytes``, under the mutex: a framed
        record of its own.  With the queue empty and the delivery thread idle it goes
        straight into the pipe if there is room -- their one copy; otherwise its snapshot
        is queued."""
        parts, size = _codec.frame_packet(data)  # type: ignore[arg-type]  # send() checked the type
        self._settle()
        if size > self._max_packet:
            raise too_big(self._shown, size, self._max_packet, what="capacity", setting=self._capacity_now)
        queue = self._queue
        writer = self._writer
        assert writer is not None  # send() found the sender healthy, under this same mutex
        if not queue and self._worker_idle and self._inline:
            if writer.commit_now(b"", 1, parts):
                self._sent += 1
                return
            if size > self._queue_bytes:  # it would fill the queue alone: wait for the pipe here
                self._commit_in_send(parts, timeout)
                return
        if queue and self._no_room_for(size):
            self._wait_for_room(size, timeout)
            queue = self._queue
        queue.append(Framed(b"".join(parts)))  # the snapshot: later changes to the array do not matter
        self._queued_bytes += size
        self._framed += 1
        if self._worker_idle:
            self._worker_idle = False
            self._cond.notify()
        self._grant()

    def _commit_in_send(self, parts: list[Buffer], timeout: float | None) -> None:
        """Write a framed record bigger than the queue's byte bound from send() itself, once the
        pipe has room: its one copy, where queueing it would make two (its snapshot, then the
        record).  Called under the mutex (held once) with the queue empty and the delivery
        thread idle; the mutex is let go while it waits, as it is while the queue is full, and
        the delivery thread leaves the writer alone meanwhile (``_direct``) -- packets sent
        meanwhile queue behind this one."""
        limit = check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        writer = self._writer
        assert writer is not None
        abort = self._abort

        class Until:  # what the writer's wait checks: closing, or the timeout
            @staticmethod
            def is_set() -> bool:
                return abort.is_set() or not self._healthy or (deadline is not None and time.monotonic() > deadline)

        self._direct = True
        self._blocked += 1
        self._unlock()
        try:
            written = writer.commit_batch(b"", 1, Until, parts)  # type: ignore[arg-type]  # an Event's is_set() is all it calls
        finally:
            self._lock()
            self._direct = False
            self._blocked -= 1
            self._cond.notify_all()
        if written:
            self._sent += 1
            return
        if not self._healthy:
            self._raise_unhealthy()
        raise PipeTimeoutError(
            f"send() waited {timeout}s for room in pipe {self._shown!r} for a packet of {sum(map(len, parts))} "
            "bytes; its receivers are not keeping up"
        )

    def _grant(self) -> None:
        """Give send()'s fast path a credit of bytes to queue without the slow checks.

        Under the mutex, with a packet just queued (so the delivery thread is awake).
        Every encoded packet is at least one byte, so a credit no larger than the room
        left in packets, in bytes, and than the largest packet keeps every bound however
        the fast path spends it.  Whoever reads or changes ``_queued_bytes`` settles first.
        A credit under :data:`LIFT_BYTES` sends every large packet through :meth:`_enqueue`,
        which switches on looking for large ``bytes`` (:meth:`_pack_looking`).
        """
        room = min(
            self._queue_bytes - self._queued_bytes,
            self._queue_size - len(self._queue),
            self._max_packet,
            LIFT_BYTES - 1,
        )
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
        """Deliver a lone packet from send() itself, if traffic is sparse and the pipe has room.

        Called under the mutex with the queue empty and the delivery thread idle
        (so the writer is ours).  A packet that follows the previous one closely
        is left to the delivery thread instead, which batches a burst into few
        records; one that comes alone skips the thread hand-off, which is most of
        the latency of a request/reply exchange.
        """
        now = _monotonic_ns()
        writer = self._writer
        assert writer is not None  # send() found the sender healthy, under this same mutex
        if now - self._last_direct < SPARSE_NS or not writer.commit_now(ONE_PACKET, 1, encoded):
            self._last_direct = now
            return False
        self._last_direct = _monotonic_ns()  # the gap to the next send() counts from here
        self._sent += 1
        return True

    def _raise_unhealthy(self) -> None:
        self._require_open()
        if self._worker is not None:
            self._worker.check()
        raise PipeClosedError(f"sender of pipe {self._shown!r} is closing: close_connection() was called")

    def _wait_for_room(self, n: int, timeout: float | None) -> None:
        # Called with the mutex held.  Closing is looked at before room, at every wake-up:
        # once close_connection() has begun, what is queued is all it delivers or counts
        # as lost, so a packet let in then would vanish uncounted.
        limit = check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        self._blocked += 1
        try:
            while True:
                if not self._healthy:
                    self._raise_unhealthy()
                self._settle()  # another thread may have queued on credit meanwhile
                if not self._no_room_for(n):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PipeTimeoutError(
                        f"send() waited {timeout}s for room in the queue of pipe {self._shown!r}; "
                        "its receivers are not keeping up"
                    )
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        finally:
            self._blocked -= 1

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
        """The delivery thread: move queued packets into the pipe, a batch at a time."""
        try:
            self._deliver_batches(stopping)
        except BaseException:
            self._healthy = False  # send() finds out at its next call; Worker keeps the error
            with self._mutex:
                self._wake_async()
            raise

    def _deliver_batches(self, stopping: threading.Event) -> None:
        writer = self._writer
        assert writer is not None
        abort = self._abort
        batch_bytes = self._batch_bytes
        idle_interval = writer.idle_interval
        while True:
            with self._mutex:
                idle = False
                while not self._queue or self._direct:  # _direct: send() has the writer
                    if stopping.is_set():
                        return
                    self._worker_idle = True
                    self._cond.notify_all()  # flushers wait for an empty queue
                    if self._async_wakers:
                        self._wake_async()
                    if not self._cond.wait(idle_interval) and not self._queue:
                        idle = True  # a whole interval without a packet
                        break
                self._worker_idle = False
                if not idle:
                    batch = self._take_batch(batch_bytes)
                    self._in_flight = count = len(batch)
                    if self._blocked:
                        self._cond.notify_all()
                    if self._async_wakers:  # room for asend()
                        self._wake_async()
            if idle:
                writer.idle()
                continue
            if count == 1:  # often a big packet: spare it the copy a join would make
                item = batch[0]
                delivered = writer.commit_batch(b"" if type(item) is Framed else ONE_PACKET, 1, abort, item)
            else:
                delivered = writer.commit_batch(_codec.join_batch(batch), count, abort)
            if not delivered:
                return  # aborted: close_connection() counts what was in flight
            with self._mutex:
                self._in_flight = 0
                self._sent += count
                self._required = writer.packet_len  # another sender's override may change it

    # ------------------------------------------------------------ coroutines
    if TYPE_CHECKING:

        def send(self, data: Sendable, timeout: float | None = None) -> None: ...  # the face's

    def _wake_async(self) -> None:
        """Wake every coroutine waiting on the queue (under the mutex); each looks again."""
        wakers, self._async_wakers = self._async_wakers, []
        for wake in wakers:
            wake()

    def _send_or_watch(self, data: Sendable, wake: Callable[[], None] | None) -> bool:
        with self._mutex:  # reentrant: send() takes it too; a wake-up cannot slip in between
            try:
                self.send(data, 0)
            except PipeTimeoutError:  # the queue is full: only that waits
                if wake is not None:
                    self._async_wakers.append(wake)
                return False
        return True

    def _delivered_or_watch(self, wake: Callable[[], None]) -> bool:
        with self._mutex:
            if not self._healthy:
                self._raise_unhealthy()
            if not self._queue and not self._in_flight:
                return True
            self._async_wakers.append(wake)
        return False

    def _unwatch(self, wake: Callable[[], None]) -> None:
        with self._mutex:
            if wake in self._async_wakers:
                self._async_wakers.remove(wake)

    def _take_batch(self, batch_bytes: int) -> collections.deque[bytes]:
        """Take the next batch off the queue (under the mutex): all of it when it is small
        enough, else as many packets as fit ``batch_bytes`` (at least one)."""
        self._settle()
        queue = self._queue
        writer = self._writer
        most = writer.batch_packets if writer is not None else MAX_RECORD_PACKETS
        if self._framed:  # a framed record is a batch of its own
            return self._take_batch_to_framed(batch_bytes, most)
        if len(queue) <= most and self._queued_bytes <= batch_bytes:
            batch, size = queue, self._queued_bytes  # all of it: swap, do not copy
            self._queue = collections.deque()
        else:
            batch = collections.deque([queue.popleft()])
            size = len(batch[0])
            while queue and len(batch) < most and size + len(queue[0]) <= batch_bytes:
                item = queue.popleft()
                batch.append(item)
                size += len(item)
        self._queued_bytes -= size
        return batch

    def _take_batch_to_framed(self, batch_bytes: int, most: int) -> collections.deque[bytes]:
        """:meth:`_take_batch` with a framed record queued: the packets before it, or it alone."""
        queue = self._queue
        first = queue.popleft()
        batch = collections.deque([first])
        size = len(first)
        if type(first) is Framed:
            self._framed -= 1
        else:
            while queue and len(batch) < most and type(queue[0]) is not Framed:
                if size + len(queue[0]) > batch_bytes:
                    break
                item = queue.popleft()
                batch.append(item)
                size += len(item)
        self._queued_bytes -= size
        return batch

    def _set_mutex(self, mutex: threading.RLock) -> None:
        """The lock over the queue and the counters, and the condition the delivery thread waits
        on.  Reentrant only so that ``send()`` can tell whether it holds it (``_owned``)."""
        self._mutex = mutex
        self._lock, self._unlock = mutex.acquire, mutex.release
        self._owned = mutex._is_owned  # type: ignore[attr-defined]  # private, but what Condition uses too
        self._cond = threading.Condition(mutex)
