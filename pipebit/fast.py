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
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List, Union

from . import _codec, _shm
from . import _layout as L
from ._endpoint import PLAIN_SECONDS, Endpoint, check_count, check_timeout
from ._pipe import Pipe, Slot
from ._ring import fence
from .errors import CorruptPacketError, InvalidArgumentError, PacketSizeError, PipeBusyError, PipeClosedError

Packet = List[Any]

DEFAULT_SLOT_SIZE = 64 << 10
DEFAULT_RECEIVE_TIMEOUT = 0.1
# A reader that keeps losing the race to a writer gives up after this many tries
# and reports "nothing new" rather than spin; the next receive() tries again.
MAX_READ_ATTEMPTS = 100
# The longest a waiting receiver sleeps before looking again by itself.  Senders
# wake it at once; this only bounds the cost of a wake-up lost to a crash.
SLEEP_SLICE = 2.0

# Bound once: module globals are cheaper to reach than attributes on the send path.
_LATEST, _SLEEPERS = L.F_LATEST, L.F_SLEEPERS
_LENGTH, _WRITE_NS = L.B_LENGTH, L.B_WRITE_NS
_FLAGS, _REMOVED = L.FLAGS, L.FLAG_REMOVED
_time_ns = time.time_ns


def _check_slot_size(slot_size: object) -> int | None:
    if slot_size is None:
        return None
    size = check_count(slot_size, "slot_size", minimum=64, maximum=L.MAX_CAPACITY // (2 * L.LANES))
    return L.fast_capacity(L.align(size))


def _lane_owner(data: memoryview, lane: int) -> tuple[int, int]:
    base = (L.LANE_TABLE + lane * L.LANE_ENTRY) // 8
    return data[base], data[base + 1]


def _wake_sleepers(pipe: Pipe, data: memoryview) -> None:
    """Post the semaphore of every Fast receiver asleep waiting for a value."""
    data[L.F_SLEEPERS] = 0
    pipe.wake_waiting_receivers()


class FastSender(Endpoint):
    """Publishes packets as the current value of a Fast pipe, creating the pipe if needed.

    ``FastSender(name, debug=0)`` connects at once.  Keyword-only options:

    * ``size`` -- packet length the pipe enforces (``0``: any), applied when this
      sender creates the pipe or overrides it.
    * ``override`` -- clear the pipe's current value and apply ``size``.
    * ``slot_size`` -- largest encoded packet in bytes (at least 64, rounded up to
      a multiple of 8), when this sender creates the pipe (default 64 KiB).
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`.
    """

    _role = "sender"
    _model = L.MODEL_FAST

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
        self._size = None if size is None else check_count(size, "size", minimum=0)
        self._override = bool(override)
        self._capacity = _check_slot_size(slot_size)
        self._set_send_lock(threading.Lock())
        self._pack = _codec.new_packer()  # used under the send lock only
        self._sent_before = 0  # packets sent over earlier connections
        self.open_connection()
        self._override = False  # applies to the first connection only

    def open_connection(self) -> None:
        """Connect to the pipe (creating it if needed) and take a lane.  No-op when connected."""
        if self._pipe is not None:
            return
        pipe = self._connect(
            L.ROLE_SENDER,
            capacity=self._capacity,
            packet_len=self._size,
            override=self._override,
            default_capacity=L.fast_capacity(DEFAULT_SLOT_SIZE),
        )
        assert self._slot is not None
        try:
            data = pipe.words
            with pipe.lock:
                if self._override:
                    data[L.F_LATEST] = 0
                self._lane = self._claim_lane(pipe, data, self._slot)
            self._data = data
            self._slot_size = L.fast_slot_size(pipe.capacity)
            self._required = pipe.header[L.PACKET_LEN]
            self._slot_count = self._slot.base + L.S_COUNT
            offsets = [L.fast_buffer_offset(pipe.capacity, self._lane, b) for b in (0, 1)]
            # Continue the lane's sequence (from the last even seq) so publications stay unique.
            self._stamp = self._stamp_at_connect = (max(data[o // 8 + L.B_SEQ] for o in offsets) + 1) & ~1
            latest = data[L.F_LATEST]
            # Write first into the buffer readers are not looking at, then alternate:
            # the buffer of a publication follows from its stamp, bit 1.
            lane_bits = self._lane << 1
            first = (latest & 1) ^ 1 if latest and (latest >> 1) & 0x7F == self._lane else 0
            targets = {}
            for nth, buffer in ((1, first), (2, first ^ 1)):  # the next publication, and the one after
                seq = offsets[buffer] // 8 + L.B_SEQ
                payload = offsets[buffer] + L.BUFFER_HEADER
                targets[((self._stamp >> 1) + nth) & 1] = (
                    seq,
                    seq + _LENGTH,
                    seq + _WRITE_NS,
                    payload,
                    lane_bits | buffer,
                )
            self._targets = (targets[0], targets[1])
            self._pipe = pipe
        except BaseException:
            self._abandon(pipe)
            raise
        self._register()
        self._log(f"connected (slot {self._slot.index}, lane {self._lane})")

    def _claim_lane(self, pipe: Pipe, data: memoryview, slot: Slot) -> int:
        # Under the writers' lock.  A lane is free when its owner's slot no longer
        # holds the token it was claimed with (the owner left or died and was reaped).
        h = pipe.header
        for lane in range(L.LANES):
            owner, token = _lane_owner(data, lane)
            if 0 < owner <= L.SLOT_COUNT:  # an owner out of range is damage: the lane is free
                base = L.slot_base(owner - 1)
                still_owned = h[base + L.S_TOKEN] == token and h[base + L.S_ROLE] == L.ROLE_SENDER
                if still_owned and pipe.slot_alive(owner - 1):
                    continue
            entry = (L.LANE_TABLE + lane * L.LANE_ENTRY) // 8
            data[entry + 1] = slot.token
            data[entry] = slot.index + 1
            return lane
        raise PipeBusyError(f"Fast pipe {self._name!r} already has {L.LANES} live senders; close one first")

    def close_connection(self) -> None:
        """Disconnect.  The value last sent stays in the pipe for later receivers.  Idempotent."""
        pipe, slot = self._pipe, self._slot
        if pipe is None or slot is None:
            return
        with self._send_lock:
            self._pipe = None
        entry = (L.LANE_TABLE + self._lane * L.LANE_ENTRY) // 8
        self._sent_before = sent = self._published()
        self._stamp_at_connect = self._stamp
        pipe.header[self._slot_count] = sent
        with pipe.lock:
            if self._data[entry + 1] == slot.token:
                self._data[entry] = 0
        self._disconnected(pipe, slot)

    def _forget_after_fork(self) -> None:
        pipe, slot = self._pipe, self._slot
        self._pipe = self._slot = None
        self._set_send_lock(threading.Lock())
        self._drop_inherited(pipe, slot)

    def _set_send_lock(self, lock: threading.Lock) -> None:
        self._send_lock = lock
        self._lock, self._unlock = lock.acquire, lock.release  # cheaper than "with", per update

    def _published(self) -> int:
        # Every publication adds 2 to the stamp: send() keeps no count of its own.
        return self._sent_before + (self._stamp - self._stamp_at_connect) // 2

    def _counters(self) -> tuple[int, int, int]:
        assert self._slot is not None
        return self._slot.index, self._published(), 0

    def send(self, data: Union[List[Any], tuple[Any, ...]]) -> None:
        """Publish ``data`` (a list or tuple) as the pipe's current value.  Never blocks on receivers.

        Raises :class:`PacketTypeError` for values PipeBit cannot carry and
        :class:`PacketSizeError` for a packet of the wrong length or larger than
        the pipe's slot.
        """
        # The hot path: every line here is paid per update.
        kind = data.__class__
        if kind is not list and kind is not tuple and not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        self._lock()  # one writer per lane: threads of this sender take turns
        try:
            pipe = self._pipe
            if pipe is None:
                self._require_pipe()
                return
            required = self._required
            if required and len(data) != required:
                raise PacketSizeError(f"pipe {self._name!r} carries packets of {required} elements, got {len(data)}")
            try:
                encoded = self._pack(data)
            except Exception as exc:
                error = _codec.encoding_error(exc)
                if error is exc:
                    raise
                raise error from exc
            n = len(encoded)
            if n > self._slot_size:
                raise PacketSizeError(
                    f"packet encodes to {n} bytes; Fast pipe {self._name!r} carries at most "
                    f"{self._slot_size} bytes per packet.  A pipe's slot_size is set when it is created: "
                    f"pass a larger slot_size in every process and recreate the pipe, with override=True "
                    f"on a sender while no other process is attached, or by removing it first "
                    f"(`pipebit rm {self._name}`)"
                )
            self._stamp = stamp = self._stamp + 2
            seq, length, write_ns, start, publish_bits = self._targets[(stamp >> 1) & 1]
            words = self._data
            words[seq] = stamp - 1  # odd: being written
            pipe.data[start : start + n] = encoded
            words[length] = n
            words[write_ns] = _time_ns()
            words[seq] = stamp  # even: complete
            words[_LATEST] = (stamp << 8) | publish_bits  # publish
            if not stamp & 0x1FE:  # every 256th: the count tools show, and another sender's override
                pipe.header[self._slot_count] = self._published()
                self._required = pipe.header[L.PACKET_LEN]
        finally:
            # Releasing a lock is an atomic read-modify-write, a full barrier on the CPUs we
            # run on: it orders "published" before "anyone asleep?" (see format.md, Waiting).
            self._unlock()
        try:
            sleepers = words[_SLEEPERS]
        except ValueError:  # another thread closed this sender since: nothing to wake
            return
        if sleepers:
            self._wake(pipe)

    def _wake(self, pipe: Pipe) -> None:
        with self._send_lock:
            if self._pipe is pipe:  # not closed by another thread meanwhile
                _wake_sleepers(pipe, self._data)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the value last sent is published.  On shared memory ``send()``
        publishes before it returns, so this returns at once (over Redis it waits for
        the background thread).  :class:`PipeClosedError` if the sender is closed."""
        check_timeout(timeout)
        self._require_pipe()


class FastReceiver(Endpoint):
    """Reads the newest value of a Fast pipe, creating the pipe if it does not exist.

    ``FastReceiver(name, debug=0)`` attaches at once.  Keyword-only options:

    * ``start`` -- ``"current"`` (default): the first ``receive()`` returns the
      value published before this receiver attached, if any; ``"new"``: only
      values published after it attached.
    * ``slot_size`` -- largest encoded packet, when this receiver creates the pipe.
    * ``create`` -- with ``False``, a missing pipe raises :class:`PipeNotFoundError`.
    """

    _role = "receiver"
    _model = L.MODEL_FAST

    def __init__(
        self,
        name: str,
        debug: Union[int, bool] = 0,
        *,
        start: str = "current",
        slot_size: int | None = None,
        create: bool = True,
    ) -> None:
        super().__init__(name, debug, create)
        if start not in ("current", "new"):
            raise InvalidArgumentError(f"start must be 'current' or 'new', not {start!r}")
        self._start = start
        self._capacity = _check_slot_size(slot_size)
        self._last = 0
        self._returned = 0
        self._new_locks()
        self.open_connection()

    def open_connection(self) -> None:
        """Attach to the pipe (creating it if needed).  No-op when connected."""
        if self._pipe is not None:
            return
        pipe = self._connect(
            L.ROLE_RECEIVER,
            capacity=self._capacity,
            packet_len=None,
            override=False,
            default_capacity=L.fast_capacity(DEFAULT_SLOT_SIZE),
        )
        assert self._slot is not None
        try:
            self._data = pipe.words
            self._slot_size = L.fast_slot_size(pipe.capacity)
            self._semaphore = pipe.slot_semaphore(self._slot.index)
            self._count_index = self._slot.base + L.S_COUNT
            if self._start == "new":
                self._last = self._data[L.F_LATEST]
            self._pipe = pipe
        except BaseException:
            self._abandon(pipe)
            raise
        self._register()
        self._log(f"connected (slot {self._slot.index})")

    def close_connection(self) -> None:
        """Detach from the pipe; a receive() waiting in another thread raises
        :class:`PipeClosedError`.  Idempotent."""
        with self._users:
            pipe, slot = self._pipe, self._slot
            if pipe is None or slot is None:
                return
            self._pipe = None
            deadline = time.monotonic() + 10
            while self._active and time.monotonic() < deadline:
                self._semaphore.release()  # wake it; it sees the endpoint closed and leaves
                self._users.wait(0.05)
        self._disconnected(pipe, slot)

    def _forget_after_fork(self) -> None:
        pipe, slot = self._pipe, self._slot
        self._pipe = self._slot = None
        self._new_locks()
        self._drop_inherited(pipe, slot)

    def _new_locks(self) -> None:
        # One reader of the register at a time.  And the calls in progress, so that
        # close_connection() (from any thread) can wake them and wait for them to
        # leave before it unmaps what they are using.  Bound acquire/release: a
        # polling loop calls receive(timeout=0) millions of times.
        read_lock, users_lock = threading.Lock(), threading.Lock()
        self._read_lock = read_lock
        self._read_acquire, self._read_release = read_lock.acquire, read_lock.release
        self._users = threading.Condition(users_lock)
        self._users_acquire, self._users_release = users_lock.acquire, users_lock.release
        self._active = 0

    def receive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT) -> list[Packet]:
        """``[newest packet]`` if a newer value was published since this receiver's last
        receive(), else ``[]``.

        With nothing new it waits for a new value: up to ``timeout`` seconds (default
        0.1), forever with ``None``, not at all with ``0``.
        """
        # Readers poll with timeout=0 in tight loops: this is a hot path too.
        limit = (
            timeout
            if timeout is not None and timeout.__class__ in PLAIN_SECONDS and timeout >= 0
            else check_timeout(timeout)
        )
        self._users_acquire()
        try:
            pipe = self._pipe
            if pipe is None:
                pipe = self._require_pipe()  # raises
            self._active += 1
        finally:
            self._users_release()
        try:
            if limit == 0:  # one look
                self._read_acquire()
                try:
                    packet = self._read_newest(pipe)
                finally:
                    self._read_release()
                return [] if packet is None else [packet]
            deadline = None if limit is None else time.monotonic() + limit
            while True:
                with self._read_lock:
                    packet = self._read_newest(pipe)
                if packet is not None:
                    return [packet]
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._sleep(pipe, remaining)
                if self._pipe is None:
                    self._require_pipe()  # closed meanwhile: raise
        finally:
            self._call_ended()

    def _call_ended(self) -> None:
        """A receive() call leaves; a close_connection() may be waiting for that."""
        self._users_acquire()
        self._active -= 1
        if self.closed:
            self._users.notify_all()
        self._users_release()

    def _read_newest(self, pipe: Pipe) -> Packet | None:
        words = self._data
        data = pipe.data
        for _ in range(MAX_READ_ATTEMPTS):
            latest = words[_LATEST]
            if latest == self._last or not latest:
                if pipe.header[_FLAGS] & _REMOVED:
                    raise PipeClosedError(f"pipe {self._name!r} was removed while this receiver was attached")
                return None
            stamp, lane, buffer = latest >> 8, (latest >> 1) & 0x7F, latest & 1
            if lane >= L.LANES:
                self._last = latest
                raise CorruptPacketError(f"pipe {self._name!r}: the published value names lane {lane}")
            offset = L.fast_buffer_offset(pipe.capacity, lane, buffer)
            header = offset // 8
            if words[header + L.B_SEQ] != stamp:
                continue  # that buffer is being rewritten: a newer value is on its way
            length = words[header + L.B_LENGTH]
            start = offset + L.BUFFER_HEADER
            payload = bytes(data[start : start + min(length, self._slot_size)])
            if words[header + L.B_SEQ] != stamp:
                continue  # overwritten while we copied
            self._last = latest  # this value is consumed, whether it decodes or not
            if length > self._slot_size:
                raise CorruptPacketError(
                    f"pipe {self._name!r}: the published value claims {length} bytes, "
                    f"more than the {self._slot_size} a slot holds"
                )
            self._returned += 1
            pipe.header[self._count_index] = self._returned
            try:
                return _codec.decode(payload)
            except CorruptPacketError as exc:
                raise CorruptPacketError(f"pipe {self._name!r}: {exc}") from None
        return None

    def _counters(self) -> tuple[int, int, int]:
        assert self._slot is not None
        return self._slot.index, self._returned, 0

    def _sleep(self, pipe: Pipe, timeout: float | None) -> None:
        assert self._slot is not None
        h, words = pipe.header, self._data
        flag = self._slot.base + L.S_WAITING
        h[flag] = 1
        words[L.F_SLEEPERS] = 1
        try:
            fence()
            latest = words[L.F_LATEST]
            if latest not in (self._last, 0):
                return
            _shm.sleep_on(self._semaphore, SLEEP_SLICE if timeout is None else min(timeout, SLEEP_SLICE))
        finally:
            h[flag] = 0

    def __iter__(self) -> Iterator[Packet]:
        """Yield each new value as it is published, until the receiver is closed."""
        while True:
            try:
                batch = self.receive(timeout=None)
            except PipeClosedError:
                return
            yield from batch
