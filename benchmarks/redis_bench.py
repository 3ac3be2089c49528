"""Safe pipes over Redis next to shared memory: packets/s, 1->1 and 1->4, in one run.

Starts its own ``redis-server`` on 127.0.0.1 (no persistence), then for each
transport and fan-out: receiver processes attach, the sender (this process)
sends small packets ``[i, i+1, i+2, i+3, i+4]`` and flushes, and every receiver
checks that it got each packet exactly once, in order.  A rate is packets per
second *per receiver*: packets / (the slowest receiver's last packet - first
send).  Prints an environment header and a markdown table of medians.

    python benchmarks/redis_bench.py            # 3 rounds of 300k packets, about a minute
    python benchmarks/redis_bench.py --packets 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import pipebit


def receive_and_check(name: str, count: int, ready: Any, results: Any) -> None:
    """A receiver process: count, and check order and completeness."""
    with pipebit.SafeReceiver(name, 0, start="new") as receiver:
        ready.put(os.getpid())
        expected = bad = 0
        deadline = time.monotonic() + 600
        while expected < count and time.monotonic() < deadline:
            for packet in receiver.receive(timeout=1.0):
                if packet != [expected, expected + 1, expected + 2, expected + 3, expected + 4]:
                    bad += 1
                expected += 1
        results.put((time.time(), expected, bad))


def one_run(name: str, count: int, fan_out: int) -> tuple[float, int, int]:
    """(packets/s per receiver, packets received in all, packets wrong) for one sender and ``fan_out`` receivers."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    with pipebit.SafeSender(name, 0) as sender:
        children = [ctx.Process(target=receive_and_check, args=(name, count, ready, results)) for _ in range(fan_out)]
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=60)
        started = time.time()
        for i in range(count):
            sender.send([i, i + 1, i + 2, i + 3, i + 4])
        sender.flush(timeout=600)
        reports = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(60)
    finished = max(r[0] for r in reports)
    return count / (finished - started), sum(r[1] for r in reports), sum(r[2] for r in reports)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server on loopback; (process, server URL).  RuntimeError if it cannot."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (Debian: apt install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            pipebit.list_pipes(url)
            return process, url
        except pipebit.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("redis-server did not start within 20 s") from None
            time.sleep(0.05)


def server_version() -> str:
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return version.split(" sha=")[0].strip()


def header(url: str) -> str:
    return "\n".join(
        [
            f"date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"python: {platform.python_version()}, pipebit {pipebit.__version__}",
            f"redis: {server_version()} on {url} (loopback, no persistence)",
        ]
    )


def measure(packets: int, rounds: int, *, with_header: bool = True) -> str:
    """Run every figure ``rounds`` times on a private server; the markdown table (and its notes)."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            if with_header:
                lines += [header(url), ""]
            rows = []
            for fan_out in (1, 4):
                cells = [f"1→{fan_out}"]
                for transport in ("shm", "redis"):
                    rates, lost, wrong = [], 0, 0
                    for _ in range(rounds):
                        plain = f"bench-{uuid.uuid4().hex[:8]}"
                        name = plain if transport == "shm" else f"{url}/{plain}"
                        rate, received, bad = one_run(name, packets, fan_out)
                        pipebit.remove(name, force=True)
                        rates.append(rate)
                        lost += packets * fan_out - received
                        wrong += bad
                    cells.append(f"{statistics.median(rates) / 1000:,.0f}k")
                    cells.append(f"{lost} lost, {wrong} wrong")
                rows.append(cells)
            lines += [
                f"Packets/s per receiver, {packets:,} packets `[i, i+1, i+2, i+3, i+4]`, median of {rounds}; "
                f"{server_version()} on loopback, no persistence, started for the run.",
                "",
                "| fan-out | shared memory | check | Redis (loopback) | check |",
                "|---|---|---|---|---|",
            ]
            lines += ["| " + " | ".join(cells) + " |" for cells in rows]
            for cells in rows:
                shm, redis = (float(c.rstrip("k").replace(",", "")) for c in (cells[1], cells[3]))
                lines.append("")
                lines.append(f"Redis {cells[0]} runs at {redis / shm:.0%} of shared memory's rate.")
        finally:
            process.terminate()
            process.wait(10)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=300_000, help="packets per run (300000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; the median is shown (3)")
    args = parser.parse_args()
    try:
        print(measure(args.packets, args.rounds))
    except RuntimeError as exc:
        sys.exit(f"redis_bench: {exc}")


if __name__ == "__main__":
    main()
