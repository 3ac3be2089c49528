"""Packets to bytes and back.  Pure: no I/O; raises only PipeBit packet errors.

The wire format is MessagePack (https://msgpack.org/), chosen because it is a
data-only format: decoding can build lists, dicts, strings, numbers and bytes,
and nothing else -- unlike pickle, it never imports or calls anything named by
the bytes, so a hostile writer can at worst make a receiver see a wrong packet
or a :class:`CorruptPacketError`.

What round-trips, with its type: ``None``, ``bool``, ``int`` (any size: those
outside 64 bits travel as extension type 1, signed big-endian two's complement),
``float``, ``str``, ``bytes``, and lists and dicts of these.  Tuples travel as
arrays and arrive as lists; a dict key that is a tuple arrives as a tuple.
``bytearray`` and ``memoryview`` arrive as ``bytes``.  numpy arrays of bool,
number, bytes and str dtypes travel as extension type 2 and arrive as new
writable arrays of the same dtype, shape and values; numpy scalars arrive as
Python numbers (complex ones as 0-d arrays): see :mod:`pipebit._arrays`.
"""

from __future__ import annotations

import gc
import threading
from typing import Any, Callable, Iterator, NoReturn, Sequence, Union

import msgpack

from ._arrays import EXT_NDARRAY, numpy_module, pack_numpy, unpack_array
from ._frames import FRAME_FIRST_BYTE, Buffer, OutOfBand, decode_framed, frame, goes_out_of_band
from ._limits import Packet, Sendable, too_big, wrong_length
from .errors import CorruptPacketError, NumpyMissingError, PacketSizeError, PacketTypeError

EXT_BIG_INT = 1


# How deeply a value may sit in a packet: the packet's own list is level 1, and whatever a
# list, tuple or dict holds (dict keys too) is one level below it.  It is the MessagePack
# packer's own limit, found once at import (1025 with msgpack 1.2; 512 with 1.1, the last
# for Python 3.9): deeper, the packer raises, and so send() raises PacketSizeError.  Every
# receiver decodes up to 1025 whatever its msgpack: one decoder call holds 1024 levels (and
# a record's array wraps each packet in one more), so a payload too deep for one call is
# decoded in parts -- the record's packets one by one, and a packet at 1025 item by item
# (_decode_deepest).  tests/test_codec.py checks both sides with packets at, below and
# above the limit.
def _packer_depth() -> int:
    """The deepest level the installed packer takes: the known limits are tried first (a
    few packs of a thousand-level chain), anything else is searched for."""
    levels: list[list[Any]] = [[]]  # levels[k] is a chain of k + 1 nested lists
    for _ in range(2048):
        levels.append([levels[-1]])

    def packs(depth: int) -> bool:
        try:
            msgpack.packb(levels[depth - 1])
        except ValueError:
            return False
        return True

    for known in (1025, 512):
        if packs(known) and not packs(known + 1):
            return known
    low, high = 1, len(levels)  # low packs; high is the first depth that may not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if packs(middle) else (low, middle)
    return low


MAX_DEPTH = _packer_depth()

ALLOWED_TYPES = "None, bool, int, float, str, bytes, list, tuple, dict and numpy arrays and scalars"


def _pack_unsupported(obj: object) -> object:
    """``default`` hook of the packer: big ints and numpy arrays get an extension type, numpy
    scalars become Python numbers, anything else is refused."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(EXT_BIG_INT, obj.to_bytes(length, "big", signed=True))
    if type(obj).__module__ == "numpy":  # cheap, and true of every numpy object but subclasses
        packed = pack_numpy(obj)
        if packed is not None:
            return packed
    raise PacketTypeError(f"a packet cannot carry a value of type {type(obj).__name__!r}; it can carry {ALLOWED_TYPES}")


def _pack_for_safe(obj: object) -> object:
    """``default`` hook of a Safe sender's packer: a large array makes the packet a framed
    record (:mod:`pipebit._frames`); everything else as :func:`_pack_unsupported`."""
    if goes_out_of_band(obj):
        raise OutOfBand
    return _pack_unsupported(obj)


def new_safe_packer() -> Callable[[object], bytes]:
    """Like :func:`new_packer`, for a Safe sender: it raises :class:`~pipebit._frames.OutOfBand`
    for a packet holding a large array, which the sender then sends with :func:`frame_packet`."""
    pack: Callable[[object], bytes] = msgpack.Packer(default=_pack_for_safe, use_bin_type=True).pack
    return pack


def frame_packet(packet: Sendable) -> tuple[list[Buffer], int]:
    """The parts of the framed record holding ``packet``, and its length (see :func:`pipebit._frames.frame`)."""
    try:
        return frame(packet, _pack_unsupported)
    except Exception as exc:
        raise_encoding_error(exc, packet)


_local = threading.local()


def _packer() -> Callable[[object], bytes]:
    # A Packer keeps an internal buffer, so one instance must not be entered by two
    # threads at once (it can be, when ``default`` runs Python code): one per thread.
    try:
        found: Callable[[object], bytes] = _local.pack
        return found
    except AttributeError:
        pack: Callable[[object], bytes] = msgpack.Packer(default=_pack_unsupported, use_bin_type=True).pack
        _local.pack = pack
        return pack


def new_packer() -> Callable[[object], bytes]:
    """A packing function for one endpoint, to be called under that endpoint's lock.

    Faster than :func:`encode` on a hot path; it does not check the packet's
    top-level type, and its errors must go through :func:`raise_encoding_error`.
    """
    pack: Callable[[object], bytes] = msgpack.Packer(default=_pack_unsupported, use_bin_type=True).pack
    return pack


def not_a_packet(packet: object) -> PacketTypeError:
    """The error for a packet that is not a list or tuple."""
    return PacketTypeError(f"a packet must be a list or tuple, not {type(packet).__name__!r}")


def encoding_error(exc: Exception, packet: object = None) -> Exception:
    """Translate an exception raised while packing ``packet`` into the PipeBit error to raise.

    A :class:`PacketTypeError` names where the value sits (``packet[1]['t'][1]: datetime: ...``),
    found by walking ``packet`` again: this runs only once packing has failed, so a packet that
    encodes pays nothing for it.
    """
    if isinstance(exc, PacketTypeError):
        error = exc
    elif isinstance(exc, UnicodeEncodeError):  # a str holding a lone surrogate has no UTF-8 form
        error = PacketTypeError(f"a packet cannot carry a str that is not valid Unicode text: {exc}")
    elif isinstance(exc, BufferError):  # msgpack takes a memoryview's bytes only when they are contiguous
        error = PacketTypeError(
            f"a packet cannot carry a memoryview whose bytes are not contiguous ({exc}): send bytes(view)"
        )
    elif isinstance(exc, ValueError):  # "recursion limit exceeded": too deep, or a list containing itself
        return PacketSizeError(
            f"packet nests too deeply: a value may sit at most {MAX_DEPTH} levels deep, the packet's own "
            f"list being level 1 (or it contains itself): {exc}"
        )
    elif isinstance(exc, (TypeError, OverflowError)):  # msgpack's own refusals
        error = PacketTypeError(f"packet cannot be encoded: {exc}")
    else:
        return exc
    found = _find_uncarriable(packet)
    if found is None:
        return error
    where, value = found
    return PacketTypeError(f"{where}: {type(value).__name__}: {error}")


def raise_encoding_error(exc: Exception, packet: object = None) -> NoReturn:
    """Raise the PipeBit error for an exception raised while packing ``packet``."""
    error = encoding_error(exc, packet)
    if error is exc:
        raise exc
    raise error from exc


def encode_update(
    data: Sendable, pack: Callable[[object], bytes], packet_len: int, slot_size: int, shown: str
) -> bytes:
    """The checks and encoding of one Fast update (its top-level type already checked):
    the pipe's packet length, what PipeBit can carry, the slot's size.  ``pack`` is the
    sender's packer, called under its send lock.  (The shared-memory back-end runs the
    same checks inline on its hot path.)"""
    if packet_len and len(data) != packet_len:
        raise wrong_length(shown, packet_len, len(data))
    try:
        encoded = pack(data)
    except Exception as exc:
        raise_encoding_error(exc, data)
    if len(encoded) > slot_size:
        raise too_big(shown, len(encoded), slot_size, what="slot_size", setting=slot_size)
    return encoded


# Values the packer always takes as they are: no need to try them one by one.
_PLAIN_LEAVES = (type(None), bool, int, float, bytes)


def _find_uncarriable(packet: object) -> tuple[str, object] | None:
    """Where in ``packet`` the first value the packer refuses sits, and that value: a path
    such as ``packet[1]['t'][1]`` (``a key of packet[0]`` for a dict key), or ``None``.

    Walks the containers in the packer's own order, and tries each other value alone with
    the same packer, so that what it finds is what the packer refused, whatever the rule.
    Iterative (a value may sit deeper than Python's recursion limit) and safe against a
    container that holds itself.  Called only after packing failed.
    """
    if not isinstance(packet, (list, tuple)):
        return None
    pack = _packer()
    # Each entry: (path, value, ids of the containers above it); keys carry their dict's path.
    pending: list[tuple[str, object, frozenset[int]]] = [("packet", packet, frozenset())]
    while pending:
        where, value, above = pending.pop()
        if isinstance(value, (list, tuple, dict)):
            if id(value) in above or len(above) > MAX_DEPTH:
                continue  # contains itself, or too deep: that is a PacketSizeError, not ours to find
            inside = above | {id(value)}
            in_key = where.startswith("a key of ")  # a key is named by its dict, whatever it holds
            children: list[tuple[str, object, frozenset[int]]] = []
            if isinstance(value, dict):
                for key, item in value.items():
                    children.append((where if in_key else f"a key of {where}", key, inside))
                    children.append((where if in_key else f"{where}[{_short_repr(key)}]", item, inside))
            else:
                children = [
                    (where if in_key else f"{where}[{index}]", item, inside) for index, item in enumerate(value)
                ]
            pending.extend(reversed(children))  # popped in the packer's order
        elif type(value) not in _PLAIN_LEAVES:
            try:
                pack(value)
            except Exception:
                return where, value
    return None


def _short_repr(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def encode(packet: object) -> bytes:
    """Encode one packet, or raise :class:`PacketTypeError` naming what is wrong.

    The result is a snapshot: later changes to ``packet`` do not affect it.
    """
    if not isinstance(packet, (list, tuple)):
        raise not_a_packet(packet)
    try:
        return _packer()(packet)
    except Exception as exc:
        raise_encoding_error(exc, packet)


def array_header(count: int) -> bytes:
    """The MessagePack header of an array of ``count`` items."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def join_batch(encoded: Sequence[bytes]) -> bytes:
    """One MessagePack array holding already-encoded packets, ready to decode in one call."""
    return array_header(len(encoded)) + b"".join(encoded)


def _unpack_ext(code: int, data: bytes) -> object:
    if code == EXT_BIG_INT and data:
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_NDARRAY:
        return unpack_array(data)
    raise ValueError(f"unknown extension type {code}")


def _freeze(key: object) -> object:
    """A dict key that arrived as a list, given back as the tuple it was (lists within too).

    Iterative, not recursive: a key may nest as deeply as any value of a packet
    (:data:`MAX_DEPTH`), which is past Python's recursion limit.
    """
    if type(key) is not list:
        return key
    stack: list[tuple[Iterator[Any], list[Any]]] = [(iter(key), [])]  # per open list: items left, frozen so far
    while True:
        items, frozen = stack[-1]
        for item in items:
            if type(item) is list:
                stack.append((iter(item), []))
                break
            frozen.append(item)
        else:
            stack.pop()
            if not stack:
                return tuple(frozen)
            stack[-1][1].append(tuple(frozen))


def _pairs_to_dict(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    try:
        return dict(pairs)
    except TypeError:  # a tuple key arrived as a list: give it back as the tuple it was
        return {_freeze(k): v for k, v in pairs}


_unpack_options: dict[str, Any] = {
    "raw": False,
    "strict_map_key": False,
    "ext_hook": _unpack_ext,
    "object_pairs_hook": _pairs_to_dict,
    "use_list": True,
}


# Decoding builds every container of a payload at once, and CPython's cyclic collector
# counts each new list and dict: a record of a few thousand packets sets off several
# collections that scan (and promote to older generations) the very packets being built.
# Paused while a payload of at least this many bytes decodes -- the bytes bound the number
# of containers -- a receiver's CPU per small packet fell by about a fifth here
# (benchmarks/floor.py: ~225 -> ~185 ns in batches of 4000, CPython 3.11; from 3.12 on,
# collections wait for the decoding call to return unless it runs Python code, as the
# dict hook does).  Smaller payloads, such as a request/reply's lone packet, skip the
# pause and its three calls.
GC_PAUSE_BYTES = 2048
_gc_isenabled, _gc_disable, _gc_enable = gc.isenabled, gc.disable, gc.enable


def _unpack(payload: Union[bytes, memoryview]) -> Any:
    """``msgpack.unpackb`` with PipeBit's options, the collector paused for a large payload.

    The collector is only paused if it is on, and is turned back on however decoding
    ends; one the application turned off stays off.  Nothing is lost by the pause:
    the collector runs at the next allocation after it, on what is still garbage then.
    """
    if len(payload) < GC_PAUSE_BYTES or not _gc_isenabled():
        return msgpack.unpackb(payload, **_unpack_options)
    _gc_disable()
    try:
        return msgpack.unpackb(payload, **_unpack_options)
    finally:
        _gc_enable()


def _damage_kind(exc: BaseException) -> type[CorruptPacketError]:
    """The error class for a payload that failed to decode with ``exc``: :class:`CorruptPacketError`,
    or the subclass ``exc`` is (:class:`~pipebit.errors.NumpyMissingError`), kept wherever a
    back-end rewords the error so that the caller can tell what to install."""
    return type(exc) if isinstance(exc, CorruptPacketError) else CorruptPacketError


def _hold_copy(payload: Buffer) -> Any:
    """What out-of-band arrays view when the caller has no way to hold the payload: the
    payload itself if it is immutable ``bytes``, else a copy of it."""
    np = numpy_module()
    return np.frombuffer(payload if type(payload) is bytes else bytes(payload), np.uint8)


def decode_batch(
    payload: Union[bytes, memoryview], count: int, hold: Callable[[Buffer], Any] | None = None
) -> tuple[list[Packet], CorruptPacketError | None]:
    """Decode a record's payload, a MessagePack array of ``count`` packets, or a framed record
    (:mod:`pipebit._frames`), whose packets come back as ``Held`` lists viewing the
    arrays through ``hold`` (by default: the payload if it is ``bytes``, else a copy).

    Returns ``(packets, None)`` when the record decodes whole.  When it does not,
    the packets are decoded one by one, and what comes back is every packet
    before the first that fails, with the :class:`CorruptPacketError` for that
    one, which says how many of the record's packets are lost: one bad packet
    costs the rest of its own record, never what follows the record.  A packet
    holding an array, met without numpy, costs only itself: the others come back
    with a :class:`~pipebit.errors.NumpyMissingError`.

    Everything :func:`encode` accepts decodes here, alone or among others: the
    record's array adds a level of nesting, which is past the decoder's stack
    for a packet at :data:`MAX_DEPTH`, so such a record takes the one-by-one path,
    where each packet gets the whole stack.
    """
    if payload and payload[0] == FRAME_FIRST_BYTE:  # a framed record
        try:
            return decode_framed(payload, count, hold or _hold_copy, _unpack_options, _unpack_ext), None
        except Exception as exc:
            return [], _damage_kind(exc)(
                f"framed record of {count} packet(s) does not decode ({exc.__class__.__name__}: {exc}); "
                f"{count} packet(s) lost"
            )
    try:
        packets = _unpack(payload)
    except Exception:  # msgpack raises many types for bad input; the slow path says which
        return _decode_one_by_one(payload, count)
    if type(packets) is not list or len(packets) != count:
        return _decode_one_by_one(payload, count)
    for packet in packets:
        if type(packet) is not list:
            return _decode_one_by_one(payload, count)
    return packets, None


def _decode_one_by_one(payload: Union[bytes, memoryview], count: int) -> tuple[list[Packet], CorruptPacketError | None]:
    """:func:`decode_batch`'s slow path, for a record that does not decode whole."""
    packets: list[Packet] = []
    skipped, missing = 0, None  # packets holding arrays this process cannot decode; the error of the last
    base, unpacker = 0, _unpacker_at(payload, 0)  # the unpacker reads from offset base
    try:
        items = unpacker.read_array_header()
        if items != count:
            raise ValueError(f"its array holds {items} items, its header says {count} packets")
        while len(packets) + skipped < count:
            start = base + unpacker.tell()
            try:
                packet = unpacker.unpack()
            except msgpack.StackError:  # a packet at MAX_DEPTH: one level more than one call holds
                packet, base = _decode_deepest(payload, start)
                unpacker = _unpacker_at(payload, base)
            except NumpyMissingError as exc:  # sound, but not for this process: skip it, decode the rest
                skipped, missing, base, unpacker = skipped + 1, exc, start, _unpacker_at(payload, start)
                unpacker.skip()  # builds nothing, so calls no extension hook
                continue
            if type(packet) is not list:
                raise ValueError(f"a {type(packet).__name__} is not a packet (list)")
            packets.append(packet)
        end = base + unpacker.tell()
        if end != len(payload):
            raise ValueError(f"{len(payload) - end} stray bytes follow its {count} packets")
    except Exception as exc:
        lost = count - len(packets)
        return packets, _damage_kind(exc)(
            f"record of {count} packets does not decode at packet {len(packets) + skipped + 1} "
            f"({exc.__class__.__name__}: {exc}); {lost} packet(s) of it lost"
        )
    if missing is not None:
        lost = count - len(packets)
        return packets, NumpyMissingError(f"{lost} packet(s) of a record of {count} lost: {missing}")
    return packets, None


def _unpacker_at(payload: Union[bytes, memoryview], offset: int) -> Any:
    unpacker = msgpack.Unpacker(None, max_buffer_size=max(len(payload) - offset, 1), **_unpack_options)
    unpacker.feed(payload[offset:])
    return unpacker


def _decode_deepest(payload: Union[bytes, memoryview], offset: int) -> tuple[Packet, int]:
    """Decode the packet at ``offset`` whose list is too deep for one decoder call: its own list
    header first, then each of its items with a fresh stack.  Returns it and the offset after it."""
    unpacker = _unpacker_at(payload, offset)
    packet = [unpacker.unpack() for _ in range(unpacker.read_array_header())]
    return packet, offset + unpacker.tell()


def decode(payload: Union[bytes, memoryview]) -> Packet:
    """Decode one encoded packet, or raise :class:`CorruptPacketError`."""
    try:
        try:
            packet = _unpack(payload)
        except msgpack.StackError:  # a packet at MAX_DEPTH: one level more than one call holds
            packet, end = _decode_deepest(payload, 0)
            if end != len(payload):
                raise ValueError(f"{len(payload) - end} stray bytes follow the packet") from None
    except Exception as exc:
        raise _damage_kind(exc)(f"packet does not decode: {exc.__class__.__name__}: {exc}") from exc
    if type(packet) is not list:
        raise CorruptPacketError(f"bytes decode to a {type(packet).__name__}, not a packet (list)")
    return packet
