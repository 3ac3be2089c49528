"""The price of waking a sleeping process on this machine: the floor under any round trip.

Two processes ping-pong over bare POSIX semaphores (no data, no Python library
in between).  Each side does ``work`` microseconds of busy work before it posts
the other, then sleeps until it is posted back.  When the sleeps are short, the
kernel (or the hypervisor) wakes the sleeper cheaply; past a threshold the CPU
really idles, and each wake-up costs far more.  Whatever a library does on top
of that, a round trip in which both sides sleep cannot cost less than the
"wake-ups" column.

    python benchmarks/wake_floor.py            # prints a markdown table
"""

from __future__ import annotations

import multiprocessing
import os
import time

import posix_ipc
from common import percentile

ROUND_TRIPS = 4000
WARMUP = 400
WORK_US = (0, 2, 5, 10, 20, 40)


def busy(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def echo(ping: str, pong: str, work_s: float, count: int) -> None:
    inbox, outbox = posix_ipc.Semaphore(ping), posix_ipc.Semaphore(pong)
    for _ in range(count):
        inbox.acquire(10.0)
        busy(work_s)
        outbox.release()


def measure(work_us: float) -> float:
    """Median round trip in µs with ``work_us`` of busy work on each side."""
    ping, pong = f"/pipebit-floor-{os.getpid()}-a", f"/pipebit-floor-{os.getpid()}-b"
    outbox = posix_ipc.Semaphore(ping, posix_ipc.O_CREX)
    inbox = posix_ipc.Semaphore(pong, posix_ipc.O_CREX)
    try:
        work_s = work_us / 1e6
        child = multiprocessing.Process(target=echo, args=(ping, pong, work_s, ROUND_TRIPS + WARMUP))
        child.start()
        samples = []
        for i in range(ROUND_TRIPS + WARMUP):
            start = time.perf_counter_ns()
            busy(work_s)
            outbox.release()
            inbox.acquire(10.0)
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - start)
        child.join()
    finally:
        outbox.unlink()
        inbox.unlink()
    samples.sort()
    return percentile(samples, 0.5) / 1000


def main() -> None:
    multiprocessing.set_start_method("spawn")
    print("| work per side µs | round trip p50 µs | of which wake-ups µs |")
    print("|---|---|---|")
    for work in WORK_US:
        p50 = measure(work)
        print(f"| {work} | {p50:.1f} | {p50 - 2 * work:.1f} |")


if __name__ == "__main__":
    main()
