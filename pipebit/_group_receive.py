"""A Safe receiver that is a member of a receiver group, whatever the transport.

:class:`GroupReceive` is the part of :class:`pipebit.SafeReceiver` used when it was
given ``group=``: it has no cache and no reading thread, because a member must not
take more work than it hands to the application.  Each ``receive()`` acknowledges
what the previous one returned and claims the next batch, in the caller's thread;
``ack()`` and ``close_connection()`` acknowledge too.  The back-end behind it is a
:class:`~pipebit._transport.GroupReader`.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _transport
from ._endpoint import Endpoint
from ._limits import Packet
from ._transport import GroupReader
from ._worker import Worker


class GroupReceive(Endpoint):
    """The group member's side of a Safe receiver (see the module's docstring)."""

    _group: str | None
    _batch: int | None
    _start: str
    _capacity: int | None
    _max_cached: int
    _returned: int
    _member: GroupReader | None
    _member_lock: threading.Lock
    _member_problem: Exception | None
    _keeper: Worker | None  # checks in while the application works (transports that need it)

    def _open_member(self) -> None:
        assert self._group is not None
        self._member_lock = threading.Lock()
        self._member_problem = None
        member = _transport.open_group_reader(
            self._address,
            group=self._group,
            start=self._start,
            capacity=self._capacity,
            batch=self._batch,
            max_packets=self._max_cached,
            create=self._create,
            log=self._logger,
        )
        self._member = self._backend = member
        self._keeper: Worker | None = None
        interval = member.keepalive_interval
        if interval is not None:
            self._keeper = Worker(f"pipebit-{self._name}-member", lambda stop: self._keep_alive(member, interval, stop))
            self._keeper.start()
        self._register()
        self._log(f"joined receiver group {self._group!r} (start={self._start})")

    def _receive_as_member(self, limit: float | None) -> list[Packet]:
        """receive() of a member: acknowledge the last batch, claim the next."""
        with self._member_lock:
            member = self._require_open()
            problem, self._member_problem = self._member_problem, None
            if problem is not None:  # after the packets before it, which the last call returned
                member.ack()
                raise problem
            if self._keeper is not None:
                self._keeper.check()  # a failure to check in is the application's to hear
            packets: list[Packet] = member.take(limit, self._is_closing)
            if member.problem is not None:
                if not packets:
                    raise member.problem
                self._member_problem = member.problem
            self._returned += len(packets)
            return packets

    @staticmethod
    def _keep_alive(member: GroupReader, interval: float, stopping: threading.Event) -> None:
        while not stopping.wait(interval):
            member.keepalive()

    def _is_closing(self) -> bool:
        return self._backend is None

    def ack(self) -> None:
        """Acknowledge the packets the last ``receive()`` returned: they are done, and will not
        go to another member of the group should this process die.  ``receive()`` and
        ``close_connection()`` acknowledge too.  A receiver without a group has nothing to
        acknowledge: a no-op."""
        if self._group is None:
            return
        with self._member_lock:
            member: GroupReader = self._require_open()
            member.ack()

    def _close_member(self) -> None:
        member = self._member
        if member is None:
            return
        self._member = self._backend = None  # receive() calls now fail, and a waiting one leaves
        if self._keeper is not None:
            self._keeper.stop(timeout=10.0)
            self._keeper = None
        while not self._member_lock.acquire(timeout=0.05):
            member.interrupt()
        try:
            member.close()
            self._closed()
        finally:
            self._member_lock.release()

    def _forget_member_after_fork(self) -> None:
        self._member = self._keeper = None
        self._member_lock = threading.Lock()

    def _member_text(self) -> dict[str, Any]:
        return {"group": self._group, "batch": self._batch}
