"""Fast pipes on a Redis server: the current value is the one entry of a trimmed stream.

Guarantees
----------
* ``send()`` never waits for receivers or the network: it leaves the value for
  the sender's background thread, which publishes the newest one (a sender
  faster than its link skips values, as a slow reader would).  Values persist
  for receivers that attach later; ``override=True`` clears the current one.
* A receiver never sees a torn value (an entry is written atomically), values
  it sees never go backwards (entry ids only grow), and none is returned twice
  (a republished value after a lost reply is recognised by its stamp).
* Connection loss: the sender republishes its newest value once reconnected;
  ``receive()`` keeps trying until its timeout, then returns ``[]``.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Iterator, List, Union

from . import _codec
from . import _layout as L
from . import _redis as R
from ._endpoint import check_count, check_timeout
from ._redis_base import RedisEndpoint, retry_wait
from ._worker import Worker
from .errors import (
    CorruptPacketError,
    InvalidArgumentError,
    PacketSizeError,
    PipeClosedError,
    PipeTimeoutError,
    UndeliveredPacketsWarning,
)
from .fast import DEFAULT_SLOT_SIZE, FastReceiver, FastSender
from .safe import DEFAULT_FLUSH_TIMEOUT, DEFAULT_RECEIVE_TIMEOUT

Packet = List[Any]

STALE_REPLY = 0.5  # s: a reply this much later than the server could have sent it is read again


def _slot_size(slot_size: object) -> int | None:
    if slot_size is None:
        return None
    return L.align(check_count(slot_size, "slot_size", minimum=64, maximum=L.MAX_CAPACITY // (2 * L.LANES)))


class RedisFastSender(RedisEndpoint, FastSender):
    """:class:`FastSender` over Redis: ``send()`` hands the value to a background thread.

    The thread publishes the newest value it holds, one round trip at a time, and
    again once reconnected after the server was lost; a value replaced before its
    turn is skipped, as a slow reader would skip it.  ``send()`` never waits for
    the server: not for a round trip, not for a dropped network.
    """

    _model_name = "fast"

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
        self._setup(name, debug, create)
        self._size = None if size is None else check_count(size, "size", minimum=0)
        self._override = bool(override)
        self._capacity = _slot_size(slot_size)
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._pack = _codec.new_packer()  # used under self._mutex only
        self._pending: tuple[int, bytes] | None = None  # (stamp, value) left to the thread
        self._sent = self._stamp = 0
        self._worker: Worker | None = None
        self.open_connection()
        self._override = False

    def open_connection(self) -> None:
        """Connect (creating the pipe if needed).  No-op when connected."""
        if self._link is not None:
            return
        link, _, self._required = self._join(
            capacity="" if self._capacity is None else str(self._capacity),
            default=str(DEFAULT_SLOT_SIZE),
            packet_len="" if self._size is None else str(self._size),
            override="1" if self._override else "0",
        )
        self._slot_size = self._capacity_now
        self._stamp = 0
        self._worker = Worker(f"pipebit-{self._name}-sender", self._publish_newest)
        self._link = link
        self._worker.start()
        self._register()

    def close_connection(self) -> None:
        """Disconnect, after publishing a value left to the background thread (up to 5 s).
        The value stays for later receivers.  Idempotent."""
        link, worker = self._link, self._worker
        if link is None or worker is None:
            return
        deadline = time.monotonic() + DEFAULT_FLUSH_TIMEOUT
        with self._mutex:
            while self._pending is not None and worker.alive and time.monotonic() < deadline:
                self._cond.wait(0.1)
            lost = self._pending is not None
            self._pending = None
            worker.stopping.set()
            self._cond.notify_all()
            self._link = None
        worker.stop(timeout=R.SOCKET_TIMEOUT + 5)
        self._leave(link)
        if lost:
            warnings.warn(
                f"Fast pipe {self._shown!r}: the last value was not published before the sender closed "
                f"(Redis server {self._address.server} could not be reached)",
                UndeliveredPacketsWarning,
                stacklevel=2,
            )

    def _forget_after_fork(self) -> None:
        super()._forget_after_fork()
        self._worker = None
        self._pending = None
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)

    def _pending_and_packets(self) -> tuple[int, int]:
        with self._mutex:
            return self._sent, int(self._pending is not None)

    def send(self, data: Union[List[Any], tuple[Any, ...]]) -> None:
        """Make ``data`` (a list or tuple) the pipe's current value; never waits.

        Errors as :meth:`FastSender.send`, raised here.  The value is published
        by the background thread within about one round trip to the server (or
        once the server is back); :meth:`flush` waits for that.
        """
        if not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        with self._mutex:
            if self._link is None:
                self._require_link()
                return
            assert self._worker is not None
            self._worker.check()
            required = self._required
            if required and len(data) != required:
                raise PacketSizeError(f"pipe {self._shown!r} carries packets of {required} elements, got {len(data)}")
            try:
                encoded = self._pack(data)
            except Exception as exc:
                error = _codec.encoding_error(exc)
                if error is exc:
                    raise
                raise error from exc
            if len(encoded) > self._slot_size:
                raise self._too_big(len(encoded), self._slot_size)
            self._stamp += 1
            idle = self._pending is None
            self._pending = (self._stamp, encoded)  # replaces one not yet published: it is stale
            if idle:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the value last sent is on the server.

        :class:`PipeTimeoutError` after ``timeout`` seconds (``None``: as long as it
        takes); the background thread's failure (the pipe was removed, say) is raised here.
        """
        limit = check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._mutex:
            while True:
                self._require_link()
                assert self._worker is not None
                self._worker.check()
                if self._pending is None:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PipeTimeoutError(
                        f"flush() waited {timeout}s; the value last sent to Fast pipe {self._shown!r} is not "
                        f"published yet (Redis server {self._address.server} cannot be reached)"
                    )
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def _publish(self, link: R.Link, stamp: int, value: bytes | None) -> None:
        """Publish ``value`` (or only check in); the stamp makes a retried publication land once."""
        try:
            if value is None:
                reply = self._beat(link)
            else:
                args: list[Any] = [self._member, self._created, stamp, value, R.ALIVE_MS, self._info]
                reply = link.publish_script(keys=self._keys(), args=args)
        except Exception as exc:
            if R.transient(exc):
                raise
            raise R.describe(exc, link.server) from exc
        if R.decode_text(reply[0]) == "gone":
            raise self._removed()
        self._required = int(reply[1])
        if value is not None:
            self._sent += 1  # under the mutex, or by the thread while send() only queues

    def _publish_newest(self, stopping: threading.Event) -> None:
        """The background thread: publish the newest value send() left, and check in every second.

        It talks to the server without holding the mutex, so send() never waits for
        it; send() only replaces the pending value, which keeps publications in order.
        """
        link = self._link
        assert link is not None
        attempt = 0
        while True:
            with self._mutex:
                if self._pending is None and not stopping.is_set():
                    self._cond.wait(R.BEAT_INTERVAL)
                pending = self._pending
                if stopping.is_set() and pending is None:
                    return
            try:
                self._publish(link, *(pending or (0, None)))
            except Exception as exc:
                if not R.transient(exc):
                    raise
                if attempt == 0:
                    self._log(f"lost the server ({exc}); retrying in the background")
                if stopping.is_set():
                    return
                retry_wait(stopping, attempt)
                attempt += 1
                continue
            if attempt:
                self._log("reached the server again")
            attempt = 0
            if pending is not None:
                with self._mutex:
                    if self._pending is pending:  # not replaced meanwhile
                        self._pending = None
                        self._cond.notify_all()


class RedisFastReceiver(RedisEndpoint, FastReceiver):
    """:class:`FastReceiver` over Redis: ``receive()`` reads the newest entry after the last one seen.

    It checks in with each ``receive()``, so a receiver shows as alive while it
    calls ``receive()`` at least every 5 s (Fast receivers never hold anyone back).
    """

    _model_name = "fast"

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: str = "current",
        slot_size: int | None = None,
        create: bool = True,
    ) -> None:
        self._setup(name, debug, create)
        if start not in ("current", "new"):
            raise InvalidArgumentError(f"start must be 'current' or 'new', not {start!r}")
        self._start = start
        self._capacity = _slot_size(slot_size)
        self._last_id = ""
        self._returned = 0
        self._new_locks()  # close_connection() keeps cutting the connection of calls in progress
        self.open_connection()

    def open_connection(self) -> None:
        """Attach (creating the pipe if needed).  No-op when connected."""
        if self._link is not None:
            return
        self._link, self._last_id, _ = self._join(
            capacity="" if self._capacity is None else str(self._capacity),
            default=str(DEFAULT_SLOT_SIZE),
            start=self._start,
        )
        self._register()

    def close_connection(self) -> None:
        """Detach; a receive() waiting in another thread raises :class:`PipeClosedError`.  Idempotent."""
        with self._users:
            link, self._link = self._link, None
            if link is None:
                return
            # Cutting the connection wakes a receive() blocked on it; one that was just
            # about to read opens a fresh connection, so cut again until it has left.
            deadline = time.monotonic() + R.SOCKET_TIMEOUT
            while True:
                try:
                    link.client.connection_pool.disconnect()
                except Exception:
                    pass
                if not self._active or time.monotonic() >= deadline:
                    break
                self._users.wait(0.05)
        self._leave(link)

    def _forget_after_fork(self) -> None:
        super()._forget_after_fork()
        self._new_locks()

    def _pending_and_packets(self) -> tuple[int, int]:
        return self._returned, 0

    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT) -> list[Packet]:
        """``[newest packet]`` if a newer value was published since the last one returned, else
        ``[]``; waits up to ``timeout`` for one (see :meth:`FastReceiver.receive`).  While the
        server cannot be reached it keeps trying until the timeout, then returns ``[]``."""
        limit = check_timeout(timeout)
        with self._users:
            self._require_link()
            self._active += 1
        try:
            return self._receive(limit)
        finally:
            self._call_ended()

    def _receive(self, limit: float | None) -> list[Packet]:
        deadline = None if limit is None else time.monotonic() + limit
        attempt = 0
        key = self._keys()[1]
        while True:
            link = self._require_link()
            remaining = None if deadline is None else deadline - time.monotonic()
            block = R.BLOCK_MS if remaining is None else min(R.BLOCK_MS, int(remaining * 1000))
            asked = time.monotonic()
            try:
                pipe = link.client.pipeline(transaction=False)
                self._beat(link, pipe, "", str(self._returned))
                pipe.xread({key: self._last_id}, count=1, block=block if block > 0 else None)
                beat, entries = pipe.execute()
                found = R.read_entries(entries)
                if found and time.monotonic() - asked > max(block, 0) / 1000 + STALE_REPLY:
                    # The server answers within `block`; so this process stalled (stopped, swapped
                    # out) after the reply came, and a newer value may have been published since.
                    found = R.read_entries(link.client.xread({key: R.decode_text(found[-1][0])}, count=1)) or found
            except Exception as exc:
                self._require_link()  # closed from another thread: that is why
                if R.missing_script(exc):
                    link.reload_scripts()
                    continue
                if not R.transient(exc):
                    raise R.describe(exc, link.server) from exc
                self._log(f"lost the server ({exc}); retrying")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                pause = R.backoff(attempt)
                time.sleep(pause if remaining is None else min(pause, remaining))
                attempt += 1
                continue
            attempt = 0
            if R.decode_text(beat[0]) == "gone":
                raise self._removed()
            if found:
                entry_id, fields = found[-1]
                self._last_id = R.decode_text(entry_id)
                self._returned += 1
                try:
                    return [_codec.decode(fields.get(b"d", b""))]
                except CorruptPacketError as exc:
                    raise CorruptPacketError(f"pipe {self._shown!r}: {exc}") from None
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def __iter__(self) -> Iterator[Packet]:
        """Yield each new value as it is published, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch
