"""What one ``send()`` costs, piece by piece: the floor under PipeBit's per-packet rate.

Usage::

    python benchmarks/floor.py            # 7 rounds of 200,000 calls per row
    python benchmarks/floor.py --calls 50000 --rounds 3

In one process, with no receiver attached, it times the steps a sender cannot
avoid -- the caller's own loop building ``[i, i+1, i+2, i+3, i+4]``, a Python
method call, MessagePack encoding, a ``threading.Lock`` round, a deque append --
and then the real ``SafeSender.send()`` (alone, then with a receiver process
reading) and ``FastSender.send()`` on the same packets.  Each figure is the
best of the rounds, in nanoseconds per call of the calling thread's CPU time
(``time.thread_time()``), which other load on the machine inflates less than
wall time.  ``SafeSender`` also shows the whole
process's CPU time per packet: its delivery thread shares the GIL with the caller.

The difference between the sum of the unavoidable steps and the real ``send()``
is PipeBit's own bookkeeping; the sum itself is the pure-Python floor.

Two last rows are the receiving side: decoding records of 4,000 such packets with
CPython's garbage collector running through the decoding, and with it paused there
as PipeBit's receivers do.
"""

from __future__ import annotations

import argparse
import collections
import gc
import mmap
import multiprocessing
import os
import pickle
import platform
import threading
import time
from typing import Any, Callable

import msgpack
from common import msgpack_version

import pipebit
from pipebit import _codec


def per_call(loop: Callable[[int], Any], calls: int, rounds: int, clock: Callable[[], float]) -> float:
    """Best time of ``rounds`` runs of ``loop(calls)``, in ns per call."""
    best = float("inf")
    for _ in range(rounds):
        started = clock()
        loop(calls)
        best = min(best, clock() - started)
    return best / calls * 1e9


def interleaved(loops: list[Callable[[int], Any]], calls: int, rounds: int) -> list[tuple[float, float]]:
    """For each loop, (calling thread, whole process) CPU ns per call from its best round.

    The loops take turns round by round, so that a slow phase of a shared machine
    hits them all alike: their difference is what the comparison is about.
    """
    best = [(float("inf"), float("inf"))] * len(loops)
    for _ in range(rounds):
        for index, loop in enumerate(loops):
            thread, process = time.thread_time(), time.process_time()
            loop(calls)
            best[index] = min(best[index], (time.thread_time() - thread, time.process_time() - process))
    return [(thread / calls * 1e9, process / calls * 1e9) for thread, process in best]


DRAIN_EVERY = 4096  # packets the minimal sender queues before its queue is emptied


def send_loop(send: Callable[[list[int]], None]) -> Callable[[int], None]:
    """A loop calling ``send`` with the benchmark's packets, as an application would."""

    def loop(n: int) -> None:
        for i in range(n):
            send([i, i + 1, i + 2, i + 3, i + 4])

    return loop


def drain(name: str, ready: Any, stop: Any) -> None:
    """A receiver process reading everything, as the 1→1 benchmark's receiver does."""
    with pipebit.SafeReceiver(name, 0, start="new") as receiver:
        ready.set()
        while not stop.is_set():
            receiver.receive(timeout=0.1)


class Bare:
    """A method call that does nothing, for the cost of the call itself."""

    def send(self, data: Any) -> None:
        pass


class Minimal:
    """The least a thread-safe queueing sender can do: lock, encode, append, unlock."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._lock, self._unlock = lock.acquire, lock.release
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.queue: collections.deque[bytes] = collections.deque()

    def send(self, data: Any) -> None:
        self._lock()
        try:
            self.queue.append(self._pack(data))
        finally:
            self._unlock()


class MinimalRegister:
    """The least a latest-value publication can do in Python: encode, then a seqlock
    write into shared memory (odd sequence, payload, length, even sequence, publish).
    No lock between threads, no time stamp, no check for sleeping readers."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 1 << 16)
        self._bytes = memoryview(self._map)
        self._words = self._bytes.cast("Q")
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._seq = 0

    def send(self, data: Any) -> None:
        encoded = self._pack(data)
        n = len(encoded)
        words = self._words
        self._seq = seq = self._seq + 2
        words[8] = seq - 1
        self._bytes[96 : 96 + n] = encoded
        words[9] = n
        words[8] = seq
        words[0] = seq

    def close(self) -> None:
        self._words.release()
        self._bytes.release()
        self._map.close()


def decode_per_packet(rounds: int, batch: int = 4000, batches: int = 100) -> tuple[float, float]:
    """A receiver's side: CPU ns per packet for ``_codec.decode_batch`` of records of ``batch``
    small packets, looking at each as the 1->1 benchmark's receiver does, with CPython's
    collector running through the decoding (the pause switched off) and paused there (as
    PipeBit decodes).  Each batch is dropped before the next, as an application drops them."""
    record = _codec.join_batch([_codec.encode([i, i + 1, i + 2, i + 3, i + 4]) for i in range(batch)])
    pause_bytes = _codec.GC_PAUSE_BYTES

    def decode(n: int) -> None:
        for _ in range(n):
            for packet in _codec.decode_batch(record, batch)[0]:
                packet[0]

    def timed(pause_from: int) -> float:
        _codec.GC_PAUSE_BYTES = pause_from
        try:
            return per_call(decode, batches, 1, time.process_time) / batch
        finally:
            _codec.GC_PAUSE_BYTES = pause_bytes

    running = paused = float("inf")
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        for _ in range(rounds):  # in turns, so that a slow phase of the machine hits both
            running = min(running, timed(1 << 62))
            paused = min(paused, timed(pause_bytes))
    finally:
        if not was_enabled:
            gc.disable()
    return running, paused


def report(calls: int = 200_000, rounds: int = 7) -> str:
    """The table, in markdown, with a sentence on what it shows."""
    thread_cpu = time.thread_time

    pack = msgpack.Packer(use_bin_type=True).pack
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release
    queue: collections.deque[bytes] = collections.deque(maxlen=1)
    append = queue.append
    bare = Bare().send
    encoded = pack([1, 2, 3, 4, 5])

    def loop_only(n: int) -> None:
        for i in range(n):
            [i, i + 1, i + 2, i + 3, i + 4]  # building the packet is the cost measured

    def loop_call(n: int) -> None:
        for i in range(n):
            bare([i, i + 1, i + 2, i + 3, i + 4])

    def loop_pack(n: int) -> None:
        for i in range(n):
            pack([i, i + 1, i + 2, i + 3, i + 4])

    def lock_round(n: int) -> None:
        for _ in range(n):
            acquire()
            release()

    def deque_append(n: int) -> None:
        for _ in range(n):
            append(encoded)

    def empty_loop(n: int) -> None:
        for _ in range(n):
            pass

    def pickle_round(n: int) -> None:
        dumps, loads = pickle.dumps, pickle.loads
        for i in range(n):
            loads(dumps([i, i + 1, i + 2, i + 3, i + 4]))

    rows: list[tuple[str, float]] = []
    base = per_call(empty_loop, calls, rounds, thread_cpu)
    build = per_call(loop_only, calls, rounds, thread_cpu)
    call = per_call(loop_call, calls, rounds, thread_cpu) - build
    packing = per_call(loop_pack, calls, rounds, thread_cpu) - build
    locking = per_call(lock_round, calls, rounds, thread_cpu) - base
    appending = per_call(deque_append, calls, rounds, thread_cpu) - base
    rows += [
        ("the caller's loop, building the list", build),
        ("a Python method call (bound, one argument)", call),
        ("MessagePack Packer.pack of the list", packing),
        ("threading.Lock acquire() + release()", locking),
        ("deque.append", appending),
    ]
    floor = build + call + packing + locking + appending
    minimal = Minimal()
    minimal_loop = send_loop(minimal.send)

    def minimal_round(n: int) -> None:
        # Emptied every few thousand packets, as a delivery thread keeps a real queue short:
        # a deque left to grow to the whole round's 200,000 packets measures the allocator.
        for start in range(0, n, DRAIN_EVERY):
            minimal_loop(min(DRAIN_EVERY, n - start))
            minimal.queue.clear()

    name = f"floor-{os.getpid()}"
    try:
        with pipebit.SafeSender(name, 0) as sender:
            sending = send_loop(sender.send)

            def safe_loop(n: int) -> None:
                sending(n)
                sender.flush()  # the delivery thread's share of this round is in the round

            safe_loop(calls)  # warm: the ring wraps and the delivery thread is running
            sender.flush()
            (whole, _), (safe, safe_process) = interleaved([minimal_round, safe_loop], calls, rounds)
            context = multiprocessing.get_context("spawn")
            ready, stop = context.Event(), context.Event()
            receiver = context.Process(target=drain, args=(name, ready, stop))
            receiver.start()
            try:
                ready.wait(30)
                safe_loop(calls)
                ((drained, drained_process),) = interleaved([safe_loop], calls, rounds)
            finally:
                stop.set()
                receiver.join(30)
    finally:
        pipebit.remove(name, force=True)
    register = MinimalRegister()
    try:
        with pipebit.FastSender(name, 0) as fast_sender:
            loops = [send_loop(register.send), send_loop(fast_sender.send)]
            (least_fast, _), (fast, _) = interleaved(loops, calls, rounds)
    finally:
        pipebit.remove(name, force=True)
        register.close()
    reference = per_call(pickle_round, calls, rounds, thread_cpu) - build
    decode_running, decode_paused = decode_per_packet(rounds)
    saved = decode_running - decode_paused
    if safe > whole:
        beyond = (
            f"`SafeSender.send()` spends {safe - whole:.0f} ns per packet beyond it on its own checks and bounds "
            f"({(safe - whole) / safe:.0%} of its time)."
        )
    else:  # the two are closer than this machine's noise
        beyond = "`SafeSender.send()` measured no slower than it in this run (the machine's noise is larger)."

    lines = [
        f"`send()` piece by piece: `benchmarks/floor.py` ({platform.python_implementation()} "
        f"{platform.python_version()}, msgpack {msgpack_version()}, best of {rounds} x "
        f"{calls:,} calls, CPU time of the calling thread, no receiver attached unless said).",
        "",
        "| step | ns per packet |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value:.0f} |" for label, value in rows]
    lines += [
        f"| **floor: the sum of the above** | **{floor:.0f}** (= {1e3 / floor:.2f}M packets/s) |",
        f"| **the same steps as one method** (lock, encode, append), in that loop | **{whole:.0f}** "
        f"(= {1e3 / whole:.2f}M packets/s) |",
        f"| `SafeSender.send()` in that loop, calling thread | {safe:.0f} (= {1e3 / safe:.2f}M packets/s) |",
        f"| `SafeSender.send()`, whole process (delivery thread included) | {safe_process:.0f} |",
        f"| `SafeSender.send()` with a receiver process reading, calling thread | {drained:.0f} "
        f"(= {1e3 / drained:.2f}M packets/s) |",
        f"| the same, whole sending process | {drained_process:.0f} |",
        f"| **the least a seqlock publication does** (encode, odd seq, copy, length, even seq, publish), "
        f"in that loop | **{least_fast:.0f}** (= {1e3 / least_fast:.2f}M updates/s) |",
        f"| `FastSender.send()` in that loop, in turns with the line above | {fast:.0f} "
        f"(= {1e3 / fast:.2f}M updates/s) |",
        f"| for reference: pickle dumps + loads of the list | {reference:.0f} |",
        f"| receiving: decoding a record of 4,000 such packets, per packet, the collector running | "
        f"{decode_running:.0f} |",
        f"| the same with the collector paused while it decodes, as PipeBit's receivers do | {decode_paused:.0f} |",
        "",
        f"Timed one by one, the steps add up to {floor:.0f} ns; as one method, measured in turns with "
        f"`SafeSender.send()`, they take {whole:.0f} ns: the floor a queueing sender meets in practice. "
        f"{beyond} Its delivery thread, which shares the GIL, adds {safe_process - safe:.0f} ns. "
        f"`FastSender.send()` spends {fast - least_fast:.0f} ns beyond the least seqlock publication on its "
        "lock between threads, size checks, time stamp and the barrier before it looks for sleeping readers. "
        f"On the receiving side, pausing the garbage collector while a batch decodes saves "
        f"{saved:.0f} ns per packet ({saved / decode_running:.0%}): "
        "unpaused, the thousands of lists a batch builds set off collections that scan those very lists.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(report(args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
