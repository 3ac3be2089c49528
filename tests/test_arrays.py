"""numpy arrays and scalars through the codec and through real pipes (issue #16, the copying path).

An array arrives as a new writable ndarray with the same dtype (byte order
included), shape and bytes -- compared by bytes, so NaN payloads count too.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pipebit
from pipebit import _arrays, _codec

from .redis_server import both_transports
from .test_codec import NOISY_MACHINE, _check_decoders

np = pytest.importorskip("numpy")
hnp = pytest.importorskip("hypothesis.extra.numpy")

RECEIVE_DEADLINE = 30.0


def assert_same_array(got: Any, want: Any) -> None:
    """``got`` is a fresh, writable, C-ordered ndarray holding exactly ``want``'s items."""
    assert type(got) is np.ndarray, f"got {type(got).__name__}"
    assert got.dtype.str == want.dtype.str
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()
    assert got.flags.writeable
    assert got.flags.c_contiguous
    assert np.array_equal(got, want, equal_nan=got.dtype.kind in "fc")


def assert_same(got: Any, want: Any) -> None:
    """Like ``==`` over lists and dicts, but arrays compared with :func:`assert_same_array`."""
    if isinstance(want, np.ndarray):
        assert_same_array(got, want)
    elif isinstance(want, (list, tuple)):
        assert type(got) is list
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert type(got) is dict
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    else:
        assert type(got) is type(want)
        assert got == want


# Every kind of dtype that travels, in both byte orders where there is one; the shapes
# and layouts a sender meets: 0-d, empty, 3-d, Fortran order, a strided slice.
ARRAYS_SOURCE = """[
    np.array([True, False, True]),
    np.arange(-4, 4, dtype="i1"), np.arange(6, dtype="<i2"), np.arange(6, dtype=">i4"), np.arange(6, dtype=">i8"),
    np.arange(6, dtype="u1"), np.arange(6, dtype=">u2"), np.array([0, 2**32 - 1], dtype="<u4"),
    np.array([0, 2**64 - 1], dtype=">u8"),
    np.array([0.5, -0.0, np.inf], dtype="<f2"), np.array([np.nan, 1e38], dtype=">f4"),
    np.array([np.nan, -np.inf, 5e-324], dtype="<f8"),
    np.array([1 + 2j, np.nan * 1j], dtype="<c8"), np.array([3 - 4j], dtype=">c16"),
    np.array([b"ab", b"", b"\\x00z"], dtype="S5"), np.array(["xyz", "\\u00e9\\U0001f389"], dtype="<U3"),
    np.array(["be"], dtype=">U2"),
    np.array(7.25), np.array(b"s"), np.zeros((0,), "f4"), np.zeros((3, 0, 2), ">i2"),
    np.arange(24, dtype="i4").reshape(2, 3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(100, dtype="u2").reshape(10, 10)[1::3, ::-2],
    np.arange(10)[::-1],
    [np.arange(3), [np.eye(2)]], {"frame": np.ones((2, 2), "u1"), "meta": {"ids": np.arange(2, dtype=">u8")}},
    np.float32(1.5), np.int64(-3), np.uint64(2**64 - 1), np.bool_(True), np.float16(0.1), np.complex64(1j),
    np.complex128(2 - 1j), np.str_("text"), np.bytes_(b"raw"),
]"""


def expected_arrays() -> list[Any]:
    """What a receiver gets for ARRAYS_SOURCE: scalars become Python numbers or 0-d arrays."""
    sent = eval(ARRAYS_SOURCE)
    want = sent[:-9]
    want += [1.5, -3, 2**64 - 1, True, float(np.float16(0.1))]
    want += [np.asarray(np.complex64(1j)), np.asarray(np.complex128(2 - 1j))]
    want += ["text", b"raw"]
    return want


# ------------------------------------------------------------------ codec
def test_every_kind_shape_and_layout_round_trips_through_the_codec() -> None:
    assert_same(_codec.decode(_codec.encode(eval(ARRAYS_SOURCE))), expected_arrays())


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.frombuffer(b"abcdefgh", "<u2"),  # read-only, over someone else's bytes
        lambda: np.broadcast_to(np.arange(3), (4, 3)),  # a stride of 0
        lambda: np.arange(10)[np.newaxis, ::2, np.newaxis],
        lambda: np.zeros((2, 3), ">c8").imag,  # a strided view into complex items
    ],
    ids=["read-only", "broadcast", "new-axes", "imag-view"],
)
def test_views_of_any_layout_travel_as_their_items(make: Any) -> None:
    sent = make()
    [got] = _codec.decode(_codec.encode([sent]))
    assert_same_array(got, sent)


def test_numpy_scalars_become_python_numbers_and_complex_ones_0d_arrays() -> None:
    got = _codec.decode(_codec.encode([np.float32(1.5), np.int8(-2), np.bool_(False), np.complex64(1 + 1j)]))
    assert [type(v) for v in got[:3]] == [float, int, bool]
    assert got[:3] == [1.5, -2, False]
    assert_same_array(got[3], np.array(1 + 1j, dtype="c8"))


def test_the_received_array_is_the_receivers_own() -> None:
    sent = np.arange(5)
    [got] = _codec.decode(_codec.encode([sent]))
    got[0] = 99
    assert sent[0] == 0
    assert got.base is None or got.base.base is None  # not a view of the decoder's bytes


def test_the_extension_payload_is_as_documented() -> None:
    [ext] = msgpack.unpackb(_codec.encode([np.arange(3, dtype=">u2").reshape(1, 3)]))
    assert ext.code == _arrays.EXT_NDARRAY == 2
    assert ext.data == b"\x03>u2\x02" + (1).to_bytes(8, "big") + (3).to_bytes(8, "big") + b"\x00\x00\x00\x01\x00\x02"


def _chararray() -> Any:
    """A chararray, an ndarray subclass numpy 2.5 deprecates (and warns about when made)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.char.array(["a"])


REFUSED = [
    (lambda: np.array([None, 1]), "object"),
    (lambda: np.zeros(2, "i4,f8"), "|V12"),
    (lambda: np.zeros(2, "M8[s]"), "datetime64[s]"),
    (lambda: np.zeros(2, "m8[ms]"), "timedelta64[ms]"),
    (lambda: np.datetime64("2020-01-01"), "datetime64[D]"),
    (lambda: np.void(b"ab"), "|V2"),
    (lambda: np.zeros(2, np.longdouble), "float128"),
    (lambda: np.longdouble(1) / 3, "float128"),
    (lambda: np.zeros(2, np.clongdouble), "complex256"),
    (lambda: np.ma.masked_array([1, 2], mask=[0, 1]), "MaskedArray"),
    (lambda: np.arange(2).view(type("Subclass", (np.ndarray,), {})), "Subclass"),
    (_chararray, "chararray"),
]


@pytest.mark.parametrize(("make", "named"), REFUSED, ids=[n for _, n in REFUSED])
def test_arrays_that_would_need_pickling_are_refused_naming_the_dtype(make: Any, named: str) -> None:
    with pytest.raises(pipebit.PacketTypeError, match="cannot carry") as info:
        _codec.encode([1, {"k": [make()]}])
    assert named in str(info.value)


def test_nan_payloads_and_signalling_nans_arrive_bit_for_bit() -> None:
    bits = np.array([0x7FC00001, 0x7F800001, 0xFFC12345, 0x7FFFFFFF], dtype="<u4")
    [got] = _codec.decode(_codec.encode([bits.view("<f4").astype(">f4")]))
    assert got.dtype.str == ">f4"
    assert got.astype("<f4").view("<u4").tolist() == bits.tolist()


# ----------------------------------------------------------- properties
DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128)),
    hnp.byte_string_dtypes(max_len=8),
    hnp.unicode_string_dtypes(endianness="?", max_len=4),
)


@st.composite
def any_arrays(draw: st.DrawFn) -> Any:
    """An array of any dtype that travels and any shape, possibly Fortran-ordered or strided."""
    array = draw(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    layout = draw(st.sampled_from(["c", "fortran", "transposed", "strided"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "transposed":
        return array.T
    if layout == "strided" and array.ndim:
        return array[::-2]
    return array


@settings(max_examples=200, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(arrays=st.lists(any_arrays(), min_size=1, max_size=3))
def test_any_array_round_trips_exactly(arrays: list[Any]) -> None:
    got = _codec.decode(_codec.encode([arrays, {"a": arrays[0]}]))
    for g, w in zip(got[0], arrays):
        assert_same_array(g, w)
    assert_same_array(got[1]["a"], arrays[0])


@st.composite
def hostile_array_packets(draw: st.DrawFn) -> bytes:
    """A packet whose extension type 2 holds random bytes, or a real array's payload changed or cut."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=120))
    else:
        data = bytearray(msgpack.unpackb(_codec.encode([draw(any_arrays())]))[0].data)
        if draw(st.booleans()) or not data:
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(msgpack.packb([msgpack.ExtType(_arrays.EXT_NDARRAY, bytes(data))]))


def _payload(header: bytes, shape: tuple[int, ...], data: bytes) -> bytes:
    body = bytes((len(header),)) + header + bytes((len(shape),)) + b"".join(n.to_bytes(8, "big") for n in shape)
    return bytes(msgpack.packb([msgpack.ExtType(2, body + data)]))


@settings(max_examples=300, deadline=None, suppress_health_check=NOISY_MACHINE)
@given(data=hostile_array_packets(), count=st.integers(0, 2))
@example(data=_payload(b"|O8", (1,), b"\x00" * 8), count=1)  # object dtype: pointers
@example(data=_payload(b"|V4", (1,), b"\x00" * 4), count=1)  # void
@example(data=_payload(b"<M8[s]", (1,), b"\x00" * 8), count=1)  # datetime
@example(data=_payload(b"|f4", (1,), b"\x00" * 4), count=1)  # not the canonical text
@example(data=_payload(b"<f16", (1,), b"\x00" * 16), count=1)  # long double: the platform's own
@example(data=_payload(b"|b1", (3,), b"\x00\x01\x02"), count=1)  # a bool that is neither 0 nor 1
@example(data=_payload(b"<i4", (2**64 - 1, 0), b""), count=1)  # zero items, an impossible dimension
@example(data=_payload(b"<i4", (2**32, 2**32), b""), count=1)  # a product past 64 bits
@example(data=_payload(b"|S9999999999", (1,), b"x"), count=1)  # an item size numpy refuses
@example(data=_payload(b"<i4", (3,), b"\x00" * 11), count=1)  # a byte short
@example(data=_payload(b"<i4", (1,) * 65, b"\x00" * 4), count=1)  # too many dimensions
@example(data=b"\x91\x81" + _payload(b"<i4", (1,), b"\x00" * 4)[1:] + b"\x01", count=1)  # an array as a dict key
def test_arbitrary_array_payloads_decode_or_raise_corrupt_packet_error(data: bytes, count: int) -> None:
    _check_decoders(data, count)
    try:
        packet = _codec.decode(data)
    except pipebit.NumpyMissingError:  # numpy is here: never the right error
        pytest.fail("NumpyMissingError with numpy installed")
    except pipebit.CorruptPacketError:
        pass
    else:
        assert type(packet[0]) is np.ndarray


# ---------------------------------------------------------- real pipes
CHILD_SENDER = """
import sys
import numpy as np
import pipebit

name, capacity, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sender = pipebit.SafeSender(name, 0, capacity=capacity)
sender.send(eval(source))
sender.send(["done"])
sender.flush(timeout=20)
print("sent", flush=True)
sender.close_connection()
"""


def _receive_until_done(receiver: Any) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + RECEIVE_DEADLINE
    while not got or got[-1] != ["done"]:
        assert time.monotonic() < deadline, f"received only {len(got)} packets"
        got += receiver.receive(timeout=0.5)
    return got


@both_transports
def test_every_kind_of_array_crosses_a_safe_pipe_between_processes(name: str, reaper: Any) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        child = reaper.spawn(CHILD_SENDER, name, str(4 << 20), ARRAYS_SOURCE)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        got = _receive_until_done(receiver)
    assert len(got) == 2
    assert_same(got[0], expected_arrays())


FRAME_SOURCE = "[np.arange(1080 * 1920 * 3, dtype=np.uint64).astype(np.uint8).reshape(1080, 1920, 3), 'frame']"


@both_transports
def test_a_6mb_frame_crosses_a_safe_pipe_between_processes(name: str, reaper: Any) -> None:
    with pipebit.SafeReceiver(name, 0, capacity=16 << 20) as receiver:
        child = reaper.spawn(CHILD_SENDER, name, str(16 << 20), FRAME_SOURCE)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        got = _receive_until_done(receiver)
    assert_same(got[0], eval(FRAME_SOURCE))


@both_transports
def test_arrays_cross_a_fast_pipe(name: str) -> None:
    frame = eval(FRAME_SOURCE)
    with pipebit.FastSender(name, 0, slot_size=8 << 20) as sender, pipebit.FastReceiver(name, 0) as receiver:
        for packet in (eval(ARRAYS_SOURCE), frame):
            sender.send(packet)
            deadline = time.monotonic() + RECEIVE_DEADLINE
            got: list[Any] = []
            while not got:
                assert time.monotonic() < deadline
                got = receiver.receive(timeout=0.5)
            assert_same(got[-1], expected_arrays() if packet is not frame else frame)


@both_transports
def test_send_refuses_an_object_array_and_the_pipe_goes_on(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        sender.send([np.arange(2)])
        with pytest.raises(pipebit.PacketTypeError, match="dtype object"):
            sender.send([np.array([{}, []], dtype=object)])
        sender.send([np.float32(2.5)])
        sender.flush(timeout=10)
        got: list[Any] = []
        deadline = time.monotonic() + RECEIVE_DEADLINE
        while len(got) < 2:
            assert time.monotonic() < deadline
            got += receiver.receive(timeout=0.5)
    assert_same(got, [[np.arange(2)], [2.5]])


# ----------------------------------------------------- without numpy
NO_NUMPY_RECEIVER = """
import sys
sys.modules["numpy"] = None  # as if numpy were not installed
import pipebit

receiver = pipebit.SafeReceiver(sys.argv[1], 0)
print("ready", flush=True)
sys.stdin.readline()
got, errors = [], 0
while len(got) < 2 or not errors:  # the error comes once, after the packets decoded with it
    try:
        got += receiver.receive(timeout=5)
    except pipebit.DependencyError as exc:
        assert isinstance(exc, ImportError) and isinstance(exc, pipebit.CorruptPacketError), type(exc)
        assert type(exc) is pipebit.NumpyMissingError, type(exc)
        print("error:", exc, flush=True)
        errors += 1
assert receiver.receive(timeout=0.5) == []
print("got:", got, flush=True)
assert "numpy" not in sys.modules or sys.modules["numpy"] is None
receiver.close_connection()
"""


@both_transports
def test_a_receiver_without_numpy_gets_a_dependency_error_naming_the_extra(name: str, reaper: Any) -> None:
    import subprocess

    child = reaper.spawn(NO_NUMPY_RECEIVER, name, stdin=subprocess.PIPE)
    assert child.stdout.readline().strip() == "ready"
    with pipebit.SafeSender(name, 0) as sender:
        for packet in (["before"], [np.arange(3)], ["after"]):  # likely one record: the array costs only itself
            sender.send(packet)
        sender.flush(timeout=10)
    child.stdin.write("go\n")
    child.stdin.flush()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "pipebit[numpy]" in out
    assert out.rstrip().endswith("got: [['before'], ['after']]")


def test_without_numpy_a_record_loses_only_its_packets_holding_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_numpy() -> None:
        raise pipebit.NumpyMissingError("install it (pipebit[numpy])")

    monkeypatch.setattr(_arrays, "numpy_module", no_numpy)
    packets = [["a"], [np.arange(2)], ["b"], [1, {"x": [np.eye(2)]}], ["c"]]
    got, damage = _codec.decode_batch(_codec.join_batch([_codec.encode(p) for p in packets]), 5)
    assert got == [["a"], ["b"], ["c"]]
    assert type(damage) is pipebit.NumpyMissingError
    assert "2 packet(s) of a record of 5 lost" in str(damage)
    assert "pipebit[numpy]" in str(damage)
    # Damage after a skipped packet is still damage: the packets before it, then CorruptPacketError.
    record = _codec.join_batch([_codec.encode(p) for p in packets[:3]]) + b"\xc1"
    got, damage = _codec.decode_batch(record, 3)
    assert got == [["a"], ["b"]]
    assert type(damage) is pipebit.CorruptPacketError
    assert "stray bytes" in str(damage)


NO_NUMPY_FAST_RECEIVER = """
import sys
sys.modules["numpy"] = None
import pipebit

receiver = pipebit.FastReceiver(sys.argv[1], 0)
print("ready", flush=True)
while True:
    try:
        got = receiver.receive(timeout=5)
    except pipebit.NumpyMissingError as exc:
        print("error:", exc, flush=True)
        break
    assert got == [], got
print("got:", receiver.receive(timeout=20), flush=True)
receiver.close_connection()
"""


@both_transports
def test_a_fast_receiver_without_numpy_gets_the_error_then_the_next_value(name: str, reaper: Any) -> None:
    child = reaper.spawn(NO_NUMPY_FAST_RECEIVER, name)
    assert child.stdout.readline().strip() == "ready"
    with pipebit.FastSender(name, 0) as sender:
        sender.send([np.arange(3)])
        line = child.stdout.readline()
        assert line.startswith("error:")
        assert "pipebit[numpy]" in line
        sender.send(["after"])
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "got: [['after']]"


def test_importing_pipebit_and_plain_packets_need_no_numpy(reaper: Any, name: str) -> None:
    code = (
        "import sys; sys.modules['numpy'] = None; import pipebit; from pipebit import _codec\n"
        "assert _codec.decode(_codec.encode([1, 2.5, 'x', b'y', 2**70])) == [1, 2.5, 'x', b'y', 2**70]\n"
        "with pipebit.SafeSender(sys.argv[1], 0) as s, pipebit.SafeReceiver(sys.argv[1], 0) as r:\n"
        "    s.send([1]); s.flush(timeout=10); assert r.receive(timeout=10) == [[1]]\n"
        "try:\n    _codec.encode([complex(1, 2)])\nexcept pipebit.PacketTypeError:\n    print('refused')\n"
    )
    child = reaper.spawn(code, name)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "refused"


def test_plain_programs_do_not_import_numpy(reaper: Any) -> None:
    code = "import sys, pipebit, pipebit.cli\nfrom pipebit import _codec\n_codec.encode([1])\n"
    code += "print('numpy' in sys.modules)"
    child = reaper.spawn(code)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "False"
