"""What the four Redis back-ends share: joining a pipe as a member, checking in, leaving.

A member is one sender or receiver attached to a pipe on a Redis server: an id
in the pipe's ``members`` hash, a deadline in ``alive`` that it pushes forward
every second (:data:`pipebit._redis.BEAT_INTERVAL`), and, for a Safe receiver,
its position in ``receivers``.  Key layout and scripts: :mod:`pipebit._redis`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from . import _redis as R
from ._address import RedisPipe
from ._limits import size_mismatch
from ._stats import EndpointStats
from .errors import (
    CapacityMismatchError,
    ModelMismatchError,
    PipeBusyError,
    PipeClosedError,
    PipeNotFoundError,
    TransportError,
)

Log = Callable[[str], None]


def retry_wait(event: threading.Event, attempt: int) -> None:
    """Sleep before reconnection attempt ``attempt``, or until ``event`` is set."""
    event.wait(R.backoff(attempt))


class RedisMember:
    """One endpoint's membership of a pipe on a Redis server."""

    model = "safe"

    def __init__(self, address: RedisPipe, role: str, create: bool, log: Log | None) -> None:
        self.address = address
        self.name = address.name
        self.shown = str(address)  # the URL without its password: what messages call the pipe
        self.role = role
        self._create = create
        self._log = log or (lambda message: None)
        self.member = ""
        self.info = ""
        self.created = ""
        self.capacity = 0  # the pipe's: ring bytes (Safe) or slot bytes (Fast)
        self.groups = 0
        self.link: R.Link | None = None
        self._interrupted = False  # interrupt() cut the connection: the failure it causes is not one
        self._backoff = threading.Event()  # set by interrupt(): a pause before reconnecting ends
        self._attempt = 0  # reconnection attempts since the last round trip that worked

    def keys(self) -> list[str]:
        return R.pipe_keys(self.name, self.model)

    def join(
        self,
        *,
        size: int | None,
        default: int,
        packet_len: int | None = None,
        override: bool = False,
        start: str = "",
        resume: tuple[str, str] | None = None,
    ) -> tuple[str, int]:
        """Connect and run the attach script: (position, packet_len).  ``size`` is the pipe's
        capacity (Safe) or slot size (Fast) asked for, ``None`` to take the pipe's (or
        ``default`` when creating).  Raises the errors of attaching to a shared-memory
        pipe, plus :class:`TransportError`."""
        link = R.Link(self.address.server)
        try:
            self.member, self.info = R.new_member(self.role)
            resume_created, resume_at = resume or ("", "")
            args = {
                "capacity": "" if size is None else str(size),
                "default": str(default),
                "packet_len": "" if packet_len is None else str(packet_len),
                "override": "1" if override else "0",
                "start": start,
                "resume_created": resume_created,
                "resume": resume_at,
            }
            reply = link.call(
                lambda: link.open_script(
                    keys=self.keys(),
                    args=[
                        self.model,
                        args["capacity"],
                        args["default"],
                        args["packet_len"],
                        args["override"],
                        "1" if self._create else "0",
                        self.member,
                        self.info,
                        self.role,
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
                raise PipeNotFoundError(f"no pipe {self.shown!r} exists")
            if status == "busy":
                raise PipeBusyError(
                    f"pipe {self.shown!r} must be recreated to change its model or capacity, "
                    f"but {rest[0]} live process(es) are attached to it"
                )
            if status == "mismatch":
                raise ModelMismatchError(
                    f"pipe {self.shown!r} is a {rest[0]} pipe; a {self.model} endpoint cannot "
                    "use it (a sender with override=True replaces it when no one is attached; or use the "
                    f"{rest[0].capitalize()} classes)"
                )
            if status == "size":
                raise self._size_mismatch(int(args["capacity"]), int(rest[0]))
        except BaseException:
            link.close()
            raise
        _model, capacity, rule, self.created, position, groups = rest
        self.capacity = int(capacity)
        self.groups = int(groups)  # receiver groups of the pipe, as of this reply
        self.link = link
        self._log(f"{status} ({self.model}, {capacity} bytes) on {self.address.server}")
        return position, int(rule)

    def _size_mismatch(self, asked: int, actual: int) -> CapacityMismatchError:
        what = "slot_size" if self.model == "fast" else "capacity"
        return size_mismatch(self.shown, what, asked, actual)

    def leave(self, position: str = "") -> None:
        """Take this member off the pipe's lists (best effort: an unreachable server forgets it later).

        A Safe receiver passes ``position``, the end of what it returned to the application:
        in the same step, those packets stop counting as unread for ``start="unread"``.
        """
        link, self.link = self.link, None
        if link is None:
            return
        try:
            args = [self.member, self.created, position]
            link.call(lambda: link.leave_script(keys=self.keys(), args=args))
        except TransportError as exc:
            self._log(f"could not unregister: {exc}")
        link.close()

    def beat(self, pipe: Any = None, position: str = "", packets: str = "") -> Any:
        """Check in: push this member's deadline forward (receivers: and report where they are).

        Into ``pipe`` (a redis-py pipeline) by its SHA alone, which saves redis-py's
        SCRIPT EXISTS round trip per call; the caller reloads on NoScriptError."""
        link = self.link
        assert link is not None
        keys = self.keys()
        args: list[Any] = [self.member, self.created, R.ALIVE_MS, self.info, position, packets]
        if pipe is None:
            return link.beat_script(keys=keys, args=args)
        return pipe.evalsha(link.beat_script.sha, len(keys), *keys, *args)

    def retry_after(self, exc: Exception) -> bool:
        """Sort out a failed round trip: ``False`` when the server had only forgotten the
        scripts (reloaded now: retry at once), ``True`` when the connection failed (retry
        after a pause); anything else is raised as :class:`TransportError`."""
        link = self.link
        assert link is not None
        if R.missing_script(exc):
            link.reload_scripts()
            return False
        if not R.transient(exc):
            raise R.describe(exc, link.server) from exc
        self._log(f"lost the server ({exc}); retrying")
        return True

    def recover(self, exc: Exception) -> None:
        """After a failed round trip of a reading member: nothing if :meth:`interrupt` caused it;
        else sort it out (:meth:`retry_after`) and pause before the next attempt."""
        if self._interrupted:
            self._interrupted = False
            return
        if self.retry_after(exc):
            self._backoff.clear()
            retry_wait(self._backoff, self._attempt)
            self._attempt += 1

    def interrupt(self) -> None:
        """Make a round trip waiting in another thread return now: cut the connection it waits on."""
        link = self.link
        if link is None:
            return
        self._interrupted = True
        self._backoff.set()
        try:
            link.client.connection_pool.disconnect()
        except Exception:  # a broken connection may fail to close; it is closed either way
            pass

    def removed(self) -> PipeClosedError:
        return PipeClosedError(
            f"pipe {self.shown!r} was removed while this {self.role} was attached (or the server lost its data)"
        )

    def my_lag(self, written: int) -> int | None:
        return None

    def stats(self, role: str, packets: int, pending: int) -> EndpointStats:
        link = self.link
        assert link is not None
        snapshot, members = R.read_stats(link, self.name)
        slot = members.index(self.member) if self.member in members else -1
        return EndpointStats(role, slot, packets, pending, self.my_lag(snapshot.packets_written), snapshot)

    def forget(self) -> None:
        """In a forked child: drop the parent's connections without using them."""
        link, self.link = self.link, None
        if link is not None:
            link.forget()
