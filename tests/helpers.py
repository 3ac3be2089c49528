"""Helpers of the multi-process tests: child interpreters, waiting, and where a pipe lives.

A test talks to a child by lines: the child prints ``ready``, ``sent 500`` and
so on; :meth:`Child.expect` waits for a line by its first word, failing the test
(with the child's output) rather than hanging if it never comes.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

import pipebit
from pipebit import _codec, _shm
from pipebit import _layout as L

from .conftest import Reaper


def receive_n(receiver: pipebit.SafeReceiver, count: int, timeout: float = 60) -> list[Any]:
    """Receive until ``count`` packets arrived; fail (rather than hang) after ``timeout`` s."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} packets arrived within {timeout}s"
        got += receiver.receive(timeout=0.5)
    return got


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; return the seconds it took (fail after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - started


def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``T`` = stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def segment_path(name: str) -> Path:
    """The file of pipe ``name``'s segment in /dev/shm."""
    return Path("/dev/shm" + _shm.segment_name(name))


class Child:
    """A child interpreter whose stdout lines are read in the background (no blocking reads)."""

    def __init__(self, reaper: Reaper, code: str, *args: str, stdin: bool = False, **popen: Any) -> None:
        if stdin:
            popen["stdin"] = subprocess.PIPE
        self.proc = reaper.spawn(code, *args, **popen)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.ended_at: float | None = None  # time.monotonic() when wait() saw it end
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any, sink: list[str], lines: bool) -> None:
        try:
            for line in stream:
                sink.append(line)
                if lines:
                    self.lines.put(line.rstrip("\n"))
        except (ValueError, OSError):  # the reaper closed the stream at teardown
            pass
        if lines:
            self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def describe(self) -> str:
        return (
            f"child {self.proc.pid} returncode={self.proc.poll()}\n"
            f"--- stdout ---\n{''.join(self.out)[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )

    def next_line(self, timeout: float, *, required: bool = True) -> str | None:
        """The next stdout line.  If none comes within ``timeout``: fail the test, or
        return ``None`` when not ``required``.  A child that ends instead always fails it."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            if not required:
                return None
            pytest.fail(f"no line from the child within {timeout}s\n{self.describe()}")
        if line is None:
            self.wait(10)
            pytest.fail(f"child ended without printing another line\n{self.describe()}")
        return line

    def expect(self, prefix: str, timeout: float) -> list[str]:
        """Wait for a stdout line starting with ``prefix``; return its remaining words."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(deadline - time.monotonic(), 0.0))
            assert line is not None
            if line.startswith(prefix):
                return line.split()[1:]

    def expect_json(self, prefix: str, timeout: float) -> Any:
        """Wait for a line ``prefix <json>`` and return the decoded JSON."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(deadline - time.monotonic(), 0.0))
            assert line is not None
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1 :])

    def tell(self, text: str) -> None:
        """Write a line to the child's stdin (spawned with ``stdin=True``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        """Wait for the child to end (failing the test after ``timeout``), then for its output."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child did not end within {timeout}s\n{self.describe()}")
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        for pump in self._pumps:
            pump.join(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; after SIGKILL, also wait for the child to be gone."""
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.wait(10)


# ------------------------------------------------------------ the segment's bytes
def ring_records(name: str) -> list[tuple[int, int, int, int]]:
    """(position, payload_len, count, first_seq) of every committed record, tail to head."""
    raw = segment_path(name).read_bytes()
    capacity, tail, head = (struct.unpack_from("=Q", raw, o)[0] for o in (32, L.TAIL * 8, L.HEAD * 8))
    records = []
    position = tail
    while position < head:
        offset = L.DATA_OFFSET + position % capacity
        room = capacity - position % capacity
        length = struct.unpack_from("=I", raw, offset)[0] if room >= L.RECORD_HEADER else L.WRAP_MARK
        if length == L.WRAP_MARK:
            position += room
            continue
        _, count, first_seq = L.RECORD.unpack_from(raw, offset)
        records.append((position, length, count, first_seq))
        position += L.align(L.RECORD_HEADER + length)
    return records


def open_frame(packet: list[Any]) -> tuple[bytes, list[Any], int]:
    """Frame ``packet`` as a Safe sender does, check the framed record's header against
    docs/format.md, and return its payload, its packets' array decoded raw (extensions as
    ``msgpack.ExtType``) and where the zero padding before the out-of-band items starts."""
    parts, size = _codec.frame_packet(packet)
    payload = b"".join(parts)
    assert len(payload) == size
    assert size % 64 == 0
    assert payload[0] == 0xC9
    assert payload[5] == 5
    inner_end = 6 + int.from_bytes(payload[1:5], "big")
    return payload, msgpack.unpackb(payload[6:inner_end]), inner_end


def poke(name: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of the pipe's segment, as any process of the user can."""
    with segment_path(name).open("r+b") as f:
        f.seek(offset)
        f.write(data)


def poke_head(name: str, change: int) -> None:
    raw = segment_path(name).read_bytes()
    head = struct.unpack_from("=Q", raw, L.HEAD * 8)[0]
    poke(name, L.HEAD * 8, struct.pack("=Q", head + change))


@functools.cache
def private_shm_prefix(size: str) -> tuple[str, ...] | None:
    """A command prefix that runs its command with a private tmpfs of ``size`` (``"2m"``) on
    /dev/shm, or None.

    As root, ``unshare -m``; otherwise ``unshare -r -m`` (a user namespace) where
    the system allows it.  The mount is private to the child: nothing leaks.
    """
    if shutil.which("unshare") is None:
        return None
    mount = f"mount -t tmpfs -o size={size} tmpfs /dev/shm"
    for prefix in (("unshare", "-m"), ("unshare", "-r", "-m")):
        if prefix == ("unshare", "-m") and os.geteuid() != 0:
            continue
        probe = subprocess.run([*prefix, "sh", "-c", mount], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return (*prefix, "sh", "-c", mount + ' && exec "$0" "$@"')
    return None


def click_window(display: str, search: list[str], at: tuple[int, int], times: int) -> None:
    """Find the window ``xdotool search SEARCH`` names on ``display`` (waiting for it to show) and
    click it ``times`` times at ``at`` (relative to the window), a little apart."""
    env = {**os.environ, "DISPLAY": display}
    found = subprocess.run(
        ["xdotool", "search", "--sync", "--onlyvisible", *search],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    window = found.stdout.split()[0]
    for _ in range(times):
        move = ["xdotool", "mousemove", "--window", window, str(at[0]), str(at[1]), "click", "1"]
        subprocess.run(move, env=env, timeout=10, check=True)
        time.sleep(0.2)
