"""asyncio on every endpoint, written once for both models and both transports (a face part).

Guarantees
----------
* The event loop is never blocked: no call made from a coroutine here waits for
  a packet, for room, for a semaphore or for a socket in the loop's thread.  The
  only locks it takes are the faces' own short mutexes, which no thread holds
  while it waits.
* Cancellation loses nothing.  A coroutine takes packets only in the loop's
  thread, at the moment it resumes; nothing is ever handed to a future that may
  be cancelled.  A cancelled ``areceive()`` leaves every packet for the next call.
* Closing an endpoint (from any thread) while a coroutine awaits makes that
  coroutine raise :class:`PipeClosedError`.

Mechanism: a receiver in *event mode* (switched on by its first ``areceive()``,
``async for`` or ``fileno()``) keeps a :class:`~pipebit._readiness.Readiness`: one
file descriptor, readable while packets wait for the application (why a descriptor:
see :mod:`pipebit._readiness`).  A Safe receiver's caching thread reads ahead into
its cache and sets the descriptor when the cache gains packets; a Fast receiver
gets a watcher thread (:class:`LatestValueWatcher`) that holds the newest value.
Over shared memory a coroutine that finds nothing reads the pipe itself instead,
woken by the writers through its wake socket (:mod:`pipebit._wake`): one wake-up
per packet, the loop's.  Senders wait for room with ``call_soon_threadsafe`` from
the delivery thread: their waits are rare (a full queue) and need no descriptor
to outlive them.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ._endpoint import Endpoint
from ._limits import DEFAULT_RECEIVE_TIMEOUT, Packet, Sendable, check_timeout
from ._readiness import Readiness, _resolved, _running_loop, _wake
from ._worker import Worker
from .errors import CorruptPacketError, InvalidArgumentError, PipeClosedError, PipeTimeoutError

if TYPE_CHECKING:
    import asyncio

    from ._transport import FastReader

# A helper thread that waits for a coroutine looks this often whether it was cancelled.
THREAD_SLICE = 0.25
# `async for` lets the loop run other tasks after this many packets of one batch (a batch
# may hold 65536), so that a long batch does not keep them waiting.
YIELD_EVERY = 256


async def _let_others_run() -> None:
    import asyncio  # noqa: PLC0415 - see _running_loop()

    await asyncio.sleep(0)


class AsyncEndpoint(Endpoint):
    """``async with``: opens on entry and closes on exit, in a worker thread of the loop's
    executor (closing a sender waits for its flush; opening a Redis pipe waits for the
    server), so that the loop runs meanwhile."""

    async def __aenter__(self) -> Any:
        if self._backend is None:
            await _running_loop().run_in_executor(None, self.open_connection)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await _running_loop().run_in_executor(None, self.close_connection)


class AsyncReceiving(AsyncEndpoint):
    """``areceive()``, ``async for`` and ``fileno()`` for a receiver.

    The face provides :meth:`_open_readiness` (switch event mode on, return the
    :class:`Readiness`) and :meth:`_take_ready` (what waits, without waiting: ``[]`` if
    nothing; raises what ``receive()`` would raise).
    """

    _front: collections.deque[Packet]  # taken by `async for` but not yielded yet
    _served: int  # packets `async for` yielded since it last let the loop run other tasks

    def _init_async(self) -> None:
        self._front = collections.deque()
        self._claiming: Any = None  # the thread call of _areceive_in_a_thread(), if one ran
        self._served = 0

    def _open_readiness(self) -> Readiness:  # pragma: no cover - overridden
        raise NotImplementedError

    def _take_ready(self) -> list[Packet]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _read_in_loop(self) -> list[Packet]:
        """What a coroutine takes when the receiver has a wake socket: it may read the pipe
        itself, in the loop's thread, without waiting (see ``ReceiveCache``)."""
        return self._take_ready()

    def _expect_wake(self) -> bool:
        """Ask writers to wake the wake socket at the next commit; ``False`` if something may
        be read already."""
        return False

    def _wake_expected(self) -> None:
        """Take back :meth:`_expect_wake`'s request."""

    def _take_front(self) -> list[Packet]:
        """The packets ``async for`` took and has not yielded: they come first.  Each
        ``popleft()`` is atomic, so a packet goes to one caller only."""
        front, packets = self._front, []
        try:
            while front:
                packets.append(front.popleft())
        except IndexError:  # another thread took the last one
            pass
        return packets

    def _handed(self, packets: list[Packet], copy: bool) -> list[Packet]:
        """``packets`` as the application gets them (see ``SafeReceiver.receive(copy=)``)."""
        return packets

    def _claims_in_calls(self) -> bool:
        """Whether this receiver takes packets only inside ``receive()`` calls (a member of a
        receiver group, which must not claim work it has not handed over): then there is
        no reading thread to raise a readiness, and coroutines wait in a thread of their own."""
        return False

    def _receive(self, timeout: float | None) -> list[Packet]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _areceive_in_a_thread(self, limit: float | None) -> list[Packet]:
        """areceive() of a receiver that claims packets only in calls: ``receive()`` in the
        loop's default executor.  Cancelled meanwhile, the call goes on in its thread, and
        what it returns goes to ``_front``, for the next call: a member's claim is
        acknowledged only by the call after the one that hands it over, so nothing is lost
        or acknowledged unprocessed.  A later call first waits for such a thread, so that
        its batch comes before anything newer."""
        import asyncio  # noqa: PLC0415 - see _running_loop()

        earlier = self._claiming
        if earlier is not None and not earlier.done():
            await asyncio.shield(earlier)  # its thread puts its batch in _front before it ends
        if self._front:
            return self._take_front()
        front, handoff = self._front, threading.Lock()
        outcome: list[Any] = []  # [packets] once the thread is done, or [None] once abandoned

        def claim() -> list[Packet]:
            packets = self._receive(limit)
            with handoff:
                if outcome:  # the coroutine was cancelled: the batch waits for the next call
                    front.extend(packets)
                    return []
                outcome.append(packets)
            return packets

        future = self._claiming = _running_loop().run_in_executor(None, claim)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with handoff:
                if outcome and outcome[0] is not None:  # done, but this coroutine will not return it
                    front.extend(outcome[0])
                outcome[:] = [None]
            raise

    async def areceive(self, timeout: float | None = DEFAULT_RECEIVE_TIMEOUT, *, copy: bool = True) -> list[Packet]:
        """``receive()`` for a coroutine: the same result, the same ``timeout`` and ``copy``
        rules (``None`` waits for a packet, ``0`` only looks), without blocking the event loop.

        Cancelling it (``asyncio.wait_for`` timing out, say) loses no packet: they are
        taken only as the coroutine resumes, so the next call returns them.  Closing
        the receiver meanwhile (from any thread) raises :class:`PipeClosedError`.
        """
        limit = check_timeout(timeout)
        if self._claims_in_calls():
            return self._handed(await self._areceive_in_a_thread(limit), copy)
        readiness = self._open_readiness()
        # With a wake socket, the coroutine reads the pipe itself and writers wake the loop
        # straight through the socket; else it takes what the caching thread read.
        take = self._take_ready if readiness.wake is None else self._read_in_loop
        try:
            packets = take()
            if packets or limit == 0:
                return self._handed(packets, copy)
            loop = _running_loop()
            deadline = None if limit is None else loop.time() + limit
            while True:
                if readiness.wake is None:
                    await readiness.wait(deadline)
                elif self._expect_wake():
                    try:
                        await readiness.wait(deadline, woken=True)
                    finally:
                        self._wake_expected()
                else:  # something to read already
                    packets = take()
                    if packets:
                        return self._handed(packets, copy)
                    await readiness.wait(deadline)  # the caching thread is reading it: it sets readiness
                packets = take()  # in the loop's thread, as it resumes
                if packets or (deadline is not None and loop.time() >= deadline):
                    return self._handed(packets, copy)
                if readiness.retired:  # closed, and reopened already (else take() raised)
                    raise PipeClosedError(f"receiver of pipe {self._shown!r} was closed while a coroutine awaited it")
        finally:
            readiness.release()

    def __aiter__(self) -> AsyncReceiving:
        return self

    async def __anext__(self) -> Packet:
        """The next packet, as it arrives; the iteration ends when the receiver is closed.
        Packets of a batch not yielded yet stay with the receiver (a later ``receive()``
        returns them), so leaving the loop loses none."""
        front = self._front
        if front:
            self._served += 1
            if self._served >= YIELD_EVERY:  # before taking: a cancellation here loses nothing
                self._served = 0
                await _let_others_run()
            try:
                return front.popleft()
            except IndexError:  # another thread took it
                pass
        try:
            batch = await self.areceive(None)
        except PipeClosedError:
            raise StopAsyncIteration from None
        front.extend(batch[1:])
        return batch[0]

    def fileno(self) -> int:
        """A file descriptor that is readable while packets wait for ``receive()``, for
        ``selectors``, Tk's ``createfilehandler`` or another event loop's notifier.

        The first call switches the receiver to event mode (its background thread
        reads ahead into its cache whenever it has room).  The descriptor belongs to the
        receiver: it is closed by ``close_connection()``, so unregister it first (after
        reconnecting, ask again: it is a new one).
        """
        if self._claims_in_calls():
            raise InvalidArgumentError(
                f"receiver of pipe {self._shown!r} is a member of a receiver group: it claims work only in "
                "receive() calls, so no descriptor can say that work waits; use areceive() or receive()"
            )
        readiness = self._open_readiness()
        readiness.release()
        return readiness.fileno()


class AsyncSending(AsyncEndpoint):
    """``asend()`` and ``aflush()`` for a sender; the face provides :meth:`_send_or_watch`,
    :meth:`_delivered_or_watch` and :meth:`_unwatch`."""

    def _send_or_watch(self, data: Sendable, wake: Callable[[], None] | None) -> bool:  # pragma: no cover
        """Send ``data`` if that needs no waiting (``True``); else call ``wake`` (from any
        thread, if given) once room may have come."""
        raise NotImplementedError

    def _delivered_or_watch(self, wake: Callable[[], None]) -> bool:  # pragma: no cover
        """``True`` when everything sent is delivered; else call ``wake`` once it may be."""
        raise NotImplementedError

    def _unwatch(self, wake: Callable[[], None]) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _until(self, check: Callable[[Callable[[], None]], bool], deadline: float | None) -> bool:
        """Await ``check(wake)``: ``True`` once it holds, ``False`` at loop time ``deadline``."""
        loop = _running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()

            def wake(future: asyncio.Future[None] = future) -> None:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # the loop was closed meanwhile: no one waits any more
                    pass

            if check(wake):
                return True
            if deadline is not None and loop.time() >= deadline:
                self._unwatch(wake)
                return False
            try:
                await _resolved(loop, future, deadline)
            finally:
                self._unwatch(wake)

    async def asend(self, data: Sendable, timeout: float | None = None) -> None:
        """``send()`` for a coroutine: queue ``data`` at once when the send queue has room,
        else wait for room without blocking the event loop -- as long as it takes with
        ``None``, else :class:`PipeTimeoutError` after ``timeout`` seconds.  A cancelled
        ``asend()`` has not queued its packet."""
        limit = check_timeout(timeout)
        if self._send_or_watch(data, None):  # the common case: room in the queue
            return
        loop = _running_loop()
        deadline = None if limit is None else loop.time() + limit
        if not await self._until(lambda wake: self._send_or_watch(data, wake), deadline):
            raise PipeTimeoutError(
                f"asend() waited {timeout}s for room in the queue of pipe {self._shown!r}; "
                "its receivers are not keeping up"
            )

    async def aflush(self, timeout: float | None = None) -> None:
        """``flush()`` for a coroutine: wait until every packet sent so far is in the pipe,
        without blocking the event loop; :class:`PipeTimeoutError` after ``timeout`` seconds."""
        limit = check_timeout(timeout)
        loop = _running_loop()
        deadline = None if limit is None else loop.time() + limit
        if not await self._until(self._delivered_or_watch, deadline):
            raise PipeTimeoutError(
                f"aflush() waited {timeout}s; packets of pipe {self._shown!r} are not delivered yet "
                "(its receivers are not keeping up)"
            )


async def wait_in_thread(wait: Callable[[float], bool], limit: float | None) -> bool:
    """Run ``wait(seconds) -> done`` in the loop's executor, a slice at a time, until it is
    done (``True``) or ``limit`` seconds have passed (``False``).  For waits no thread of
    PipeBit signals the loop about; a cancelled coroutine leaves the thread within a slice."""
    loop = _running_loop()
    cancelled = threading.Event()
    deadline = None if limit is None else time.monotonic() + limit

    def run() -> bool:
        while True:
            remaining = THREAD_SLICE if deadline is None else min(THREAD_SLICE, deadline - time.monotonic())
            if wait(max(remaining, 0.0)):
                return True
            if cancelled.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False

    try:
        return await loop.run_in_executor(None, run)
    finally:
        cancelled.set()


class LatestValueWatcher:
    """A Fast receiver in event mode: a thread reads the register and holds the newest value.

    It stands in for the back-end's reader (``read``, ``interrupt``, ``close``), so that
    ``receive()`` takes the held value (waiting for the thread, never racing it for the
    register), and :meth:`take` gives a coroutine the held value without waiting: over
    Redis, even a look at the register is a round trip, which the loop may not wait for.
    """

    def __init__(self, reader: FastReader, name: str) -> None:
        self.real = reader
        self.slot_size = reader.slot_size
        self.readiness = Readiness()
        self._cond = threading.Condition(threading.Lock())
        self._held: list[Packet] = []
        self._problem: Exception | None = None
        self._ended = self._closing = False
        self._worker = Worker(f"pipebit-{name}-watcher", self._watch)
        self._worker.start()

    def _watch(self, stopping: threading.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    got = self.real.read(None)
                except CorruptPacketError as exc:  # that value only: raised once, in its place
                    with self._cond:
                        self._held, self._problem = [], exc
                        self.readiness.set()
                        self._cond.notify_all()
                    continue
                if got:
                    with self._cond:
                        self._held = got  # a newer value replaces one not taken yet
                        self.readiness.set()
                        self._cond.notify_all()
        except BaseException as exc:
            self._worker.error = exc  # before take() can see the thread ended (Worker sets it later)
            raise
        finally:
            with self._cond:
                self._ended = True
                self.readiness.set()  # a failure is raised by the next take()
                self._cond.notify_all()

    def _take(self) -> list[Packet]:
        """Under the condition's lock: the held value, or the problem met, or ``[]``."""
        got = self._held
        if got:
            self._held = []
            self.readiness.clear()
            return got
        problem = self._problem
        if problem is not None:
            self._problem = None
            self.readiness.clear()
            raise problem
        self._worker.check()
        return []

    def take(self) -> list[Packet]:
        with self._cond:
            return self._take()

    def read(self, timeout: float | None) -> list[Packet]:
        """``receive()`` in event mode: wait up to ``timeout`` for the thread to hold a value."""
        with self._cond:
            got = self._take()
            if got or timeout == 0:
                return got
            self._cond.wait_for(
                lambda: bool(self._held) or self._problem is not None or self._ended or self._closing, timeout
            )
            return self._take()

    def interrupt(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.stopping.set()
        self.real.interrupt()

    def close(self) -> None:
        worker = self._worker
        worker.stopping.set()
        for _ in range(200):  # about 10 s: a read about to start needs another interrupt
            self.real.interrupt()
            if worker.stop(timeout=0.05):
                break
        self.real.close()
        self.readiness.retire()

    def forget(self) -> None:
        self.readiness.forget()
