"""asyncio: receiving and sending from an event loop without blocking it (issue #18).

The peers are real processes; the loop runs in the test's process (or, where its
CPU is measured, in a child of its own).  Timing bounds are generous: the machine
is shared and has two cores.
"""

from __future__ import annotations

import asyncio
import os
import random
import selectors
import signal
import threading
import time
from typing import Any, Callable

import pytest

import pipebit

from .conftest import Reaper
from .helpers import Child, proc_state, wait_until
from .redis_server import both_transports

# Sends 0..count-1 as [i]: a Safe stream, pausing after every tenth packet, or Fast values,
# pausing after each.
SENDER = """
import sys, time, pipebit
name, model, count, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sender = (pipebit.SafeSender if model == "safe" else pipebit.FastSender)(name, 0)
print("ready", flush=True)
for i in range(count):
    sender.send([i])
    if pause and (model == "fast" or i % 10 == 9):
        time.sleep(pause)
sender.flush(timeout=60)
print("sent", count, flush=True)
sender.close_connection()
"""

# A receiver that reads until the packet [-1] and says whether it got exactly 0..n-1, in order.
COUNTING_RECEIVER = """
import sys, pipebit
receiver = pipebit.SafeReceiver(sys.argv[1], 0)
print("ready", flush=True)
got = []
while not got or got[-1] != -1:
    got += [p[0] for p in receiver.receive(timeout=1)]
got.pop()
print("received", len(got), got == list(range(len(got))), flush=True)
receiver.close_connection()
"""

# Awaits areceive(None) on an idle pipe and reports its own CPU use (all threads) over 2 s.
IDLE_AWAITER = """
import asyncio, sys, time, pipebit
name, model = sys.argv[1], sys.argv[2]
receiver = (pipebit.SafeReceiver if model == "safe" else pipebit.FastReceiver)(name, 0)

async def main():
    waiting = asyncio.ensure_future(receiver.areceive(None))
    await asyncio.sleep(0.5)  # event mode is on, the threads asleep
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(2.0)
    share = (time.process_time() - cpu) / (time.monotonic() - wall)
    print("idle", waiting.done(), share, flush=True)
    waiting.cancel()

asyncio.run(main())
receiver.close_connection()
"""


class Ticker:
    """A task that asks for a 1 ms sleep over and over and keeps the worst lateness."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - asked - 0.001)
            self.ticks += 1

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def sender_child(reaper: Reaper, name: str, count: int, pause: float = 0.0, *, model: str = "safe") -> Child:
    child = Child(reaper, SENDER, name, model, str(count), str(pause))
    child.expect("ready", 60)
    return child


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def eventfds() -> set[str]:
    """This process's eventfd descriptors (PipeBit's readiness descriptors on Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]":
                found.add(fd)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


# --------------------------------------------------------------------- receiving
@both_transports
def test_async_for_gets_every_packet_in_order_while_the_loop_keeps_ticking(name: str, reaper: Reaper) -> None:
    count = 30_000
    receiver = pipebit.SafeReceiver(name, 0)

    async def main() -> tuple[list[int], Ticker]:
        got: list[int] = []
        async with receiver:
            child = sender_child(reaper, name, count, pause=0.0005)  # ~1.5 s of stream
            ticker = Ticker()  # from here on, nothing in this test blocks the loop
            ticker.start()
            async for packet in receiver:
                got.append(packet[0])
                if len(got) == count:
                    break
        await ticker.stop()
        child.expect("sent", 60)
        return got, ticker

    got, ticker = asyncio.run(asyncio.wait_for(main(), 90))
    assert got == list(range(count))
    assert receiver.closed  # async with closed it
    assert ticker.ticks > 10
    assert ticker.worst < 0.1, f"the loop was blocked for {ticker.worst * 1000:.1f} ms"


@both_transports
def test_cancelled_areceive_calls_lose_no_packet_and_duplicate_none(name: str, reaper: Reaper) -> None:
    count = 2_000
    receiver = pipebit.SafeReceiver(name, 0)

    async def main() -> tuple[list[int], int]:
        got: list[int] = []
        cancelled = 0
        rng = random.Random(18)
        child = sender_child(reaper, name, count, pause=0.004)
        deadline = time.monotonic() + 90
        while len(got) < count and time.monotonic() < deadline:
            try:
                batch = await asyncio.wait_for(receiver.areceive(None), rng.uniform(0.0001, 0.003))
            except asyncio.TimeoutError:
                cancelled += 1
                continue
            got += [p[0] for p in batch]
        child.expect("sent", 60)
        return got, cancelled

    try:
        got, cancelled = asyncio.run(main())
    finally:
        receiver.close_connection()
    assert got == list(range(count))
    assert cancelled > 20, f"only {cancelled} calls were cancelled: the test did not test cancellation"


@both_transports
def test_areceive_has_receive_s_timeout_rules(name: str) -> None:
    sender, receiver = pipebit.SafeSender(name, 0), pipebit.SafeReceiver(name, 0)

    async def main() -> None:
        assert await receiver.areceive(0) == []
        started = time.monotonic()
        assert await receiver.areceive(0.2) == []
        assert time.monotonic() - started >= 0.19
        with pytest.raises(pipebit.InvalidArgumentError):
            await receiver.areceive(-1)
        sender.send(["a"])
        sender.send(["b"])
        got: list[Any] = []
        while len(got) < 2:
            got += await receiver.areceive(5)
        assert got == [["a"], ["b"]]

    try:
        asyncio.run(main())
    finally:
        sender.close_connection()
        receiver.close_connection()


def test_leaving_async_for_mid_batch_leaves_the_rest_to_receive(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(100):
            sender.send([i])
        sender.flush(timeout=10)
        wait_until(lambda: receiver.stats().pending == 100, 10, "the caching thread to read ahead")

        async def first_three() -> list[int]:
            got = []
            async for packet in receiver:
                got.append(packet[0])
                if len(got) == 3:
                    break
            return got

        assert asyncio.run(first_three()) == [0, 1, 2]
        rest: list[int] = []
        while len(rest) < 97:
            rest += [p[0] for p in receiver.receive(timeout=5)]
        assert rest == list(range(3, 100))


def test_async_for_lets_other_tasks_run_during_a_long_batch(name: str) -> None:
    count = 20_000
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(count):
            sender.send([i])
        sender.flush(timeout=30)
        wait_until(lambda: receiver.stats().pending == count, 30, "the caching thread to read ahead")

        async def main() -> tuple[list[int], int]:
            turns = 0

            async def other() -> None:
                nonlocal turns
                while True:
                    await asyncio.sleep(0)
                    turns += 1

            task = asyncio.ensure_future(other())
            await asyncio.sleep(0)
            got = []
            async for packet in receiver:  # the whole cache comes as one or two batches
                got.append(packet[0])
                if len(got) == count:
                    break
            task.cancel()
            return got, turns

        got, turns = asyncio.run(main())
    assert got == list(range(count))
    assert turns >= count // 256 - 5, f"the other task ran only {turns} times during the batch"


@both_transports
def test_fast_areceive_gets_newer_values_and_survives_cancellation(name: str, reaper: Reaper) -> None:
    receiver = pipebit.FastReceiver(name, 0)

    async def main() -> tuple[list[int], int]:
        child = sender_child(reaper, name, 200, pause=0.005, model="fast")
        seen: list[int] = []
        cancelled = 0
        while not seen or seen[-1] != 199:
            try:
                batch = await asyncio.wait_for(receiver.areceive(None), 0.002)
            except asyncio.TimeoutError:
                cancelled += 1
                continue
            assert len(batch) == 1
            seen.append(batch[0][0])
        child.expect("sent", 60)
        assert await receiver.areceive(0.05) == []  # nothing newer: no value twice
        return seen, cancelled

    try:
        seen, cancelled = asyncio.run(asyncio.wait_for(main(), 90))
        assert receiver.receive(timeout=0) == []  # receive() works in event mode too
    finally:
        receiver.close_connection()
    assert seen == sorted(set(seen)), "values went backwards or came twice"
    assert len(seen) > 20  # a 5 ms cadence is mostly seen
    assert cancelled > 5


@pytest.mark.parametrize("model", ["safe", "fast"])
@both_transports
def test_an_idle_areceive_costs_almost_no_cpu(name: str, model: str, reaper: Reaper) -> None:
    child = Child(reaper, IDLE_AWAITER, name, model)
    done, share = child.expect("idle", 60)
    assert child.wait(30) == 0, child.describe()
    assert done == "False"
    assert float(share) < 0.03, f"an idle areceive(None) used {float(share):.1%} of a core"


# --------------------------------------------------------------------- sending
@both_transports
def test_asend_waits_for_room_without_blocking_the_loop(name: str, reaper: Reaper) -> None:
    packet = b"x" * 900
    sender = pipebit.SafeSender(name, 0, capacity=8192, queue_size=4)
    receiver = Child(reaper, COUNTING_RECEIVER, name)
    receiver.expect("ready", 60)

    async def main() -> tuple[int, Ticker]:
        os.kill(receiver.pid, signal.SIGSTOP)
        wait_until(lambda: proc_state(receiver.pid) == "T", 10, "the receiver to stop")
        ticker = Ticker()
        ticker.start()
        sent = 0

        async def stream() -> None:
            nonlocal sent
            for i in range(200):
                await sender.asend([i, packet])
                sent += 1

        streaming = asyncio.ensure_future(stream())
        await asyncio.sleep(1.0)
        assert not streaming.done(), "200 packets of 900 bytes fit an 8 KiB ring and a queue of 4?"
        blocked_at = sent
        # An asend() that times out (here: cancelled by wait_for) has not queued its packet.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sender.asend([-2, packet]), 0.05)
        with pytest.raises(pipebit.PipeTimeoutError):
            await sender.asend([-3, packet], timeout=0.05)
        os.kill(receiver.pid, signal.SIGCONT)
        await asyncio.wait_for(streaming, 60)
        await sender.asend([-1])
        await sender.aflush(timeout=60)
        await ticker.stop()
        return blocked_at, ticker

    try:
        blocked_at, ticker = asyncio.run(main())
    finally:
        sender.close_connection()
    assert receiver.expect("received", 60) == ["200", "True"]
    assert blocked_at < 200
    assert ticker.worst < 0.1, f"the loop was blocked for {ticker.worst * 1000:.1f} ms"


@both_transports
def test_fast_asend_and_aflush(name: str) -> None:
    async def main() -> None:
        async with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
            await sender.asend([1])
            await sender.aflush(timeout=10)
            assert await receiver.areceive(5) == [[1]]
        assert sender.closed
        assert receiver.closed

    asyncio.run(main())


# --------------------------------------------------------------------- closing
def closer_thread(close: Callable[[], None], after: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after), close()))
    thread.start()
    return thread


@pytest.mark.parametrize("model", ["safe", "fast"])
@both_transports
def test_closing_a_receiver_while_a_coroutine_awaits_raises_pipe_closed(name: str, model: str) -> None:
    receiver_class = pipebit.SafeReceiver if model == "safe" else pipebit.FastReceiver
    receiver = receiver_class(name, 0)

    async def main() -> None:
        waiting = [asyncio.ensure_future(receiver.areceive(None)) for _ in range(2)]  # two waiters, one loop
        iterating = asyncio.ensure_future(_drain(receiver))
        closer = closer_thread(receiver.close_connection, 0.3)
        for task in waiting:
            with pytest.raises(pipebit.PipeClosedError):
                await asyncio.wait_for(task, 30)
        assert await asyncio.wait_for(iterating, 30) == []  # async for simply ends
        closer.join(30)
        with pytest.raises(pipebit.PipeClosedError):
            await receiver.areceive(0)

    asyncio.run(main())


async def _drain(receiver: Any) -> list[Any]:
    return [packet async for packet in receiver]


@both_transports
def test_closing_a_sender_while_asend_waits_raises_pipe_closed(name: str, reaper: Reaper) -> None:
    sender = pipebit.SafeSender(name, 0, capacity=8192, queue_size=2, flush_timeout=0.5)
    receiver = Child(reaper, COUNTING_RECEIVER, name)
    receiver.expect("ready", 60)

    async def main() -> None:
        os.kill(receiver.pid, signal.SIGSTOP)

        async def stream() -> None:
            for i in range(200):
                await sender.asend([i, b"x" * 900])

        streaming = asyncio.ensure_future(stream())
        await asyncio.sleep(1.0)
        assert not streaming.done(), "200 packets of 900 bytes fit an 8 KiB ring and a queue of 2?"
        closer = closer_thread(sender.close_connection, 0.0)
        with pytest.raises(pipebit.PipeClosedError):
            await asyncio.wait_for(streaming, 30)
        closer.join(30)
        assert sender.closed

    with pytest.warns(pipebit.UndeliveredPacketsWarning):
        asyncio.run(main())
    os.kill(receiver.pid, signal.SIGCONT)


@both_transports
def test_async_with_opens_and_closes_every_endpoint(name: str, make_name: Callable[[], str]) -> None:
    fast = make_name()

    async def main() -> list[Any]:
        endpoints = [
            pipebit.SafeSender(name, 0),
            pipebit.SafeReceiver(name, 0),
            pipebit.FastSender(fast, 0),
            pipebit.FastReceiver(fast, 0),
        ]
        for endpoint in endpoints:
            endpoint.close_connection()
        for endpoint in endpoints:
            async with endpoint as entered:
                assert entered is endpoint
                assert not endpoint.closed
            assert endpoint.closed
        return endpoints

    asyncio.run(main())


# ------------------------------------------------------------- several, fds, fork
@both_transports
def test_several_receivers_and_senders_in_one_loop_leave_no_descriptor_open(make_name: Callable[[], str]) -> None:
    names = [make_name() for _ in range(3)]
    before = open_fds()

    async def one_pipe(pipe: str, n: int) -> list[int]:
        async with pipebit.SafeSender(pipe, 0) as sender, pipebit.SafeReceiver(pipe, 0) as receiver:
            for i in range(n):
                await sender.asend([i])
            got: list[int] = []
            async for packet in receiver:
                got.append(packet[0])
                if len(got) == n:
                    break
            await receiver.areceive(0.01)
            return got

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(one_pipe(pipe, 500 + i) for i, pipe in enumerate(names)))

    for _ in range(2):
        results = asyncio.run(main())
        assert results == [list(range(500 + i)) for i in range(3)]
    assert open_fds() == before


def test_a_forked_child_drops_the_parents_descriptor(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        fd = receiver.fileno()
        pid = os.fork()
        if pid == 0:  # the child: its copy of the descriptor is closed, the receiver unusable
            code = 0
            try:
                os.fstat(fd)
                code = 1
            except OSError:
                pass
            try:
                receiver.fileno()
                code = 2
            except pipebit.PipeClosedError:
                pass
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        os.fstat(fd)  # the parent's is open
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # and closed with the receiver


@pytest.mark.parametrize("model", ["safe", "fast"])
@both_transports
def test_fileno_is_readable_while_packets_wait(name: str, model: str) -> None:
    sender_class, receiver_class = (
        (pipebit.SafeSender, pipebit.SafeReceiver) if model == "safe" else (pipebit.FastSender, pipebit.FastReceiver)
    )
    before = open_fds()
    with sender_class(name, 0) as sender, receiver_class(name, 0) as receiver, selectors.DefaultSelector() as sel:
        sel.register(receiver, selectors.EVENT_READ)
        assert sel.select(timeout=0.2) == []
        sender.send([7])
        assert len(sel.select(timeout=10)) == 1
        assert receiver.receive(timeout=0) == [[7]]
        assert sel.select(timeout=0.2) == []  # taken: no longer readable
        sel.unregister(receiver)
    assert open_fds() == before


def test_uvloop_if_installed(make_name: Callable[[], str], reaper: Reaper) -> None:
    # uvloop is not a dependency: this runs where it happens to be installed.
    uvloop = pytest.importorskip("uvloop")
    safe, fast = make_name(), make_name()
    count = 5_000

    async def main() -> None:
        async with pipebit.SafeReceiver(safe, 0) as receiver, pipebit.FastReceiver(fast, 0) as values:
            child = sender_child(reaper, safe, count, pause=0.001)
            got: list[int] = []
            while len(got) < count:
                try:  # cancelled often: still every packet, once
                    got += [p[0] for p in await asyncio.wait_for(receiver.areceive(None), 0.002)]
                except asyncio.TimeoutError:
                    pass
            assert got == list(range(count))
            child.expect("sent", 60)
            async with pipebit.FastSender(fast, 0) as sender:
                await sender.asend(["v"])
                assert await values.areceive(10) == [["v"]]
            waiting = asyncio.ensure_future(values.areceive(None))
            closer = closer_thread(values.close_connection, 0.2)
            with pytest.raises(pipebit.PipeClosedError):
                await asyncio.wait_for(waiting, 30)
            closer.join(30)

    before = eventfds()
    uvloop.run(main())
    assert eventfds() == before  # uvloop keeps a pipe of its own; the child's pipes are the reaper's


# ------------------------------------------------------------------ receiver group members
@both_transports
def test_a_group_member_awaits_work_and_loses_none_to_cancellation(name: str, reaper: Reaper) -> None:
    """A member claims work only in its calls, so areceive() waits for it in a thread of
    its own; a cancelled call's batch is kept for the next call, neither lost nor taken
    twice, and async for works the same way.  fileno() says why a member has none."""
    count = 1_000
    member = pipebit.SafeReceiver(name, 0, group="async-workers", start="oldest")

    async def main() -> tuple[list[int], int]:
        got: list[int] = []
        cancelled = 0
        rng = random.Random(17)
        child = sender_child(reaper, name, count, pause=0.004)
        deadline = time.monotonic() + 90
        while len(got) < count // 2 and time.monotonic() < deadline:
            try:
                batch = await asyncio.wait_for(member.areceive(None), rng.uniform(0.0001, 0.003))
            except asyncio.TimeoutError:
                cancelled += 1
                continue
            got += [p[0] for p in batch]
        async for packet in member:  # the rest, one by one
            got.append(packet[0])
            if len(got) >= count:
                break
        child.expect("sent", 60)
        return got, cancelled

    try:
        with pytest.raises(pipebit.InvalidArgumentError, match="receiver group"):
            member.fileno()
        got, cancelled = asyncio.run(main())
        assert member.receive(timeout=0.2) == []  # acknowledges the last batch; nothing more
    finally:
        member.close_connection()
    assert got == list(range(count))
    assert cancelled > 10, f"only {cancelled} calls were cancelled: the test did not test cancellation"
