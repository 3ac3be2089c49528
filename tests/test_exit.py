"""What happens when a script ends: exit flush, exit with a stalled receiver, signals, and idle cost.

Children are fresh interpreters started through ``reaper``; each takes the pipe
name as ``argv[1]``.  Times printed by a child are ``time.monotonic()``, the
system-wide CLOCK_MONOTONIC on Linux, so they compare with the test's own.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
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

# Sends ``count`` packets [i, "p" * pad], says how many are still queued, then waits
# to be signalled, or with ``wait`` "end" ends, saying "exiting" as its exit begins
# (an atexit callback registered after PipeBit's runs before it).  ``handling``: "recipe" turns
# SIGTERM into sys.exit(0) as docs/exit-and-signals.md says; "python" makes sure
# SIGINT has Python's own handler (a process started in the background may inherit
# SIGINT ignored); "none" leaves signals to their default action.
SEND_THEN_WAIT = """
import signal, sys, time, pipebit
name, count, pad, handling, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
if handling == "recipe":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
elif handling == "python":
    signal.signal(signal.SIGINT, signal.default_int_handler)
s = pipebit.SafeSender(name, 0, flush_timeout=20)
for i in range(count):
    s.send([i, "p" * pad])
print("sent", s.stats().pending, flush=True)
if wait == "wait":
    time.sleep(3600)
import atexit
atexit.register(print, "exiting", flush=True)
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


def received(receiver: pipebit.SafeReceiver, pad: int) -> list[int]:
    """The numbers of the packets ``receiver`` gets until none comes for 1 s, checking
    that each is whole (``[number, "p" * pad]``) and that they run 0, 1, 2, ... without
    a gap or a repeat."""
    got: list[Any] = []
    while batch := receiver.receive(timeout=1.0):
        got += batch
    assert all(len(p) == 2 and p[1] == "p" * pad for p in got), "a packet is not [i, 'p' * pad]"
    seqs = [p[0] for p in got]
    wrong = next((i for i, n in enumerate(seqs) if n != i), None)
    assert wrong is None, f"packets are not 0, 1, 2, ...: position {wrong} holds {seqs[wrong]}"
    return seqs


def holding_receiver(name: str) -> pipebit.SafeReceiver:
    """A receiver that holds its 1 MiB pipe full until the test calls ``receive()``
    (its thread reads one packet ahead, then waits): 12,000 packets [i, "p" * 100]
    fill the pipe and leave thousands in the sender's queue, where only the exit
    flush can deliver them."""
    return pipebit.SafeReceiver(name, 0, capacity=1 << 20, max_cached=1, start="oldest")


@both_transports
def test_sigterm_by_default_ends_the_sender_leaving_a_gap_free_prefix(name: str, reaper: Reaper) -> None:
    # SIGTERM's default action ends the process at once: no Python code runs, so
    # what the sender still had queued is lost (here the receiver holds the pipe
    # full, so its delivery thread is cut off in the middle of a batch).  What
    # reached the pipe is a prefix of what was sent: nothing torn, doubled or skipped.
    count = 12_000
    with holding_receiver(name) as receiver:
        child = Child(reaper, SEND_THEN_WAIT, name, str(count), "100", "none", "wait")
        queued = int(child.expect("sent", 60)[0])
        child.kill(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM, child.describe()
        seqs = received(receiver, 100)
    print(f"\n[exit] SIGTERM with {queued} packets queued: {len(seqs)} of {count} delivered")
    assert len(seqs) <= count


@both_transports
@pytest.mark.parametrize(
    ("handling", "sig", "code"),
    [("recipe", signal.SIGTERM, 0), ("python", signal.SIGINT, -signal.SIGINT)],
    ids=["sigterm-recipe", "sigint"],
)
def test_signal_turned_into_an_exception_delivers_every_packet_sent(
    name: str, reaper: Reaper, handling: str, sig: int, code: int
) -> None:
    # The handler's exception (SystemExit from the recipe; Python's own SIGINT handler
    # raises KeyboardInterrupt) unwinds the script, and the interpreter's exit runs
    # atexit: the exit flush waits for room, which the test makes by receiving.  An
    # uncaught KeyboardInterrupt ends Python by SIGINT, after its cleanup.
    count = 12_000
    with holding_receiver(name) as receiver:
        child = Child(reaper, SEND_THEN_WAIT, name, str(count), "100", handling, "wait")
        queued = int(child.expect("sent", 60)[0])
        assert queued > 0, "the test needs packets still queued when the signal comes"
        child.kill(sig)
        time.sleep(0.5)  # a process that died of the signal would be gone by now, its queue with it
        seqs = received(receiver, 100)
        assert child.wait(30) == code, child.describe()
    name_ = signal.Signals(sig).name
    print(f"\n[exit] {name_} ({handling}) with {queued} packets queued: {len(seqs)} of {count} delivered")
    assert len(seqs) == count, child.describe()
    assert "Warning" not in child.stderr, child.describe()
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in child.stderr, child.describe()


def test_signal_during_the_exit_flush_cuts_it_short_and_says_so(name: str, reaper: Reaper) -> None:
    # With the recipe, a SIGTERM that comes while the script already ends -- its exit
    # flush waiting for room -- raises SystemExit inside that flush: the script stops
    # waiting, and the warning says how many packets that dropped.  (Where the signal
    # lands inside threading.Condition.wait(), CPython can release the lock twice and
    # the SystemExit turns into RuntimeError "release unlocked lock": the warning
    # then says closing failed, with the same count.)
    count = 12_000
    with holding_receiver(name) as receiver:
        child = Child(reaper, SEND_THEN_WAIT, name, str(count), "100", "recipe", "end")
        child.expect("exiting", 60)
        time.sleep(0.5)  # the exit flush waits for room
        child.kill(signal.SIGTERM)
        assert child.wait(30) == 0, child.describe()
        match = re.search(r"UndeliveredPacketsWarning: .*?(SystemExit interrupted|failed).*?(\d+) packet", child.stderr)
        assert match, f"no UndeliveredPacketsWarning with a count\n{child.describe()}"
        undelivered = int(match.group(2))
        seqs = received(receiver, 100)
    print(f"\n[exit] SIGTERM (recipe) during the exit flush: {undelivered} of {count} packets not delivered")
    assert 0 < undelivered < count
    assert len(seqs) == count - undelivered


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


def test_exit_and_signals_doc_names_tests_that_exist() -> None:
    # docs/exit-and-signals.md backs each claim with E::`test` (this module) or
    # M::`test` (test_multiprocessing): every one it names must be there.
    from . import test_multiprocessing

    doc = (Path(__file__).parent.parent / "docs" / "exit-and-signals.md").read_text(encoding="utf-8")
    named = re.findall(r"\b([EM])::`(\w+)", doc)
    assert len(named) >= 10
    modules = {"E": sys.modules[__name__], "M": test_multiprocessing}
    missing = [f"{key}::{test}" for key, test in named if not hasattr(modules[key], test)]
    assert not missing, f"docs/exit-and-signals.md names tests that do not exist: {missing}"


CTRL_C_STORM = r"""
import signal, sys, threading, time, pipebit

name = sys.argv[1]
receiver = pipebit.SafeReceiver(name, 0, start="new")
got = []

def drain():
    while True:
        try:
            got.extend(receiver.receive(timeout=0.1))
        except pipebit.PipeClosedError:
            return

threading.Thread(target=drain, daemon=True).start()
safe = pipebit.SafeSender(name, 0)
fast = pipebit.FastSender(name + "-fast", 0)
in_send = False

def interrupt(signum, frame):  # Ctrl-C, but only while a send() is in progress
    if in_send:
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, interrupt)
stop = threading.Event()

def storm():
    while not stop.is_set():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.0002)

threading.Thread(target=storm, daemon=True).start()
interrupts, sent, end = 0, 0, time.monotonic() + 2
while time.monotonic() < end:
    try:
        in_send = True
        safe.send([sent])
        fast.send([sent])
        in_send = False
        sent += 1
    except KeyboardInterrupt:
        in_send = False
        interrupts += 1
stop.set()
safe.flush(timeout=10)  # a lock a send() left held would make these wait for ever
fast.send(["last"])
safe.close_connection()
fast.close_connection()
print("done", interrupts, flush=True)
pipebit.remove(name + "-fast", force=True)
"""


def test_ctrl_c_inside_send_never_leaves_the_sender_locked(name: str, reaper: Reaper) -> None:
    # Before: an exception raised by a signal handler as the sender's lock was taken left
    # the lock held: the next send(), flush() or the exit flush waited for ever.
    child = Child(reaper, CTRL_C_STORM, name)
    words = child.expect("done", timeout=60)
    assert int(words[0]) > 100, f"only {words[0]} interrupts landed in send(); the test proves little"
    assert child.wait(30) == 0, child.describe()
