"""Back-pressure: a receiver that stops reading holds senders back, and memory stays bounded.

The guarantee under test (``pipebit.safe``): ``send()`` queues into a queue bounded
by packet count and by the ring's capacity in bytes; a receiver's read-ahead cache
is bounded by ``max_cached``; so neither side's memory grows with the number of
packets a stalled receiver has not read yet.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipebit
from pipebit import _layout as L
from pipebit import _limits, _shm

from .conftest import Reaper
from .helpers import Child
from .redis_server import both_transports

MB = 1 << 20


def vm(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def packets_committed(name: str) -> int:
    """The pipe header's count of packets ever committed, read straight from the segment."""
    with open("/dev/shm" + _shm.segment_name(name), "rb") as f:
        return int(struct.unpack_from("=Q", f.read(L.DATA_OFFSET), L.PACKETS * 8)[0])


_STATUS = """
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)
"""

FAST_SENDER = (
    _STATUS
    + """
import sys, pipebit
name, total = sys.argv[1], int(sys.argv[2])
s = pipebit.SafeSender(name, 0)
pad = bytes(100)
print("ready", status("VmRSS"), flush=True)
for i in range(total):
    s.send([i, pad])
    if i % 10000 == 0:
        print("progress", i, flush=True)
print("sent", status("VmHWM"), flush=True)
s.flush()
print("done", status("VmHWM"), flush=True)
s.close_connection()
"""
)

# Creates the pipe, then does not call receive() until a line arrives on stdin.
GATED_RECEIVER = (
    _STATUS
    + """
import sys, pipebit
name, total, capacity, max_cached = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = pipebit.SafeReceiver(name, 0, capacity=capacity, max_cached=max_cached)
print("ready", status("VmRSS"), flush=True)
sys.stdin.readline()
expected, first_bad = 0, None
while expected < total:
    for p in r.receive(timeout=1.0):
        if first_bad is None and (p[0] != expected or p[1] != bytes(100) or len(p) != 2):
            first_bad = (expected, repr(p)[:60])
        expected += 1
extra = r.receive(timeout=0.3)
print("result", expected, len(extra), first_bad is None, status("VmHWM"), flush=True)
r.close_connection()
"""
)


def test_stalled_receiver_bounds_memory_of_both_sides(name: str, reaper: Reaper) -> None:
    total = 300_000
    capacity = 1 * MB
    max_cached = 20_000
    receiver = Child(reaper, GATED_RECEIVER, name, str(total), str(capacity), str(max_cached), stdin=True)
    receiver_idle = int(receiver.expect("ready", 30)[0])
    sender = Child(reaper, FAST_SENDER, name, str(total))
    sender_idle = int(sender.expect("ready", 30)[0])

    # Wait until the sender stops making progress: the stalled receiver holds it back.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the sender never settled into a blocked state"
        line = sender.next_line(2.0, required=False)
        if line is None:
            committed = packets_committed(name)
            time.sleep(1.0)
            if packets_committed(name) == committed:
                break
        else:
            assert not line.startswith(("sent", "done")), f"sender got through all {total} packets: {line}"
    assert committed < total // 2, f"{committed} of {total} packets went into the pipe of a stalled receiver"
    sender_stalled = vm(sender.pid, "VmRSS")
    receiver_stalled = vm(receiver.pid, "VmRSS")
    sender_stalled_peak = vm(sender.pid, "VmHWM")
    receiver_stalled_peak = vm(receiver.pid, "VmHWM")

    receiver.tell("go")
    sender_peak = int(sender.expect("done", 120)[0])
    got, extra, in_order, receiver_peak = receiver.expect("result", 120)
    assert sender.wait(30) == 0, sender.describe()
    assert receiver.wait(30) == 0, receiver.describe()

    summary = (
        f"sender: idle {sender_idle / MB:.1f} MB, stalled {sender_stalled / MB:.1f} MB "
        f"(peak {sender_stalled_peak / MB:.1f}), overall peak {sender_peak / MB:.1f} MB; "
        f"receiver: idle {receiver_idle / MB:.1f} MB, stalled {receiver_stalled / MB:.1f} MB "
        f"(peak {receiver_stalled_peak / MB:.1f}), overall peak {int(receiver_peak) / MB:.1f} MB; "
        f"{committed} packets committed when the sender blocked"
    )
    print(f"\n[backpressure] {summary}")
    assert (int(got), int(extra), in_order) == (total, 0, "True"), summary
    # Queuing all 300k packets would take > 40 MB on the sender (each is a ~140-byte
    # bytes object) and > 70 MB decoded on the receiver.  The bounds: ring + queue
    # (1 MB each) on the sender, ring + max_cached packets on the receiver, plus slack.
    assert max(sender_peak, sender_stalled_peak) - sender_idle < 24 * MB, summary
    assert max(int(receiver_peak), receiver_stalled_peak) - receiver_idle < 24 * MB, summary


@both_transports
def test_send_and_flush_time_out_while_a_receiver_is_stalled(name: str) -> None:
    sender = pipebit.SafeSender(name, 0, capacity=8192)
    receiver = pipebit.SafeReceiver(name, 0, max_cached=1)  # stops reading until receive() is called
    try:
        sent = 0
        waited = None
        while sent < 5000:
            started = time.monotonic()
            try:
                sender.send([sent, bytes(40)], timeout=0.3)
            except pipebit.PipeTimeoutError:
                waited = time.monotonic() - started
                break
            sent += 1
        assert waited is not None, f"send() never blocked after {sent} packets to a stalled receiver"
        assert 0.3 <= waited < 10, f"send(timeout=0.3) raised after {waited:.2f}s"
        assert sent < 1000, f"{sent} packets of 45 bytes queued for an 8 KiB pipe"

        started = time.monotonic()
        with pytest.raises(pipebit.PipeTimeoutError):
            sender.flush(timeout=0.5)
        waited = time.monotonic() - started
        assert 0.5 <= waited < 10, f"flush(timeout=0.5) raised after {waited:.2f}s"

        # The receiver resumes: everything queued before the timeouts arrives, in order.
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < sent:
            assert time.monotonic() < deadline, f"only {len(got)} of {sent} packets arrived"
            got += receiver.receive(timeout=0.5)
        sender.flush(timeout=10)
        assert receiver.receive(timeout=0.3) == []
        assert got == [[i, bytes(40)] for i in range(sent)]
    finally:
        sender.close_connection()
        receiver.close_connection()


@pytest.mark.parametrize("queue_size", [7, 8192])
def test_the_send_queue_keeps_both_bounds_with_threads_and_mixed_sizes(name: str, queue_size: int) -> None:
    # send() mostly queues on a credit its slow path grants, checking no bound itself:
    # whatever it does, the queue holds at most queue_size packets and at most its byte
    # budget (but for one packet alone), its byte count is exact, and nothing is lost.
    rng = random.Random(queue_size)
    sizes = [rng.choice([1, 3, 40, 700, 5000, 60000]) for _ in range(600)]
    sender = pipebit.SafeSender(name, 0, capacity=1 << 17, queue_size=queue_size)
    receiver = pipebit.SafeReceiver(name, 0, max_cached=1)  # reads one record, then stalls until receive()
    seen: list[tuple[int, int, int]] = []  # (packets, bytes as counted, bytes really) in the queue
    stop = threading.Event()

    def watch() -> None:  # samples the queue under its lock while the senders push
        while not stop.is_set():
            with sender._mutex:
                sender._settle()
                seen.append((len(sender._queue), sender._queued_bytes, sum(map(len, sender._queue))))
            time.sleep(0.0005)

    def push(thread: int) -> None:
        for i, size in enumerate(sizes):
            sender.send([thread, i, bytes(size)], timeout=30)

    watcher = threading.Thread(target=watch)
    pushers = [threading.Thread(target=push, args=(t,)) for t in range(2)]
    got: list[Any] = []
    try:
        watcher.start()
        for thread in pushers:
            thread.start()
        time.sleep(0.5)  # the ring and the queue fill up; the senders block
        deadline = time.monotonic() + 60
        while len(got) < 2 * len(sizes) and time.monotonic() < deadline:
            got += receiver.receive(timeout=0.2)
            time.sleep(0.002)  # a slow reader: the queue stays near its bounds
        for thread in pushers:
            thread.join(30)
    finally:
        stop.set()
        watcher.join(10)
        sender.close_connection()
        receiver.close_connection()
    assert len(got) == 2 * len(sizes)
    for thread in range(2):
        assert [p[1] for p in got if p[0] == thread] == list(range(len(sizes)))
        assert [len(p[2]) for p in got if p[0] == thread] == sizes
    queue_bytes = min(1 << 17, _limits.QUEUE_BYTES)
    assert all(counted == really for _, counted, really in seen)
    assert max(count for count, _, _ in seen) <= queue_size
    assert all(nbytes <= queue_bytes or count == 1 for count, nbytes, _ in seen), max(seen, key=lambda s: s[1])
    assert max(count for count, _, _ in seen) >= min(queue_size, 2)  # the queue did fill
