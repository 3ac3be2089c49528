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
from typing import Any, Callable

from . import _codec
from . import _redis as R
from ._address import RedisPipe
from ._limits import DEFAULT_FLUSH_TIMEOUT, DEFAULT_SLOT_SIZE, Packet, Sendable
from ._redis_member import Log, RedisMember, retry_wait
from ._worker import Worker
from .errors import CorruptPacketError, PipeTimeoutError

STALE_REPLY = 0.5  # s: a reply this much later than the server could have sent it is read again


class RedisFastWriter(RedisMember):
    """A sender of a Fast pipe on a Redis server: :meth:`send` hands the value to a thread.

    The thread publishes the newest value it holds, one round trip at a time, and
    again once reconnected after the server was lost; a value replaced before its
    turn is skipped, as a slow reader would skip it.  ``send()`` never waits for
    the server: not for a round trip, not for a dropped network.
    """

    model = "fast"

    def __init__(
        self,
        address: RedisPipe,
        *,
        slot_size: int | None,
        packet_len: int | None,
        override: bool,
        create: bool,
        log: Log | None,
        send_lock: threading.RLock,
        pack: Callable[[object], bytes],
        on_closed: Callable[[], object],
    ) -> None:
        super().__init__(address, "sender", create, log)
        self._send_lock = send_lock
        self._pack, self._on_closed = pack, on_closed
        self.closed = False
        _, self.packet_len = self.join(
            size=slot_size, default=DEFAULT_SLOT_SIZE, packet_len=packet_len, override=override
        )
        self.slot_size = self.capacity
        self._cond = threading.Condition(threading.Lock())
        self._pending: tuple[int, bytes] | None = None  # (stamp, value) left to the thread
        self._stamp = self._sent = 0
        self._worker = Worker(f"pipebit-{self.name}-sender", self._publish_newest)
        self._worker.start()

    def send(self, data: Sendable) -> None:
        """The whole of ``FastSender.send()`` over Redis: check and encode ``data``, and leave
        it for the thread to publish (replacing a value not yet published).  Receivers wait
        on the server itself: there is no one to wake."""
        kind = data.__class__
        if kind is not list and kind is not tuple and not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        lock = self._send_lock
        try:
            lock.acquire()  # inside the try: see ShmFastWriter.send()
            if self.closed:
                self._on_closed()  # raises the face's PipeClosedError
            encoded = _codec.encode_update(data, self._pack, self.packet_len, self.slot_size, self.shown)
            self._worker.check()
            with self._cond:
                self._stamp += 1
                idle = self._pending is None
                self._pending = (self._stamp, encoded)  # replaces one not yet published: it is stale
                if idle:
                    self._cond.notify_all()
        finally:
            if lock._is_owned():  # type: ignore[attr-defined]  # private, but what Condition uses too
                lock.release()

    def published(self) -> int:
        return self._sent

    def pending(self) -> int:
        return int(self._pending is not None)

    def flush(self, timeout: float | None) -> None:
        """Wait until the value last sent is on the server: :class:`PipeTimeoutError` after
        ``timeout`` seconds (``None``: as long as it takes); the thread's failure (the pipe
        was removed, say) is raised here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._worker.check()
                if self._pending is None:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PipeTimeoutError(
                        f"flush() waited {timeout}s; the value last sent to Fast pipe {self.shown!r} is not "
                        f"published yet (Redis server {self.address.server} cannot be reached)"
                    )
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def _publish(self, stamp: int, value: bytes | None) -> None:
        """Publish ``value`` (or only check in); the stamp makes a retried publication land once."""
        link = self.link
        assert link is not None
        try:
            if value is None:
                reply = self.beat()
            else:
                args: list[Any] = [self.member, self.created, stamp, value, R.ALIVE_MS, self.info]
                reply = link.publish_script(keys=self.keys(), args=args)
        except Exception as exc:
            if R.transient(exc):
                raise
            raise R.describe(exc, link.server) from exc
        if R.decode_text(reply[0]) == "gone":
            raise self.removed()
        self.packet_len = int(reply[1])
        if value is not None:
            self._sent += 1

    def _publish_newest(self, stopping: threading.Event) -> None:
        """The background thread: publish the newest value send() left, and check in every second.

        It talks to the server without holding the lock, so send() never waits for
        it; send() only replaces the pending value, which keeps publications in order.
        """
        attempt = 0
        while True:
            with self._cond:
                if self._pending is None and not stopping.is_set():
                    self._cond.wait(R.BEAT_INTERVAL)
                pending = self._pending
                if stopping.is_set() and pending is None:
                    return
            try:
                self._publish(*(pending or (0, None)))
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
                with self._cond:
                    if self._pending is pending:  # not replaced meanwhile
                        self._pending = None
                        self._cond.notify_all()

    def close(self) -> bool:
        """Publish a value left to the thread (waiting up to 5 s), then leave; the value stays
        for later receivers.  Returns whether a value was lost (the server could not be reached)."""
        self.closed = True
        worker = self._worker
        deadline = time.monotonic() + DEFAULT_FLUSH_TIMEOUT
        with self._cond:
            while self._pending is not None and worker.alive and time.monotonic() < deadline:
                self._cond.wait(0.1)
            lost = self._pending is not None
            self._pending = None
            worker.stopping.set()
            self._cond.notify_all()
        worker.stop(timeout=R.SOCKET_TIMEOUT + 5)
        self.leave()
        return lost

    def forget(self) -> None:
        super().forget()
        self._pending = None


class RedisFastReader(RedisMember):
    """A receiver of a Fast pipe on a Redis server: the newest entry after the last one seen.

    It checks in with each read, so a receiver shows as alive while it calls
    ``receive()`` at least every 5 s (Fast receivers never hold anyone back).
    """

    model = "fast"

    def __init__(self, address: RedisPipe, *, start: str, slot_size: int | None, create: bool, log: Log | None) -> None:
        super().__init__(address, "receiver", create, log)
        self._last_id, _ = self.join(size=slot_size, default=DEFAULT_SLOT_SIZE, start=start)
        self.slot_size = self.capacity
        self._returned = 0
        self._stopped = False

    def read(self, timeout: float | None) -> list[Packet]:
        """``[newest value]`` if one newer than the last returned was published, waiting up to
        ``timeout`` for one; ``[]`` if none came, or the server could not be reached meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        key = self.keys()[1]
        while not self._stopped:
            link = self.link
            assert link is not None
            remaining = None if deadline is None else deadline - time.monotonic()
            block = R.BLOCK_MS if remaining is None else min(R.BLOCK_MS, int(remaining * 1000))
            asked = time.monotonic()
            try:
                pipe = link.client.pipeline(transaction=False)
                self.beat(pipe, "", str(self._returned))
                pipe.xread({key: self._last_id}, count=1, block=block if block > 0 else None)
                beat, entries = pipe.execute()
                found = R.read_entries(entries)
                if found and time.monotonic() - asked > max(block, 0) / 1000 + STALE_REPLY:
                    # The server answers within `block`; so this process stalled (stopped, swapped
                    # out) after the reply came, and a newer value may have been published since.
                    found = R.read_entries(link.client.xread({key: R.decode_text(found[-1][0])}, count=1)) or found
            except Exception as exc:
                if self._stopped:  # interrupt() cut the connection: the receiver is closing
                    return []
                if not self.retry_after(exc):
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                pause = R.backoff(attempt)
                time.sleep(pause if remaining is None else min(pause, remaining))
                attempt += 1
                continue
            attempt = 0
            if R.decode_text(beat[0]) == "gone":
                raise self.removed()
            if found:
                entry_id, fields = found[-1]
                self._last_id = R.decode_text(entry_id)
                self._returned += 1
                try:
                    return [_codec.decode(fields.get(b"d", b""))]
                except CorruptPacketError as exc:
                    raise type(exc)(f"pipe {self.shown!r}: {exc}") from None
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    def interrupt(self) -> None:
        """Make a :meth:`read` in another thread return now: cut the connection it waits on.
        A read that was just about to start opens a fresh one, so the face calls this until
        every read has left."""
        self._stopped = True
        link = self.link
        if link is not None:
            try:
                link.client.connection_pool.disconnect()
            except Exception:  # a broken connection may fail to close; it is closed either way
                pass

    def close(self) -> None:
        self.leave()
