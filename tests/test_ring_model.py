"""A stateful test of the Safe ring against a model built from ``collections.deque``.

Hypothesis drives a real ring in real shared memory (a tiny one, so records wrap
all the time): commits of random batches, receivers attaching ("oldest" or
"new"), reading and detaching.  The model says what each receiver must see.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pipebit
from pipebit import _codec
from pipebit import _layout as L
from pipebit._limits import max_packet_bytes
from pipebit._pipe import Pipe, Slot, open_pipe
from pipebit._ring import Aborted, RingReader, RingWriter, start_position

CAPACITY = 4096
packets = st.lists(
    st.lists(st.one_of(st.integers(), st.binary(max_size=300), st.text(max_size=20)), max_size=4),
    min_size=1,
    max_size=12,
)


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"ring-model-{uuid.uuid4().hex[:12]}"
        self.pipe: Pipe = open_pipe(self.name, L.MODEL_SAFE, capacity=CAPACITY, packet_len=None, override=False)
        self.writer = RingWriter(self.pipe)
        self.readers: dict[int, tuple[Slot, RingReader, collections.deque[Any]]] = {}
        self.committed: list[Any] = []  # every packet ever committed, in order
        self.read_by_the_departed = 0  # packets read by the readers that detached, at most
        self.next_id = 0

    def teardown(self) -> None:
        for slot, _, _ in self.readers.values():
            self.pipe.release_slot(slot)
        self.pipe.close()
        pipebit.remove(self.name, force=True)

    @rule(batch=packets)
    def commit(self, batch: list[Any]) -> None:
        encoded = [_codec.encode(p) for p in batch]
        if sum(map(len, encoded)) > max_packet_bytes(CAPACITY):
            return
        caught_up = all(not r.available() for _, r, _ in self.readers.values())
        try:
            self.writer.commit(_codec.join_batch(encoded), len(batch), lambda: True)
        except Aborted:
            # Only a receiver with unread records may hold the writer back.
            assert not caught_up, "commit refused although every receiver had read everything"
            return
        self.committed += batch
        for _, _, owed in self.readers.values():
            owed.extend(batch)

    @precondition(lambda self: len(self.readers) < 6)
    @rule(start=st.sampled_from(["unread", "oldest", "new"]))
    def attach(self, start: str) -> None:
        def place(pipe: Pipe, base: int) -> None:
            cursor, seq = start_position(pipe, start)
            pipe.header[base + L.S_CURSOR] = cursor
            pipe.header[base + L.S_NEXT_SEQ] = seq

        with self.pipe.lock:
            oldest = start_position(self.pipe, "oldest")[1]  # sequence number of the oldest retained packet
        slot = self.pipe.claim_slot(L.ROLE_RECEIVER, place)
        reader = RingReader(self.pipe, slot)
        owed: collections.deque[Any] = collections.deque()
        if start != "new":
            retained = reader.read(10**9)
            # Retention is a suffix of everything committed, ending at the newest packet...
            assert retained == self.committed[len(self.committed) - len(retained) :]
            first = len(self.committed) - len(retained)
            if start == "oldest":
                assert first == oldest
            else:  # ...and "unread" leaves out every packet some receiver, here or gone, has read.
                read = [r.next_seq for _, r, _ in self.readers.values()]
                assert first == max([oldest, self.read_by_the_departed, *read]), (first, oldest, read)
        self.readers[self.next_id] = (slot, reader, owed)
        self.next_id += 1

    @precondition(lambda self: bool(self.readers))
    @rule(data=st.data(), limit=st.integers(min_value=1, max_value=40))
    def read(self, data: st.DataObject, limit: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.readers)))
        _, reader, owed = self.readers[key]
        got = reader.read(limit)
        expected = [owed.popleft() for _ in range(len(got))]
        assert got == expected
        assert len(got) >= min(limit, 1) or not owed  # something owed means something read

    @precondition(lambda self: bool(self.readers))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.readers)))
        slot, reader, _ = self.readers.pop(key)
        with self.pipe.lock:  # as SafeReceiver.close_connection() does
            self.pipe.mark_read(reader.cursor)
        self.read_by_the_departed = max(self.read_by_the_departed, reader.next_seq)
        self.pipe.release_slot(slot)

    @invariant()
    def positions_are_consistent(self) -> None:
        h = self.pipe.header
        assert h[L.TAIL] <= h[L.HEAD]
        assert h[L.PACKETS] == len(self.committed)
        for _, reader, owed in self.readers.values():
            assert h[L.TAIL] - CAPACITY <= reader.cursor <= h[L.HEAD]
            if owed:  # (the converse may not hold: a lone wrap mark is "available" but owes nothing)
                assert reader.available()


RingMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_ring_matches_model = RingMachine.TestCase
