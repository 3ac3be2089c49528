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
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import soak_verdict
import soak_worker
from common import remove_pipe
from soak_orchestrator import Soak


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
        return soak_worker.run_sender(args)
    if args.worker in ("anchor", "churn"):
        return soak_worker.run_receiver(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    soak = Soak(args, os.path.abspath(__file__))
    try:
        summary = soak_verdict.verdict(soak, soak.run())
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
