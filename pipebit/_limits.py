"""Every rule about arguments, written once: names, checks, defaults, and the limits on packets.

Pure: no I/O.  Both transports and every face take their checks, defaults and
limit messages from here, so that a rule cannot drift between them.  Errors
say whose fault they are: these are all the caller's.
"""

from __future__ import annotations

import math
import re
from typing import Any, List, Literal, Tuple, Union, get_args

from . import _layout as L
from .errors import ArgumentTypeError, CapacityMismatchError, InvalidArgumentError, InvalidNameError, PacketSizeError

Packet = List[Any]
"""What a receiver gets: one packet, a list."""
Sendable = Union[List[Any], Tuple[Any, ...]]
"""What ``send()`` takes: a list or a tuple."""
SafeStart = Literal["unread", "oldest", "new"]
"""Where a Safe receiver begins among the retained packets (its ``start``)."""
FastStart = Literal["current", "new"]
"""Where a Fast receiver begins (its ``start``)."""
Spin = Union[float, Literal["auto"]]
"""A Safe receiver's ``spin``: ``"auto"`` or seconds."""

# ------------------------------------------------------------------ defaults
DEFAULT_CAPACITY = 4 << 20  # bytes of a Safe pipe's ring
DEFAULT_SLOT_SIZE = 64 << 10  # bytes of a Fast pipe's largest encoded packet
DEFAULT_QUEUE_SIZE = 8192  # packets a Safe send() may queue before it blocks
QUEUE_BYTES = 1 << 20  # with the queue size, bounds what send() holds in memory
DEFAULT_FLUSH_TIMEOUT = 5.0  # seconds closing (and interpreter exit) waits for delivery
DEFAULT_RECEIVE_TIMEOUT = 0.1  # seconds receive() waits when nothing is there
DEFAULT_MAX_CACHED = 65536  # packets a Safe receiver reads ahead
DEFAULT_MAX_CACHED_BYTES = 64 << 20  # bytes a Safe receiver reads ahead
MAX_RECORD_PACKETS = 8192  # packets per record (or stream entry): bounds a receiver's read-ahead
GROUP_ENTRY_PACKETS = 16  # packets per stream entry of a Redis pipe with receiver groups (docs/groups.md)
MAX_SPIN = 1.0  # seconds: the longest a receiver may be asked to poll before sleeping
SAFE_STARTS: tuple[str, ...] = get_args(SafeStart)
FAST_STARTS: tuple[str, ...] = get_args(FastStart)

# ------------------------------------------------------------------- names
NAME_RULE = "1-64 characters of letters, digits, '.', '_' and '-', not starting with '.'"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\Z")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid pipe name; raise ``InvalidNameError`` or ``ArgumentTypeError``."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"a pipe name must be a str, not {type(name).__name__!r}")
    if not NAME_PATTERN.match(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InvalidNameError(f"invalid pipe name {shown!r}: a name is {NAME_RULE}")
    return name


def check_group(group: object, shown: str) -> str:
    """A receiver group's name: the same rule as a pipe's name.  Errors name the pipe."""
    if not isinstance(group, str):
        raise ArgumentTypeError(f"pipe {shown!r}: a receiver group's name must be a str, not {type(group).__name__!r}")
    if not NAME_PATTERN.match(group):
        text = group if len(group) <= 80 else group[:77] + "..."
        raise InvalidNameError(f"pipe {shown!r}: invalid receiver group name {text!r}: a group name is {NAME_RULE}")
    return group


# ------------------------------------------------------------------ checks
def check_debug(debug: object) -> bool:
    """``debug`` must be 0, 1, ``False`` or ``True``."""
    if type(debug) not in (int, bool) or debug not in (0, 1):
        raise InvalidArgumentError(f"debug must be 0, 1, False or True, not {debug!r}")
    return bool(debug)


def check_flag(value: object, what: str) -> bool:
    """``True``/``False`` (or 1/0, as the original PipeBit took ``override``)."""
    if type(value) not in (int, bool) or value not in (0, 1):
        raise InvalidArgumentError(f"{what} must be True or False, not {value!r}")
    return bool(value)


# Timeouts of exactly these types (not bool) that are >= 0 need no check_timeout():
# receive() loops that poll millions of times test this inline instead.
PLAIN_SECONDS = (int, float)


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """The ``queue`` contract: ``None`` waits forever, a number >= 0 is seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"{what} must be None or a number of seconds, not {type(timeout).__name__!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"{what} must be None or a number of seconds >= 0, not {timeout!r}")
    return float(timeout)


def check_spin(spin: object) -> float | None:
    """A receiver's ``spin``: ``"auto"`` (returned as ``None``) or seconds from 0 to :data:`MAX_SPIN`."""
    if spin == "auto":
        return None
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise ArgumentTypeError(f"spin must be 'auto' or a number of seconds, not {type(spin).__name__!r}")
    if not 0 <= spin <= MAX_SPIN:  # NaN fails this too
        raise InvalidArgumentError(f"spin must be 'auto' or a number of seconds from 0 to {MAX_SPIN}, not {spin!r}")
    return float(spin)


def check_count(value: object, what: str, *, minimum: int, maximum: int | None = None) -> int:
    """An int argument within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{what} must be an int, not {type(value).__name__!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidArgumentError(f"{what} must be at least {minimum}{upper}, not {value}")
    return value


def check_size(size: object) -> int | None:
    """A sender's ``size``: ``None`` (the pipe's rule stands) or the elements every packet must have."""
    return None if size is None else check_count(size, "size", minimum=0)


def check_capacity(capacity: object) -> int | None:
    """A Safe pipe's ``capacity``: ``None`` (the pipe's own, or the default) or ring bytes, rounded up to 8."""
    if capacity is None:
        return None
    return L.align(check_count(capacity, "capacity", minimum=L.MIN_RING, maximum=L.MAX_CAPACITY))


def check_slot_size(slot_size: object) -> int | None:
    """A Fast pipe's ``slot_size``: ``None`` or the largest encoded packet, rounded up to 8."""
    if slot_size is None:
        return None
    return L.align(check_count(slot_size, "slot_size", minimum=64, maximum=L.MAX_CAPACITY // (2 * L.LANES)))


def check_start(start: object, allowed: tuple[str, ...]) -> str:
    """A receiver's ``start``: one of ``allowed``."""
    if start not in allowed:
        raise InvalidArgumentError(f"start must be one of {', '.join(map(repr, allowed))}, not {start!r}")
    assert isinstance(start, str)
    return start


# ------------------------------------------------------------ packet limits
def max_packet_bytes(capacity: int) -> int:
    """The largest encoded packet a Safe pipe of ``capacity`` bytes carries: alone in a record,
    after the record's header and the largest MessagePack array header (5 bytes)."""
    return capacity - L.RECORD_HEADER - 5


def wrong_length(shown: str, required: int, got: int) -> PacketSizeError:
    """The error for a packet of ``got`` elements on a pipe whose packets have ``required``."""
    return PacketSizeError(f"pipe {shown!r} carries packets of {required} elements, got {got}")


def too_big(shown: str, size: int, limit: int, *, what: str, setting: int) -> PacketSizeError:
    """The error for a packet that encodes to ``size`` bytes where ``limit`` is the most.
    ``what`` is the setting that decides the limit (``"capacity"`` or ``"slot_size"``), and
    ``setting`` its value for this pipe."""
    return PacketSizeError(
        f"packet encodes to {size} bytes; pipe {shown!r} carries at most {limit} bytes per packet "
        f"({what}={setting}).  A pipe's {what} is set when it is created: pass a larger {what} in "
        f"every process and recreate the pipe, with override=True on a sender while no other process "
        f"is attached, or by removing it first (`pipebit rm {shown}`)"
    )


def size_mismatch(shown: str, what: str, asked: int, actual: int) -> CapacityMismatchError:
    """The error for an explicit ``what`` (capacity or slot_size) that differs from the existing pipe's."""
    return CapacityMismatchError(
        f"pipe {shown!r} exists with {what}={actual}, but {what}={asked} was asked for; an explicit "
        f"size is never ignored.  Pass the same {what} in every process (or none, to take the pipe's), "
        f"recreate the pipe with a sender's override=True while no other process is attached, "
        f"or remove it first (`pipebit rm {shown}`)"
    )
