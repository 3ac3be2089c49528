"""The records of what a pipe looks like right now: what ``stats()``, ``pipebit.pipe_stats()``,
``pipebit.list_pipes()``, ``pipebit ls`` and ``pipebit stat`` show.  Pure: no I/O.

Each transport fills them in its own way (shared memory: :mod:`pipebit._inspect`;
Redis: :mod:`pipebit._redis`).  Liveness is checked the transport's way -- a kernel
lock on shared memory, a deadline the member keeps pushing forward on Redis -- so a
process that died shows as not alive whatever became of its pid.  Figures are a
snapshot: they may change as soon as they are read.
"""

from __future__ import annotations

import dataclasses

__all__ = ["EndpointStats", "GroupStats", "Participant", "PipeStats"]


@dataclasses.dataclass(frozen=True)
class Participant:
    """One sender or receiver attached to a pipe (one slot of its table)."""

    slot: int
    """Index in the pipe's participant table."""
    role: str
    """``"sender"``, ``"receiver"`` or ``"member"`` (of a receiver group)."""
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
    group: str | None = None
    """Members: the receiver group they belong to; else ``None``."""


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """One receiver group of a Safe pipe (see ``docs/groups.md``)."""

    name: str
    """The group's name."""
    members: int
    """Live members attached now (a group outlives its members)."""
    lag: int
    """Packets in the pipe that no member has claimed yet."""
    unacked: int
    """Packets handed to members and not acknowledged yet (those of dead members included,
    until another member takes them)."""
    delivered: int
    """Packets handed to members, redeliveries included."""
    redelivered: int
    """Packets handed out again because the member holding them died."""
    acked: int
    """Packets acknowledged by members."""
    created_at: float
    """When the group was created, in seconds since the epoch."""


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
    """Every occupied slot, live or dead (group members have the role ``"member"``)."""
    groups: tuple[GroupStats, ...] = ()
    """The receiver groups of a Safe pipe, by name."""

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
        """No live process is attached, and no receiver group is owed packets: the pipe only
        holds retained data."""
        owed = any(g.lag or g.unacked for g in self.groups)
        return not owed and not any(p.alive for p in self.participants)


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
