"""Large ``bytes`` out of band (issue #16): a Safe sender that sends large packets frames
the ``bytes`` and ``bytearray`` values of 64 KiB or more in them, so that each is copied
once into the pipe instead of three times.  The receiver gets ``bytes`` as before; the
tests here check what arrives, the snapshot ``send()`` promises, when the sender frames,
damage, and that none of it needs numpy.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import msgpack
import pytest

import pipebit
from pipebit import _codec, _frames
from pipebit import _layout as L

from .helpers import Child, open_frame, ring_records, segment_path
from .redis_server import both_transports

KIB = 1024
BIG = _frames.LIFT_BYTES

# Packets a child sends after one large packet (which makes it look for large bytes):
# large bytes at the top, in a dict, two levels down, as a bytearray, beside small bytes
# and a memoryview (which stays inline), and one past the depth it looks.
PACKETS_SOURCE = """[
    [0, b"a" * (1 << 20)],
    [1, b"b" * (1 << 20), b"small", {"k": b"c" * 70000}],
    [2, {"deep": [b"d" * 65536, [b"e" * 65536]]}, bytearray(b"f" * 100000)],
    [3, memoryview(b"g" * 80000), [[[b"h" * 70000]]]],
    [4, b"i" * (BIG - 1), b"j" * BIG, b""],
    ["done"],
]"""

CHILD_SENDER = """
import sys
if sys.argv[2] == "no numpy":
    sys.modules["numpy"] = None  # as if numpy were not installed
import pipebit
from pipebit._frames import LIFT_BYTES as BIG
with pipebit.SafeSender(sys.argv[1], 0) as sender:
    for packet in eval(sys.argv[3]):
        sender.send(packet)
    sender.flush(timeout=30)
assert "numpy" not in sys.modules or sys.modules["numpy"] is None or sys.argv[2] != "no numpy"
print("sent", flush=True)
"""


def _expected() -> list[Any]:
    return list(eval(PACKETS_SOURCE, {"BIG": BIG}))


def _as_received(value: Any) -> Any:
    """What a receiver gets for a sent value: bytes-like values as ``bytes``, tuples as lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [_as_received(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_received(v) for k, v in value.items()}
    return value


def _assert_all_bytes(value: Any) -> None:
    if isinstance(value, (bytearray, memoryview)):
        raise AssertionError(f"received a {type(value).__name__}, not bytes")
    for inner in value if isinstance(value, list) else value.values() if isinstance(value, dict) else ():
        _assert_all_bytes(inner)


def _receive_until_done(receiver: Any, **options: Any) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while not got or got[-1] != ["done"]:
        assert time.monotonic() < deadline, f"received only {len(got)} packets"
        got += receiver.receive(timeout=0.5, **options)
    return got


def _framed_records(name: str) -> list[bool]:
    """For each record in the ring, tail to head: whether it is framed."""
    raw = segment_path(name).read_bytes()
    capacity = int.from_bytes(raw[32:40], sys.byteorder)
    return [
        raw[L.DATA_OFFSET + position % capacity + L.RECORD_HEADER] == _frames.FRAME_FIRST_BYTE
        for position, _, _, _ in ring_records(name)
    ]


# ------------------------------------------------------------------ across processes
@both_transports
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "copy=False"])
def test_large_bytes_arrive_as_bytes_wherever_they_stand(name: str, reaper: Any, copy: bool) -> None:
    with pipebit.SafeReceiver(name, 0, capacity=16 << 20) as receiver:
        child = Child(reaper, CHILD_SENDER, name, "numpy", PACKETS_SOURCE)
        got = _receive_until_done(receiver, copy=copy)
        assert child.wait(30) == 0, child.describe()
    assert got == _as_received(_expected())
    assert all(type(packet) is list for packet in got)  # never the internal Held list
    _assert_all_bytes(got)


def test_a_sender_frames_large_bytes_once_its_packets_are_large_and_stops_after_small_ones(name: str) -> None:
    """The first large packet goes packed (the sender learns it is large by packing it);
    from then on a packet holding large bytes is a framed record, until a run of small
    packets switches looking off again -- read from the ring's records themselves."""
    big = b"x" * (200 * KIB)
    with pipebit.SafeReceiver(name, 0, capacity=16 << 20) as receiver, pipebit.SafeSender(name, 0) as sender:
        sent: list[list[Any]] = []
        for packet in ([0, big], [1, big], [2, big]):
            sender.send(packet)
            sender.flush(timeout=10)
            sent.append(packet)
        for i in range(40):  # small ones, each its own record
            sender.send([i])
            sender.flush(timeout=10)
            sent.append([i])
        for packet in ([3, big], [4, big]):
            sender.send(packet)
            sender.flush(timeout=10)
            sent.append(packet)
        framed = _framed_records(name)
        got: list[Any] = []
        while len(got) < len(sent):
            got += receiver.receive(timeout=5)
    assert got == sent
    assert framed[:3] == [False, True, True]
    assert framed[-2:] == [False, True]  # switched off by the small ones, on again by the first large one
    assert not any(framed[3:-2])


def test_send_takes_a_snapshot_of_a_large_bytearray_on_either_path(name: str) -> None:
    """Changed after send() returns, a bytearray arrives as it was: written into the pipe by
    send() itself (the queue idle), or snapshotted into the queue (a burst behind it)."""
    with pipebit.SafeReceiver(name, 0, capacity=16 << 20) as receiver, pipebit.SafeSender(name, 0) as sender:
        value = bytearray(300 * KIB)
        sender.send([value, -1])  # packed: it makes the sender look from now on
        sender.flush(timeout=10)
        value[:] = b"\x01" * len(value)
        sender.send([value, 0])  # alone: framed, straight into the pipe
        value[:] = b"\x02" * len(value)
        time.sleep(0.01)
        for i in range(1, 21):  # a burst: framed snapshots queued behind one another
            value[:] = bytes([i + 2]) * len(value)
            sender.send([value, i])
            value[:] = b"\xff" * len(value)
        sender.flush(timeout=10)
        framed = _framed_records(name)
        got: list[Any] = []
        while len(got) < 22:
            got += receiver.receive(timeout=5)
    assert framed == [False] + [True] * 21
    assert got[0] == [bytes(300 * KIB), -1]
    assert got[1] == [b"\x01" * (300 * KIB), 0]
    for i, packet in enumerate(got[2:], 1):
        assert packet == [bytes([i + 2]) * (300 * KIB), i]


def test_large_bytes_need_no_numpy_on_either_side(name: str, reaper: Any) -> None:
    receiver_code = """
import sys
sys.modules["numpy"] = None
import pipebit
got = []
with pipebit.SafeReceiver(sys.argv[1], 0, capacity=16 << 20) as receiver:
    print("ready", flush=True)
    while not got or got[-1] != ["done"]:
        got += receiver.receive(timeout=5)
print(repr([[type(v).__name__ for v in p] for p in got]), flush=True)
print(sum(len(v) for p in got for v in p if type(v) is bytes), flush=True)
"""
    receiver = Child(reaper, receiver_code, name)
    receiver.expect("ready", 30)
    sender = Child(reaper, CHILD_SENDER, name, "no numpy", PACKETS_SOURCE)
    assert sender.wait(30) == 0, sender.describe()
    assert receiver.wait(30) == 0, receiver.describe()
    want = _as_received(_expected())
    assert receiver.next_line(5) == repr([[type(v).__name__ for v in p] for p in want])
    assert receiver.next_line(5) == str(sum(len(v) for p in want for v in p if type(v) is bytes))


# ------------------------------------------------------------------ the format
def test_a_framed_record_with_large_bytes_is_as_documented() -> None:
    packet = [b"m" * BIG, "meta", bytearray(b"n" * (BIG + 1))]
    payload, [[first, meta, second]], inner_end = open_frame(packet)
    assert meta == "meta"
    assert (first.code, first.data) == (6, BIG.to_bytes(8, "big"))
    assert (second.code, second.data) == (6, (BIG + 1).to_bytes(8, "big"))
    at = inner_end + (-inner_end % 64)
    assert payload[inner_end:at] == bytes(at - inner_end)
    assert payload[at : at + BIG] == packet[0]
    at += BIG  # a multiple of 64 already
    assert payload[at : at + BIG + 1] == packet[2]
    assert payload[at + BIG + 1 :] == bytes(63)


def test_small_bytes_and_packets_without_large_bytes_are_not_lifted() -> None:
    assert not _frames.has_large_buffer([b"x" * (BIG - 1), memoryview(b"y" * BIG), "z" * BIG])
    assert _frames.has_large_buffer((1, {"k": [b"x" * BIG]}))
    assert not _frames.has_large_buffer([[[[b"x" * BIG]]]])  # deeper than it looks
    assert not _frames.has_large_buffer([*range(_frames.LIFT_LOOKS), b"x" * BIG])  # past what it looks at
    assert not _frames.has_large_buffer({b"x" * BIG: 1})  # keys stay inline


def _framed_payload(length_field: bytes, items: bytes) -> bytes:
    """A framed record of one packet holding one out-of-band bytes value."""
    inner = b"\x91" + msgpack.packb([msgpack.ExtType(6, length_field)])
    head = b"\xc9" + len(inner).to_bytes(4, "big") + b"\x05"
    return head + inner + bytes(-(len(head) + len(inner)) % 64) + items


def test_a_damaged_out_of_band_bytes_value_is_a_corrupt_packet_error() -> None:
    items = b"q" * BIG
    assert _codec.decode_batch(_framed_payload(BIG.to_bytes(8, "big"), items), 1) == ([[items]], None)
    for length_field in (BIG.to_bytes(7, "big"), (BIG + 1).to_bytes(8, "big"), (1 << 40).to_bytes(8, "big")):
        packets, damage = _codec.decode_batch(_framed_payload(length_field, items), 1)
        assert packets == []
        assert isinstance(damage, pipebit.CorruptPacketError), length_field
