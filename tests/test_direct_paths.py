"""The Safe pipeline's short cuts for lone packets, and who reads the ring.

* A ``send()`` that finds nothing queued, after a pause, writes its packet into
  the ring itself; packets sent in a burst go through the delivery thread.  The
  two paths interleave without reordering anything.
* A waiting ``receive()`` reads (and sleeps on) the ring itself; while the
  application is away from ``receive()``, the caching thread reads ahead, so a
  busy application does not hold senders back.
* ``spin=`` makes ``receive()`` poll before it sleeps; ``"auto"`` (the default)
  polls briefly only while packets come quickly, and an idle receiver sleeps.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import pipebit

from .conftest import Reaper
from .helpers import Child, receive_n, wait_until

PACED_SENDER = """
import random, sys, time, pipebit
name, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
s = pipebit.SafeSender(name, 0)
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    s.send([i, "x" * rng.choice((1, 10, 200))])
    pause = rng.choice((0, 0, 0, 0.00002, 0.0002, 0.001))
    if pause:
        until = time.perf_counter() + pause
        while time.perf_counter() < until:
            pass
s.close_connection()
print("done", flush=True)
"""


def test_lone_and_burst_sends_interleave_in_order(name: str, reaper: Reaper) -> None:
    # Random pauses make some sends lone (written by send() itself) and others part of a
    # burst (written by the delivery thread): the receiver must still see 0, 1, 2, ...
    count = 6000
    with pipebit.SafeReceiver(name, 0) as receiver:
        child = Child(reaper, PACED_SENDER, name, str(count), stdin=True)
        child.expect("ready", 30)
        child.tell("go")
        got = receive_n(receiver, count)
        child.expect("done", 60)
    assert [p[0] for p in got] == list(range(count))


def _sends_go_straight_in(name: str, sender: pipebit.SafeSender) -> bool:
    """Whether some lone send() is already counted in the pipe when it returns."""
    for _ in range(50):
        time.sleep(0.02)  # long enough apart to count as lone; the delivery thread is idle
        before = pipebit.pipe_stats(name).packets_written
        sender.send([before])
        if pipebit.pipe_stats(name).packets_written == before + 1:
            return True
    return False


def test_a_lone_send_is_in_the_ring_when_send_returns(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:
        assert _sends_go_straight_in(name, sender)
        sender.flush(timeout=10)
        got = receive_n(receiver, sender.stats().packets)
    assert [p[0] for p in got] == list(range(len(got)))


def test_a_lone_send_to_a_full_ring_is_queued_not_lost(name: str) -> None:
    # The receiver caches one record and reads no more: the ring fills and a lone
    # send() cannot go straight in; it must wait in the queue, not vanish.
    with (
        pipebit.SafeReceiver(name, 0, capacity=4096, max_cached=1) as receiver,
        pipebit.SafeSender(name, 0) as sender,
    ):
        for i in range(12):
            sender.send([i, "x" * 500], timeout=30)
        wait_until(lambda: pipebit.pipe_stats(name).writers_waiting > 0, 30, "the ring to fill up")
        time.sleep(0.02)
        sender.send([12, "lone"])
        assert sender.stats().pending >= 1
        got = receive_n(receiver, 13)
    assert [p[0] for p in got] == list(range(13))


def test_the_caching_thread_reads_ahead_while_the_application_is_busy(name: str) -> None:
    # 100 packets of ~500 bytes do not fit a 4 KiB ring: the sender can only finish
    # if the receiver's thread keeps reading while the application never calls receive().
    with pipebit.SafeReceiver(name, 0, capacity=4096) as receiver, pipebit.SafeSender(name, 0) as sender:
        for i in range(100):
            sender.send([i, "x" * 500], timeout=30)
        sender.flush(timeout=30)
        # At most 7 such packets fit in the ring; all the others must be in the cache.
        assert receiver.stats().pending >= 93
        first = receiver.receive(timeout=5)
        # Back from receive(), the application is busy again: the thread takes over once more.
        for i in range(100, 200):
            sender.send([i, "x" * 500], timeout=30)
        sender.flush(timeout=30)
        got = first + receive_n(receiver, 200 - len(first))
    assert [p[0] for p in got] == list(range(200))


def _close_while_waiting(receiver: pipebit.SafeReceiver) -> float:
    """Close ``receiver`` while another thread waits in receive(timeout=None); seconds until it leaves."""
    outcome: list[Any] = []

    def wait() -> None:
        try:
            outcome.append(receiver.receive(timeout=None))
        except pipebit.PipeClosedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)  # it is asleep on the ring by now
    started = time.monotonic()
    receiver.close_connection()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], pipebit.PipeClosedError)
    return time.monotonic() - started


@pytest.mark.parametrize("spin", [0.0, 0.05])
def test_close_wakes_a_receive_waiting_in_another_thread(name: str, spin: float) -> None:
    receiver = pipebit.SafeReceiver(name, 0, spin=spin)
    assert _close_while_waiting(receiver) < 2
    with pytest.raises(pipebit.PipeClosedError):
        receiver.receive(timeout=0)


def test_receive_from_two_threads_gets_each_packet_once(name: str) -> None:
    count = 20000
    results: list[list[Any]] = [[], []]
    with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:

        def consume(mine: list[Any]) -> None:
            deadline = time.monotonic() + 60
            while sum(len(r) for r in results) < count and time.monotonic() < deadline:
                mine += receiver.receive(timeout=0.05)

        threads = [threading.Thread(target=consume, args=(r,)) for r in results]
        for thread in threads:
            thread.start()
        for i in range(count):
            sender.send([i])
            if i % 1000 == 0:
                time.sleep(0.001)  # lone sends too
        for thread in threads:
            thread.join(90)
    numbers = sorted(p[0] for r in results for p in r)
    assert numbers == list(range(count))
    for mine in results:  # each thread's share comes in order
        assert [p[0] for p in mine] == sorted(p[0] for p in mine)


def test_a_spinning_receiver_gets_every_packet(name: str, reaper: Reaper) -> None:
    with pipebit.SafeReceiver(name, 0, spin=0.001) as receiver:
        child = Child(reaper, PACED_SENDER, name, "2000", stdin=True)
        child.expect("ready", 30)
        child.tell("go")
        got = receive_n(receiver, 2000)
        child.expect("done", 60)
    assert [p[0] for p in got] == list(range(2000))


@pytest.mark.parametrize(
    ("spin", "error"),
    [
        (-0.1, pipebit.InvalidArgumentError),
        (None, pipebit.ArgumentTypeError),
        (2.0, pipebit.InvalidArgumentError),
        (float("nan"), pipebit.InvalidArgumentError),
        ("0.001", pipebit.ArgumentTypeError),
        ("fast", pipebit.ArgumentTypeError),
        (True, pipebit.ArgumentTypeError),
    ],
)
def test_bad_spin_is_refused(name: str, spin: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="spin"):
        pipebit.SafeReceiver(name, 0, spin=spin)


def test_reading_ahead_stops_at_max_cached_bytes(name: str) -> None:
    # 8 KiB packets, the application never calling receive(): the thread caches about
    # max_cached_bytes (plus the record it overshoots with), far below max_cached
    # packets; the rest waits in the ring and in the sender.
    packet_bytes, capacity = 8 << 10, 64 << 10
    with (
        pipebit.SafeReceiver(name, 0, capacity=capacity, max_cached_bytes=capacity) as receiver,
        pipebit.SafeSender(name, 0, flush_timeout=0) as sender,
    ):
        # About 8 fit in the cache, 7 in the ring, 7 in the sender's queue: none of these blocks.
        for i in range(20):
            sender.send([i, b"x" * packet_bytes], timeout=30)
        wait_until(lambda: pipebit.pipe_stats(name).writers_waiting > 0, 30, "the ring to fill up")
        time.sleep(0.2)  # the thread has had every chance to read more
        cached = receiver.stats().pending
        assert 0 < cached <= capacity // packet_bytes + 1
        assert sender.stats().pending > 0
        got = receive_n(receiver, 20)
    assert [p[0] for p in got] == list(range(20))


ECHO = """
import sys, pipebit
name = sys.argv[1]
inbound = pipebit.SafeReceiver(name + "-ping", 0, start="new")
outbound = pipebit.SafeSender(name + "-pong", 0)
print("ready", flush=True)
while True:
    for packet in inbound.receive(timeout=None):
        if packet[0] < 0:
            outbound.close_connection()
            inbound.close_connection()
            print("done", flush=True)
            sys.exit(0)
        outbound.send(packet)
"""


def test_auto_spin_answers_every_ping_and_sleeps_once_traffic_stops(name: str, reaper: Reaper) -> None:
    # Quick request/reply traffic is what makes spin="auto" poll; the replies must all
    # come back in order, and once traffic stops a waiting receive() must go to sleep
    # rather than keep polling: a second of waiting costs next to no CPU.
    try:
        with (
            pipebit.SafeReceiver(name + "-pong", 0) as replies,
            pipebit.SafeSender(name + "-ping", 0) as requests,
        ):
            child = Child(reaper, ECHO, name)
            child.expect("ready", 30)
            for i in range(2000):
                requests.send([i, "ping"])
                assert receive_n(replies, 1, timeout=30) == [[i, "ping"]]
            cpu_before = time.thread_time()
            assert replies.receive(timeout=1.0) == []
            waiting_cpu = time.thread_time() - cpu_before
            requests.send([-1])
            child.expect("done", 30)
    finally:
        for pipe in (name + "-ping", name + "-pong"):
            try:
                pipebit.remove(pipe, force=True)
            except pipebit.PipeNotFoundError:
                pass
    assert waiting_cpu < 0.1, f"an idle receive(timeout=1.0) used {waiting_cpu:.3f} s of CPU"
