"""Issue #14: no packet lost, no old packet replayed as new, no setting ignored -- without a word.

Each test here failed before the change it names (the issue's item in brackets).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from typing import Any

import pytest

import pipebit
from pipebit import _codec, _lock, _shm
from pipebit import _layout as L
from pipebit._pipe import open_pipe
from pipebit._ring import RingReader, start_position

from .helpers import poke, receive_n, ring_records, segment_path
from .redis_server import both_transports


def nested(levels: int) -> list[Any]:
    """A packet of ``levels`` levels of lists, its own counted."""
    packet: list[Any] = []
    for _ in range(levels - 1):
        packet = [packet]
    return packet


def depth(value: Any) -> int:
    levels = 0
    while isinstance(value, list):
        levels += 1
        value = value[0] if value else None
    return levels


# ------------------------------------------------------------------- [1] limits
@both_transports
def test_the_deepest_packet_send_accepts_reaches_every_receiver_with_its_neighbours(name: str) -> None:
    # Before: 1025 levels passed send() but not the receivers' decoder inside a record, and
    # every receiver lost the whole record and what followed it ("received 0 of 201").
    with pipebit.SafeReceiver(name, 0, start="new") as receiver, pipebit.SafeSender(name, 0) as sender:
        for i in range(100):
            sender.send([i])
        sender.send(nested(_codec.MAX_DEPTH))
        for i in range(100, 200):
            sender.send([i])
        sender.flush(timeout=10)
        got = receive_n(receiver, 201, timeout=20)
    assert [p[0] for p in got[:100]] == list(range(100))
    assert depth(got[100]) == _codec.MAX_DEPTH
    assert [p[0] for p in got[101:]] == list(range(100, 200))


@both_transports
def test_one_level_deeper_is_refused_by_send_and_costs_nothing_else(name: str) -> None:
    with pipebit.SafeReceiver(name, 0, start="new") as receiver, pipebit.SafeSender(name, 0) as sender:
        sender.send(["before"])
        with pytest.raises(pipebit.PacketSizeError, match=f"at most {_codec.MAX_DEPTH} levels deep"):
            sender.send(nested(_codec.MAX_DEPTH + 1))
        sender.send(["after"])
        sender.flush(timeout=10)
        assert receive_n(receiver, 2, timeout=10) == [["before"], ["after"]]


def test_the_deepest_value_of_a_fast_pipe_arrives(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0) as receiver:
        sender.send(nested(_codec.MAX_DEPTH))
        (value,) = receiver.receive(timeout=5)
    assert depth(value) == _codec.MAX_DEPTH


def test_a_damaged_record_costs_only_its_own_packets(name: str) -> None:
    # Before: the receiver skipped to the newest commit, losing every record behind the
    # damaged one that it had not read yet.
    capacity = 16384
    with pipebit.SafeSender(name, 0, capacity=capacity) as sender:
        for i in range(30):  # one record per packet: each flushed on its own
            sender.send([i, "x" * 20])
            sender.flush(timeout=10)
    records = ring_records(name)
    assert len(records) == 30
    position, _length, count, first_seq = records[10]
    assert (count, first_seq) == (1, 10)
    poke(name, L.DATA_OFFSET + position % capacity + L.RECORD_HEADER + 1, b"\xc1")  # inside packet 10
    with pipebit.SafeReceiver(name, 0, start="oldest") as receiver:
        before = receiver.receive(timeout=5)
        while len(before) < 10:
            before += receiver.receive(timeout=5)
        with pytest.raises(pipebit.CorruptPacketError, match="1 packet\\(s\\) of it lost") as info:
            receiver.receive(timeout=5)
        assert name in str(info.value)
        after = receive_n(receiver, 19, timeout=10)
    assert [p[0] for p in before] == list(range(10))
    assert [p[0] for p in after] == list(range(11, 30))


def test_the_good_packets_of_a_damaged_record_come_before_its_error(name: str) -> None:
    capacity = 16384
    with pipebit.SafeSender(name, 0, capacity=capacity) as sender:
        for i in range(60):  # queued together: (after perhaps a lone first one) a record
            sender.send([i, "y" * 10])
        sender.flush(timeout=10)
        sender.send([99])
        sender.flush(timeout=10)
    records = ring_records(name)
    position, _, count, first_seq = max(records, key=lambda r: r[2])
    assert count >= 40, records
    packet_len = len(_codec.encode([0, "y" * 10]))
    # The first byte of the record's 21st packet becomes one no MessagePack value starts with.
    poke(name, L.DATA_OFFSET + position % capacity + L.RECORD_HEADER + 3 + 20 * packet_len, b"\xc1")
    with pipebit.SafeReceiver(name, 0, start="oldest") as receiver:
        got: list[Any] = []
        errors: list[pipebit.CorruptPacketError] = []
        deadline = time.monotonic() + 10
        while (not got or got[-1] != [99]) and time.monotonic() < deadline:
            try:
                got += receiver.receive(timeout=0.5)
            except pipebit.CorruptPacketError as exc:
                errors.append(exc)
                got.append(["error"])
    good = first_seq + 20
    lost_from_here = first_seq + count
    assert got == [
        *[[i, "y" * 10] for i in range(good)],
        ["error"],
        *[[i, "y" * 10] for i in range(lost_from_here, 60)],
        [99],
    ]
    assert len(errors) == 1
    assert "at packet 21" in str(errors[0])
    assert f"{count - 20} packet(s) of it lost" in str(errors[0])


# ----------------------------------------------------------- [5] forged header numbers
def _forge_u64(name: str, index: int, value: int) -> None:
    poke(name, index * 8, struct.pack("=Q", value))


def test_a_forged_slot_high_cannot_keep_a_pipe_from_being_removed_or_overridden(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["x"])
    _forge_u64(name, L.SLOT_HIGH, 65)
    # An overriding sender, a receiver and the stats all read slot_high: none may trip on it.
    with pipebit.SafeSender(name, 0, override=True) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        sender.send(["y"])
        assert receive_n(receiver, 1, timeout=5) == [["y"]]
        assert pipebit.pipe_stats(name).receivers == 1
    _forge_u64(name, L.SLOT_HIGH, 1 << 62)
    with pytest.raises(pipebit.PipeBusyError), pipebit.SafeReceiver(name, 0):
        pipebit.remove(name)
    assert segment_path(name).exists()
    removed = pipebit.remove(name, force=True)
    assert _shm.segment_name(name) in removed
    assert not segment_path(name).exists()


@pytest.mark.parametrize("offset", [L.MAGIC.__len__(), 32, 56])  # version, capacity, name length
def test_remove_with_force_removes_a_segment_however_damaged(name: str, offset: int) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["x"])
    poke(name, offset, b"\xff" * 8)
    with pytest.raises(pipebit.PipeFormatError):
        pipebit.remove(name)
    pipebit.remove(name, force=True)
    assert not segment_path(name).exists()


def test_a_fast_lane_whose_owner_is_out_of_range_is_taken_as_free(name: str) -> None:
    with pipebit.FastSender(name, 0) as sender:
        sender.send([1])
    lane0 = (L.DATA_OFFSET + L.LANE_TABLE) // 8
    for lane in range(L.LANES):
        _forge_u64(name, lane0 + lane * L.LANE_ENTRY // 8, 200)  # slot 199 of a 64-slot table
    with pipebit.FastSender(name, 0) as sender, pipebit.FastReceiver(name, 0, start="new") as receiver:
        sender.send([2])
        assert receiver.receive(timeout=5) == [[2]]


# ----------------------------------------------------------- [6] impossible cursors
@pytest.mark.parametrize("forged", ["a lap behind", "past head", "behind, but possible"])
def test_a_forged_cursor_of_an_idle_receiver_does_not_wedge_its_senders(name: str, forged: str) -> None:
    capacity = 8192
    with pipebit.SafeReceiver(name, 0, capacity=capacity, start="new") as receiver:
        sender = pipebit.SafeSender(name, 0)
        try:
            for i in range(400):  # several laps, all read
                sender.send([i, "w" * 40])
            sender.flush(timeout=10)
            assert len(receive_n(receiver, 400, timeout=10)) == 400
            slot = receiver.stats().slot
            raw = segment_path(name).read_bytes()
            head = struct.unpack_from("=Q", raw, L.HEAD * 8)[0]
            cursor_index = L.slot_base(slot) + L.S_CURSOR
            cursor = {"a lap behind": head - capacity - 64, "past head": head + 64, "behind, but possible": head - 4096}
            _forge_u64(name, cursor_index, cursor[forged])
            # The receiver is idle: nothing arrives to wake it.  Its senders must not wait on it for ever.
            for i in range(400, 800):
                sender.send([i, "w" * 40], timeout=10)
            sender.flush(timeout=10)
            got = receive_n(receiver, 400, timeout=10)
            assert [p[0] for p in got] == list(range(400, 800))
        finally:
            sender.close_connection()


# ----------------------------------------------------------------- [7] attach vs remove
def test_removal_cannot_slip_between_attaching_and_claiming_a_slot(name: str) -> None:
    # Before: between the pipe's lifecycle lock being let go and the slot being claimed,
    # remove(), `pipebit clean` or an overriding rebuild saw nobody attached and unlinked the
    # pipe; the new endpoint then failed on first use.  Every one of them takes the lifecycle
    # lock first, so it must stay held until the slot is claimed.
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["retained"])
    # Hold the pipe's writers' lock, under which a slot is claimed: the receiver's attach stops there.
    fd = os.open(_shm.lock_path(name), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    made: list[Any] = []
    attaching = threading.Thread(target=lambda: made.append(pipebit.SafeReceiver(name, 0, start="oldest")))
    attaching.start()
    try:
        time.sleep(0.3)  # the receiver is now half attached, waiting to claim its slot
        with pytest.raises(pipebit.PipeTimeoutError), _lock.lifecycle(timeout=0.3):
            pytest.fail("the lifecycle lock was free while an endpoint was between attaching and claiming")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    attaching.join(10)
    (receiver,) = made
    try:
        with pytest.raises(pipebit.PipeBusyError):
            pipebit.remove(name)
        assert receiver.receive(timeout=5) == [["retained"]]
    finally:
        receiver.close_connection()


# ---------------------------------------------------------------- [8] skip consistency
def test_after_structural_damage_the_records_committed_meanwhile_are_not_called_corrupt(name: str) -> None:
    # A reader that meets a record it cannot step over skips to the newest commit.  Before,
    # it took the position from the head it read when it began and the packet count from a
    # later look: a commit in between made the next good record look corrupt too (a second
    # error, and more packets lost).  A sender streams into a roomy ring while the reader
    # decodes a long backlog up to the damage, so commits land in between.
    capacity = 1 << 20
    pipe = open_pipe(name, L.MODEL_SAFE, capacity=capacity, packet_len=None, override=False)
    reported: list[int] = []
    stop = threading.Event()
    try:

        def place(pipe: Any, base: int) -> None:
            pipe.header[base + L.S_CURSOR], pipe.header[base + L.S_NEXT_SEQ] = start_position(pipe, "new")

        slot = pipe.claim_slot(L.ROLE_RECEIVER, place)
        reader = RingReader(pipe, slot)

        def read() -> bool:
            """One read; whether it reported damage."""
            try:
                reader.read(10**9)
            except pipebit.CorruptPacketError:  # how damage was reported before
                return True
            return getattr(reader, "problem", None) is not None

        def stream() -> None:
            with pipebit.SafeSender(name, 0, queue_size=64) as sender:
                i = 0
                while not stop.is_set():
                    sender.send([i, "s" * 30])
                    i += 1

        feeder = threading.Thread(target=stream)
        feeder.start()
        for _ in range(20):
            time.sleep(0.05)  # a backlog of records builds up
            position = _last_record(pipe, reader.cursor)  # not read yet (walked from the reader, not from
            # tail: tail may still lie behind an earlier round's damage)
            poke(name, L.DATA_OFFSET + position % capacity, struct.pack("=I", 0x7FFFFFF0))
            reports = sum(read() for _ in range(3))
            reported.append(reports)
        stop.set()
        feeder.join(30)
        pipe.release_slot(slot)
    finally:
        stop.set()
        pipe.close()
    assert reported == [1] * len(reported), f"errors per damaged record: {reported}"


def _last_record(pipe: Any, position: int) -> int:
    """The position of the last record committed, walking from ``position`` (a record start)."""
    head, capacity, last = pipe.header[L.HEAD], pipe.capacity, position
    while position < head:
        offset = position % capacity
        length = L.RECORD.unpack_from(pipe.data, offset)[0] if capacity - offset >= L.RECORD_HEADER else L.WRAP_MARK
        if length == L.WRAP_MARK:
            position += capacity - offset
            continue
        last, position = position, position + L.align(L.RECORD_HEADER + length)
    return last


# ---------------------------------------------------------------- [A] start="unread"
@both_transports
def test_a_second_run_does_not_replay_what_the_first_run_consumed(name: str) -> None:
    # Run 1: a producer, then a worker started after it (the original README's order).
    with pipebit.SafeSender(name, 0) as sender:
        for i in range(10):
            sender.send(["run 1", i])
    with pipebit.SafeReceiver(name, 0) as worker:
        assert [p[1] for p in receive_n(worker, 10, timeout=10)] == list(range(10))
        assert worker.receive(timeout=0.2) == []
    # Run 2, same order: the worker gets run 2's packets only.
    with pipebit.SafeSender(name, 0) as sender:
        for i in range(5):
            sender.send(["run 2", i])
    with pipebit.SafeReceiver(name, 0) as worker:
        got = receive_n(worker, 5, timeout=10)
        assert worker.receive(timeout=0.3) == []
    assert got == [["run 2", i] for i in range(5)]
    # An explicit replay still has everything retained.
    with pipebit.SafeReceiver(name, 0, start="oldest") as replay:
        assert len(receive_n(replay, 15, timeout=10)) == 15


def test_what_a_killed_receiver_had_read_is_not_replayed(name: str, reaper: Any) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        for i in range(20):
            sender.send([i])
    code = (
        "import sys, time, pipebit\n"
        "r = pipebit.SafeReceiver(sys.argv[1], 0)\n"
        "got = []\n"
        "while len(got) < 20: got += r.receive(timeout=1)\n"
        "print('read', len(got), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = reaper.spawn(code, name)
    assert child.stdout.readline().split() == ["read", "20"]
    child.kill()
    child.wait(10)
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["new"])
    with pipebit.SafeReceiver(name, 0) as receiver:
        assert receive_n(receiver, 1, timeout=10) == [["new"]]
        assert receiver.receive(timeout=0.3) == []


# ------------------------------------------------------------- [B] explicit sizes
# (CapacityMismatchError on both transports: tests/test_retention_and_sizes.py)
def test_the_packet_size_error_points_at_the_ways_out(name: str) -> None:
    with pipebit.SafeSender(name, 0, capacity=8192) as sender, pytest.raises(pipebit.PacketSizeError) as info:
        sender.send([b"x" * 10_000])
    text = str(info.value)
    assert "capacity" in text
    assert "pipebit rm" in text
    assert "override=True" in text
