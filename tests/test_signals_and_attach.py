"""Signals handled during waits are not errors; create=False never creates a pipe."""

from __future__ import annotations

import pytest

import pipebit

from .conftest import Reaper

SIGNALS_DURING_WAITS = """
import signal, sys, time, pipebit
name, model = sys.argv[1], sys.argv[2]
ticks = []
signal.signal(signal.SIGALRM, lambda *_: ticks.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)   # a handled signal every 10 ms
receiver = (pipebit.SafeReceiver if model == "safe" else pipebit.FastReceiver)(name, 0)
sender = (pipebit.SafeSender if model == "safe" else pipebit.FastSender)(name, 0)
started = time.monotonic()
assert receiver.receive(timeout=1.0) == []          # waited through ~100 signals
waited = time.monotonic() - started
sender.send([1])
assert receiver.receive(timeout=5) == [[1]]
signal.setitimer(signal.ITIMER_REAL, 0)
receiver.close_connection(); sender.close_connection()
print(len(ticks), round(waited, 2), flush=True)
"""


@pytest.mark.parametrize("model", ["safe", "fast"])
def test_handled_signals_do_not_break_waits(name: str, reaper: Reaper, model: str) -> None:
    child = reaper.spawn(SIGNALS_DURING_WAITS, name, model)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    ticks, waited = out.split()
    assert int(ticks) > 20  # the signals really arrived during the wait
    assert float(waited) >= 0.9  # and receive() kept waiting for its full timeout


@pytest.mark.parametrize(
    "endpoint", [pipebit.SafeSender, pipebit.SafeReceiver, pipebit.FastSender, pipebit.FastReceiver]
)
def test_create_false_never_creates_a_pipe(name: str, endpoint: type) -> None:
    with pytest.raises(pipebit.PipeNotFoundError, match=name):
        endpoint(name, 0, create=False)
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.pipe_stats(name)


def test_create_false_attaches_to_an_existing_pipe(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0, create=False) as receiver:
        sender.send(["hello"])
        assert receiver.receive(timeout=5) == [["hello"]]
