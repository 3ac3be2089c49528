"""Sharing work: one producer, 4 workers -- PipeBit receiver groups against the usual peers.

Three scenarios, each run for every peer in the same invocation:

* **cheap**: 200,000 jobs whose work is next to nothing (the cost of handing out work);
* **slow**: 10,000 jobs of 1 ms each (``time.sleep(0.001)``: work that waits, as I/O does,
  so that 4 workers can overlap it on any number of cores); "scaling" is the ideal
  time -- every job's measured sleep divided among the workers -- over the time taken;
* **speed-up**: a burst of 3,000 jobs of 1 ms to 1 worker, then to 3 (issue #17's
  target for PipeBit: 3 workers at least 2.4x sooner);
* **kill**: 4,000 jobs of 1 ms; when half are done one worker is SIGKILLed and a new one
  started.  "lost" is jobs never done; "twice" is jobs done more than once.

Peers: ``multiprocessing.Queue`` (a worker ``get()``s one job at a time), pyzmq PUSH/PULL
over ``ipc://`` (PUSH hands jobs round-robin to connected workers, queueing up to its
high-water mark in each), ``concurrent.futures.ProcessPoolExecutor.map`` (chunks of 1,000
jobs for cheap work, 10 for slow work).  The clock runs from the first job sent to the
last job done; workers are started and attached first.  "spread" is the busiest worker's
share of the jobs over the idlest's.

    python benchmarks/groups_bench.py              # about two minutes
    python benchmarks/groups_bench.py --quick      # a tenth of the jobs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import os
import platform
import signal
import struct
import tempfile
import time
import uuid
from multiprocessing.sharedctypes import RawArray
from typing import Any, Callable

from common import load_average, msgpack_version, remove_pipe

import pipebit

WORKERS = 4
GROUP = "bench"
JOB = struct.Struct("=q")


def _work(slow: bool) -> None:
    if slow:
        time.sleep(0.001)


class Shared:
    """What workers report, without locks: per worker a job count and the time of its last
    job; per job how many times it was done."""

    def __init__(self, ctx: Any, jobs: int, workers: int) -> None:
        self.counts = RawArray("q", workers + 2)  # room for a replacement worker
        self.stamps = RawArray("d", workers + 2)
        self.done = RawArray("i", jobs)
        self.stop = ctx.Event()
        self.ready = ctx.Queue()


# ----------------------------------------------------------------------------- workers
def pipebit_worker(index: int, pipe: str, slow: bool, shared: Shared) -> None:
    receiver = pipebit.SafeReceiver(pipe, group=GROUP, start="oldest")
    shared.ready.put(index)
    counts, stamps, done = shared.counts, shared.stamps, shared.done
    while not shared.stop.is_set():
        batch = receiver.receive(timeout=0.05)  # acknowledges the previous batch
        for (job,) in batch:
            _work(slow)
            done[job] += 1
            counts[index] += 1
        if batch:
            stamps[index] = time.monotonic()
    receiver.close_connection()


def queue_worker(index: int, queue: Any, slow: bool, shared: Shared) -> None:
    shared.ready.put(index)
    counts, stamps, done = shared.counts, shared.stamps, shared.done
    while not shared.stop.is_set():
        try:
            job = queue.get(timeout=0.05)
        except Exception:  # queue.Empty
            continue
        _work(slow)
        done[job] += 1
        counts[index] += 1
        stamps[index] = time.monotonic()


def zmq_worker(index: int, address: str, slow: bool, shared: Shared) -> None:
    import zmq  # the bench extra; only the zmq runs need it

    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.connect(address)
    shared.ready.put(index)
    counts, stamps, done = shared.counts, shared.stamps, shared.done
    while not shared.stop.is_set():
        if not socket.poll(50):
            continue
        (job,) = JOB.unpack(socket.recv())
        _work(slow)
        done[job] += 1
        counts[index] += 1
        stamps[index] = time.monotonic()
    socket.close(linger=0)
    context.term()


def pool_job(job: int, slow: bool) -> int:
    _work(slow)
    return os.getpid()


# ----------------------------------------------------------------------------- runs
class Run:
    """One peer, one scenario: start workers, hand out the jobs, watch, maybe kill one."""

    def __init__(self, peer: str, jobs: int, slow: bool, kill: bool, workers: int = WORKERS) -> None:
        self.peer, self.jobs, self.slow, self.kill, self.count = peer, jobs, slow, kill, workers
        self.ctx = mp.get_context("spawn")
        self.shared = Shared(self.ctx, jobs, workers)
        self.workers: list[Any] = []

    def _start(self, target: Callable[..., None], arg: Any) -> None:
        index = len(self.workers)
        worker = self.ctx.Process(target=target, args=(index, arg, self.slow, self.shared), daemon=True)
        worker.start()
        self.workers.append(worker)
        self.shared.ready.get(timeout=60)

    def _watch(self, replace: Callable[[], None]) -> float:
        """Wait until every job is done or progress stops for 3 s; kill a worker half-way if
        asked.  Returns the time of the last job done."""
        shared, killed = self.shared, False
        last_total, last_change = -1, time.monotonic()
        while True:
            total = sum(shared.counts)
            now = time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            if sum(1 for n in shared.done if n) >= self.jobs or now - last_change > 3.0:
                break
            if self.kill and not killed and total >= self.jobs // 2:
                killed = True
                os.kill(self.workers[0].pid, signal.SIGKILL)
                replace()
            time.sleep(0.005)
        return max(shared.stamps)

    def finish(self) -> dict[str, Any]:
        self.shared.stop.set()
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
        counts = [n for n in self.shared.counts[: len(self.workers)] if n]
        done = list(self.shared.done)
        return {
            "counts": counts,
            "lost": sum(1 for n in done if n == 0),
            "twice": sum(1 for n in done if n > 1),
        }

    def pipebit(self) -> dict[str, Any]:
        pipe = f"groups-bench-{uuid.uuid4().hex[:8]}"
        try:
            with pipebit.SafeSender(pipe, capacity=16 << 20) as sender:
                for _ in range(self.count):
                    self._start(pipebit_worker, pipe)
                began = time.monotonic()
                for job in range(self.jobs):
                    sender.send([job])
                sender.flush()
                end = self._watch(lambda: self._start(pipebit_worker, pipe))
            return {"seconds": end - began, **self.finish()}
        finally:
            remove_pipe(pipe)

    def queue(self) -> dict[str, Any]:
        queue = self.ctx.Queue()
        for _ in range(self.count):
            self._start(queue_worker, queue)
        began = time.monotonic()
        for job in range(self.jobs):
            queue.put(job)
        end = self._watch(lambda: self._start(queue_worker, queue))
        result = {"seconds": end - began, **self.finish()}
        queue.cancel_join_thread()
        return result

    def zmq(self) -> dict[str, Any]:
        import zmq  # the bench extra

        address = f"ipc://{tempfile.gettempdir()}/groups-bench-{uuid.uuid4().hex[:8]}"
        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        socket.bind(address)
        try:
            for _ in range(self.count):
                self._start(zmq_worker, address)
            time.sleep(0.2)  # let every PULL connect: PUSH only shares among connected peers
            began = time.monotonic()
            for job in range(self.jobs):
                socket.send(JOB.pack(job))
            end = self._watch(lambda: self._start(zmq_worker, address))
            return {"seconds": end - began, **self.finish()}
        finally:
            socket.close(linger=0)
            context.term()

    def pool(self) -> dict[str, Any]:
        chunk = 10 if self.slow else 1000
        by_pid: dict[int, int] = {}
        lost = 0
        with concurrent.futures.ProcessPoolExecutor(self.count, mp_context=self.ctx) as pool:
            list(pool.map(pool_job, range(self.count * 4), [False] * (self.count * 4)))  # start the workers
            began = time.monotonic()
            results = pool.map(pool_job, range(self.jobs), [self.slow] * self.jobs, chunksize=chunk)
            try:
                for pid in results:
                    by_pid[pid] = by_pid.get(pid, 0) + 1
                    if self.kill and sum(by_pid.values()) == self.jobs // 2:
                        os.kill(next(iter(pool._processes)), signal.SIGKILL)
            except concurrent.futures.process.BrokenProcessPool:
                lost = self.jobs - sum(by_pid.values())
            end = time.monotonic()
        return {"seconds": end - began, "counts": list(by_pid.values()), "lost": lost, "twice": 0}


# ----------------------------------------------------------------------------- report
PEERS = {"PipeBit group": "pipebit", "multiprocessing.Queue": "queue", "pyzmq PUSH/PULL": "zmq"}


def measured_sleep() -> float:
    """What ``time.sleep(0.001)`` really takes here (the ideal of the slow scenario)."""
    began = time.perf_counter()
    for _ in range(200):
        time.sleep(0.001)
    return (time.perf_counter() - began) / 200


def row(peer: str, jobs: int, result: dict[str, Any], ideal: float | None) -> str:
    counts = result["counts"] or [0]
    spread = f"{max(counts) / min(counts):.2f}" if min(counts) else "-"
    rate = f"{jobs / result['seconds']:,.0f}" if result["seconds"] > 0 else "-"
    scaling = f"{ideal / result['seconds']:.0%}" if ideal else ""
    cells = [peer, rate, f"{result['seconds']:.2f}", spread]
    if ideal is not None:
        cells.append(scaling)
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    cheap, slow, kill = 200_000 // scale, 10_000 // scale, 4_000 // scale
    sleep = measured_sleep()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S')}, load average {load_average()}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"python: {platform.python_version()}, pipebit {pipebit.__version__}, msgpack {msgpack_version()}")
    print(f"1 producer -> {WORKERS} workers; time.sleep(0.001) takes {sleep * 1e3:.3f} ms here\n")
    peers = [*PEERS.items(), ("ProcessPoolExecutor.map", "pool")]

    print(f"cheap work: {cheap:,} jobs\n\n| peer | jobs/s | seconds | spread |\n|---|---:|---:|---:|")
    for label, method in peers:
        print(row(label, cheap, getattr(Run(method, cheap, False, False), method)(), None), flush=True)

    ideal = slow * sleep / WORKERS
    print(f"\nslow work: {slow:,} jobs of 1 ms (ideal {ideal:.2f} s)\n")
    print("| peer | jobs/s | seconds | spread | scaling |\n|---|---:|---:|---:|---:|")
    for label, method in peers:
        print(row(label, slow, getattr(Run(method, slow, True, False), method)(), ideal), flush=True)

    burst = 3_000 // scale
    print(f"\nspeed-up: a burst of {burst:,} jobs of 1 ms, 3 workers against 1 (target for PipeBit: 2.4x)\n")
    print("| peer | 1 worker, s | 3 workers, s | speed-up |\n|---|---:|---:|---:|")
    for label, method in peers:
        alone = getattr(Run(method, burst, True, False, workers=1), method)()["seconds"]
        three = getattr(Run(method, burst, True, False, workers=3), method)()["seconds"]
        print(f"| {label} | {alone:.2f} | {three:.2f} | {alone / three:.2f}x |", flush=True)

    print(f"\na worker SIGKILLed half-way: {kill:,} jobs of 1 ms\n")
    print("| peer | jobs lost | jobs done twice |\n|---|---:|---:|")
    for label, method in peers:
        result = getattr(Run(method, kill, True, True), method)()
        print(f"| {label} | {result['lost']} | {result['twice']} |", flush=True)


if __name__ == "__main__":
    main()
