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

import threading
import time
from typing import Any

from . import _codec
from . import _redis as R
from ._address import RedisPipe
from ._arrays import numpy_module
from ._frames import Rest
from ._limits import DEFAULT_CAPACITY, GROUP_ENTRY_PACKETS, MAX_RECORD_PACKETS, Packet, max_packet_bytes
from ._redis_member import Log, RedisMember, retry_wait
from .errors import TransportError

FULL_NAP = 0.002, 0.05  # a sender with no room asks again after this long, doubling


class RedisSafeWriter(RedisMember):
    """A sender's way into a Safe pipe on a Redis server: one stream entry per batch."""

    inline = False  # every batch is a round trip: send() only queues
    idle_interval: float | None = R.BEAT_INTERVAL  # an idle sender still checks in this often

    def __init__(
        self,
        address: RedisPipe,
        *,
        capacity: int | None,
        packet_len: int | None,
        override: bool,
        create: bool,
        log: Log | None,
    ) -> None:
        super().__init__(address, "sender", create, log)
        _, self.packet_len = self.join(
            size=capacity, default=DEFAULT_CAPACITY, packet_len=packet_len, override=override
        )
        self.max_packet = max_packet_bytes(self.capacity)
        self.batch_packets = GROUP_ENTRY_PACKETS if self.groups else MAX_RECORD_PACKETS
        self.stall_hint = (
            "a receiver that is alive but not reading keeps the pipe full, or the "
            f"Redis server {address.server} could not be reached"
        )
        self._acked = 0

    def commit_batch(self, payload: bytes, count: int, abort: threading.Event, rest: bytes = b"") -> bool:
        """Put one batch on the server, waiting for room and reconnecting as needed; ``False`` if
        ``abort`` is set first.  The script acknowledges by count, so a batch whose reply was
        lost is not added twice."""
        link = self.link
        assert link is not None
        attempt, nap = 0, FULL_NAP[0]
        args: list[Any] = [self.member, self.created, self._acked + count, count, payload + rest, R.ALIVE_MS, self.info]
        while not abort.is_set():
            try:
                reply = link.add_script(keys=self.keys(), args=args)
            except Exception as exc:
                if not R.transient(exc):
                    raise R.describe(exc, link.server) from exc
                self._log(f"lost the server ({exc}); retrying")
                retry_wait(abort, attempt)
                attempt += 1
                continue
            if attempt:
                self._log("reconnected")
                attempt = 0
            status = R.decode_text(reply[0])
            if status == "gone":
                raise self.removed()
            self.packet_len = int(reply[1])
            self._groups_now(reply)
            if status == "ok":
                self._acked += count
                return True
            abort.wait(nap)  # full: live receivers have not read enough yet
            nap = min(nap * 2, FULL_NAP[1])
        return False

    def _groups_now(self, reply: Any) -> None:
        # A stream entry goes to one member of a receiver group whole: while the pipe has
        # groups, entries are kept small, so that work can be shared fairly (docs/groups.md).
        groups = int(reply[2]) if len(reply) > 2 else 0
        self.batch_packets = GROUP_ENTRY_PACKETS if groups else MAX_RECORD_PACKETS

    def commit_now(self, payload: bytes, count: int, rest: Rest = b"") -> bool:
        """Never: a round trip is not something send() may wait for."""
        return False

    def idle(self) -> None:
        """Check in, so that the pipe keeps counting this sender as alive."""
        link = self.link
        assert link is not None
        try:
            reply = self.beat()
        except Exception as exc:
            if R.transient(exc):
                return  # the next delivery or check-in reconnects
            raise R.describe(exc, link.server) from exc
        if R.decode_text(reply[0]) == "gone":
            raise self.removed()
        self.packet_len = int(reply[1])

    def close(self) -> None:
        self.leave()


class RedisSafeReader(RedisMember):
    """A receiver of a Safe pipe on a Redis server, reading the stream from its own position.

    :meth:`wait` is one round trip that checks in and reads entries ahead (blocking on
    the server up to a second); :meth:`read` decodes what it fetched.  Only the face's
    caching thread calls them (``reads_in_caller`` is false): a ``receive()`` takes
    what that thread cached.
    """

    reads_in_caller = False
    framed = False  # set by _hold()

    def writers_waiting(self) -> bool:
        """Never: views are of entries already fetched, which hold no sender back."""
        return False

    def _hold(self, payload: Any) -> Any:
        """What a framed record's arrays view: the entry's own bytes, which nothing can change."""
        self.framed = True
        np = numpy_module()
        return np.frombuffer(payload if type(payload) is bytes else bytes(payload), np.uint8)

    def __init__(
        self,
        address: RedisPipe,
        *,
        start: str,
        capacity: int | None,
        max_cached: int,
        resume: Any,
        create: bool,
        log: Log | None,
    ) -> None:
        super().__init__(address, "receiver", create, log)
        self._position, _ = self.join(size=capacity, default=DEFAULT_CAPACITY, start=start, resume=resume)
        self._entries_per_read = max(1, max_cached // MAX_RECORD_PACKETS)
        self._fetched: list[Any] = []  # entries wait() read from the server, not yet decoded
        self._read = 0  # packets decoded: reported when checking in
        self._beat_due = 0.0
        self.problem: Exception | None = None
        self.bytes_read = 0

    def position(self) -> str:
        """Where the next read starts: the id of the last entry read (``<bytes>-<packets>``)."""
        return self._position

    def my_lag(self, written: int) -> int | None:
        return max(written - R.split_id(self._position)[1], 0)

    def read(self, limit: int, byte_limit: int) -> list[Packet]:
        """Decode the fetched entries -- whole entries, until ``limit`` packets or ``byte_limit``
        bytes -- and move past them; ``[]`` when none were fetched.

        A gap (packets trimmed while this receiver could not check in) or an entry that does
        not decode is reported in ``problem``, and reading stops there, as on shared memory.
        After a gap it goes on from the entry after it; after damage, from the next entry (the
        packets of a damaged entry before the damage are kept).
        """
        self.problem = None
        self.bytes_read = 0
        fetched = self._fetched
        packets: list[Packet] = []
        while fetched and len(packets) < limit and self.bytes_read < byte_limit:
            entry_id, fields = fetched[0]
            end = R.decode_text(entry_id)
            end_bytes, end_seq = R.split_id(end)
            count, payload = int(fields.get(b"n", -1)), fields.get(b"d", b"")
            start_bytes, start_seq = end_bytes - len(payload), max(end_seq - count, 0)
            mine_bytes, mine_seq = R.split_id(self._position)
            if start_bytes > mine_bytes:
                self.problem = TransportError(
                    f"receiver of pipe {self.shown!r} lost {start_seq - mine_seq} packet(s): it could "
                    f"not check in with Redis server {self.address.server} for over {R.ALIVE_MS / 1000:g}s, "
                    "and senders trimmed them meanwhile"
                )
                self._position = f"{start_bytes}-{start_seq}"  # an entry boundary: where the lost packets ended
                break
            fetched.pop(0)
            decoded, damage = _codec.decode_batch(payload, count, self._hold)
            packets += decoded  # a damaged entry still yields the packets before the damage
            self.bytes_read += len(payload)
            self._position = end
            if damage is not None:
                self.problem = type(damage)(f"pipe {self.shown!r}: {damage}")
                break
        self._read += len(packets)
        return packets

    def wait(self, timeout: float) -> bool:
        """Check in and fetch entries after the position, waiting on the server up to ``timeout``
        (at most a second, so that this receiver checks in that often); ``True`` if some came."""
        if self._fetched:
            return True
        block = max(1, min(int(timeout * 1000), R.BLOCK_MS))
        self._round_trip(block)
        return bool(self._fetched)

    wait_in_call = wait

    # No wake socket: a Redis server wakes this receiver's caching thread, which reads.
    def bind_wake_socket(self) -> None:
        return None

    def expect_wake(self) -> bool:
        return False

    def wake_expected(self) -> None:
        pass

    def keepalive(self) -> None:
        """Check in (without reading) if a second has passed since the last time: a receiver
        whose cache is full must not look dead to the senders."""
        if time.monotonic() >= self._beat_due:
            self._round_trip(None)

    def _round_trip(self, block: int | None) -> None:
        """Check in, and with ``block`` (ms) also fetch entries; transient failures are retried by
        the next call, after a backoff pause."""
        link = self.link
        assert link is not None
        stream = self.keys()[1]
        try:
            pipe = link.client.pipeline(transaction=False)
            self.beat(pipe, self._position, str(self._read))
            if block is not None:
                pipe.xread({stream: self._position}, count=self._entries_per_read, block=block)
            replies = pipe.execute()
        except Exception as exc:
            self.recover(exc)
            return
        if self._attempt:
            self._log(f"reconnected; reading on from {self._position}")
            self._attempt = 0
        self._beat_due = time.monotonic() + R.BEAT_INTERVAL
        if R.decode_text(replies[0][0]) == "gone":
            raise self.removed()
        if block is not None and replies[1]:
            self._fetched += R.read_entries(replies[1])

    def close(self, returned: str) -> tuple[str, str]:
        """Leave the pipe, having returned to the application everything up to ``returned`` (a
        :meth:`position`): those packets stop counting as unread.  The result is the ``resume``
        to pass when reconnecting."""
        self.leave(returned)
        return self.created, returned
