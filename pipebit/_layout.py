"""The byte layout of a pipe's shared-memory segment.  Pure: no I/O, no locks.

A segment is a fixed header, a participant table, then the data area::

    offset  size  field             written            meaning
    ------  ----  ----------------  -----------------  ------------------------------------------
         0     8  magic             at creation, last  b"PIPEBIT\\0"; zero while being created
         8     4  version           at creation        LAYOUT_VERSION (2); version 1 is also read
        12     4  byte_order        at creation        0x01020304 in the writer's native order
        16     4  model             at creation        MODEL_SAFE (1) or MODEL_FAST (2)
        20     4  slot_count        at creation        entries in the participant table
        24     8  data_offset       at creation        where the data area starts
        32     8  capacity          at creation        bytes in the data area
        40     8  packet_len        creation/override  required elements per packet, 0 = any
        48     8  created_ns        at creation        time.time_ns() of creation: identifies this
                                                       incarnation of the name
        56     8  name_len          at creation        bytes of the UTF-8 name that follow
        64    64  name              at creation        the pipe's real name, NUL padded
       128     8  head              by writers, last   bytes ever committed (ring position)
       136     8  tail              by writers         oldest retained position (a record start)
       144     8  packets           by writers         packets ever committed
       152     8  last_write_ns     by writers         time.time_ns() of the newest commit
       160     8  writers_waiting   by writers         writers sleeping for room; receivers post
       168     8  epoch             by override        bumped whenever the contents are reset
       176     8  flags             by remove          FLAG_REMOVED once the pipe is unlinked
       184     8  slot_high         by attachers       1 + highest slot index ever claimed
       192     8  read_mark         by receivers       Safe: ring position up to which receivers that
                                                       have since detached had returned packets (a
                                                       maximum, under the writers' lock); start="unread"
       200    56  (reserved, zero)
       256  64*n  participant table, n = slot_count, one 64-byte slot each:
                  +0  role        ROLE_FREE (0), ROLE_RECEIVER (1), ROLE_SENDER (2),
                                  ROLE_GROUP (3) or ROLE_MEMBER (4); odd roles hold writers back
                  +8  pid         the holder's process id (informational; liveness is a lock);
                                  a group: the index of its entry in the group area
                  +16 token       random id chosen by the holder at claim time
                  +24 cursor      receivers: next ring position to read; a group: its release
                                  position (writers may reuse the ring below it); a member:
                                  the slot index of its group
                  +32 next_seq    receivers: sequence number of the next packet to read
                  +40 waiting     1 while asleep: receivers and members for a semaphore post,
                                  senders for room
                  +48 attached_ns time.time_ns() of the claim (a group: of its creation)
                  +56 count       packets sent (senders), read (receivers), received (members)
                                  or acknowledged (a group)
    data_offset      data area: the ring (Safe) or the latest-value slot (Fast)
    data_offset+capacity  Safe pipes of version 2 only: the group area, GROUPS entries of
                     GROUP_SIZE bytes (see below); version 1 pipes have none, and refuse groups

Every field at offset 128 and beyond is an aligned 8-byte unsigned integer that
other processes read while it changes, so it is only ever stored whole through
``memoryview.cast("Q")`` (``struct.pack_into`` would let a reader see it half
written).  Integers are in native byte order; ``byte_order`` lets a reader on
another architecture refuse the segment instead of misreading it.

The Safe ring holds records at 8-byte aligned positions.  A position is a
byte count that only grows; its place in the data area is ``position %
capacity``.  Each record is::

    +0  u32 payload_len   0xFFFFFFFF marks "skip to the start of the next lap"
    +4  u32 count         packets in the record
    +8  u64 first_seq     sequence number of its first packet
    +16 payload           one msgpack array of ``count`` packets, then zero padding to 8

A receiver group (see ``docs/groups.md``) is a participant slot of role
ROLE_GROUP, which no process holds, and an entry of the group area, changed only
under the writers' lock::

    +0    u64 slot          1 + the index of the group's participant slot; 0 = free entry
    +8    u64 token         the group slot's token
    +16   u64 cursor        ring position of the record holding the next unclaimed packet
    +24   u64 next_seq      sequence number of the next unclaimed packet
    +32   u64 delivered     packets handed to members (redeliveries included)
    +40   u64 redelivered   packets handed again after the member holding them died
    +48   u64 created_ns    time.time_ns() of the group's creation
    +56   u64 name_len      bytes of the UTF-8 group name that follow
    +64   64 bytes          the group's name, NUL padded
    +128  CLAIMS x 40 bytes claims handed out and not acknowledged, each:
          u64 owner (1 + the member's slot index; 0 = free entry), u64 owner_token (the
          member's token; 0 = its member died: waiting to be handed out again),
          u64 position (ring position of the record holding the first packet),
          u64 first_seq, u64 end_seq (sequence numbers of the packets, end exclusive)

A group's release position (its slot's cursor) is the lowest ``position`` of its
claims, or its ``cursor`` when it has none.

The Fast data area is a latest-value register fed by up to ``LANES`` senders,
each owning a lane of two buffers, so a sender writes without any lock and a
sender killed mid-write leaves the published value intact::

    +0    u64 latest        0 = no value; else (stamp << 8) | (lane << 1) | buffer
    +8    u64 sleepers      1 when some receiver may be asleep waiting for a value
    +16   48 bytes reserved
    +64   lane table: LANES x 64 bytes: u64 owner (participant slot + 1, 0 = free),
          u64 owner_token, 48 bytes reserved
    +576  buffers: lane l, buffer b at 576 + (2l + b) * (32 + slot_size):
          u64 seq (odd while being written, even when complete), u64 length,
          u64 write_ns, u64 reserved, then ``slot_size`` payload bytes

A sender writes the buffer it did not publish last (seq odd, payload, length,
seq even) and then stores ``latest`` with the buffer's even seq as ``stamp``.
A reader loads ``latest``, checks the buffer's seq equals ``stamp`` before and
after copying the payload, and retries if not.  ``slot_size`` follows from
``capacity``: ``(capacity - 576) // 16 - 32``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"PIPEBIT\x00"
LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no group area
BYTE_ORDER_MARK = 0x01020304

MODEL_SAFE = 1
MODEL_FAST = 2
MODEL_NAMES = {MODEL_SAFE: "safe", MODEL_FAST: "fast"}

ROLE_FREE = 0
ROLE_RECEIVER = 1
ROLE_SENDER = 2
ROLE_GROUP = 3  # a receiver group's position; held by no process (odd: it holds writers back)
ROLE_MEMBER = 4  # a member of a receiver group

FLAG_REMOVED = 1

SLOT_COUNT = 64
SLOT_SIZE = 64
TABLE_OFFSET = 256
NAME_FIELD = 64
DATA_OFFSET = TABLE_OFFSET + SLOT_COUNT * SLOT_SIZE

# The static part of the header, written once at creation (magic last, separately).
STATIC = struct.Struct("=8sIIII QQQQQ 64s")
assert STATIC.size == 128

# Indices into the header seen as an array of u64 (``memoryview.cast("Q")``).
PACKET_LEN = 40 // 8
CREATED_NS = 48 // 8
HEAD = 128 // 8
TAIL = 136 // 8
PACKETS = 144 // 8
LAST_WRITE_NS = 152 // 8
WRITERS_WAITING = 160 // 8
EPOCH = 168 // 8
FLAGS = 176 // 8
SLOT_HIGH = 184 // 8
READ_MARK = 192 // 8

# Offsets inside a slot, in u64 units; add ``slot_base(i)``.
S_ROLE = 0
S_PID = 1
S_TOKEN = 2
S_CURSOR = 3
S_NEXT_SEQ = 4
S_WAITING = 5
S_ATTACHED_NS = 6
S_COUNT = 7

RECORD = struct.Struct("=IIQ")
RECORD_HEADER = RECORD.size
WRAP = struct.Struct("=I")  # a wrap mark is only its first field: it may sit in the last 8 bytes
WRAP_MARK = 0xFFFFFFFF
ALIGN = 8

MIN_CAPACITY = 1024  # no valid data area is smaller (a Fast register with 64-byte slots is 2112)
MIN_RING = 4096  # the smallest Safe ring a user may ask for
MAX_CAPACITY = 1 << 34  # 16 GiB: well past any sane ring, well inside u32 record lengths x many


# The group area (Safe pipes of version 2): offsets relative to its start, in u64 units.
GROUPS = 8
CLAIMS = 64
CLAIM_WORDS = 5
GROUP_WORDS = 16 + CLAIMS * CLAIM_WORDS
GROUP_SIZE = GROUP_WORDS * 8
GROUP_AREA = GROUPS * GROUP_SIZE
G_SLOT, G_TOKEN, G_CURSOR, G_NEXT_SEQ, G_DELIVERED, G_REDELIVERED, G_CREATED_NS, G_NAME_LEN = range(8)
G_NAME = 64  # byte offset of the name inside an entry
G_CLAIMS = 16  # u64 index of the first claim
C_OWNER, C_TOKEN, C_POSITION, C_FIRST, C_END = range(CLAIM_WORDS)
GROUP_NAME_BYTES = 64

# The Fast data area (offsets relative to the data area).
LANES = 8
F_LATEST = 0
F_SLEEPERS = 8 // 8
LANE_TABLE = 64
LANE_ENTRY = 64
L_OWNER, L_OWNER_TOKEN, L_FIRST_SEQ = 0, 1, 2  # u64 indices inside a lane table entry
BUFFERS = LANE_TABLE + LANES * LANE_ENTRY
BUFFER_HEADER = 32
B_SEQ, B_LENGTH, B_WRITE_NS = 0, 1, 2  # u64 indices inside a buffer header


def fast_capacity(slot_size: int) -> int:
    """Data-area bytes of a Fast pipe whose packets may encode to ``slot_size`` bytes."""
    return BUFFERS + 2 * LANES * (BUFFER_HEADER + align(slot_size))


def fast_slot_size(capacity: int) -> int:
    """The largest encoded packet a Fast pipe of ``capacity`` data bytes carries."""
    return (capacity - BUFFERS) // (2 * LANES) - BUFFER_HEADER


def fast_buffer_offset(capacity: int, lane: int, buffer: int) -> int:
    """Offset (in the data area) of the header of ``buffer`` (0/1) of ``lane``."""
    return BUFFERS + (2 * lane + buffer) * (BUFFER_HEADER + fast_slot_size(capacity))


def slot_base(index: int) -> int:
    """Index of slot ``index``'s first field in the u64 view of the header."""
    return (TABLE_OFFSET + index * SLOT_SIZE) // 8


SLOT_BASES = tuple(slot_base(index) for index in range(SLOT_COUNT))  # slot_base() of every slot, in order


def align(n: int) -> int:
    """Round ``n`` up to the ring's alignment."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def segment_size(capacity: int, model: int = MODEL_FAST, version: int = LAYOUT_VERSION) -> int:
    """Total bytes of a segment whose data area holds ``capacity`` bytes (a Safe pipe of
    version 2 also holds the group area after it)."""
    return DATA_OFFSET + capacity + (GROUP_AREA if model == MODEL_SAFE and version >= 2 else 0)


def group_base(entry: int) -> int:
    """Index of group-area entry ``entry``'s first field in the u64 view of the group area."""
    return entry * GROUP_WORDS


def claim_base(entry: int, claim: int) -> int:
    """Index of claim ``claim`` of group entry ``entry`` in the u64 view of the group area."""
    return entry * GROUP_WORDS + G_CLAIMS + claim * CLAIM_WORDS


def pack_static(model: int, capacity: int, packet_len: int, created_ns: int, name: str) -> bytes:
    """The first 128 header bytes, with the magic left zero (it is stored last)."""
    raw_name = name.encode("utf-8")
    return STATIC.pack(
        b"\x00" * 8,
        LAYOUT_VERSION,
        BYTE_ORDER_MARK,
        model,
        SLOT_COUNT,
        DATA_OFFSET,
        capacity,
        packet_len,
        created_ns,
        len(raw_name),
        raw_name,
    )


class HeaderInfo(NamedTuple):
    """The static header fields, validated.  Built only by :func:`read_static`."""

    model: int
    version: int
    slot_count: int
    data_offset: int
    capacity: int
    created_ns: int
    name: str


class LayoutProblem(Exception):
    """Internal: the header is not valid.  ``blank`` is true for an all-zero header."""

    def __init__(self, reason: str, *, blank: bool = False) -> None:
        super().__init__(reason)
        self.blank = blank


def read_static(buf: memoryview | bytes, segment_bytes: int) -> HeaderInfo:
    """Validate the static header of a segment of ``segment_bytes`` bytes.

    Raises :class:`LayoutProblem` describing the first thing that is wrong.  Nothing
    in the header is trusted before the magic, version, byte order and sizes check out.
    """
    if segment_bytes < STATIC.size:
        raise LayoutProblem(f"segment is {segment_bytes} bytes, smaller than a header", blank=segment_bytes == 0)
    (magic, version, bom, model, slots, data_offset, capacity, _plen, created_ns, name_len, raw_name) = (
        STATIC.unpack_from(buf, 0)
    )
    if magic != MAGIC:
        blank = magic == b"\x00" * 8
        raise LayoutProblem("magic bytes are missing (not a PipeBit segment)", blank=blank)
    if version not in READABLE_VERSIONS:
        raise LayoutProblem(f"layout version {version}, this PipeBit reads versions 1 and {LAYOUT_VERSION}")
    if bom != BYTE_ORDER_MARK:
        raise LayoutProblem("written by a machine of the other byte order")
    if model not in MODEL_NAMES:
        raise LayoutProblem(f"unknown model {model}")
    if slots != SLOT_COUNT or data_offset != DATA_OFFSET:
        raise LayoutProblem(f"participant table of {slots} slots at {data_offset} is not this version's")
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity % ALIGN:
        raise LayoutProblem(f"capacity {capacity} is out of range")
    needed = segment_size(capacity, model, version)
    if needed > segment_bytes:
        raise LayoutProblem(f"capacity {capacity} needs {needed} bytes, segment has {segment_bytes}")
    if not 0 < name_len <= NAME_FIELD:
        raise LayoutProblem(f"name length {name_len} is out of range")
    try:
        name = bytes(raw_name[:name_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise LayoutProblem("stored name is not UTF-8") from None
    return HeaderInfo(model, version, slots, data_offset, capacity, created_ns, name)
