"""Receiver groups (#17): each packet to one member of each group, redelivery of what a dead
member held, durability, fair sharing, removal, what stats and the CLI show, and bad input.

Members run in child processes.  Each prints, flushed, one line per batch as it gets it
(before working on it), so the lines of a member killed with SIGKILL say what it held."""

from __future__ import annotations

import json
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

import pipebit
from pipebit import _layout as L
from pipebit import _pipe, _shm

from .conftest import Reaper
from .helpers import wait_until
from .redis_server import both_transports

# A member: joins group argv[2] of pipe argv[1] (start argv[3]), works argv[4] seconds per
# packet, writes each batch's packet ids as a JSON line to the file argv[6] as soon as it has
# it, and leaves (acknowledging) once the file argv[5] exists and a receive() came back empty.
MEMBER = r"""
import json, os, sys, time
import pipebit
name, group, start, work, stop = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
log = open(sys.argv[6], "w")
options = {"group": group, "start": start} if group != "-" else {"start": start}
receiver = pipebit.SafeReceiver(name, **options)
print(json.dumps({"ready": os.getpid()}), flush=True)
while True:
    batch = receiver.receive(timeout=0.1)
    if batch:
        log.write(json.dumps([packet[0] for packet in batch]) + "\n")
        log.flush()
        for _ in batch:
            if work:
                time.sleep(work)
    elif os.path.exists(stop):
        break
receiver.close_connection()
"""

# A producer: sends packets [i] for i in range(argv[2], argv[3]) into pipe argv[1], then exits
# (the exit flushes).
PRODUCER = r"""
import sys
import pipebit
sender = pipebit.SafeSender(sys.argv[1])
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    sender.send([i])
sender.close_connection(timeout=60)
"""


_logs: dict[int, Path] = {}


def start_member(
    reaper: Reaper, name: str, group: str, stop: Path, *, start: str = "oldest", work: float = 0.0
) -> subprocess.Popen[str]:
    log = stop.parent / f"member-{len(_logs)}-{time.monotonic_ns()}.log"
    child = reaper.spawn(MEMBER, name, group, start, repr(work), str(stop), str(log))
    _logs[child.pid] = log
    assert child.stdout is not None
    line = child.stdout.readline()
    assert "ready" in line, child.stderr.read() if child.stderr else line
    return child


def batches_of(child: subprocess.Popen[str]) -> list[list[int]]:
    """Every batch the member wrote down (it has exited, or is made to: killed)."""
    try:
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode in (0, -signal.SIGKILL), child.stderr.read() if child.stderr else child.returncode
    text = _logs[child.pid].read_text()
    return [json.loads(line) for line in text.splitlines() if line.endswith("]")]


def group_of(name: str, group: str) -> pipebit.GroupStats:
    return next(g for g in pipebit.pipe_stats(name).groups if g.name == group)


def drained(name: str, group: str, total: int) -> bool:
    g = group_of(name, group)
    return g.lag == 0 and g.unacked == 0 and g.acked >= total


def produce(reaper: Reaper, name: str, first: int, end: int) -> None:
    child = reaper.spawn(PRODUCER, name, str(first), str(end))
    assert child.wait(120) == 0, child.stderr.read() if child.stderr else ""


# ------------------------------------------------------------------ exactly once
@both_transports
def test_each_packet_goes_to_one_member_of_each_group(name: str, reaper: Reaper, tmp_path: Path) -> None:
    total = 20_000
    stop = tmp_path / "stop"
    plain = start_member(reaper, name, "-", stop)
    resize = [start_member(reaper, name, "resize", stop) for _ in range(3)]
    thumbs = [start_member(reaper, name, "thumbs", stop) for _ in range(2)]
    stats = pipebit.pipe_stats(name)
    assert {(g.name, g.members) for g in stats.groups} == {("resize", 3), ("thumbs", 2)}
    produce(reaper, name, 0, total)
    wait_until(lambda: drained(name, "resize", total) and drained(name, "thumbs", total), 120, "groups drained")
    stop.touch()
    for group in (resize, thumbs):
        seen: list[int] = []
        for member in group:
            mine = [i for batch in batches_of(member) for i in batch]
            assert mine == sorted(mine), "a member sees its packets in send order"
            seen += mine
        assert sorted(seen) == list(range(total)), "every packet exactly once per group"
    assert [i for batch in batches_of(plain) for i in batch] == list(range(total)), "a plain receiver gets all"
    for group in ("resize", "thumbs"):
        g = group_of(name, group)
        assert (g.members, g.lag, g.unacked, g.redelivered, g.delivered, g.acked) == (0, 0, 0, 0, total, total)


def test_members_share_one_process_and_acknowledge_with_ack(name: str) -> None:
    with pipebit.SafeSender(name) as sender:
        a = pipebit.SafeReceiver(name, group="g", start="oldest", batch=3)
        b = pipebit.SafeReceiver(name, group="g", batch=3)
        for i in range(10):
            sender.send([i])
        sender.flush()
        first = a.receive(timeout=5)
        assert first == [[0], [1], [2]]
        assert group_of(name, "g").unacked == 3
        a.ack()
        assert group_of(name, "g").unacked == 0
        assert b.receive(timeout=5) == [[3], [4], [5]]
        assert a.receive(timeout=5) == [[6], [7], [8]]
        assert b.receive(timeout=5) == [[9]]
        a.close_connection()
        b.close_connection()
        g = group_of(name, "g")
        assert (g.acked, g.unacked, g.lag) == (10, 0, 0)


# ------------------------------------------------------------------ redelivery
@both_transports
def test_sigkilled_members_lose_no_job_and_repeat_only_what_they_held(
    name: str, reaper: Reaper, tmp_path: Path
) -> None:
    total, kills = 6_000, 20
    stop = tmp_path / "stop"
    rng = random.Random(17)
    members = [start_member(reaper, name, "jobs", stop, work=0.0005) for _ in range(3)]
    producer = reaper.spawn(PRODUCER, name, "0", str(total))
    killed: list[subprocess.Popen[str]] = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.05, 0.3))
        victim = members.pop(rng.randrange(len(members)))
        victim.send_signal(signal.SIGKILL)
        killed.append(victim)
        members.append(start_member(reaper, name, "jobs", stop, work=0.0005))
    assert producer.wait(120) == 0
    wait_until(lambda: drained(name, "jobs", total), 120, "the group drained")
    stop.touch()
    seen: list[int] = []
    may_repeat: set[int] = set()
    for member in killed:
        batches = batches_of(member)
        seen += [i for batch in batches for i in batch]
        if batches:
            may_repeat |= set(batches[-1])  # the batch it held when it died: not acknowledged
    for member in members:
        seen += [i for batch in batches_of(member) for i in batch]
    assert set(seen) == set(range(total)), f"lost: {sorted(set(range(total)) - set(seen))[:20]}"
    repeated = {i for i in seen if seen.count(i) > 1} if len(seen) != total else set()
    assert repeated <= may_repeat, f"repeated without a death: {sorted(repeated - may_repeat)[:20]}"
    g = group_of(name, "jobs")
    print(f"{kills} kills: {g.redelivered} packets redelivered, {len(repeated)} processed twice")
    assert g.redelivered >= len(repeated)
    assert (g.lag, g.unacked) == (0, 0)


@both_transports
def test_a_dead_members_batch_goes_to_the_next_member_to_join(name: str, reaper: Reaper, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with pipebit.SafeSender(name) as sender:
        for i in range(5):
            sender.send([i])
    holder = start_member(reaper, name, "g", stop, work=1000.0)  # takes a batch and sits on it
    wait_until(lambda: group_of(name, "g").unacked > 0, 30, "the member took a batch")
    holder.send_signal(signal.SIGKILL)
    [held] = batches_of(holder)
    assert group_of(name, "g").unacked == len(held), "still owed: no member has looked yet"
    heir = pipebit.SafeReceiver(name, group="g")
    try:
        first: list[list[int]] = []
        while not first:  # over Redis, until the dead member's check-in deadline (5 s) has passed
            first = heir.receive(timeout=15)
        assert [packet[0] for packet in first] == held, "what the dead member held comes first"
        got = [packet[0] for packet in first]
        while len(got) < 5:
            got += [packet[0] for packet in heir.receive(timeout=10)]
        assert sorted(got) == list(range(5))
        heir.ack()
        g = group_of(name, "g")
        assert (g.redelivered, g.unacked, g.acked, g.delivered) == (len(held), 0, 5, 5 + len(held))
    finally:
        heir.close_connection()


# ------------------------------------------------------------------ durability
@both_transports
def test_a_group_keeps_its_place_while_no_member_is_attached(name: str, reaper: Reaper, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    first = start_member(reaper, name, "g", stop)
    produce(reaper, name, 0, 10)
    wait_until(lambda: drained(name, "g", 10), 30, "the first member took all")
    stop.touch()
    assert [i for batch in batches_of(first) for i in batch] == list(range(10))
    stop.unlink()
    produce(reaper, name, 10, 60)  # no member attached meanwhile
    g = group_of(name, "g")
    assert (g.members, g.lag, g.unacked) == (0, 50, 0)
    assert not pipebit.pipe_stats(name).stale, "a pipe owing packets to a group is not stale"
    second = start_member(reaper, name, "g", stop, start="new")  # start applies only when creating
    wait_until(lambda: drained(name, "g", 60), 30, "the second member took the rest")
    stop.touch()
    assert [i for batch in batches_of(second) for i in batch] == list(range(10, 60))


@both_transports
def test_a_group_without_members_holds_senders_back_until_removed(name: str) -> None:
    member = pipebit.SafeReceiver(name, group="g", capacity=L.MIN_RING)
    member.close_connection()
    with pipebit.SafeSender(name) as sender:
        payload = "x" * 200

        def fill() -> None:
            for i in range(100):  # far more than a 4 KiB ring and the send queue hold
                sender.send([i, payload], timeout=0.5)

        with pytest.raises(pipebit.PipeTimeoutError):
            fill()
        assert pipebit.pipe_stats(name).writers_waiting == 1
        assert group_of(name, "g").lag > 0
        pipebit.remove_group(name, "g")
        sender.flush(timeout=10)  # nothing holds it back now
    assert pipebit.pipe_stats(name).groups == ()


# ------------------------------------------------------------------ fair sharing
def timed_burst(reaper: Reaper, name: str, tmp_path: Path, members: int, total: int) -> float:
    stop = tmp_path / f"stop{members}"
    children = [start_member(reaper, name, "slow", stop, work=0.001) for _ in range(members)]
    began = time.monotonic()
    produce(reaper, name, 0, total)
    wait_until(lambda: drained(name, "slow", total), 120, "the burst was worked off")
    elapsed = time.monotonic() - began
    stop.touch()
    counts = [sum(len(batch) for batch in batches_of(child)) for child in children]
    assert sum(counts) == total
    return elapsed


@both_transports
def test_slow_work_spreads_over_the_members(make_name: Callable[[], str], reaper: Reaper, tmp_path: Path) -> None:
    total = 1500
    alone = timed_burst(reaper, make_name(), tmp_path, 1, total)
    three = timed_burst(reaper, make_name(), tmp_path, 3, total)
    print(f"1 member: {alone:.2f}s, 3 members: {three:.2f}s, speed-up {alone / three:.2f}x")
    assert alone / three >= 1.8  # the 2.4x target is the benchmark's (benchmarks/groups_bench.py)


@both_transports
def test_a_lone_member_on_a_fast_stream_takes_large_batches(name: str) -> None:
    member = pipebit.SafeReceiver(name, group="g")
    try:
        with pipebit.SafeSender(name) as sender:
            for i in range(50_000):
                sender.send([i])
        sizes: list[int] = []
        while sum(sizes) < 50_000:
            batch = member.receive(timeout=10)
            assert batch
            sizes.append(len(batch))
        assert max(sizes) >= 1000, sizes[:20]
        assert len(sizes) < 200, f"{len(sizes)} calls for 50,000 packets"
    finally:
        member.close_connection()


def test_batch_caps_what_one_receive_claims(name: str) -> None:
    with pipebit.SafeSender(name) as sender:
        for i in range(100):
            sender.send([i])
    member = pipebit.SafeReceiver(name, group="g", start="oldest", batch=7)
    try:
        got: list[list[int]] = []
        while len(got) < 100:
            batch = member.receive(timeout=5)
            assert 0 < len(batch) <= 7
            got += batch
        assert got == [[i] for i in range(100)]
    finally:
        member.close_connection()


# ------------------------------------------------------------------ removal, stats, CLI
@both_transports
def test_remove_group_refuses_live_members_and_names_pipe_and_group(name: str) -> None:
    member = pipebit.SafeReceiver(name, group="resize")
    with pytest.raises(pipebit.PipeBusyError, match=rf"'resize'.*'{name}'"):
        pipebit.remove_group(name, "resize")
    member.close_connection()
    with pytest.raises(pipebit.PipeNotFoundError, match=rf"'{name}'.*'thumbs'"):
        pipebit.remove_group(name, "thumbs")
    pipebit.remove_group(name, "resize")
    assert pipebit.pipe_stats(name).groups == ()
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.remove_group(name + "-missing", "resize")


@both_transports
def test_a_member_of_a_removed_pipe_is_told_so(name: str) -> None:
    member = pipebit.SafeReceiver(name, group="g")
    try:
        pipebit.remove(name, force=True)
        with pytest.raises(pipebit.PipeClosedError, match=name):
            member.receive(timeout=1)
    finally:
        member.close_connection()


@both_transports
def test_stats_show_groups(name: str, transport: str) -> None:
    with pipebit.SafeSender(name) as sender:
        for i in range(10):
            sender.send([i])
    member = pipebit.SafeReceiver(name, group="resize", start="oldest", batch=4)
    try:
        taken = len(member.receive(timeout=5))
        assert 0 < taken <= (4 if transport == "shm" else 10)  # over Redis, a stream entry is the unit
        stats = member.stats()
        assert stats.role == "receiver"
        [group] = stats.pipe.groups
        assert (group.name, group.members, group.lag, group.unacked) == ("resize", 1, 10 - taken, taken)
        assert (group.delivered, group.redelivered, group.acked) == (taken, 0, 0)
        [me] = [p for p in stats.pipe.participants if p.role == "member"]
        assert (me.group, me.alive) == ("resize", True)
        assert "group='resize'" in repr(member)
        member.ack()
        assert group_of(name, "resize").acked == taken
    finally:
        member.close_connection()
    assert group_of(name, "resize").members == 0


def test_ls_and_stat_show_groups(name: str) -> None:
    with pipebit.SafeSender(name) as sender:
        for i in range(10):
            sender.send([i])
    member = pipebit.SafeReceiver(name, group="resize", start="oldest", batch=4)
    try:
        assert len(member.receive(timeout=5)) == 4
        [me] = [p for p in member.stats().pipe.participants if p.role == "member"]
        assert me.packets == 4
        ls = subprocess.run(
            [sys.executable, "-m", "pipebit", "ls"], capture_output=True, text=True, timeout=30, check=True
        )
        assert "resize(1)" in next(line for line in ls.stdout.splitlines() if line.startswith(name))
        stat = subprocess.run(
            [sys.executable, "-m", "pipebit", "stat", name], capture_output=True, text=True, timeout=30, check=True
        )
        assert "member:resize" in stat.stdout
        row = next(line for line in stat.stdout.splitlines() if line.startswith("resize"))
        assert row.split() == ["resize", "1", "6", "4", "4", "0", "0"]
        as_json = subprocess.run(
            [sys.executable, "-m", "pipebit", "stat", "--json", name],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(as_json.stdout)["groups"][0]["unacked"] == 4
    finally:
        member.close_connection()
    ls = subprocess.run([sys.executable, "-m", "pipebit", "ls"], capture_output=True, text=True, timeout=30, check=True)
    row = next(line for line in ls.stdout.splitlines() if line.startswith(name))
    assert row.split()[-1] == "group"  # no one attached, but the group is owed the rest


@both_transports
def test_rm_group_on_the_command_line(name: str) -> None:
    pipebit.SafeReceiver(name, group="resize").close_connection()
    command = [sys.executable, "-m", "pipebit", "rm", name, "--group"]
    missing = subprocess.run([*command, "thumbs"], capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 1
    assert "thumbs" in missing.stderr
    assert name in missing.stderr
    done = subprocess.run([*command, "resize"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert pipebit.pipe_stats(name).groups == ()


# ------------------------------------------------------------------ limits and bad input
@both_transports
@pytest.mark.parametrize("group", ["", ".hidden", "a b", "x" * 65, "é"])
def test_bad_group_names_are_refused_naming_the_pipe(name: str, group: str) -> None:
    with pytest.raises(pipebit.InvalidNameError, match=rf"pipe '{name}'.*group"):
        pipebit.SafeReceiver(name, group=group)
    with pytest.raises(pipebit.InvalidNameError, match=rf"pipe '{name}'.*group"):
        pipebit.remove_group(name, group)


@both_transports
def test_bad_group_arguments(name: str) -> None:
    with pytest.raises(pipebit.ArgumentTypeError, match=name):
        pipebit.SafeReceiver(name, group=5)  # type: ignore[arg-type]
    with pytest.raises(pipebit.InvalidArgumentError, match="group"):
        pipebit.SafeReceiver(name, batch=10)
    with pytest.raises(pipebit.InvalidArgumentError, match="batch"):
        pipebit.SafeReceiver(name, group="g", batch=0)
    with pytest.raises(pipebit.ArgumentTypeError, match="batch"):
        pipebit.SafeReceiver(name, group="g", batch=2.5)  # type: ignore[arg-type]


def test_groups_are_limited_and_count_against_participants(name: str) -> None:
    members = [pipebit.SafeReceiver(name, group=f"g{i}") for i in range(L.GROUPS)]
    try:
        with pytest.raises(pipebit.PipeBusyError, match=rf"'{name}'.*{L.GROUPS} receiver groups.*'extra'"):
            pipebit.SafeReceiver(name, group="extra")
        taken = len(pipebit.pipe_stats(name).participants) + L.GROUPS  # members, and a slot per group
        assert taken == 2 * L.GROUPS
        others = [pipebit.SafeReceiver(name) for _ in range(L.SLOT_COUNT - taken)]
        try:
            with pytest.raises(pipebit.PipeBusyError):
                pipebit.SafeReceiver(name)
        finally:
            for other in others:
                other.close_connection()
    finally:
        for member in members:
            member.close_connection()


def test_a_pipe_of_layout_version_1_refuses_groups_and_still_works(name: str) -> None:
    with pipebit.SafeSender(name) as sender:
        sender.send([1])
    with open(Path("/dev/shm") / _shm.segment_name(name).lstrip("/"), "r+b") as segment:
        segment.seek(8)
        segment.write(struct.pack("=I", 1))  # as an older PipeBit made it
    with pytest.raises(pipebit.PipeFormatError, match=rf"'{name}'.*'g'.*version 1"):
        pipebit.SafeReceiver(name, group="g")
    receiver = pipebit.SafeReceiver(name, start="oldest")
    assert receiver.receive(timeout=5) == [[1]]
    receiver.close_connection()
    assert pipebit.pipe_stats(name).groups == ()


def test_a_group_half_made_by_a_killed_creator_is_made_again(name: str) -> None:
    pipebit.SafeReceiver(name, group="g").close_connection()
    pipe = _pipe.attach_existing(name)
    try:
        [slot] = [i for i in range(L.SLOT_COUNT) if pipe.header[L.slot_base(i) + L.S_ROLE] == L.ROLE_GROUP]
        with pipe.lock:  # as if its creator died after writing the entry, before the slot's role
            pipe.header[L.slot_base(slot) + L.S_ROLE] = L.ROLE_FREE
    finally:
        pipe.close()
    assert pipebit.pipe_stats(name).groups == (), "an entry no slot holds is no group"
    with pipebit.SafeSender(name) as sender:
        sender.send([1])  # nothing holds the sender back
    member = pipebit.SafeReceiver(name, group="g", start="oldest")
    try:
        assert member.receive(timeout=5) == [[1]]
        assert [g.name for g in pipebit.pipe_stats(name).groups] == ["g"]
    finally:
        member.close_connection()
