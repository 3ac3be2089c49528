"""Arrays and big packets between processes: PipeBit against its peers and against memcpy.

Usage::

    python benchmarks/arrays.py            # 300 frames per run, 3 runs, median shown
    python benchmarks/arrays.py --quick    # 100 frames, 1 run

Scenarios, each in fresh processes (``spawn``), every frame checked for its
identity (the sequence number stamped into its first 8 bytes, and items at its
start, middle and end) -- not just timed:

* **1 -> 1 frames**: 1920x1080x3 ``uint8`` frames (6.2 MB).  PipeBit copying
  (``receive()``) and viewing (``receive(copy=False)``), ``multiprocessing.Queue``,
  pyzmq PUSH/PULL with ``copy=False`` and the frame's buffer as a second part,
  and a hand-written ``multiprocessing.shared_memory`` ring of 4 slots with two
  semaphores (one copy in, one copy out: the floor of copying by hand).
* **1 -> 4 frames**: the same frames to four receivers, each getting every frame.
* **1 MiB bytes**: distinct ``bytes`` payloads built before the clock starts, a
  Safe pipe at its defaults, against pyzmq PUSH/PULL.
* **memcpy**: ``numpy.copyto`` of a frame on this machine, the physical limit of
  one copy; "one copy in, one out" is half its rate.

Rates are measured by the receiver from its first frame to its last; CPU is the
receiving process's own per frame.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

import pipebit

SHAPE = (1080, 1920, 3)
FRAME_BYTES = 1080 * 1920 * 3
CAPACITY = 64 << 20  # a pipe for frames: 10 of them
# Distinct frames the sender cycles through, stamping each before it goes.  A
# multiprocessing.Queue pickles in a feeder thread after put() returns, so a frame
# must not change until it is taken: with at most 4 in a queue, 6 frames are enough.
DISTINCT = 6
MIB = 1 << 20


# ------------------------------------------------------------------ frames
def make_frames() -> list[Any]:
    return [np.full(SHAPE, 17 + 40 * k, np.uint8) for k in range(DISTINCT)]


def stamp(frame: Any, seq: int) -> Any:
    frame.reshape(-1)[:8] = np.frombuffer(seq.to_bytes(8, "little"), np.uint8)
    return frame


def check(frame: Any, seq: int) -> None:
    flat = frame.reshape(-1)
    fill = 17 + 40 * (seq % DISTINCT)
    if int.from_bytes(flat[:8].tobytes(), "little") != seq or not (
        flat[8] == fill and flat[FRAME_BYTES // 2] == fill and flat[-1] == fill
    ):
        raise SystemExit(f"frame {seq} arrived wrong: {flat[:9]} {flat[FRAME_BYTES // 2]} {flat[-1]}, fill {fill}")


# ------------------------------------------------------------------ peers: senders
def pipebit_send(name: str, count: int, go: Any) -> None:
    frames = make_frames()
    with pipebit.SafeSender(name, 0, capacity=CAPACITY) as sender:
        go.wait(60)
        for seq in range(count):
            sender.send([seq, stamp(frames[seq % DISTINCT], seq)])
        sender.flush(timeout=120)


def queue_send(queues: list[Any], count: int, go: Any) -> None:
    frames = make_frames()
    go.wait(60)
    for seq in range(count):
        frame = stamp(frames[seq % DISTINCT], seq)
        for q in queues:
            q.put(frame)


def zmq_send(address: str, count: int, go: Any, fan_out: int) -> None:
    import zmq

    frames = make_frames()
    context = zmq.Context()
    socket = context.socket(zmq.PUB if fan_out > 1 else zmq.PUSH)
    # PUB drops what a subscriber has no room for: unbounded queues (the trackers below
    # bound the frames in flight) keep every frame.  PUSH blocks instead: a bound of 8.
    socket.setsockopt(zmq.SNDHWM, 0 if fan_out > 1 else 8)
    socket.bind(address)
    go.wait(60)
    if fan_out > 1:
        time.sleep(1.0)  # PUB/SUB: let the subscriptions arrive, or the first frames are dropped
    trackers: list[Any] = [None] * DISTINCT
    for seq in range(count):
        tracker = trackers[seq % DISTINCT]
        if tracker is not None:
            tracker.wait()  # copy=False: zmq still reads the buffer until its tracker is done
        frame = stamp(frames[seq % DISTINCT], seq)
        trackers[seq % DISTINCT] = socket.send_multipart([seq.to_bytes(8, "little"), frame], copy=False, track=True)
    time.sleep(0.5) if fan_out > 1 else None
    socket.close(linger=-1)
    context.term()


def shm_send(name: str, count: int, go: Any, empty: Any, full: Any) -> None:
    frames = make_frames()
    memory = shared_memory.SharedMemory(name)
    slots = np.ndarray((4, FRAME_BYTES), np.uint8, memory.buf)
    go.wait(60)
    for seq in range(count):
        empty.acquire()
        slots[seq % 4] = stamp(frames[seq % DISTINCT], seq).reshape(-1)
        full.release()
    del slots
    memory.close()


# ------------------------------------------------------------------ peers: receivers
def timed(count: int, next_frame: Callable[[], list[tuple[int, Any]]], results: Any) -> None:
    """Receive ``count`` frames through ``next_frame`` (which returns (seq, frame) pairs) and
    put (frames/s, receiver CPU seconds per frame) on ``results``."""
    seen = 0
    first = cpu = 0.0
    while seen < count:
        for seq, frame in next_frame():
            check(frame, seq)
            if seq != seen:
                raise SystemExit(f"frame {seq} arrived where {seen} was due")
            if seen == 0:
                first, cpu = time.perf_counter(), time.process_time()
            seen += 1
            del frame
    elapsed, cpu = time.perf_counter() - first, time.process_time() - cpu
    results.put(((count - 1) / elapsed, cpu / (count - 1)))


def pipebit_receive(name: str, count: int, copy: bool, ready: Any, results: Any) -> None:
    with pipebit.SafeReceiver(name, 0, capacity=CAPACITY, start="new") as receiver:
        ready.put(1)

        def next_frame() -> list[tuple[int, Any]]:
            return [(seq, frame) for seq, frame in receiver.receive(timeout=30, copy=copy)]

        timed(count, next_frame, results)


def queue_receive(q: Any, count: int, ready: Any, results: Any) -> None:
    ready.put(1)
    seq = iter(range(count))
    timed(count, lambda: [(next(seq), q.get(timeout=60))], results)


def zmq_receive(address: str, count: int, fan_out: int, ready: Any, results: Any) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.SUB if fan_out > 1 else zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, 0 if fan_out > 1 else 8)
    if fan_out > 1:
        socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(address)
    ready.put(1)

    def next_frame() -> list[tuple[int, Any]]:
        header, body = socket.recv_multipart(copy=False)
        return [(int.from_bytes(header.bytes, "little"), np.frombuffer(body.buffer, np.uint8).reshape(SHAPE))]

    timed(count, next_frame, results)
    socket.close()
    context.term()


def shm_receive(name: str, count: int, gates: tuple[Any, Any], ready: Any, results: Any) -> None:
    empty, full = gates
    memory = shared_memory.SharedMemory(name)
    slots = np.ndarray((4, FRAME_BYTES), np.uint8, memory.buf)
    ready.put(1)
    seq = iter(range(count))

    def next_frame() -> list[tuple[int, Any]]:
        full.acquire()
        n = next(seq)
        frame = slots[n % 4].copy().reshape(SHAPE)  # one copy out, as a copying receiver must
        empty.release()
        return [(n, frame)]

    timed(count, next_frame, results)
    slots = None  # the last view of the segment, which must go before it closes
    memory.close()


# ------------------------------------------------------------------ one run of one peer
def run(peer: str, count: int, fan_out: int) -> tuple[float, float]:
    """(frames/s of the slowest receiver, receiver CPU per frame, mean) for one run."""
    ctx = multiprocessing.get_context("spawn")
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    name = f"bench-arrays-{os.getpid()}-{time.monotonic_ns()}"
    receivers: list[Any] = []
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if peer.startswith("PipeBit"):
        copy = "copy=False" not in peer
        receivers = [
            ctx.Process(target=pipebit_receive, args=(name, count, copy, ready, results)) for _ in range(fan_out)
        ]
        sender = ctx.Process(target=pipebit_send, args=(name, count, go))
        cleanup = lambda: pipebit.remove(name, force=True)  # noqa: E731
    elif peer == "multiprocessing.Queue":
        queues = [ctx.Queue(maxsize=4) for _ in range(fan_out)]
        receivers = [ctx.Process(target=queue_receive, args=(q, count, ready, results)) for q in queues]
        sender = ctx.Process(target=queue_send, args=(queues, count, go))
    elif peer.startswith("pyzmq"):
        address = f"ipc:///tmp/{name}"
        receivers = [
            ctx.Process(target=zmq_receive, args=(address, count, fan_out, ready, results)) for _ in range(fan_out)
        ]
        sender = ctx.Process(target=zmq_send, args=(address, count, go, fan_out))
    else:  # the hand-written shared-memory ring
        memory = shared_memory.SharedMemory(name, create=True, size=4 * FRAME_BYTES)
        empty, full = ctx.Semaphore(4), ctx.Semaphore(0)
        receivers = [ctx.Process(target=shm_receive, args=(name, count, (empty, full), ready, results))]
        sender = ctx.Process(target=shm_send, args=(name, count, go, empty, full))

        def cleanup() -> None:
            memory.close()
            memory.unlink()

    try:
        if peer.startswith("pyzmq"):
            sender.start()
            time.sleep(0.3)  # the sender binds
        for receiver in receivers:
            receiver.start()
        for _ in receivers:
            ready.get(timeout=60)
        if not peer.startswith("pyzmq"):
            sender.start()
        go.set()
        measured = [results.get(timeout=300) for _ in receivers]
        sender.join(120)
        for receiver in receivers:
            receiver.join(60)
    finally:
        for process in [sender, *receivers]:
            if process.is_alive():
                process.kill()
        cleanup()
    return min(rate for rate, _ in measured), statistics.mean(cpu for _, cpu in measured)


# ------------------------------------------------------------------ big bytes
BYTES_PEERS = ["PipeBit", "pyzmq PUSH/PULL", "shared_memory by hand (4 slots)"]
SLOT = 64 + MIB  # the hand-written ring's slot: a sequence number, then the payload


def bytes_send(name: str, count: int, peer: str, gates: Any, signals: tuple[Any, Any]) -> None:
    """Send ``count`` packets of 1 MiB through ``peer``; put the CPU it took per packet on
    ``signals[1]`` once ``signals[0]`` (the start) was set and the last packet went."""
    go, cpu_out = signals
    payloads = [bytes([k]) * MIB for k in range(64)]  # distinct objects, built before the clock
    if peer.startswith("pyzmq"):
        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        socket.bind(f"ipc:///tmp/{name}")
        go.wait(60)
        cpu = time.process_time()
        for seq in range(count):
            socket.send_multipart([seq.to_bytes(8, "little"), payloads[seq % 64]], copy=False)
        socket.close(linger=-1)
        context.term()
    elif peer.startswith("shared_memory"):
        empty, full = gates
        memory = shared_memory.SharedMemory(name)
        ring = memory.buf
        assert ring is not None
        go.wait(60)
        cpu = time.process_time()
        for seq in range(count):
            empty.acquire()
            at = seq % 4 * SLOT
            ring[at : at + 8] = seq.to_bytes(8, "little")
            ring[at + 64 : at + SLOT] = payloads[seq % 64]  # the one copy in
            full.release()
        del ring
        memory.close()
    else:
        with pipebit.SafeSender(name, 0) as sender:
            go.wait(60)
            cpu = time.process_time()
            for seq in range(count):
                sender.send([seq, payloads[seq % 64]])
            sender.flush(timeout=120)
    cpu_out.put((time.process_time() - cpu) / count)


def bytes_receive(name: str, count: int, peer: str, gates: Any, channels: tuple[Any, Any]) -> None:
    ready, results = channels
    memory = None
    receive: Callable[[], list[Any]]
    if peer.startswith("pyzmq"):
        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.PULL)
        socket.connect(f"ipc:///tmp/{name}")
        receive = lambda: [socket.recv_multipart()]  # noqa: E731
    elif peer.startswith("shared_memory"):
        empty, full = gates
        memory = shared_memory.SharedMemory(name)
        ring = memory.buf
        assert ring is not None
        taken = iter(range(count))

        def receive() -> list[Any]:
            full.acquire()
            at = next(taken) % 4 * SLOT
            packet = [ring[at : at + 8].tobytes(), bytes(ring[at + 64 : at + SLOT])]  # the one copy out
            empty.release()
            return [packet]
    else:
        receiver = pipebit.SafeReceiver(name, 0, start="new")
        receive = lambda: receiver.receive(timeout=30)  # noqa: E731
    ready.put(1)
    seen, first, cpu = 0, 0.0, 0.0
    while seen < count:
        for packet in receive():
            seq = packet[0] if peer == "PipeBit" else int.from_bytes(packet[0], "little")
            if seq != seen or len(packet[1]) != MIB or packet[1][-1] != seq % 64:
                raise SystemExit(f"packet {seq!r} arrived wrong")
            if seen == 0:
                first, cpu = time.perf_counter(), time.process_time()
            seen += 1
    elapsed, cpu = time.perf_counter() - first, time.process_time() - cpu
    results.put(((count - 1) * MIB / elapsed / 1e9, cpu / (count - 1)))
    if memory is not None:
        del receive, ring
        memory.close()
    elif peer == "PipeBit":
        receiver.close_connection()


def run_bytes(peer: str, count: int) -> tuple[float, float, float]:
    """(GB/s, receiver CPU seconds per packet, sender's) of one run of ``peer``."""
    ctx = multiprocessing.get_context("spawn")
    go, ready, results, sender_cpu = ctx.Event(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    name = f"bench-bytes-{os.getpid()}-{time.monotonic_ns()}"
    gates, memory = None, None
    if peer.startswith("shared_memory"):
        memory = shared_memory.SharedMemory(name, create=True, size=4 * SLOT)
        gates = (ctx.Semaphore(4), ctx.Semaphore(0))
    sender = ctx.Process(target=bytes_send, args=(name, count, peer, gates, (go, sender_cpu)))
    receiver = ctx.Process(target=bytes_receive, args=(name, count, peer, gates, (ready, results)))
    zmq = peer.startswith("pyzmq")
    try:
        if zmq:
            sender.start()
            time.sleep(0.3)
        receiver.start()
        ready.get(timeout=60)
        if not zmq:
            sender.start()
        go.set()
        rate, receiver_cpu = results.get(timeout=300)
        measured = (rate, receiver_cpu, sender_cpu.get(timeout=120))
        sender.join(60)
        receiver.join(60)
    finally:
        for process in (sender, receiver):
            if process.is_alive():
                process.kill()
        if memory is not None:
            memory.close()
            memory.unlink()
        elif peer == "PipeBit":
            pipebit.remove(name, force=True)
    return measured


def memcpy_gbps(nbytes: int) -> float:
    source, target = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
    best = float("inf")
    for _ in range(30):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9


# ------------------------------------------------------------------ the table
PEERS_1_TO_1 = [
    "PipeBit receive()",
    "PipeBit receive(copy=False)",
    "multiprocessing.Queue",
    "pyzmq PUSH/PULL copy=False",
    "shared_memory by hand (4 slots)",
]
PEERS_1_TO_4 = [
    "PipeBit receive()",
    "PipeBit receive(copy=False)",
    "multiprocessing.Queue",
    "pyzmq PUB/SUB copy=False, no HWM",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 frames, 1 run")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--only", choices=["frames", "bytes"], help="one of the two tables")
    args = parser.parse_args(argv)
    count = args.frames or (100 if args.quick else 300)
    runs = args.runs or (1 if args.quick else 3)
    if args.only != "bytes":
        frame_copy = memcpy_gbps(FRAME_BYTES)
        print(f"# arrays: {count} frames of {SHAPE} uint8 per run, median of {runs} run(s)")
        print(f"# Python {sys.version.split()[0]}, numpy {np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs")
        print(f"# memcpy of one frame: {frame_copy:.1f} GB/s ({FRAME_BYTES / frame_copy / 1e6:.2f} ms per frame)\n")
        print("| scenario | peer | frames/s | GB/s | receiver CPU per frame | vs PipeBit receive() |")
        print("|---|---|---:|---:|---:|---:|")
        for scenario, peers, fan_out in (("1 -> 1", PEERS_1_TO_1, 1), ("1 -> 4", PEERS_1_TO_4, 4)):
            medians: dict[str, tuple[float, float]] = {}
            for peer in peers:
                measured = [run(peer, count, fan_out) for _ in range(runs)]
                medians[peer] = (statistics.median(r for r, _ in measured), statistics.median(c for _, c in measured))
            base = medians["PipeBit receive()"][0]
            for peer, (rate, cpu) in medians.items():
                print(
                    f"| {scenario} | {peer} | {rate:.0f} | {rate * FRAME_BYTES / 1e9:.2f} | "
                    f"{cpu * 1e3:.2f} ms | {rate / base:.2f}x |"
                )
    if args.only != "frames":
        big_packets(300 if args.quick else 1000, runs)
    return 0


def big_packets(count: int, runs: int) -> None:
    """The 1 MiB ``bytes`` table.  Each run measures the peers one after the other, so a slow
    phase of the machine tends to hit them all; the hand-written ring (one copy in, one copy
    out, nothing else) is what one copy in and one out allow on this machine, in this run."""
    measured: dict[str, list[tuple[float, float, float]]] = {peer: [] for peer in BYTES_PEERS}
    for _ in range(runs):
        for peer in BYTES_PEERS:
            measured[peer].append(run_bytes(peer, count))
    mib_copy = memcpy_gbps(MIB)
    print(f"\n# 1 MiB bytes packets, {count} per run, a Safe pipe at its defaults, median of {runs} run(s)")
    print("| peer | GB/s | sender CPU per packet | receiver CPU per packet | vs the hand-written ring |")
    print("|---|---:|---:|---:|---:|")
    bound = statistics.median(rate for rate, _, _ in measured[BYTES_PEERS[-1]])
    for peer, results in measured.items():
        rate = statistics.median(r for r, _, _ in results)
        receiver_cpu = statistics.median(c for _, c, _ in results)
        sender_cpu = statistics.median(c for _, _, c in results)
        spread = " (" + ", ".join(f"{r:.2f}" for r, _, _ in results) + ")" if runs > 1 else ""
        print(
            f"| {peer} | {rate:.2f}{spread} | {sender_cpu * 1e6:.0f} us | {receiver_cpu * 1e6:.0f} us | "
            f"{rate / bound:.2f}x |"
        )
    print(f"| memcpy of 1 MiB (in cache) | {mib_copy:.2f} | | | |")


if __name__ == "__main__":
    raise SystemExit(main())
