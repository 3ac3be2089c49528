"""The shared-memory back-end of the Fast pipeline: a latest-value register fed by up to
eight senders, each writing its own lane of two buffers (``docs/format.md``, "The Fast
register").

A :class:`ShmFastWriter` publishes without taking any lock shared with other
processes: a seqlock per buffer, then one store of ``latest``.  A
:class:`ShmFastReader` copies the newest value and checks the buffer's sequence
before and after, so it never returns a torn value.  The faces in
:mod:`pipebit.fast` own the rest; neither class imports a face.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from . import _codec, _shm
from . import _layout as L
from ._attachment import Attachment
from ._limits import DEFAULT_SLOT_SIZE, Packet, Sendable, too_big, wrong_length
from ._pipe import Pipe, Slot, attach
from ._ring import fence
from .errors import CorruptPacketError, PipeBusyError, PipeClosedError

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

Log = Callable[[str], None]


def _attach(
    name: str,
    role: int,
    *,
    slot_size: int | None,
    packet_len: int | None,
    override: bool,
    create: bool,
    log: Log | None,
    init: Callable[[Pipe, int], None] | None = None,
) -> tuple[Pipe, Slot]:
    return attach(
        name,
        L.MODEL_FAST,
        role,
        init=init,
        capacity=None if slot_size is None else L.fast_capacity(slot_size),
        packet_len=packet_len,
        override=override,
        create=create,
        on_event=log,
        default_capacity=L.fast_capacity(DEFAULT_SLOT_SIZE),
    )


class ShmFastWriter(Attachment):
    """A sender's lane of a Fast pipe in shared memory.

    :meth:`send` is the sender's whole ``send()``: the face binds it at connect.
    """

    def __init__(
        self,
        name: str,
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
        pipe, slot = _attach(
            name, L.ROLE_SENDER, slot_size=slot_size, packet_len=packet_len, override=override, create=create, log=log
        )
        try:
            words = pipe.words
            with pipe.lock:
                if override:
                    words[L.F_LATEST] = 0
                self._lane = self._claim_lane(pipe, words, slot, name)
        except BaseException:
            pipe.release_slot(slot)
            pipe.close()
            raise
        self.pipe, self.slot, self.shown = pipe, slot, name
        self._words, self._data = words, pipe.data
        self._send_lock = send_lock
        self._lock, self._unlock = send_lock.acquire, send_lock.release
        self._owned = send_lock._is_owned  # type: ignore[attr-defined]  # private, but what Condition uses too
        self._pack, self._on_closed = pack, on_closed
        self.slot_size = L.fast_slot_size(pipe.capacity)
        self.packet_len = int(pipe.header[L.PACKET_LEN])
        self._count = slot.base + L.S_COUNT
        offsets = [L.fast_buffer_offset(pipe.capacity, self._lane, b) for b in (0, 1)]
        # Where _claim_lane() continued the lane's sequence, so that publications stay unique.
        self._stamp = self._first_stamp = words[(L.LANE_TABLE + self._lane * L.LANE_ENTRY) // 8 + L.L_FIRST_SEQ]
        latest = words[L.F_LATEST]
        # Write first into the buffer readers are not looking at, then alternate:
        # the buffer of a publication follows from its stamp, bit 1.
        lane_bits = self._lane << 1
        first = (latest & 1) ^ 1 if latest and (latest >> 1) & 0x7F == self._lane else 0
        targets = {}
        for nth, buffer in ((1, first), (2, first ^ 1)):  # the next publication, and the one after
            seq = offsets[buffer] // 8 + L.B_SEQ
            targets[((self._stamp >> 1) + nth) & 1] = (
                seq,
                seq + _LENGTH,
                seq + _WRITE_NS,
                offsets[buffer] + L.BUFFER_HEADER,
                lane_bits | buffer,
            )
        self._targets = (targets[0], targets[1])
        self.closed = False

    @staticmethod
    def _claim_lane(pipe: Pipe, words: memoryview, slot: Slot, name: str) -> int:
        # Under the writers' lock.  A lane is free when its owner's slot no longer
        # holds the token it was claimed with (the owner left or died and was reaped).
        h = pipe.header
        for lane in range(L.LANES):
            entry = (L.LANE_TABLE + lane * L.LANE_ENTRY) // 8
            owner, token = words[entry], words[entry + 1]
            if 0 < owner <= L.SLOT_COUNT:  # an owner out of range is damage: the lane is free
                base = L.slot_base(owner - 1)
                still_owned = h[base + L.S_TOKEN] == token and h[base + L.S_ROLE] == L.ROLE_SENDER
                if still_owned and pipe.slot_alive(owner - 1):
                    continue
            # Continue the lane's sequence from its last even seq, and say where this owner
            # began: its publications are then (seq - first_seq) / 2, for `pipebit stat`.
            seqs = [words[L.fast_buffer_offset(pipe.capacity, lane, b) // 8 + L.B_SEQ] for b in (0, 1)]
            words[entry + L.L_FIRST_SEQ] = (max(seqs) + 1) & ~1
            words[entry + L.L_OWNER_TOKEN] = slot.token
            words[entry + L.L_OWNER] = slot.index + 1
            return lane
        raise PipeBusyError(f"Fast pipe {name!r} already has {L.LANES} live senders; close one first")

    def send(self, data: Sendable) -> None:
        """The whole of ``FastSender.send()`` over shared memory: the checks and encoding of
        :func:`pipebit._codec.encode_update`, inline, then a seqlock write of this lane and one
        store of ``latest``; then wake receivers asleep waiting for a value.

        The face binds this method as the sender's ``send`` when it connects: one call per
        update, where the face's checks and a call into the back-end would cost two (the
        update rate of a Fast pipe is the cost of this path).  The face's send lock makes the
        threads of one sender take turns on the lane; releasing it is the memory barrier that
        orders "published" before "anyone asleep?" (see ``docs/format.md``, Waiting).
        """
        # The hot path: every line here is paid per update.
        kind = data.__class__
        if kind is not list and kind is not tuple and not isinstance(data, (list, tuple)):
            raise _codec.not_a_packet(data)
        # The lock is taken inside the try, so that an exception a signal handler raises as
        # acquire() returns does not leave it held (see SafeSender.send()).
        try:
            self._lock()
            if self.closed:
                self._on_closed()  # raises the face's PipeClosedError
            required = self.packet_len
            if required and len(data) != required:
                raise wrong_length(self.shown, required, len(data))
            try:
                encoded = self._pack(data)
            except Exception as exc:
                _codec.raise_encoding_error(exc, data)
            n = len(encoded)
            if n > self.slot_size:
                raise too_big(self.shown, n, self.slot_size, what="slot_size", setting=self.slot_size)
            self._stamp = stamp = self._stamp + 2
            seq, length, write_ns, start, publish_bits = self._targets[(stamp >> 1) & 1]
            words = self._words
            words[seq] = stamp - 1  # odd: being written
            self._data[start : start + n] = encoded
            words[length] = n
            words[write_ns] = _time_ns()
            words[seq] = stamp  # even: complete
            words[_LATEST] = (stamp << 8) | publish_bits  # publish
            if not stamp & 0x1FE:  # every 256th: the count tools show, and another sender's override
                header = self.pipe.header
                header[self._count] = self.published()
                self.packet_len = header[L.PACKET_LEN]
            self._unlock()
        except BaseException:
            if self._owned():
                self._unlock()
            raise
        try:
            sleepers = words[_SLEEPERS]
        except ValueError:  # another thread closed this sender since: nothing to wake
            return
        if sleepers:
            with self._send_lock:
                if not self.closed:
                    words[_SLEEPERS] = 0
                    self.pipe.wake_waiting_receivers()

    def forget(self) -> None:
        self.closed = True
        super().forget()

    def published(self) -> int:
        """Values published over this connection: every publication adds 2 to the stamp."""
        return (self._stamp - self._first_stamp) // 2

    def pending(self) -> int:
        """Nothing waits: send() publishes before it returns."""
        return 0

    def flush(self, timeout: float | None) -> None:
        """Every value is published before :meth:`send` returns: nothing to wait for."""

    def close(self) -> bool:
        """Give the lane and the slot back; the value stays for later receivers.  Call with
        the face's send lock held.  Returns whether a value was lost (never, here)."""
        self.closed = True
        pipe, slot = self.pipe, self.slot
        pipe.header[self._count] = self.published()
        entry = (L.LANE_TABLE + self._lane * L.LANE_ENTRY) // 8
        with pipe.lock:
            if self._words[entry + 1] == slot.token:
                self._words[entry] = 0
        self.release()
        return False


class ShmFastReader(Attachment):
    """A receiver of a Fast pipe in shared memory: the newest value it has not returned yet."""

    def __init__(self, name: str, *, start: str, slot_size: int | None, create: bool, log: Log | None) -> None:
        seen = [0]

        def place(pipe: Pipe, base: int) -> None:
            # "new": the value current when the slot is published is not new.  Read here, before
            # the slot shows (a tool that sees this receiver attached, and then publishes, is
            # sure its value counts as new); read after, a value published in between was lost.
            if start == "new":
                seen[0] = pipe.words[L.F_LATEST]

        pipe, slot = _attach(
            name,
            L.ROLE_RECEIVER,
            slot_size=slot_size,
            packet_len=None,
            override=False,
            create=create,
            log=log,
            init=place,
        )
        try:
            self._semaphore = pipe.slot_semaphore(slot.index)
        except BaseException:
            pipe.release_slot(slot)
            pipe.close()
            raise
        self.pipe, self.slot, self.shown = pipe, slot, name
        self._words = pipe.words
        self.slot_size = L.fast_slot_size(pipe.capacity)
        self._count = slot.base + L.S_COUNT
        self._returned = 0
        self._last = seen[0]
        self._stopped = False
        # One reader of the register at a time: receive() may be called from several threads.
        read_lock = threading.Lock()
        self._read_lock = read_lock
        self._read_acquire, self._read_release = read_lock.acquire, read_lock.release

    def read(self, timeout: float | None) -> list[Packet]:
        """``[newest value]`` if one newer than the last returned was published, waiting up to
        ``timeout`` for one (``None``: until one comes, or :meth:`interrupt`); else ``[]``."""
        if timeout == 0:  # one look: readers poll with timeout=0 in tight loops
            self._read_acquire()
            try:
                packet = self._read_newest()
            finally:
                self._read_release()
            return [] if packet is None else [packet]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._read_lock:
                packet = self._read_newest()
            if packet is not None:
                return [packet]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._sleep(remaining)
            if self._stopped:
                return []

    def _read_newest(self) -> Packet | None:
        pipe = self.pipe
        words = self._words
        data = pipe.data
        slot_size = self.slot_size
        for _ in range(MAX_READ_ATTEMPTS):
            latest = words[_LATEST]
            if latest == self._last or not latest:
                if pipe.header[_FLAGS] & _REMOVED:
                    raise PipeClosedError(f"pipe {self.shown!r} was removed while this receiver was attached")
                return None
            stamp, lane, buffer = latest >> 8, (latest >> 1) & 0x7F, latest & 1
            if lane >= L.LANES:
                self._last = latest
                raise CorruptPacketError(f"pipe {self.shown!r}: the published value names lane {lane}")
            offset = L.fast_buffer_offset(pipe.capacity, lane, buffer)
            header = offset // 8
            if words[header + L.B_SEQ] != stamp:
                continue  # that buffer is being rewritten: a newer value is on its way
            length = words[header + L.B_LENGTH]
            start = offset + L.BUFFER_HEADER
            payload = bytes(data[start : start + min(length, slot_size)])
            if words[header + L.B_SEQ] != stamp:
                continue  # overwritten while we copied
            self._last = latest  # this value is consumed, whether it decodes or not
            if length > slot_size:
                raise CorruptPacketError(
                    f"pipe {self.shown!r}: the published value claims {length} bytes, "
                    f"more than the {slot_size} a slot holds"
                )
            self._returned += 1
            pipe.header[self._count] = self._returned
            try:
                return _codec.decode(payload)
            except CorruptPacketError as exc:
                raise type(exc)(f"pipe {self.shown!r}: {exc}") from None
        return None

    def _sleep(self, timeout: float | None) -> None:
        h, words = self.pipe.header, self._words
        flag = self.slot.base + L.S_WAITING
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

    def interrupt(self) -> None:
        """Make a :meth:`read` in another thread return now (the receiver is closing)."""
        self._stopped = True
        self._semaphore.release()

    close = Attachment.release  # no read() may be in progress
