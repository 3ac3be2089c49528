"""The Safe model's ring: committing records, reading them, sleeping and waking.

Guarantees, and the mechanism behind each:

* **No torn packet.**  A writer copies a whole record into the ring, then
  publishes it by storing the new ``head`` (one aligned 8-byte store).  Readers
  never look past ``head``, so a writer killed mid-copy leaves only bytes no one
  will read, and the next writer overwrites them.
* **Nothing lost for an attached receiver.**  A writer only overwrites ring bytes
  below ``min(tail, every live receiver's cursor)``; when that leaves no room it
  sleeps until a receiver advances.  Retained packets (``tail``..``head``) are
  dropped, oldest first, only to make room.
* **Readers never lock.**  A receiver owns the bytes from its cursor to ``head``
  until it advances its cursor, so it decodes straight out of shared memory.
* **A dead receiver does not hold writers forever.**  While a writer is blocked
  it probes the kernel lock of the receiver holding it back; once that lock can
  be taken, the slot is freed (see :mod:`pipebit._lock`).

Sleeping is event-driven: a receiver with nothing to read sets ``waiting`` in
its slot and sleeps on its slot's semaphore, which writers post after each
commit; a writer with no room sets ``waiting`` in its slot and
``writers_waiting``, and sleeps on the pipe's writer semaphore, which receivers
post after advancing.  Every sleep is also bounded by a timeout, so a post lost
to a crash costs latency, never a hang.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable

from . import _codec, _shm
from . import _layout as L
from ._arrays import numpy_module
from ._frames import Rest
from ._pipe import Pipe, Slot
from ._wake import WAKE_COROUTINE, WAKE_SEMAPHORE
from .errors import CorruptPacketError, PipeClosedError

# How long a blocked writer sleeps before re-checking, and how often it probes
# the receiver that holds it back for death.  Posts normally wake it at once.
WRITER_NAP = 0.05
LIVENESS_INTERVAL = 0.25
_fence_lock = threading.Lock()

# Bound once: module globals are cheaper to reach than attributes, and a request/reply
# exchange pays _place() and read() on every packet.
_HEAD, _TAIL, _PACKETS, _LAST_WRITE_NS = L.HEAD, L.TAIL, L.PACKETS, L.LAST_WRITE_NS
_WRITERS_WAITING, _FLAGS, _REMOVED = L.WRITERS_WAITING, L.FLAGS, L.FLAG_REMOVED
_SLOT_HIGH, _SLOT_BASES, _S_ROLE, _S_CURSOR = L.SLOT_HIGH, L.SLOT_BASES, L.S_ROLE, L.S_CURSOR
_RECEIVER, _RECORD_HEADER, _pack_record = L.ROLE_RECEIVER, L.RECORD_HEADER, L.RECORD.pack_into
_unpack_record, _WRAP_MARK, _S_TOKEN, _S_NEXT_SEQ, _S_COUNT = (
    L.RECORD.unpack_from,
    L.WRAP_MARK,
    L.S_TOKEN,
    L.S_NEXT_SEQ,
    L.S_COUNT,
)
_decode_batch = _codec.decode_batch
_time_ns = time.time_ns


def fence() -> None:
    # Taking a lock is an atomic read-modify-write: a full memory barrier on the
    # CPUs we run on.  It orders "I am waiting" before "is there data?", so a
    # writer that publishes data cannot miss a receiver going to sleep.
    with _fence_lock:
        pass


class Aborted(Exception):
    """Internal: a blocked commit was told to give up (the sender is closing)."""


class RingWriter:
    """Commits records to a Safe pipe.  One per sender; used by one thread at a time."""

    def __init__(self, pipe: Pipe, slot: Slot | None = None) -> None:
        self.pipe = pipe
        self.capacity = pipe.capacity
        self._probe_due: dict[int, float] = {}
        self._moved_head = False  # set by _place()
        # Our slot's "waiting" flag says, for tools and other writers, that we sleep for room.
        self._flag = slot.base + L.S_WAITING if slot is not None else None

    def commit(self, payload: bytes, count: int, should_abort: Callable[[], bool], *, rest: Rest = b"") -> None:
        """Write ``payload + rest`` (a MessagePack array of ``count`` packets) as one record.

        ``rest`` lets a caller pass a large packet after its array header without
        first joining them into one more copy of it; it may be a list of buffers (the
        parts of a framed record: the arrays' items are copied from where they lie).

        Blocks while attached receivers have not read the bytes it would overwrite;
        raises :class:`Aborted` when ``should_abort()`` turns true while blocked.
        """
        h = self.pipe.header
        flag = self._flag
        while not self._place(payload, count, rest, waiting=True):
            if self._moved_head:  # a wrap mark went in: receivers must step over it to make room
                self.pipe.wake_waiting_receivers()
            if should_abort():
                if flag is not None:
                    h[flag] = 0
                raise Aborted
            _shm.sleep_on(self.pipe.writer_semaphore(), WRITER_NAP)
        self.pipe.wake_waiting_receivers()

    def try_commit(self, payload: bytes, count: int, *, rest: Rest = b"") -> bool:
        """Like :meth:`commit`, but never waits: ``False`` if the ring has no room right now."""
        placed = self._place(payload, count, rest, waiting=False)
        if placed or self._moved_head:
            self.pipe.wake_waiting_receivers()
        return placed

    def _place(self, payload: bytes, count: int, rest: Rest, *, waiting: bool) -> bool:
        """One attempt, under the writers' lock: write the record if there is room.

        With no room, a ``waiting`` writer flags itself as sleeping for room (so
        receivers post the writers' semaphore when they advance) and may reclaim
        the slot of a dead receiver that holds it back.  ``_moved_head`` tells
        whether ``head`` moved even so (a wrap mark was written): receivers asleep
        must then be woken, or no one would step over the mark and make room.
        """
        pipe = self.pipe
        h = pipe.header
        cap = self.capacity
        size = len(payload) + (len(rest) if rest.__class__ is not list else sum(map(len, rest)))
        length = L.align(_RECORD_HEADER + size)
        flag = self._flag
        self._moved_head = False
        with pipe.lock:
            if flag is not None:
                h[flag] = 0
            if h[_FLAGS] & _REMOVED:
                raise PipeClosedError(f"pipe {pipe.name!r} was removed while this sender was attached")
            while True:
                head = h[_HEAD]
                offset = head % cap
                wrap = length > cap - offset
                need = cap - offset if wrap else length
                lowest, holder = self._lowest_cursor(h, head)
                floor = head + need - cap
                if lowest < floor:
                    break
                if h[_TAIL] < floor:
                    self._drop_retained(floor, head)
                if wrap:
                    L.WRAP.pack_into(pipe.data, offset, L.WRAP_MARK)
                    h[_HEAD] = head + need
                    self._moved_head = True
                    continue  # the record goes at the start of the next lap
                data = pipe.data
                _pack_record(data, offset, size, count, h[_PACKETS])
                start = offset + _RECORD_HEADER
                _write_body(data, start, payload, rest)
                h[_PACKETS] += count
                h[_LAST_WRITE_NS] = _time_ns()
                h[_HEAD] = head + length  # publish: everything above is now visible
                if h[_WRITERS_WAITING]:
                    h[_WRITERS_WAITING] = self._others_waiting()
                return True
            if waiting:
                if flag is not None:
                    h[flag] = 1
                h[_WRITERS_WAITING] = 1  # receivers: post the writers' semaphore when you advance
                self._maybe_reclaim(holder)
                if holder >= 0 and not head - cap <= h[_SLOT_BASES[holder] + _S_CURSOR] <= head:
                    pipe.slot_semaphore(holder).release()  # an impossible cursor: its receiver restores it
            return False

    def _others_waiting(self) -> int:
        """1 if another live writer sleeps for room, else 0; frees dead sleepers' slots.

        Under the writers' lock.  ``writers_waiting`` is only a hint (a killed
        writer cannot clear it); this is where it is put right.
        """
        h = self.pipe.header
        for index, base in enumerate(_SLOT_BASES[: h[_SLOT_HIGH]]):
            if base + L.S_WAITING == self._flag or h[base + L.S_ROLE] != L.ROLE_SENDER:
                continue
            if h[base + L.S_WAITING]:
                if self.pipe.slot_alive(index):
                    return 1
                self.pipe.free_dead_slot(index)
        return 0

    def _lowest_cursor(self, h: memoryview, head: int) -> tuple[int, int]:
        """(lowest position an attached receiver or a group still needs, or ``head``; its slot or -1).

        A cursor more than a lap behind ``head`` (or past it) is one no receiver can
        have, since writers never pass a receiver: it is damage to that slot.  It is
        taken as a lap behind, so that nothing its receiver may still need is
        overwritten, and :meth:`_place` wakes that receiver, which puts its cursor right.
        """
        lowest, holder = head, -1
        possible = head - self.capacity
        for index, base in enumerate(_SLOT_BASES[: h[_SLOT_HIGH]]):
            if h[base + _S_ROLE] & 1:  # a receiver, or a group: their cursors hold writers back
                cursor = h[base + _S_CURSOR]
                if cursor < lowest:
                    lowest, holder = max(cursor, possible), index
                elif cursor > head:  # as far back as it could be, so that nothing it may need is lost
                    lowest, holder = possible, index
        return lowest, holder

    def _drop_retained(self, floor: int, head: int) -> None:
        """Advance ``tail`` record by record to at least ``floor`` (never past ``head``)."""
        h, data, cap = self.pipe.header, self.pipe.data, self.capacity
        tail = h[L.TAIL]
        while tail < floor:
            offset = tail % cap
            length = L.RECORD.unpack_from(data, offset)[0] if cap - offset >= L.RECORD_HEADER else L.WRAP_MARK
            if length == L.WRAP_MARK:
                tail += cap - offset
            elif length <= cap - offset - L.RECORD_HEADER:
                tail += L.align(L.RECORD_HEADER + length)
            else:  # garbage where a record should be: retention cannot be trusted, drop it all
                tail = head
            if tail >= head:
                tail = head
                break
        h[L.TAIL] = tail

    def _maybe_reclaim(self, holder: int) -> None:
        """Free ``holder``'s slot if its process is dead; probes at most every LIVENESS_INTERVAL."""
        if holder < 0:
            return
        now = time.monotonic()
        due = self._probe_due.get(holder)
        if due is None:
            self._probe_due[holder] = now + LIVENESS_INTERVAL
            return
        if now >= due:
            self._probe_due.pop(holder, None)
            self.pipe.free_dead_slot(holder)


def _write_body(data: memoryview, start: int, payload: bytes, rest: Rest) -> None:
    """Copy a record's payload, ``payload`` then ``rest``, into the ring at ``start``."""
    end = start + len(payload)
    data[start:end] = payload
    if rest.__class__ is list:  # a framed record's parts: the arrays' items copied from where they lie
        for part in rest:
            data[end : end + len(part)] = part
            end += len(part)
    elif rest:
        data[end : end + len(rest)] = rest  # type: ignore[assignment]  # bytes, here


def start_position(pipe: Pipe, start: str) -> tuple[int, int]:
    """(cursor, next_seq) for a receiver attaching now with ``start``.  Call with the writers' lock held.

    ``"new"``: the head.  ``"oldest"``: the oldest retained record.  ``"unread"``: the
    first retained record that no receiver has read -- past every attached receiver's
    cursor and past ``read_mark``, how far receivers that have left had read.
    """
    h, data, capacity = pipe.header, pipe.data, pipe.capacity
    head, tail = h[L.HEAD], h[L.TAIL]
    if start == "new" or tail >= head:
        return head, h[L.PACKETS]
    position = tail
    if start == "unread":
        marks = [h[base + _S_CURSOR] for base in _SLOT_BASES[: h[_SLOT_HIGH]] if h[base + _S_ROLE] == _RECEIVER]
        for mark in [*marks, h[L.READ_MARK]]:
            # A mark that is not a record's start is damage: it is passed over, not trusted.
            if position < mark <= head and (mark == head or _record_at(data, capacity, mark, head, strict=True)):
                position = mark
    # Damage in the record found there is not judged here: the reader meets it, and says so.
    return _record_at(data, capacity, position, head, strict=False) or (head, h[L.PACKETS])


def _record_at(data: memoryview, capacity: int, position: int, head: int, *, strict: bool) -> tuple[int, int] | None:
    """(position, first_seq) of the record at ``position`` of the ring, stepping over a wrap
    mark; ``None`` at ``head``.  ``strict``: also ``None`` if what is there cannot be a
    record's start (a damaged mark or cursor)."""
    offset = position % capacity
    room = capacity - offset
    if room < L.RECORD_HEADER or L.WRAP.unpack_from(data, offset)[0] == L.WRAP_MARK:
        position += room  # a wrap mark carries no sequence number: the next lap's record does
        offset = 0
    if position >= head:
        return None
    length, count, first_seq = L.RECORD.unpack_from(data, offset)
    if strict and (position % L.ALIGN or count == 0 or position + L.align(L.RECORD_HEADER + length) > head):
        return None
    return position, first_seq


class RingReader:
    """Reads one receiver's records.  Used by one thread at a time."""

    def __init__(self, pipe: Pipe, slot: Slot) -> None:
        self.pipe = pipe
        self.slot = slot
        self.capacity = pipe.capacity
        h = pipe.header
        self.cursor = h[slot.base + L.S_CURSOR]
        self.next_seq = h[slot.base + L.S_NEXT_SEQ]
        self.bytes_read = 0
        self.problem: Exception | None = None  # see read()
        self.semaphore = pipe.slot_semaphore(slot.index)
        _shm.drain(self.semaphore)  # posts meant for a previous holder of this slot
        # Records whose bytes arrays returned by receive(copy=False) still view: position ->
        # live holds.  The cursor writers see stays at the oldest of them (see _hold()).
        self.framed = False
        self._held: dict[int, int] = {}
        # Guards _held, the shared cursor and the waiting word of our slot: a finalizer, the
        # caching thread and a coroutine's loop may each touch them.
        self._held_lock = threading.Lock()
        self._decoding_at = 0
        self._let_go_at_last = False  # closed while views were out: the last one lets the slot go

    def available(self) -> bool:
        """Whether committed records are waiting to be read."""
        return self.pipe.header[L.HEAD] != self.cursor

    def last_write_ns(self) -> int:
        """When the newest record was committed (``time.time_ns()`` of the writer)."""
        return int(self.pipe.header[L.LAST_WRITE_NS])

    def read(self, limit: int, byte_limit: int = 1 << 62) -> list[Any]:  # noqa: PLR0912, PLR0915 - hot loop: a call per record costs
        """Decode the committed records after the cursor -- whole records, until ``limit``
        packets or ``byte_limit`` bytes of records are reached -- and advance past them.
        ``[]`` when there are none.  ``bytes_read`` tells how many bytes the records took.

        Damage is reported in ``problem``, which every call sets (a
        :class:`CorruptPacketError`, or ``None``): reading stops at the damage, and
        the packets before it are returned, so that the caller hands them over before
        it raises the error.  A record whose payload does not decode costs only its
        own packets from the bad one on; the next read goes on after it.  Damage that
        hides where the next record starts (an impossible head, record length or
        sequence number) costs everything committed up to then: the reader skips to
        the newest commit.
        """
        pipe = self.pipe
        h = pipe.header
        slot = self.slot
        self.problem = None
        if h[slot.base + _S_TOKEN] != slot.token:
            raise PipeClosedError(f"this receiver's slot in pipe {pipe.name!r} was taken over; it was detached")
        head = h[_HEAD]
        cursor = first = self.cursor
        self.bytes_read = 0
        if cursor == head:
            if h[_FLAGS] & _REMOVED:
                raise PipeClosedError(f"pipe {pipe.name!r} was removed while this receiver was attached")
            return []
        data, cap = pipe.data, self.capacity
        out: list[Any] = []
        next_seq = self.next_seq
        try:
            if not cursor < head <= cursor + cap:  # writers never pass a live receiver's cursor
                raise CorruptPacketError(
                    f"pipe {pipe.name!r}: head {head} is impossible for a receiver at {cursor}; "
                    "something other than PipeBit wrote to the segment"
                )
            while cursor < head and len(out) < limit and cursor - first < byte_limit:
                offset = cursor % cap
                room = cap - offset
                if room >= _RECORD_HEADER:
                    length, count, first_seq = _unpack_record(data, offset)
                else:
                    length = _WRAP_MARK  # a wrap mark may be only its first field, in the lap's last bytes
                if length == _WRAP_MARK:
                    if offset == 0:  # every record fits at the start of a lap: no writer marks one
                        raise CorruptPacketError(f"pipe {pipe.name!r}: wrap mark at the start of a lap")
                    cursor += room
                    continue
                end = cursor + L.align(_RECORD_HEADER + length)
                if length > room - _RECORD_HEADER or end > head or count == 0 or first_seq < next_seq:
                    raise CorruptPacketError(
                        f"pipe {pipe.name!r}: record at position {cursor} (length {length}, {count} packets, "
                        f"first {first_seq}, expected at least {next_seq}) is not one PipeBit wrote"
                    )
                start = offset + _RECORD_HEADER
                # Released on the way out even if decoding fails: an exception holding
                # a view of the mapping would keep the segment from being unmapped.
                self._decoding_at = cursor
                with data[start : start + length] as payload:
                    packets, damage = _decode_batch(payload, count, self._hold)
                if out:
                    out += packets
                else:
                    out = packets
                if damage is None:
                    cursor, next_seq = end, first_seq + count
                else:
                    self.problem = type(damage)(f"pipe {pipe.name!r}, record at position {cursor}: {damage}")
                    cursor = end
                    # The damage may be in the count itself: expect no more of the next record
                    # than that it comes after this one.
                    next_seq = first_seq + 1
                    break
        except CorruptPacketError as exc:
            self.problem = exc
            # Head and packet count of one moment, under the writers' lock: from a head read
            # before a commit and a count read after it, the next good record would look
            # corrupt too.  Rare, so the lock costs nothing that matters.
            with pipe.lock:
                cursor, next_seq = h[_HEAD], h[L.PACKETS]
        self.bytes_read = cursor - first
        self._advance(cursor, next_seq, len(out))
        return out

    def _advance(self, cursor: int, next_seq: int, count: int) -> None:
        h = self.pipe.header
        base = self.slot.base
        self.next_seq = next_seq
        h[base + _S_NEXT_SEQ] = next_seq
        h[base + _S_COUNT] += count
        with self._held_lock:  # wait() in another thread may be putting the shared cursor right
            self.cursor = cursor
            # With views out, the oldest viewed record is as far as writers may go; else
            # the bytes below the cursor are now the writers' again.
            h[base + _S_CURSOR] = self._shared_cursor() if self._held else cursor
        if h[_WRITERS_WAITING]:
            self.pipe.writer_semaphore().release()

    def _shared_cursor(self) -> int:
        """The cursor writers must not pass: ours, or the oldest record views still hold."""
        held = self._held
        return min(self.cursor, *held) if held else self.cursor

    def _hold(self, payload: Any) -> Any:
        """For the framed record being decoded: a read-only uint8 array over its payload, for
        its arrays to view.  No view may ever show bytes a writer has since overwritten,
        whatever the application does with it: so the record stays unread (the shared
        cursor stays at or below it) until that array and every array viewing it are gone,
        which a finalizer reports (:meth:`_let_go`)."""
        np = numpy_module()
        base = np.frombuffer(payload.toreadonly(), np.uint8)
        position = self._decoding_at
        with self._held_lock:
            self._held[position] = self._held.get(position, 0) + 1
        weakref.finalize(base, self._let_go, position)
        self.framed = True
        return base

    def _let_go(self, position: int) -> None:
        """The last view of the record at ``position`` is gone (in whichever thread dropped it)."""
        with self._held_lock:
            left = self._held[position] - 1
            if left:
                self._held[position] = left
                return
            del self._held[position]
            if self._let_go_at_last:  # closed meanwhile: the slot was kept for the views
                if not self._held:
                    self.pipe.release_slot(self.slot)
                    self.pipe.close()
                return
            if self.pipe.closed:  # a forked child's copy: the parent owns the slot
                return
            h = self.pipe.header
            h[self.slot.base + _S_CURSOR] = self._shared_cursor()
            if h[_WRITERS_WAITING]:
                self.pipe.writer_semaphore().release()

    def close_when_unviewed(self) -> bool:
        """Let the slot go now -- ``True`` -- or, while views of its records are out, when the
        last of them is gone (the slot keeps holding writers back until then)."""
        with self._held_lock:
            if self._held:
                self._let_go_at_last = True
                return False
        return True

    def _restore_shared_cursor(self) -> None:
        """Before sleeping: if our shared cursor was overwritten, writers would wait on a
        position we are not at, and we would sleep for ever.  Only this receiver knows
        where it is."""
        h = self.pipe.header
        base = self.slot.base
        with self._held_lock:
            shared = self._shared_cursor()
            if h[base + _S_CURSOR] == shared or h[base + _S_TOKEN] != self.slot.token:
                return
            h[base + _S_CURSOR] = shared
        if h[_WRITERS_WAITING]:
            self.pipe.writer_semaphore().release()

    def _mark_waiting(self, bit: int, on: bool) -> None:
        """Set or clear one bit of our slot's ``waiting`` word (a thread sleeping on the
        semaphore, a coroutine awaiting its wake socket: both may wait at once)."""
        h = self.pipe.header
        flag = self.slot.base + L.S_WAITING
        with self._held_lock:
            h[flag] = h[flag] | bit if on else h[flag] & ~bit

    def wait(self, timeout: float) -> bool:
        """Sleep until a writer commits (or ``timeout`` seconds pass); ``True`` if data is there."""
        h = self.pipe.header
        self._restore_shared_cursor()
        self._mark_waiting(WAKE_SEMAPHORE, True)
        try:
            fence()
            if h[L.HEAD] != self.cursor:
                return True
            _shm.sleep_on(self.semaphore, timeout)
            return h[L.HEAD] != self.cursor
        finally:
            self._mark_waiting(WAKE_SEMAPHORE, False)

    def expect_wake(self) -> bool:
        """Mark our slot for a datagram to our wake socket at the next commit (a coroutine is
        about to await it: see :mod:`pipebit._wake`); ``False``, unmarked, if data is there
        already.  :meth:`wake_expected` takes the mark off."""
        self._restore_shared_cursor()
        self._mark_waiting(WAKE_COROUTINE, True)
        fence()
        if self.pipe.header[L.HEAD] != self.cursor:
            self._mark_waiting(WAKE_COROUTINE, False)
            return False
        return True

    def wake_expected(self) -> None:
        self._mark_waiting(WAKE_COROUTINE, False)

    def interrupt(self) -> None:
        """Wake a thread sleeping in :meth:`wait` (used to stop it)."""
        self.semaphore.release()
