"""Safe pipes on a Redis server: a stream per pipe, every receiver reading it from its own position.

Guarantees (``docs/redis.md`` has them in full)
-----------------------------------------------
* A receiver attached to the server gets every packet sent after it attached,
  exactly once, in send order; every receiver gets every packet; several
  senders each keep their own order.  The pipe retains its newest packets (at
  most its capacity in bytes) for receivers that start later: with ``"unread"``
  (the default) those no receiver has read, with ``"oldest"`` all of them.
* A sender adds a batch only while the bytes live receivers have not read fit
  the pipe's capacity: memory on the server is bounded, and a receiver that is
  alive but not reading holds the senders back (their queues fill, ``send()``
  blocks), as on shared memory.
* A receiver that has not checked in for 5 s (dead, or cut off from the server)
  stops holding senders back.  If it comes back and packets it was owed were
  trimmed meanwhile, its next ``receive()`` raises :class:`TransportError`
  saying how many, once; it then goes on from the oldest retained packet.
* Connection loss: a sender keeps its bounded queue and redelivers with backoff
  -- never a batch twice, since the server acknowledges each by count; a
  receiver resumes after the last entry it read.  Closed and opened again, a
  receiver resumes after the last packet ``receive()`` returned.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from typing import Any, Iterator, List, Union

from . import _codec
from . import _layout as L
from . import _redis as R
from ._endpoint import check_capacity, check_count, check_spin, check_timeout
from ._pipe import DEFAULT_CAPACITY
from ._redis_base import RedisEndpoint, retry_wait
from ._ring import MAX_RECORD_PACKETS as MAX_BATCH  # packets per stream entry: bounds a receiver's read-ahead
from ._worker import Worker
from .errors import (
    CorruptPacketError,
    InvalidArgumentError,
    PacketSizeError,
    PipeClosedError,
    PipeTimeoutError,
    TransportError,
    UndeliveredPacketsWarning,
)
from .safe import (
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_CACHED,
    DEFAULT_MAX_CACHED_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RECEIVE_TIMEOUT,
    QUEUE_BYTES,
    STARTS,
    SafeReceiver,
    SafeSender,
)

Packet = List[Any]

FULL_NAP = 0.002, 0.05  # a sender with no room asks again after this long, doubling


class RedisSafeSender(RedisEndpoint, SafeSender):
    """:class:`SafeSender` over Redis: a bounded queue, and a thread adding batches to the stream."""

    _model_name = "safe"

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
        self._setup(name, debug, create)
        self._size = None if size is None else check_count(size, "size", minimum=0)
        if not isinstance(override, (bool, int)):
            raise InvalidArgumentError(f"override must be True or False, not {override!r}")
        self._override = bool(override)
        self._capacity = check_capacity(capacity)
        self._queue_size = check_count(queue_size, "queue_size", minimum=1)
        self._flush_timeout = check_timeout(flush_timeout, "flush_timeout")
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = self._in_flight = self._sent = self._acked = 0
        self._pack = _codec.new_packer()  # used under self._mutex only
        self._worker_idle = False
        self._abort = threading.Event()
        self._worker: Worker | None = None
        self._healthy = False
        self.open_connection()
        self._override = False  # applies to the first connection only

    def open_connection(self) -> None:
        """Connect (creating the pipe if needed) and start the delivery thread.  No-op when connected."""
        if self._link is not None:
            return
        link, _, packet_len = self._join(
            capacity="" if self._capacity is None else str(self._capacity),
            default=str(DEFAULT_CAPACITY),
            packet_len="" if self._size is None else str(self._size),
            override="1" if self._override else "0",
        )
        self._required = packet_len
        self._max_packet = self._capacity_now - L.RECORD_HEADER - 5
        self._batch_bytes = max(self._max_packet // 4, 1)
        self._queue_bytes = min(self._capacity_now, QUEUE_BYTES)
        self._acked = 0
        self._abort.clear()
        self._worker = Worker(f"pipebit-{self._name}-sender", self._deliver)
        self._link = link
        self._healthy = True
        self._worker.start()
        self._register()

    def close_connection(self, timeout: float | None = None) -> None:
        """Deliver what is queued (waiting up to ``timeout``, default ``flush_timeout``), then
        disconnect.  Packets not delivered in time are dropped with an
        :class:`UndeliveredPacketsWarning`.  Idempotent."""
        link = self._link
        if link is None:
            return
        limit = self._flush_timeout if timeout is None else check_timeout(timeout)
        with self._mutex:
            self._healthy = False
            self._cond.notify_all()  # a send() waiting for room raises now
        self._wait_delivered(limit, report=False)
        self._abort.set()
        worker = self._worker
        assert worker is not None
        with self._mutex:
            worker.stopping.set()
            self._cond.notify_all()
        ended = worker.stop(timeout=R.SOCKET_TIMEOUT + 5)
        with self._mutex:
            lost = len(self._queue) + self._in_flight
            self._queue.clear()
            self._queued_bytes = self._in_flight = 0
            self._cond.notify_all()
        self._link = None
        self._leave(link)
        # Not "not delivered": a batch the server took while we stopped counts as delivered.
        if lost or not ended:
            warnings.warn(
                f"pipe {self._shown!r}: {lost} packet(s) were not delivered before the sender closed "
                f"(waited {limit}s; a receiver that is alive but not reading keeps the pipe full, or the "
                f"Redis server {self._address.server} could not be reached)",
                UndeliveredPacketsWarning,
                stacklevel=2,
            )

    def _forget_after_fork(self) -> None:
        super()._forget_after_fork()
        self._worker = None
        self._healthy = False
        self._queue = collections.deque()
        self._queued_bytes = self._in_flight = 0
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)

    def _pending_and_packets(self) -> tuple[int, int]:
        with self._mutex:
            return self._sent, len(self._queue) + self._in_flight

    def send(self, data: Union[List[Any], tuple[Any, ...]], timeout: float | None = None) -> None:
        """Queue ``data`` (a list or tuple) for delivery and return; see :meth:`SafeSender.send`."""
        if not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        required = self._required
        if required and len(data) != required:
            raise PacketSizeError(f"pipe {self._shown!r} carries packets of {required} elements, got {len(data)}")
        with self._mutex:
            if not self._healthy:
                self._raise_unhealthy()
            try:
                encoded = self._pack(data)
            except Exception as exc:
                error = _codec.encoding_error(exc)
                if error is exc:
                    raise
                raise error from exc
            n = len(encoded)
            if n > self._max_packet:
                raise self._too_big(n, self._max_packet)
            if len(self._queue) >= self._queue_size or (self._queue and self._queued_bytes + n > self._queue_bytes):
                self._wait_for_room(n, timeout)
            self._queue.append(encoded)
            self._queued_bytes += n
            if self._worker_idle:
                self._worker_idle = False
                self._cond.notify()

    def _raise_unhealthy(self) -> None:
        self._require_link()
        if self._worker is not None:
            self._worker.check()
        raise PipeClosedError(f"sender of pipe {self._shown!r} is closing: close_connection() was called")

    def _wait_for_room(self, n: int, timeout: float | None) -> None:
        # Called with the mutex held.  Closing is looked at before room, at every wake-up: once
        # close_connection() has begun, what is queued is all it delivers or counts as lost, so
        # a packet let in then (into room the delivery thread made, or the queue close emptied)
        # would vanish uncounted.
        deadline = None if timeout is None else time.monotonic() + check_timeout(timeout)  # type: ignore[operator]
        while True:
            if not self._healthy:
                self._raise_unhealthy()
            if len(self._queue) < self._queue_size and not (self._queue and self._queued_bytes + n > self._queue_bytes):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise PipeTimeoutError(
                    f"send() waited {timeout}s for room in the queue of pipe {self._shown!r}; "
                    "its receivers are not keeping up (or its Redis server cannot be reached)"
                )
            self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every packet sent so far is on the server (not necessarily read)."""
        self._require_link()
        if not self._wait_delivered(check_timeout(timeout), report=True):
            raise PipeTimeoutError(
                f"flush() waited {timeout}s; {len(self._queue) + self._in_flight} packet(s) of pipe "
                f"{self._shown!r} are not delivered yet (its receivers are not keeping up, or its Redis "
                "server cannot be reached)"
            )

    def _deliver_batches(self, stopping: threading.Event) -> None:
        """The delivery thread's loop: a stream entry per batch; checks in every second when idle."""
        link = self._link
        assert link is not None
        beat_due = time.monotonic() + R.BEAT_INTERVAL
        while True:
            with self._mutex:
                while not self._queue and not stopping.is_set() and time.monotonic() < beat_due:
                    self._worker_idle = True
                    self._cond.notify_all()  # flushers wait for an empty queue
                    self._cond.wait(max(beat_due - time.monotonic(), 0.0))
                self._worker_idle = False
                if not self._queue:
                    if stopping.is_set():
                        return
                    batch: collections.deque[bytes] | None = None
                else:
                    batch = collections.deque([self._queue.popleft()])
                    size = len(batch[0])
                    queue = self._queue
                    while queue and len(batch) < MAX_BATCH and size + len(queue[0]) <= self._batch_bytes:
                        item = queue.popleft()
                        batch.append(item)
                        size += len(item)
                    self._queued_bytes -= size
                    self._in_flight = len(batch)
                    self._cond.notify_all()
            if batch is None:
                self._check_in(link)
            elif not self._add(link, _codec.join_batch(batch), len(batch)):
                return  # aborted: close_connection() counts what was in flight
            else:
                with self._mutex:
                    self._in_flight = 0
                    self._sent += len(batch)
            beat_due = time.monotonic() + R.BEAT_INTERVAL

    def _check_in(self, link: R.Link) -> None:
        try:
            reply = self._beat(link)
        except Exception as exc:
            if R.transient(exc):
                return  # the next delivery or check-in reconnects
            raise R.describe(exc, link.server) from exc
        if R.decode_text(reply[0]) == "gone":
            raise self._removed()
        self._required = int(reply[1])

    def _add(self, link: R.Link, payload: bytes, count: int) -> bool:
        """Put one batch on the server, waiting for room and reconnecting as needed; ``False`` if aborted.

        The script acknowledges by count, so a batch whose reply was lost is not added twice.
        """
        attempt, nap = 0, FULL_NAP[0]
        args: list[Any] = [self._member, self._created, self._acked + count, count, payload, R.ALIVE_MS, self._info]
        while not self._abort.is_set():
            try:
                reply = link.add_script(keys=self._keys(), args=args)
            except Exception as exc:
                if not R.transient(exc):
                    raise R.describe(exc, link.server) from exc
                self._log(f"lost the server ({exc}); retrying")
                retry_wait(self._abort, attempt)
                attempt += 1
                continue
            if attempt:
                self._log("reconnected")
                attempt = 0
            status = R.decode_text(reply[0])
            if status == "gone":
                raise self._removed()
            self._required = int(reply[1])
            if status == "ok":
                self._acked += count
                return True
            self._abort.wait(nap)  # full: live receivers have not read enough yet
            nap = min(nap * 2, FULL_NAP[1])
        return False


class RedisSafeReceiver(RedisEndpoint, SafeReceiver):
    """:class:`SafeReceiver` over Redis: a thread reading the stream ahead into a bounded cache.

    ``spin`` is checked as on shared memory but changes nothing: the reading thread
    already waits on the server, and spinning would only poll the cache.
    """

    _model_name = "safe"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: str = "unread",
        capacity: int | None = None,
        max_cached: int = DEFAULT_MAX_CACHED,
        max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
        create: bool = True,
        spin: Union[float, str] = "auto",
    ) -> None:
        self._setup(name, debug, create)
        check_spin(spin)  # accepted as on shared memory; a network read never spins
        if start not in STARTS:
            raise InvalidArgumentError(f"start must be one of {', '.join(map(repr, STARTS))}, not {start!r}")
        self._start = start
        self._capacity = check_capacity(capacity)
        self._max_cached = check_count(max_cached, "max_cached", minimum=1)
        self._max_cached_bytes = check_count(max_cached_bytes, "max_cached_bytes", minimum=1)
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._cache: list[Packet] = []
        self._cached_bytes = 0  # payload bytes of the entries in the cache (an upper bound)
        self._waiters = 0
        # Lost or corrupt packets, to raise from receive() once it has returned the first
        # _problem_at cached packets.  While one waits, the thread reads no further.
        self._problem: Exception | None = None
        self._problem_at = 0
        self._worker: Worker | None = None
        self._position = ""  # where the thread reads on from: the end of the last entry it took
        # Where the application has got to: the position after the last packet receive() returned
        # (a close resumes there, and reports it as read), and where the cached entries end, as
        # (packets cached since connecting up to that end, position).
        self._returned_at = ""
        self._ends: collections.deque[tuple[int, str]] = collections.deque()
        self._resume_at: tuple[str, str] | None = None  # (created_ns, position) after a close
        self._read = self._returned = 0
        self.open_connection()

    def open_connection(self) -> None:
        """Attach (creating the pipe if needed) and start caching; after a close, resume where this
        receiver stopped if the pipe still retains those packets.  No-op when connected."""
        if self._link is not None:
            return
        resume = self._resume_at or ("", "")
        link, self._position, _ = self._join(
            capacity="" if self._capacity is None else str(self._capacity),
            default=str(DEFAULT_CAPACITY),
            start=self._start,
            resume_created=resume[0],
            resume=resume[1],
        )
        self._read = 0
        self._returned_at = self._position
        self._ends.clear()
        self._worker = Worker(f"pipebit-{self._name}-receiver", self._collect)
        self._link = link
        self._worker.start()
        self._register()

    def close_connection(self) -> None:
        """Detach and stop caching; packets cached but not returned are discarded (reconnecting
        reads them again, if the pipe still retains them).  Idempotent."""
        link = self._link
        if link is None:
            return
        worker = self._worker
        assert worker is not None
        with self._mutex:
            worker.stopping.set()
            self._cond.notify_all()
        try:
            link.client.connection_pool.disconnect()  # wakes a blocking read at once
        except Exception:
            pass
        worker.stop(timeout=R.SOCKET_TIMEOUT + 5)
        with self._mutex:
            # Resume after the last packet receive() returned, not after what the thread read ahead.
            self._returned_to(self._read - len(self._cache))
            returned_at = self._returned_at
            self._resume_at = (self._created, returned_at)
            if self._problem_at:  # the dropped cache is read again, and the problem met again
                self._problem = None
                self._problem_at = 0
            self._link = None
            self._cache = []
            self._cached_bytes = 0
            self._ends.clear()
            self._cond.notify_all()
        self._leave(link, returned_at)

    def _forget_after_fork(self) -> None:
        super()._forget_after_fork()
        self._worker = None
        self._cache = []
        self._cached_bytes = 0
        self._ends = collections.deque()
        self._problem = None
        self._problem_at = 0
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)

    def _pending_and_packets(self) -> tuple[int, int]:
        with self._mutex:
            return self._returned, len(self._cache)

    def _my_lag(self, written: int) -> int | None:
        return max(written - R.split_id(self._position)[1], 0)

    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT) -> list[Packet]:
        """Every packet cached since the last call, oldest first; see :meth:`SafeReceiver.receive`."""
        limit = check_timeout(timeout)
        with self._mutex:
            if not self._cache and self._problem is None:
                self._wait(limit)
            problem, cut = self._problem, self._problem_at
            if problem is not None:  # raised where it happened: after the packets before it
                if cut == 0:
                    self._problem = None
                    self._returned_to(self._read - len(self._cache))
                    self._cond.notify_all()  # the thread reads on
                    raise problem
                self._problem_at = 0
            else:
                cut = len(self._cache)
            packets, self._cache = self._cache[:cut], self._cache[cut:]
            if not self._cache:
                self._cached_bytes = 0
            self._returned += len(packets)
            self._returned_to(self._read - len(self._cache))
            self._cond.notify_all()
        return packets

    def _returned_to(self, done: int) -> None:
        """Move ``_returned_at`` past the cached entries whose packets, ``done`` of those cached
        since connecting, the application has all had.  Under the mutex."""
        ends = self._ends
        while ends and ends[0][0] <= done:
            self._returned_at = ends.popleft()[1]

    def _wait(self, limit: float | None) -> None:
        deadline = None if limit is None else time.monotonic() + limit
        self._waiters += 1
        try:
            while not self._cache and self._problem is None:
                if self._link is None:
                    self._require_link()
                assert self._worker is not None
                self._worker.check()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._cond.wait(remaining)
        finally:
            self._waiters -= 1

    def __iter__(self) -> Iterator[Packet]:
        """Yield packets as they arrive, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch

    def _collect(self, stopping: threading.Event) -> None:
        """The caching thread: check in and read ahead in one round trip, until the cache is full."""
        try:
            self._read_ahead(stopping)
        finally:  # a failure is raised by receive(): wake it now
            with self._mutex:
                self._cond.notify_all()

    def _read_ahead(self, stopping: threading.Event) -> None:
        link = self._link
        assert link is not None
        stream = self._keys()[1]
        attempt = 0
        while not stopping.is_set():
            with self._mutex:
                if self._stalled():
                    self._cond.wait(R.BEAT_INTERVAL)
                    if stopping.is_set():
                        return
                # Cache full, or a problem receive() has not raised yet: only check in (a receiver
                # that stops checking in is let go by the senders after 5 s).
                room = 0 if self._stalled() else self._max_cached - len(self._cache)
            try:
                pipe = link.client.pipeline(transaction=False)
                self._beat(link, pipe, self._position, str(self._read))
                if room > 0:
                    pipe.xread({stream: self._position}, count=max(1, room // MAX_BATCH), block=R.BLOCK_MS)
                replies = pipe.execute()
            except Exception as exc:
                if stopping.is_set():
                    return
                if R.missing_script(exc):
                    link.reload_scripts()
                    continue
                if not R.transient(exc):
                    raise R.describe(exc, link.server) from exc
                self._log(f"lost the server ({exc}); retrying")
                retry_wait(stopping, attempt)
                attempt += 1
                continue
            if attempt:
                self._log(f"reconnected; reading on from {self._position}")
                attempt = 0
            if R.decode_text(replies[0][0]) == "gone":
                raise self._removed()
            if room > 0 and replies[1]:
                self._take(R.read_entries(replies[1]))

    def _stalled(self) -> bool:
        """Whether the thread must not read on: the cache is full, or holds a problem."""
        return (
            len(self._cache) >= self._max_cached
            or self._cached_bytes >= self._max_cached_bytes
            or self._problem is not None
        )

    def _take(self, entries: list[Any]) -> None:
        """Decode entries into the cache, noting where each ends.

        A gap (packets trimmed while this receiver could not check in) or an entry that
        does not decode is kept for receive() to raise at its place, and taking stops
        there: the thread reads on once receive() has raised it.  After a gap it reads
        on from the start of the entry after it; after damage, from the next entry (the
        packets of a damaged entry before the damage are kept).
        """
        packets: list[Packet] = []
        ends: list[tuple[int, str]] = []
        problem: Exception | None = None
        position = self._position
        taken_bytes = 0
        for entry_id, fields in entries:
            end = R.decode_text(entry_id)
            end_bytes, end_seq = R.split_id(end)
            count, payload = int(fields.get(b"n", -1)), fields.get(b"d", b"")
            start_bytes, start_seq = end_bytes - len(payload), max(end_seq - count, 0)
            mine_bytes, mine_seq = R.split_id(position)
            if start_bytes > mine_bytes:
                problem = TransportError(
                    f"receiver of pipe {self._shown!r} lost {start_seq - mine_seq} packet(s): it could "
                    f"not check in with Redis server {self._address.server} for over {R.ALIVE_MS / 1000:g}s, "
                    "and senders trimmed them meanwhile"
                )
                position = f"{start_bytes}-{start_seq}"  # an entry boundary: where the lost packets ended
                ends.append((len(packets), position))
                break
            decoded, damage = _codec.decode_batch(payload, count)
            packets += decoded  # a damaged entry still yields the packets before the damage
            taken_bytes += len(payload)
            position = end
            ends.append((len(packets), position))
            if damage is not None:
                problem = CorruptPacketError(f"pipe {self._shown!r}: {damage}")
                break
        with self._mutex:
            if problem is not None:  # the thread stalls while one waits: this is the only one
                self._problem, self._problem_at = problem, len(self._cache) + len(packets)
            self._ends.extend((self._read + n, where) for n, where in ends)
            self._position = position
            self._read += len(packets)
            self._cache += packets
            self._cached_bytes += taken_bytes
            if self._waiters:
                self._cond.notify_all()
