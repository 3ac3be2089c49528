"""The ``pipebit`` command, run as ``python -m pipebit`` against real pipes and real processes."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pipebit
from pipebit import _shm

from .conftest import Reaper
from .redis_server import both_transports

COMMAND = [sys.executable, "-m", "pipebit"]

# Child programs take the pipe name as argv[1] and report on stdout.
SEND_AND_EXIT = """
import sys, pipebit
with pipebit.SafeSender(sys.argv[1], 0) as s:
    for i in range(int(sys.argv[2])):
        s.send([i])
"""

HOLD_RECEIVER = """
import sys, time, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0, max_cached=1)  # reads one record ahead, then nothing
print("ready", flush=True)
time.sleep(600)
"""


STEADY_SENDER = """
import sys, time, pipebit
with pipebit.SafeSender(sys.argv[1], 0) as s:
    print("ready", flush=True)
    for i in range(60000):
        s.send([i])
        time.sleep(0.005)
"""


# --------------------------------------------------------------------------- helpers
def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``pipebit ARGS`` to completion."""
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False)


def nested(depth: int) -> list[Any]:
    """``[[[...]]]``, ``depth`` lists deep (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def receivers(name: str) -> int:
    return pipebit.pipe_stats(name).receivers


class Cli:
    """A long-running ``pipebit`` command whose stdout lines are read in the background."""

    def __init__(
        self, reaper: Reaper, *args: str, script: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        argv = [sys.executable, "-c", script, *args] if script else [*COMMAND, *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        reaper.children.append(self.proc)  # killed at teardown whatever happens
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.put(line.rstrip("\n"))
        except (ValueError, OSError):  # the reaper closed the stream at teardown
            pass
        self.lines.put(None)

    def take(self, count: int, timeout: float = 30) -> list[str]:
        """The next ``count`` stdout lines; fail if they do not come within ``timeout`` s."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"only {got} of {count} lines within {timeout}s")
            if line is None:
                self.proc.wait(10)
                pytest.fail(f"exited {self.proc.returncode} after {got}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            got.append(line)
        return got

    def interrupt(self) -> tuple[int, str]:
        """Send SIGINT; return the exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(30)
        self._pump.join(10)
        return status, self.proc.stderr.read()  # type: ignore[union-attr]


def ls_rows() -> dict[str, dict[str, str]]:
    result = run("ls")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    columns = header.split()
    assert columns == [
        *("NAME", "MODEL", "CAPACITY", "FILL", "WRITTEN", "SEND", "RECV", "LAG", "GROUPS", "LAST-WRITE", "STATE")
    ]
    return {line.split()[0]: dict(zip(columns, line.split())) for line in lines}


def stale_pipe(reaper: Reaper, name: str, count: int = 3) -> None:
    """A pipe whose only sender sent ``count`` packets and exited."""
    child = reaper.spawn(SEND_AND_EXIT, name, str(count))
    assert child.wait(30) == 0, child.stderr.read()  # type: ignore[union-attr]


def pipe_files(name: str) -> list[str]:
    """Every OS object of pipe ``name``: segment, semaphores, lock files."""
    token = _shm.segment_name(name)[len("/pipebit-") :]
    found = [entry.name for entry in Path("/dev/shm").iterdir() if token in entry.name]
    return found + [entry.name for entry in _shm.user_dir().iterdir() if entry.name.startswith(f"{name}.")]


# --------------------------------------------------------------------------- ls, stat
def test_ls_counts_and_marks_stale_pipes(make_name: Callable[[], str], reaper: Reaper) -> None:
    stale, live = make_name(), make_name()
    stale_pipe(reaper, stale, 3)
    stale_pipe(reaper, live, 5)
    holder = Cli(reaper, live, script=HOLD_RECEIVER)
    assert holder.take(1) == ["ready"]

    rows = ls_rows()
    assert rows[stale] | {"LAST-WRITE": "-"} == {
        "NAME": stale,
        "MODEL": "safe",
        "CAPACITY": "4.0M",
        "FILL": "0%",
        "WRITTEN": "3",
        "SEND": "0",
        "RECV": "0",
        "LAG": "-",
        "GROUPS": "-",
        "LAST-WRITE": "-",
        "STATE": "stale",
    }
    assert re.fullmatch(r"\d+s", rows[stale]["LAST-WRITE"])
    assert (rows[live]["WRITTEN"], rows[live]["SEND"], rows[live]["RECV"], rows[live]["STATE"]) == (
        "5",
        "0",
        "1",
        "live",
    )

    result = run("ls", "--json")
    assert result.returncode == 0, result.stderr
    pipes = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert pipes[stale]["stale"] is True
    assert (pipes[stale]["packets_written"], pipes[stale]["receivers"], pipes[stale]["model"]) == (3, 0, "safe")
    assert pipes[live]["stale"] is False
    assert pipes[live]["receivers"] == 1
    assert [p["pid"] for p in pipes[live]["participants"] if p["alive"]] == [holder.proc.pid]


def test_stat_shows_receiver_lag_and_a_killed_receiver_as_dead(name: str, reaper: Reaper) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        holder = Cli(reaper, name, script=HOLD_RECEIVER)
        assert holder.take(1) == ["ready"]
        for i in range(20):  # one record each: the receiver caches the first, then stops reading
            sender.send([i])
            sender.flush(timeout=30)
        wait_for(lambda: pipebit.pipe_stats(name).max_lag == 19, "the receiver's lag")

        result = run("stat", name)
        assert result.returncode == 0, result.stderr
        row = next(line.split() for line in result.stdout.splitlines() if f" {holder.proc.pid} " in line)
        assert row[1:5] == ["receiver", str(holder.proc.pid), "alive", "19"]
        assert "1 live sender(s), 1 live receiver(s)" in result.stdout
        as_json = json.loads(run("stat", name, "--json").stdout)
        receiver = next(p for p in as_json["participants"] if p["role"] == "receiver")
        assert (receiver["pid"], receiver["lag"], receiver["alive"], as_json["max_lag"]) == (
            holder.proc.pid,
            19,
            True,
            19,
        )

        holder.proc.kill()
        holder.proc.wait(10)
        result = run("stat", name)
        assert result.returncode == 0, result.stderr
        row = next(line.split() for line in result.stdout.splitlines() if f" {holder.proc.pid} " in line)
        assert row[1:4] == ["receiver", str(holder.proc.pid), "dead"]
        assert "0 live receiver(s)" in result.stdout


@both_transports
def test_stat_on_a_fast_pipe_shows_each_senders_own_packet_count(name: str, transport: str) -> None:
    # A shared-memory Fast sender brings its slot's count up to date only every 256 updates and
    # when it leaves; the counts come from the lanes instead, exact at any moment.
    with pipebit.FastSender(name, 0) as first, pipebit.FastSender(name, 0) as second:
        for i in range(100):
            first.send([i])
        for i in range(7):
            second.send([i])
        first.flush(timeout=30)
        second.flush(timeout=30)
        result = run("stat", "--json", name)
        assert result.returncode == 0, result.stderr
        senders = [p for p in json.loads(result.stdout)["participants"] if p["role"] == "sender"]
        assert sorted(p["packets"] for p in senders) == [7, 100]
        if transport == "shm":  # over Redis a value replaced before the thread published it is not written
            assert json.loads(result.stdout)["packets_written"] == 107
        table = run("stat", name)
        rows = [line.split() for line in table.stdout.splitlines() if " sender " in f" {line} "]
        assert sorted(int(row[5]) for row in rows) == [7, 100], table.stdout
        for i in range(300):  # past a multiple of 256: the slot's own count and the lane's agree
            second.send([i])
        second.flush(timeout=30)
        counts = sorted(p.packets for p in pipebit.pipe_stats(name).participants if p.role == "sender")
        assert counts == [100, 307]
    counts = [p.packets for p in pipebit.pipe_stats(name).participants if p.role == "sender"]
    assert counts == []  # both left


# --------------------------------------------------------------------------- tail
@both_transports
def test_tail_prints_new_packets_and_detaches_on_sigint(name: str, reaper: Reaper) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["retained"])
        sender.flush(timeout=30)
        tail = Cli(reaper, "tail", name)
        wait_for(lambda: receivers(name) == 1, "tail to attach")
        sender.send([1, "two", b"\x03", None])
        sender.send([{"k": [True, 2.5]}])
        assert tail.take(2) == ["[1, 'two', b'\\x03', None]", "[{'k': [True, 2.5]}]"]
        status, stderr = tail.interrupt()
    assert (status, stderr) == (0, "")
    assert tail.lines.get(timeout=10) is None  # nothing else was printed: not the retained packet
    assert receivers(name) == 0
    assert not any(p.role == "receiver" for p in pipebit.pipe_stats(name).participants)


@both_transports
def test_tail_n_prints_the_last_k_retained_then_new_ones(name: str, reaper: Reaper) -> None:
    stale_pipe(reaper, name, 10)
    tail = Cli(reaper, "tail", "-n", "3", name)
    assert tail.take(3) == ["[7]", "[8]", "[9]"]
    with pipebit.SafeSender(name, 0) as sender:
        sender.send([10])
        assert tail.take(1) == ["[10]"]
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_n_while_a_sender_sends_loses_and_repeats_nothing(name: str, reaper: Reaper) -> None:
    sender = Cli(reaper, name, script=STEADY_SENDER)
    assert sender.take(1) == ["ready"]
    wait_for(lambda: pipebit.pipe_stats(name).packets_written >= 20, "packets to be retained")
    tail = Cli(reaper, "tail", "-n", "5", name)
    seqs = [json.loads(line)[0] for line in tail.take(40)]
    assert seqs == list(range(seqs[0], seqs[0] + 40))
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_json_lines_with_bytes(name: str, reaper: Reaper) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send([1, 2.5, "s", b"\x00\xff", None, {"k": [True]}])
        sender.flush(timeout=30)
        tail = Cli(reaper, "tail", "--json", "-n", "1", name)
        first = json.loads(tail.take(1)[0])
        sender.send([b""])
        second = json.loads(tail.take(1)[0])
    assert first == [1, 2.5, "s", {"$bytes": base64.b64encode(b"\x00\xff").decode()}, None, {"k": [True]}]
    assert second == [{"$bytes": ""}]
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_shows_arrays_by_shape_and_dtype_and_as_json_whole(name: str, reaper: Reaper) -> None:
    np = pytest.importorskip("numpy")
    frame = np.arange(1080 * 1920 * 3, dtype=np.uint64).astype(np.uint8).reshape(1080, 1920, 3)
    small = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    packet = [frame, {"small": small, "n": np.float32(0.5)}, [np.zeros((0,), "<U2")]]
    with pipebit.SafeSender(name, 0, capacity=16 << 20) as sender:
        sender.send(packet)
        sender.flush(timeout=30)
        plain = Cli(reaper, "tail", "-n", "1", name)
        as_json = Cli(reaper, "tail", "--json", "-n", "1", name)
        assert plain.take(1) == [
            "[array(shape=(1080, 1920, 3), dtype=uint8), {'small': array(shape=(2, 3), dtype='>i4'), 'n': 0.5}, "
            "[array(shape=(0,), dtype='<U2')]]"
        ]
        got = json.loads(as_json.take(1)[0])
    assert got[0]["$array"]["dtype"] == "|u1"
    assert got[0]["$array"]["shape"] == [1080, 1920, 3]
    assert base64.b64decode(got[0]["$array"]["data"]) == frame.tobytes()
    assert got[1] == {
        "small": {
            "$array": {
                "dtype": ">i4",
                "shape": [2, 3],
                "data": base64.b64encode(np.ascontiguousarray(small).tobytes()).decode(),
            }
        },
        "n": 0.5,
    }
    assert got[2] == [{"$array": {"dtype": "<U2", "shape": [0], "data": ""}}]
    assert plain.interrupt() == (0, "")
    assert as_json.interrupt() == (0, "")


def test_tail_n_larger_than_any_pipe_prints_all_retained(name: str, reaper: Reaper) -> None:
    stale_pipe(reaper, name, 3)
    tail = Cli(reaper, "tail", "-n", "1" * 30, name)  # more than a C ssize_t holds
    assert tail.take(3) == ["[0]", "[1]", "[2]"]
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_json_shows_keys_that_are_not_text_as_their_repr(name: str, reaper: Reaper) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send([{(1, 2): "tuple", b"k": "bytes", 3: "int", None: "none", "s": "str"}])
        sender.flush(timeout=30)
        tail = Cli(reaper, "tail", "--json", "-n", "1", name)
        assert json.loads(tail.take(1)[0]) == [
            {"(1, 2)": "tuple", "b'k'": "bytes", "3": "int", "None": "none", "s": "str"}
        ]
    assert tail.interrupt() == (0, "")


@both_transports
@pytest.mark.parametrize(
    ("value", "as_json", "message"),
    [
        (float("nan"), True, "nan"),
        (float("-inf"), True, "-inf"),
        ({1: "int", "1": "str"}, True, "'1'"),  # both keys would print as "1": JSON readers keep one
        (10**5000, True, "PYTHONINTMAXSTRDIGITS=0"),
        (10**5000, False, "PYTHONINTMAXSTRDIGITS=0"),
    ],
    ids=["nan", "-inf", "key-clash", "huge-int-json", "huge-int-repr"],
)
def test_tail_stops_with_an_error_at_a_packet_it_cannot_print(
    name: str, value: Any, as_json: bool, message: str
) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        for packet in (["before"], [value], ["after"]):
            sender.send(packet)
        sender.flush(timeout=30)
        result = run("tail", *(["--json"] if as_json else []), "-n", "3", name)
    assert result.stdout == ('["before"]\n' if as_json else "['before']\n")  # what came before it, not after
    assert result.returncode == 1
    assert result.stderr.startswith("pipebit: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert receivers(name) == 0


def test_tail_escapes_text_the_terminal_cannot_show(name: str, reaper: Reaper) -> None:
    with pipebit.SafeSender(name, 0) as sender:
        sender.send(["caf\u00e9", "\u2603"])
        sender.flush(timeout=30)
        tail = Cli(reaper, "tail", "-n", "1", name, env={**os.environ, "PYTHONIOENCODING": "ascii"})
        assert tail.take(1) == ["['caf\\xe9', '\\u2603']"]
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_on_a_fast_pipe(name: str, reaper: Reaper) -> None:
    with pipebit.FastSender(name, 0) as sender:
        sender.send(["v", 1])
        with_current = Cli(reaper, "tail", "-n", "1", name)
        only_new = Cli(reaper, "tail", name)
        assert with_current.take(1) == ["['v', 1]"]
        wait_for(lambda: receivers(name) == 2, "both tails to attach")
        sender.send(["v", 2])
        assert with_current.take(1) == ["['v', 2]"]
        assert only_new.take(1) == ["['v', 2]"]  # not the value published before it started
        assert with_current.interrupt() == (0, "")
        assert only_new.interrupt() == (0, "")
    assert receivers(name) == 0


@both_transports
@pytest.mark.parametrize("model", ["safe", "fast"])
def test_tail_wait_waits_for_a_pipe_that_does_not_exist_yet(name: str, reaper: Reaper, model: str) -> None:
    refused = run("tail", name)
    assert refused.returncode == 1
    assert "pipebit ls" in refused.stderr
    tail = Cli(reaper, "tail", "--wait", name)
    time.sleep(1.0)  # long enough for it to start and look
    assert tail.proc.poll() is None, tail.proc.stderr.read()  # type: ignore[union-attr]
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.pipe_stats(name)  # waiting created nothing
    if model == "safe":
        with pipebit.SafeSender(name, 0) as sender:
            for i in range(5):  # sent before tail can have attached: none of them is missed
                sender.send([i])
            assert tail.take(5) == ["[0]", "[1]", "[2]", "[3]", "[4]"]
            sender.send([5])
            assert tail.take(1) == ["[5]"]
    else:
        with pipebit.FastSender(name, 0) as fast:
            fast.send(["first"])
            fast.flush(timeout=30)
            assert tail.take(1) == ["['first']"]  # the value there when it appeared
            wait_for(lambda: receivers(name) == 1, "tail to attach")
            fast.send(["second"])
            assert tail.take(1) == ["['second']"]
    assert tail.interrupt() == (0, "")


@both_transports
def test_tail_wait_ends_quietly_on_ctrl_c_while_waiting(name: str, reaper: Reaper) -> None:
    tail = Cli(reaper, "tail", "--wait", name)
    time.sleep(1.0)
    assert tail.interrupt() == (0, "")
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.pipe_stats(name)


# --------------------------------------------------------------------------- send
@both_transports
def test_send_delivers_packets_in_order(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        result = run("send", name, '[1, "a"]', '[2, {"$bytes": "AAE="}]', "[3.5, null, true, {}]", "[]")
        assert (result.returncode, result.stderr) == (0, "")
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < 4 and time.monotonic() < deadline:
            got += receiver.receive(timeout=1)
    assert got == [[1, "a"], [2, b"\x00\x01"], [3.5, None, True, {}], []]


@both_transports
def test_send_to_a_fast_pipe_publishes_the_last_value(name: str) -> None:
    with pipebit.FastReceiver(name, 0) as receiver:
        assert run("send", name, "[1]", '["last"]').returncode == 0
        assert receiver.receive(timeout=5) == [["last"]]


@both_transports
def test_send_waits_for_delivery_and_gives_up_after_timeout(name: str) -> None:
    # A receiver that caches one record and reads no more: a sender fills the 4 KiB ring and waits.
    with pipebit.SafeReceiver(name, 0, capacity=4096, max_cached=1) as receiver:
        sender = pipebit.SafeSender(name, 0, flush_timeout=0)
        for i in range(12):  # about 2 cached, 7 in the ring, 3 queued in the sender (its queue holds 4 KiB)
            sender.send([i, "x" * 500], timeout=30)
        wait_for(lambda: pipebit.pipe_stats(name).writers_waiting > 0, "the ring to fill up")
        started = time.monotonic()
        # Big enough that whatever room the ring has left cannot take it.
        result = run("send", name, "--timeout", "1", json.dumps(["late", "y" * 3000]))
        assert time.monotonic() - started >= 1
        assert result.returncode == 1
        assert result.stderr.startswith("pipebit: error: ")
        assert "dropped" in result.stderr
        with pytest.warns(pipebit.UndeliveredPacketsWarning):
            sender.close_connection()
        got: list[Any] = []
        while batch := receiver.receive(timeout=0.5):
            got += batch
    assert [p[0] for p in got] == list(range(len(got)))  # the ring's packets, and not ["late"]


def test_send_reads_arrays_the_way_tail_json_writes_them(name: str) -> None:
    np = pytest.importorskip("numpy")
    sent = np.arange(6, dtype=">f4").reshape(2, 3)
    spec = {"dtype": ">f4", "shape": [2, 3], "data": base64.b64encode(sent.tobytes()).decode()}
    with pipebit.SafeReceiver(name, 0) as receiver:
        result = run("send", name, json.dumps([{"$array": spec}, {"$array": {**spec, "shape": [6]}}]))
        assert (result.returncode, result.stderr) == (0, "")
        [[got, flat]] = receiver.receive(timeout=10)
    assert (got.dtype.str, got.shape, got.tobytes()) == (">f4", (2, 3), sent.tobytes())
    assert flat.shape == (6,)


@both_transports
@pytest.mark.parametrize(
    ("packet", "message"),
    [
        ("{bad", "not valid JSON"),
        ('{"a": 1}', "JSON array"),
        ("42", "JSON array"),
        ('[{"$bytes": "!"}]', "base64"),
        ("[" * 5000 + "]" * 5000, "nests"),  # the JSON decoder's limit or the codec's, by CPython version
        ("[" + "1" * 5000 + "]", "5000 digits"),
        ('["\\ud800"]', "not valid Unicode"),  # a JSON escape of half a surrogate pair
        ('["caf\udce9"]', "not UTF-8"),  # the byte 0xe9 alone: argv decodes it to a surrogate
        ('[{"$array": [1]}]', 'exactly "dtype", "shape" and "data"'),
        ('[{"$array": {"dtype": "|O8", "shape": [1], "data": "AAAAAAAAAAA="}}]', "not one PipeBit sends"),
        ('[{"$array": {"dtype": "<i4", "shape": [2], "data": "AAAA"}}]', "does not fit its 3 bytes"),
        ('[{"$array": {"dtype": "<i4", "shape": [-1], "data": ""}}]', "whole numbers >= 0"),
    ],
    ids=[
        "bad-json",
        "object",
        "number",
        "bad-base64",
        "deep",
        "huge-int",
        "surrogate-escape",
        "latin-1-byte",
        "array-not-an-object",
        "array-object-dtype",
        "array-short-data",
        "array-negative-shape",
    ],
)
def test_send_refuses_what_is_not_a_json_array(name: str, packet: str, message: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        result = run("send", name, "[1]", packet)  # the valid packet before it is not sent either
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr) < 1000  # a long argument is quoted shortened
        assert receiver.receive(timeout=0.3) == []
        assert pipebit.pipe_stats(name).packets_written == 0


@both_transports
@pytest.mark.parametrize(
    ("size", "capacity", "packets", "message"),
    [
        (0, 4096, ["[1]", json.dumps(["x" * 5000])], "packet 2 encodes to 5004 bytes"),
        (2, None, ["[1, 2]", "[1, 2, 3]"], "packet 2 has 3 elements"),
    ],
    ids=["too-big", "wrong-length"],
)
def test_send_checks_every_packet_fits_the_pipe_before_sending_any(
    name: str, size: int, capacity: int | None, packets: list[str], message: str
) -> None:
    pipebit.SafeSender(name, 0, size=size, capacity=capacity).close_connection()  # the pipe's rules
    with pipebit.SafeReceiver(name, 0) as receiver:
        result = run("send", name, *packets)
        assert result.returncode == 1
        assert result.stderr.startswith("pipebit: error: ")
        assert message in result.stderr
        assert "nothing was sent" in result.stderr
        assert receiver.receive(timeout=0.3) == []
        assert pipebit.pipe_stats(name).packets_written == 0


@both_transports
@pytest.mark.parametrize(
    "args", [("send", "{}", "[1]"), ("stat", "{}"), ("tail", "{}"), ("hz", "{}", "--count", "1"), ("rm", "{}")]
)
def test_commands_on_an_unknown_pipe_exit_1(name: str, args: tuple[str, ...]) -> None:
    result = run(*(arg.format(name) for arg in args))
    assert result.returncode == 1
    assert result.stderr.startswith("pipebit: error: ")
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert pipe_files(name) == []  # and no pipe was created on the way


# --------------------------------------------------------------------------- rm, clean
def test_rm_removes_the_segment_semaphores_and_lock_files(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:
        sender.send([1])
        assert receiver.receive(timeout=10) == [[1]]
    assert any(f.startswith(f"{name}.slot") for f in pipe_files(name))
    assert any(f.startswith("sem.") for f in pipe_files(name))
    result = run("rm", name)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"removed {name}\n", "")
    assert pipe_files(name) == []


@both_transports
def test_rm_refuses_while_a_receiver_is_attached_unless_forced(name: str, reaper: Reaper) -> None:
    holder = Cli(reaper, name, script=HOLD_RECEIVER)
    assert holder.take(1) == ["ready"]
    result = run("rm", name)
    assert result.returncode == 1
    assert "1 live process" in result.stderr
    assert "--force" in result.stderr
    assert pipebit.pipe_stats(name).receivers == 1
    result = run("rm", "--force", name)
    assert result.returncode == 0, result.stderr
    assert pipe_files(name) == []


def test_clean_removes_stale_pipes_and_keeps_live_ones(make_name: Callable[[], str], reaper: Reaper) -> None:
    stale, other_stale, live = make_name(), make_name(), make_name()
    for pipe in (stale, other_stale, live):
        stale_pipe(reaper, pipe)
    holder = Cli(reaper, live, script=HOLD_RECEIVER)
    assert holder.take(1) == ["ready"]
    # Patterns keep this test to its own pipes: other stale pipes of this user are not ours to remove.
    dry = run("clean", "--dry-run", stale, live)
    assert (dry.returncode, dry.stdout) == (0, f"would remove {stale}\n")
    assert pipe_files(stale) != []
    result = run("clean", stale, live)
    assert (result.returncode, result.stdout) == (0, f"removed {stale}\n")
    assert pipe_files(stale) == []
    assert pipebit.pipe_stats(live).receivers == 1
    assert pipebit.pipe_stats(other_stale).stale
    result = run("clean", f"t{os.getpid()}-*")
    assert (result.returncode, result.stdout) == (0, f"removed {other_stale}\n")
    assert pipe_files(other_stale) == []


# --------------------------------------------------------------------------- hz, help
@both_transports
def test_hz_prints_a_positive_rate_while_a_sender_sends(name: str, reaper: Reaper) -> None:
    sender = Cli(reaper, name, script=STEADY_SENDER)
    assert sender.take(1) == ["ready"]
    result = run("hz", name, "--count", "3", "--window", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    rates = [float(re.fullmatch(r"average rate: ([\d.]+) packets/s .*", line)[1]) for line in lines]  # type: ignore[index]
    assert all(rate > 0 for rate in rates), lines

    hz = Cli(reaper, "hz", name)
    assert hz.take(1)[0].startswith("average rate: ")
    assert hz.interrupt() == (0, "")


@pytest.mark.parametrize("command", ["ls", "stat", "tail", "send", "rm", "clean", "hz"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert f"example:\n  pipebit {command}" in result.stdout


def test_version_and_usage_errors() -> None:
    result = run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"pipebit {pipebit.__version__}")
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("tail", "-n", "-1", "x").returncode == 2
    too_long = run("tail", "-n", "9" * 5000, "x")  # more digits than Python converts
    assert too_long.returncode == 2
    assert "Traceback" not in too_long.stderr
    assert len(too_long.stderr) < 1000
