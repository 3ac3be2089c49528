"""The one switch between transports: which back-end a pipe name opens, and what a back-end does.

A name selects its transport (:mod:`pipebit._address`): a plain name is shared
memory on this machine (unless ``PIPEBIT_URL`` names a Redis server), a
``redis://`` URL a pipe on that server.  The ``open_*`` functions here open the
back-end for it, and :func:`remove`, :func:`pipe_stats` and :func:`list_pipes`
dispatch the same way.  Nowhere else in PipeBit looks at the transport.

The protocols say what each back-end gives the faces of :mod:`pipebit.safe` and
:mod:`pipebit.fast`, which hold everything that does not depend on the
transport: argument checks, the send queue and its delivery thread, the receive
cache, iteration, closing, fork and exit handling.  Adding a transport is one
back-end module per model that implements these, and a branch in each function
below.  redis-py is optional: the Redis back-ends are imported on first use.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from . import _group, _inspect, _pipe
from ._address import Address, RedisPipe, env_server, parse, parse_server
from ._frames import Rest
from ._limits import Packet, Sendable, check_group
from ._shm_fast import ShmFastReader, ShmFastWriter
from ._shm_safe import ShmGroupReader, ShmSafeReader, ShmSafeWriter
from ._stats import EndpointStats, PipeStats
from ._wake import WakeSocket

Log = Callable[[str], None]


class Backend(Protocol):
    """What every back-end has."""

    shown: str
    """The pipe as messages call it: its name, or its URL without the password."""

    def stats(self, role: str, packets: int, pending: int) -> EndpointStats:
        """This endpoint (its own counters given) and its pipe, right now."""
        ...

    def forget(self) -> None:
        """In a forked child: drop the parent's resources without touching the pipe."""
        ...


class SafeWriter(Backend, Protocol):
    """A sender's way into a Safe pipe.  Used by one thread at a time."""

    capacity: int
    max_packet: int
    """The largest encoded packet the pipe carries."""
    packet_len: int
    """Elements the pipe requires per packet (0: any), as of the last commit."""
    batch_packets: int
    """The most packets one batch (record, stream entry) may hold now."""
    inline: bool
    """Whether :meth:`commit_now` may succeed, so that ``send()`` should try it for a lone packet."""
    idle_interval: float | None
    """How often an idle delivery thread must call :meth:`idle` (``None``: never)."""
    stall_hint: str
    """Why delivery may not finish, for the undelivered-packets warning."""

    def commit_batch(self, payload: bytes, count: int, abort: threading.Event, rest: bytes = b"") -> bool:
        """Deliver ``payload + rest``, a MessagePack array of ``count`` packets, waiting while
        the pipe has no room; ``False`` once ``abort`` is set (nothing delivered)."""
        ...

    def commit_now(self, payload: bytes, count: int, rest: Rest = b"") -> bool:
        """Deliver it only if that needs no waiting at all; ``False`` otherwise."""
        ...

    def idle(self) -> None: ...

    def close(self) -> None: ...


class SafeReader(Backend, Protocol):
    """A receiver's way into a Safe pipe.  Used by one thread at a time (the face's read lock)."""

    reads_in_caller: bool
    """Whether ``receive()`` reads for itself (else only the caching thread reads)."""
    problem: Exception | None
    """Damage or loss met by the last :meth:`read`, after the packets it returned."""
    bytes_read: int
    """What the last :meth:`read` took in the pipe, in bytes."""

    framed: bool
    """Whether a read has returned packets of a framed record (``Held`` lists whose large
    arrays view the record: the face turns them into plain lists)."""

    def writers_waiting(self) -> bool:
        """Whether a sender waits for room that records this reader holds would give it."""
        ...

    def read(self, limit: int, byte_limit: int) -> list[Packet]:
        """Whole batches after the position, up to ``limit`` packets or ``byte_limit`` bytes
        (at least one batch); never waits."""
        ...

    def wait(self, timeout: float) -> bool:
        """Wait until something may be read (``True``) or ``timeout`` passes."""
        ...

    def wait_in_call(self, timeout: float) -> bool:
        """The same, for a ``receive()`` in progress (which may poll first)."""
        ...

    def interrupt(self) -> None:
        """Make a :meth:`wait` in another thread return now."""
        ...

    def bind_wake_socket(self) -> WakeSocket | None:
        """A socket, for the caller to keep and close, that becomes readable at the next
        commit once :meth:`expect_wake` has returned ``True``: an event loop reads the pipe
        from its own thread when it is.  ``None`` if this back-end has none (then only the
        caching thread reads)."""
        ...

    def expect_wake(self) -> bool:
        """Ask for a wake-up through :meth:`wake_socket` at the next commit; ``False`` (and
        none asked for) if something may be read already."""
        ...

    def wake_expected(self) -> None:
        """Take back :meth:`expect_wake`'s request."""
        ...

    def keepalive(self) -> None:
        """Called while the receiver does not read (its cache is full): stay counted as alive."""
        ...

    def position(self) -> Any:
        """Where the next read starts (opaque)."""
        ...

    def close(self, returned: Any) -> Any:
        """Leave, having returned everything before ``returned`` (a :meth:`position`) to the
        application; returns the ``resume`` for reconnecting."""
        ...


class GroupReader(Backend, Protocol):
    """A member of a receiver group of a Safe pipe.  Used by one thread at a time.

    Each packet of the pipe goes to one member of the group; what a member was given
    stays its own until it acknowledges it, and goes to another member if it dies first.
    """

    capacity: int
    problem: Exception | None
    """Damage met by the last :meth:`take`, after the packets it returned."""
    keepalive_interval: float | None
    """How often the face must call :meth:`keepalive` from a thread of its own while the
    application works (``None``: never)."""

    def keepalive(self) -> None:
        """Stay counted as alive (a member busy with its batch is not dead)."""
        ...

    def take(self, timeout: float | None, closing: Callable[[], bool]) -> list[Packet]:
        """Acknowledge what the last call returned, then claim and return the next batch
        (redelivered packets first), waiting up to ``timeout`` for one; ``[]`` if none
        came or ``closing()`` turned true.  Never reads ahead of what it returns."""
        ...

    def ack(self) -> None:
        """Acknowledge what the last :meth:`take` returned."""
        ...

    def interrupt(self) -> None:
        """Make a :meth:`take` waiting in another thread look at ``closing()`` now."""
        ...

    def close(self, acknowledge: bool = True) -> None:
        """Leave the group, acknowledging what the last :meth:`take` returned (unless not
        ``acknowledge``: it then goes to another member)."""
        ...


class FastWriter(Backend, Protocol):
    """A sender's way into a Fast pipe."""

    slot_size: int
    packet_len: int

    def send(self, data: Sendable) -> None:
        """The whole of ``FastSender.send()`` for this transport, which the face binds as the
        sender's ``send`` at connect: one call per update (the update rate of a Fast pipe is
        the cost of this path).  It checks and encodes ``data`` as
        :func:`pipebit._codec.encode_update` does, under the face's send lock, makes it the
        current value without waiting for receivers or the network, releases the lock however
        it ends, then wakes receivers asleep waiting for a value.  Once closed it calls the
        face's ``on_closed``, which raises."""
        ...

    def published(self) -> int:
        """Values published over this connection."""
        ...

    def pending(self) -> int:
        """Values sent but not published yet (0 or 1)."""
        ...

    def flush(self, timeout: float | None) -> None: ...

    def close(self) -> bool:
        """Leave; ``True`` if a value sent could not be published."""
        ...


class FastReader(Backend, Protocol):
    """A receiver's way into a Fast pipe."""

    slot_size: int

    def read(self, timeout: float | None) -> list[Packet]:
        """``[newest value]`` if newer than the last returned, waiting up to ``timeout``; else ``[]``."""
        ...

    def interrupt(self) -> None:
        """Make a :meth:`read` in another thread return ``[]`` now (the receiver is closing)."""
        ...

    def close(self) -> None: ...


def locate(name: object) -> tuple[Address, str, str]:
    """Where pipe ``name`` lives, its own name, and what messages call it (a URL without its
    password); :class:`InvalidNameError` for a name or URL that is not valid."""
    address = parse(name)
    if isinstance(address, RedisPipe):
        return address, address.name, str(address)
    return address, address, address


def open_safe_writer(
    address: Address, *, capacity: int | None, packet_len: int | None, override: bool, create: bool, log: Log | None
) -> SafeWriter:
    options: dict[str, Any] = {
        "capacity": capacity,
        "packet_len": packet_len,
        "override": override,
        "create": create,
        "log": log,
    }
    if isinstance(address, RedisPipe):
        from ._redis_safe import RedisSafeWriter  # noqa: PLC0415 - redis-py is optional: imported on first use

        return RedisSafeWriter(address, **options)
    return ShmSafeWriter(address, **options)


def open_safe_reader(
    address: Address,
    *,
    start: str,
    capacity: int | None,
    spin: float | None,
    max_cached: int,
    resume: Any,
    create: bool,
    log: Log | None,
) -> SafeReader:
    if isinstance(address, RedisPipe):
        from ._redis_safe import RedisSafeReader  # noqa: PLC0415 - redis-py is optional: imported on first use

        # A network read never spins: the caching thread already waits on the server.
        return RedisSafeReader(
            address, start=start, capacity=capacity, max_cached=max_cached, resume=resume, create=create, log=log
        )
    return ShmSafeReader(address, start=start, capacity=capacity, spin=spin, resume=resume, create=create, log=log)


def open_group_reader(
    address: Address,
    *,
    group: str,
    start: str,
    capacity: int | None,
    batch: int | None,
    max_packets: int,
    create: bool,
    log: Log | None,
) -> GroupReader:
    options: dict[str, Any] = {
        "group": group,
        "start": start,
        "capacity": capacity,
        "batch": batch,
        "max_packets": max_packets,
        "create": create,
        "log": log,
    }
    if isinstance(address, RedisPipe):
        from ._redis_group import open_member  # noqa: PLC0415 - redis-py is optional: imported on first use

        return open_member(address, **options)
    return ShmGroupReader(address, **options)


def open_fast_writer(
    address: Address,
    *,
    slot_size: int | None,
    packet_len: int | None,
    override: bool,
    create: bool,
    log: Log | None,
    send_lock: threading.RLock,
    pack: Callable[[object], bytes],
    on_closed: Callable[[], object],
) -> FastWriter:
    """A Fast sender's back-end.  Its ``send()`` takes ``send_lock`` (the face's, so that the
    face can close under it), encodes with ``pack``, and calls ``on_closed`` (which raises
    the face's :class:`PipeClosedError`) once the writer is closed."""
    options: dict[str, Any] = {
        "slot_size": slot_size,
        "packet_len": packet_len,
        "override": override,
        "create": create,
        "log": log,
        "send_lock": send_lock,
        "pack": pack,
        "on_closed": on_closed,
    }
    if isinstance(address, RedisPipe):
        from ._redis_fast import RedisFastWriter  # noqa: PLC0415 - redis-py is optional: imported on first use

        return RedisFastWriter(address, **options)
    return ShmFastWriter(address, **options)


def open_fast_reader(
    address: Address, *, start: str, slot_size: int | None, create: bool, log: Log | None
) -> FastReader:
    if isinstance(address, RedisPipe):
        from ._redis_fast import RedisFastReader  # noqa: PLC0415 - redis-py is optional: imported on first use

        return RedisFastReader(address, start=start, slot_size=slot_size, create=create, log=log)
    return ShmFastReader(address, start=start, slot_size=slot_size, create=create, log=log)


def remove(name: str, *, force: bool = False) -> list[str]:
    """Remove pipe ``name`` -- its shared-memory segment, semaphores and lock files, or its keys
    on a Redis server -- and return what was removed.

    Refuses with :class:`PipeBusyError` while live processes are attached, unless ``force``;
    they then see the pipe as removed.  :class:`PipeNotFoundError` if no part of it exists.
    ``force`` also removes a shared-memory segment too damaged to read.  Removing the
    user's last shared-memory pipe removes the per-user lock directory too.
    """
    address = parse(name)  # the name becomes file paths: never unchecked
    if isinstance(address, RedisPipe):
        from . import _redis  # noqa: PLC0415 - redis-py is optional: imported on first use

        return _redis.remove_pipe(address, force=force)
    return _pipe.remove_pipe(address, force=force)


def remove_group(name: str, group: str) -> None:
    """Remove receiver group ``group`` of Safe pipe ``name``: the packets it had not consumed
    stop holding senders back, and are no longer owed to anyone of it.

    :class:`PipeBusyError` while live members are attached; :class:`PipeNotFoundError` if
    the pipe or the group does not exist.
    """
    address = parse(name)
    check_group(group, str(address))
    if isinstance(address, RedisPipe):
        from . import _redis_group  # noqa: PLC0415 - redis-py is optional: imported on first use

        _redis_group.remove_group(address, group)
        return
    _group.remove_group(address, group)


def pipe_stats(name: str) -> PipeStats:
    """A snapshot of pipe ``name`` (see :class:`PipeStats`); :class:`PipeNotFoundError` if it
    does not exist.  A Redis URL, or a name under ``PIPEBIT_URL``, reads that server."""
    address = parse(name)
    if isinstance(address, RedisPipe):
        from . import _redis  # noqa: PLC0415 - redis-py is optional: imported on first use

        return _redis.pipe_stats(address)
    return _inspect.pipe_stats(address)


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
    return _inspect.list_pipes()
