"""A user's type checker sees PipeBit's types: ``mypy --strict`` on a user's script catches a wrong
packet inside ``with ... as s:``, a misspelt ``start=``, and passes a correct script untouched."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

# Uses every public face the way the README does; nothing here may be an error under --strict.
CORRECT = """\
import pipebit

def use() -> None:
    with pipebit.SafeSender("typed_pipe", 0, capacity=1 << 16) as sender:
        sender.send([1, "two", 3.0, b"four", None, {"k": [1]}])
        sender.send((1, 2), timeout=1.0)
        sender.flush(timeout=5)
        sent: pipebit.EndpointStats = sender.stats()
        print(sent.pipe.max_lag, sent.pipe.fill)
    with pipebit.SafeReceiver("typed_pipe", start="oldest", spin=0) as receiver:
        packets: list[list[object]] = receiver.receive(timeout=0)
        print(packets)
    with pipebit.SafeReceiver("typed_pipe", spin="auto") as auto:
        for packet in auto:
            print(packet[0])
    with pipebit.FastSender("typed_fast", slot_size=4096) as fast:
        fast.send([1.5])
    with pipebit.FastReceiver("typed_fast", start="new") as latest:
        print(latest.receive(timeout=None))
    with pipebit.BitPackSender("typed_pipe", 3, False) as original:
        original.send([1, 2, 3])
    pipe: pipebit.PipeStats = pipebit.pipe_stats("typed_pipe")
    first: pipebit.Participant = pipe.participants[0]
    print(first.role, [p.name for p in pipebit.list_pipes()])
    pipebit.remove("typed_pipe", force=True)
"""

# Each line marked "# error" must be reported on that line; nothing else may be.
WRONG = """\
import pipebit

def use() -> None:
    with pipebit.SafeSender("typed_pipe", 0) as sender:
        sender.send("oops")  # error: a str is not a packet
    with pipebit.FastSender("typed_fast") as fast:
        fast.send(42)  # error: nor is an int
        fast.sned([1])  # error: no such method
    pipebit.SafeReceiver("typed_pipe", start="newest")  # error: not a Safe start
    pipebit.FastReceiver("typed_fast", start="oldest")  # error: not a Fast start
    pipebit.SafeReceiver("typed_pipe", spin="fast")  # error: spin is "auto" or seconds
    with pipebit.SafeReceiver("typed_pipe") as receiver:
        count: str = receiver.stats().packets  # error: an int
        print(count)
"""


def run_mypy(tmp_path: Path, script: str) -> tuple[int, str]:
    path = tmp_path / "user_script.py"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "", path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_correct_script_is_clean_under_strict(tmp_path: Path) -> None:
    code, output = run_mypy(tmp_path, CORRECT)
    assert code == 0, output


def test_strict_catches_wrong_packets_starts_and_names(tmp_path: Path) -> None:
    code, output = run_mypy(tmp_path, WRONG)
    assert code == 1, output
    expected = {number for number, line in enumerate(WRONG.splitlines(), 1) if "# error" in line}
    reported = {int(n) for n in re.findall(r"^user_script\.py:(\d+): error", output, re.MULTILINE)}
    assert reported == expected, output
    assert 'Argument 1 to "send" of "SafeSender" has incompatible type "str"' in output
    assert "Literal['unread', 'oldest', 'new']" in output


def test_with_gives_the_endpoint_its_own_class(tmp_path: Path) -> None:
    script = "\n".join(
        [
            "import pipebit",
            "with pipebit.SafeSender('typed_pipe') as a, pipebit.FastReceiver('typed_fast') as b:",
            "    reveal_type(a)",
            "    reveal_type(b)",
            "class Mine(pipebit.SafeReceiver): ...",
            "with Mine('typed_pipe') as c:",
            "    reveal_type(c)",
            "",
        ]
    )
    _, output = run_mypy(tmp_path, script)
    revealed = re.findall(r'Revealed type is "([^"]+)"', output)
    assert revealed == ["pipebit.safe.SafeSender", "pipebit.fast.FastReceiver", "user_script.Mine"], output
