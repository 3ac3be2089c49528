"""The Fast pipeline's guarantees, across real processes and real signals.

Every child is a fresh interpreter started through ``reaper`` (killed at teardown
whatever happens); it takes the pipe name as ``argv[1]`` and reports on stdout,
one line per fact, which the test parses and asserts on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import threading
import time
from typing import Any, Callable

import pytest

import pipebit
from pipebit import _layout as L

from .conftest import Reaper
from .helpers import Child, proc_state, segment_path, wait_until
from .redis_server import both_transports

# --------------------------------------------------------------------------- helpers


def mono_payload(i: int) -> bytes:
    return bytes([i % 251]) * (i % 500)


# ------------------------------------------------------------- 1. monotonic values
MONO_SENDER = """
import sys, time, pipebit
name, count = sys.argv[1], int(sys.argv[2])
s = pipebit.FastSender(name, 0)
start = time.perf_counter()
for i in range(count):
    s.send([i, bytes([i % 251]) * (i % 500)])
print("sent", count, time.perf_counter() - start, flush=True)
s.close_connection()
"""

# Polls until it has seen value ``last``; checks every packet; prints one JSON summary.
MONO_RECEIVER = """
import sys, json, time, pipebit
name, last = sys.argv[1], int(sys.argv[2])
r = pipebit.FastReceiver(name, 0)
print("ready", len(r.receive(timeout=0)), flush=True)
prev, seen, problems = -1, 0, []
deadline = time.monotonic() + 60
while prev != last and time.monotonic() < deadline:
    for p in r.receive(timeout=0.5):
        seen += 1
        ok = type(p) is list and len(p) == 2 and type(p[0]) is int and p[1] == bytes([p[0] % 251]) * (p[0] % 500)
        if not ok:
            problems.append("malformed " + repr(p)[:80])
            continue
        if p[0] <= prev:
            problems.append(f"{p[0]} after {prev}")
        prev = p[0]
extra = r.receive(timeout=0.3)
r.close_connection()
print("result " + json.dumps({"seen": seen, "last": prev, "problems": problems[:10],
      "nproblems": len(problems), "extra": repr(extra)[:200]}), flush=True)
"""


def test_values_are_whole_and_strictly_increasing_for_every_receiver(name: str, reaper: Reaper) -> None:
    count = 200_000
    receivers = [Child(reaper, MONO_RECEIVER, name, str(count - 1)) for _ in range(3)]
    for child in receivers:
        assert child.expect("ready", 30) == ["0"], "a fresh pipe must hold no value"
    sender = Child(reaper, MONO_SENDER, name, str(count))
    words = sender.expect("sent", 120)
    assert sender.wait(30) == 0, sender.describe()
    results = [child.expect_json("result", 90) for child in receivers]
    for child in receivers:
        assert child.wait(30) == 0, child.describe()
    print(
        f"\n[fast] {count} values sent in {float(words[1]):.2f}s; "
        f"distinct values seen per receiver: {[r['seen'] for r in results]}"
    )
    for k, result in enumerate(results):
        assert result["nproblems"] == 0, f"receiver {k}: {result['nproblems']} problems, first: {result['problems']}"
        assert result["last"] == count - 1, f"receiver {k} ended on value {result['last']}, not {count - 1}"
        assert result["extra"] == "[]", f"receiver {k} got a value again after the last one: {result['extra']}"
        # It sampled the stream while it ran, not only the final value.
        assert result["seen"] >= 2, f"receiver {k} saw only {result['seen']} value(s) of {count}"
    # The final value persists for a receiver that attaches afterwards.
    with pipebit.FastReceiver(name, 0) as late:
        assert late.receive(timeout=0) == [[count - 1, mono_payload(count - 1)]]


# ------------------------------------------------ 2. SIGKILLed writers never tear values
# Writes [wid, i, n, n bytes of (wid + i) % 64] in a tight loop, n = SIZES[i % 3] (up to
# 60000).  The payloads are built beforehand, so most of its time goes to copying them
# into the pipe and a kill often lands mid-write.
KILLED_SENDER = """
import sys, pipebit
name, wid = sys.argv[1], int(sys.argv[2])
SIZES = (60000, 40000, 20001)
blobs = {(b, n): bytes([b]) * n for b in range(64) for n in SIZES}
s = pipebit.FastSender(name, 0)
i = 0
while True:
    n = SIZES[i % 3]
    s.send([wid, i, n, blobs[((wid + i) % 64, n)]])
    if i == 0:
        print("ready", flush=True)
    i += 1
"""

# Reads continuously until it gets ["stop"], validating every packet.
TORN_CHECKER = """
import sys, json, pipebit
r = pipebit.FastReceiver(sys.argv[1], 0)
print("ready", flush=True)
seen, bad, errors, last, writers, done = 0, [], [], (-1, -1), set(), False
def valid(p):
    return (type(p) is list and len(p) == 4 and all(type(x) is int for x in p[:3])
            and p[2] == (60000, 40000, 20001)[p[1] % 3] and p[3] == bytes([(p[0] + p[1]) % 64]) * p[2])
while not done:
    try:
        batch = r.receive(timeout=0.05)
    except Exception as exc:
        errors.append(repr(exc)[:200])
        if len(errors) > 100:
            break
        continue
    for p in batch:
        if p == ["stop"]:
            done = True
            break
        seen += 1
        if not valid(p):
            bad.append("torn or malformed: " + repr(p)[:100])
            continue
        key = (p[0], p[1])
        if key <= last:
            bad.append(f"{key} after {last}")
        last = key
        writers.add(p[0])
r.close_connection()
print("result " + json.dumps({"seen": seen, "bad": bad[:10], "nbad": len(bad), "errors": errors[:5],
      "writers": sorted(writers)}), flush=True)
"""


def _valid_torn_packet(p: Any) -> bool:
    return (
        isinstance(p, list)
        and len(p) == 4
        and all(type(x) is int for x in p[:3])
        and p[2] == (60000, 40000, 20001)[p[1] % 3]
        and p[3] == bytes([(p[0] + p[1]) % 64]) * p[2]
    )


def _odd_seqs(name: str) -> int:
    """How many buffers of the Fast pipe are marked as being written (odd seq)."""
    raw = segment_path(name).read_bytes()
    capacity = struct.unpack_from("=Q", raw, 32)[0]
    offsets = [L.DATA_OFFSET + L.fast_buffer_offset(capacity, lane, b) for lane in range(L.LANES) for b in (0, 1)]
    return sum(struct.unpack_from("=Q", raw, offset)[0] % 2 for offset in offsets)


def test_sigkilled_writers_never_tear_values_and_their_lanes_are_reclaimed(name: str, reaper: Reaper) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = 16  # twice the 8 lanes: each new sender needs a dead one's lane
    checker = Child(reaper, TORN_CHECKER, name)
    checker.expect("ready", 30)
    after_kill: list[tuple[int, int]] = []
    mid_write = 0
    for wid in range(kills):
        writer = Child(reaper, KILLED_SENDER, name, str(wid))
        writer.expect("ready", 30)  # it attached (took a lane) and published at least once
        time.sleep(rng.uniform(0.05, 0.3))
        writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL, writer.describe()
        mid_write += _odd_seqs(name) > 0  # the kill landed inside a write (informational)
        # The last complete value survives the writer's death, for a receiver that attaches now.
        with pipebit.FastReceiver(name, 0) as fresh:
            got = fresh.receive(timeout=0)
        assert len(got) == 1, f"after killing writer {wid}, a fresh receiver got {got!r} (seed {seed})"
        value = got[0]
        assert _valid_torn_packet(value), f"after killing writer {wid}: torn value {repr(value)[:100]} (seed {seed})"
        assert value[0] == wid, f"after killing writer {wid} the value is writer {value[0]}'s (seed {seed})"
        after_kill.append((wid, value[1]))

    # Every lane of the dead writers is free again: 8 live senders fit at once.
    senders: list[pipebit.FastSender] = []
    try:
        for _ in range(L.LANES):
            senders.append(pipebit.FastSender(name, 0))
        senders[-1].send(["stop"])
    finally:
        for sender in senders:
            sender.close_connection()
    result = checker.expect_json("result", 60)
    assert checker.wait(30) == 0, checker.describe()
    print(
        f"\n[fast] {kills} writers SIGKILLed (seed {seed}), {mid_write} of them mid-write; "
        f"values read by the checker: {result['seen']}; "
        f"last value index of each killed writer: {after_kill}"
    )
    assert not result["errors"], f"receive() raised (seed {seed}): {result['errors']}"
    assert result["nbad"] == 0, f"{result['nbad']} bad values (seed {seed}), first: {result['bad']}"
    assert result["seen"] >= kills, f"the checker saw only {result['seen']} values (seed {seed})"


# ------------------------------------------------------- 3. late joiners, persistence
SEND_ONE_AND_END = """
import os, sys, pipebit
s = pipebit.FastSender(sys.argv[1], 0)
s.send([42])
if sys.argv[2] == "abrupt":
    s.flush()  # over Redis the value may still be on its way: let it reach the server first
    os._exit(0)  # no close_connection(), no atexit: as good as dead
"""


@both_transports
@pytest.mark.parametrize("ending", ["normal", "abrupt"])
def test_value_persists_after_the_sender_exits(name: str, reaper: Reaper, ending: str) -> None:
    child = Child(reaper, SEND_ONE_AND_END, name, ending)
    assert child.wait(30) == 0, child.describe()
    with pipebit.FastReceiver(name, 0) as late:
        assert late.receive() == [[42]]
        assert late.receive(timeout=0) == []  # no value twice
    with pipebit.FastReceiver(name, 0) as later:  # each receiver gets the current value once
        assert later.receive(timeout=0) == [[42]]
        assert later.receive(timeout=0) == []


@both_transports
def test_late_joiner_gets_only_the_current_value(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender:
        for i in range(5):
            sender.send([i])
        sender.flush()  # over Redis, send() leaves publishing to a background thread
        with pipebit.FastReceiver(name, 0) as late:
            assert late.receive(timeout=0) == [[4]]
            assert late.receive(timeout=0) == []
            sender.send([5])
            sender.flush()
            assert late.receive(timeout=0) == [[5]]


# ------------------------------------------------------------- 4. override and size
@both_transports
def test_override_clears_the_value_and_no_override_keeps_it(name: str) -> None:
    with pipebit.FastSender(name, 0) as first:
        first.send(["kept"])
    with pipebit.FastSender(name, 0, override=False):
        pass
    with pipebit.FastReceiver(name, 0) as receiver:
        assert receiver.receive(timeout=0) == [["kept"]]
    with pipebit.FastSender(name, 0, override=True) as overriding, pipebit.FastReceiver(name, 0) as receiver:
        assert receiver.receive(timeout=0) == []
        assert receiver.receive(timeout=0.2) == []
        overriding.send(["new"])
        overriding.flush()
        assert receiver.receive(timeout=0) == [["new"]]


@both_transports
def test_override_applies_size_and_later_senders_follow_the_pipe(name: str, make_name: Callable[[], str]) -> None:
    with pipebit.FastSender(name, 0) as first:
        first.send([1, 2])
    with pipebit.FastSender(name, 0, size=3, override=True) as sized:
        with pytest.raises(pipebit.PacketSizeError, match="3 elements"):
            sized.send([1, 2])
        sized.send([1, 2, 3])
    with pipebit.FastSender(name, 0, size=5) as follower:  # no override: the pipe's size (3) stands
        with pytest.raises(pipebit.PacketSizeError, match="3 elements"):
            follower.send([1, 2, 3, 4, 5])
        follower.send(["a", "b", "c"])
    with pipebit.FastSender(name, 0) as plain, pytest.raises(pipebit.PacketSizeError):
        plain.send([1])
    with pipebit.FastReceiver(name, 0) as receiver:
        assert receiver.receive(timeout=0) == [["a", "b", "c"]]  # refused packets changed nothing
    with pipebit.FastSender(name, 0, override=True) as reset:  # override without size: any length
        reset.send([1])
    # A sender that creates the pipe applies its size.
    other = make_name()
    with pipebit.FastSender(other, 0, size=2) as creator:
        with pytest.raises(pipebit.PacketSizeError):
            creator.send([1, 2, 3])
        creator.send([1, 2])


# ----------------------------------------------------------------- 5. several senders
@both_transports
def test_last_write_wins_between_senders(name: str) -> None:
    with pipebit.FastSender(name, 0) as a, pipebit.FastSender(name, 0) as b, pipebit.FastReceiver(name, 0) as receiver:
        for i in range(200):
            first, second = (a, b) if i % 2 else (b, a)
            first.send(["first", i])
            first.flush()  # over Redis, two senders' values land in the order they are published
            if i % 3:
                second.send(["second", i])
                second.flush()
                expected = ["second", i]
            else:
                expected = ["first", i]
            assert receiver.receive(timeout=0) == [expected], f"round {i}"
            assert receiver.receive(timeout=0) == []
            with pipebit.FastReceiver(name, 0) as fresh:
                assert fresh.receive(timeout=0) == [expected], f"round {i}, fresh receiver"


def test_eight_senders_fit_a_ninth_is_refused_until_one_leaves(name: str) -> None:
    senders = [pipebit.FastSender(name, 0) for _ in range(L.LANES)]
    receiver = pipebit.FastReceiver(name, 0)
    try:
        for k, sender in enumerate(senders):
            sender.send(["sender", k])
            assert receiver.receive(timeout=0) == [["sender", k]]
        with pytest.raises(pipebit.PipeBusyError, match="8 live senders"):
            pipebit.FastSender(name, 0)
        senders[3].send(["from 3"])  # its value is current when it leaves
        senders[3].close_connection()
        assert receiver.receive(timeout=0) == [["from 3"]]
        senders[3] = pipebit.FastSender(name, 0)  # takes the freed lane
        with pytest.raises(pipebit.PipeBusyError):
            pipebit.FastSender(name, 0)
        senders[3].send(["replacement"])
        assert receiver.receive(timeout=0) == [["replacement"]]
        for k, sender in enumerate(senders):
            sender.send(["again", k])
            assert receiver.receive(timeout=0) == [["again", k]]
        assert receiver.receive(timeout=0) == []
    finally:
        receiver.close_connection()
        for sender in senders:
            sender.close_connection()


# ------------------------------------------------------------------ 6. model mismatch
@both_transports
def test_fast_endpoints_refuse_a_safe_pipe(name: str) -> None:
    with pipebit.SafeSender(name, 0) as safe:
        safe.send(["safe"])
        safe.flush(timeout=10)
    for cls in (pipebit.FastReceiver, pipebit.FastSender):
        with pytest.raises(pipebit.ModelMismatchError) as info:
            cls(name, 0)
        message = str(info.value)
        assert "fast" in message.lower(), message
        assert "safe" in message.lower(), message
        assert name in message, message
        assert isinstance(info.value, ValueError)
    with pipebit.SafeReceiver(name, 0) as receiver:  # the Safe pipe is untouched
        assert receiver.receive(timeout=5) == [["safe"]]
    pipebit.remove(name)  # no participant was left behind (remove without force refuses live ones)


@both_transports
def test_safe_endpoints_refuse_a_fast_pipe(name: str) -> None:
    with pipebit.FastSender(name, 0) as fast:
        fast.send(["fast"])
    attempts: list[Callable[[], Any]] = [
        lambda: pipebit.SafeReceiver(name, 0),
        lambda: pipebit.SafeSender(name, 0),
        lambda: pipebit.BitPackSender(name, 0, False),
        lambda: pipebit.BitPackReceiver(name),
    ]
    for attempt in attempts:
        with pytest.raises(pipebit.ModelMismatchError) as info:
            attempt()
        message = str(info.value)
        assert "fast" in message.lower(), message
        assert "safe" in message.lower(), message
    with pipebit.FastReceiver(name, 0) as receiver:  # the Fast pipe is untouched
        assert receiver.receive(timeout=0) == [["fast"]]
    pipebit.remove(name)


# --------------------------------------------------------- 7. packet size, types, snapshot
@both_transports
def test_slot_size_limits_the_encoded_packet(name: str, make_name: Callable[[], str]) -> None:
    limit = 1024
    # [bytes of k]: 1 byte array header + 3 bytes bin16 header + k bytes.
    with pipebit.FastSender(name, 0, slot_size=limit) as sender, pipebit.FastReceiver(name, 0) as receiver:
        fits = [b"\xab" * (limit - 4)]
        sender.send(fits)
        sender.flush()
        assert receiver.receive(timeout=0) == [fits]
        under = [b"\xcd" * (limit - 5)]
        sender.send(under)
        sender.flush()
        assert receiver.receive(timeout=0) == [under]
        with pytest.raises(pipebit.PacketSizeError, match=str(limit)) as info:
            sender.send([b"\xef" * (limit - 3)])
        assert isinstance(info.value, ValueError)
        assert "1025" in str(info.value), str(info.value)  # says how big the packet was, too
        with pytest.raises(pipebit.PacketSizeError):
            sender.send([b"x" * 100_000])
        assert receiver.receive(timeout=0) == []  # refused packets publish nothing
        with pipebit.FastReceiver(name, 0) as fresh:
            assert fresh.receive(timeout=0) == [under]
    # The default slot carries 64 KiB packets; more is refused.
    other = make_name()
    with pipebit.FastSender(other, 0) as sender, pipebit.FastReceiver(other, 0) as receiver:
        big = [b"y" * (60 << 10)]
        sender.send(big)
        sender.flush()
        assert receiver.receive(timeout=0) == [big]
        with pytest.raises(pipebit.PacketSizeError, match="65536"):
            sender.send([b"z" * (64 << 10)])


@both_transports
@pytest.mark.parametrize("slot_size", [64, 100, 200])
def test_small_documented_slot_sizes_work(name: str, slot_size: int) -> None:
    # slot_size is documented (and checked) as at least 64, rounded up to a multiple of 8.
    limit = (slot_size + 7) // 8 * 8
    with pipebit.FastSender(name, 0, slot_size=slot_size) as sender, pipebit.FastReceiver(name, 0) as receiver:
        packet = [b"s" * (slot_size - 4)]
        sender.send(packet)
        sender.flush()
        assert receiver.receive(timeout=0) == [packet]
        with pytest.raises(pipebit.PacketSizeError, match=str(limit)):
            sender.send([b"s" * limit])


@both_transports
def test_unsupported_values_raise_in_send_and_publish_nothing(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
        sender.send(["ok"])
        sender.flush()
        assert receiver.receive(timeout=0) == [["ok"]]
        for bad in ([{1, 2}], [object()], [1, [2, {3}]], {1, 2}, "not a list"):
            with pytest.raises(pipebit.PacketTypeError):
                sender.send(bad)  # type: ignore[arg-type]
        sender.flush()
        assert receiver.receive(timeout=0) == []
        sender.send(["still works"])
        sender.flush()
        assert receiver.receive(timeout=0) == [["still works"]]


@both_transports
def test_send_takes_a_snapshot(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
        packet: list[Any] = [1, [2, 3], {"k": "v"}]
        sender.send(packet)
        packet.append(4)
        packet[1].append(5)
        packet[2]["k"] = "changed"
        sender.flush()
        assert receiver.receive(timeout=0) == [[1, [2, 3], {"k": "v"}]]


# -------------------------------------------------- 8. send() never waits for receivers
# mode "block": receive(timeout=None) loop; "poll": receive(timeout=0) loop;
# "idle": attaches and calls receive() only once told so by SIGUSR1.
RECEIVER_LOOP = """
import signal, sys, time, pipebit
name, mode = sys.argv[1], sys.argv[2]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
r = pipebit.FastReceiver(name, 0)
print("ready", flush=True)
if mode == "idle":
    signal.sigwait({signal.SIGUSR1})
    print("got", repr(r.receive(timeout=10)).replace(" ", ""), flush=True)
    sys.exit(0)
while True:
    for p in r.receive(timeout=None if mode == "block" else 0):
        print("got", repr([p]).replace(" ", ""), flush=True)
    if mode == "poll":
        time.sleep(0.001)
"""


def test_send_never_waits_for_stopped_or_idle_receivers(name: str, reaper: Reaper) -> None:
    count = 100_000
    sender = pipebit.FastSender(name, 0)
    try:
        modes = ["block", "poll", "idle", "idle"]
        children = [Child(reaper, RECEIVER_LOOP, name, mode) for mode in modes]
        for child in children:
            child.expect("ready", 30)
        sender.send([-1])
        for child, mode in zip(children, modes):
            if mode != "idle":
                assert child.expect("got", 30) == ["[[-1]]"]
        stopped = children[:3]  # both receive loops and one receiver that never called receive()
        for child in stopped:
            os.kill(child.pid, signal.SIGSTOP)
        for child in stopped:
            wait_until(lambda c=child: proc_state(c.pid) == "T", 10, f"receiver {child.pid} to stop")

        done = threading.Event()
        elapsed: list[float] = []
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                start = time.perf_counter()
                for i in range(count):
                    sender.send([i])
                elapsed.append(time.perf_counter() - start)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        assert done.wait(120), "send() blocked: 100k sends did not complete with the receivers stopped"
        assert not errors, f"send() raised: {errors[0]!r}"
        print(f"\n[fast] {count} sends with 3 stopped receivers and 1 idle one took {elapsed[0]:.2f}s")
        for child in stopped:
            assert proc_state(child.pid) == "T", "a receiver resumed during the sends"

        for child in stopped:
            os.kill(child.pid, signal.SIGCONT)
        for child, mode in zip(children, modes):
            if mode == "idle":
                os.kill(child.pid, signal.SIGUSR1)
        newest = f"[[{count - 1}]]"
        for child, mode in zip(children, modes):
            line = child.next_line(30)
            assert line == f"got {newest}", f"{mode} receiver's next receive gave {line!r}, not the newest value"
    finally:
        sender.close_connection()


# ------------------------------------------------------------------------ 9. idle CPU
IDLE_LOOP = """
import os, sys, time, pipebit
r = pipebit.FastReceiver(sys.argv[1], 0)
idle = float(sys.argv[2])
print("ready", flush=True)
start, t0 = time.monotonic(), os.times()
while time.monotonic() - start < idle:
    data = r.receive()
    if len(data):
        print("early", data, flush=True)
t1 = os.times()
print("idle", time.monotonic() - start, (t1.user - t0.user) + (t1.system - t0.system), flush=True)
while True:
    data = r.receive()
    if len(data):
        print("got", time.monotonic(), repr(data).replace(" ", ""), flush=True)
        break
"""


def test_idle_receive_loop_costs_no_cpu_and_wakes_fast(name: str, reaper: Reaper) -> None:
    idle = 3.0
    child = Child(reaper, IDLE_LOOP, name, str(idle))
    child.expect("ready", 30)
    elapsed, cpu = (float(x) for x in child.expect("idle", idle + 30))
    share = cpu / elapsed
    print(f"\n[fast] idle receive() loop: {cpu * 1000:.0f} ms CPU over {elapsed:.2f}s = {share:.2%} of a core")
    assert not any(line.startswith("early") for line in child.out), child.describe()
    assert share < 0.05, f"idle loop used {cpu:.3f}s CPU in {elapsed:.2f}s ({share:.1%} of a core)"

    with pipebit.FastSender(name, 0) as sender:
        time.sleep(0.3)  # the loop is idle again
        sent_at = time.monotonic()
        sender.send(["wake", 1])
        words = child.expect("got", 30)
        latency = float(words[0]) - sent_at
        print(f"[fast] a value sent to the idle loop arrived after {latency * 1000:.1f} ms")
        assert words[1] == "[['wake',1]]"
        assert latency < 0.5, f"value reached the idle loop {latency:.3f}s after send()"
    assert child.wait(30) == 0, child.describe()


# Answers each value of pipe argv[1] with the same value on pipe argv[2], sleeping
# in receive(timeout=None) between them; ends on [-1].
FAST_ECHO = """
import sys, pipebit
with pipebit.FastReceiver(sys.argv[1], 0, start="new") as pings, pipebit.FastSender(sys.argv[2], 0) as pongs:
    print("ready", flush=True)
    for packet in pings:
        if packet == [-1]:
            break
        pongs.send(packet)
print("done", flush=True)
"""


def test_no_wake_up_is_lost_between_sleeping_processes(make_name: Callable[[], str], reaper: Reaper) -> None:
    # Each side sleeps on every wait, so each value meets a receiver going to sleep
    # just as it is published: the race the barrier between "published" and "anyone
    # asleep?" settles.  A lost wake-up costs a 2 s sleep slice (SLEEP_SLICE).
    ping, pong = make_name(), make_name()
    with pipebit.FastReceiver(pong, 0, start="new") as pongs, pipebit.FastSender(ping, 0) as pings:
        child = Child(reaper, FAST_ECHO, ping, pong)
        child.expect("ready", 30)
        slowest = 0.0
        for i in range(2000):
            sent_at = time.monotonic()
            pings.send([i])
            assert pongs.receive(timeout=10) == [[i]]
            slowest = max(slowest, time.monotonic() - sent_at)
        pings.send([-1])
        child.expect("done", 30)
    assert slowest < 1.0, f"a round trip took {slowest:.3f} s: a wake-up was lost"


# ----------------------------------------------------- 10. receive(), close, iteration, fork
@both_transports
def test_receive_none_waits_for_a_send_from_another_thread(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
        timer = threading.Timer(0.3, sender.send, args=(["late"],))
        started = time.monotonic()
        timer.start()
        try:
            got = receiver.receive(timeout=None)
        finally:
            timer.join(10)
        waited = time.monotonic() - started
        assert got == [["late"]]
        assert waited < 5, f"receive(None) returned {waited:.2f}s after a send 0.3s in"


@both_transports
def test_receive_zero_returns_at_once_when_nothing_is_new(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
        durations = []
        for _ in range(5):
            started = time.perf_counter()
            assert receiver.receive(timeout=0) == []
            durations.append(time.perf_counter() - started)
        assert min(durations) < 0.05, f"receive(timeout=0) took {durations}"  # the default would wait 0.1s
        sender.send([1])
        sender.flush()
        assert receiver.receive(timeout=0) == [[1]]
        durations = []
        for _ in range(5):
            started = time.perf_counter()
            assert receiver.receive(timeout=0) == []
            durations.append(time.perf_counter() - started)
        assert min(durations) < 0.05, f"receive(timeout=0) took {durations}"


@both_transports
def test_closed_endpoints_raise_and_reopen(name: str) -> None:
    sender = pipebit.FastSender(name, 0)
    receiver = pipebit.FastReceiver(name, 0)
    sender.send([1])
    receiver.close_connection()
    receiver.close_connection()  # idempotent
    with pytest.raises(pipebit.PipeClosedError, match="close_connection"):
        receiver.receive(timeout=0)
    with pytest.raises(pipebit.PipeClosedError):
        receiver.receive(timeout=None)
    sender.close_connection()
    with pytest.raises(pipebit.PipeClosedError, match="close_connection"):
        sender.send([2])
    sender.open_connection()
    receiver.open_connection()
    try:
        sender.send([3])
        sender.flush()
        assert receiver.receive(timeout=0) == [[3]]
    finally:
        sender.close_connection()
        receiver.close_connection()


@both_transports
def test_a_send_method_taken_before_close_raises_after_it_and_subclasses_override_send(name: str) -> None:
    """While connected, the back-end's send() stands in for FastSender.send (one call per
    update); a reference to it taken before close_connection() must still say the sender is
    closed, never write to a pipe it left.  A subclass's own send() is not bypassed."""
    sender = pipebit.FastSender(name, 0)
    send = sender.send
    sender.close_connection()
    with pytest.raises(pipebit.PipeClosedError, match="close_connection"):
        send([1])
    with pytest.raises(pipebit.PacketTypeError):  # the type is checked first, closed or not
        send("not a packet")  # type: ignore[arg-type]
    sender.open_connection()
    try:
        sender.send([2])
        sender.flush()
        with pipebit.FastReceiver(name, 0) as receiver:
            assert receiver.receive(timeout=1) == [[2]]
    finally:
        sender.close_connection()

    class Stamped(pipebit.FastSender):
        def send(self, data: Any) -> None:
            super().send([*data, "stamped"])

    with Stamped(name, 0) as stamped, pipebit.FastReceiver(name, 0, start="new") as receiver:
        stamped.send([3])
        stamped.flush()
        assert receiver.receive(timeout=5) == [[3, "stamped"]]
        with pytest.raises(pipebit.PacketSizeError):
            stamped.send([b"x" * (70 << 10)])  # the checks run on the subclass's path too


def test_a_reconnecting_sender_writes_beside_the_published_value_and_keeps_count(name: str) -> None:
    """Each publication goes to the lane buffer readers are not told to read, also the
    first one after a reconnect or after another sender took the lane over; the sender's
    count of packets carries across its connections."""

    def published_buffer() -> tuple[int, int]:
        with pipebit.FastReceiver(name, 0) as probe:
            latest = probe._backend.pipe.words[L.F_LATEST]  # type: ignore[union-attr]
        return (latest >> 1) & 0x7F, latest & 1

    sender = pipebit.FastSender(name, 0)
    try:
        seen = []
        for connection in range(3):
            for i in range(3):
                sender.send([connection, i])
                seen.append(published_buffer())
            assert sender.stats().packets == 3 * (connection + 1)
            sender.close_connection()
            sender.open_connection()
        lanes = {lane for lane, _ in seen}
        assert lanes == {0}
        buffers = [buffer for _, buffer in seen]
        assert all(a != b for a, b in zip(buffers, buffers[1:])), buffers
    finally:
        sender.close_connection()
    with pipebit.FastSender(name, 0) as successor:  # takes over the free lane 0
        successor.send(["next"])
        assert published_buffer() == (0, buffers[-1] ^ 1)
        successor.send(["after"])
        assert published_buffer() == (0, buffers[-1])
        assert successor.stats().packets == 2
        assert successor.stats().pipe.packets_written == 11
    with pipebit.FastReceiver(name, 0) as receiver:
        assert receiver.receive(timeout=0) == [["after"]]


# Iterates a receiver in a thread and closes it from the main thread, ``rounds``
# times, in a child: a crash of the interpreter shows up as such.
ITERATE_AND_CLOSE = """
import json, sys, threading, time, pipebit
name, rounds = sys.argv[1], int(sys.argv[2])
sender = pipebit.FastSender(name, 0)
for k in range(rounds):
    receiver = pipebit.FastReceiver(name, 0)
    receiver.receive(timeout=0)  # skip the previous round's value
    got, errors = [], []
    def consume():
        try:
            for packet in receiver:
                got.append(packet)
        except BaseException as exc:
            errors.append(repr(exc))
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    for i in range(3):
        sender.send([k, i])
        deadline = time.monotonic() + 10
        while len(got) <= i and time.monotonic() < deadline:
            time.sleep(0.005)
    time.sleep(0.05 if k % 2 else 0.3)  # the iterator is asleep inside receive(timeout=None)
    receiver.close_connection()
    thread.join(10)
    print("round " + json.dumps({"round": k, "ended": not thread.is_alive(), "errors": errors, "got": got}),
          flush=True)
sender.close_connection()
"""


@both_transports
def test_iteration_ends_when_closed_from_another_thread(name: str, reaper: Reaper) -> None:
    rounds = 6
    child = Child(reaper, ITERATE_AND_CLOSE, name, str(rounds))
    code = child.wait(60)
    results = [json.loads(line[len("round ") :]) for line in child.out if line.startswith("round ")]
    assert code == 0, f"the process iterating and closing a receiver died (exit {code})\n{child.describe()}"
    assert len(results) == rounds, child.describe()
    for result in results:
        k = result["round"]
        assert result["ended"], f"round {k}: iteration did not end after close_connection()"
        assert not result["errors"], f"round {k}: iteration raised instead of ending: {result['errors']}"
        assert result["got"] == [[k, 0], [k, 1], [k, 2]], f"round {k}: iterated {result['got']}"


FORK_CHILD = """
import os, sys, pipebit
name = sys.argv[1]
sender = pipebit.FastSender(name, 0)
sender.send(["before fork"])
sender.flush()
pid = os.fork()
if pid == 0:
    try:
        sender.send(["from the child's copy"])
    except pipebit.PipeClosedError as exc:
        ok = "fork" in str(exc)
    else:
        ok = False
    own = pipebit.FastSender(name, 0)
    own.send(["from child"])
    own.flush()
    own.close_connection()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
with pipebit.FastReceiver(name, 0) as r:
    print("current", repr(r.receive(timeout=0)).replace(" ", ""), flush=True)
    sender.send(["from parent"])
    sender.flush()
    print("then", repr(r.receive(timeout=0)).replace(" ", ""), flush=True)
sender.close_connection()
"""


@both_transports
def test_fork_leaves_the_parent_working_and_the_child_told(name: str, reaper: Reaper) -> None:
    child = Child(reaper, FORK_CHILD, name)
    assert child.expect("child", 60) == ["0"], "the forked child's copy of the sender did not raise about fork"
    assert child.expect("current", 30) == ["[['fromchild']]"]
    assert child.expect("then", 30) == ["[['fromparent']]"]
    assert child.wait(30) == 0, child.describe()
    with pipebit.FastReceiver(name, 0) as receiver:
        assert receiver.receive(timeout=0) == [["from parent"]]


# -------------------------------------------------------------------- 11. hostile data
def _published_buffer(name: str) -> tuple[int, int]:
    """File offset of the published buffer's header, and the pipe's slot size."""
    with segment_path(name).open("rb") as f:
        head = f.read(L.DATA_OFFSET + 8)
    capacity = struct.unpack_from("=Q", head, 32)[0]
    latest = struct.unpack_from("=Q", head, L.DATA_OFFSET)[0]
    assert latest, "precondition: a value is published"
    lane, buffer = (latest >> 1) & 0x7F, latest & 1
    return L.DATA_OFFSET + L.fast_buffer_offset(capacity, lane, buffer), L.fast_slot_size(capacity)


def _garbage_payload(f: Any, header: int, length: int, slot: int) -> None:
    f.seek(header + L.BUFFER_HEADER)
    f.write(b"\xc1" * length)  # 0xc1 is never valid MessagePack


def _random_payload(f: Any, header: int, length: int, slot: int) -> None:
    f.seek(header + L.BUFFER_HEADER)
    f.write(os.urandom(length))


def _short_length(f: Any, header: int, length: int, slot: int) -> None:
    f.seek(header + 8)
    f.write(struct.pack("=Q", length // 2))


def _huge_length(f: Any, header: int, length: int, slot: int) -> None:
    f.seek(header + 8)
    f.write(struct.pack("=Q", (1 << 63) + 12345))


def _random_header_and_payload(f: Any, header: int, length: int, slot: int) -> None:
    f.seek(header + 8)  # everything but seq
    f.write(os.urandom(L.BUFFER_HEADER - 8 + length))


HOSTILE_READER = """
import sys, json, time, pipebit
r = pipebit.FastReceiver(sys.argv[1], 0)
outcomes = []
for _ in range(2):
    started = time.monotonic()
    try:
        got = r.receive(timeout=0.5)
    except pipebit.CorruptPacketError as exc:
        outcomes.append(["corrupt", str(exc)[:200]])
    except Exception as exc:
        outcomes.append(["other", type(exc).__name__ + ": " + str(exc)[:200]])
    else:
        outcomes.append(["value", repr(got)[:200]])
print("outcomes " + json.dumps(outcomes), flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        got = r.receive(timeout=0.5)
    except pipebit.CorruptPacketError:
        continue
    if got == [["fresh", 7]]:
        print("fresh", flush=True)
        break
"""


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_garbage_payload, id="garbage-payload"),
        pytest.param(_random_payload, id="random-payload"),
        pytest.param(_short_length, id="short-length"),
        pytest.param(_huge_length, id="huge-length"),
        pytest.param(_random_header_and_payload, id="random-header"),
    ],
)
def test_hostile_bytes_in_the_published_buffer(
    name: str, reaper: Reaper, damage: Callable[[Any, int, int, int], None]
) -> None:
    original = ["original", list(range(20)), "x" * 50]
    with pipebit.FastSender(name, 0) as sender:
        sender.send(original)
    header, slot = _published_buffer(name)
    with segment_path(name).open("r+b") as f:
        f.seek(header)
        seq, length = struct.unpack("=QQ", f.read(16))
        assert seq > 0, "precondition: a published buffer"
        assert seq % 2 == 0, "precondition: a complete buffer"
        assert 0 < length <= slot, "precondition: a sane length"
        damage(f, header, length, slot)
        f.seek(header)
        assert struct.unpack("=Q", f.read(8))[0] == seq, "the damage must leave seq intact"

    # In a child first: a crash or a hang shows up as such.
    child = Child(reaper, HOSTILE_READER, name)
    outcomes = child.expect_json("outcomes", 30)
    print(f"\n[fast] {damage.__name__}: {outcomes}")
    first_kind, first_detail = outcomes[0]
    assert first_kind in ("corrupt", "value"), f"first receive on damaged data: {outcomes}"
    if first_kind == "value":
        assert first_detail.startswith("[["), (
            f"first receive on damaged data returned {first_detail}: neither a packet nor a CorruptPacketError"
        )
    assert outcomes[1][0] in ("corrupt", "value"), f"second receive on damaged data: {outcomes}"
    # A later valid send reaches both that receiver and a fresh one.
    with pipebit.FastSender(name, 0) as sender:
        sender.send(["fresh", 7])
        child.expect("fresh", 30)
        with pipebit.FastReceiver(name, 0) as receiver:
            assert receiver.receive(timeout=0) == [["fresh", 7]]
    assert child.wait(30) == 0, child.describe()
    if first_kind == "corrupt":  # like every PipeBit error, it names the pipe
        assert name in first_detail, f"the CorruptPacketError does not name the pipe: {first_detail}"


@both_transports
def test_start_new_skips_the_value_published_before_attaching(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender:
        sender.send(["before"])
        with pipebit.FastReceiver(name, 0, start="new") as fresh, pipebit.FastReceiver(name, 0) as current:
            assert fresh.receive(timeout=0) == []
            assert current.receive(timeout=0) == [["before"]]
            sender.send(["after"])
            assert fresh.receive(timeout=5) == [["after"]]
    with pytest.raises(pipebit.InvalidArgumentError, match="start"):
        pipebit.FastReceiver(name, 0, start="oldest")
