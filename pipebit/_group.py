"""Receiver groups of a Safe pipe in shared memory: work shared among members, redelivered
when a member dies.

Guarantees, and the mechanism behind each (``docs/groups.md`` has the whole design):

* **Each packet to one member of each group.**  A group's shared ``cursor`` (in its
  entry of the group area) says which packet no member has claimed yet.  A member
  *claims* a batch by moving the cursor past it, under the writers' lock, and
  records the claim (first and end sequence numbers, and the ring position of the
  record holding the first) in the group's claim table before the lock is let go.
  It then decodes the claimed packets out of the ring without any lock.
* **Nothing lost when a member dies.**  A claim stays in the table until its member
  acknowledges it (its next claim, ``ack()`` or closing).  The group's *release
  position* -- its participant slot's cursor, which writers respect like a
  receiver's -- is the lowest position of any claim (or the cursor): the ring
  under a claim is not reused while the claim is held.  A member that finds a
  claim whose member is gone (its slot's kernel lock free, or its slot taken by
  someone else) marks it orphaned; orphaned claims are handed out again, before
  any new packet, to the next member that claims.
* **Durable.**  The group's slot is held by no process: it stays, and keeps
  writers from overwriting what the group has not consumed, after every member
  has gone, until :func:`remove_group`.

A live member looks for dead ones at most every :data:`LIVENESS_INTERVAL` while
it claims or waits, so a dead member's claims go to the others within about that
(plus the time the others take to come back for work).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any, Callable

from . import _codec, _lock, _shm
from . import _layout as L
from ._pipe import Pipe, Slot, attach_existing
from ._ring import LIVENESS_INTERVAL, fence, start_position
from .errors import CorruptPacketError, PipeBusyError, PipeClosedError, PipeFormatError, PipeNotFoundError

# A member sizes its claims so that one lasts about this long at the pace it has been
# processing packets (see docs/groups.md): long enough that claiming costs nothing that
# matters, short enough that work left in a claim cannot hold the others up for long.
BATCH_SECONDS = 0.005
READ_BYTES = 1 << 20  # a claim stops after about this many bytes of records (at least one packet)


def _name_of(pipe: Pipe, entry: int) -> str:
    assert pipe.groups is not None
    assert pipe.group_bytes is not None
    start = L.group_base(entry) * 8 + L.G_NAME
    length = min(pipe.groups[L.group_base(entry) + L.G_NAME_LEN], L.GROUP_NAME_BYTES)
    return bytes(pipe.group_bytes[start : start + length]).decode("utf-8", "replace")


def _area(pipe: Pipe, group: str) -> memoryview:
    if pipe.groups is None:
        raise PipeFormatError(
            f"pipe {pipe.name!r} (receiver group {group!r}): this pipe was made by an older PipeBit (layout "
            f"version {pipe.version}) and has no room for receiver groups; remove it (`pipebit rm {pipe.name}`) "
            "and let this version create it"
        )
    return pipe.groups


def find_group(pipe: Pipe, group: str) -> int | None:
    """The group-area entry of group ``group``, or ``None``.  Under the writers' lock."""
    _area(pipe, group)  # a pipe without a group area says so
    for entry in range(L.GROUPS):
        if _in_use(pipe, entry) and _name_of(pipe, entry) == group:
            return entry
    return None


def _in_use(pipe: Pipe, entry: int) -> bool:
    """Whether group-area ``entry`` holds a group.  Under the writers' lock.  An entry whose
    slot does not hold it (its creator was killed half-way; or damage) is freed here."""
    assert pipe.groups is not None
    groups, h = pipe.groups, pipe.header
    base = L.group_base(entry)
    slot = groups[base + L.G_SLOT] - 1
    if slot < 0:
        return False
    held = slot < L.SLOT_COUNT and h[L.slot_base(slot) + L.S_ROLE] == L.ROLE_GROUP
    if held and h[L.slot_base(slot) + L.S_TOKEN] == groups[base + L.G_TOKEN]:
        return True
    groups[base + L.G_SLOT] = 0
    return False


def join(pipe: Pipe, member: int, group: str, start: str) -> int:
    """Find group ``group`` or create it (at ``start``), for the member claiming slot
    ``member``; return its group-area entry.  Under the writers' lock (an ``init`` of
    :meth:`Pipe.claim_slot`)."""
    entry = find_group(pipe, group)
    if entry is None:
        entry = _create(pipe, member, group, start)
    return entry


def _create(pipe: Pipe, member: int, group: str, start: str) -> int:
    groups = _area(pipe, group)
    h = pipe.header
    entry = next((e for e in range(L.GROUPS) if not _in_use(pipe, e)), None)
    if entry is None:
        raise PipeBusyError(
            f"pipe {pipe.name!r} already has {L.GROUPS} receiver groups, so group {group!r} cannot be created; "
            "remove one with pipebit.remove_group() or `pipebit rm NAME --group G`"
        )
    index = _free_slot(pipe, member)
    if index is None:
        raise PipeBusyError(
            f"pipe {pipe.name!r}: no free participant slot for receiver group {group!r} (a pipe has "
            f"{L.SLOT_COUNT} for its senders, receivers, group members and groups)"
        )
    cursor, seq = start_position(pipe, start)
    token = secrets.randbits(63) or 1
    now = time.time_ns()
    base = L.group_base(entry)
    raw = group.encode("utf-8")
    assert pipe.group_bytes is not None
    name_at = base * 8 + L.G_NAME
    pipe.group_bytes[name_at : name_at + L.GROUP_NAME_BYTES] = raw.ljust(L.GROUP_NAME_BYTES, b"\0")
    for claim in range(L.CLAIMS):  # free; a free claim keeps a non-zero token (0 marks orphans)
        groups[L.claim_base(entry, claim) + L.C_OWNER] = 0
        groups[L.claim_base(entry, claim) + L.C_TOKEN] = token
    groups[base + L.G_NAME_LEN] = len(raw)
    groups[base + L.G_TOKEN] = token
    groups[base + L.G_CURSOR] = cursor
    groups[base + L.G_NEXT_SEQ] = seq
    groups[base + L.G_DELIVERED] = groups[base + L.G_REDELIVERED] = 0
    groups[base + L.G_CREATED_NS] = now
    groups[base + L.G_SLOT] = index + 1
    # The slot last, its role last of all: a creator killed before that leaves an entry that
    # _in_use() frees, and no slot holding writers back for a group no one can name.
    slot = L.slot_base(index)
    h[slot + L.S_PID] = entry
    h[slot + L.S_TOKEN] = token
    h[slot + L.S_CURSOR] = cursor
    h[slot + L.S_NEXT_SEQ] = seq
    h[slot + L.S_WAITING] = 0
    h[slot + L.S_ATTACHED_NS] = now
    h[slot + L.S_COUNT] = 0
    h[slot + L.S_ROLE] = L.ROLE_GROUP
    h[L.SLOT_HIGH] = min(max(h[L.SLOT_HIGH], index + 1), L.SLOT_COUNT)
    return entry


def _free_slot(pipe: Pipe, member: int) -> int | None:
    """A participant slot no one holds (not ``member``, being claimed), for a group."""
    h = pipe.header
    for index, base in enumerate(L.SLOT_BASES):
        role = h[base + L.S_ROLE]
        if index == member or role == L.ROLE_GROUP or (role != L.ROLE_FREE and pipe.slot_alive(index)):
            continue
        probe = _lock.SlotLock(_shm.slot_path(pipe.name, index))
        if not probe.try_hold():  # a holder not visible yet
            continue
        probe.close()
        if role != L.ROLE_FREE:
            pipe.free_dead_slot(index)
        return index
    return None


def members_of(pipe: Pipe, group_slot: int) -> list[int]:
    """Slots of the members of the group in ``group_slot`` (live or not).  Under the writers' lock."""
    h = pipe.header
    return [
        index
        for index, base in enumerate(L.SLOT_BASES[: h[L.SLOT_HIGH]])
        if h[base + L.S_ROLE] == L.ROLE_MEMBER and h[base + L.S_CURSOR] == group_slot
    ]


class BatchSizer:
    """How many packets a member claims at once -- the same rule on every transport
    (docs/groups.md, "How much one receive() takes"): its share of what is waiting,
    divided among the members, at most what it processes in :data:`BATCH_SECONDS` at
    its own pace, at most ``max_packets``; or, with ``batch``, at most ``batch``."""

    def __init__(self, batch: int | None, max_packets: int) -> None:
        self.batch = batch
        self.max_packets = max_packets
        self._returned_at = 0.0  # when the last batch was handed to the application
        self._returned_count = 0
        self._per_packet: float | None = None  # seconds the application spends per packet

    def returned(self, count: int) -> None:
        """A batch of ``count`` packets goes to the application now."""
        self._returned_at, self._returned_count = time.monotonic(), count

    def learn(self) -> None:
        """The application asks for more: how long did it take per packet of the last batch?"""
        if self._returned_count and self._returned_at:
            pace = (time.monotonic() - self._returned_at) / self._returned_count
            self._per_packet = pace if self._per_packet is None else (self._per_packet + pace) / 2
        self._returned_count = 0

    def want(self, available: int, members: int) -> int:
        """Packets to claim of the ``available`` ones, with ``members`` in the group."""
        if self.batch is not None:
            return min(self.batch, available)
        want = min(math.ceil(available / max(members, 1)), self.max_packets)
        pace = self._per_packet
        paced = 1 if pace is None else max(1, int(BATCH_SECONDS / pace) if pace > 0 else want)
        return max(1, min(want, paced))


class GroupMember:
    """One member's claims on its group.  Used by one thread at a time."""

    def __init__(self, pipe: Pipe, slot: Slot, *, entry: int, group: str, batch: int | None, max_packets: int) -> None:
        assert pipe.groups is not None
        self.pipe, self.slot, self.entry, self.group = pipe, slot, entry, group
        self._groups = pipe.groups
        self._g = L.group_base(entry)
        self.group_slot = self._groups[self._g + L.G_SLOT] - 1
        self._group_token = self._groups[self._g + L.G_TOKEN]
        self.sizer = BatchSizer(batch, max_packets)
        self.claim = -1  # our entry in the claim table, or -1
        self.problem: Exception | None = None
        self._probe_due = 0.0  # look for dead members at the first claim
        self._decoded: tuple[tuple[int, ...], list[Any]] = ((), [])  # the record decoded last, by its key
        self.semaphore = pipe.slot_semaphore(slot.index)
        _shm.drain(self.semaphore)

    # ------------------------------------------------------------ claiming
    def take(self, timeout: float | None, closing: Callable[[], bool]) -> list[Any]:
        """Acknowledge the batch returned last, then claim and decode the next one, waiting up
        to ``timeout`` (``None``: for ever) while there is none; ``[]`` if none came.
        ``closing()`` true ends a wait early."""
        self.sizer.learn()
        self.problem = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            claim = self._ack_and_claim()
            if claim is not None:
                packets = self._decode(*claim)
                if packets or self.problem is not None:
                    self.sizer.returned(len(packets))
                    self.pipe.header[self.slot.base + L.S_COUNT] += len(packets)
                    return packets
                continue  # nothing decodable in it: acknowledged with the next claim
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or closing():
                return []
            self.wait(LIVENESS_INTERVAL if remaining is None else min(remaining, LIVENESS_INTERVAL))

    def ack(self) -> None:
        """Acknowledge the batch returned last (a no-op without one)."""
        if self.claim >= 0:
            with self.pipe.lock:
                self._check()
                self._release_claim()
                self._update_release()

    def _check(self) -> None:
        pipe, h = self.pipe, self.pipe.header
        if h[L.FLAGS] & L.FLAG_REMOVED:
            raise PipeClosedError(f"pipe {pipe.name!r} was removed while this group member was attached")
        if h[self.slot.base + L.S_TOKEN] != self.slot.token:
            raise PipeClosedError(f"this member's slot in pipe {pipe.name!r} was taken over; it was detached")
        if (
            self._groups[self._g + L.G_SLOT] != self.group_slot + 1
            or self._groups[self._g + L.G_TOKEN] != self._group_token
        ):
            raise PipeClosedError(f"receiver group {self.group!r} of pipe {pipe.name!r} was removed")

    def _ack_and_claim(self) -> tuple[int, int, int] | None:
        with self.pipe.lock:
            self._check()
            self._release_claim()
            now = time.monotonic()
            if now >= self._probe_due:
                self._probe_due = now + LIVENESS_INTERVAL
                self._orphan_dead()
            claim = self._take_orphan()
            if claim is None:
                claim = self._claim_new()
            self._update_release()
            return claim

    def _release_claim(self) -> None:
        if self.claim < 0:
            return
        groups, c = self._groups, L.claim_base(self.entry, self.claim)
        self.claim = -1
        if groups[c + L.C_OWNER] == self.slot.index + 1 and groups[c + L.C_TOKEN] == self.slot.token:
            groups[c + L.C_OWNER] = 0
            self.pipe.header[L.slot_base(self.group_slot) + L.S_COUNT] += groups[c + L.C_END] - groups[c + L.C_FIRST]

    def _orphan_dead(self) -> None:
        """Mark the claims of members that are gone as orphaned, and free their slots."""
        pipe, h, groups = self.pipe, self.pipe.header, self._groups
        dead = {index for index in members_of(pipe, self.group_slot) if index != self.slot.index}
        dead = {index for index in dead if pipe.free_dead_slot(index)}
        for claim in range(L.CLAIMS):
            c = L.claim_base(self.entry, claim)
            owner, token = groups[c + L.C_OWNER], groups[c + L.C_TOKEN]
            if not owner or not token:
                continue
            base = L.slot_base(min(owner - 1, L.SLOT_COUNT - 1))
            if owner - 1 in dead or h[base + L.S_ROLE] != L.ROLE_MEMBER or h[base + L.S_TOKEN] != token:
                groups[c + L.C_TOKEN] = 0

    def _column(self, field: int) -> list[int]:
        """One field of every claim of the group, in claim order (one strided copy: the
        table is looked at on every claim, and 64 single reads cost ~10 us)."""
        first = L.claim_base(self.entry, 0) + field
        return self._groups[first : first + L.CLAIMS * L.CLAIM_WORDS : L.CLAIM_WORDS].tolist()

    def _take_orphan(self) -> tuple[int, int, int] | None:
        groups = self._groups
        tokens = self._column(L.C_TOKEN)
        if all(tokens):  # every claim, free or held, has a token: the common case
            return None
        owners = self._column(L.C_OWNER)
        orphans = [claim for claim in range(L.CLAIMS) if owners[claim] and not tokens[claim]]
        if not orphans:
            return None
        claim = orphans[0]
        c = L.claim_base(self.entry, claim)
        groups[c + L.C_OWNER] = self.slot.index + 1
        groups[c + L.C_TOKEN] = self.slot.token
        self.claim = claim
        count = groups[c + L.C_END] - groups[c + L.C_FIRST]
        groups[self._g + L.G_REDELIVERED] += count
        groups[self._g + L.G_DELIVERED] += count
        return groups[c + L.C_POSITION], groups[c + L.C_FIRST], groups[c + L.C_END]

    def _claim_new(self) -> tuple[int, int, int] | None:
        """Move the group's cursor past the next batch and record it as our claim."""
        pipe, h, groups, g = self.pipe, self.pipe.header, self._groups, self._g
        seq, written = groups[g + L.G_NEXT_SEQ], h[L.PACKETS]
        if seq >= written:
            return None
        owners = self._column(L.C_OWNER)
        if all(owners):  # cannot happen: a member holds one claim, and a pipe has fewer slots than claims
            return None
        free = owners.index(0)
        members = len(members_of(pipe, self.group_slot)) if self.sizer.batch is None else 1
        want = self.sizer.want(written - seq, members)
        head, data, cap = h[L.HEAD], pipe.data, pipe.capacity
        position = groups[g + L.G_CURSOR]
        first, start, taken = seq, -1, 0
        while taken < want and position < head and (start < 0 or position - start < READ_BYTES):
            offset = position % cap
            room = cap - offset
            if room < L.RECORD_HEADER or L.WRAP.unpack_from(data, offset)[0] == L.WRAP_MARK:
                position += room
                continue
            length, count, record_first = L.RECORD.unpack_from(data, offset)
            end = position + L.align(L.RECORD_HEADER + length)
            if length > room - L.RECORD_HEADER or end > head or count == 0 or not record_first <= seq:
                # Damage hides where the packets are: what is left is lost, and said so.
                self.problem = CorruptPacketError(
                    f"pipe {pipe.name!r}, receiver group {self.group!r}: the record at position {position} is not "
                    f"one PipeBit wrote; the group skips to the newest packet"
                )
                position, seq = head, written
                break
            if seq >= record_first + count:
                position = end
                continue
            if start < 0:
                start = position
            step = min(want - taken, record_first + count - seq)
            seq += step
            taken += step
            if seq == record_first + count:
                position = end
        if taken:  # recorded before the cursor moves: a member killed in between leaves a claim
            c = L.claim_base(self.entry, free)
            groups[c + L.C_POSITION] = start
            groups[c + L.C_FIRST] = first
            groups[c + L.C_END] = first + taken
            groups[c + L.C_TOKEN] = self.slot.token
            groups[c + L.C_OWNER] = self.slot.index + 1
        groups[g + L.G_CURSOR] = position
        groups[g + L.G_NEXT_SEQ] = seq
        if taken == 0:
            return None
        groups[g + L.G_DELIVERED] += taken
        self.claim = free
        return start, first, first + taken

    def _update_release(self) -> None:
        """Store the group's release position: the lowest held claim, or the cursor."""
        h, groups, g = self.pipe.header, self._groups, self._g
        held = [position for owner, position in zip(self._column(L.C_OWNER), self._column(L.C_POSITION)) if owner]
        release = min([groups[g + L.G_CURSOR], *held])
        slot = L.slot_base(self.group_slot)
        h[slot + L.S_NEXT_SEQ] = groups[g + L.G_NEXT_SEQ]
        if h[slot + L.S_CURSOR] != release:
            h[slot + L.S_CURSOR] = release
            if h[L.WRITERS_WAITING]:
                self.pipe.writer_semaphore().release()

    # ------------------------------------------------------------ decoding
    def _decode(self, position: int, first: int, end: int) -> list[Any]:
        """The packets ``first``..``end`` (exclusive), from the record at ``position`` on.

        No lock: the group's release position keeps writers off these records while
        the claim is held.  Damage stops the decoding; it is kept in ``problem``.
        """
        pipe, data, cap = self.pipe, self.pipe.data, self.pipe.capacity
        out: list[Any] = []
        seq = first
        while seq < end:
            offset = position % cap
            room = cap - offset
            if room < L.RECORD_HEADER or L.WRAP.unpack_from(data, offset)[0] == L.WRAP_MARK:
                position += room
                continue
            length, count, record_first = L.RECORD.unpack_from(data, offset)
            if length > room - L.RECORD_HEADER or count == 0 or record_first > seq:
                self.problem = CorruptPacketError(
                    f"pipe {pipe.name!r}, receiver group {self.group!r}: record at position {position} was "
                    f"damaged while claimed; {end - seq} packet(s) lost"
                )
                break
            step = L.align(L.RECORD_HEADER + length)
            if seq < record_first + count:
                stop = min(end, record_first + count)
                packets, damage = self._record(position, offset, length, count, record_first)
                out += packets[seq - record_first : stop - record_first]
                if damage is not None and len(packets) < stop - record_first:
                    self.problem = type(damage)(
                        f"pipe {pipe.name!r}, receiver group {self.group!r}, record at position {position}: {damage}"
                    )
                    break
                seq = stop
            position += step
        return out

    def _record(
        self, position: int, offset: int, length: int, count: int, first: int
    ) -> tuple[list[Any], CorruptPacketError | None]:
        """The packets of the record at ``position``, decoded once: a member's claims often
        fall in one record, claim after claim, and decoding it each time would cost its
        whole length per claim (a record holds up to thousands of packets)."""
        key = (position, first, count)
        if self._decoded[0] == key:
            return self._decoded[1], None
        start = offset + L.RECORD_HEADER
        with self.pipe.data[start : start + length] as payload:
            packets, damage = _codec.decode_batch(payload, count)
        self._decoded = (key, packets) if damage is None else ((), [])
        return packets, damage

    # ------------------------------------------------------------- waiting
    def available(self) -> bool:
        """Whether packets no member has claimed are in the pipe (a hint: no lock)."""
        return self.pipe.header[L.PACKETS] > self._groups[self._g + L.G_NEXT_SEQ]

    def wait(self, timeout: float) -> bool:
        """Sleep until a writer commits or ``timeout`` passes; ``True`` if packets are there."""
        h = self.pipe.header
        flag = self.slot.base + L.S_WAITING
        h[flag] = 1
        try:
            fence()
            if self.available():
                return True
            _shm.sleep_on(self.semaphore, timeout)
            return self.available()
        finally:
            h[flag] = 0

    def interrupt(self) -> None:
        """Wake a thread sleeping in :meth:`wait`."""
        self.semaphore.release()


# ------------------------------------------------------------------ snapshots and removal
def snapshots(pipe: Pipe) -> list[dict[str, Any]]:
    """Each group of the pipe: name, live members, lag, unacknowledged packets, delivered,
    redelivered and acknowledged packets, creation time.  Under the writers' lock."""
    groups = pipe.groups
    if groups is None:
        return []
    h = pipe.header
    out = []
    for entry in range(L.GROUPS):
        if not _in_use(pipe, entry):
            continue
        base = L.group_base(entry)
        slot = groups[base + L.G_SLOT] - 1
        unacked = 0
        for claim in range(L.CLAIMS):
            c = L.claim_base(entry, claim)
            if groups[c + L.C_OWNER]:
                unacked += max(groups[c + L.C_END] - groups[c + L.C_FIRST], 0)
        members = [index for index in members_of(pipe, slot) if pipe.slot_alive(index)]
        out.append(
            {
                "name": _name_of(pipe, entry),
                "slot": slot,
                "members": len(members),
                "lag": max(h[L.PACKETS] - groups[base + L.G_NEXT_SEQ], 0),
                "unacked": unacked,
                "delivered": groups[base + L.G_DELIVERED],
                "redelivered": groups[base + L.G_REDELIVERED],
                "acked": h[L.slot_base(slot) + L.S_COUNT],
                "created_at": groups[base + L.G_CREATED_NS] / 1e9,
                "release": h[L.slot_base(slot) + L.S_CURSOR],
            }
        )
    return out


def remove_group(name: str, group: str) -> None:
    """Remove receiver group ``group`` of shared-memory pipe ``name``: what it had not
    consumed stops holding writers back.  :class:`PipeBusyError` while live members are
    attached; :class:`PipeNotFoundError` if the pipe or the group does not exist."""
    pipe = attach_existing(name)
    try:
        with pipe.lock:
            entry = find_group(pipe, group)
            if entry is None:
                raise PipeNotFoundError(f"pipe {name!r} has no receiver group {group!r}")
            groups, h = _area(pipe, group), pipe.header
            slot = groups[L.group_base(entry) + L.G_SLOT] - 1
            live = [index for index in members_of(pipe, slot) if not pipe.free_dead_slot(index)]
            if live:
                raise PipeBusyError(
                    f"receiver group {group!r} of pipe {name!r} has {len(live)} live member(s); close them first"
                )
            groups[L.group_base(entry) + L.G_SLOT] = 0
            h[L.slot_base(slot) + L.S_ROLE] = L.ROLE_FREE
            if h[L.WRITERS_WAITING]:
                pipe.writer_semaphore().release()
    finally:
        pipe.close()
