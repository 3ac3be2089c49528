"""The shared-memory back-end of the Safe pipeline: how a sender's batches reach the ring,
and how a receiver reads it, sleeps on it and lets it go.

A :class:`ShmSafeWriter` is a :class:`~pipebit._ring.RingWriter` with a claimed
sender slot; a :class:`ShmSafeReader` is a :class:`~pipebit._ring.RingReader` with
a claimed receiver slot, its start position, and the policy of polling before
sleeping (``spin``).  Both are used by the faces in :mod:`pipebit.safe`, which
own everything that does not depend on the transport.  Neither imports a face.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from . import _layout as L
from ._attachment import Attachment
from ._frames import Rest
from ._group import GroupMember, join
from ._limits import DEFAULT_CAPACITY, MAX_RECORD_PACKETS, max_packet_bytes
from ._pipe import Pipe, Slot, attach
from ._ring import Aborted, RingReader, RingWriter, start_position
from ._wake import WakeSocket, address
from .errors import PipeClosedError

# spin="auto": a waiting receive() polls up to this long before sleeping, but only while
# the packets it waited for came within this long (a request/reply exchange).
AUTO_SPIN_NS = 50_000
# A poll looks without pause this long, then yields the CPU between looks.
POLL_BEFORE_YIELD = 10e-6
_sched_yield = getattr(os, "sched_yield", lambda: None)  # releases the GIL as well

Log = Callable[[str], None]


def _options(create: bool, log: Log | None) -> dict[str, Any]:
    """What a Safe back-end passes to :func:`attach` besides its own wishes."""
    return {"create": create, "on_event": log, "default_capacity": DEFAULT_CAPACITY}


def _attach_reading(
    name: str, role: int, place: Callable[[Pipe, int], None], *, capacity: int | None, create: bool, log: Log | None
) -> tuple[Pipe, Slot]:
    """Claim a reading slot (a receiver's or a group member's) of a Safe pipe; ``place``
    sets where it starts, before the slot shows."""
    return attach(
        name,
        L.MODEL_SAFE,
        role,
        init=place,
        capacity=capacity,
        packet_len=None,
        override=False,
        **_options(create, log),
    )


class ShmSafeWriter(RingWriter, Attachment):
    """A sender's way into a Safe pipe in shared memory: commits batches, as records."""

    inline = True  # a lone packet may be committed from send() itself (try_commit)
    batch_packets = MAX_RECORD_PACKETS  # group members claim parts of records: no need to cut them smaller
    idle_interval: float | None = None  # nothing to do while idle
    stall_hint = "a receiver that is alive but not reading keeps the pipe full"

    def __init__(
        self, name: str, *, capacity: int | None, packet_len: int | None, override: bool, create: bool, log: Log | None
    ) -> None:
        pipe, slot = attach(
            name,
            L.MODEL_SAFE,
            L.ROLE_SENDER,
            capacity=capacity,
            packet_len=packet_len,
            override=override,
            **_options(create, log),
        )
        super().__init__(pipe, slot)
        self.slot = slot
        self.shown = name
        self.max_packet = max_packet_bytes(pipe.capacity)
        self._header = pipe.header
        self._count = slot.base + L.S_COUNT
        self.packet_len = int(pipe.header[L.PACKET_LEN])  # the pipe's rule, as of the last commit

    def commit_batch(self, payload: bytes, count: int, abort: threading.Event, rest: bytes = b"") -> bool:
        """Write one batch as a record, waiting while receivers have not read the bytes it
        needs; ``False`` (nothing written) once ``abort`` is set."""
        try:
            self.commit(payload, count, abort.is_set, rest=rest)
        except Aborted:
            return False
        header = self._header
        header[self._count] += count
        self.packet_len = header[L.PACKET_LEN]  # another sender's override may change it
        return True

    def commit_now(self, payload: bytes, count: int, rest: Rest = b"") -> bool:
        """Write one batch if the ring has room right now; ``False`` if it has not."""
        if not self.try_commit(payload, count, rest=rest):
            return False
        self._header[self._count] += count
        return True

    def idle(self) -> None:
        """Nothing to keep up in shared memory while no packet is sent."""

    close = Attachment.release  # after the last commit


class ShmSafeReader(RingReader, Attachment):
    """A receiver's way into a Safe pipe in shared memory: reads records from its cursor.

    ``read()`` never blocks; ``wait()`` sleeps until a writer commits;
    ``wait_in_call()`` is the same wait for a ``receive()`` call in progress, which
    first polls the ring when that pays (``spin``): waking a sleeping process costs
    tens of microseconds, a request/reply exchange a few.
    """

    reads_in_caller = True  # receive() reads the ring itself, no thread hand-off

    def __init__(
        self,
        name: str,
        *,
        start: str,
        capacity: int | None,
        spin: float | None,
        resume: Any,
        create: bool,
        log: Log | None,
    ) -> None:
        def place(pipe: Pipe, base: int) -> None:
            h = pipe.header
            if resume is not None and resume[0] == pipe.created_ns and h[L.TAIL] <= resume[1] <= h[L.HEAD]:
                cursor, seq = resume[1], resume[2]
            else:
                cursor, seq = start_position(pipe, start)
            h[base + L.S_CURSOR] = cursor
            h[base + L.S_NEXT_SEQ] = seq

        pipe, slot = _attach_reading(name, L.ROLE_RECEIVER, place, capacity=capacity, create=create, log=log)
        self.pipe, self.slot = pipe, slot
        try:
            super().__init__(pipe, slot)
        except BaseException:
            self.release()
            raise
        self.shown = name
        self._spin = spin  # None: "auto"
        self._quick = False  # "auto": the last packet waited for came within AUTO_SPIN_NS

    def bind_wake_socket(self) -> WakeSocket | None:
        """A socket bound to the name writers wake a coroutine through (see
        :mod:`pipebit._wake`), for the caller to keep and close; ``None`` if the name
        cannot be bound (then coroutines are woken through the caching thread)."""
        try:
            return WakeSocket(address(self.pipe.name, self.slot.index, self.slot.token))
        except OSError:
            return None

    def position(self) -> tuple[int, int]:
        """Where the next read starts: (cursor, next sequence number)."""
        return self.cursor, self.next_seq

    def wait_in_call(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a commit, polling first when that pays; ``True`` if data is there."""
        spin = self._spin
        if spin is None:  # "auto": poll only while polling has been paying off
            waited_from = time.time_ns()
            if self._quick and self._poll(min(AUTO_SPIN_NS / 1e9, timeout)):
                return True
            if self.wait(timeout):
                # Would a poll have caught it?  The ring says when the newest record went in.
                self._quick = self.last_write_ns() - waited_from <= AUTO_SPIN_NS
                return True
            self._quick = False
            return False
        if spin and self._poll(min(spin, timeout)):
            return True
        return self.wait(timeout)

    def _poll(self, seconds: float) -> bool:
        """Watch the ring for up to ``seconds``; ``True`` if a record arrived.

        After the first few microseconds, each look is followed by sched_yield(2),
        which lets any other runnable process (on a busy machine, perhaps the very
        sender being waited for) have the CPU, and costs a microsecond or so when
        there is none.
        """
        clock = time.perf_counter
        now = clock()
        until = now + seconds
        polite = now + POLL_BEFORE_YIELD
        available = self.available
        pause = _sched_yield
        while now < until:
            if available():
                return True
            if now > polite:
                pause()
            now = clock()
        return False

    def writers_waiting(self) -> bool:
        return bool(self.pipe.header[L.WRITERS_WAITING])

    def keepalive(self) -> None:
        """Nothing to keep up: liveness is the slot's kernel lock."""

    def close(self, returned: tuple[int, int]) -> tuple[int, int, int]:
        """Let the pipe go, having returned to the application everything before ``returned``
        (a :meth:`position`).  What it returned stops counting as unread; the result is the
        ``resume`` to pass when reconnecting."""
        pipe = self.pipe
        with pipe.lock:  # before the slot is let go: an "unread" start sees one or the other
            pipe.mark_read(returned[0])
        if pipe.header[L.WRITERS_WAITING]:  # our cursor no longer holds them back
            pipe.writer_semaphore().release()
        resume = (pipe.created_ns, returned[0], returned[1])
        if self.close_when_unviewed():
            self.release()
        return resume


class ShmGroupReader(GroupMember, Attachment):
    """A member of a receiver group of a Safe pipe in shared memory (see :mod:`pipebit._group`).

    Liveness is the slot's kernel lock: nothing to keep up (``keepalive_interval`` is ``None``).

    ``take()`` acknowledges the batch it returned last and claims the next, in the
    caller's thread: a member never reads ahead, so it holds no more than it will process.
    """

    keepalive_interval: float | None = None

    def __init__(
        self,
        name: str,
        *,
        group: str,
        start: str,
        capacity: int | None,
        batch: int | None,
        max_packets: int,
        create: bool,
        log: Log | None,
    ) -> None:
        joined: list[int] = []

        def place(pipe: Pipe, base: int) -> None:
            joined.append(join(pipe, (base - L.TABLE_OFFSET // 8) // (L.SLOT_SIZE // 8), group, start))
            entry = L.group_base(joined[0])
            assert pipe.groups is not None
            pipe.header[base + L.S_CURSOR] = pipe.groups[entry + L.G_SLOT] - 1

        pipe, slot = _attach_reading(name, L.ROLE_MEMBER, place, capacity=capacity, create=create, log=log)
        self.pipe, self.slot = pipe, slot
        try:
            super().__init__(pipe, slot, entry=joined[0], group=group, batch=batch, max_packets=max_packets)
        except BaseException:
            self.release()
            raise
        self.shown = name
        self.capacity = pipe.capacity

    def keepalive(self) -> None:
        """Nothing to keep up: liveness is the slot's kernel lock."""

    def close(self, acknowledge: bool = True) -> None:
        """Leave the group: acknowledge the batch returned last (unless not ``acknowledge``:
        it is then handed to another member), and give the slot back."""
        try:
            if acknowledge:
                self.ack()
        except PipeClosedError:
            pass  # the pipe or the group was removed: there is nothing left to acknowledge
        finally:
            if self.pipe.header[L.WRITERS_WAITING]:
                self.pipe.writer_semaphore().release()
            self.release()
