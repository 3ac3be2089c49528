"""What a 1 MiB packet costs its receiver, with glibc's default allocator settings and tuned ones.

Usage::

    python benchmarks/big_packets.py              # 500 packets of 1 MiB, both settings
    python benchmarks/big_packets.py --count 200

A sender process streams ``[i, <1 MiB bytes>]`` into a Safe pipe with a 64 MiB
ring; the receiver (this script's child, started twice) reads them all and
reports its minor page faults and CPU time per packet, and the rate.  The
second run sets ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` (256
MiB) in the environment of both processes, so that glibc keeps freed blocks
instead of handing them back to the system: each received packet is a fresh
``bytes`` object, and when its pages are new, every 4 KiB of it faults once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from typing import Any

import pipebit

MIB = 1 << 20
TUNED = {"MALLOC_TRIM_THRESHOLD_": str(256 * MIB), "MALLOC_MMAP_THRESHOLD_": str(256 * MIB)}


def send(name: str, count: int, go: Any) -> None:
    payload = b"\x5a" * MIB
    with pipebit.SafeSender(name, 0, capacity=64 * MIB) as sender:
        go.wait(60)
        for i in range(count):
            sender.send([i, payload])


def receive(count: int) -> dict[str, float]:
    """One measurement, in this process; the sender is a child started with ``spawn``."""
    name = f"bench-big-{os.getpid()}"
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    try:
        with pipebit.SafeReceiver(name, 0, start="new", capacity=64 * MIB) as receiver:
            sender = context.Process(target=send, args=(name, count, go))
            sender.start()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started, cpu = time.monotonic(), time.process_time()
            go.set()
            expected = 0
            while expected < count:
                for packet in receiver.receive(timeout=30):
                    if packet[0] != expected or len(packet[1]) != MIB:
                        raise SystemExit(f"packet {packet[0]} arrived where {expected} was due")
                    expected += 1
            elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            sender.join(60)
    finally:
        pipebit.remove(name, force=True)
    return {"faults": faults / count, "cpu_us": cpu / count * 1e6, "gbps": count * MIB / elapsed / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(receive(args.count)))
        return 0
    print(f"# {args.count} packets of 1 MiB, one sender, one receiver (Python {sys.version.split()[0]})\n")
    print("| allocator | receiver page faults per packet | receiver CPU per packet | GB/s |")
    print("|---|---|---|---|")
    for label, extra in (("glibc defaults", {}), ("MALLOC_TRIM/MMAP_THRESHOLD_ = 256 MiB", TUNED)):
        environment = {**os.environ, **extra}
        command = [sys.executable, os.path.abspath(__file__), "--child", "--count", str(args.count)]
        output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"| {label} | {result['faults']:.0f} | {result['cpu_us']:.0f} µs | {result['gbps']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
