"""A coroutine woken straight by the writers, through its wake socket (issue #18).

Over shared memory an awaiting coroutine marks its slot and reads the pipe itself;
a writer that sees the mark sends a datagram to the receiver's abstract socket
(``pipebit._wake``).  These tests look at that mechanism from outside -- the mark
in the segment, the name in ``/proc/net/unix`` -- and at every way it can fail:
the name taken by someone else, a writer in another network namespace, strangers
sending to the name, a receiver killed while it awaits.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import pytest

import pipebit
from pipebit import _layout as L
from pipebit import _wake

from .conftest import Reaper
from .helpers import Child, segment_path

SENDER = """
import sys, time, pipebit
name, count = sys.argv[1], int(sys.argv[2])
with pipebit.SafeSender(name, 0) as sender:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        sender.send([i])
        time.sleep(0.001)
    sender.flush(timeout=30)
print("sent", flush=True)
"""


def _wake_name(receiver: pipebit.SafeReceiver) -> bytes:
    """The abstract name of the receiver's wake socket (from its slot: white-box)."""
    reader: Any = receiver._reader
    return _wake.address(reader.pipe.name, reader.slot.index, reader.slot.token)


def _waiting_word(name: str, receiver: pipebit.SafeReceiver) -> int:
    reader: Any = receiver._reader
    offset = (reader.slot.base + L.S_WAITING) * 8
    return int(struct.unpack_from("=Q", segment_path(name).read_bytes(), offset)[0])


def _bound_names() -> set[bytes]:
    """The abstract Unix socket names bound in this network namespace."""
    with open("/proc/net/unix", "rb") as table:
        return {line.split()[-1][1:] for line in table.read().splitlines()[1:] if line.split()[-1][:1] == b"@"}


async def _receive_all(receiver: pipebit.SafeReceiver, count: int) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        got += [p[0] for p in await receiver.areceive(1.0)]
    return got


def _sender(reaper: Reaper, name: str, count: int, prefix: tuple[str, ...] = ()) -> Child:
    """A child that sends [0] .. [count - 1], a millisecond apart, once told to."""
    child = Child(reaper, SENDER, name, str(count), stdin=True, prefix=prefix)
    child.expect("ready", 60)
    return child


# ------------------------------------------------------------------ the mechanism
def test_an_awaiting_coroutine_marks_its_slot_and_is_woken_through_its_socket(name: str, reaper: Reaper) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        child = _sender(reaper, name, 200)

        async def main() -> list[int]:
            waiting = asyncio.ensure_future(receiver.areceive(None))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            assert _waiting_word(name, receiver) & _wake.WAKE_COROUTINE  # writers: wake my socket
            assert _wake_name(receiver)[1:] in _bound_names()
            child.tell("go")
            first = [p[0] for p in await asyncio.wait_for(waiting, 30)]
            return first + await _receive_all(receiver, 200 - len(first))

        got = asyncio.run(main())
        child.expect("sent", 30)
        assert got == list(range(200))
        assert not _waiting_word(name, receiver) & _wake.WAKE_COROUTINE  # no coroutine waits now
        wake = _wake_name(receiver)
    assert wake[1:] not in _bound_names()  # closed with the receiver


def test_a_taken_name_leaves_coroutines_to_the_caching_thread(name: str, reaper: Reaper) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        squatter = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        squatter.bind(_wake_name(receiver))  # someone else holds the name first
        try:
            child = _sender(reaper, name, 300)
            child.tell("go")
            got = asyncio.run(_receive_all(receiver, 300))
            child.expect("sent", 30)
        finally:
            squatter.close()
    assert got == list(range(300))


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_sender_in_another_network_namespace_still_wakes_the_coroutine(name: str, reaper: Reaper) -> None:
    """Its datagrams cannot reach the name (abstract names are per network namespace): it
    posts the semaphore instead, and the caching thread hands the packets over."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    with pipebit.SafeReceiver(name, 0) as receiver:
        child = _sender(reaper, name, 300, prefix=("unshare", "-n"))

        async def main() -> tuple[list[int], float]:
            waiting = asyncio.ensure_future(_receive_all(receiver, 300))
            await asyncio.sleep(0.2)  # awaiting, its slot marked
            child.tell("go")
            started = time.monotonic()
            return await waiting, time.monotonic() - started

        got, took = asyncio.run(main())
        child.expect("sent", 30)
    assert got == list(range(300))
    # 300 packets a millisecond apart.  Had the sender not posted the semaphore, the caching
    # thread would have slept out its slice (2 s from before "go") before reading any.
    assert took < 1.5, f"the stream took {took:.2f} s: the sender's fallback did not wake the receiver"


def test_strangers_sending_to_the_name_cause_no_early_return(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:
        stop = threading.Event()

        def spam(address: bytes) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
                while not stop.is_set():
                    try:
                        stranger.sendto(b"not a wake-up", address)
                    except OSError:  # its queue is full, or not bound yet
                        pass
                    time.sleep(0.0005)

        async def main() -> tuple[list[Any], float, list[Any]]:
            assert await receiver.areceive(0) == []  # event mode on: the name is bound
            spammer = threading.Thread(target=spam, args=(_wake_name(receiver),))
            spammer.start()
            try:
                started = time.monotonic()
                nothing = await receiver.areceive(0.3)
                waited = time.monotonic() - started
                sender.send(["real"])
                something = await receiver.areceive(5)
            finally:
                stop.set()
                spammer.join()
            return nothing, waited, something

        nothing, waited, something = asyncio.run(main())
    assert nothing == []
    assert waited >= 0.29
    assert something == [["real"]]


def test_a_receiver_killed_while_its_coroutine_awaits_costs_the_sender_nothing(name: str, reaper: Reaper) -> None:
    awaiting = """
import asyncio, sys, pipebit
receiver = pipebit.SafeReceiver(sys.argv[1], 0)
async def main():
    waiting = asyncio.ensure_future(receiver.areceive(None))
    await asyncio.sleep(0.2)
    print("awaiting", flush=True)
    await waiting
asyncio.run(main())
"""
    with pipebit.SafeSender(name, 0) as sender:
        child = Child(reaper, awaiting, name)
        child.expect("awaiting", 60)
        marked = [i for i in range(L.SLOT_COUNT) if _slot_word(name, i) & _wake.WAKE_COROUTINE]
        assert len(marked) == 1, "the child's slot is not marked"
        child.kill()
        for i in range(2000):  # its name is gone: each wake-up fails, and the sender goes on
            sender.send([i])
        sender.flush(timeout=30)
        with pipebit.SafeReceiver(name, 0, start="oldest") as late:
            got = asyncio.run(_receive_all(late, 2000))
    assert got == list(range(2000))


def _slot_word(name: str, index: int) -> int:
    offset = (L.SLOT_BASES[index] + L.S_WAITING) * 8
    return int(struct.unpack_from("=Q", segment_path(name).read_bytes(), offset)[0])


def test_receive_in_event_mode_takes_what_the_caching_thread_read(name: str) -> None:
    """Once a coroutine has awaited a receiver, a plain receive() (another thread, say)
    gets packets from the cache the thread reads ahead into."""
    with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:
        assert asyncio.run(receiver.areceive(0.05)) == []
        sender.send([1])
        got = receiver.receive(timeout=5)
        sender.send([2])
        got += asyncio.run(receiver.areceive(5))
    assert got == [[1], [2]]
