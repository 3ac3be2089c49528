"""numpy arrays as MessagePack extension type 2, and numpy scalars as plain numbers.  Pure: no I/O.

numpy is optional: nothing here imports it until a packet holds an array, so a
program that never imports numpy pays nothing, and one without numpy installed
can use every other feature.  The encoder finds numpy in ``sys.modules`` (an
array can only exist once numpy was imported); the decoder imports it when it
meets an array, and raises :class:`NumpyMissingError` if it cannot.

The extension payload (docs/format.md, "Arrays"), every integer big-endian::

    u8      L           length of the dtype text (1..16)
    L bytes dtype       ASCII, numpy's ``dtype.str``: byte order ``<`` ``>`` or ``|``,
                        kind, item size in bytes: ``<f4``, ``|u1``, ``>i8``, ``|S5``, ``<U3``
    u8      ndim        number of dimensions (0..64)
    ndim x u64 shape    the length of each dimension
    rest    data        the items in C order (last index fastest), in the dtype's byte order;
                        exactly prod(shape) * itemsize bytes

Decoding trusts nothing: the dtype must be one of the allowed kinds in its
canonical text, and the shape must account for exactly the data's bytes; any
other payload raises ``ValueError``, which the codec reports as a
:class:`CorruptPacketError`.  Nothing is unpickled, ever.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Sequence

import msgpack

from .errors import NumpyMissingError, PacketTypeError

EXT_NDARRAY = 2

# Booleans, signed and unsigned integers, floats, complex numbers, fixed-width bytes
# and UCS-4 text: the dtypes whose items are plain bytes.  Object, structured (void),
# datetime/timedelta and numpy 2's variable-width strings need pickling or pointers.
KINDS = "biufcSU"
MAX_NDIM = 64  # numpy 2's limit (numpy 1: 32)
MAX_DTYPE_TEXT = 16
_DTYPE_TEXT = re.compile(rb"[<>|][biufcSU][1-9][0-9]{0,9}")


def numpy_module() -> Any:
    """numpy, imported now if it was not yet; :class:`NumpyMissingError` if it cannot be."""
    np = sys.modules.get("numpy")
    if np is not None:
        return np
    try:
        import numpy  # noqa: PLC0415 - optional: imported only when a packet holds an array
    except ImportError as exc:
        raise NumpyMissingError(
            "a packet holds a numpy array, and numpy cannot be imported here: "
            "install it (pip install 'pipebit[numpy]') to receive arrays"
        ) from exc
    return numpy


def loaded_numpy() -> Any:
    """numpy if this process imported it, else ``None`` (then no value can be a numpy object)."""
    return sys.modules.get("numpy")


def is_array(value: object) -> bool:
    """Whether ``value`` is a numpy ndarray (without importing numpy)."""
    np = loaded_numpy()
    return np is not None and isinstance(value, np.ndarray)


def travels(dtype: Any) -> bool:
    """Whether arrays of ``dtype`` can travel: plain items of the same meaning on every machine.

    Not long double (``np.longdouble``, ``'<f16'``, and its complex ``'<c32'``): its bytes
    are the platform's own (x87's 80 bits and 6 bytes of padding here, IEEE quad elsewhere).
    """
    if dtype.kind not in KINDS or dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype is not None:
        return False
    return dtype.kind not in "fc" or dtype.itemsize <= (8 if dtype.kind == "f" else 16)


def check_dtype(dtype: Any) -> None:
    """Raise :class:`PacketTypeError` unless arrays of ``dtype`` can travel."""
    if not travels(dtype):
        raise PacketTypeError(
            f"a packet cannot carry numpy values of dtype {dtype!s} ({dtype.str}): only bool, integer, "
            "float and complex of at most 64 bits a part, fixed-width bytes ('S') and str ('U') travel -- "
            "object, structured and datetime arrays would need pickling, and long double is the platform's own"
        )


def pack_numpy(obj: object) -> object:
    """What the packer's ``default`` hook sends for a numpy object, or ``None`` if ``obj`` is none.

    An ndarray becomes the extension type.  A numpy scalar becomes the Python number
    that holds it exactly: ``np.bool_`` a bool, any integer an int, a float of at most
    64 bits a float (``np.float64`` is one already); a complex scalar, which no
    MessagePack number holds, a 0-d array.  Other numpy scalars (long double,
    datetime, void) raise :class:`PacketTypeError`, and so do ndarray subclasses
    (matrices, character arrays), whose extra meaning would be lost: send
    ``np.asarray(x)``.  (Masked arrays are refused by the codec: their type is not numpy's own module's.)
    """
    np = loaded_numpy()
    if np is None:
        return None
    if type(obj) is np.ndarray:
        return _pack_array(np, obj)
    if isinstance(obj, np.ndarray):
        raise PacketTypeError(
            f"a packet cannot carry a {type(obj).__name__!r} (an ndarray subclass): send np.asarray() of it"
        )
    if isinstance(obj, np.generic):
        return _pack_scalar(np, obj)
    return None


def _pack_scalar(np: Any, obj: Any) -> object:
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating) and obj.dtype.itemsize <= 8:
        return float(obj)
    return _pack_array(np, np.asarray(obj))  # complex: a 0-d array; long double, datetime64, void...: raises


def _pack_array(np: Any, array: Any) -> Any:
    check_dtype(array.dtype)
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # copies only when not C-contiguous
    return msgpack.ExtType(EXT_NDARRAY, payload(array.dtype.str, array.shape, flat))


def header(dtype_text: str, shape: Sequence[int]) -> bytes:
    """An array's header: dtype and shape.  For a trusted array's fields (``ValueError`` only
    for a dtype text or shape no header holds)."""
    text = dtype_text.encode("ascii")
    if not 1 <= len(text) <= MAX_DTYPE_TEXT or len(shape) > MAX_NDIM:
        raise ValueError(f"no array has dtype {dtype_text!r} and {len(shape)} dimensions")
    return bytes((len(text),)) + text + bytes((len(shape),)) + b"".join(n.to_bytes(8, "big") for n in shape)


def payload(dtype_text: str, shape: Sequence[int], data: Any) -> bytes:
    """The extension payload of an array: its header, then ``data`` (a bytes-like object).

    For a trusted array's fields; anything else must go through :func:`unpack_array`
    to be checked.
    """
    return b"".join((header(dtype_text, shape), data))


def read_header(data: bytes) -> tuple[Any, tuple[int, ...], int, int]:
    """``(dtype, shape, start, nbytes)`` of an array header at the start of ``data``: the
    items begin at ``start`` and take ``nbytes``.  Checks everything but the items;
    ``ValueError`` for a header that is not one PipeBit sends."""
    np = numpy_module()
    size = len(data)
    text_len = data[0] if size else 0
    if not 1 <= text_len <= MAX_DTYPE_TEXT or size < text_len + 2:
        raise ValueError(f"array header too short or dtype text of {text_len} bytes")
    text = data[1 : 1 + text_len]
    if not _DTYPE_TEXT.fullmatch(text):
        raise ValueError(f"array dtype {text!r} is not one PipeBit sends")
    dtype = np.dtype(text.decode("ascii"))
    if dtype.str.encode("ascii") != text or not travels(dtype):  # '|f4', '<b1': not numpy's text for it
        raise ValueError(f"array dtype {text!r} is not one PipeBit sends")
    ndim = data[1 + text_len]
    start = 2 + text_len + 8 * ndim
    if ndim > MAX_NDIM or size < start:
        raise ValueError(f"array header of {ndim} dimensions does not fit its {size} bytes")
    shape = tuple(int.from_bytes(data[at : at + 8], "big") for at in range(2 + text_len, start, 8))
    if max(shape, default=0) >= 1 << 62:
        raise ValueError(f"array of shape {shape} is larger than any array PipeBit sends")
    return dtype, shape, start, math.prod(shape) * dtype.itemsize


def check_items(dtype: Any, items: Any) -> None:
    """``ValueError`` unless the bytes of a bool array (``items``, a uint8 array) are all 0 or 1."""
    if dtype.kind == "b" and items.size and items.max() > 1:  # numpy's bools are the bytes 0 and 1 only
        raise ValueError("a bool array holds a byte other than 0 and 1")


def unpack_array(data: bytes) -> Any:
    """The array an extension payload holds, as a new writable ndarray; ``ValueError`` if it is not one."""
    np = numpy_module()
    dtype, shape, start, nbytes = read_header(data)
    if nbytes != len(data) - start:
        raise ValueError(
            f"array of shape {shape} and dtype {dtype.str} does not fit its {len(data) - start} bytes of data"
        )
    array = np.empty(shape, dtype)  # numpy's own checks: a zero-size shape may still be too big for it
    items = array.reshape(-1).view(np.uint8)
    items[:] = np.frombuffer(data, np.uint8, nbytes, start)
    check_items(dtype, items)
    return array
