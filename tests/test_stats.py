"""pipe_stats(), list_pipes() and endpoints' stats(): what tools see of a pipe."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

import pipebit
from pipebit import _layout as L
from pipebit import _shm

from .conftest import Reaper

HOLD_RECEIVER = """
import sys, pipebit, time
r = pipebit.SafeReceiver(sys.argv[1], 0, max_cached=1)
print("ready", flush=True)
time.sleep(600)
"""


def test_snapshot_of_a_safe_pipe(name: str) -> None:
    with pipebit.SafeSender(name, 0, capacity=65536) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(10):
            sender.send([i])
        sender.flush(timeout=10)
        deadline = time.monotonic() + 10
        got: list[object] = []
        while len(got) < 10 and time.monotonic() < deadline:
            got += receiver.receive(timeout=1)
        snap = pipebit.pipe_stats(name)
        assert (snap.name, snap.model, snap.capacity, snap.packets_written) == (name, "safe", 65536, 10)
        assert (snap.senders, snap.receivers, snap.max_lag, snap.stale) == (1, 1, 0, False)
        assert snap.last_write_at is not None
        assert abs(snap.last_write_at - time.time()) < 60
        assert {p.pid for p in snap.participants} == {os.getpid()}
        assert 0 < snap.fill < 1
        mine = sender.stats()
        assert (mine.role, mine.packets, mine.pending) == ("sender", 10, 0)
        theirs = receiver.stats()
        assert (theirs.role, theirs.packets, theirs.pending, theirs.lag) == ("receiver", 10, 0, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.name = "x"  # type: ignore[misc]
    assert pipebit.pipe_stats(name).stale


def test_lag_of_a_receiver_that_does_not_read(name: str, reaper: Reaper) -> None:
    child = reaper.spawn(HOLD_RECEIVER, name)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    with pipebit.SafeSender(name, 0) as sender:
        for i in range(50_000):
            sender.send([i])
        sender.flush(timeout=30)
        snap = pipebit.pipe_stats(name)
        (receiver,) = [p for p in snap.participants if p.role == "receiver"]
        assert receiver.alive
        assert receiver.pid == child.pid
        assert receiver.lag is not None
        assert receiver.lag > 0
        assert snap.max_lag == receiver.lag
        assert snap.unread_bytes > 0


def test_a_killed_receiver_shows_dead_even_if_its_pid_is_reused(name: str, reaper: Reaper) -> None:
    child = reaper.spawn(HOLD_RECEIVER, name)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    (recorded,) = pipebit.pipe_stats(name).participants
    assert recorded.pid == child.pid
    # Simulate pid reuse: the recorded pid now names a live process (this one).
    segment = _shm.attach_segment(name)
    header = segment.view[: L.DATA_OFFSET].cast("Q")
    header[L.slot_base(recorded.slot) + L.S_PID] = os.getpid()
    header.release()
    segment.close()
    snap = pipebit.pipe_stats(name)
    assert [(p.pid, p.alive) for p in snap.participants] == [(os.getpid(), False)]
    assert snap.stale
    assert snap.receivers == 0


def test_list_pipes_finds_every_pipe_by_its_real_name(make_name: object) -> None:
    names = [make_name() for _ in range(3)]  # type: ignore[operator]
    safe = pipebit.SafeSender(names[0], 0)
    fast = pipebit.FastSender(names[1], 0)
    try:
        fast.send([1])
        with pipebit.SafeReceiver(names[2], 0):
            listed = {p.name: p for p in pipebit.list_pipes()}
            assert set(names) <= set(listed)
            assert listed[names[0]].model == "safe"
            assert listed[names[1]].model == "fast"
            assert listed[names[1]].packets_written == 1
            assert listed[names[2]].receivers == 1
    finally:
        safe.close_connection()
        fast.close_connection()


def test_pipe_stats_of_a_missing_pipe(name: str) -> None:
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.pipe_stats(name)
    with pytest.raises(pipebit.InvalidNameError):
        pipebit.pipe_stats("../etc")
