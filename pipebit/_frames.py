"""Framed records: a Safe packet whose large arrays and ``bytes`` travel out of band.  Pure: no I/O.

An array inside MessagePack costs copies on both sides: the packer copies it into
its buffer, and the unpacker hands an extension's bytes to its hook as a new
``bytes``.  A Safe sender therefore sends a packet holding an array of at least
:data:`OUT_OF_BAND_BYTES` as a *framed record* of its own: the packet, with each
such array replaced by its header (extension type 3), followed by the arrays'
items, each at a 64-byte boundary.  The sender copies the items once, straight
into the pipe; a receiver copies them once into arrays it owns, or with
``receive(copy=False)`` views them where they lie (docs/format.md, "Framed
records", has the byte layout).

Large ``bytes`` and ``bytearray`` values (:data:`LIFT_BYTES` or more) may travel
the same way, as extension type 6 (their length) with their bytes after the
packet: the packer takes them natively, so no hook sees them, and a sender first
looks for them with :func:`has_large_buffer` -- only while its packets are
large, which is when the copies it saves matter (:mod:`pipebit._send_queue`)::

    0xc9, u32 n, 5      a MessagePack ext 32 header of type 5: n bytes follow
    n bytes             a MessagePack array of the record's packets (one)
    zeros               up to the next multiple of 64 from the payload's start
    per type-3 value    its items (prod(shape) * itemsize bytes), then zeros up to a
                        multiple of 64; in the order a decoder meets the values
    per type-6 value    its bytes, then zeros up to a multiple of 64; in the same order

A reader checks every header and that every array's items lie inside the record.
"""

from __future__ import annotations

from typing import Any, Callable, List, Union

import msgpack

from ._arrays import check_dtype, check_items, header, loaded_numpy, read_header

EXT_ARRAY_OUT_OF_BAND = 3
EXT_FRAME = 5
EXT_BYTES_OUT_OF_BAND = 6
FRAME_FIRST_BYTE = 0xC9  # MessagePack's ext 32; a plain record's payload starts with an array header
FRAME_ALIGN = 64
# An array this big or bigger leaves the MessagePack payload: below it, a record of its
# own and the padding cost more than the copies saved (and small arrays are copied anyway).
OUT_OF_BAND_BYTES = 4096
# A bytes or bytearray value this big leaves the payload of a packet that is framed,
# and makes a packet framed while its sender looks for them (has_large_buffer()).
LIFT_BYTES = 64 * 1024
# has_large_buffer() looks at most this many values, and this deep: a packet with a
# long list of small values costs no more than a glance (what it misses is sent inline).
LIFT_LOOKS = 64
LIFT_DEPTH = 3
_FRAME_HEAD = 6  # 0xc9, u32 length, type
_ZEROS = bytes(FRAME_ALIGN)

Buffer = Union[bytes, bytearray, memoryview]
Rest = Union[bytes, List[Buffer]]
"""What a writer commits after a record's first bytes: bytes, or a framed record's parts."""


class OutOfBand(Exception):
    """Raised by a Safe sender's packer hook: this packet holds an array to frame."""


def goes_out_of_band(obj: Any) -> bool:
    """Whether ``obj`` is an ndarray big enough to travel out of band."""
    np = loaded_numpy()
    return np is not None and type(obj) is np.ndarray and obj.nbytes >= OUT_OF_BAND_BYTES


class _Lifted:
    """A large ``bytes`` or ``bytearray`` value standing in a packet for the packer's hook,
    which sends it out of band (the packer would copy it into its buffer otherwise)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value


def _large_buffer(value: object) -> bool:
    kind = type(value)
    return (kind is bytes or kind is bytearray) and len(value) >= LIFT_BYTES  # type: ignore[arg-type]


def _lift(container: Any, depth: int, looks: list[int]) -> Any:
    """``container`` with its large buffers (and those of the containers in it, down to
    :data:`LIFT_DEPTH`) wrapped in :class:`_Lifted`, or ``None`` if it has none.  Copies
    only the containers on the way to a lifted value; ``looks`` counts down the values
    it may still look at."""
    is_dict = type(container) is dict
    changed: Any = None
    for key, value in container.items() if is_dict else enumerate(container):
        looks[0] -= 1
        if looks[0] < 0:
            break
        if _large_buffer(value):
            new: Any = _Lifted(value)
        elif depth < LIFT_DEPTH and type(value) in (list, tuple, dict):
            new = _lift(value, depth + 1, looks)
            if new is None:
                continue
        else:
            continue
        if changed is None:
            changed = dict(container) if is_dict else list(container)
        changed[key] = new
    return changed


def has_large_buffer(packet: Any) -> bool:
    """Whether ``packet`` holds a ``bytes`` or ``bytearray`` of :data:`LIFT_BYTES` or more
    within :data:`LIFT_LOOKS` values and :data:`LIFT_DEPTH` levels (which :func:`frame`
    then sends out of band)."""
    return _lift(packet, 1, [LIFT_LOOKS]) is not None


def _pad(n: int) -> int:
    return -n % FRAME_ALIGN


def frame(packet: object, default: Callable[[object], object]) -> tuple[list[Buffer], int]:
    """The parts of a framed record holding ``packet`` (their concatenation is the record's
    payload), and its length.  The out-of-band values are not copied: the parts view them,
    so the caller copies them into the pipe (or snapshots them) before anyone can change
    them.  ``default`` is the packer's hook for every other value it cannot pack itself.
    """
    np = loaded_numpy()
    out_of_band: list[Any] = []  # the items of each, in the order the packer meets them

    def hook(obj: Any) -> object:
        if type(obj) is _Lifted:
            out_of_band.append(memoryview(obj.value))
            return msgpack.ExtType(EXT_BYTES_OUT_OF_BAND, len(obj.value).to_bytes(8, "big"))
        if goes_out_of_band(obj):
            check_dtype(obj.dtype)
            # Copies only a non-contiguous array (the snapshot has to be one run of bytes).
            out_of_band.append(np.ascontiguousarray(obj).reshape(-1).view(np.uint8))
            return msgpack.ExtType(EXT_ARRAY_OUT_OF_BAND, header(obj.dtype.str, obj.shape))
        return default(obj)

    lifted = _lift(packet, 1, [LIFT_LOOKS])
    inner = b"\x91" + msgpack.Packer(default=hook, use_bin_type=True).pack(packet if lifted is None else lifted)
    head = bytes((FRAME_FIRST_BYTE,)) + len(inner).to_bytes(4, "big") + bytes((EXT_FRAME,))
    size = _FRAME_HEAD + len(inner)
    parts: list[Buffer] = [head, inner, _ZEROS[: _pad(size)]]
    size += _pad(size)
    for items in out_of_band:
        parts += (memoryview(items), _ZEROS[: _pad(items.nbytes)])
        size += items.nbytes + _pad(items.nbytes)
    return parts, size


class Held(list):  # type: ignore[type-arg]
    """A packet decoded from a framed record: its large arrays are read-only views of the
    record.  The face turns it into a plain list before the application sees it, copying
    the arrays out unless ``receive(copy=False)`` asked for the views."""

    __slots__ = ()


def decode_framed(
    payload: Buffer,
    count: int,
    hold: Callable[[Buffer], Any],
    options: dict[str, Any],
    ext_hook: Callable[[int, bytes], object],
) -> list[Any]:
    """The packets of a framed record's payload -- ``Held`` lists if they view it -- or
    ``ValueError`` (or msgpack's own errors) if it is not one PipeBit wrote.

    ``hold(payload)`` is called once, at the first out-of-band array, and returns a
    read-only uint8 ndarray over the payload that the arrays will view (the reader
    of a ring ties the record's bytes to its lifetime); ``ext_hook`` decodes the
    other extension types.
    """
    size = len(payload)
    if size < _FRAME_HEAD or payload[5] != EXT_FRAME:
        raise ValueError("a framed record's header is cut short or of another type")
    inner_end = _FRAME_HEAD + int.from_bytes(payload[1:5], "big")
    if inner_end > size:
        raise ValueError(f"a framed record's packets claim {inner_end} of its {size} bytes")
    at = inner_end + _pad(inner_end)
    base: Any = None

    def hook(code: int, data: bytes) -> object:
        nonlocal at, base
        if code == EXT_BYTES_OUT_OF_BAND:
            if len(data) != 8:
                raise ValueError("an out-of-band bytes value's length is not 8 bytes")
            end = at + int.from_bytes(data, "big")
            if end > size:
                raise ValueError(f"an out-of-band bytes value reaches past its record's {size} bytes")
            value = bytes(payload[at:end])  # its one copy out: bytes are bytes, whatever copy= says
            at = end + _pad(end)
            return value
        if code != EXT_ARRAY_OUT_OF_BAND:
            return ext_hook(code, data)
        dtype, shape, start, nbytes = read_header(data)
        if start != len(data):
            raise ValueError("an out-of-band array's header carries items")
        end = at + nbytes
        if end > size:
            raise ValueError(f"an out-of-band array's {nbytes} bytes reach past its record's {size}")
        if base is None:
            base = hold(payload)
        items = base[at:end]
        check_items(dtype, items)
        at = end + _pad(end)
        return items.view(dtype).reshape(shape)

    inner = payload[_FRAME_HEAD:inner_end]
    first_at, unpack_options = at, {**options, "ext_hook": hook}
    try:
        packets = msgpack.unpackb(inner, **unpack_options)
    except msgpack.StackError:  # a packet at the deepest level: its items one call each (_codec.MAX_DEPTH)
        at = first_at
        unpacker = msgpack.Unpacker(None, max_buffer_size=max(len(inner), 1), **unpack_options)
        unpacker.feed(inner[1:])
        packets = [[unpacker.unpack() for _ in range(unpacker.read_array_header())]]
    if type(packets) is not list or len(packets) != count or any(type(p) is not list for p in packets):
        raise ValueError(f"a framed record holds no array of {count} packets")
    if base is None:  # nothing views the record (its out-of-band values were bytes, copied): plain lists
        return packets
    return [Held(p) for p in packets]


def release_views(packet: Held, copy: bool) -> list[Any]:
    """``packet`` as a plain list for the application: with ``copy``, each read-only array
    view in it replaced by a writable copy (so that the record's bytes are let go as soon
    as the views are dropped); without, as it is.  Walks lists and dict values, without
    recursion (a packet may nest deeper than Python's recursion limit)."""
    plain = list(packet)
    if not copy:
        return plain
    np = loaded_numpy()
    if np is None:
        return plain
    ndarray = np.ndarray
    stack: list[Any] = [plain]
    while stack:
        container = stack.pop()
        keys = range(len(container)) if type(container) is list else list(container)
        for key in keys:
            value = container[key]
            kind = type(value)
            if kind is ndarray:
                if not value.flags.writeable:
                    container[key] = value.copy()
            elif kind is list or kind is dict:
                stack.append(value)
    return plain
