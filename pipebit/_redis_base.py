"""What the four endpoints over a Redis server share, and how a class gets its Redis flavour.

``SafeSender("redis://host/0/data_pipe", 0)`` (or a plain name under
``PIPEBIT_URL``) makes :class:`Endpoint.__new__` build the class
:func:`redis_class_for` derives from the one called -- :class:`RedisSafeSender`
of :mod:`pipebit._redis_safe` for ``SafeSender`` -- so the object *is* a
``SafeSender``, with the same arguments and errors; every public method is
overridden and nothing touches shared memory.  Key layout and scripts:
:mod:`pipebit._redis`.

Guarantees (``docs/redis.md`` has them in full)
-----------------------------------------------
* Safe: a receiver attached to the server gets every packet sent after it
  attached, exactly once, in send order; every receiver gets every packet.  A
  sender adds a batch only while live receivers' unread bytes fit the pipe's
  capacity, so memory on the server is bounded and a stalled receiver holds the
  senders back, as on shared memory.  A receiver that has not checked in for 5 s
  (dead, or cut off from the server) stops holding senders back; if it comes
  back and packets it was owed were trimmed meanwhile, its next ``receive()``
  raises :class:`TransportError` saying how many, once, and it goes on from the
  oldest retained packet.
* Connection loss: senders keep their bounded queue and redeliver with backoff
  (no packet twice: the server acknowledges each batch by count); receivers
  resume from the last entry they read.  Constructors raise
  :class:`TransportError` within a few seconds when the server is not there or
  refuses the login -- never a hang.
* Fast: a value is an entry of a stream that keeps only the newest.  ``send()``
  never waits, for receivers or for the server: it leaves the value for a
  background thread, which publishes the newest one, one round trip at a time,
  and again once reconnected (values in between are skipped, as a reader may).
  ``flush()`` waits until the value last sent is on the server.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _layout as L
from . import _redis as R
from ._address import RedisPipe, parse
from ._endpoint import Endpoint, _enable_debug_output, check_debug
from ._pipe import _size_mismatch
from ._stats import EndpointStats
from .errors import (
    ArgumentTypeError,
    CapacityMismatchError,
    InvalidNameError,
    ModelMismatchError,
    PacketSizeError,
    PipeBusyError,
    PipeClosedError,
    PipeNotFoundError,
    TransportError,
)


class RedisEndpoint(Endpoint):
    """What the four Redis endpoints share: the address, the link, membership and lifecycle."""

    _model_name = "safe"

    def _setup(self, name: object, debug: Any, create: bool) -> None:
        address = parse(name)
        if not isinstance(address, RedisPipe):  # PIPEBIT_URL was unset between __new__ and __init__
            raise InvalidNameError(f"pipe name {name!r} does not name a Redis server")
        self._address = address
        self._name = address.name
        self._shown = str(address)  # the URL without its password: what messages call the pipe
        self._debug = check_debug(debug)
        self._create = bool(create)
        self._pipe = self._slot = None
        self._closed_reason = "it was closed with close_connection()"
        self._link: R.Link | None = None
        self._member = ""
        self._info = ""
        self._created = ""
        self._capacity_now = 0
        if self._debug:
            _enable_debug_output()

    @property
    def closed(self) -> bool:
        """Whether the endpoint is currently disconnected."""
        return self._link is None

    def _require_link(self) -> R.Link:
        link = self._link
        if link is None:
            raise PipeClosedError(
                f"{self._role} of pipe {self._shown!r} is not connected: {self._closed_reason}; "
                "call open_connection() to reconnect"
            )
        return link

    def _keys(self) -> list[str]:
        return R.pipe_keys(self._name, self._model_name)

    def _join(self, **options: str) -> tuple[R.Link, str, int]:
        """Connect and run the attach script: (link, position, packet_len).  Raises the errors
        of attaching to a shared-memory pipe, plus :class:`TransportError`."""
        link = R.Link(self._address.server)
        try:
            self._member, self._info = R.new_member(self._role)
            args = {
                "capacity": "",
                "default": "",
                "packet_len": "",
                "override": "0",
                "start": "",
                "resume_created": "",
                "resume": "",
                **options,
            }
            reply = link.call(
                lambda: link.open_script(
                    keys=self._keys(),
                    args=[
                        self._model_name,
                        args["capacity"],
                        args["default"],
                        args["packet_len"],
                        args["override"],
                        "1" if self._create else "0",
                        self._member,
                        self._info,
                        self._role,
                        args["start"],
                        args["resume_created"],
                        args["resume"],
                        R.ALIVE_MS,
                        R.FORGET_MS,
                    ],
                )
            )
            status, *rest = [R.decode_text(v) for v in reply]
            if status == "missing":
                raise PipeNotFoundError(f"no pipe {self._shown!r} exists")
            if status == "busy":
                raise PipeBusyError(
                    f"pipe {self._shown!r} must be recreated to change its model or capacity, "
                    f"but {rest[0]} live process(es) are attached to it"
                )
            if status == "mismatch":
                raise ModelMismatchError(
                    f"pipe {self._shown!r} is a {rest[0]} pipe; a {self._model_name} endpoint cannot "
                    "use it (a sender with override=True replaces it when no one is attached; or use the "
                    f"{rest[0].capitalize()} classes)"
                )
            if status == "size":
                raise self._size_mismatch(int(args["capacity"]), int(rest[0]))
        except BaseException:
            link.close()
            raise
        _model, capacity, packet_len, self._created, position = rest
        self._capacity_now = int(capacity)
        self._log(f"{status} ({self._model_name}, {capacity} bytes) on {self._address.server}")
        return link, position, int(packet_len)

    def _size_mismatch(self, asked: int, actual: int) -> CapacityMismatchError:
        """The error for an explicit size that differs from the pipe's: shared memory's, word for word."""
        if self._model_name == "fast":  # the server keeps a Fast pipe's slot size; the text wants ring bytes
            return _size_mismatch(self._shown, L.MODEL_FAST, L.fast_capacity(asked), L.fast_capacity(actual))
        return _size_mismatch(self._shown, L.MODEL_SAFE, asked, actual)

    def _too_big(self, n: int, limit: int) -> PacketSizeError:
        """The error for a packet that encodes to ``n`` bytes, more than the pipe's ``limit``."""
        what = "slot_size" if self._model_name == "fast" else "capacity"
        kind = "Fast pipe" if self._model_name == "fast" else "pipe"
        return PacketSizeError(
            f"packet encodes to {n} bytes; {kind} {self._shown!r} carries at most {limit} bytes per packet "
            f"({what}={self._capacity_now}).  A pipe's {what} is fixed when it is created: recreate it with a "
            f"larger {what} through a sender's override=True while no other process is attached, or remove it "
            f"first (`pipebit rm {self._shown}`), and pass that {what} in every process (or none, to take the pipe's)"
        )

    def _leave(self, link: R.Link, position: str = "") -> None:
        """Take this member off the pipe's lists (best effort: an unreachable server forgets it later).

        A Safe receiver passes ``position``, the end of what it returned to the application:
        in the same step, those packets stop counting as unread for ``start="unread"``.
        """
        try:
            args = [self._member, self._created, position]
            link.call(lambda: link.leave_script(keys=self._keys(), args=args))
        except TransportError as exc:
            self._log(f"could not unregister: {exc}")
        link.close()
        self._unregister()
        self._closed_reason = "it was closed with close_connection()"
        self._log("disconnected")

    def _beat(self, link: R.Link, pipe: Any = None, position: str = "", packets: str = "") -> Any:
        """Check in: push this member's deadline forward (receivers: and report where they are).

        Into ``pipe`` (a redis-py pipeline) by its SHA alone, which saves redis-py's
        SCRIPT EXISTS round trip per call; the caller reloads on NoScriptError."""
        keys = self._keys()
        args: list[Any] = [self._member, self._created, R.ALIVE_MS, self._info, position, packets]
        if pipe is None:
            return link.beat_script(keys=keys, args=args)
        return pipe.evalsha(link.beat_script.sha, len(keys), *keys, *args)

    def _removed(self) -> PipeClosedError:
        return PipeClosedError(
            f"pipe {self._shown!r} was removed while this {self._role} was attached (or the server lost its data)"
        )

    def _forget_after_fork(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.forget()

    def _pending_and_packets(self) -> tuple[int, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _my_lag(self, written: int) -> int | None:
        return None

    def stats(self) -> EndpointStats:
        """A snapshot of this endpoint and its pipe (see :class:`pipebit.EndpointStats`)."""
        link = self._require_link()
        snapshot, members = R.read_stats(link, self._name)
        slot = members.index(self._member) if self._member in members else -1
        packets, pending = self._pending_and_packets()
        return EndpointStats(self._role, slot, packets, pending, self._my_lag(snapshot.packets_written), snapshot)

    def __repr__(self) -> str:
        if self._link is None:
            return f"<{type(self).__name__} {self._shown!r} closed>"
        return f"<{type(self).__name__} {self._shown!r} {self._model_name} capacity={self._capacity_now}>"


def retry_wait(event: threading.Event, attempt: int) -> None:
    """Sleep before reconnection attempt ``attempt``, or until ``event`` is set."""
    event.wait(R.backoff(attempt))


_classes: dict[type[Endpoint], type[Endpoint]] = {}
_classes_lock = threading.Lock()


def redis_class_for(cls: type[Endpoint]) -> type[Endpoint]:
    """The class whose instances carry ``cls``'s behaviour over Redis: a subclass of ``cls``.

    ``BitPackSender`` (or a user's subclass) gets ``(BitPackSender, RedisSafeSender)``,
    so its own ``__init__`` runs first and reaches the Redis one through ``super()``.
    """
    if issubclass(cls, RedisEndpoint):
        return cls
    # The Redis classes import this module; so they are imported here, on first use.
    from ._redis_fast import RedisFastReceiver, RedisFastSender  # noqa: PLC0415
    from ._redis_safe import RedisSafeReceiver, RedisSafeSender  # noqa: PLC0415

    with _classes_lock:
        found = _classes.get(cls)
        if found is not None:
            return found
        for redis_base in (RedisSafeSender, RedisSafeReceiver, RedisFastSender, RedisFastReceiver):
            base = redis_base.__mro__[2]  # RedisSafeSender -> RedisEndpoint -> SafeSender
            if cls is base:
                found = redis_base
            elif issubclass(cls, base):
                namespace: dict[str, Any] = {"__doc__": cls.__doc__, "__module__": cls.__module__}
                found = type(f"Redis{cls.__name__}", (cls, redis_base), namespace)
            else:
                continue
            _classes[cls] = found
            return found
    raise ArgumentTypeError(f"{cls.__name__} cannot be used with a pipe on a Redis server")
