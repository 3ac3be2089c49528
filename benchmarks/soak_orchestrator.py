"""The soak's orchestrator: it starts the workers, churns and kills them, samples memory, and stops them.

:class:`Soak` runs one soak.  Two anchor receivers attach first and stay to
the end; churn receivers join and leave or are SIGKILLed; senders stream on
lanes, and a killed one is replaced by a new sender continuing its lane.  Each
worker is a process running ``soak.py --worker ...`` (see soak_worker.py) that
talks JSON lines; pump threads read them into its :class:`Worker`.  The
orchestrator samples the RSS of every process and this pipe's bytes in
/dev/shm; :meth:`Soak.run` returns an :class:`Ending` for soak_verdict.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from common import memory_status
from soak_worker import NOTHING

import pipebit
from pipebit import _shm

MB = 1 << 20


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


@dataclass(frozen=True)
class Ending:
    """How a soak ended, for its verdict: every worker once all had ended, and the pipe then."""

    everyone: list[Worker]
    stop_at: float  # time.monotonic() when the stop began
    leftover_alive: int  # participants the pipe still counted alive (-1: unreadable)
    end_waiting: int  # its writers_waiting (-1: unreadable)


class Soak:
    """One soak: its workers, what it sampled, and what ended churn receivers reported."""

    def __init__(self, args: argparse.Namespace, script: str) -> None:
        self.args = args
        self.script = script  # what a worker runs, with --worker: soak.py
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
        command = [sys.executable, self.script, "--worker", role, "--name", self.name, *extra]
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
    def run(self) -> Ending:
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

    def finish(self) -> Ending:
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
        return Ending(everyone, stop_at, leftover_alive, end_waiting)
