"""docs/format.md describes the layout precisely; these tests keep it true."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from pipebit import _layout as L

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
