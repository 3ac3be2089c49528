"""A process's hold on a shared-memory pipe: the mapping, and the slot it claimed in the
participant table.  What the four shared-memory back-ends share about it: snapshots,
letting go, and letting go in a forked child without touching the pipe."""

from __future__ import annotations

from ._inspect import endpoint_stats
from ._pipe import Pipe, Slot
from ._stats import EndpointStats


class Attachment:
    """Base of the shared-memory back-ends: ``pipe`` and ``slot`` are set by the subclass."""

    pipe: Pipe
    slot: Slot

    def stats(self, role: str, packets: int, pending: int) -> EndpointStats:
        """This endpoint (its own counters given) and its pipe, right now."""
        return endpoint_stats(self.pipe, self.slot.index, role, packets, pending)

    def release(self) -> None:
        """Give the slot back and unmap.  Nothing may use the pipe any more."""
        self.pipe.release_slot(self.slot)
        self.pipe.close()

    def forget(self) -> None:
        """In a forked child: close our copies only; the parent still owns the slot."""
        self.slot.lock.close()
        self.pipe.close()
