"""What a shared-memory pipe looks like right now: the snapshots behind ``stats()``,
``pipebit.pipe_stats()`` and ``pipebit ls`` for pipes in ``/dev/shm``.

Everything here is read from the pipe's shared memory without claiming a slot;
liveness of each participant is checked with the kernel lock it holds (see
``docs/format.md``), so a process that died -- even if its pid now belongs to
someone else -- shows as not alive.  Every number read is bounded before use.
"""

from __future__ import annotations

import os

from . import _group, _shm
from . import _layout as L
from ._limits import max_packet_bytes
from ._pipe import Pipe, attach_existing
from ._stats import EndpointStats, GroupStats, Participant, PipeStats
from .errors import PipeFormatError, PipeNotFoundError

_ROLES = {L.ROLE_SENDER: "sender", L.ROLE_RECEIVER: "receiver", L.ROLE_MEMBER: "member"}


def read_stats(pipe: Pipe) -> PipeStats:
    """Snapshot an attached pipe.  Takes the writers' lock briefly, to probe liveness."""
    h = pipe.header
    safe = pipe.model == L.MODEL_SAFE
    with pipe.lock:
        head, tail, written = h[L.HEAD], h[L.TAIL], h[L.PACKETS]
        lanes = {} if safe else _fast_senders_published(pipe)
        groups = _group.snapshots(pipe) if safe else []
        group_names = {g["slot"]: g["name"] for g in groups}
        participants = []
        for index in range(min(h[L.SLOT_HIGH], L.SLOT_COUNT)):
            base = L.slot_base(index)
            role = _ROLES.get(h[base + L.S_ROLE])
            if role is None:
                continue
            cursor = h[base + L.S_CURSOR]
            lag: int | None = None
            if safe and role == "receiver":
                lag = 0 if cursor >= head else max(written - h[base + L.S_NEXT_SEQ], 0)
            participants.append(
                Participant(
                    slot=index,
                    role=role,
                    pid=h[base + L.S_PID],
                    alive=pipe.slot_alive(index),
                    attached_at=h[base + L.S_ATTACHED_NS] / 1e9,
                    packets=lanes.get(index, h[base + L.S_COUNT]),
                    lag=lag,
                    waiting=bool(h[base + L.S_WAITING]),
                    group=group_names.get(cursor) if role == "member" else None,
                )
            )
    if safe:
        cursors = [h[L.slot_base(p.slot) + L.S_CURSOR] for p in participants if p.alive and p.role == "receiver"]
        lowest = min([tail, *cursors, *(g["release"] for g in groups)])
        used, unread = head - min(lowest, head), head - min(cursors, default=head)
        max_packet = max_packet_bytes(pipe.capacity)
        last = h[L.LAST_WRITE_NS]
    else:
        used, written, last = _fast_register(pipe)
        unread, max_packet = 0, L.fast_slot_size(pipe.capacity)
    return PipeStats(
        name=pipe.name,
        model=L.MODEL_NAMES[pipe.model],
        capacity=pipe.capacity,
        max_packet_bytes=max_packet,
        packet_len=h[L.PACKET_LEN],
        created_at=pipe.created_ns / 1e9,
        packets_written=written,
        last_write_at=last / 1e9 if last else None,
        used_bytes=min(used, pipe.capacity),
        unread_bytes=unread,
        writers_waiting=sum(1 for p in participants if p.alive and p.role == "sender" and p.waiting),
        participants=tuple(participants),
        groups=tuple(
            GroupStats(
                name=g["name"],
                members=g["members"],
                lag=g["lag"],
                unacked=g["unacked"],
                delivered=g["delivered"],
                redelivered=g["redelivered"],
                acked=g["acked"],
                created_at=g["created_at"],
            )
            for g in sorted(groups, key=lambda g: str(g["name"]))
        ),
    )


def _fast_register(pipe: Pipe) -> tuple[int, int, int]:
    """(bytes of the current value, packets ever published, newest write_ns) of a Fast pipe.

    Each lane's sequence grows by 2 per publication and is continued by the
    lane's next owner, so half the highest sequence of each lane counts them all.
    """
    words = pipe.words
    latest = words[L.F_LATEST]
    used = written = newest = 0
    for lane in range(L.LANES):
        seqs = [words[L.fast_buffer_offset(pipe.capacity, lane, b) // 8 + L.B_SEQ] for b in (0, 1)]
        written += max(seqs) // 2
        for buffer in (0, 1):
            base = L.fast_buffer_offset(pipe.capacity, lane, buffer) // 8
            newest = max(newest, words[base + L.B_WRITE_NS])
    if latest and (latest >> 1) & 0x7F < L.LANES:
        lane, buffer = (latest >> 1) & 0x7F, latest & 1
        used = words[L.fast_buffer_offset(pipe.capacity, lane, buffer) // 8 + L.B_LENGTH]
    return used, written, newest


def _fast_senders_published(pipe: Pipe) -> dict[int, int]:
    """Packets published by each Fast sender that owns a lane, by slot: ``(seq - first_seq) / 2``
    of its lane, counted up to the last publication complete.

    A sender stores its own count in its slot only every 256 publications and when it
    closes (a store per update would be paid on the hot path); the lane counts them all.
    Read under the writers' lock, so that no owner changes meanwhile.
    """
    words, h = pipe.words, pipe.header
    published = {}
    for lane in range(L.LANES):
        entry = (L.LANE_TABLE + lane * L.LANE_ENTRY) // 8
        owner, token, first = words[entry + L.L_OWNER], words[entry + L.L_OWNER_TOKEN], words[entry + L.L_FIRST_SEQ]
        if not 0 < owner <= L.SLOT_COUNT or h[L.slot_base(owner - 1) + L.S_TOKEN] != token:
            continue  # free, or damaged, or its owner's slot was taken since
        seqs = [words[L.fast_buffer_offset(pipe.capacity, lane, b) // 8 + L.B_SEQ] for b in (0, 1)]
        published[owner - 1] = max((max(seqs) & ~1) - first, 0) // 2
    return published


def _names_of_segments() -> set[str]:
    """Names stored in this user's PipeBit segments in /dev/shm (Linux), lock files or not."""
    names: set[str] = set()
    try:
        entries = os.scandir("/dev/shm")
    except OSError:
        return names
    with entries:
        for entry in entries:
            if not entry.name.startswith(_shm.SEGMENT_PREFIX) or "." in entry.name or not entry.is_file():
                continue
            try:
                if entry.stat().st_uid != os.getuid():
                    continue
                with open(entry.path, "rb") as segment:
                    static = segment.read(L.STATIC.size)
                info = L.read_static(static, entry.stat().st_size)
            except (OSError, L.LayoutProblem):
                continue
            if _shm.segment_name(info.name) == "/" + entry.name:
                names.add(info.name)
    return names


def pipe_stats(name: str) -> PipeStats:
    """Snapshot the shared-memory pipe ``name``: :class:`PipeNotFoundError` if it does not exist,
    :class:`PipeFormatError` if it cannot be read."""
    pipe = attach_existing(name)
    try:
        return read_stats(pipe)
    finally:
        pipe.close()


def list_pipes() -> list[PipeStats]:
    """Snapshots of every shared-memory pipe of this user, sorted by name.

    Pipes are found through their lock files and, on Linux, their segments in
    ``/dev/shm``; a pipe that cannot be read (corrupt, or removed meanwhile) is
    left out.
    """
    found = []
    for name in sorted(set(_shm.names_in_user_dir()) | _names_of_segments()):
        try:
            found.append(pipe_stats(name))
        except (PipeNotFoundError, PipeFormatError):
            continue
    return found


def endpoint_stats(pipe: Pipe, slot: int, role: str, packets: int, pending: int) -> EndpointStats:
    """Combine an endpoint's own counters with a snapshot of its pipe."""
    snapshot = read_stats(pipe)
    mine = next((p for p in snapshot.participants if p.slot == slot), None)
    return EndpointStats(role, slot, packets, pending, mine.lag if mine else None, snapshot)
