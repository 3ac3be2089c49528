"""What a pipe looks like right now: the data behind ``pipebit ls`` and ``pipebit stat``.

Everything here is read from the pipe's shared memory; liveness of each
participant is checked with the kernel lock it holds (see ``docs/format.md``),
so a process that died -- even if its pid now belongs to someone else -- shows
as not alive.  Figures are a snapshot: they may change as soon as they are read.
"""

from __future__ import annotations

import dataclasses
import os

from . import _layout as L
from . import _shm
from ._address import RedisPipe, env_server, parse, parse_server
from ._pipe import Pipe, attach_existing
from .errors import PipeFormatError, PipeNotFoundError

__all__ = ["EndpointStats", "Participant", "PipeStats", "list_pipes", "pipe_stats"]


@dataclasses.dataclass(frozen=True)
class Participant:
    """One sender or receiver attached to a pipe (one slot of its table)."""

    slot: int
    """Index in the pipe's participant table."""
    role: str
    """``"sender"`` or ``"receiver"``."""
    pid: int
    """Process id recorded at attach time (informational: liveness does not trust it)."""
    alive: bool
    """Whether the process still holds its slot lock; ``False`` means it died without detaching."""
    attached_at: float
    """When it attached, in seconds since the epoch."""
    packets: int
    """Senders: packets delivered into the pipe.  Receivers: packets read out of the pipe
    (a Safe receiver's cache included, so possibly not yet returned by ``receive()``)."""
    lag: int | None
    """Receivers of Safe pipes: packets committed that it has not read yet; else ``None``."""
    waiting: bool
    """Receivers: asleep waiting for data.  Safe senders: asleep waiting for room in the ring."""


@dataclasses.dataclass(frozen=True)
class PipeStats:
    """A snapshot of one pipe."""

    name: str
    """The pipe's name."""
    model: str
    """``"safe"`` or ``"fast"``."""
    capacity: int
    """Bytes of the data area: the ring (Safe) or the register's lanes (Fast)."""
    max_packet_bytes: int
    """Largest encoded packet the pipe carries."""
    packet_len: int
    """Elements every packet must have; ``0`` means any."""
    created_at: float
    """When the pipe was created, in seconds since the epoch."""
    packets_written: int
    """Packets ever committed (Safe) or published (Fast)."""
    last_write_at: float | None
    """When the newest packet was written, in seconds since the epoch; ``None`` if never."""
    used_bytes: int
    """Safe: ring bytes holding retained or unread packets.  Fast: size of the current value."""
    unread_bytes: int
    """Safe: ring bytes the slowest live receiver has not read.  Fast: 0."""
    writers_waiting: int
    """Senders currently asleep waiting for room in the ring."""
    participants: tuple[Participant, ...]
    """Every occupied slot, live or dead."""

    @property
    def fill(self) -> float:
        """``used_bytes`` as a fraction of what the pipe can hold (0.0-1.0)."""
        room = self.capacity if self.model == "safe" else self.max_packet_bytes
        return min(self.used_bytes / room, 1.0) if room else 0.0

    @property
    def senders(self) -> int:
        """Live senders."""
        return sum(1 for p in self.participants if p.alive and p.role == "sender")

    @property
    def receivers(self) -> int:
        """Live receivers."""
        return sum(1 for p in self.participants if p.alive and p.role == "receiver")

    @property
    def max_lag(self) -> int | None:
        """Packets the slowest live receiver has not read (Safe), or ``None``."""
        lags = [p.lag for p in self.participants if p.alive and p.lag is not None]
        return max(lags) if lags else None

    @property
    def stale(self) -> bool:
        """No live process is attached (the pipe only holds retained data)."""
        return not any(p.alive for p in self.participants)


@dataclasses.dataclass(frozen=True)
class EndpointStats:
    """A snapshot of one sender or receiver, as returned by its ``stats()``."""

    role: str
    """``"sender"`` or ``"receiver"``."""
    slot: int
    """This endpoint's index in the pipe's participant table."""
    packets: int
    """Senders: packets delivered into the pipe.  Receivers: packets returned by ``receive()``."""
    pending: int
    """Senders: packets sent but not yet in the pipe.  Receivers: packets cached, not yet returned."""
    lag: int | None
    """Safe receivers: packets in the pipe this receiver has not read into its cache yet."""
    pipe: PipeStats
    """The pipe as a whole."""


_ROLES = {L.ROLE_SENDER: "sender", L.ROLE_RECEIVER: "receiver"}


def read_stats(pipe: Pipe) -> PipeStats:
    """Snapshot an attached pipe.  Takes the writers' lock briefly, to probe liveness."""
    h = pipe.header
    safe = pipe.model == L.MODEL_SAFE
    with pipe.lock:
        head, tail, written = h[L.HEAD], h[L.TAIL], h[L.PACKETS]
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
                    packets=h[base + L.S_COUNT],
                    lag=lag,
                    waiting=bool(h[base + L.S_WAITING]),
                )
            )
    if safe:
        cursors = [h[L.slot_base(p.slot) + L.S_CURSOR] for p in participants if p.alive and p.role == "receiver"]
        lowest = min([tail, *cursors])
        used, unread = head - min(lowest, head), head - min(cursors, default=head)
        max_packet = pipe.capacity - L.RECORD_HEADER - 5
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


def endpoint_stats(pipe: Pipe, slot: int, role: str, packets: int, pending: int) -> EndpointStats:
    """Combine an endpoint's own counters with a snapshot of its pipe."""
    snapshot = read_stats(pipe)
    mine = next((p for p in snapshot.participants if p.slot == slot), None)
    return EndpointStats(role, slot, packets, pending, mine.lag if mine else None, snapshot)


def pipe_stats(name: str) -> PipeStats:
    """Snapshot pipe ``name`` (a Redis URL, or a name under ``PIPEBIT_URL``, reads that
    server).  :class:`PipeNotFoundError` if it does not exist."""
    address = parse(name)
    if isinstance(address, RedisPipe):
        from . import _redis  # noqa: PLC0415 - redis-py is optional: imported on first use

        return _redis.pipe_stats(address)
    pipe = attach_existing(address)
    try:
        return read_stats(pipe)
    finally:
        pipe.close()


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


def list_pipes(url: str | None = None) -> list[PipeStats]:
    """Snapshots of every pipe of this user, sorted by name.

    Pipes are found through their lock files and, on Linux, their segments in
    ``/dev/shm``; a pipe that cannot be read (corrupt, or removed meanwhile) is
    left out.  With ``url`` (``redis://host:port/db``), or else while ``PIPEBIT_URL``
    is set, the pipes on that Redis server instead.
    """
    server = parse_server(url) if url is not None else env_server()
    if server is not None:
        from . import _redis  # noqa: PLC0415 - redis-py is optional: imported on first use

        return _redis.list_pipes(server)
    found = []
    for name in sorted(set(_shm.names_in_user_dir()) | _names_of_segments()):
        try:
            found.append(pipe_stats(name))
        except (PipeNotFoundError, PipeFormatError):
            continue
    return found
