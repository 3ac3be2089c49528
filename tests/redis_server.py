"""A real ``redis-server`` for the tests: started on loopback in a temporary directory, killed at the end.

The session's server runs with ``appendonly yes`` so that :meth:`RedisServer.restart`
keeps the data, as a production server with persistence would.  Tests that need
their own server (a password, a server that goes away) start one with
:func:`start_server`.  Without ``redis-server`` or redis-py the Redis tests skip,
saying what to install.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

both_transports = pytest.mark.parametrize("transport", ["shm", "redis"], indirect=True)
"""Run a test over shared memory and over Redis: its ``name``/``make_name`` pipes live on either."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def skip_without_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    try:
        import redis  # noqa: F401 - only whether it imports matters here
    except ImportError:
        pytest.skip('redis-py is not installed: pip install -e ".[dev]" (or "pipebit[redis]")')


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1."""

    def __init__(self, directory: Path, *options: str, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.options = ["--appendonly", "yes" if appendonly else "no", *options]
        self.process: subprocess.Popen[bytes] | None = None
        self.password: str | None = None
        if "--requirepass" in options:
            self.password = options[options.index("--requirepass") + 1]

    @property
    def url(self) -> str:
        """The server URL, credentials included: ``redis://[:pw@]127.0.0.1:PORT/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def pipe_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def start(self, timeout: float = 20) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start: {(self.directory / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (Redis then writes its append-only file and exits), SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port, ``down_for`` seconds later."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def pipebit_keys(self) -> list[str]:
        return sorted(key.decode() for key in self.client().scan_iter(match="pipebit:*"))


def start_server(directory: Path, *options: str, appendonly: bool = False) -> RedisServer:
    skip_without_redis()
    server = RedisServer(directory, *options, appendonly=appendonly)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis server (append-only file on), or a skip saying what is missing."""
    server = start_server(tmp_path_factory.mktemp("redis"), appendonly=True)
    yield server
    server.stop()


@pytest.fixture
def redis_keys_guard(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, checked to hold no PipeBit key after the test (they are then removed)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test that restarted it and failed half-way
    yield redis_server
    left = redis_server.pipebit_keys()
    if left:
        redis_server.client().delete(*left)
        pytest.fail(f"test left keys on the Redis server: {left}")
