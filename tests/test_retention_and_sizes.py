"""Where a receiver starts, explicit sizes, closing a sender that ``send()`` waits on,
reconnecting a receiver, and how much a pipe retains (issue #14).

Each test runs over shared memory and over Redis, so that the two keep the same semantics.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from typing import Any

import pytest

import pipebit
from pipebit import _codec

from .helpers import receive_n, wait_until
from .redis_server import RedisServer, both_transports


def numbered(first: int, stop: int) -> list[list[int]]:
    return [[i] for i in range(first, stop)]


def send_range(sender: pipebit.SafeSender, first: int, stop: int) -> None:
    for packet in numbered(first, stop):
        sender.send(packet, timeout=30)
    sender.flush(timeout=30)


def drain(receiver: pipebit.SafeReceiver, quiet: float = 0.5) -> list[Any]:
    """Every packet the receiver gets until none comes for ``quiet`` seconds."""
    got: list[Any] = []
    while True:
        batch = receiver.receive(timeout=quiet)
        if not batch:
            return got
        got += batch


def receivers_have_read_everything(name: str) -> bool:
    """Whether the pipe itself (not the receiver's own counters) shows every receiver caught up."""
    return all(p.lag == 0 for p in pipebit.pipe_stats(name).participants if p.role == "receiver")


# ------------------------------------------------------------------ A: start="unread"
@both_transports
def test_unread_start_gets_only_what_no_receiver_has_read(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        send_range(sender, 0, 10)
        with pipebit.SafeReceiver(name, 0, start="unread") as first:  # no one has read anything yet
            assert receive_n(first, 10, timeout=20) == numbered(0, 10)
            send_range(sender, 10, 20)
            # Its thread reads 10..19 ahead, but receive() never returns them: they stay unread.
            wait_until(lambda: first.stats().pending == 10, 20, "the first receiver to cache 10 packets")
        with pipebit.SafeReceiver(name, 0, start="unread") as second:
            assert receive_n(second, 10, timeout=20) == numbered(10, 20)
            assert second.receive(timeout=0.2) == []
            # An attached receiver's position counts too: a third one starts after it.
            wait_until(lambda: receivers_have_read_everything(name), 20, "the pipe to show the second caught up")
            with pipebit.SafeReceiver(name, 0, start="unread") as third:
                assert third.receive(timeout=0.3) == []
                send_range(sender, 20, 25)
                assert receive_n(third, 5, timeout=20) == numbered(20, 25)
                assert receive_n(second, 5, timeout=20) == numbered(20, 25)
        # The other two starts are as they were.
        with pipebit.SafeReceiver(name, 0, start="oldest") as oldest:
            assert drain(oldest) == numbered(0, 25)
        with pipebit.SafeReceiver(name, 0, start="new") as new:
            assert new.receive(timeout=0.3) == []


@both_transports
def test_unread_is_the_default_start(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        send_range(sender, 0, 5)
        with pipebit.SafeReceiver(name, 0) as first:
            assert receive_n(first, 5, timeout=20) == numbered(0, 5)
        send_range(sender, 5, 10)
        with pipebit.SafeReceiver(name, 0) as second:  # a restarted script does not get 0..4 again
            assert drain(second) == numbered(5, 10)


# ------------------------------------------------------------ B: explicit sizes
@both_transports
def test_an_explicit_capacity_that_differs_is_refused_naming_the_ways_out(name: str) -> None:
    with pipebit.SafeSender(name, 0, capacity=8192) as sender:
        for cls in (pipebit.SafeReceiver, pipebit.SafeSender):
            with pytest.raises(pipebit.CapacityMismatchError) as info:
                cls(name, 0, capacity=16384)
            text = str(info.value)
            assert isinstance(info.value, ValueError)
            assert "capacity=8192" in text, text
            assert "capacity=16384" in text, text
            assert "override=True" in text, text
            assert "pipebit rm" in text, text
        with pipebit.SafeReceiver(name, 0, capacity=8192), pipebit.SafeReceiver(name, 0):
            pass  # the same size, or none: the pipe's
        assert sender.stats().pipe.capacity == 8192
        with pytest.raises(pipebit.PipeBusyError):  # override needs the pipe idle
            pipebit.SafeSender(name, 0, capacity=16384, override=True)
    with pipebit.SafeSender(name, 0, capacity=16384, override=True) as bigger:
        assert bigger.stats().pipe.capacity == 16384


@both_transports
def test_an_explicit_slot_size_that_differs_is_refused_naming_the_ways_out(name: str) -> None:
    with pipebit.FastSender(name, 0, slot_size=1024) as sender:
        for cls in (pipebit.FastReceiver, pipebit.FastSender):
            with pytest.raises(pipebit.CapacityMismatchError) as info:
                cls(name, 0, slot_size=2048)
            text = str(info.value)
            assert "slot_size=1024" in text, text
            assert "slot_size=2048" in text, text
            assert "override=True" in text, text
            assert "pipebit rm" in text, text
        with pipebit.FastReceiver(name, 0, slot_size=1024) as same, pipebit.FastReceiver(name, 0) as plain:
            sender.send([1])
            sender.flush(timeout=10)
            assert same.receive(timeout=10) == [[1]]
            assert plain.receive(timeout=10) == [[1]]


# ------------------------------------------- 3: close_connection() while send() waits
@both_transports
@pytest.mark.parametrize("meanwhile", ["nothing_moves", "room_comes"])
def test_a_send_waiting_for_room_raises_when_the_sender_closes(name: str, meanwhile: str) -> None:
    # "room_comes": the receiver starts reading once the sender is closing, so the delivery
    # thread frees room in the queue while close_connection() waits for it: the waiting send()
    # must not take that room (the sender is closing), whether or not its packet could still go.
    packet = "x" * 100
    accepted = 0
    got: list[Any] = []
    with pipebit.SafeReceiver(name, 0, start="new", capacity=4096, max_cached=1) as receiver:  # not reading
        sender = pipebit.SafeSender(name, 0, queue_size=2, flush_timeout=0)
        outcome: list[BaseException | None] = []
        try:
            while True:  # fill the pipe, then the queue
                try:
                    sender.send([accepted, packet], timeout=0.5)
                except pipebit.PipeTimeoutError:
                    break
                accepted += 1

            def send_one_more() -> None:
                try:
                    sender.send([accepted, packet], timeout=None)
                except BaseException as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            def read_once_closing() -> None:
                deadline = time.monotonic() + 10
                while sender._healthy and time.monotonic() < deadline:  # close_connection() has begun
                    time.sleep(0.0005)
                got.extend(drain(receiver, quiet=1.0))

            blocked = threading.Thread(target=send_one_more)
            blocked.start()
            time.sleep(0.3)
            assert not outcome, "send() should still be waiting for room"
            reader = threading.Thread(target=read_once_closing)
            if meanwhile == "room_comes":
                reader.start()
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                sender.close_connection(timeout=0 if meanwhile == "nothing_moves" else 10)
            blocked.join(10)
            assert not blocked.is_alive()
            if meanwhile == "room_comes":
                reader.join(30)
        finally:
            sender.close_connection()
        assert isinstance(outcome[0], pipebit.PipeClosedError), f"the waiting send() ended with {outcome[0]!r}"
        lost = 0
        for warning in warned:
            assert issubclass(warning.category, pipebit.UndeliveredPacketsWarning), warning
            found = re.search(r"(\d+) packet\(s\) were not delivered", str(warning.message))
            assert found, warning.message
            lost += int(found.group(1))
        assert lost or meanwhile == "room_comes", "nothing was delivered, and no warning said so"
        got += drain(receiver)
    # Every packet send() accepted was either delivered or counted in the warning.
    assert got == [[i, packet] for i in range(len(got))]
    assert len(got) + lost == accepted


# ------------------------------------- 9: reconnecting resumes after what receive() returned
@both_transports
def test_reconnecting_resumes_after_the_last_packet_receive_returned(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0, start="new") as receiver:
        send_range(sender, 0, 20)
        assert receive_n(receiver, 20, timeout=20) == numbered(0, 20)
        send_range(sender, 20, 70)
        wait_until(lambda: receiver.stats().pending == 50, 20, "the receiver's thread to cache 50 packets")
        receiver.close_connection()  # the cached 50 are dropped, and read again after reconnecting
        receiver.open_connection()
        assert receive_n(receiver, 50, timeout=20) == numbered(20, 70)
        assert receiver.receive(timeout=0.3) == []
        send_range(sender, 70, 75)
        assert receive_n(receiver, 5, timeout=20) == numbered(70, 75)


# ------------------------------------------------------ 12: retention is bounded by capacity
@both_transports
def test_a_pipe_retains_at_most_its_capacity(name: str, transport: str, request: pytest.FixtureRequest) -> None:
    capacity = 65536
    server: RedisServer | None = request.getfixturevalue("redis_keys_guard") if transport == "redis" else None

    def retained_on_the_server() -> int:
        assert server is not None
        stream = f"pipebit:{{{name.rsplit('/', 1)[1]}}}:stream"
        return sum(len(fields[b"d"]) for _, fields in server.client().xrange(stream))

    sent = []
    with pipebit.SafeSender(name, 0, capacity=capacity) as sender:  # no receiver: nothing holds it back
        for i in range(900):
            sent.append([i, b"x" * (40 + (i * 37) % 400)])
            sender.send(sent[-1], timeout=30)
            if i % 3 == 2:  # small batches, each its own record (entry)
                sender.flush(timeout=30)
                if server is not None:
                    retained = retained_on_the_server()
                    assert retained <= capacity, f"{retained} bytes retained after packet {i}"
        sender.flush(timeout=30)
    with pipebit.SafeReceiver(name, 0, start="oldest") as late:
        retained_packets = drain(late)
    assert retained_packets == sent[len(sent) - len(retained_packets) :]
    assert sum(len(_codec.encode(p)) for p in retained_packets) <= capacity
    assert pipebit.pipe_stats(name).used_bytes <= capacity
