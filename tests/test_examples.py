"""The README's examples run as a newcomer runs them (examples/ use fixed pipe names)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pipebit

from .conftest import Reaper
from .redis_server import RedisServer, both_transports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A sender that is still running: it sent what receiver.py --count 50 waits for, and stays attached.
STILL_SENDING = """
import time, pipebit
sender = pipebit.SafeSender("data_pipe", 0)
for i in range(50):
    sender.send([i, i + 1, i + 2, i + 3, i + 4])
sender.flush(timeout=30)
print("ready", flush=True)
time.sleep(600)
"""


def run(
    script: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@pytest.fixture
def free_pipes() -> Iterator[None]:
    """The examples' pipe names are free before, and removed after, each test."""
    names = ("data_pipe", "fan_out_demo", "camera_demo", "jobs_demo", "results_demo")
    for name in names:
        try:
            pipebit.remove(name)
        except pipebit.PipeNotFoundError:
            pass
        except pipebit.PipeBusyError:
            pytest.skip(f"a live process on this machine is using the pipe {name!r}")
    yield
    for name in names:
        try:
            pipebit.remove(name, force=True)
        except pipebit.PipeNotFoundError:
            pass


def test_quick_start_pair_sender_first(free_pipes: None) -> None:
    sent = run("sender.py")
    assert sent.returncode == 0, sent.stderr
    assert "created" in sent.stderr  # the example sender asks for debug output
    received = run("receiver.py", "--count", "50")
    assert received.returncode == 0, received.stderr
    lines = received.stdout.splitlines()
    assert lines[:50] == [str([i, i + 1, i + 2, i + 3, i + 4]) for i in range(50)]
    assert lines[-1] == "received 50 packets"
    with pytest.raises(pipebit.PipeNotFoundError):  # the example receiver tidies up
        pipebit.pipe_stats("data_pipe")


def test_quick_start_pair_receiver_first(free_pipes: None) -> None:
    receiver = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "receiver.py"), "--count", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sent = run("sender.py")
        assert sent.returncode == 0, sent.stderr
        out, err = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 0, err
    assert out.splitlines()[:50] == [str([i, i + 1, i + 2, i + 3, i + 4]) for i in range(50)]


@both_transports
def test_receiver_says_it_left_the_pipe_to_a_process_still_attached(
    free_pipes: None, reaper: Reaper, transport: str, request: pytest.FixtureRequest
) -> None:
    env, pipe = dict(os.environ), "data_pipe"
    if transport == "redis":  # the examples' plain name, on the test server (as README's Redis section runs them)
        server: RedisServer = request.getfixturevalue("redis_keys_guard")
        env["PIPEBIT_URL"], pipe = server.url, server.pipe_url("data_pipe")
    sender = reaper.spawn(STILL_SENDING, env=env)
    try:
        assert sender.stdout is not None
        assert sender.stdout.readline() == "ready\n", sender.stderr.read() if sender.stderr else ""
        received = run("receiver.py", "--count", "50", env=env)
        assert received.returncode == 0, received.stderr
        assert received.stdout.splitlines()[-1] == "received 50 packets"
        assert "1 live process" in received.stderr
        assert "pipebit rm data_pipe" in received.stderr
        assert pipebit.pipe_stats(pipe).senders == 1  # left in place, as it said
    finally:
        sender.kill()
        sender.wait(10)
        try:
            pipebit.remove(pipe, force=True)
        except pipebit.PipeNotFoundError:
            pass


def test_fan_out_example(free_pipes: None) -> None:
    result = run("fan_out.py")
    assert result.returncode == 0, result.stderr
    # Three processes print at once: their lines may interleave, so find the reports, not lines.
    reports = re.findall(r"receiver (\d): all 10000 packets, in order", result.stdout)
    assert sorted(reports) == ["0", "1", "2"]


@pytest.mark.parametrize("kill", [False, True], ids=["no-fault", "a-worker-killed"])
def test_workers_example(free_pipes: None, kill: bool) -> None:
    result = run("workers.py", *(["--kill"] if kill else []))
    assert result.returncode == 0, result.stderr
    assert "all 2000 jobs done" in result.stdout
    shares = [int(n) for n in re.findall(r"\d+", result.stdout.splitlines()[0].split(":")[1])]
    assert len(shares) >= 3, result.stdout  # every worker got some of the jobs
    redelivered, twice = map(int, re.findall(r"\d+", result.stdout.splitlines()[1]))
    assert twice <= redelivered
    if not kill:
        assert (redelivered, twice) == (0, 0)


def test_camera_example(free_pipes: None) -> None:
    pytest.importorskip("numpy")
    result = run("camera.py", "--frames", "30")
    assert result.returncode == 0, result.stderr
    assert "viewer: 30 frames, all intact" in result.stdout
    assert "camera: 30 frames sent" in result.stdout
