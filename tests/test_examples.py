"""The README's examples run as a newcomer runs them (examples/ use fixed pipe names)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipebit

from .conftest import Reaper
from .helpers import click_window
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
    names = (
        *("data_pipe", "fan_out_demo", "camera_demo", "resume_demo", "end_of_stream_demo", "threads_demo", "mp_demo"),
        *("asyncio_readings", "asyncio_averages", "jobs_demo", "results_demo"),
        *("rr_requests", "rr_replies-a", "rr_replies-b"),
        *("many_temperature", "many_pressure", "many_humidity", "many_status"),
    )
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


def test_asyncio_service_example(free_pipes: None) -> None:
    result = run("asyncio_service.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "service: 1000 readings, in order, average 3.00"
    # The display task saw published averages (a Fast pipe may skip some under load).
    assert any(re.fullmatch(r"after \d+00 readings: average \d\.\d\d", line) for line in lines[:-1])


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


# ------------------------------------------------------------------ the patterns of docs/patterns.md
def test_resume_example_shows_each_start_mode(free_pipes: None) -> None:
    result = run("resume.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "receiver (start='unread') got [0, 1, 2, 3, 4]",
        "receiver (start='unread') got [5, 6, 7, 8, 9]",  # resumed: nothing lost, nothing twice
        "receiver (start='oldest') got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "receiver (start='new') got [10]",
        "receiver (start='oldest') got []",  # removed: a fresh pipe
    ]


def test_end_of_stream_example(free_pipes: None) -> None:
    result = run("end_of_stream.py")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "consumer 1: 1000 items, then the end of the stream",
        "consumer 2: 1000 items, then the end of the stream",
    ]


def test_request_reply_example(free_pipes: None) -> None:
    result = run("request_reply.py")
    assert result.returncode == 0, result.stderr
    reports = re.findall(r"client (\w): 500 replies, all matched", result.stdout)
    assert sorted(reports) == ["a", "b"], result.stdout


def test_many_pipes_example(free_pipes: None) -> None:
    result = run("many_pipes.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "many_temperature: 200 packets, in order",
        "many_pressure: 200 packets, in order",
        "many_humidity: 200 packets, in order",
        "many_status: ['sensors started', 3]",
    ]


def test_threads_example(free_pipes: None) -> None:
    result = run("threads.py")
    assert result.returncode == 0, result.stderr
    assert "10000 packets from 4 threads, each taken by exactly one of 3 readers" in result.stdout


def test_multiprocessing_and_fork_example(free_pipes: None) -> None:
    result = run("multiprocessing_and_fork.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    methods = [line.split(":")[0] for line in lines if "6 tasks in 3 workers delivered all 600 packets" in line]
    assert "spawn" in methods
    assert "fork" in methods
    assert any("the inherited sender refuses" in line and "is a fork of it" in line for line in lines)
    assert lines[-1] == "fork: the child's own sender and the parent's both delivered"


def test_across_machines_example_on_a_redis_server(redis_keys_guard: RedisServer) -> None:
    result = run("across_machines.py", redis_keys_guard.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["receiver: attached", "sender: 1000 packets sent"]
    assert re.fullmatch(r"receiver: 1000 packets, in order, from process \d+", lines[2]), lines
    usage = run("across_machines.py")
    assert usage.returncode == 1
    assert "usage:" in usage.stderr


def _tk_or_skip() -> None:
    try:
        import tkinter  # noqa: F401 - only whether it imports matters
    except ImportError:
        pytest.skip("tkinter is not installed (Debian package python3-tk)")


def test_tk_receiver_shows_packets_as_they_arrive(free_pipes: None, display: str, reaper: Reaper) -> None:
    _tk_or_skip()
    window = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "tk_receiver.py"), "--count", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DISPLAY": display},
    )
    reaper.children.append(window)
    assert window.stdout is not None
    assert window.stdout.readline() == "ready\n", window.stderr.read() if window.stderr else ""
    with pipebit.SafeSender("data_pipe", 0) as sender:
        for i in range(3):
            sender.send(["reading", i])
    out, err = window.communicate(timeout=60)
    assert window.returncode == 0, err
    assert out.splitlines() == [f"shown ['reading', {i}]" for i in range(3)]


def test_tk_button_sends_a_packet_per_click(free_pipes: None, display: str, reaper: Reaper) -> None:
    _tk_or_skip()
    env = {**os.environ, "DISPLAY": display}
    with pipebit.SafeReceiver("data_pipe", 0) as receiver:
        app = subprocess.Popen([sys.executable, str(EXAMPLES / "tk_button.py")], env=env, stderr=subprocess.PIPE)
        reaper.children.append(app)
        click_window(display, ["--name", "PipeBit button"], at=(60, 30), times=3)
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            got += receiver.receive(timeout=1)
        app.terminate()
        app.wait(10)
    assert got == [["click", n] for n in (1, 2, 3)]
