"""Waiting receivers are woken by the sender, not by their own timeouts.

A receiver asleep in receive(timeout=None) looks again by itself only every
2 s (SLEEP_SLICE).  If senders did not wake it, a packet would wait about 1 s
on average; woken, it arrives in well under a millisecond.  Five trials all
under 0.5 s would happen by luck with probability (1/4)**5 without wake-ups.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

import pipebit

TRIALS = 5
BOUND = 0.5


def latencies(receiver: Any, send: Callable[[list[Any]], None]) -> list[float]:
    found: list[float] = []
    for trial in range(TRIALS):
        got: list[Any] = []
        thread = threading.Thread(target=lambda into=got: into.extend(receiver.receive(timeout=None)))
        thread.start()
        time.sleep(0.3)  # let it fall asleep
        sent_at = time.monotonic()
        send([trial])
        thread.join(10)
        found.append(time.monotonic() - sent_at)
        assert got == [[trial]]
    return found


@pytest.mark.parametrize("model", ["safe", "fast"])
def test_a_sleeping_receiver_is_woken_by_the_sender(name: str, model: str) -> None:
    sender_class, receiver_class = (
        (pipebit.SafeSender, pipebit.SafeReceiver) if model == "safe" else (pipebit.FastSender, pipebit.FastReceiver)
    )
    with sender_class(name, 0) as sender, receiver_class(name, 0) as receiver:
        measured = latencies(receiver, sender.send)
    assert max(measured) < BOUND, f"wake-up latencies {measured}"


def test_a_wrap_mark_wakes_the_receiver_that_must_step_over_it(name: str) -> None:
    # A record as large as the ring, sent when the ring is mid-lap: the writer marks the
    # rest of the lap as skipped, then has no room until the receiver steps over the mark.
    # The receiver has read everything before it and sleeps; unless the writer wakes it
    # for the mark alone, both sit until the receiver's own 2 s timeout.  Each round is
    # bounded well under that.
    capacity = 8192
    big = [b"x" * (capacity - 21 - 4)]  # encodes to exactly the largest packet
    with pipebit.SafeSender(name, 0, capacity=capacity) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(TRIALS * 2):
            sender.send([i])  # a small record first: the big one starts mid-lap
            sender.flush(timeout=10)
            time.sleep(0.05)  # the receiver's thread reads it and goes to sleep
            started = time.monotonic()
            sender.send(big)
            sender.flush(timeout=10)
            assert time.monotonic() - started < 1.5, "the wrap mark did not wake the receiver"
            got: list[Any] = []
            while len(got) < 2 and (batch := receiver.receive(timeout=5)):
                got += batch
            assert [p[0] for p in got] == [i, big[0]]
