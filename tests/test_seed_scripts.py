"""The original PipeBit README's three scripts run unchanged against this library.

``tests/seed_scripts/`` holds them byte for byte as users know them; they use
the fixed pipe name ``data_pipe``.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipebit

from .helpers import click_window

SCRIPTS = Path(__file__).parent / "seed_scripts"
PIPE = "data_pipe"
EXPECTED = [[i, i + 1, i + 2, i + 3, i + 4] for i in range(50)]


@pytest.fixture
def data_pipe() -> Iterator[str]:
    """The seed's fixed pipe name, free before the test and removed after it."""
    try:
        pipebit.remove(PIPE)
    except pipebit.PipeNotFoundError:
        pass
    except pipebit.PipeBusyError:
        pytest.skip("a live process on this machine is using the pipe 'data_pipe'")
    yield PIPE
    try:
        pipebit.remove(PIPE, force=True)
    except pipebit.PipeNotFoundError:
        pass


def run_script(script: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


def read_packets(receiver: subprocess.Popen[str], count: int, timeout: float = 60) -> list[Any]:
    """Parse the seed receiver's printed lists until ``count`` packets were seen."""
    assert receiver.stdout is not None
    packets: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(packets) < count:
        assert time.monotonic() < deadline, f"receiver printed only {len(packets)} packets"
        line = receiver.stdout.readline()
        assert line, f"receiver ended early: {receiver.stderr.read() if receiver.stderr else ''}"
        packets += ast.literal_eval(line)
    return packets


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def test_receiver_first_then_sender(data_pipe: str) -> None:
    receiver = run_script("receiver.py")
    try:
        time.sleep(0.5)
        sender = run_script("sender.py")
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err
        assert "Finished!" in out
        assert "pipebit:" in err  # the seed asks for debug output (debug=1)
        assert read_packets(receiver, 50) == EXPECTED
    finally:
        stop(receiver)


def test_sender_first_then_receiver(data_pipe: str) -> None:
    sender = run_script("sender.py")
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err
    receiver = run_script("receiver.py")
    try:
        assert read_packets(receiver, 50) == EXPECTED
    finally:
        stop(receiver)


def test_tkinter_sender_sends_a_packet_per_click(data_pipe: str, display: str) -> None:
    with pipebit.SafeReceiver(data_pipe, 0) as receiver:
        app = run_script("tk_sender.py", DISPLAY=display)
        try:
            click_window(display, ["--class", "Tk"], at=(10, 10), times=3)
            got: list[Any] = []
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                got += receiver.receive(timeout=1)
            assert got == [[f"Pressed the button {n} times!"] for n in (1, 2, 3)]
        finally:
            app.terminate()
            app.wait(10)
            for stream in (app.stdout, app.stderr):
                if stream is not None:
                    stream.close()
