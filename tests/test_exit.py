"""What happens when a script ends: exit flush, exit with a stalled receiver, and idle cost.

Children are fresh interpreters started through ``reaper``; each takes the pipe
name as ``argv[1]``.  Times printed by a child are ``time.monotonic()``, the
system-wide CLOCK_MONOTONIC on Linux, so they compare with the test's own.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

import pipebit

from .conftest import Reaper
from .helpers import Child, receive_n
from .redis_server import both_transports

# Sends [i, "p" * pad] and just ends: no flush, no close_connection.  Prints the
# moment it is done.
SEND_AND_END = """
import sys, time, pipebit
name, count, pad, flush_timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = pipebit.SafeSender(name, 0, flush_timeout=flush_timeout)
for i in range(count):
    s.send([i, "p" * pad])
print("end", time.monotonic(), flush=True)
"""

STALLED_RECEIVER = """
import sys, time, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0, capacity=8192, max_cached=1)
print("ready", flush=True)
time.sleep(3600)
"""

# The README's loop, timed: first nothing is sent for ``idle`` seconds (CPU time is
# measured over that interval), then every arrival is reported with its time.
README_LOOP = """
import os, sys, time, pipebit
name, idle = sys.argv[1], float(sys.argv[2])
r = pipebit.SafeReceiver(name, 0)
print("ready", flush=True)
t0, c0 = time.monotonic(), os.times()
reported = False
while True:
    data = r.receive()
    if len(data):
        print("got", time.monotonic(), data, flush=True)
    if not reported and time.monotonic() - t0 >= idle:
        c1, t1 = os.times(), time.monotonic()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        print("idle", t1 - t0, cpu, flush=True)
        reported = True
"""


@both_transports
@pytest.mark.parametrize("receiver_first", [True, False], ids=["receiver-first", "receiver-after"])
def test_script_that_just_ends_delivers_everything(name: str, reaper: Reaper, receiver_first: bool) -> None:
    count = 5000
    receiver = None
    try:
        if receiver_first:
            # A 64 KiB ring is far smaller than the 5000 packets (~530 KB), so when the
            # script ends part of them is still queued: only the exit flush delivers it.
            receiver = pipebit.SafeReceiver(name, 0, capacity=65536)
        child = Child(reaper, SEND_AND_END, name, str(count), "100", "5.0")
        end = float(child.expect("end", 60)[0])
        code = child.wait(30)
        assert child.ended_at is not None
        exit_delay = child.ended_at - end
        order = "receiver first" if receiver_first else "receiver after"
        print(f"\n[exit] sender exited {exit_delay:.3f}s after its last send ({order})")
        assert code == 0, child.describe()
        assert exit_delay < 5, f"the sender took {exit_delay:.2f}s to exit after its last send"
        assert "Warning" not in child.stderr, child.describe()
        assert "Traceback" not in child.stderr, child.describe()

        if receiver is None:
            receiver = pipebit.SafeReceiver(name, 0, start="oldest")
        got = receive_n(receiver, count, timeout=30)
        assert receiver.receive(timeout=0.3) == []
        assert got == [[i, "p" * 100] for i in range(count)]
    finally:
        if receiver is not None:
            receiver.close_connection()


@both_transports
def test_exit_with_a_stalled_receiver_warns_and_ends(name: str, reaper: Reaper) -> None:
    count = 2000
    stalled = Child(reaper, STALLED_RECEIVER, name)
    stalled.expect("ready", 30)
    # 2000 packets [i, "pp"] encode to ~13.6 KB: more than the 8 KiB ring holds, less
    # than ring plus the sender's queue (8 KiB too), so every send() returns and the
    # script ends with packets still queued behind the stalled receiver.
    child = Child(reaper, SEND_AND_END, name, str(count), "2", "1.0")
    end = float(child.expect("end", 60)[0])
    code = child.wait(30)
    assert child.ended_at is not None
    exit_delay = child.ended_at - end
    print(f"\n[exit] with a stalled receiver the sender exited {exit_delay:.3f}s after its last send")
    assert code == 0, child.describe()
    assert exit_delay < 15, f"the sender took {exit_delay:.2f}s to exit (flush_timeout=1.0)"
    match = re.search(r"UndeliveredPacketsWarning: .*?\b(\d+) packet", child.stderr)
    assert match, f"no UndeliveredPacketsWarning with a count on stderr\n{child.describe()}"
    undelivered = int(match.group(1))
    assert 0 < undelivered < count, child.describe()

    # The warning's count is exact: once the stalled receiver is gone, the pipe
    # retains a contiguous run of packets that ends right before the undelivered ones.
    stalled.proc.kill()
    stalled.wait(10)
    with pipebit.SafeReceiver(name, 0, start="oldest") as receiver:
        retained: list[Any] = []
        while batch := receiver.receive(timeout=1.0):
            retained += batch
    seqs = [p[0] for p in retained]
    print(f"[exit] {undelivered} packets reported undelivered; pipe retains {seqs[:1]}..{seqs[-1:]}")
    assert seqs, "the pipe retains nothing of what was delivered"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "retained packets are not contiguous"
    assert seqs[-1] == count - undelivered - 1, (
        f"warning says {undelivered} undelivered, but the pipe holds packets up to {seqs[-1]}"
    )


def test_idle_receive_loop_costs_no_cpu_and_wakes_fast(name: str, reaper: Reaper) -> None:
    idle = 3.0
    child = Child(reaper, README_LOOP, name, str(idle))
    child.expect("ready", 30)
    elapsed, cpu = (float(x) for x in child.expect("idle", idle + 30))
    share = cpu / elapsed
    print(f"\n[exit] idle receive() loop: {cpu * 1000:.1f} ms CPU over {elapsed:.2f}s = {share:.2%} of a core")
    assert share < 0.05, f"idle loop used {cpu:.3f}s CPU in {elapsed:.2f}s ({share:.1%} of a core)"

    with pipebit.SafeSender(name, 0) as sender:
        time.sleep(0.3)  # the loop is idle again
        sent_at = time.monotonic()
        sender.send(["wake", 1])
        words = child.expect("got", 30)
        latency = float(words[0]) - sent_at
        print(f"[exit] a packet sent to the idle loop arrived after {latency * 1000:.1f} ms")
        assert " ".join(words[1:]) == "[['wake', 1]]"
        assert latency < 0.5, f"packet reached the idle loop {latency:.3f}s after send()"


def test_closing_right_after_delivery_warns_of_nothing(name: str) -> None:
    # close_connection(timeout=0) just as the delivery thread commits its last batch:
    # the packets are in the ring (the receiver has them all), so closing must not
    # warn that they were "not delivered".  Repeated to catch the thread between
    # its commit and its bookkeeping.
    with pipebit.SafeReceiver(name, 0) as receiver:
        for round_ in range(200):
            sender = pipebit.SafeSender(name, 0)
            for i in range(5):
                sender.send([round_, i])
            assert [p[1] for p in receive_n(receiver, 5)] == list(range(5))
            sender.close_connection(timeout=0)  # warnings are errors in this suite
