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
