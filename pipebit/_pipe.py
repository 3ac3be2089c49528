"""One process's attachment to a pipe, shared by both models and the tools.

:func:`open_pipe` is the only way in: under the user-wide lifecycle lock it
attaches to the pipe's segment or creates it, validates the header before
trusting a byte of it, and applies ``override``.  The resulting :class:`Pipe`
owns the mapping, the u64 view of the header and the writers' lock; it hands out
:class:`Slot` s of the participant table, each held by a kernel lock so that a
dead holder is recognised by anyone, whatever became of its pid.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable

import posix_ipc

from . import _layout as L
from . import _lock, _shm, _wake
from ._limits import DEFAULT_CAPACITY, size_mismatch
from .errors import (
    CapacityMismatchError,
    ModelMismatchError,
    PipeBusyError,
    PipeFormatError,
    PipeNotFoundError,
)

_WOKEN_ROLES = (L.ROLE_RECEIVER, L.ROLE_MEMBER)  # who sleeps waiting for data
WAKE_COROUTINE = _wake.WAKE_COROUTINE


class Slot:
    """A claimed entry of the participant table: its index, its lock, its semaphore."""

    __slots__ = ("base", "index", "lock", "role", "semaphore", "token")

    def __init__(self, index: int, role: int, token: int, lock: _lock.SlotLock) -> None:
        self.index = index
        self.base = L.slot_base(index)
        self.role = role
        self.token = token
        self.lock = lock
        self.semaphore: posix_ipc.Semaphore | None = None


class Pipe:
    """A mapped pipe.  Not thread-safe by itself: each endpoint serialises its own use."""

    def __init__(self, name: str, segment: _shm.Segment, info: L.HeaderInfo, *, create_lock: bool = True) -> None:
        self.name = name
        self.segment = segment
        self.model = info.model
        self.capacity = info.capacity
        self.created_ns = info.created_ns
        self.header = segment.view[: L.DATA_OFFSET].cast("Q")
        self.data = segment.view[L.DATA_OFFSET : L.DATA_OFFSET + info.capacity]
        self.words = self.data.cast("Q")  # the data area as u64s (the Fast register's fields)
        self.version = info.version
        # The group area as u64s (Safe pipes of version 2), else None: such a pipe has no groups.
        self.groups: memoryview | None = None
        self.group_bytes: memoryview | None = None  # the same area as bytes (group names)
        if info.model == L.MODEL_SAFE and info.version >= 2:
            start = L.DATA_OFFSET + info.capacity
            self.group_bytes = segment.view[start : start + L.GROUP_AREA]
            self.groups = self.group_bytes.cast("Q")
        self.lock = _lock.WriterLock(_shm.lock_path(name), create=create_lock)
        self._semaphores: dict[int, posix_ipc.Semaphore] = {}
        self._writer_semaphore: posix_ipc.Semaphore | None = None
        self._wake_sender = _wake.WakeSender()
        self._wake_names: dict[int, tuple[int, bytes]] = {}  # slot index -> (its token, its wake socket's name)
        self.closed = False

    def __repr__(self) -> str:
        return f"<Pipe {self.name!r} {L.MODEL_NAMES[self.model]} capacity={self.capacity}>"

    # ----------------------------------------------------------------- table
    def slot_alive(self, index: int) -> bool:
        """Probe slot ``index``'s lock.  Call with the writers' lock held."""
        return _lock.holder_is_alive(_shm.slot_path(self.name, index))

    def free_dead_slot(self, index: int) -> bool:
        """Mark slot ``index`` free if its holder is dead.  Call with the writers' lock held.
        A group's slot has no holder and is never freed here (see :mod:`pipebit._group`)."""
        base = L.slot_base(index)
        role = self.header[base + L.S_ROLE]
        if role in (L.ROLE_FREE, L.ROLE_GROUP) or self.slot_alive(index):
            return False
        self._forget_holder(base)
        return True

    def _forget_holder(self, base: int) -> None:
        """Free the slot at ``base`` of a holder that is gone; under the writers' lock.

        A dead Safe receiver's cursor says how far it had read: that much no longer
        counts as unread for receivers starting with ``start="unread"``.
        """
        h = self.header
        if h[base + L.S_ROLE] == L.ROLE_RECEIVER:
            self.mark_read(h[base + L.S_CURSOR])
        h[base + L.S_ROLE] = L.ROLE_FREE
        h[base + L.S_WAITING] = 0

    def mark_read(self, position: int) -> None:
        """Record that a receiver which is leaving had read the ring up to ``position``.

        ``read_mark`` only grows, and only to a position the ring has reached.  Call
        with the writers' lock held.  Meaningless (and harmless) for Fast pipes.
        """
        h = self.header
        if self.model == L.MODEL_SAFE and h[L.READ_MARK] < position <= h[L.HEAD]:
            h[L.READ_MARK] = position

    def claim_slot(self, role: int, init: Callable[[Pipe, int], None] | None = None) -> Slot:
        """Take a free slot of the table for this process, reclaiming dead holders' slots.

        ``init(pipe, base)`` runs under the writers' lock before the slot is
        published, to set model-specific fields (a receiver's cursor).  A group's slot is
        never taken: it has no holder, and lives until the group is removed.
        """
        h = self.header
        with self.lock:
            for index, base in enumerate(L.SLOT_BASES):
                held_as = h[base + L.S_ROLE]
                if held_as == L.ROLE_GROUP or (held_as != L.ROLE_FREE and self.slot_alive(index)):
                    continue
                lock = _lock.SlotLock(_shm.slot_path(self.name, index))
                if not lock.try_hold():  # a holder we could not see yet: not ours to take
                    continue
                if h[base + L.S_ROLE] != L.ROLE_FREE:
                    self._forget_holder(base)
                token = secrets.randbits(63) or 1
                h[base + L.S_PID] = os.getpid()
                h[base + L.S_TOKEN] = token
                h[base + L.S_CURSOR] = 0
                h[base + L.S_NEXT_SEQ] = 0
                h[base + L.S_WAITING] = 0
                h[base + L.S_ATTACHED_NS] = time.time_ns()
                h[base + L.S_COUNT] = 0
                if init is not None:
                    try:
                        init(self, base)
                    except BaseException:
                        lock.close()
                        raise
                h[base + L.S_ROLE] = role
                # slot_high is clipped wherever it is read; written, it is brought back in range too.
                h[L.SLOT_HIGH] = min(max(h[L.SLOT_HIGH], index + 1), L.SLOT_COUNT)
                return Slot(index, role, token, lock)
        raise PipeBusyError(
            f"pipe {self.name!r} already has {L.SLOT_COUNT} live senders and receivers attached; "
            "close some before attaching more"
        )

    def release_slot(self, slot: Slot) -> None:
        """Give the slot back.  Safe without the writers' lock: one store, then the kernel lock."""
        if self.header[slot.base + L.S_TOKEN] == slot.token:
            self.header[slot.base + L.S_WAITING] = 0
            self.header[slot.base + L.S_ROLE] = L.ROLE_FREE
        slot.lock.close()

    def slot_semaphore(self, index: int) -> posix_ipc.Semaphore:
        """The semaphore a sleeping participant in slot ``index`` waits on (cached)."""
        sem = self._semaphores.get(index)
        if sem is None:
            sem = self._semaphores[index] = _shm.open_semaphore(self.name, f"{index:02d}")
        return sem

    def wake_waiting_receivers(self) -> None:
        """Post the semaphore of every receiver whose slot says it is asleep waiting for data.

        Writers of both models call this after publishing, on every commit; hence the
        precomputed slot bases (which also clip a hostile ``slot_high`` to the table).
        A slot marked :data:`~pipebit._wake.WAKE_COROUTINE` gets a datagram to its wake
        socket instead, and its semaphore only if that fails: a coroutine awaits it in an
        event loop, and reads for itself, so the receiver's thread may sleep on.
        """
        h = self.header
        for index, base in enumerate(L.SLOT_BASES[: h[L.SLOT_HIGH]]):
            waiting = h[base + L.S_WAITING]
            if waiting and h[base + L.S_ROLE] in _WOKEN_ROLES:
                if waiting & WAKE_COROUTINE and self._wake_coroutine(index, h[base + L.S_TOKEN]):
                    continue
                self.slot_semaphore(index).release()

    def _wake_coroutine(self, index: int, token: int) -> bool:
        name = self._wake_names.get(index)
        if name is None or name[0] != token:
            name = self._wake_names[index] = (token, _wake.address(self.name, index, token))
        return self._wake_sender.wake(name[1])

    def writer_semaphore(self) -> posix_ipc.Semaphore:
        """The semaphore writers waiting for room sleep on (cached)."""
        if self._writer_semaphore is None:
            self._writer_semaphore = _shm.open_semaphore(self.name, "w")
        return self._writer_semaphore

    def live_participants(self) -> list[int]:
        """Indices of occupied slots whose holders are alive.  Takes the writers' lock."""
        h = self.header
        with self.lock:
            return [
                index
                for index, base in enumerate(L.SLOT_BASES[: h[L.SLOT_HIGH]])  # slicing clips a forged slot_high
                if h[base + L.S_ROLE] != L.ROLE_FREE and self.slot_alive(index)
            ]

    @property
    def removed(self) -> bool:
        """Whether someone removed this pipe (by name) while we were attached."""
        return bool(self.header[L.FLAGS] & L.FLAG_REMOVED)

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Unmap and close descriptors.  Idempotent.  Does not release slots (see release_slot)."""
        if self.closed:
            return
        self.closed = True
        for sem in self._semaphores.values():
            sem.close()
        self._semaphores.clear()
        self._wake_sender.close()
        if self._writer_semaphore is not None:
            self._writer_semaphore.close()
            self._writer_semaphore = None
        self.lock.close()
        self.header.release()
        if self.groups is not None and self.group_bytes is not None:
            self.groups.release()
            self.group_bytes.release()
        self.words.release()
        self.data.release()
        self.segment.close()


def _describe(name: str, problem: L.LayoutProblem) -> PipeFormatError:
    return PipeFormatError(
        f"the shared memory of pipe {name!r} ({_shm.segment_name(name)}) is not a PipeBit pipe "
        f"this version can use: {problem}.  If nothing else uses it, `pipebit rm --force {name}` removes it."
    )


def _initialise(name: str, model: int, capacity: int, packet_len: int) -> tuple[_shm.Segment, L.HeaderInfo]:
    segment = _shm.create_segment(name, L.segment_size(capacity, model))
    if segment is None:  # only reachable if someone bypasses the lifecycle lock
        raise PipeBusyError(f"pipe {name!r} was created by someone else at the same moment; try again")
    try:
        created_ns = time.time_ns()
        segment.view[: L.STATIC.size] = L.pack_static(model, capacity, packet_len, created_ns, name)
        header = segment.view[: L.DATA_OFFSET].cast("Q")
        header[L.PACKET_LEN] = packet_len
        header.release()
        segment.view[0:8] = L.MAGIC
        info = L.read_static(segment.view, segment.size)  # what attachers will check, checked now
    except BaseException as exc:
        segment.close()
        _shm.unlink_segment(name)
        if isinstance(exc, L.LayoutProblem):  # a bug of ours, not the caller's: say so plainly
            raise PipeFormatError(f"cannot create pipe {name!r}: {exc}") from None
        raise
    return segment, info


def open_pipe(name: str, model: int, **options: Any) -> Pipe:
    """Map pipe ``name``, creating it if needed, without taking a slot (tools and tests).
    ``options`` are those of :func:`attach`."""
    return _open(name, model, None, **options)[0]


def attach(
    name: str, model: int, role: int, *, init: Callable[[Pipe, int], None] | None = None, **options: Any
) -> tuple[Pipe, Slot]:
    """Attach to pipe ``name`` or create it, and claim a slot as ``role``; see the Safe/Fast
    endpoints for the semantics.

    ``capacity`` and ``packet_len`` of ``None`` mean "the pipe's own, or the
    default (``default_capacity``) when creating".  An explicit ``capacity`` that
    differs from the existing pipe's raises :class:`CapacityMismatchError` --
    unless ``override``, which then recreates the pipe (refused while others are
    attached), as it does for a different model.  With ``override`` the pipe's
    retained contents are discarded and ``packet_len`` applied.  ``init(pipe,
    base)`` sets the slot's model-specific fields (see :meth:`Pipe.claim_slot`);
    ``on_event`` hears what happened, for debug output.

    The slot is claimed before the lifecycle lock is let go, so that no
    ``remove()``, ``pipebit clean`` or overriding rebuild can see the pipe unused
    and unlink it between the two.
    """
    pipe, slot = _open(name, model, (role, init), **options)
    assert slot is not None
    return pipe, slot


def _open(  # noqa: PLR0912, PLR0915 - one decision under one lock: attach, replace, rebuild, refuse or create
    name: str,
    model: int,
    claim: tuple[int, Callable[[Pipe, int], None] | None] | None,
    *,
    capacity: int | None,
    packet_len: int | None,
    override: bool,
    create: bool = True,
    on_event: Callable[[str], None] | None = None,
    default_capacity: int = DEFAULT_CAPACITY,
) -> tuple[Pipe, Slot | None]:
    say = on_event or (lambda message: None)
    with _lock.lifecycle():
        segment: _shm.Segment | None
        try:
            segment = _shm.attach_segment(name)
        except PipeNotFoundError:
            if not create:
                raise
            segment = None
        info: L.HeaderInfo | None = None
        if segment is not None:
            try:
                info = L.read_static(segment.view, segment.size)
            except L.LayoutProblem as problem:
                segment.close()
                if not problem.blank:
                    raise _describe(name, problem) from None
                # A creator died before finishing the header: the segment was never usable.
                _shm.unlink_segment(name)
                segment = None
                say("replaced a segment whose creator died half-way")
            else:
                if info.name != name:
                    segment.close()
                    raise _describe(name, L.LayoutProblem(f"it holds pipe {info.name!r}"))
                rebuild = override and (info.model != model or (capacity is not None and capacity != info.capacity))
                if rebuild:
                    _rebuild(name, segment, info)
                    segment, info = None, None
                    say("override: removed the old pipe to change its model or capacity")
                elif info.model == model and capacity is not None and capacity != info.capacity:
                    segment.close()
                    raise _size_mismatch(name, model, capacity, info.capacity)
                elif info.model != model:
                    segment.close()
                    raise ModelMismatchError(
                        f"pipe {name!r} is a {L.MODEL_NAMES[info.model]} pipe; a "
                        f"{L.MODEL_NAMES[model]} endpoint cannot use it (a sender with override=True "
                        "replaces it when no one is attached; or use the "
                        f"{L.MODEL_NAMES[info.model].capitalize()} classes)"
                    )
        created = segment is None
        if segment is None:
            size = capacity if capacity is not None else default_capacity
            segment, info = _initialise(name, model, size, packet_len or 0)
            say(f"created ({L.MODEL_NAMES[model]}, {size} bytes)")
        assert info is not None
        try:
            pipe = Pipe(name, segment, info)
        except BaseException:
            segment.close()
            raise
        if model == L.MODEL_SAFE:
            try:  # now, not mid-stream: a full /dev/shm must fail the attach, not a background thread
                pipe.writer_semaphore()
            except BaseException:
                pipe.close()
                raise
        if not created:
            say(f"attached ({L.MODEL_NAMES[info.model]}, {info.capacity} bytes)")
            if override:
                with pipe.lock:
                    pipe.header[L.TAIL] = pipe.header[L.HEAD]
                    pipe.header[L.PACKET_LEN] = packet_len or 0
                    pipe.header[L.EPOCH] += 1
                say(f"override: retained packets discarded, packet size {packet_len or 'any'}")
        if claim is None:
            return pipe, None
        try:
            return pipe, pipe.claim_slot(*claim)
        except BaseException:
            pipe.close()
            raise


def _size_mismatch(name: str, model: int, asked: int, actual: int) -> CapacityMismatchError:
    """The error for an explicit size that differs from the existing pipe's (a Fast pipe's in slot bytes)."""
    if model == L.MODEL_FAST:
        return size_mismatch(name, "slot_size", L.fast_slot_size(asked), L.fast_slot_size(actual))
    return size_mismatch(name, "capacity", asked, actual)


def _rebuild(name: str, segment: _shm.Segment, info: L.HeaderInfo) -> None:
    _retire(
        name,
        segment,
        force=False,
        busy=f"pipe {name!r} must be recreated to change its model or capacity, but {{live}} live process(es) "
        "are attached to it",
    )
    _shm.remove_os_objects(name, L.SLOT_COUNT)


def _retire(name: str, segment: _shm.Segment, *, force: bool, busy: str) -> None:
    """Flag the pipe in ``segment`` as removed, so that attached processes stop using it,
    and unmap ``segment``.  Under the lifecycle lock, before its names are unlinked.

    Refuses with :class:`PipeBusyError` (``busy``, its ``{live}`` filled in with their
    number) while live processes are attached, and with :class:`PipeFormatError` if the segment
    cannot be read -- unless ``force``: then nothing found in the segment, however damaged,
    stops its removal.
    """
    try:
        info = L.read_static(segment.view, segment.size)
        if info.name != name:
            raise L.LayoutProblem(f"it holds pipe {info.name!r}")
        pipe = Pipe(name, segment, info)
    except Exception as exc:
        segment.close()
        if force:
            return
        if isinstance(exc, L.LayoutProblem):
            raise _describe(name, exc) from None
        raise
    try:
        live = [] if force else pipe.live_participants()
        if live:
            raise PipeBusyError(busy.format(live=len(live)))
        pipe.header[L.FLAGS] |= L.FLAG_REMOVED
    finally:
        pipe.close()


def attach_existing(name: str) -> Pipe:
    """Map an existing pipe to inspect it: nothing is created and no slot is claimed.

    :class:`PipeNotFoundError` if it does not exist (or is being removed),
    :class:`PipeFormatError` if its segment is not a readable PipeBit pipe.
    """
    segment = _shm.attach_segment(name)
    try:
        info = L.read_static(segment.view, segment.size)
        if info.name != name:
            raise L.LayoutProblem(f"it holds pipe {info.name!r}")
    except L.LayoutProblem as problem:
        segment.close()
        raise _describe(name, problem) from None
    try:
        return Pipe(name, segment, info, create_lock=False)
    except FileNotFoundError:
        segment.close()
        raise PipeNotFoundError(f"pipe {name!r} is being removed") from None


def remove_pipe(name: str, *, force: bool = False) -> list[str]:
    """Unlink shared-memory pipe ``name``'s segment, semaphores and lock files; return what
    was removed.

    Refuses with :class:`PipeBusyError` while live processes are attached, unless
    ``force``; they then see the pipe as removed.  ``PipeNotFoundError`` if no
    part of the pipe exists.
    """
    with _lock.lifecycle():
        try:
            segment = _shm.attach_segment(name)
        except PipeNotFoundError:
            segment = None
        if segment is not None:
            _retire(
                name,
                segment,
                force=force,
                busy=f"pipe {name!r} has {{live}} live process(es) attached; close them first or remove with force",
            )
        removed = _shm.remove_os_objects(name, L.SLOT_COUNT)
        _shm.remove_user_dir_if_empty()  # the user's last pipe: leave no empty directory behind
    if not removed:
        raise PipeNotFoundError(f"no pipe named {name!r} exists")
    return removed
