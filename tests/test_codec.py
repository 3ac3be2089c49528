"""The codec: what a packet can carry, what it arrives as, and what send() refuses.

Values are compared with :func:`assert_same`, which checks types recursively:
``True == 1`` and ``0.0 == -0.0``, so ``==`` alone would let a codec that turns
bools into ints (or loses the sign of zero) pass.
"""

from __future__ import annotations

import datetime
import gc
import math
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pipebit
from pipebit import _codec

from .redis_server import both_transports

RECEIVE_DEADLINE = 15.0
# Generation speed depends on the machine's load, not on PipeBit.
NOISY_MACHINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


# ---------------------------------------------------------------- helpers
def expected_form(value: Any) -> Any:
    """What a receiver should get for ``value``: tuples become lists, bytes-likes bytes."""
    if isinstance(value, (list, tuple)):
        return [expected_form(item) for item in value]
    if isinstance(value, dict):
        return {expected_key(key): expected_form(item) for key, item in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def expected_key(key: Any) -> Any:
    """Dict keys: a tuple key arrives as a tuple (of frozen keys)."""
    if isinstance(key, tuple):
        return tuple(expected_key(item) for item in key)
    return expected_form(key)


def _tag(key: Any) -> Any:
    """A hashable description of a key that tells ``True`` from ``1`` and ``b"a"`` from ``"a"``."""
    if isinstance(key, tuple):
        return ("tuple", tuple(_tag(item) for item in key))
    return (type(key).__name__, key)


def assert_same(got: Any, want: Any, path: str = "packet") -> None:
    """Assert ``got`` equals ``want`` with exactly the same types, all the way down."""
    assert type(got) is type(want), f"{path}: got {type(got).__name__} {got!r}, want {type(want).__name__} {want!r}"
    if isinstance(want, float):
        if math.isnan(want):
            assert math.isnan(got), f"{path}: got {got!r}, want nan"
        else:
            assert struct.pack("<d", got) == struct.pack("<d", want), f"{path}: got {got!r}, want {want!r}"
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: got {len(got)} items, want {len(want)}"
        for index, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{index}]")
    elif isinstance(want, dict):
        got_by_tag = {_tag(key): key for key in got}
        want_by_tag = {_tag(key): key for key in want}
        assert got_by_tag.keys() == want_by_tag.keys(), f"{path}: keys {list(got)!r}, want {list(want)!r}"
        for tag, want_key in want_by_tag.items():
            assert_same(got_by_tag[tag], want_key, f"{path} key {want_key!r}")
            assert_same(got[got_by_tag[tag]], want[want_key], f"{path}[{want_key!r}]")
    else:
        assert got == want, f"{path}: got {got!r}, want {want!r}"


def receive_exactly(receiver: pipebit.SafeReceiver, count: int) -> list[list[Any]]:
    """Receive until ``count`` packets arrived (or the deadline passed), then check nothing more comes."""
    got: list[list[Any]] = []
    deadline = time.monotonic() + RECEIVE_DEADLINE
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive(timeout=0.5)
    got += receiver.receive(timeout=0.1)
    assert len(got) == count, f"expected {count} packets, got {len(got)}: {got!r}"
    return got


# ------------------------------------------------------------- strategies
EDGE_INTS = [
    0,
    1,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    2**1000,
    -(2**1000) - 12345,
]
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**600), max_value=2**600),
    st.sampled_from(EDGE_INTS),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    st.text(),
    st.binary(),
    st.binary(max_size=20).map(bytearray),
)
simple_keys = st.one_of(st.text(max_size=12), ints, st.binary(max_size=12))
dict_keys = st.recursive(simple_keys, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(dict_keys, children, max_size=6),
    ),
    max_leaves=40,
)
packets = st.one_of(st.lists(values, max_size=8), st.lists(values, max_size=8).map(tuple))


@settings(max_examples=250, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(packet=packets)
@example(packet=[True, 1, False, 0, 1.0, b"1", "1", None])
@example(packet=({True: 1, b"k": "k", "k": b"k"}, {1: True}))
@example(packet=[{(1, (b"x", "y"), ()): [(), ((),)]}])
@example(packet=[2**64, -(2**63) - 1, {2**100: -(2**100)}])
def test_any_packet_round_trips_with_exact_types(packet: Any) -> None:
    encoded = _codec.encode(packet)
    assert type(encoded) is bytes
    assert_same(_codec.decode(encoded), expected_form(packet))
    # The same packet inside a batch record, as the ring carries it.
    batch = _codec.join_batch([encoded, _codec.encode([1]), encoded])
    decoded, damage = _codec.decode_batch(batch, 3)
    assert damage is None
    assert_same(decoded, [expected_form(packet), [1], expected_form(packet)])


def test_dict_key_true_and_one_stay_distinct_types() -> None:
    # {True: .., 1: ..} collapses to one key in Python, so check each key type on its own.
    for key in (True, 1, b"1", "1", (1, True)):
        (got,) = _codec.decode(_codec.encode([{key: "v"}]))
        (got_key,) = got
        assert_same(got_key, expected_key(key))


# ------------------------------------------------------ across processes
RICH_PACKET_SOURCE = """[
    None, True, False, 0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
    3**200, -(7**150), 0.5, -0.0, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324,
    "", "plain", "\\u00fcn\\u00efc\\u00f8d\\u00e9 \\u2713 \\U0001d11e \\U0001f389 \\u4e2d\\u6587", "nul\\x00inside",
    b"", bytes(range(256)), bytearray(b"mutable"),
    [], [[], [[[]]]], (1, (2, (3,))), [True, [False, [None]]],
    {}, {"k": "v", 1: [True], b"raw": None, 2**70: "big key", -5: -5.5, (1, "two", b"3"): "tuple key",
     ((1, 2), ("a",)): {"nested": {"deeper": [False, 0, 0.0, "", b""]}}},
]"""

CHILD_SENDER = """
import sys
import pipebit

name, source = sys.argv[1], sys.argv[2]
sender = pipebit.SafeSender(name, 0)
sender.send(eval(source))
sender.send(["done"])
sender.flush(timeout=10)
sender.close_connection()
print("sent", flush=True)
"""


def test_rich_packet_round_trips_between_processes(name: str, reaper: Any) -> None:
    expected = expected_form(eval(RICH_PACKET_SOURCE))
    with pipebit.SafeReceiver(name, 0) as receiver:
        child = reaper.spawn(CHILD_SENDER, name, RICH_PACKET_SOURCE)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "sent"
        got = receive_exactly(receiver, 2)
    assert_same(got[0], expected)
    assert got[1] == ["done"]


# ---------------------------------------------------------- hostile bytes
@st.composite
def damaged_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding with one byte changed, or cut short: close to valid, so it reaches deep paths."""
    data = bytearray(_codec.encode(draw(packets)))
    if draw(st.booleans()) and len(data) > 1:
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _check_decoders(data: bytes, count: int) -> None:
    for source in (data, memoryview(data)):
        try:
            packet = _codec.decode(source)
        except pipebit.CorruptPacketError:
            pass
        else:
            assert type(packet) is list
        batch, damage = _codec.decode_batch(source, count)
        assert type(batch) is list
        assert all(type(item) is list for item in batch)
        if damage is None:
            assert len(batch) == count
        else:  # the packets before the damage, and an error saying how many of the record are lost
            assert isinstance(damage, pipebit.CorruptPacketError)
            assert len(batch) < count or count == 0 or "stray bytes" in str(damage)


@settings(max_examples=300, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(data=st.one_of(st.binary(max_size=300), damaged_encodings()), count=st.integers(0, 4))
@example(data=b"", count=0)
@example(data=b"\x91" * 100_000, count=1)  # nesting far past any stack
@example(data=b"\xc7\x00\x01", count=0)  # big-int extension with no bytes
@example(data=b"\x91\xd4\x07\x00", count=1)  # unknown extension type
@example(data=b"\x91\x81\x80\x01", count=1)  # a dict used as a dict key
@example(data=b"\x91\x81\x91\x80\x01", count=1)  # a list holding a dict, as a key
@example(data=b"\xdd\xff\xff\xff\xff", count=1)  # array claiming 4 billion items
@example(data=b"\x91\xc4\x05ab", count=1)  # truncated bytes
@example(data=b"\x91\xa2\xff\xfe", count=1)  # invalid UTF-8 in a str
@example(data=b"\x92\x90\x90", count=2)  # a valid batch of two packets
@example(data=b"\x92\x90\x01", count=2)  # a batch whose second item is not a packet
@example(data=b"\x90\x90", count=0)  # trailing bytes after a valid packet
def test_arbitrary_bytes_decode_to_a_packet_or_raise_corrupt_packet_error(data: bytes, count: int) -> None:
    _check_decoders(data, count)


# ------------------------------------------------- the garbage collector
BIG_BATCH = 3000  # packets, each a list holding a list and a dict: 9000 new containers


@pytest.fixture
def collections_seen() -> Iterator[list[int]]:
    """Generations of the collections that start while the test runs; the collector on."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.enable()
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        if not was_enabled:
            gc.disable()


def big_record() -> bytes:
    return _codec.join_batch([_codec.encode([i, [i], {"k": i}]) for i in range(BIG_BATCH)])


def test_a_large_batch_decodes_with_the_collector_paused_and_turned_back_on(collections_seen: list[int]) -> None:
    record = big_record()
    gc.collect()
    collections_seen.clear()
    packets, damage = _codec.decode_batch(memoryview(record), BIG_BATCH)
    assert damage is None
    # 9000 new containers would set off about a dozen collections in the middle of decoding;
    # paused, there is at most the one that catches up at the first allocation after it.
    assert len(collections_seen) <= 1, collections_seen
    assert gc.isenabled()
    assert packets[0] == [0, [0], {"k": 0}]
    assert packets[-1] == [BIG_BATCH - 1, [BIG_BATCH - 1], {"k": BIG_BATCH - 1}]
    # One large packet alone is decoded the same way.
    expected = [[[i] for i in range(BIG_BATCH)]]
    one = _codec.encode(expected)
    collections_seen.clear()
    decoded = _codec.decode(one)
    assert len(collections_seen) <= 1, collections_seen
    assert decoded == expected
    assert gc.isenabled()


def test_a_collector_the_application_turned_off_stays_off(collections_seen: list[int]) -> None:
    record = big_record()
    gc.disable()
    try:
        assert len(_codec.decode_batch(record, BIG_BATCH)[0]) == BIG_BATCH
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_is_turned_back_on_when_a_large_record_is_corrupt(collections_seen: list[int]) -> None:
    damaged = big_record()[:-1]
    packets, damage = _codec.decode_batch(damaged, BIG_BATCH)
    assert isinstance(damage, pipebit.CorruptPacketError)
    assert len(packets) == BIG_BATCH - 1  # only the cut-short last packet is lost
    assert gc.isenabled()
    gc.collect()
    collections_seen.clear()
    garbage = [[i] for i in range(2000)]  # the collector runs again as usual
    del garbage
    assert [[i] for i in range(2000)]
    assert collections_seen != []


# ------------------------------------------------------------ refusals
class Custom:
    pass


def _a_function() -> None:
    pass


UNSUPPORTED: list[tuple[Callable[[], Any], str]] = [
    (lambda: {1, 2}, "set"),
    (frozenset, "frozenset"),
    (object, "object"),
    (lambda: 1 + 2j, "complex"),
    (Custom, "Custom"),
    (lambda: _a_function, "function"),
    (lambda: Custom, "type"),
]


@pytest.mark.parametrize(("make_value", "type_name"), UNSUPPORTED, ids=[t for _, t in UNSUPPORTED])
def test_send_refuses_unsupported_values_naming_the_type(
    name: str, make_value: Callable[[], Any], type_name: str
) -> None:
    value = make_value()
    placements = {
        "packet[1]": [1, value],
        "packet[1][0][0]": (1, [[value]]),
        "packet[0]['key']['deeper']": [{"key": {"deeper": value}}],
        "packet[0]['k'][1][0]": [{"k": [None, (value,)]}],
    }
    if type_name != "set":  # a set cannot be a dict key; everything else here can
        placements["a key of packet[2]"] = [None, {"fine": 1}, {"ok": 1, value: 2}]
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        sender.send(["before"])
        for where, packet in placements.items():
            with pytest.raises(pipebit.PacketTypeError) as info:
                sender.send(packet)
            assert isinstance(info.value, TypeError)
            assert repr(type_name) in str(info.value)
            assert str(info.value).startswith(f"{where}: {type_name}: "), info.value
        sender.send(["after"])
        sender.flush(timeout=10)
        got = receive_exactly(receiver, 2)
    assert got == [["before"], ["after"]]


@pytest.mark.parametrize("packet", ["text", {"a": 1}, 5, None, b"bytes", 1.5, {1, 2}, iter([1])])
def test_send_refuses_a_packet_that_is_not_a_list_or_tuple(name: str, packet: Any) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        with pytest.raises(pipebit.PacketTypeError) as info:
            sender.send(packet)
        assert isinstance(info.value, TypeError)
        assert "list or tuple" in str(info.value)
        assert repr(type(packet).__name__) in str(info.value)
        sender.send(["after"])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [["after"]]


def _self_containing_list() -> list[Any]:
    packet: list[Any] = [1]
    packet.append(packet)
    return packet


def _self_containing_dict() -> list[Any]:
    inner: dict[str, Any] = {}
    inner["me"] = inner
    return [inner]


def _deeply_nested() -> list[Any]:
    packet: list[Any] = []
    for _ in range(5000):
        packet = [packet]
    return packet


@pytest.mark.parametrize("make_packet", [_self_containing_list, _self_containing_dict, _deeply_nested])
def test_send_refuses_packets_that_contain_themselves_or_nest_too_deeply(
    name: str, make_packet: Callable[[], list[Any]]
) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        sender.send(["before"])
        with pytest.raises(pipebit.PacketSizeError) as info:
            sender.send(make_packet())
        assert isinstance(info.value, ValueError)
        sender.send(["after"])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 2) == [["before"], ["after"]]


def test_send_refuses_a_str_with_a_lone_surrogate_as_an_uncarriable_value(name: str) -> None:
    # "\ud800" is a str Python allows but UTF-8 cannot encode, so msgpack cannot carry it.
    # That is a value PipeBit cannot carry, not a packet that "nests too deeply".
    with pipebit.SafeSender(name, 0) as sender:
        with pytest.raises(pipebit.PacketTypeError) as info:
            sender.send(["ok", "\ud800"])
        assert "nests too deeply" not in str(info.value)
        assert str(info.value).startswith("packet[1]: str: ")


@both_transports
@pytest.mark.parametrize("model", ["safe", "fast"])
def test_a_memoryview_that_is_not_contiguous_is_a_packet_type_error(name: str, model: str) -> None:
    # msgpack copies a memoryview's buffer, which it can only take whole: a strided view
    # raised its BufferError straight through send() before.
    strided = memoryview(bytes(range(16)))[::2]
    sender_class = pipebit.SafeSender if model == "safe" else pipebit.FastSender
    with sender_class(name, 0) as sender:
        with pytest.raises(pipebit.PacketTypeError, match=r"^packet\[0\]\['raw'\]: memoryview: .*bytes\(view\)"):
            sender.send([{"raw": strided}])
        sender.send([{"raw": bytes(strided)}])  # the sender goes on, and the copy travels
        sender.send([memoryview(bytes(range(16)))[2:6]])  # a contiguous slice is fine as it is


def test_the_path_is_found_deep_down_and_in_a_packet_that_holds_itself() -> None:
    deep: list[Any] = [datetime.date(2026, 1, 1)]
    for _ in range(_codec.MAX_DEPTH - 3):  # the date sits one level above the deepest allowed
        deep = [deep]
    with pytest.raises(pipebit.PacketTypeError) as info:
        _codec.encode([deep])
    assert str(info.value).startswith("packet" + "[0]" * (_codec.MAX_DEPTH - 1) + ": date: ")
    looped: list[Any] = [1]
    looped.append(looped)
    looped.append({"when": datetime.time(1)})
    # The packer meets the loop first (a PacketSizeError); the walk that names a value steps over it.
    assert _codec._find_uncarriable(looped) == ("packet[2]['when']", datetime.time(1))
    long_key = "k" * 100
    with pytest.raises(pipebit.PacketTypeError, match=r"^packet\[0\]\['k{36}\.\.\.\]: object: "):
        _codec.encode([{long_key: object()}])


# -------------------------------------------------------------- snapshot
def test_send_snapshots_the_packet(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        nested = [2, 3]
        mapping: dict[str, Any] = {"k": [4]}
        raw = bytearray(b"abc")
        packet: list[Any] = [1, nested, mapping, raw, "s"]
        sender.send(packet)
        packet[0] = 99
        packet.append("extra")
        nested.append(100)
        nested[0] = -2
        mapping["k"].append(5)
        mapping["new"] = 1
        raw[0] = ord("z")
        raw += b"more"
        sender.send(packet)
        sender.flush(timeout=10)
        first, second = receive_exactly(receiver, 2)
    assert_same(first, [1, [2, 3], {"k": [4]}, b"abc", "s"])
    assert_same(second, [99, [-2, 3, 100], {"k": [4, 5], "new": 1}, b"zbcmore", "s", "extra"])


# ------------------------------------------------------------------ size
CAPACITY = 8192
LIMIT = CAPACITY - 21  # the README: "the largest packet is the pipe's capacity minus 21 bytes"


def _packet_of_encoded_size(size: int, fill: int) -> list[bytes]:
    packet = [bytes([fill]) * (size - 4)]  # 1 byte of array header, 3 of bin16 header
    assert len(_codec.encode(packet)) == size
    return packet


def test_packet_larger_than_the_ring_is_refused_with_the_limit(name: str) -> None:
    with pipebit.SafeSender(name, 0, capacity=CAPACITY) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        with pytest.raises(pipebit.PacketSizeError) as info:
            sender.send([b"\x00" * 20000])
        assert isinstance(info.value, ValueError)
        assert str(LIMIT) in str(info.value)
        with pytest.raises(pipebit.PacketSizeError):
            sender.send(_packet_of_encoded_size(LIMIT + 1, 1))
        sender.send(["after"])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [["after"]]


def test_packet_of_exactly_the_limit_is_delivered_intact(name: str) -> None:
    # Small packets in between make the big ones start mid-lap, so they must wrap.
    with pipebit.SafeSender(name, 0, capacity=CAPACITY) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        expected: list[list[Any]] = []
        for fill in range(1, 5):
            for packet in ([f"small {fill}"], _packet_of_encoded_size(LIMIT, fill)):
                sender.send(packet)
                expected.append(packet)
        sender.flush(timeout=20)
        got = receive_exactly(receiver, len(expected))
    assert got == expected


# ------------------------------------------------------------------ size=
def test_bitpack_sender_size_is_enforced(name: str) -> None:
    with pipebit.BitPackSender(name, 3, True) as sender, pipebit.BitPackReceiver(name) as receiver:
        for wrong in ([], [1, 2], [1, 2, 3, 4], (1,)):
            with pytest.raises(pipebit.PacketSizeError) as info:
                sender.send(wrong)
            assert isinstance(info.value, ValueError)
            assert "3" in str(info.value)
        sender.send([1, 2, 3])
        sender.send(("a", b"b", None))
        sender.flush(timeout=10)
        got = receive_exactly(receiver, 2)
    assert_same(got, [[1, 2, 3], ["a", b"b", None]])


def test_size_of_the_pipe_binds_a_sender_that_did_not_set_one(name: str) -> None:
    with pipebit.BitPackSender(name, 3, True), pipebit.SafeSender(name, 0) as other:
        with pytest.raises(pipebit.PacketSizeError):
            other.send([1, 2])
        other.send([1, 2, 3])


# ------------------------------------------------- the depth limit, end to end
def _deep_packet(levels: int, kinds: Any, key_levels: int) -> list[Any]:
    """A packet of ``levels - 1`` nested lists, tuples and dicts around a number, the
    innermost ``key_levels`` of them a tuple key of a dict."""
    value: Any = 7
    for level in range(1, levels):
        if level <= key_levels:
            value = (value,) if level < key_levels else {(value,): "v"}
        else:
            value = kinds.choice([lambda v: [v], lambda v: (v,), lambda v: {"k": v}])(value)
    return [value]


def _value_depth(packet: list[Any]) -> int:
    """How deep the deepest value sits: the packet is level 1, whatever a list, tuple or dict
    holds (keys too) one level below it.  Iterative: no recursion limit applies."""
    deepest, stack = 0, [(packet, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(value, (list, tuple)):
            stack += [(item, level + 1) for item in value]
        elif isinstance(value, dict):
            stack += [(item, level + 1) for pair in value.items() for item in pair]
    return deepest


@settings(max_examples=60, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(
    levels=st.integers(_codec.MAX_DEPTH - 3, _codec.MAX_DEPTH + 2),
    kinds=st.randoms(use_true_random=False),
    key_levels=st.sampled_from([0, 2, 30, 1000]),
    neighbours=st.integers(0, 3),
)
def test_whatever_send_accepts_decodes_inside_a_record(
    levels: int, kinds: Any, key_levels: int, neighbours: int
) -> None:
    packet = _deep_packet(levels, kinds, key_levels)
    accepted = _value_depth(packet) <= _codec.MAX_DEPTH  # the documented limit
    try:
        encoded = _codec.encode(packet)
    except pipebit.PacketSizeError:
        assert not accepted, f"send() refused a packet {_value_depth(packet)} levels deep"
        return
    assert accepted, f"send() accepted a packet {_value_depth(packet)} levels deep"
    small = _codec.encode([1, "x"])
    record = _codec.join_batch([small] * neighbours + [encoded] + [small] * neighbours)
    packets, damage = _codec.decode_batch(record, 2 * neighbours + 1)
    assert damage is None
    assert packets[:neighbours] == [[1, "x"]] * neighbours
    assert packets[neighbours + 1 :] == [[1, "x"]] * neighbours
    # Encoded again, what arrived is what was sent (tuples travel as arrays either way):
    # a comparison of the two that no recursion limit can stop.
    assert _codec.encode(packets[neighbours]) == encoded
    assert _codec.encode(_codec.decode(encoded)) == encoded  # alone, as a Fast pipe carries it
