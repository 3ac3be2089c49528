"""The soak's child processes: senders streaming on a lane, receivers checking every packet.

Each is ``soak.py --worker sender|anchor|churn ...`` (the orchestrator starts
them; see soak.py).  A worker says ``ready``, ``progress`` and ``final`` as JSON
lines on stdout and stops at the first line (or end of file) on its stdin.

A sender sends ``[lane, sender_id, seq, payload, crc32(payload)]`` and counts in
a file each packet it called ``send()`` for, for the orchestrator to read after
a SIGKILL.  A receiver's :class:`Tally` checks, per sender id, that packets are
whole and contiguous and in order from the first one it got.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import sys
import threading
import time
import zlib
from typing import Any

import pipebit

PROGRESS_EVERY_S = 0.5
# The report of a receiver that said nothing before it was killed.
NOTHING: dict[str, Any] = {"packets": 0, "corrupt": 0, "missing": 0, "disorder": 0, "problems": [], "senders": {}}


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
