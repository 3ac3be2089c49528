"""Reliability under faults and hostile input: what docs/reliability.md promises, proved.

Real processes, real signals, real shared memory; nothing is mocked.  Children
are fresh interpreters started through ``reaper`` (killed at teardown whatever
happens), except where a test needs dozens of short-lived receivers: those are
forked by a *fork server* child (one interpreter, many cheap ``fork()`` s), and
die with it (``PR_SET_PDEATHSIG``).

Every packet a test streams is ``[source, seq, blob(source, seq), crc32(blob)]``,
so a receiver can tell a torn, foreign or replayed packet from a genuine one,
and check that each source's packets arrive contiguous and in order.

Tests that already exist elsewhere are not repeated here; docs/reliability.md
lists them next to these.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable

import posix_ipc
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import pipebit
from pipebit import _codec, _shm
from pipebit import _layout as L
from pipebit._pipe import Pipe, open_pipe
from pipebit._ring import RingReader, start_position

from .conftest import Reaper
from .helpers import Child, poke, poke_head, private_shm_prefix, ring_records, segment_path, wait_until

SHM = Path("/dev/shm")
NOBODY = 65534
NOISY_MACHINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


# ----------------------------------------------------------------------- packets
def blob(source: int, seq: int) -> bytes:
    """The payload of packet ``seq`` of ``source``: its length and content depend on both."""
    return bytes([(source + seq) % 251]) * (seq % 200)


def packet(source: int, seq: int) -> list[Any]:
    data = blob(source, seq)
    return [source, seq, data, zlib.crc32(data)]


class StreamCheck:
    """Checks packets ``[source, seq, blob, crc]``: each whole and genuine, and each
    source's packets contiguous and in order from the first one seen."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.first: dict[int, int] = {}
        self.problems: list[str] = []
        self.count = 0

    def feed(self, packets: list[Any]) -> None:
        for p in packets:
            genuine = (
                type(p) is list
                and len(p) == 4
                and type(p[0]) is int
                and type(p[1]) is int
                and p[2] == blob(p[0], p[1])
                and p[3] == zlib.crc32(p[2])
            )
            if not genuine:
                self.problems.append(f"torn, foreign or malformed packet {repr(p)[:100]}")
                continue
            source, seq = p[0], p[1]
            expected = self.next.get(source)
            if expected is None:
                self.first[source] = seq
            elif seq != expected:
                self.problems.append(f"source {source}: seq {seq} where {expected} was due")
            self.next[source] = seq + 1
            self.count += 1


class Drain:
    """A receiver read continuously by a thread, every packet checked."""

    def __init__(self, receiver: pipebit.SafeReceiver) -> None:
        self.receiver = receiver
        self.check = StreamCheck()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.receiver.receive(timeout=0.1)
            except BaseException as exc:  # receive() must never raise here
                self.errors.append(exc)
                return
            with self.lock:
                self.check.feed(batch)

    def received(self, source: int) -> int:
        """How many packets of ``source`` arrived (its packets count from 0 in these tests)."""
        with self.lock:
            return self.check.next.get(source, 0)

    @property
    def count(self) -> int:
        with self.lock:
            return self.check.count

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.receiver.close_connection()

    def verify(self, what: str) -> None:
        assert not self.errors, f"{what}: receive() raised {self.errors[0]!r}"
        assert not self.check.problems, f"{what}: {len(self.check.problems)} problems, first {self.check.problems[:5]}"


class Stream:
    """A sender in a thread sending ``packet(source, 0), packet(source, 1), ...`` until stopped."""

    def __init__(self, sender: pipebit.SafeSender, source: int = 0) -> None:
        self.sender = sender
        self.source = source
        self.sent = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sender.send(packet(self.source, self.sent), timeout=0.2)
            except pipebit.PipeTimeoutError:
                continue  # held back by a receiver: try the same packet again
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.sent += 1
            if self.sent % 64 == 0:
                time.sleep(0.0005)  # leave the two cores some room for everyone else

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, f"send() raised {self.errors[0]!r}"
        self.sender.flush(timeout=60)
        self.sender.close_connection()


# ------------------------------------------------------------------------ children


def committed_head(name: str) -> int:
    """The ring's ``head``, read from the segment without taking any lock."""
    with segment_path(name).open("rb") as f:
        f.seek(L.HEAD * 8)
        return int(struct.unpack("=Q", f.read(8))[0])


# Streams packet(source, 0), packet(source, 1), ...: forever (limit < 0) or ``limit``
# packets, then flushes and says so; with "linger" it then sleeps instead of exiting.
STREAM = """
import sys, time, zlib, pipebit
name, source, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = pipebit.SafeSender(name, 0)
print("ready", flush=True)
seq = 0
while limit < 0 or seq < limit:
    data = bytes([(source + seq) % 251]) * (seq % 200)
    s.send([source, seq, data, zlib.crc32(data)])
    seq += 1
    if seq % 64 == 0:
        time.sleep(0.0005)
s.flush(timeout=60)
print("flushed", seq, flush=True)
if "linger" in sys.argv:
    time.sleep(3600)
"""

# A sender that stops part-way through a commit, holding the writers' lock, and waits
# to be killed.  It follows RingWriter.commit step by step (room check, dropping
# retained records, record header, payload, packet count) and stops after ``phase``;
# the record it leaves would read as four ["GHOST", ...] packets if anyone read it.
HALF_WRITER = """
import sys, time
from pipebit import _codec
from pipebit import _layout as L
from pipebit._pipe import open_pipe
from pipebit._ring import RingWriter

name, phase = sys.argv[1], sys.argv[2]
pipe = open_pipe(name, L.MODEL_SAFE, capacity=None, packet_len=None, override=False)
slot = pipe.claim_slot(L.ROLE_SENDER)
writer = RingWriter(pipe)
h, data, cap = pipe.header, pipe.data, pipe.capacity
payload = _codec.join_batch([_codec.encode(["GHOST", i, "g" * 40]) for i in range(4)])
length = L.align(L.RECORD_HEADER + len(payload))
while True:
    pipe.lock.acquire()
    head = h[L.HEAD]
    offset = head % cap
    if phase == "locked":
        break
    lowest, _ = writer._lowest_cursor(h, head)
    if length <= cap - offset and lowest >= head + length - cap:
        break
    pipe.lock.release()  # no room, or the record would need a wrap mark: let the stream move on
    time.sleep(0.001)
if phase != "locked":
    writer._drop_retained(head + length - cap, head)
if phase in ("header", "half", "full", "counted"):
    L.RECORD.pack_into(data, offset, len(payload), 4, h[L.PACKETS])
if phase in ("half", "full", "counted"):
    n = len(payload) // 2 if phase == "half" else len(payload)
    data[offset + L.RECORD_HEADER : offset + L.RECORD_HEADER + n] = payload[:n]
if phase == "counted":
    h[L.PACKETS] += 4
    h[L.LAST_WRITE_NS] = time.time_ns()
print("ready", phase, head, flush=True)
time.sleep(3600)
"""

# A receiver that attaches and then never calls receive(): with max_cached=1 its
# background thread stops after one record, so it holds senders back.
STALLED_RECEIVER = """
import sys, time, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0, capacity=int(sys.argv[2]), max_cached=1)
print("ready", flush=True)
time.sleep(3600)
"""


# ================================================================== SIGKILLed senders
HALF_WRITE_PHASES = ["locked", "tail", "header", "half", "full", "counted"]


def test_sender_killed_holding_the_lock_mid_write_or_between_batches(name: str, reaper: Reaper) -> None:
    """Kill a sender at every step of a commit (lock held throughout) and between batches.

    The kernel drops the dead sender's flock, so a live streaming sender carries
    on; its packets, and those of a sender killed after a flush, all arrive
    exactly once and in order; the half-written record is never read.
    """
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    phases = [*HALF_WRITE_PHASES, "between-batches"]
    rng.shuffle(phases)
    drain = Drain(pipebit.SafeReceiver(name, 0, capacity=65536))
    resumed: dict[str, float] = {}
    try:
        stream = Child(reaper, STREAM, name, "0", "-1")
        stream.expect("ready", 30)
        wait_until(lambda: drain.received(0) >= 500, 30, f"the stream to flow (seed {seed})")
        for k, phase in enumerate(phases):
            time.sleep(rng.uniform(0.0, 0.2))  # a random moment of the stream
            if phase == "between-batches":
                source = 100 + k
                victim = Child(reaper, STREAM, name, str(source), "500", "linger")
                victim.expect("flushed", 30)
                victim.kill()
                wait_until(lambda s=source: drain.received(s) >= 500, 30, f"the killed sender's packets (seed {seed})")
                assert drain.received(source) == 500
                continue
            victim = Child(reaper, HALF_WRITER, name, phase)
            victim.expect("ready", 30)
            head = committed_head(name)
            time.sleep(0.3)
            assert committed_head(name) == head, f"{phase}: the stream committed while the lock was held (seed {seed})"
            held = drain.received(0)
            killed_at = time.monotonic()
            victim.kill()
            assert victim.proc.returncode == -signal.SIGKILL, victim.describe()
            wait_until(
                lambda h=held: drain.received(0) >= h + 500,
                30,
                f"the stream to resume after a sender died in phase {phase!r} (seed {seed})",
            )
            resumed[phase] = time.monotonic() - killed_at
        time.sleep(rng.uniform(0.0, 0.3))
        stream.kill()  # and the streaming sender itself, at a random point of its stream
        final = Child(reaper, STREAM, name, "999", "2000")
        assert final.wait(60) == 0, final.describe()
        wait_until(lambda: drain.received(999) >= 2000, 30, f"the last sender's packets (seed {seed})")
        time.sleep(0.3)
        assert drain.received(999) == 2000
        # A receiver attaching now reads the retained records: whole, no ghost.
        with pipebit.SafeReceiver(name, 0, start="oldest") as late:
            retained = StreamCheck()
            while batch := late.receive(timeout=0.5):
                retained.feed(batch)
        assert not retained.problems, f"retained records (seed {seed}): {retained.problems[:5]}"
        assert retained.count > 0
    finally:
        drain.stop()
    drain.verify(f"seed {seed}")
    print(
        "\n[reliability] stream resumed after a sender was SIGKILLed holding the lock: "
        + ", ".join(f"{phase} {t * 1000:.0f} ms" for phase, t in resumed.items())
        + f"; packets checked: {drain.check.count}"
    )


def test_sender_killed_while_waiting_for_room_is_no_longer_counted_as_waiting(name: str, reaper: Reaper) -> None:
    """``writers_waiting`` counts senders asleep waiting for room (``pipebit ls`` shows
    ``blocked``); a sender SIGKILLed while asleep there must not stay counted."""
    stalled = Child(reaper, STALLED_RECEIVER, name, "8192")
    stalled.expect("ready", 30)
    sender = Child(reaper, STREAM, name, "0", "-1")
    sender.expect("ready", 30)
    wait_until(lambda: pipebit.pipe_stats(name).writers_waiting >= 1, 30, "the sender to wait for room")
    sender.kill()
    stalled.kill()
    # The pipe itself is fine: what was delivered is whole, and a new sender carries on.
    with pipebit.SafeReceiver(name, 0, start="oldest") as receiver, pipebit.SafeSender(name, 0) as fresh:
        check = StreamCheck()
        while batch := receiver.receive(timeout=0.5):
            check.feed(batch)
        for seq in range(300):
            fresh.send(packet(1, seq))
        fresh.flush(timeout=30)
        deadline = time.monotonic() + 30
        while check.next.get(1, 0) < 300 and time.monotonic() < deadline:
            check.feed(receiver.receive(timeout=0.5))
        assert not check.problems, check.problems[:5]
        assert check.next.get(1) == 300
        time.sleep(1.0)
        snap = pipebit.pipe_stats(name)
    print(f"\n[reliability] after the waiting sender was killed: writers_waiting={snap.writers_waiting}")
    assert snap.writers_waiting == 0, (
        f"writers_waiting is {snap.writers_waiting} although no sender is waiting (the one that was is dead, "
        "and a live one just delivered 300 packets): `pipebit ls` shows the pipe as blocked, and every "
        "receiver read posts the writers' semaphore for nobody"
    )


# ======================================================== SIGKILLed receivers, churn
FORK_SERVER = """
import ctypes, json, os, signal, sys, time, zlib
import pipebit

name = sys.argv[1]
server = os.getpid()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children we kill
libc = ctypes.CDLL(None, use_errno=True)


def say(kind, **fields):
    os.write(1, (kind + " " + json.dumps(fields) + "\\n").encode())  # one write: lines never mix


def run(job):
    mode, jid = job["mode"], job["jid"]
    r = pipebit.SafeReceiver(name, 0, start=job.get("start", "new"), max_cached=1 if mode == "hold" else 65536)
    slot = r.stats().slot
    say("ready", jid=jid, pid=os.getpid(), slot=slot)
    if mode == "hold":
        time.sleep(3600)
    first = last = None
    n, bad = 0, []
    end = time.monotonic() + job.get("life", 3600)
    report = 0.0
    while time.monotonic() < end:
        for p in r.receive(timeout=0.05):
            ok = (
                type(p) is list and len(p) == 4 and p[0] == 0 and type(p[1]) is int
                and p[2] == bytes([p[1] % 251]) * (p[1] % 200) and zlib.crc32(p[2]) == p[3]
            )
            if not ok:
                bad.append("malformed " + repr(p)[:80])
                continue
            if last is not None and p[1] != last + 1:
                bad.append(f"seq {p[1]} after {last}")
            if first is None:
                first = p[1]
            last = p[1]
            n += 1
        if time.monotonic() >= report:
            say("progress", jid=jid, first=first, last=last, n=n, bad=bad[:5])
            report = time.monotonic() + 0.1
    r.close_connection()
    say("result", jid=jid, pid=os.getpid(), slot=slot, first=first, last=last, n=n, bad=bad[:5])


while True:
    line = sys.stdin.readline()
    if not line:
        break
    for job in json.loads(line):
        if os.fork() == 0:
            code = 0
            try:
                libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
                if os.getppid() != server:
                    os._exit(1)
                run(job)
            except BaseException as exc:
                say("error", jid=job["jid"], error=f"{type(exc).__name__}: {exc}")
                code = 1
            os._exit(code)
"""


class ForkServer:
    """Forks receivers on demand (jobs as JSON), and collects what they report."""

    def __init__(self, reaper: Reaper, name: str) -> None:
        self.proc = reaper.spawn(FORK_SERVER, name, stdin=subprocess.PIPE)
        self.ready: dict[int, dict[str, Any]] = {}
        self.progress: dict[int, dict[str, Any]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        self._jids = itertools.count()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                kind, _, rest = line.partition(" ")
                fields = json.loads(rest)
                with self.cond:
                    if kind == "error":
                        self.errors.append(fields["error"])
                    else:
                        {"ready": self.ready, "progress": self.progress, "result": self.results}[kind][
                            fields["jid"]
                        ] = fields
                    self.cond.notify_all()
        except (ValueError, OSError):
            pass

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self.stderr.append(line)
        except (ValueError, OSError):
            pass

    def start(self, jobs: list[dict[str, Any]]) -> list[int]:
        """Fork one receiver per job; returns their job ids."""
        jids = []
        for job in jobs:
            job["jid"] = next(self._jids)
            jids.append(job["jid"])
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(jobs) + "\n")
        self.proc.stdin.flush()
        return jids

    def wait_ready(self, jids: list[int], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(j in self.ready for j in jids):
                assert not self.errors, f"a forked receiver failed: {self.errors[:3]}"
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    pytest.fail(f"forked receivers not ready within {timeout}s; stderr: {''.join(self.stderr)[-2000:]}")
                self.cond.wait(remaining)
            return [self.ready[j] for j in jids]

    def kill(self, jid: int) -> bool:
        """SIGKILL a child; ``False`` if it had already ended its life (and was reaped)."""
        try:
            os.kill(self.ready[jid]["pid"], signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        """End the server (its children die with it) and any child still around."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        with self.cond:
            pids = [r["pid"] for r in self.ready.values()]
        for pid in pids:
            try:
                stat_line = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat_line[stat_line.rindex(")") + 2 :].split()[1]) == self.proc.pid:  # still ours
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended between the look and the kill
                    pass
        self.proc.wait(30)


def wait_dead(name: str, pids: set[int], timeout: float) -> float:
    """Wait until none of ``pids`` holds a live slot of the pipe (their flocks are gone)."""
    return wait_until(
        lambda: not any(p.alive and p.pid in pids for p in pipebit.pipe_stats(name).participants),
        timeout,
        f"the slots of {len(pids)} killed receivers to show dead",
    )


def test_a_hundred_killed_receivers_release_senders_and_their_slots(name: str, reaper: Reaper) -> None:
    """Receivers SIGKILLed while lagging or mid-read: senders resume, and 100 more kills
    in rounds of 10 never fill the 64-slot table: every slot is reused."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    capacity = 65536
    ring_worth = 3 * capacity // 200  # packets: three rings' worth, so every dead cursor was passed
    stream = Stream(pipebit.SafeSender(name, 0, capacity=capacity))
    drain = Drain(pipebit.SafeReceiver(name, 0))
    server = ForkServer(reaper, name)
    single: list[float] = []
    highest_slot = 0
    kills = 0
    try:
        wait_until(lambda: drain.count >= 1000, 30, "the stream to flow")
        # One lagging receiver at a time: how long the sender stays blocked after the kill.
        for _ in range(3):
            (jid,) = server.start([{"mode": "hold"}])
            server.wait_ready([jid], 30)
            wait_until(lambda: pipebit.pipe_stats(name).writers_waiting >= 1, 30, "the lagging receiver to block")
            time.sleep(rng.uniform(0.0, 0.3))
            before = drain.count
            assert server.kill(jid), "a holding receiver ended by itself"
            kills += 1
            single.append(wait_until(lambda b=before: drain.count >= b + ring_worth, 30, "the sender to resume"))
        # 100 more: rounds of 10 attached together (some lagging, some reading), killed together.
        for _ in range(10):
            modes = [rng.choice(["hold", "read", "read"]) for _ in range(10)]
            jids = server.start([{"mode": m} for m in modes])
            ready = server.wait_ready(jids, 60)
            highest_slot = max(highest_slot, *(r["slot"] for r in ready))
            time.sleep(rng.uniform(0.0, 0.2))
            for jid in rng.sample(jids, len(jids)):
                assert server.kill(jid), "a receiver of the round ended by itself"
            kills += len(jids)
            wait_dead(name, {r["pid"] for r in ready}, 30)
        before = drain.count
        recovery = wait_until(lambda: drain.count >= before + ring_worth, 60, "the sender to resume after round 10")
        assert not server.errors, server.errors[:3]
        snap = pipebit.pipe_stats(name)
        alive = [p for p in snap.participants if p.alive]
        assert sorted(p.pid for p in alive) == [os.getpid(), os.getpid()], alive
        assert len(snap.participants) <= L.SLOT_COUNT
        # At most 2 + 10 were ever alive at once, and a dead slot is reused by the next claim.
        assert highest_slot < 12, f"slot {highest_slot} was claimed: dead receivers' slots were not reused"
        # The table has room for everyone else: 62 more attach.
        extra: list[pipebit.SafeReceiver] = []
        try:
            for _ in range(L.SLOT_COUNT - 2):
                extra.append(pipebit.SafeReceiver(name, 0, start="new"))
        finally:
            for receiver in extra:
                receiver.close_connection()
    finally:
        server.close()
        stream.stop()
        wait_until(lambda: drain.received(0) >= stream.sent, 60, "the drain to catch up")
        drain.stop()
    drain.verify(f"seed {seed}")
    assert drain.received(0) == stream.sent
    print(
        f"\n[reliability] {kills} receivers SIGKILLed (seed {seed}); sender resumed "
        f"{', '.join(f'{t:.2f}' for t in single)} s after a lagging receiver's kill, "
        f"{recovery:.2f} s after a round of 10; highest slot used {highest_slot}; "
        f"{stream.sent} packets streamed, all received in order"
    )


def test_receivers_joining_and_leaving_while_a_sender_streams(name: str, reaper: Reaper) -> None:
    """Churn: receivers attach (from the oldest retained packet or only new ones), read a
    while, and detach or get SIGKILLed, six at a time, for several seconds."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    stream = Stream(pipebit.SafeSender(name, 0, capacity=65536))
    drain = Drain(pipebit.SafeReceiver(name, 0))
    server = ForkServer(reaper, name)
    jobs: dict[int, dict[str, Any]] = {}
    kill_at: dict[int, float] = {}
    killed: set[int] = set()
    try:
        wait_until(lambda: drain.count >= 1000, 30, "the stream to flow")
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            with server.cond:
                live = [j for j in jobs if j not in server.results and j not in killed]
            for _ in range(6 - len(live)):
                job = {"mode": "churn", "start": rng.choice(["new", "oldest"]), "life": rng.uniform(0.3, 1.5)}
                (jid,) = server.start([job])
                jobs[jid] = job
                if rng.random() < 0.3:
                    kill_at[jid] = time.monotonic() + rng.uniform(0.1, job["life"])
            now = time.monotonic()
            for jid, when in list(kill_at.items()):
                if now >= when and jid in server.ready:
                    if server.kill(jid):  # else it ended first: its result comes as any other's
                        killed.add(jid)
                    del kill_at[jid]
            assert not server.errors, f"a receiver failed (seed {seed}): {server.errors[:3]}"
            time.sleep(0.02)
        # Kills planned but not yet due are dropped: those receivers run their course.
        wait_until(
            lambda: all(j in server.results or j in killed for j in jobs),
            60,
            f"every receiver to finish (seed {seed})",
        )
    finally:
        server.close()
        stream.stop()
        wait_until(lambda: drain.received(0) >= stream.sent, 60, "the drain to catch up")
        drain.stop()
    drain.verify(f"seed {seed}")
    assert drain.received(0) == stream.sent
    assert not server.errors, server.errors[:3]
    reports = {j: server.results.get(j) or server.progress.get(j) or {} for j in jobs}
    slots = {server.ready[j]["slot"] for j in jobs if j in server.ready}
    for jid, report in reports.items():
        what = f"receiver {jid} ({jobs[jid]['start']}, {'killed' if jid in killed else 'left'}; seed {seed})"
        assert not report.get("bad"), f"{what}: {report['bad']}"
        if report.get("n"):
            assert report["last"] - report["first"] + 1 == report["n"], f"{what}: not contiguous: {report}"
        if jid not in killed and jobs[jid]["start"] == "oldest":
            assert report.get("n"), f"{what} got nothing, although the pipe retains packets: {report}"
    got = sum(1 for r in reports.values() if r.get("n"))
    print(
        f"\n[reliability] churn (seed {seed}): {len(jobs)} receivers, {len(killed)} SIGKILLed, "
        f"{got} got packets, all contiguous; {len(slots)} distinct slots used; {stream.sent} packets streamed"
    )
    assert len(jobs) >= 20, "too few receivers came and went to call it churn"
    assert len(slots) <= 16, f"{len(slots)} slots for at most ~8 receivers alive at once: slots are not reused"


# ============================================================= the 64-slot table
TRY_ATTACH = """
import json, sys, pipebit
try:
    r = pipebit.SafeReceiver(sys.argv[1], 0)
except Exception as exc:
    print(json.dumps([type(exc).__name__, isinstance(exc, pipebit.PipeBitError), str(exc)]), flush=True)
else:
    print(json.dumps(["attached", False, str(r.stats().slot)]), flush=True)
    r.close_connection()
"""


def test_the_participant_beyond_64_gets_pipe_busy_and_nothing_breaks(name: str, reaper: Reaper) -> None:
    sender = pipebit.SafeSender(name, 0, capacity=65536)
    receivers = [pipebit.SafeReceiver(name, 0, start="new") for _ in range(L.SLOT_COUNT - 1)]
    try:
        snap = pipebit.pipe_stats(name)
        assert sorted(p.slot for p in snap.participants if p.alive) == list(range(L.SLOT_COUNT))
        with pytest.raises(pipebit.PipeBusyError, match="64") as info:
            pipebit.SafeReceiver(name, 0)
        assert name in str(info.value)
        with pytest.raises(pipebit.PipeBusyError):
            pipebit.SafeSender(name, 0)  # senders count too
        child = Child(reaper, TRY_ATTACH, name)
        assert child.wait(30) == 0, child.describe()
        kind, is_pipebit_error, message = json.loads(child.out[-1])
        assert (kind, is_pipebit_error) == ("PipeBusyError", True), message
        # Nothing was damaged: every one of the 63 receivers gets every packet.
        for seq in range(20):
            sender.send(packet(0, seq))
        sender.flush(timeout=30)
        for k, receiver in enumerate(receivers):
            check = StreamCheck()
            deadline = time.monotonic() + 30
            while check.count < 20 and time.monotonic() < deadline:
                check.feed(receiver.receive(timeout=1.0))
            assert (check.count, check.first.get(0), check.problems) == (20, 0, []), f"receiver {k}"
        # A slot that frees up is available again, to another process.
        receivers.pop(17).close_connection()
        child = Child(reaper, TRY_ATTACH, name)
        assert child.wait(30) == 0, child.describe()
        assert json.loads(child.out[-1])[:2] == ["attached", False], child.describe()
    finally:
        sender.close_connection()
        for receiver in receivers:
            receiver.close_connection()


# ==================================================================== /dev/shm full
def run_in_private_shm(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prefix = private_shm_prefix("2m")
    assert prefix is not None
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=90, check=False
    )


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    died = f" (killed by {signal.Signals(-result.returncode).name})" if result.returncode < 0 else ""
    assert result.returncode == 0, f"child exit {result.returncode}{died}\n{result.stdout}\n{result.stderr[-3000:]}"
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


CREATE_TOO_BIG = """
import json, os, sys
import pipebit

name, model, capacity, touch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "touch"
lock_dir = f"/dev/shm/pipebit-{os.getuid()}"
def entries():
    found = set(os.listdir("/dev/shm"))
    if os.path.isdir(lock_dir):
        found |= {"lockdir/" + e for e in os.listdir(lock_dir)}
    return found
try:  # no such pipe: what is counted below is this pipe's own objects
    pipebit.remove(name)
except pipebit.PipeNotFoundError:
    pass
token = pipebit._shm.segment_name(name)[len("/pipebit-"):]
before = entries()
out = {}
try:
    if model == "safe":
        endpoint = pipebit.SafeSender(name, 0, capacity=capacity)
    else:
        endpoint = pipebit.FastSender(name, 0, slot_size=capacity // 16)
except Exception as exc:
    out.update(error=type(exc).__name__, pipebit=isinstance(exc, pipebit.PipeBitError), message=str(exc))
else:
    out.update(error=None)
    if touch:  # a private tmpfs: show what happens when the memory is used (SIGBUS, without a reservation)
        for i in range(capacity // 60000 + 2):
            endpoint.send([i, bytes(50000)])
        if model == "safe":
            endpoint.flush(timeout=30)
    endpoint.close_connection()
    pipebit.remove(name, force=True)
out["left"] = sorted(e for e in entries() - before if token in e or name in e)
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("model", ["safe", "fast"])
def test_full_dev_shm_is_a_clear_error_at_creation_not_a_sigbus(name: str, model: str) -> None:
    if private_shm_prefix("2m") is not None:
        # A private 2 MiB /dev/shm: ask for a 3 MiB pipe, and touch every page if it is created.
        result = run_in_private_shm(CREATE_TOO_BIG, name, model, str(3 << 20), "touch")
        where = "a private 2 MiB tmpfs"
    else:
        info = os.statvfs(SHM)
        free = info.f_bavail * info.f_frsize
        if free > 8 << 30:
            pytest.skip(f"/dev/shm has {free >> 30} GiB free and no private tmpfs can be mounted (unshare)")
        capacity = L.align(min(free + (64 << 20), L.MAX_CAPACITY - (1 << 20)))
        result = subprocess.run(
            [sys.executable, "-c", CREATE_TOO_BIG, name, model, str(capacity), "no-touch"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        where = f"/dev/shm with {free} bytes free"
    got = outcome(result)
    print(f"\n[reliability] {model} pipe larger than {where}: {got}")
    assert got["error"] is not None, f"the pipe was created in {where}: {got}"
    assert got["pipebit"], f"creating a pipe larger than {where} raised {got['error']}: {got['message']}"
    assert name in got["message"], got["message"]
    assert got["left"] == [], f"a refused pipe left {got['left']} behind"


KEEP_WORKING_WHEN_FULL = """
import json, os, sys, threading, time
import pipebit

name, model = sys.argv[1], sys.argv[2]
out = {"error": None}
if model == "safe":
    sender = pipebit.SafeSender(name, 0, capacity=256 << 10)
    receiver = pipebit.SafeReceiver(name, 0, start="new", max_cached=40)
else:
    sender = pipebit.FastSender(name, 0, slot_size=16 << 10)
    receiver = pipebit.FastReceiver(name, 0)
# Unbuffered: a last, partial write must not leave bytes in a buffer for close() to fail on.
with open("/dev/shm/filler", "wb", buffering=0) as filler:  # now fill /dev/shm to the last page
    try:
        while True:
            filler.write(bytes(16384))
            filler.flush()
    except OSError:
        pass
out["free_after_filling"] = os.statvfs("/dev/shm").f_bavail
total, got = 300, []
def drain():
    deadline = time.monotonic() + 40
    while len(got) < total and time.monotonic() < deadline:
        try:
            got.extend(receiver.receive(timeout=0.2))
        except Exception as exc:
            out["error"] = out["error"] or f"receive: {type(exc).__name__}: {exc}"
            return
        time.sleep(0.002)  # a receiver slower than the sender: the sender has to wait for room
thread = threading.Thread(target=drain)
thread.start()
try:
    for i in range(total):
        sender.send([i, bytes(8000)])
        if model == "fast":
            time.sleep(0.01)
    if model == "safe":
        sender.flush(timeout=40)
except Exception as exc:
    out["error"] = out["error"] or f"send: {type(exc).__name__}: {exc}"
thread.join()
out["received"] = len(got)
out["in_order"] = [p[0] for p in got] == sorted({p[0] for p in got})
try:  # one more receiver while /dev/shm is still full
    cls = pipebit.SafeReceiver if model == "safe" else pipebit.FastReceiver
    cls(name, 0).close_connection()
    out["late_receiver"] = "attached"
except Exception as exc:
    kind = type(exc).__name__ + (" (PipeBitError)" if isinstance(exc, pipebit.PipeBitError) else "")
    out["late_receiver"] = f"{kind}: {exc}"
os.unlink("/dev/shm/filler")
for endpoint in (sender, receiver):
    try:
        endpoint.close_connection(*([5.0] if endpoint is sender and model == "safe" else []))
    except Exception:
        pass
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("model", ["safe", "fast"])
def test_a_pipe_created_before_dev_shm_filled_up_keeps_working(name: str, model: str) -> None:
    """Its memory was reserved at creation; filling /dev/shm afterwards must not break it."""
    if private_shm_prefix("2m") is None:
        pytest.skip("needs a private tmpfs on /dev/shm (unshare -m as root, or unshare -r -m)")
    got = outcome(run_in_private_shm(KEEP_WORKING_WHEN_FULL, name, model))
    print(f"\n[reliability] {model} pipe, /dev/shm filled after creation: {got}")
    assert got["free_after_filling"] == 0, got
    assert got["error"] is None, f"the pipe broke when /dev/shm filled up: {got['error']}"
    if model == "safe":
        assert (got["received"], got["in_order"]) == (300, True), got
    else:
        assert got["received"] > 0, got
        assert got["in_order"], got
    late = got["late_receiver"]
    assert late == "attached" or "(PipeBitError)" in late, f"attaching while /dev/shm is full: {late}"


# =================================================================== hostile input
def valid_static(model: int = L.MODEL_SAFE, capacity: int = 8192, name: str = "fuzz") -> bytearray:
    header = bytearray(L.pack_static(model, capacity, 0, time.time_ns(), name))
    header[0:8] = L.MAGIC
    return header


STATIC_FIELDS = [(8, "I"), (12, "I"), (16, "I"), (20, "I"), (24, "Q"), (32, "Q"), (40, "Q"), (48, "Q"), (56, "Q")]


@st.composite
def static_headers(draw: st.DrawFn) -> tuple[bytes, int]:
    """(bytes, segment size): arbitrary, or a valid header with a field or bytes changed."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=400))
    else:
        model = draw(st.sampled_from([L.MODEL_SAFE, L.MODEL_FAST]))
        capacity = draw(st.sampled_from([1024, 4096, 8192, L.MAX_CAPACITY]))
        header = valid_static(model, capacity, draw(st.sampled_from(["a", "fuzz.pipe", "x" * 64])))
        for offset, fmt in draw(st.lists(st.sampled_from(STATIC_FIELDS), max_size=3)):
            bits = 32 if fmt == "I" else 64
            value = draw(st.one_of(st.integers(0, 2**bits - 1), st.sampled_from([0, 1, 2, 3, 64, 1024, 4352])))
            struct.pack_into("=" + fmt, header, offset, value)
        for index, value in draw(st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), max_size=4)):
            header[index] = value
        data = bytes(header) + draw(st.binary(max_size=64))
    if len(data) >= L.STATIC.size and draw(st.booleans()):
        size = draw(st.one_of(st.integers(0, 2**40), st.sampled_from([L.segment_size(8192), L.segment_size(1024)])))
    else:
        size = len(data)
    return data, size


@settings(max_examples=400, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(header=static_headers())
@example(header=(b"", 0))
@example(header=(bytes(valid_static()), L.segment_size(8192)))
@example(header=(bytes(valid_static()), L.segment_size(8192) - 1))
@example(header=(bytes(valid_static(name="é" * 32)), L.segment_size(8192)))
@example(header=(bytes(valid_static())[:56] + struct.pack("=Q", 65) + bytes(64), 1 << 20))
@example(header=(bytes(valid_static())[:64] + b"\xff" * 64, 1 << 20))
def test_header_parser_accepts_a_valid_header_or_refuses_with_a_layout_problem(header: tuple[bytes, int]) -> None:
    data, size = header
    for source in (data, memoryview(data)):
        try:
            info = L.read_static(source, size)
        except L.LayoutProblem as problem:
            reason = str(problem)
            info = None
        if info is None:
            assert reason, "a LayoutProblem must say what is wrong"
            continue
        assert isinstance(info, L.HeaderInfo)
        assert info.model in L.MODEL_NAMES
        assert (info.slot_count, info.data_offset) == (L.SLOT_COUNT, L.DATA_OFFSET)
        assert L.MIN_CAPACITY <= info.capacity <= L.MAX_CAPACITY
        assert info.capacity % L.ALIGN == 0
        assert L.segment_size(info.capacity) <= size
        assert 1 <= len(info.name.encode("utf-8")) <= L.NAME_FIELD


# ------------------------------------------------------------- the ring reader
RING = 4096


small_packets = st.lists(st.integers(-5, 300), max_size=3)


@st.composite
def ring_images(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    """(data area, head, tail, packets): records laid out from offset 0 -- valid ones,
    wrap marks, zero-packet records, forged headers, random bytes -- over random bytes;
    positions consistent with them, or not."""
    data = bytearray(random.Random(draw(st.integers(0, 2**32))).randbytes(RING))
    if draw(st.booleans()):
        data = bytearray(RING)
    offset = 0
    entries = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("valid"), st.lists(small_packets, min_size=1, max_size=4)),
                st.tuples(st.just("wrap"), st.just([])),
                st.tuples(st.just("empty"), st.just([])),
                st.tuples(st.just("forged"), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
                st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=64)),
            ),
            max_size=10,
        )
    )
    seq = draw(st.integers(0, 2**40))
    for kind, body in entries:
        if offset >= RING:
            break
        if kind == "valid":
            payload = _codec.join_batch([_codec.encode(p) for p in body])
            record = L.RECORD.pack(len(payload), len(body), seq) + payload
            seq += len(body)
        elif kind == "empty":  # a well-formed record of zero packets: no writer makes one
            record = L.RECORD.pack(1, 0, seq) + b"\x90"
        elif kind == "wrap":
            record = L.WRAP.pack(L.WRAP_MARK)
        elif kind == "forged":
            record = L.RECORD.pack(body[0], body[1], seq)
        else:
            record = body
        record = record[: RING - offset]
        data[offset : offset + len(record)] = record
        offset += L.align(max(len(record), 8))
    end = min(offset, RING)
    laps = draw(st.integers(0, 3))
    positions = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 8 * RING))
    tail = draw(st.one_of(st.just(laps * RING), positions))
    head = draw(st.one_of(st.just(laps * RING + end), st.just(tail + end), positions, st.just(2**40 + end)))
    packets = draw(st.one_of(st.just(seq), st.integers(0, 2**64 - 1)))
    return bytes(data), min(head, 2**64 - 1), tail, min(packets, 2**64 - 1)


def _ring_of(*records: bytes, fill: bytes = b"") -> bytes:
    data = bytearray(RING)
    offset = 0
    for record in records:
        data[offset : offset + len(record)] = record
        offset += L.align(len(record))
    if fill:
        while offset + len(fill) <= RING:
            data[offset : offset + len(fill)] = fill
            offset += L.align(len(fill))
        if offset < RING:
            data[offset : offset + 4] = L.WRAP.pack(L.WRAP_MARK)
    return bytes(data)


EMPTY_RECORD = L.RECORD.pack(1, 0, 0) + b"\x90"  # well-formed, zero packets
WRAP_AT_ZERO = _ring_of(L.WRAP.pack(L.WRAP_MARK))
ZERO_PACKET_RING = _ring_of(fill=EMPTY_RECORD)


def _prepare(image: tuple[bytes, int, int, int]) -> str:
    """A new pipe of RING bytes whose data area and positions are ``image``; returns its name."""
    data, head, tail, packets = image
    name = f"fuzz-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    pipe = open_pipe(name, L.MODEL_SAFE, capacity=RING, packet_len=None, override=False)
    try:
        pipe.data[:] = data
        pipe.header[L.TAIL] = tail
        pipe.header[L.PACKETS] = packets
        pipe.header[L.HEAD] = head
    finally:
        pipe.close()
    return name


def _bounded(call: Callable[[], Any], seconds: float) -> tuple[str, Any]:
    """Run ``call`` in a thread: ("value", result), ("raised", exc), or ("hang", None)."""
    box: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            box.append(("value", call()))
        except BaseException as exc:
            box.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else ("hang", None)


HANG_EXAMPLES = [
    (WRAP_AT_ZERO, 1 << 40, 0, 0),  # a wrap mark at offset 0 "skips" a whole lap, forever
    (ZERO_PACKET_RING, 1 << 40, 0, 0),  # laps of well-formed records of no packets
]


@settings(max_examples=150, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(image=ring_images(), start=st.sampled_from(["unread", "oldest", "new"]), limit=st.integers(1, 500))
@example(image=HANG_EXAMPLES[0], start="oldest", limit=100)
@example(image=HANG_EXAMPLES[1], start="oldest", limit=100)
@example(image=(_ring_of(fill=L.RECORD.pack(2, 1, 0) + b"\x91\x90"), 1 << 40, 0, 0), start="oldest", limit=50)
@example(image=(bytes(RING), 1 << 63, 1 << 63, 0), start="oldest", limit=10)
@example(image=(bytes(RING), 0, 1 << 40, 0), start="oldest", limit=10)
def test_ring_reader_returns_packets_or_corrupt_packet_error_on_any_ring(
    image: tuple[bytes, int, int, int], start: str, limit: int
) -> None:
    name = _prepare(image)
    pipe: Pipe = open_pipe(name, L.MODEL_SAFE, capacity=None, packet_len=None, override=False)
    slot = None
    try:

        def place(pipe: Pipe, base: int) -> None:
            cursor, seq = start_position(pipe, start)
            pipe.header[base + L.S_CURSOR] = cursor
            pipe.header[base + L.S_NEXT_SEQ] = seq

        slot = pipe.claim_slot(L.ROLE_RECEIVER, place)
        reader = RingReader(pipe, slot)
        for _ in range(12):
            kind, value = _bounded(lambda: reader.read(limit), 3.0)
            if kind == "hang":
                pipe.close()  # the spinning reader then fails on the released mapping, and ends
                pytest.fail(f"RingReader.read() did not return within 3 s (head {image[1]}, tail {image[2]})")
            assert kind != "raised", f"read() raised {value!r}: damage is reported in reader.problem"
            assert type(value) is list
            assert all(type(p) is list for p in value), value[:3]
            if reader.problem is not None:
                assert isinstance(reader.problem, pipebit.CorruptPacketError)
                assert name in str(reader.problem)
                continue
            if not value and not reader.available():
                break
    finally:
        if slot is not None:
            if pipe.closed:
                slot.lock.close()
            else:
                pipe.release_slot(slot)
        pipe.close()
        pipebit.remove(name, force=True)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=NOISY_MACHINE,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example may take seconds: no shrinking
)
@given(image=ring_images(), start=st.sampled_from(["unread", "oldest", "new"]))
@example(image=HANG_EXAMPLES[0], start="oldest")
def test_safe_receiver_on_any_ring_returns_lists_or_raises_and_closes(
    image: tuple[bytes, int, int, int], start: str
) -> None:
    name = _prepare(image)
    receiver = pipebit.SafeReceiver(name, 0, start=start, max_cached=1000)
    try:
        outcomes: list[Any] = []
        for _ in range(3):
            try:
                got = receiver.receive(timeout=0.05)
            except pipebit.CorruptPacketError as exc:
                outcomes.append(str(exc))
            else:
                assert type(got) is list
                assert all(type(p) is list for p in got)
                outcomes.append(len(got))
    finally:
        started = time.monotonic()
        receiver.close_connection()
        closing = time.monotonic() - started
        pipebit.remove(name, force=True)
    for problem in (o for o in outcomes if isinstance(o, str)):
        assert name in problem, f"the CorruptPacketError does not name the pipe: {problem}"
    thread_name = f"pipebit-{name}-receiver"
    wait_until(
        lambda: not any(t.name == thread_name and t.is_alive() for t in threading.enumerate()),
        5,
        "the receiver's thread to end",
    )
    assert closing < 5, (
        f"close_connection() took {closing:.1f}s: the receiver's thread did not stop (it spins on the ring); "
        f"outcomes {outcomes}"
    )


# ------------------------------------------------ corruption under a live receiver
def same_size(seq: int) -> list[Any]:
    """Packets whose records are all 48 bytes (seq 1000-65535 encode in 3 bytes)."""
    return [seq, "x" * 20]


@pytest.mark.parametrize("damage", ["payload", "length", "count", "head-forward", "head-backward"])
def test_damage_under_a_live_receiver_is_an_error_never_a_wrong_packet(name: str, damage: str) -> None:
    """Another process overwrites records or the ring's head while a receiver is attached.

    The receiver must raise ``CorruptPacketError`` (naming the pipe) rather than
    return a packet it already returned, or silently skip packets; then recover.
    ``head-forward`` makes the stale record above head look committed (a replay);
    ``head-backward`` makes the writer overwrite what the receiver has not read.
    """
    capacity = 8192
    sender = pipebit.SafeSender(name, 0, capacity=capacity)
    receiver = pipebit.SafeReceiver(name, 0, start="new", max_cached=1)  # its thread reads one record, then waits
    returned: list[int] = []
    errors: list[pipebit.CorruptPacketError] = []

    def receive_until(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            try:
                returned.extend(p[0] for p in receiver.receive(timeout=0.2))
            except pipebit.CorruptPacketError as exc:
                errors.append(exc)

    try:
        # Laps of identical 48-byte records, all read: the ring above head holds stale copies.
        for seq in range(1000, 1400):
            sender.send(same_size(seq))
            sender.flush(timeout=10)
            receive_until(lambda s=seq: bool(returned) and returned[-1] == s, 10)
        assert returned == list(range(1000, 1400))
        # Records the receiver has not read yet (its thread holds the first in its cache).
        for seq in range(1400, 1412):
            sender.send(same_size(seq))
            sender.flush(timeout=10)
        wait_until(lambda: receiver.stats().lag == 11, 10, "the receiver to cache one record")
        pending = {r[3] + 1000: r for r in ring_records(name)}  # start="new": the pipe's packet 0 is seq 1000
        position, length, count, _ = pending[1405]
        offset = L.DATA_OFFSET + position % capacity
        if damage == "payload":
            poke(name, offset + L.RECORD_HEADER, b"\xc1" * length)
        elif damage == "length":
            poke(name, offset, struct.pack("=I", 0x7FFFFFF0))
        elif damage == "count":
            poke(name, offset + 4, struct.pack("=I", count + 1))
        receive_until(lambda: len(returned) >= 1412 - 1000 or bool(errors), 10)
        if damage == "head-forward":
            poke_head(name, 48)
        elif damage == "head-backward":
            poke_head(name, -10 * 48)
        receive_until(lambda: bool(errors), 1.5)
        # Then the sender carries on (a record per packet, so records keep their places), and
        # the receiver recovers.
        for seq in range(3000, 3060):
            sender.send(same_size(seq))
            sender.flush(timeout=10)
        receive_until(lambda: bool(returned) and returned[-1] == 3059, 10)
    finally:
        sender.close_connection()
        receiver.close_connection()
    print(f"\n[reliability] {damage}: returned ...{returned[398:]}; errors {[str(e)[:90] for e in errors]}")
    duplicates = sorted({s for s in returned if returned.count(s) > 1})
    assert not duplicates, f"{damage}: packets returned twice: {duplicates}"
    assert returned == sorted(returned), f"{damage}: packets out of order: {returned[398:]}"
    for error in errors:
        assert name in str(error), f"the CorruptPacketError does not name the pipe: {error}"
    fresh = [s for s in returned if s >= 3000]
    missing = sorted(set(range(3000, 3060)) - set(fresh))
    if damage in ("payload", "length", "count"):
        assert len(errors) == 1, f"{damage}: expected one CorruptPacketError, got {errors}"
        assert returned[:405] == list(range(1000, 1405)), "packets before the damaged record must all arrive"
        assert not missing, f"{damage}: the receiver did not recover: missing {missing}"
    else:
        assert errors or not missing, (
            f"{damage}: packets {missing} were skipped without any error (the receiver read past "
            "records the writer had placed below its cursor)"
        )
        assert fresh[-1:] == [3059], f"{damage}: the receiver did not recover: {fresh}"


# ---------------------------------------------------- truncation under live endpoints
READ_FOREVER = """
import sys, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0)
print("ready", flush=True)
announced = False
while True:
    try:
        got = r.receive(timeout=0.2)
    except pipebit.PipeBitError as exc:
        print("error", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
        sys.exit(3)
    if got and not announced:
        print("got", len(got), flush=True)
        announced = True
"""


def test_truncation_under_live_endpoints_kills_them_with_sigbus(name: str, reaper: Reaper) -> None:
    """The documented limit: a process of the same user that truncates the segment takes
    away pages that attached processes have mapped.  POSIX has no way to refuse that;
    the next access to such a page is SIGBUS.  Attached endpoints (in children here)
    must end -- by SIGBUS or with a PipeBitError -- not carry on as if nothing happened."""
    receiver = Child(reaper, READ_FOREVER, name)
    receiver.expect("ready", 30)
    sender = Child(reaper, STREAM, name, "0", "-1")
    sender.expect("ready", 30)
    receiver.expect("got", 30)
    os.truncate(segment_path(name), 0)
    started = time.monotonic()
    outcomes = {}
    for role, child in (("sender", sender), ("receiver", receiver)):
        try:
            code = child.proc.wait(max(20 - (time.monotonic() - started), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the {role} carried on for 20 s after its segment was truncated\n{child.describe()}")
        child.wait(10)
        outcomes[role] = signal.Signals(-code).name if code < 0 else f"exit {code}"
        assert code == -signal.SIGBUS or (code == 3 and any(line.startswith("error") for line in child.out)), (
            f"{role}: {outcomes[role]}\n{child.describe()}"
        )
    print(f"\n[reliability] segment truncated under live endpoints: {outcomes}")


# ------------------------------------------------------------------- other users
AS_NOBODY = """
import json, os, sys
import posix_ipc

segment, semaphores, files, squat = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
out = {}
def attempt(label, action):
    try:
        action()
        out[label] = "opened"
    except Exception as exc:
        out[label] = type(exc).__name__
attempt("segment", lambda: posix_ipc.SharedMemory(segment).close_fd())
attempt("segment O_CREAT", lambda: posix_ipc.SharedMemory(segment, posix_ipc.O_CREAT).close_fd())
for sem in semaphores:
    attempt("semaphore " + sem, lambda sem=sem: posix_ipc.Semaphore(sem).close())
for path in files:
    attempt("file " + os.path.basename(path), lambda path=path: os.close(os.open(path, os.O_RDONLY)))
attempt("lock directory", lambda: os.listdir(os.path.dirname(files[0])))
# Squat the OS name of a pipe root has not created yet (names are predictable).
squatter = posix_ipc.SharedMemory(squat, posix_ipc.O_CREX, mode=0o666, size=8192)
squatter.close_fd()
out["squat"] = "created"
print(json.dumps(out), flush=True)
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_another_user_cannot_open_our_pipe_or_squat_its_name(name: str, make_name: Callable[[], str]) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user (uid 65534)")
    squat_name = make_name()
    squat_os_name = _shm.segment_name(squat_name)
    env = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
            sender.send([1])
            sender.flush(timeout=10)
            assert receiver.receive(timeout=10) == [[1]]
            token = _shm.segment_name(name)[len("/pipebit-") :]
            semaphores = sorted("/" + p.name[len("sem.") :] for p in SHM.glob(f"sem.pipebit-{token}.*"))
            files = sorted(str(p) for p in _shm.user_dir().glob(f"{name}.*"))
            assert semaphores, "a receiver's semaphore should exist"
            assert any(f.endswith(".lock") for f in files)
            assert any(".slot" in f for f in files)
            for path in [segment_path(name), *(Path(f) for f in files)]:
                assert _mode(path) == 0o600, f"{path} has mode {_mode(path):o}"
            for sem in semaphores:
                assert _mode(SHM / ("sem." + sem[1:])) == 0o600
            assert _mode(_shm.user_dir()) == 0o700
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    AS_NOBODY,
                    _shm.segment_name(name),
                    json.dumps(semaphores),
                    json.dumps(files),
                    squat_os_name,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd="/",
                check=False,
            )
            assert result.returncode == 0, result.stderr
            denied = json.loads(result.stdout)
            print(f"\n[reliability] uid {NOBODY} trying our pipe: {denied}")
            squatted = denied.pop("squat")
            for what, verdict in denied.items():
                expected = "PermissionsError" if what.startswith(("segment", "semaphore")) else "PermissionError"
                assert verdict == expected, f"uid {NOBODY} opening our {what}: {verdict}"
            # The pipe still works for us.
            sender.send([2])
            sender.flush(timeout=10)
            assert receiver.receive(timeout=10) == [[2]]
        # A segment another user created under our pipe's OS name is refused, not used.
        assert squatted == "created"
        assert (SHM / squat_os_name.lstrip("/")).stat().st_uid == NOBODY
        with pytest.raises(pipebit.PipePermissionError, match="65534"):
            pipebit.SafeSender(squat_name, 0)
    finally:
        try:
            posix_ipc.unlink_shared_memory(squat_os_name)
        except posix_ipc.ExistentialError:
            pass
