"""asyncio against blocking calls, and against pyzmq's asyncio sockets, in one run (issue #18).

* **stream**: a sender process streams small packets ``[i, i+1, i+2, i+3, i+4]``
  into a Safe pipe; this process receives them with ``async for`` in an event loop
  that also runs a 1 ms ticker task, then (next round) with blocking ``receive()``
  in a plain loop.  Packets/s from the first packet to the last; the ratio; the
  ticker's worst lateness (how long the loop was kept from it).  Each receiver
  checks order and completeness.
* **round trip**: two asyncio processes ping-pong one small packet: PipeBit
  (``asend()`` / ``areceive()`` over two Safe pipes) against pyzmq's asyncio PAIR
  sockets over ``ipc://`` carrying the same packet as MessagePack.  p50 and p99.

    python benchmarks/asyncio_bench.py                  # 3 rounds: about a minute
    python benchmarks/asyncio_bench.py --packets 50000 --trips 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
import uuid
from typing import Any

import msgpack
from common import load_average, msgpack_version, percentile, remove_pipe

import pipebit

TICK = 0.001
WARMUP_TRIPS = 300
# The round trip's PipeBit variants: the default, and the opt-in polling mode (each receiver's
# caching thread polls the ring up to 2 ms before it sleeps, as receive() would with it).
SPINS: dict[str, float | str] = {"pipebit": "auto", "pipebit spin": 0.002}


# ------------------------------------------------------------------ the stream
def stream_sender(name: str, count: int, go: Any) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        go.wait(60)
        for i in range(count):
            sender.send([i, i + 1, i + 2, i + 3, i + 4])
        sender.flush(timeout=600)


def check(packets: list[Any], expected: int) -> int:
    """Packets out of place in one batch (0 when all is well)."""
    return sum(packet[0] != expected + k for k, packet in enumerate(packets))


def receive_blocking(receiver: pipebit.SafeReceiver, count: int) -> tuple[float, int]:
    got = bad = 0
    first = 0.0
    while got < count:
        batch = receiver.receive(timeout=10)
        if not batch:
            raise RuntimeError(f"the stream stopped after {got} packets")
        if not got:
            first = time.perf_counter()
        bad += check(batch, got)
        got += len(batch)
    return count / (time.perf_counter() - first), bad


async def receive_async(receiver: pipebit.SafeReceiver, count: int) -> tuple[float, int, float]:
    loop = asyncio.get_running_loop()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            asked = loop.time()
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - asked - TICK)

    ticking = asyncio.ensure_future(ticker())
    got = bad = 0
    first = 0.0
    async for packet in receiver:
        if not got:
            first = time.perf_counter()
        bad += packet[0] != got
        got += 1
        if got == count:
            break
    rate = count / (time.perf_counter() - first)
    ticking.cancel()
    return rate, bad, worst


def stream_round(count: int, use_asyncio: bool) -> dict[str, float]:
    name = f"bench-async-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    receiver = pipebit.SafeReceiver(name, 0, start="new")
    child = ctx.Process(target=stream_sender, args=(name, count, go))
    child.start()
    try:
        if use_asyncio:

            async def main() -> tuple[float, int, float]:
                receiver.fileno()  # event mode on before the stream starts, as a service would be
                go.set()
                return await receive_async(receiver, count)

            rate, bad, worst = asyncio.run(main())
        else:
            go.set()
            rate, bad = receive_blocking(receiver, count)
            worst = float("nan")
        child.join(600)
    finally:
        receiver.close_connection()
        remove_pipe(name)
    return {"rate": rate, "bad": bad, "worst": worst}


# ------------------------------------------------------------------ round trips
def pipebit_echo(request: str, reply: str, trips: int, spin: float | str, ready: Any) -> None:
    async def main() -> None:
        async with pipebit.SafeReceiver(request, 0, spin=spin) as inbox, pipebit.SafeSender(reply, 0) as outbox:
            ready.set()
            echoed = 0
            async for packet in inbox:
                await outbox.asend(packet)
                echoed += 1
                if echoed == trips:
                    break
            await outbox.aflush(timeout=60)

    asyncio.run(main())


async def pipebit_pinger(request: str, reply: str, trips: int, spin: float | str, ready: Any) -> list[float]:
    async with pipebit.SafeSender(request, 0) as outbox, pipebit.SafeReceiver(reply, 0, spin=spin) as inbox:
        while not ready.is_set():
            await asyncio.sleep(0.01)
        samples = []
        for i in range(trips):
            started = time.perf_counter_ns()
            await outbox.asend([i, i + 1, i + 2, i + 3, i + 4])
            got = await inbox.areceive(None)
            samples.append(time.perf_counter_ns() - started)
            if got != [[i, i + 1, i + 2, i + 3, i + 4]]:
                raise RuntimeError(f"round trip {i} came back as {got}")
        return samples


def zmq_echo(address: str, trips: int, ready: Any) -> None:
    import zmq
    import zmq.asyncio

    async def main() -> None:
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.PAIR)
        socket.bind(address)
        ready.set()
        for _ in range(trips):
            packet = msgpack.unpackb(await socket.recv())
            await socket.send(msgpack.packb(packet))
        socket.close(linger=1000)
        context.term()

    asyncio.run(main())


async def zmq_pinger(address: str, trips: int, ready: Any) -> list[float]:
    import zmq
    import zmq.asyncio

    context = zmq.asyncio.Context()
    socket = context.socket(zmq.PAIR)
    while not ready.is_set():
        await asyncio.sleep(0.01)
    socket.connect(address)
    samples = []
    try:
        for i in range(trips):
            started = time.perf_counter_ns()
            await socket.send(msgpack.packb([i, i + 1, i + 2, i + 3, i + 4]))
            got = msgpack.unpackb(await socket.recv())
            samples.append(time.perf_counter_ns() - started)
            if got != [i, i + 1, i + 2, i + 3, i + 4]:
                raise RuntimeError(f"round trip {i} came back as {got}")
    finally:
        socket.close(linger=0)
        context.term()
    return samples


def round_trip_round(peer: str, trips: int) -> list[float]:
    """Round trips in µs, warm-up left out."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    total = trips + WARMUP_TRIPS
    if peer in SPINS:
        request, reply = (f"bench-rt-{os.getpid()}-{uuid.uuid4().hex[:6]}-{side}" for side in "ab")
        child = ctx.Process(target=pipebit_echo, args=(request, reply, total, SPINS[peer], ready))
        child.start()
        try:
            samples = asyncio.run(pipebit_pinger(request, reply, total, SPINS[peer], ready))
        finally:
            child.join(60)
            remove_pipe(request)
            remove_pipe(reply)
    else:
        with tempfile.TemporaryDirectory() as folder:
            address = f"ipc://{folder}/echo"
            child = ctx.Process(target=zmq_echo, args=(address, total, ready))
            child.start()
            samples = asyncio.run(zmq_pinger(address, total, ready))
            child.join(60)
    return sorted(ns / 1000 for ns in samples[WARMUP_TRIPS:])


# ------------------------------------------------------------------ the report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=200_000, help="packets per stream (default 200000)")
    parser.add_argument("--trips", type=int, default=5000, help="round trips per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3; medians are shown)")
    parser.add_argument("--only", choices=["stream", "round-trip"], help="measure one of the two")
    args = parser.parse_args()
    import zmq

    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores; load {load_average()}")
    print(
        f"Python {platform.python_version()}; pipebit {pipebit.__version__} (msgpack {msgpack_version()}); "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"
    )
    print(f"{args.rounds} round(s); stream of {args.packets} packets; {args.trips} round trips\n")

    print("| measure | PipeBit | peer | ratio | target |")
    print("|---|---:|---:|---:|---|")
    if args.only != "round-trip":
        report_stream(args.packets, args.rounds)
    if args.only != "stream":
        report_round_trip(args.trips, args.rounds)


def report_stream(packets: int, rounds: int) -> None:
    blocking, async_runs = [], []
    for _ in range(rounds):
        blocking.append(stream_round(packets, use_asyncio=False))
        async_runs.append(stream_round(packets, use_asyncio=True))
    bad = sum(r["bad"] for r in blocking + async_runs)
    block_rate = statistics.median(r["rate"] for r in blocking)
    async_rate = statistics.median(r["rate"] for r in async_runs)
    worst = max(r["worst"] for r in async_runs)
    print(
        f"| stream, packets/s: `async for` vs blocking `receive()` | {async_rate:,.0f} | {block_rate:,.0f} | "
        f"{async_rate / block_rate:.2f}x | >= 0.7x |"
    )
    print(f"| loop's worst lateness while streaming (1 ms ticker), ms | {worst * 1000:.1f} | | | |")
    print(f"| packets out of order or missing | {bad} | | | |")


def report_round_trip(trips: int, rounds: int) -> None:
    rt: dict[str, list[float]] = {"pipebit": [], "pipebit spin": [], "zmq": []}
    for _ in range(rounds):
        for peer, runs in rt.items():
            runs.append(round_trip_round(peer, trips))
    p50 = {peer: statistics.median(percentile(s, 0.5) for s in runs) for peer, runs in rt.items()}
    p99 = {peer: statistics.median(percentile(s, 0.99) for s in runs) for peer, runs in rt.items()}
    print(
        f"| round trip p50, µs: asyncio vs pyzmq asyncio PAIR | {p50['pipebit']:.0f} | {p50['zmq']:.0f} | "
        f"{p50['pipebit'] / p50['zmq']:.2f}x | <= 1x |"
    )
    print(f"| round trip p99, µs | {p99['pipebit']:.0f} | {p99['zmq']:.0f} | {p99['pipebit'] / p99['zmq']:.2f}x | |")
    spin50, spin99 = p50["pipebit spin"], p99["pipebit spin"]
    print(
        f"| round trip p50 / p99, µs, opt-in `spin=0.002` | {spin50:.0f} / {spin99:.0f} | | "
        f"{spin50 / p50['zmq']:.2f}x | |"
    )


if __name__ == "__main__":
    main()
