"""Faults with real processes and real signals: SIGKILL, SIGSTOP, and damaged shared memory.

Every child is a fresh interpreter started through ``reaper`` (killed at teardown
whatever happens); it takes the pipe name as ``argv[1]`` and reports on stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pipebit
from pipebit import _layout as L
from pipebit import _shm

from .conftest import Reaper
from .helpers import Child, proc_state, receive_n, segment_path, wait_until

# --------------------------------------------------------------------------- helpers


def payload(seq: int, length: int) -> bytes:
    return bytes([seq % 251]) * length


# A receiver that attaches, says so, and then never calls receive(): with
# max_cached=1 its background thread stops after one record, so it holds senders back.
STALLED_RECEIVER = """
import sys, time, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0, max_cached=1)
print("ready", flush=True)
time.sleep(3600)
"""

# Streams [cid, seq, payload(seq)] with payload length seq % 3000, forever (limit < 0)
# or ``limit`` packets, then ends without closing (exit flushes).
STREAMING_SENDER = """
import sys, pipebit
name, cid, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = pipebit.SafeSender(name, 0)
print("ready", flush=True)
seq = 0
while limit < 0 or seq < limit:
    s.send([cid, seq, bytes([seq % 251]) * (seq % 3000)])
    seq += 1
print("done", seq, flush=True)
"""

# Receives ``total`` packets [i, payload(i, 50)], checking each, then prints a summary.
COUNTING_RECEIVER = """
import sys, time, pipebit
name, total = sys.argv[1], int(sys.argv[2])
r = pipebit.SafeReceiver(name, 0)
print("ready", flush=True)
expected, first_bad = 0, None
while expected < total:
    for p in r.receive(timeout=1.0):
        if first_bad is None and p != [expected, bytes([expected % 251]) * 50]:
            first_bad = (expected, repr(p)[:80])
        expected += 1
extra = r.receive(timeout=0.3)
print("result", expected, len(extra), first_bad is None, repr(first_bad).replace(" ", "_"), flush=True)
"""


# ----------------------------------------------------------------- SIGKILLed receiver
def test_sigkilled_receiver_releases_a_blocked_sender(name: str, reaper: Reaper) -> None:
    total = 3000
    sender = pipebit.SafeSender(name, 0, capacity=8192)
    live = pipebit.SafeReceiver(name, 0)  # attached before the kill; its thread drains into its cache
    try:
        stalled = Child(reaper, STALLED_RECEIVER, name)
        stalled.expect("ready", 30)

        # Fill the ring and the send queue until send() cannot get room.
        sent = 0
        blocked = False
        while sent < total:
            try:
                sender.send([sent, payload(sent, 100)], timeout=0.5)
            except pipebit.PipeTimeoutError:
                blocked = True
                break
            sent += 1
        assert blocked, f"send() never blocked after {sent} packets: the stalled receiver did not hold it back"
        # Held back while the stalled receiver is alive (longer than the liveness probe interval).
        with pytest.raises(pipebit.PipeTimeoutError):
            sender.flush(timeout=1.0)

        started = time.monotonic()
        stalled.kill(signal.SIGKILL)
        sender.flush(timeout=30)
        detection = time.monotonic() - started
        print(f"\n[faults] dead receiver detected, flush completed {detection:.3f}s after SIGKILL")
        assert detection < 10, f"flush completed {detection:.2f}s after the receiver was killed (promise: ~1s)"

        for i in range(sent, total):  # the sender carries on normally
            sender.send([i, payload(i, 100)], timeout=30)
        sender.flush(timeout=30)

        got = receive_n(live, total, timeout=30)
        assert live.receive(timeout=0.3) == []
        seqs = [p[0] for p in got]
        assert seqs == list(range(total)), "live receiver saw a gap, a duplicate or a reordering"
        assert all(p[1] == payload(p[0], 100) for p in got)
    finally:
        sender.close_connection()
        live.close_connection()


# ------------------------------------------------------------------- SIGKILLed sender
def test_sigkilled_senders_leave_a_consistent_stream(name: str, reaper: Reaper) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = 4
    final = 2000
    receiver = pipebit.SafeReceiver(name, 0, capacity=65536)
    lock = threading.Lock()
    next_seq: dict[int, int] = {}
    problems: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                batch = receiver.receive(timeout=0.1)
            except BaseException as exc:  # receive must never raise here
                errors.append(exc)
                return
            with lock:
                for p in batch:
                    ok = (
                        isinstance(p, list)
                        and len(p) == 3
                        and isinstance(p[0], int)
                        and isinstance(p[1], int)
                        and p[2] == payload(p[1], p[1] % 3000)
                    )
                    if not ok:
                        problems.append(f"malformed packet {repr(p)[:100]}")
                        continue
                    cid, seq = p[0], p[1]
                    if seq != next_seq.get(cid, 0):
                        problems.append(f"sender {cid}: got seq {seq}, expected {next_seq.get(cid, 0)}")
                    next_seq[cid] = seq + 1

    def received(cid: int) -> int:
        with lock:
            return next_seq.get(cid, 0)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for cid in range(kills):
            child = Child(reaper, STREAMING_SENDER, name, str(cid), "-1")
            child.expect("ready", 30)
            # No deadlock: this new sender's packets arrive despite the earlier kills.
            wait_until(lambda c=cid: received(c) >= 20, 30, f"packets of sender {cid} (seed {seed})")
            time.sleep(rng.uniform(0.0, 0.4))
            child.kill(signal.SIGKILL)
            assert child.proc.returncode == -signal.SIGKILL, child.describe()

        last = Child(reaper, STREAMING_SENDER, name, str(kills), str(final))
        assert last.wait(60) == 0, last.describe()
        wait_until(lambda: received(kills) >= final, 30, f"all {final} packets of the last sender (seed {seed})")
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join(10)
        receiver.close_connection()
    assert not errors, f"receive() raised: {errors[0]!r} (seed {seed})"
    assert not problems, f"{len(problems)} problems (seed {seed}), first: {problems[:5]}"
    with lock:
        counts = dict(next_seq)
    print(f"\n[faults] packets received per sender (killed ones are prefixes): {counts}")
    assert counts[kills] == final
    assert sorted(counts) == list(range(kills + 1))


# ------------------------------------------------------------- SIGSTOP then SIGCONT
def test_stopped_receiver_holds_sender_back_and_loses_nothing(name: str, reaper: Reaper) -> None:
    total = 3000
    sender = pipebit.SafeSender(name, 0, capacity=8192)
    try:
        child = Child(reaper, COUNTING_RECEIVER, name, str(total))
        child.expect("ready", 30)
        os.kill(child.pid, signal.SIGSTOP)
        wait_until(lambda: proc_state(child.pid) == "T", 10, "the receiver to stop")

        sent = 0
        blocked = False
        while sent < total:
            try:
                sender.send([sent, payload(sent, 50)], timeout=1.0)
            except pipebit.PipeTimeoutError:
                blocked = True
                break
            sent += 1
        assert blocked, f"all {total} packets went through while the only receiver was stopped"
        # A stopped receiver is alive: it must keep holding the sender back, well past
        # the dead-receiver probe interval.
        time.sleep(1.0)
        with pytest.raises(pipebit.PipeTimeoutError):
            sender.flush(timeout=1.0)
        assert proc_state(child.pid) == "T"

        os.kill(child.pid, signal.SIGCONT)
        for i in range(sent, total):
            sender.send([i, payload(i, 50)], timeout=30)
        sender.flush(timeout=30)

        words = child.expect("result", 60)
        assert child.wait(30) == 0, child.describe()
        received, extra, in_order, first_bad = int(words[0]), int(words[1]), words[2], words[3]
        print(f"\n[faults] stopped receiver: {sent} packets sent before the sender blocked; got {received}")
        assert in_order == "True", f"first packet out of order or damaged: {first_bad}"
        assert (received, extra) == (total, 0)
    finally:
        sender.close_connection()


# ---------------------------------------------------------------- damaged segments
def _garbage_magic(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"GARBAGE!")


def _foreign_file(path: Path) -> None:
    data = bytearray(os.urandom(20000))
    data[0] = ord("X")  # never all-zero magic (that would read as a half-created pipe)
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    os.truncate(path, 100)


def _capacity_past_end(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(32)
        f.write(struct.pack("=Q", 1 << 20))


# Child: try to open each endpoint, report the outcome as JSON (a crash or hang shows up as such).
OPEN_BOTH = """
import sys, json, pipebit
out = {}
for cls in (pipebit.SafeSender, pipebit.SafeReceiver):
    try:
        e = cls(sys.argv[1], 0)
    except Exception as exc:
        out[cls.__name__] = [type(exc).__name__, isinstance(exc, pipebit.PipeFormatError), str(exc)]
    else:
        e.close_connection()
        out[cls.__name__] = ["opened", False, ""]
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize(
    ("damage", "create_first", "keyword"),
    [
        pytest.param(_garbage_magic, True, "magic", id="garbage-magic"),
        pytest.param(_foreign_file, False, "magic", id="foreign-file"),
        pytest.param(_truncated, True, "100 bytes", id="truncated"),
        pytest.param(_capacity_past_end, True, "capacity", id="capacity-past-end"),
    ],
)
def test_damaged_segment_is_refused_with_a_format_error(
    name: str, reaper: Reaper, damage: Callable[[Path], None], create_first: bool, keyword: str
) -> None:
    path = segment_path(name)
    if create_first:
        with pipebit.SafeSender(name, 0, capacity=8192) as sender:
            sender.send([1, 2, 3])
        assert path.exists()
    damage(path)

    # In a separate process first: a crash (SIGBUS on a short mapping) or a hang is caught as such.
    child = Child(reaper, OPEN_BOTH, name)
    assert child.wait(30) == 0, child.describe()
    outcome = json.loads(child.out[-1])
    for endpoint, (kind, is_format_error, message) in outcome.items():
        assert is_format_error, f"{endpoint} on a damaged segment: {kind}: {message}"
        assert name in message, f"{endpoint}'s message does not name the pipe: {message}"
        assert keyword in message, f"{endpoint}'s message does not say what is wrong: {message}"

    for cls in (pipebit.SafeSender, pipebit.SafeReceiver):
        with pytest.raises(pipebit.PipeFormatError, match=keyword) as info:
            cls(name, 0)
        assert name in str(info.value)
    assert path.exists(), "a damaged segment must be refused, not silently replaced"

    with pytest.raises(pipebit.PipeFormatError):
        pipebit.remove(name)  # without force, a damaged segment is reported, not removed
    removed = pipebit.remove(name, force=True)
    assert _shm.segment_name(name) in removed
    assert not path.exists()
    # The name is usable again.
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        sender.send(["fresh"])
        assert receive_n(receiver, 1, timeout=10) == [["fresh"]]


# ----------------------------------------------------------------- damaged records
def _corrupt_payload(f: Any, payload_len: int) -> None:
    f.seek(L.DATA_OFFSET + L.RECORD_HEADER)
    f.write(b"\xc1" * min(8, payload_len))  # 0xc1 is never valid MessagePack


def _corrupt_length(f: Any, payload_len: int) -> None:
    f.seek(L.DATA_OFFSET)
    f.write(struct.pack("=I", 0x7FFFFFF0))  # a record "longer" than the whole ring


@pytest.mark.parametrize("corrupt", [_corrupt_payload, _corrupt_length], ids=["payload", "length"])
def test_corrupt_record_raises_and_receiver_recovers(name: str, corrupt: Callable[[Any, int], None]) -> None:
    capacity = 8192
    with pipebit.SafeSender(name, 0, capacity=capacity) as sender:
        for i in range(150):
            sender.send([i, "x" * 20])
        sender.flush(timeout=10)
    path = segment_path(name)
    with path.open("r+b") as f:
        header = f.read(L.DATA_OFFSET)
        tail = struct.unpack_from("=Q", header, 136)[0]
        assert tail == 0, "precondition: the first record is at the start of the data area"
        f.seek(L.DATA_OFFSET)
        payload_len, count, first_seq = L.RECORD.unpack(f.read(L.RECORD_HEADER))
        assert (first_seq, count > 0, payload_len > 0) == (0, True, True), "precondition: a valid first record"
        corrupt(f, payload_len)

    receiver = pipebit.SafeReceiver(name, 0, start="oldest")
    sender = pipebit.SafeSender(name, 0)
    raised: pipebit.CorruptPacketError | None = None
    close_error: BaseException | None = None
    try:
        valid: list[Any] = []
        deadline = time.monotonic() + 10
        while raised is None and time.monotonic() < deadline:
            try:
                valid += receiver.receive(timeout=0.2)
            except pipebit.CorruptPacketError as exc:
                raised = exc  # kept, as a caller logging or re-raising it later would
        assert raised is not None, f"no CorruptPacketError within 10s; got {len(valid)} packets"
        for p in valid:  # whatever came before the error is genuine
            assert isinstance(p, list), p
            assert len(p) == 2, p
            assert p[1] == "x" * 20, p
            assert 0 <= p[0] < 150, p
        assert [p[0] for p in valid] == sorted({p[0] for p in valid})

        # The damage costs only its record when the records after it can still be found
        # (a bad payload); a bad length hides where the next record starts, so the
        # receiver skips to the newest commit.  Either way it keeps working: new packets
        # (more than a ring's worth, so the writer also steps over the damaged record)
        # all arrive, in order.
        after_damage = [[i, "x" * 20] for i in range(count, 150)] if corrupt is _corrupt_payload else []
        fresh = [[1000 + i, "y" * 20] for i in range(600)]
        for p in fresh:
            sender.send(p, timeout=30)
        sender.flush(timeout=30)
        got = receive_n(receiver, len(after_damage) + len(fresh), timeout=30)
        assert got == after_damage + fresh
        assert receiver.receive(timeout=0.2) == []
    finally:
        sender.close_connection()
        try:
            receiver.close_connection()
        except Exception as exc:
            close_error = exc
    assert close_error is None, (
        f"close_connection() failed while the CorruptPacketError is still referenced: {close_error!r}"
    )
    assert name in str(raised), f"the CorruptPacketError does not name the pipe: {raised}"


def test_receiver_that_met_a_corrupt_record_closes_cleanly(name: str) -> None:
    # Its background thread meets the damaged record and keeps the error for the next
    # receive(); closing before that call must still work (and detach).
    with pipebit.SafeSender(name, 0, capacity=8192) as sender:
        sender.send([1, "x"])
    with segment_path(name).open("r+b") as f:
        f.seek(L.DATA_OFFSET + L.RECORD_HEADER)
        f.write(b"\xc1")
    receiver = pipebit.SafeReceiver(name, 0, start="oldest")
    time.sleep(0.5)
    receiver.close_connection()
    assert receiver.closed
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0, start="new") as fresh:
        sender.send([2, "y"])
        assert receive_n(fresh, 1, timeout=10) == [[2, "y"]]
