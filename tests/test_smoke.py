from __future__ import annotations

import pipebit


def test_in_process_round_trip(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(100):
            sender.send([i, str(i)])
        sender.flush(timeout=10)
        got: list[list[object]] = []
        while len(got) < 100:
            got += receiver.receive(timeout=5)
    assert got == [[i, str(i)] for i in range(100)]
