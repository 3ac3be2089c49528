"""PipeBit soak: senders and receivers for minutes, with churn and SIGKILLs; every packet checked.

Usage::

    python benchmarks/soak.py                    # 5 minutes
    python benchmarks/soak.py --seconds 30       # what tests/test_soak.py runs
    python benchmarks/soak.py --seconds 600 --rate 0 --json soak.json

One Safe pipe.  Two *anchor* receivers attach first and stay to the end; a few
*churn* receivers join (from the oldest retained packet, or only new ones),
read for a while and leave, or are SIGKILLed; *senders* stream on a few lanes,
and now and then one is SIGKILLed and a replacement takes over its lane with a
new sender id, continuing the lane's sequence.

Every packet is ``[lane, sender_id, seq, payload, crc32(payload)]``.  Each
receiver checks, per sender id, that packets are whole (checksum) and
contiguous and ordered from the first one it got.  At the end the anchors must
hold, for every sender id, everything from its first packet to the last one the
pipe received: lost packets must be 0.  A killed sender's tail -- packets it
called send() for that never reached the pipe -- is reported separately (it
cannot be delivered).

Memory is sampled all along: RSS of every process (the growth of the
long-lived ones after warm-up must stay under ``--max-rss-growth``) and the
bytes this pipe's objects occupy in /dev/shm (under ``--max-shm-growth``).
The last line is the verdict; the exit status is 1 on any loss, corruption,
disorder, crash, leftover or excess growth.

Workers are this script run again with ``--worker``; they talk JSON lines on
stdout and take ``stop`` on stdin.  Pass ``--name`` to choose the pipe's name.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common import memory_status, remove_pipe

import pipebit
from pipebit import _shm

MB = 1 << 20
PROGRESS_EVERY_S = 0.5
NOTHING: dict[str, Any] = {"packets": 0, "corrupt": 0, "missing": 0, "disorder": 0, "problems": [], "senders": {}}


# ============================================================================ workers
def _say(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def _listen_for_stop() -> threading.Event:
    stop = threading.Event()

    def listen() -> None:
        sys.stdin.readline()  # "stop", or EOF when the orchestrator is gone
        stop.set()

    threading.Thread(target=listen, daemon=True).start()
    return stop


def run_sender(args: argparse.Namespace) -> int:
    """Stream ``[lane, sid, seq, payload, crc]`` at ``--rate`` packets/s until told to stop."""
    rng = random.Random(args.seed)
    pool = rng.randbytes(1 << 17)
    with open(args.counter, "r+b") as file:
        counter_map = mmap.mmap(file.fileno(), 8)
    counter = memoryview(counter_map).cast("Q")  # the orchestrator reads it after a SIGKILL
    sender = pipebit.SafeSender(args.name, 0, flush_timeout=60)
    largest = min(65_536, pipebit.pipe_stats(args.name).max_packet_bytes - 64)
    stop = _listen_for_stop()
    _say("ready", sid=args.sid, pid=os.getpid(), slot=sender.stats().slot)
    seq = args.start_seq
    started = time.monotonic()
    report = started + PROGRESS_EVERY_S
    while not stop.is_set():
        now = time.monotonic()
        if args.rate and seq - args.start_seq >= (now - started) * args.rate:
            time.sleep(0.001)
        else:
            for _ in range(16):
                big = rng.random() < 0.0005  # now and then a packet of a good part of the ring
                size = rng.randrange(largest // 4, largest) if big else rng.randrange(args.max_payload + 1)
                offset = rng.randrange(len(pool) - size + 1)
                data = pool[offset : offset + size]
                # Counted before the call: send() may put the packet into the pipe itself, and
                # a SIGKILL right after that must not leave the packet uncounted.
                counter[0] = seq + 1  # send() was called, whether or not the packet reaches the pipe
                sender.send([args.lane, args.sid, seq, data, zlib.crc32(data)])
                seq += 1
        if now >= report:
            _say("progress", sid=args.sid, sent=seq - args.start_seq)
            report = now + PROGRESS_EVERY_S
    sender.flush(timeout=60)
    sender.close_connection()
    _say("final", sid=args.sid, lane=args.lane, start_seq=args.start_seq, next_seq=seq)
    counter.release()
    counter_map.close()
    return 0


class Tally:
    """What one receiver got from each sender id, and every problem it saw."""

    def __init__(self) -> None:
        self.senders: dict[int, list[int]] = {}  # sid -> [first, last, count]
        self.packets = 0
        self.corrupt = 0
        self.missing = 0  # packets skipped inside a sender's run: lost
        self.disorder = 0  # packets repeated or going backwards
        self.problems: list[str] = []

    def feed(self, packets: list[Any]) -> None:
        for p in packets:
            whole = (
                type(p) is list
                and len(p) == 5
                and all(type(x) is int for x in (p[0], p[1], p[2], p[4]))
                and type(p[3]) is bytes
                and zlib.crc32(p[3]) == p[4]
            )
            if not whole:
                self.corrupt += 1
                self._problem(f"corrupt packet {repr(p)[:120]}")
                continue
            sid, seq = p[1], p[2]
            run = self.senders.get(sid)
            if run is None:
                self.senders[sid] = [seq, seq, 1]
            else:
                if seq > run[1] + 1:
                    self.missing += seq - run[1] - 1
                    self._problem(f"sender {sid}: seq {seq} after {run[1]} ({seq - run[1] - 1} missing)")
                elif seq <= run[1]:
                    self.disorder += 1
                    self._problem(f"sender {sid}: seq {seq} after {run[1]} (repeated or backwards)")
                run[1] = seq
                run[2] += 1
            self.packets += 1

    def _problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    def report(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "corrupt": self.corrupt,
            "missing": self.missing,
            "disorder": self.disorder,
            "problems": self.problems,
            "senders": {str(k): v for k, v in self.senders.items()},
        }


def run_receiver(args: argparse.Namespace) -> int:
    """Receive and check until told to stop; an anchor then drains what is left first."""
    receiver = pipebit.SafeReceiver(args.name, 0, start=args.start, capacity=args.capacity)
    stop = _listen_for_stop()
    tally = Tally()
    _say("ready", rid=args.rid, pid=os.getpid(), slot=receiver.stats().slot)
    report = time.monotonic() + PROGRESS_EVERY_S
    quiet_since: float | None = None
    while True:
        batch = receiver.receive(timeout=0.2)
        tally.feed(batch)
        now = time.monotonic()
        if now >= report:
            _say("progress", rid=args.rid, **tally.report())
            report = now + PROGRESS_EVERY_S
        if stop.is_set():
            if not args.drain:
                break
            quiet_since = (quiet_since or now) if not batch else None
            if quiet_since is not None and now - quiet_since >= 1.0:
                break
    receiver.close_connection()
    _say("final", rid=args.rid, **tally.report())
    return 0


# ======================================================================= orchestrator
@dataclass
class Worker:
    """A worker process and what it said."""

    role: str  # "sender", "anchor", "churn"
    key: int  # sender id or receiver id
    proc: subprocess.Popen[str]
    started: float
    ready: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    killed: bool = False
    stopped: bool = False
    leave_at: float | None = None
    counter: Path | None = None
    lane: int = 0
    start_seq: int = 0
    sent_at_kill: int | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pumps: list[threading.Thread] = field(default_factory=list)
    closed: bool = False

    def close_streams(self) -> bool:
        """Once the process ended and its output is read, close its pipes; ``True`` when done."""
        if self.closed or self.proc.poll() is None or any(p.is_alive() for p in self.pumps):
            return self.closed
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.closed = True
        return True


def rss_of(pid: int) -> int | None:
    try:
        return memory_status(pid).get("VmRSS")
    except OSError:
        return None


def shm_bytes(name: str) -> int:
    """Bytes this pipe's objects occupy in /dev/shm: segment, semaphores, lock files."""
    token = _shm.segment_name(name)[len("/pipebit-") :]
    total = 0
    places = [(Path("/dev/shm"), token), (_shm.user_dir(), name)]
    for directory, marker in places:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if marker in entry.name:
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    return total


def shm_used() -> int:
    info = os.statvfs("/dev/shm")
    return (info.f_blocks - info.f_bfree) * info.f_frsize


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.name: str = args.name or f"soak-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="pipebit-soak-"))
        self.workers: list[Worker] = []
        self.lock = threading.Lock()
        self.next_sid = 1
        self.next_rid = 1
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.events = {"receivers joined": 0, "receivers left": 0, "receivers killed": 0, "senders killed": 0}
        self.crashed: list[str] = []
        # Churn receivers that ended, folded into totals so that the soak's own memory stays flat.
        self.folded: dict[str, Any] = {"packets": 0, "corrupt": 0, "missing": 0, "disorder": 0, "problems": []}
        self.folded_last: dict[str, int] = {}  # sender id -> the last seq any ended churn receiver got
        self.folded_detail: list[str] = []

    # ---------------------------------------------------------------- workers
    def _spawn(self, role: str, key: int, extra: list[str]) -> Worker:
        command = [sys.executable, os.path.abspath(__file__), "--worker", role, "--name", self.name, *extra]
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        worker = Worker(role, key, proc, time.monotonic())
        worker.pumps = [
            threading.Thread(target=self._pump, args=(worker, proc.stdout), daemon=True),
            threading.Thread(target=self._pump_errors, args=(worker, proc.stderr), daemon=True),
        ]
        for pump in worker.pumps:
            pump.start()
        with self.lock:
            self.workers.append(worker)
        return worker

    def _pump(self, worker: Worker, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                worker.errors.append(line.strip())
                continue
            with self.lock:
                setattr(worker, message.pop("type"), message)

    def _pump_errors(self, worker: Worker, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if len(worker.errors) < 40:
                worker.errors.append(line.rstrip())

    def _wait_ready(self, worker: Worker, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while worker.ready is None:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{worker.role} {worker.key} did not start: {worker.errors[-5:]}")
            time.sleep(0.01)

    def start_receiver(self, role: str, start: str) -> Worker:
        rid = self.next_rid
        self.next_rid += 1
        extra = ["--rid", str(rid), "--start", start, "--capacity", str(self.args.capacity)]
        if role == "anchor":
            extra.append("--drain")
        worker = self._spawn(role, rid, extra)
        if role == "churn":
            worker.leave_at = time.monotonic() + self.rng.uniform(self.args.churn_life / 4, self.args.churn_life)
            self.events["receivers joined"] += 1
        return worker

    def start_sender(self, lane: int, start_seq: int) -> Worker:
        sid = self.next_sid
        self.next_sid += 1
        counter = self.tmp / f"sender-{sid}"
        counter.write_bytes(start_seq.to_bytes(8, sys.byteorder))
        extra = [
            *("--sid", str(sid), "--lane", str(lane), "--start-seq", str(start_seq)),
            *("--rate", str(self.args.rate), "--max-payload", str(self.args.max_payload)),
            *("--counter", str(counter), "--seed", str(self.rng.randrange(1 << 30))),
        ]
        worker = self._spawn("sender", sid, extra)
        worker.counter, worker.lane, worker.start_seq = counter, lane, start_seq
        return worker

    def live(self, role: str | None = None) -> list[Worker]:
        with self.lock:
            return [
                w
                for w in self.workers
                if (role is None or w.role == role) and not w.killed and not w.stopped and w.proc.poll() is None
            ]

    def kill(self, worker: Worker) -> None:
        worker.killed = True
        worker.proc.kill()
        worker.proc.wait(30)
        if worker.counter is not None:
            worker.sent_at_kill = int.from_bytes(worker.counter.read_bytes()[:8], sys.byteorder)

    def stop(self, worker: Worker) -> None:
        worker.stopped = True
        assert worker.proc.stdin is not None
        try:
            worker.proc.stdin.write("stop\n")
            worker.proc.stdin.flush()
        except (OSError, ValueError):  # it is already gone
            pass

    # --------------------------------------------------------------- sampling
    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        rss: dict[str, int] = {"orchestrator": rss_of(os.getpid()) or 0}
        with self.lock:
            workers = [w for w in self.workers if w.proc.poll() is None]
        for worker in workers:
            value = rss_of(worker.proc.pid)
            if value is not None:
                if worker.role != "churn":  # short-lived: counted in the totals only
                    worker.rss.append((now - self.t0, value))
                rss[f"{worker.role}-{worker.key}"] = value
        try:
            stats = pipebit.pipe_stats(self.name)
            written, waiting = stats.packets_written, stats.writers_waiting
            alive = sum(1 for p in stats.participants if p.alive)
        except pipebit.PipeBitError:
            written = waiting = alive = -1
        row = {
            "t": now - self.t0,
            "procs": len(rss),
            "rss_total": sum(rss.values()),
            "rss_max": max(rss.values()),
            "rss_orchestrator": rss["orchestrator"],
            "shm_pipe": shm_bytes(self.name),
            "shm_used": shm_used(),
            "written": written,
            "writers_waiting": waiting,
            "alive": alive,
        }
        self.samples.append(row)
        print(
            f"{row['t']:7.1f} {row['procs']:5d} {row['rss_total'] / MB:9.1f} {row['rss_max'] / MB:8.1f} "
            f"{row['shm_pipe'] / 1024:9.0f} {row['shm_used'] / MB:9.1f} {written:12d} {waiting:4d} {alive:5d}",
            flush=True,
        )
        return row

    # -------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        args = self.args
        print(
            f"soak: pipe {self.name!r}, {args.seconds:g}s, {args.senders} sender lane(s) at "
            f"{args.rate or 'max'} packets/s each, 2 anchors + {args.churn} churn receivers, "
            f"capacity {args.capacity}, a SIGKILL every ~{args.kill_every:g}s, seed {args.seed}",
            flush=True,
        )
        print(
            f"{'t(s)':>7} {'procs':>5} {'RSS(MB)':>9} {'max(MB)':>8} {'shm(KB)':>9} {'used(MB)':>9} "
            f"{'written':>12} {'wait':>4} {'alive':>5}",
            flush=True,
        )
        anchors = [self.start_receiver("anchor", start) for start in ("oldest", "new")]
        for anchor in anchors:
            self._wait_ready(anchor)
        for lane in range(args.senders):
            self._wait_ready(self.start_sender(lane, 0))
        end = self.t0 + args.seconds
        next_sample = time.monotonic()
        next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * args.kill_every
        while time.monotonic() < end:
            now = time.monotonic()
            for worker in self.live("churn"):
                if worker.leave_at is not None and now >= worker.leave_at:
                    self.stop(worker)
                    self.events["receivers left"] += 1
            while len(self.live("churn")) < args.churn:
                self.start_receiver("churn", self.rng.choice(["oldest", "new"]))
            if now >= next_kill:
                self._kill_someone()
                next_kill = now + self.rng.uniform(0.5, 1.5) * args.kill_every
            if now >= next_sample:
                self.sample()
                next_sample = now + args.sample_every
            with self.lock:
                ended = [w for w in self.workers if not (w.killed or w.stopped) and w.proc.poll() is not None]
            for worker in ended:
                worker.stopped = True  # counted once
                self.crashed.append(f"{worker.role} {worker.key} exited {worker.proc.returncode}: {worker.errors[-3:]}")
            with self.lock:
                for worker in list(self.workers):
                    # A long soak must run out neither of file descriptors nor of memory.
                    if worker.close_streams() and worker.role == "churn":
                        self._fold(worker)
                        self.workers.remove(worker)
            time.sleep(0.05)
        return self.finish()

    def _fold(self, worker: Worker) -> None:
        if not worker.killed and (worker.proc.returncode != 0 or worker.final is None):
            self.crashed.append(f"{worker.role} {worker.key} exited {worker.proc.returncode}: {worker.errors[-3:]}")
        report = worker.final or worker.progress or NOTHING
        for key in ("packets", "corrupt", "missing", "disorder"):
            self.folded[key] += report[key]
        self.folded["problems"] = (self.folded["problems"] + report["problems"])[:10]
        for sid, (_, last, _) in report["senders"].items():
            self.folded_last[sid] = max(self.folded_last.get(sid, last), last)
        if report["missing"]:
            self.folded_detail.append(f"churn {worker.key}: {report['missing']} missing")

    def _kill_someone(self) -> None:
        churners = [w for w in self.live("churn") if w.ready is not None]
        senders = [w for w in self.live("sender") if w.ready is not None]
        overdue = not self.events["senders killed"] and time.monotonic() - self.t0 > self.args.seconds / 3
        if senders and (not churners or overdue or self.rng.random() < 0.4):
            victim = self.rng.choice(senders)
            self.kill(victim)
            self.events["senders killed"] += 1
            assert victim.sent_at_kill is not None
            replacement = self.start_sender(victim.lane, victim.sent_at_kill)  # the lane's sequence goes on
            self._wait_ready(replacement)
        elif churners:
            self.kill(self.rng.choice(churners))
            self.events["receivers killed"] += 1

    def finish(self) -> dict[str, Any]:
        stop_at = time.monotonic()
        for worker in self.live("churn"):
            self.stop(worker)
        senders = self.live("sender")
        for worker in senders:
            self.stop(worker)
        for worker in senders:  # everything they queued is in the pipe before the anchors drain it
            worker.proc.wait(120)
        for worker in self.live("anchor"):
            self.stop(worker)
        with self.lock:
            everyone = list(self.workers)
        for worker in everyone:
            try:
                worker.proc.wait(120)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(30)
                self.crashed.append(f"{worker.role} {worker.key} did not stop")
        for worker in everyone:
            for pump in worker.pumps:
                pump.join(30)
            worker.close_streams()
        self.sample()["after_stop"] = True
        for worker in everyone:
            if not worker.killed and (worker.proc.returncode != 0 or worker.final is None):
                self.crashed.append(f"{worker.role} {worker.key} exited {worker.proc.returncode}: {worker.errors[-3:]}")
        try:
            end_stats = pipebit.pipe_stats(self.name)
            leftover_alive = sum(1 for p in end_stats.participants if p.alive)
            end_waiting = end_stats.writers_waiting
        except pipebit.PipeBitError as exc:
            self.crashed.append(f"pipe unreadable at the end: {exc}")
            leftover_alive, end_waiting = -1, -1
        return self.verdict(everyone, stop_at, leftover_alive, end_waiting)

    # ---------------------------------------------------------------- verdict
    def verdict(self, everyone: list[Worker], stop_at: float, leftover_alive: int, end_waiting: int) -> dict[str, Any]:
        args = self.args
        senders = [w for w in everyone if w.role == "sender"]
        receivers = [w for w in everyone if w.role in ("anchor", "churn")]
        anchors = [w for w in receivers if w.role == "anchor"]

        def report(worker: Worker) -> dict[str, Any]:
            return worker.final or worker.progress or NOTHING

        reports = [report(w) for w in receivers]
        folded = self.folded
        corrupt = sum(r["corrupt"] for r in reports) + folded["corrupt"]
        disorder = sum(r["disorder"] for r in reports) + folded["disorder"]
        problems = ([p for r in reports for p in r["problems"]] + folded["problems"])[:10]
        # What the pipe got from each sender id: all of it for a sender stopped cleanly;
        # for a killed one, up to the last packet any receiver saw.
        delivered_end: dict[int, int] = {}
        tails: dict[int, int] = {}
        for sender in senders:
            seen = [r["senders"].get(str(sender.key), [0, sender.start_seq - 1, 0])[1] for r in reports]
            seen.append(self.folded_last.get(str(sender.key), sender.start_seq - 1))
            last_seen = max([sender.start_seq - 1, *seen]) + 1
            if sender.killed:
                delivered_end[sender.key] = last_seen
                tails[sender.key] = (sender.sent_at_kill or sender.start_seq) - last_seen
            else:
                delivered_end[sender.key] = (sender.final or {}).get("next_seq", last_seen)
        # Lost: packets missing inside any receiver's run of a sender, plus, for the anchors
        # (attached before every sender and drained at the end), any missing at either end.
        lost = sum(r["missing"] for r in reports) + folded["missing"]
        lost_detail = [f"{w.role} {w.key}: {report(w)['missing']} missing" for w in receivers if report(w)["missing"]]
        lost_detail += self.folded_detail
        for anchor in anchors:
            runs = report(anchor)["senders"]
            for sender in senders:
                end = delivered_end[sender.key]
                if end == sender.start_seq:
                    continue  # nothing of it reached the pipe
                first, last, count = runs.get(str(sender.key), [end, end - 1, 0])
                short = max(first - sender.start_seq, 0) + max(end - 1 - last, 0)
                if short:
                    lost += short
                    lost_detail.append(
                        f"anchor {anchor.key}, sender {sender.key}: got {first}..{last} ({count}), "
                        f"pipe had {sender.start_seq}..{end - 1}"
                    )
        negative_tails = {sid: t for sid, t in tails.items() if t < 0}
        warm = min(max(3.0, args.seconds * 0.1), 30.0)
        running = [s for s in self.samples if not s.get("after_stop")]
        growth = {}
        for worker in everyone:
            after = [v for t, v in worker.rss if t >= warm]
            if worker.role != "churn" and not worker.killed and len(after) >= 2:
                growth[f"{worker.role}-{worker.key}"] = max(after) - after[0]
        orchestrator = [s["rss_orchestrator"] for s in running if s["t"] >= warm]
        if len(orchestrator) >= 2:
            growth["orchestrator"] = max(orchestrator) - orchestrator[0]
        rss_growth = max(growth.values(), default=0)
        shm_series = [s["shm_pipe"] for s in running if s["t"] >= warm]
        shm_growth = (max(shm_series) - shm_series[0]) if len(shm_series) >= 2 else 0
        used_series = [s["shm_used"] for s in running if s["t"] >= warm] or [0]
        rss_series = [s["rss_total"] for s in running if s["t"] >= warm] or [0]
        moved = sum(report(a)["packets"] for a in anchors) // max(len(anchors), 1)
        received = sum(r["packets"] for r in reports) + folded["packets"]

        pipebit.remove(self.name, force=True)
        leftovers = shm_bytes(self.name)
        shutil.rmtree(self.tmp, ignore_errors=True)

        failures = []
        if lost:
            failures.append(f"{lost} packets lost by attached receivers")
        if corrupt:
            failures.append(f"{corrupt} corrupt packets")
        if disorder:
            failures.append(f"{disorder} packets out of order or duplicated")
        if negative_tails:
            failures.append(f"receivers got packets a killed sender never sent: {negative_tails}")
        if self.crashed:
            failures.append(f"crashes: {self.crashed[:3]}")
        if moved == 0:
            failures.append("no packet moved")
        if rss_growth > args.max_rss_growth * MB:
            failures.append(f"RSS grew {rss_growth / MB:.1f} MB after warm-up (limit {args.max_rss_growth} MB)")
        if shm_growth > args.max_shm_growth * MB:
            failures.append(f"/dev/shm grew {shm_growth / MB:.1f} MB after warm-up (limit {args.max_shm_growth} MB)")
        if leftover_alive:
            failures.append(f"{leftover_alive} participants still alive after every worker ended")
        if leftovers:
            failures.append(f"{leftovers} bytes left in /dev/shm after removing the pipe")
        warnings = []
        if end_waiting:
            warnings.append(f"writers_waiting is {end_waiting} with no sender left (a sender was killed while waiting)")

        summary = {
            "name": self.name,
            "seconds": args.seconds,
            "seed": args.seed,
            "packets_moved": moved,
            "packets_received": received,
            "packets_lost": lost,
            "lost_detail": lost_detail[:10],
            "corrupt": corrupt,
            "disorder": disorder,
            "problems": problems,
            "undelivered_tails": {str(k): v for k, v in tails.items()},
            "senders": len(senders),
            **{k.replace(" ", "_"): v for k, v in self.events.items()},
            "warm_up_s": warm,
            "rss_growth_bytes": rss_growth,
            "rss_growth_by_process": growth,
            "rss_total_min_max": [min(rss_series), max(rss_series)],
            "shm_growth_bytes": shm_growth,
            "shm_pipe_min_max": [min(shm_series, default=0), max(shm_series, default=0)],
            "shm_used_min_max": [min(used_series), max(used_series)],
            "writers_waiting_at_end": end_waiting,
            "stop_phase_s": time.monotonic() - stop_at,
            "crashed": self.crashed,
            "failures": failures,
            "warnings": warnings,
            "verdict": "PASS" if not failures else "FAIL",
        }
        self.print_summary(summary)
        return summary

    def print_summary(self, s: dict[str, Any]) -> None:
        tails = s["undelivered_tails"]
        rows = [
            ("duration", f"{s['seconds']:g} s (+{s['stop_phase_s']:.1f} s to stop and drain), seed {s['seed']}"),
            ("packets moved", f"{s['packets_moved']:,} (through the pipe, as an anchor saw them)"),
            ("packets received", f"{s['packets_received']:,} (all receivers)"),
            ("packets lost", f"{s['packets_lost']} (attached receivers)"),
            ("corrupt / disordered", f"{s['corrupt']} / {s['disorder']}"),
            ("senders", f"{s['senders']} ({s['senders_killed']} SIGKILLed and replaced)"),
            ("undelivered tails", f"{sum(tails.values()):,} packets sent by killed senders, not in the pipe: {tails}"),
            (
                "receivers",
                f"{s['receivers_joined']} joined, {s['receivers_left']} left, {s['receivers_killed']} SIGKILLed",
            ),
            (
                "RSS after warm-up",
                f"total {s['rss_total_min_max'][0] / MB:.1f}..{s['rss_total_min_max'][1] / MB:.1f} MB; "
                f"largest growth of a long-lived process {s['rss_growth_bytes'] / MB:+.1f} MB",
            ),
            (
                "/dev/shm after warm-up",
                f"this pipe {s['shm_pipe_min_max'][0] / 1024:.0f}..{s['shm_pipe_min_max'][1] / 1024:.0f} KB "
                f"(growth {s['shm_growth_bytes'] / 1024:+.0f} KB); whole mount "
                f"{s['shm_used_min_max'][0] / MB:.1f}..{s['shm_used_min_max'][1] / MB:.1f} MB",
            ),
            ("writers_waiting at end", str(s["writers_waiting_at_end"])),
        ]
        width = max(len(k) for k, _ in rows)
        print()
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        for problem in s["problems"]:
            print(f"problem: {problem}")
        for detail in s["lost_detail"]:
            print(f"lost: {detail}")
        for warning in s["warnings"]:
            print(f"warning: {warning}")
        reasons = "; ".join(s["failures"])
        print(
            f"VERDICT: {s['verdict']}"
            + (f" ({reasons})" if reasons else "")
            + f" - {s['packets_moved']:,} packets, {s['packets_lost']} lost, {s['corrupt']} corrupt, "
            f"RSS {s['rss_growth_bytes'] / MB:+.1f} MB, shm {s['shm_growth_bytes'] / MB:+.2f} MB",
            flush=True,
        )


# =============================================================================== main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to stream (default 300)")
    parser.add_argument("--senders", type=int, default=2, help="sender lanes (default 2)")
    parser.add_argument("--rate", type=int, default=5000, help="packets/s per sender, 0 = as fast as possible")
    parser.add_argument("--churn", type=int, default=3, help="churn receivers alive at once (default 3)")
    parser.add_argument("--churn-life", type=float, default=6.0, help="longest life of a churn receiver, s")
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs")
    parser.add_argument("--capacity", type=int, default=256 << 10, help="ring bytes (default 256 KiB)")
    parser.add_argument("--max-payload", type=int, default=256, help="largest usual payload (bytes)")
    parser.add_argument("--sample-every", type=float, default=None, help="seconds between samples")
    parser.add_argument("--max-rss-growth", type=float, default=32.0, help="MB, after warm-up")
    parser.add_argument("--max-shm-growth", type=float, default=16.0, help="MB, after warm-up")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--name", default=None, help="the pipe's name (default: a fresh one)")
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    worker = parser.add_argument_group("worker processes (internal)")
    worker.add_argument("--worker", choices=["sender", "anchor", "churn"], default=None)
    worker.add_argument("--sid", type=int, default=0)
    worker.add_argument("--lane", type=int, default=0)
    worker.add_argument("--start-seq", type=int, default=0)
    worker.add_argument("--counter", default=None)
    worker.add_argument("--rid", type=int, default=0)
    worker.add_argument("--start", default="new")
    worker.add_argument("--drain", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.sample_every is None:
        args.sample_every = max(1.0, args.seconds / 60)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker == "sender":
        return run_sender(args)
    if args.worker in ("anchor", "churn"):
        return run_receiver(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    soak = Soak(args)
    try:
        summary = soak.run()
    finally:
        for worker in soak.workers:  # whatever happened, no worker outlives the soak
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(30)
        remove_pipe(soak.name)
        shutil.rmtree(soak.tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
