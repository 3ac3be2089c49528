"""The contenders: one small class per library and role, all with the same two methods.

A *sender* has ``send(packet)``; a *receiver* has ``recv() -> list of packets``
(the packets that arrived, oldest first, possibly several at once where the
library hands out batches); a *reader* of a latest-value channel has
``poll() -> [newest packet] or []``, never blocking.  Every class also has
``close()``.

Same burden for everyone: every sender is given Python lists and every
receiver returns Python lists.  PipeBit encodes with MessagePack (its only
format); every other peer pickles with the default protocol, exactly as
``multiprocessing`` does (``faster-fifo`` pickles by default too; for ZeroMQ
this module pickles explicitly, which is what ``send_pyobj`` does).

Receivers block until something arrives, the way an application would use
them.  Only the lossy ZeroMQ PUB/SUB receivers give up after an idle timeout,
because a dropped packet would otherwise leave them waiting forever.  For the
lossless peers the parent's watchdog ends a run that stalls and flags it.

:class:`Channel` is made by the parent process (it owns the queues and pipes
that must be handed to children at spawn time) and tells a child everything it
needs to open its end.
"""

from __future__ import annotations

import multiprocessing.context
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, List

import faster_fifo
import zmq
from common import remove_pipe

import pipebit

Packet = List[Any]

# The peers, as they are named in the tables.
PIPEBIT_SAFE = "PipeBit Safe"
PIPEBIT_FAST = "PipeBit Fast"
PIPEBIT_SPIN = "PipeBit Safe, spin"  # receivers poll up to SPIN_S before sleeping (round trip only)
PIPEBIT_SLEEP = "PipeBit Safe, spin=0"  # receivers never poll: every wait is a sleep (round trip only)
MP_QUEUE = "mp.Queue"
MP_PIPE = "mp.Pipe"
ZMQ_PUSH_PULL = "zmq PUSH/PULL"
ZMQ_PUB_SUB = "zmq PUB/SUB (default HWM)"
ZMQ_PUB_SUB_RAISED = "zmq PUB/SUB (HWM raised)"
ZMQ_CONFLATE = "zmq PUB/SUB CONFLATE"
FASTER_FIFO = "faster-fifo"

LOSSY = frozenset({ZMQ_PUB_SUB, ZMQ_PUB_SUB_RAISED, ZMQ_CONFLATE})  # may drop by design

# A lossy receiver that has heard nothing for this long decides the sender is done.
IDLE_TIMEOUT_S = 1.0
# faster-fifo's get_many() needs a number; this stands for "wait as long as it takes".
FOREVER_S = 3600.0
# The opt-in low-latency mode: how long a PipeBit receiver polls before it sleeps.
SPIN_S = 0.002
# ZeroMQ's default high-water mark is 1000 messages; "raised" means no limit at all (0).
ZMQ_NO_LIMIT = 0


@dataclass
class Channel:
    """One measured channel: a sender and ``receivers`` receivers of one peer.

    ``name`` is the PipeBit pipe name or the ZeroMQ ``ipc://`` address.
    ``capacity`` is PipeBit's ring size and faster-fifo's buffer size, in bytes.
    ``queues`` holds what must travel to the children at spawn time: one
    ``mp.Queue`` or ``faster_fifo.Queue`` per receiver, or the two ends of an ``mp.Pipe``.
    """

    peer: str
    name: str
    receivers: int
    capacity: int
    queues: list[Any] = field(default_factory=list)


def make_channel(
    ctx: multiprocessing.context.BaseContext, peer: str, name: str, *, receivers: int, capacity: int, workdir: str
) -> Channel:
    """Create the parent-side objects of a channel (queues, pipes, socket address)."""
    channel = Channel(peer, name, receivers, capacity)
    if peer == MP_QUEUE:
        channel.queues = [ctx.Queue() for _ in range(receivers)]  # unbounded: the default
    elif peer == FASTER_FIFO:
        channel.queues = [faster_fifo.Queue(max_size_bytes=capacity) for _ in range(receivers)]
    elif peer == MP_PIPE:
        if receivers != 1:
            raise ValueError("mp.Pipe connects exactly two processes")
        receive_end, send_end = ctx.Pipe(duplex=False)
        channel.queues = [receive_end, send_end]
    elif peer.startswith("zmq"):
        channel.name = f"ipc://{os.path.join(workdir, name)}.sock"
    return channel


def discard_channel(channel: Channel) -> None:
    """Release what the parent holds for ``channel``; remove its pipe or socket file."""
    if channel.peer in (PIPEBIT_SAFE, PIPEBIT_SPIN, PIPEBIT_SLEEP, PIPEBIT_FAST):
        remove_pipe(channel.name)
    elif channel.peer == MP_QUEUE:
        for q in channel.queues:
            q.close()
            q.cancel_join_thread()  # the parent never put anything; do not wait on a feeder
    elif channel.peer == MP_PIPE:
        for connection in channel.queues:
            connection.close()
    elif channel.name.startswith("ipc://"):
        try:
            os.unlink(channel.name[len("ipc://") :])
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------- PipeBit
class PipeBitSafeSender:
    """``SafeSender``: ``send()`` encodes, queues and returns; a thread fills the ring."""

    def __init__(self, channel: Channel) -> None:
        self._sender = pipebit.SafeSender(channel.name, 0, capacity=channel.capacity)
        self.send = self._sender.send  # bound directly: the harness adds no call of its own

    def close(self) -> None:
        self._sender.close_connection()


class PipeBitSafeReceiver:
    """``SafeReceiver(start="new")``: ``receive(timeout=None)`` returns every packet waiting.

    The default ``spin="auto"``, except for the spin peer (``spin=SPIN_S``: ``receive()``
    always polls that long before it sleeps) and the sleep peer (``spin=0``: it never polls).
    """

    def __init__(self, channel: Channel, index: int) -> None:
        spin: float | str = {PIPEBIT_SPIN: SPIN_S, PIPEBIT_SLEEP: 0.0}.get(channel.peer, "auto")
        self._receiver = pipebit.SafeReceiver(channel.name, 0, start="new", capacity=channel.capacity, spin=spin)

    def recv(self) -> list[Packet]:
        return self._receiver.receive(timeout=None)

    def close(self) -> None:
        self._receiver.close_connection()


class PipeBitFastSender:
    """``FastSender``: ``send()`` overwrites the current value, never waits."""

    def __init__(self, channel: Channel) -> None:
        self._sender = pipebit.FastSender(channel.name, 0)
        self.send = self._sender.send

    def close(self) -> None:
        self._sender.close_connection()


class PipeBitFastReader:
    """``FastReceiver``: ``receive(timeout=0)`` is ``[newest]`` if it is new, else ``[]``."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._receiver = pipebit.FastReceiver(channel.name, 0)

    def poll(self) -> list[Packet]:
        return self._receiver.receive(timeout=0)

    def close(self) -> None:
        self._receiver.close_connection()


# ------------------------------------------------------------ queue senders
class QueueSender:
    """A sender over one queue per receiver (``mp.Queue``, ``faster_fifo.Queue``): ``put()`` on each.

    With one receiver, ``send`` is the queue's own ``put``, bound directly.
    """

    def __init__(self, channel: Channel) -> None:
        self._queues = channel.queues
        if len(self._queues) == 1:
            self.send = self._queues[0].put
        else:
            self.send = self._send_to_each

    def _send_to_each(self, packet: Packet) -> None:
        # Fan-out with queues means one queue per receiver, and one put (one pickling) per queue.
        for q in self._queues:
            q.put(packet)


# ------------------------------------------------------------ multiprocessing
class MpQueueSender(QueueSender):
    """``mp.Queue.put()``: appends to an unbounded in-process buffer; a feeder thread pickles."""

    def close(self) -> None:
        for q in self._queues:
            q.close()
            q.join_thread()


class MpQueueReceiver:
    """``mp.Queue.get()``, one packet per call."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._queue = channel.queues[index]

    def recv(self) -> list[Packet]:
        return [self._queue.get()]

    def close(self) -> None:
        self._queue.close()


class MpPipeSender:
    """``Connection.send()`` on a one-way ``mp.Pipe``: pickles and writes to the OS pipe."""

    def __init__(self, channel: Channel) -> None:
        self._connection = channel.queues[1]
        self.send = self._connection.send

    def close(self) -> None:
        self._connection.close()


class MpPipeReceiver:
    """``Connection.recv()``, one packet per call."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._connection = channel.queues[0]

    def recv(self) -> list[Packet]:
        return [self._connection.recv()]

    def close(self) -> None:
        self._connection.close()


# ------------------------------------------------------------------- faster-fifo
class FasterFifoSender(QueueSender):
    """``faster_fifo.Queue.put()``: pickles into a bounded shared-memory buffer, waiting for room.

    ``put()`` blocks while the buffer is full (``Full`` after 10 s).
    """

    def close(self) -> None:
        pass


class FasterFifoReceiver:
    """``faster_fifo.Queue.get_many()``: every message available, in one call."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._queue = channel.queues[index]

    def recv(self) -> list[Packet]:
        return self._queue.get_many(timeout=FOREVER_S)  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------- ZeroMQ
class ZmqSender:
    """A bound ``PUSH`` or ``PUB`` socket; each packet is pickled into one message."""

    def __init__(self, channel: Channel) -> None:
        self._context = zmq.Context()
        kind = zmq.PUSH if channel.peer == ZMQ_PUSH_PULL else zmq.PUB
        self._socket = self._context.socket(kind)
        if channel.peer == ZMQ_PUB_SUB_RAISED:
            self._socket.setsockopt(zmq.SNDHWM, ZMQ_NO_LIMIT)
        self._socket.bind(channel.name)

    def send(self, packet: Packet) -> None:
        self._socket.send(pickle.dumps(packet))

    def close(self) -> None:
        self._socket.close(linger=1000)  # let a final message go out, but never hang
        self._context.term()


class ZmqReceiver:
    """A ``PULL`` or ``SUB`` socket connected to the sender, one message per call.

    ``SUB`` sockets (lossy) give up after :data:`IDLE_TIMEOUT_S` of silence and return ``[]``.
    """

    def __init__(self, channel: Channel, index: int) -> None:
        self._context = zmq.Context()
        if channel.peer == ZMQ_PUSH_PULL:
            self._socket = self._context.socket(zmq.PULL)
        else:
            self._socket = self._context.socket(zmq.SUB)
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
            self._socket.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
            if channel.peer == ZMQ_PUB_SUB_RAISED:
                self._socket.setsockopt(zmq.RCVHWM, ZMQ_NO_LIMIT)
        self._socket.connect(channel.name)

    def recv(self) -> list[Packet]:
        try:
            return [pickle.loads(self._socket.recv())]
        except zmq.Again:
            return []

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


class ZmqConflateReader:
    """A ``SUB`` socket with ``CONFLATE``: its queue keeps only the newest message."""

    def __init__(self, channel: Channel, index: int) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.CONFLATE, 1)  # must be set before connecting
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(channel.name)

    def poll(self) -> list[Packet]:
        try:
            return [pickle.loads(self._socket.recv(zmq.NOBLOCK))]
        except zmq.Again:
            return []

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


# ------------------------------------------------------------------- dispatch
def open_sender(channel: Channel) -> Any:
    """Open the sending end of ``channel`` in this process."""
    if channel.peer in (PIPEBIT_SAFE, PIPEBIT_SPIN, PIPEBIT_SLEEP):
        return PipeBitSafeSender(channel)
    if channel.peer == PIPEBIT_FAST:
        return PipeBitFastSender(channel)
    if channel.peer == MP_QUEUE:
        return MpQueueSender(channel)
    if channel.peer == MP_PIPE:
        return MpPipeSender(channel)
    if channel.peer == FASTER_FIFO:
        return FasterFifoSender(channel)
    return ZmqSender(channel)


def open_receiver(channel: Channel, index: int) -> Any:
    """Open receiving end number ``index`` of ``channel`` in this process."""
    if channel.peer in (PIPEBIT_SAFE, PIPEBIT_SPIN, PIPEBIT_SLEEP):
        return PipeBitSafeReceiver(channel, index)
    if channel.peer == MP_QUEUE:
        return MpQueueReceiver(channel, index)
    if channel.peer == MP_PIPE:
        return MpPipeReceiver(channel, index)
    if channel.peer == FASTER_FIFO:
        return FasterFifoReceiver(channel, index)
    return ZmqReceiver(channel, index)


def open_reader(channel: Channel, index: int) -> Any:
    """Open a polling reader of a latest-value ``channel`` in this process."""
    if channel.peer == PIPEBIT_FAST:
        return PipeBitFastReader(channel, index)
    return ZmqConflateReader(channel, index)
