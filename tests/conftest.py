"""Shared fixtures: unique pipe names, a /dev/shm leak guard, and a process reaper.

Every test gets ``make_name()`` for pipe names no other test (or earlier run)
uses; at teardown each of those pipes is removed with ``force=True``.  The
autouse leak guard then fails the test if ``/dev/shm`` or PipeBit's per-user
lock directory holds anything that was not there before it ran.

A test marked ``@both_transports`` (from ``tests/redis_server.py``) runs twice:
its names are plain (shared memory), then ``redis://`` URLs on the session's
Redis server, whose guard fails the test if it leaves keys behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Sequence

import pytest

import pipebit
from pipebit import _shm

from .redis_server import RedisServer, redis_keys_guard, redis_server  # noqa: F401 - fixtures: importing registers them

_counter = itertools.count()
SHM = Path("/dev/shm")

# A developer's PIPEBIT_URL would move every plain-named pipe of the suite (and of
# its child processes) to that Redis server; tests that want it set it themselves.
os.environ.pop("PIPEBIT_URL", None)


def _shm_entries() -> set[str]:
    lock_dir = _shm.user_dir()  # first: creating it must not count as a leak
    entries = {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()
    entries |= {f"{lock_dir.name}/{p.name}" for p in lock_dir.iterdir()}
    # Removing the user's last pipe removes the directory too; it is made again when needed.
    entries.discard(lock_dir.name)
    return entries


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """``"shm"``, or ``"redis"`` for tests marked ``@both_transports`` in their second run."""
    return str(getattr(request, "param", "shm"))


@pytest.fixture
def make_name(transport: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """A factory of unique pipe names (URLs on the test Redis server, for that transport);
    the pipes are removed at teardown."""
    names: list[str] = []
    server: RedisServer | None = request.getfixturevalue("redis_keys_guard") if transport == "redis" else None

    def make() -> str:
        name = f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"
        names.append(name if server is None else server.pipe_url(name))
        return names[-1]

    yield make
    for name in names:
        try:
            pipebit.remove(name, force=True)
        except pipebit.PipeNotFoundError:
            pass


@pytest.fixture
def name(make_name: Callable[[], str]) -> str:
    """One unique pipe name, removed at teardown."""
    return make_name()


@pytest.fixture(autouse=True)
def shm_leak_guard() -> Iterator[None]:
    """Fail the test if it leaves anything new in /dev/shm or the lock directory."""
    before = _shm_entries()
    yield
    leaked = sorted(_shm_entries() - before)
    if leaked:
        pytest.fail(f"test leaked shared-memory objects or lock files: {leaked}")


class Reaper:
    """Starts Python child processes and guarantees they are dead at teardown."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []

    def spawn(self, code: str, *args: str, prefix: Sequence[str] = (), **popen: object) -> subprocess.Popen[str]:
        """Run ``code`` in a fresh interpreter (``sys.argv[1:] == args``), pipes for stdout/stderr;
        ``prefix`` is a command that runs the interpreter (``["unshare", "-n"]``)."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        child = subprocess.Popen([*prefix, sys.executable, "-c", code, *args], text=True, **popen)  # type: ignore[call-overload]
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    os.kill(child.pid, signal.SIGCONT)
                    child.kill()
                except ProcessLookupError:
                    pass
            child.wait(timeout=10)
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Spawn child interpreters with ``reaper.spawn(code, *args)``; all are killed at teardown."""
    r = Reaper()
    yield r
    r.kill_all()


@pytest.fixture
def display() -> Iterator[str]:
    """A virtual X display (Xvfb) for the Tkinter scripts; skips without Xvfb and xdotool."""
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        pytest.skip("Xvfb and xdotool are needed (Debian packages xvfb, xdotool; .ci/run installs them)")
    number = 90 + os.getpid() % 500
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert server.poll() is None, "Xvfb exited"
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)
