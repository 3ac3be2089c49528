"""docs/format.md describes the layout precisely; these tests keep it true."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from pathlib import Path

import pytest

from pipebit import _layout as L
from pipebit import _shm, safe

DOC = (Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text(encoding="utf-8")


def documented(section: str) -> dict[str, int]:
    """``field -> offset`` from the table under the heading starting with ``section``."""
    body = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \+?(\d+) \|(?: \d+ \|)? `(\w+)` \|", body, re.M)
    return {field: int(offset) for offset, field in rows}


def test_header_offsets_match_the_code() -> None:
    doc = documented("The header")
    # Static fields: offsets follow from the struct format used to write them.
    names = ["magic", "version", "byte_order", "model", "slot_count", "data_offset", "capacity",
             "packet_len", "created_ns", "name_len", "name"]  # fmt: skip
    offset = 0
    for name, code in zip(names, re.findall(r"\d*[a-zA-Z]", L.STATIC.format.replace(" ", "")[1:])):
        assert doc[name] == offset, name
        offset += struct.calcsize("=" + code)
    # Shared counters: documented offset == 8 x index in the u64 view.
    counters = {"head": L.HEAD, "tail": L.TAIL, "packets": L.PACKETS, "last_write_ns": L.LAST_WRITE_NS,
                "writers_waiting": L.WRITERS_WAITING, "epoch": L.EPOCH, "flags": L.FLAGS,
                "slot_high": L.SLOT_HIGH}  # fmt: skip
    for name, index in counters.items():
        assert doc[name] == 8 * index, name


def test_header_table_covers_the_header_without_gaps() -> None:
    body = DOC.split("## The header", 1)[1].split("\n## ", 1)[0]
    rows = [(int(offset), int(size), field) for offset, size, field in
            re.findall(r"^\| (\d+) \| (\d+) \| `?(\w+)`? \|", body, re.M)]  # fmt: skip
    end = 0
    for offset, size, field in rows:
        assert offset == end, f"{field} at {offset}, the previous field ends at {end}"
        end = offset + size
    assert end == L.TABLE_OFFSET
    assert ("read_mark", 192, 8) in [(field, offset, size) for offset, size, field in rows]
    assert rows[-1] == (200, 56, "reserved")


def test_read_mark_offset_matches_the_code() -> None:
    assert documented("The header")["read_mark"] == 8 * L.READ_MARK
    assert L.READ_MARK < L.TABLE_OFFSET // 8


def test_name_hash_example_recomputes(monkeypatch: pytest.MonkeyPatch) -> None:
    found = re.search(
        r"uid `(\d+)` and name\s+`([^`]+)` hash the bytes `([^`]+)` to\s+`([0-9a-f ]+)`, so `<h>` = "
        r"`([a-z2-7]+)`, the segment\s+is `([^`]+)` and slot (\d+)'s semaphore `([^`]+)`",
        DOC,
    )
    assert found, "the worked example of the name hash is missing or reworded"
    uid, name, text, digest, token, segment, slot, semaphore = found.groups()
    assert text == f"{uid}\\0{name}"  # the doc writes the NUL byte as \0
    # The doc's recipe, followed literally (str.encode() is UTF-8).
    raw = hashlib.blake2b(f"{uid}\0{name}".encode(), digest_size=10).digest()
    assert raw.hex(" ") == digest
    assert base64.b32encode(raw).decode("ascii").lower() == token
    assert len(token) == 16
    assert segment == f"/pipebit-{token}"
    assert semaphore == f"{segment}.{int(slot):02d}"
    # And the code agrees with it for that user.
    monkeypatch.setattr(_shm.os, "getuid", lambda: int(uid))
    assert _shm.segment_name(name) == segment
    assert _shm.semaphore_name(name, f"{int(slot):02d}") == semaphore
    assert _shm.semaphore_name(name, "w") == f"{segment}.w"


def test_every_safe_start_mode_is_documented() -> None:
    body = DOC.split("### Where a receiver starts", 1)[1].split("\n### ", 1)[0]
    documented_starts = set(re.findall(r"^\* `\"(\w+)\"`", body, re.M))
    assert documented_starts == {"new", "oldest", "unread"}
    assert set(safe.STARTS) <= documented_starts


def test_slot_offsets_match_the_code() -> None:
    doc = documented("The participant table")
    fields = {"role": L.S_ROLE, "pid": L.S_PID, "token": L.S_TOKEN, "cursor": L.S_CURSOR,
              "next_seq": L.S_NEXT_SEQ, "waiting": L.S_WAITING, "attached_ns": L.S_ATTACHED_NS,
              "count": L.S_COUNT}  # fmt: skip
    assert {name: doc[name] for name in fields} == {name: 8 * index for name, index in fields.items()}
    assert f"`data_offset` = {L.DATA_OFFSET}" in DOC
    assert f"64 slots of {L.SLOT_SIZE} bytes" in DOC


def test_record_layout_matches_the_code() -> None:
    assert L.RECORD.format == "=IIQ"  # u32 payload_len, u32 count, u64 first_seq, as documented
    assert "`0xFFFFFFFF` = *wrap mark*" in DOC
    assert L.WRAP_MARK == 0xFFFFFFFF
    assert "o + 16 | `payload_len`" in DOC
    assert L.MAGIC.hex(" ") in DOC.replace("`", "").lower()


def test_fast_register_layout_matches_the_code() -> None:
    body = DOC.split("## The Fast register", 1)[1]
    assert f"| {L.F_LATEST * 8} | `latest` |" in body
    assert f"| {L.F_SLEEPERS * 8} | `sleepers` |" in body
    assert f"| {L.LANE_TABLE} | lane table | {L.LANES} entries of {L.LANE_ENTRY} bytes" in body
    assert f"| {L.BUFFERS} | buffers | {2 * L.LANES} buffers" in body
    assert f"at `{L.BUFFERS} + (2l + b) * ({L.BUFFER_HEADER} + slot_size)`" in body
    assert f"`capacity` = {L.fast_capacity(65536)}" in body
    assert f"`slot_size = (capacity - {L.BUFFERS}) / {2 * L.LANES} - {L.BUFFER_HEADER}`" in body
    buffer_fields = {"seq": L.B_SEQ, "length": L.B_LENGTH, "write_ns": L.B_WRITE_NS}
    for field, index in buffer_fields.items():
        assert f"| +{8 * index} | `{field}` |" in body
