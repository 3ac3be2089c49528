"""The per-user directory of lock files: removing the user's last pipe (``pipebit clean``, ``pipebit rm``,
``pipebit.remove()``) leaves nothing behind, and the lifecycle lock -- a ``flock`` on that directory --
still excludes every other process while the directory goes and comes back.

Each scenario runs in a child with a private tmpfs on /dev/shm, where its pipes are the user's only ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import private_shm_prefix

CLEAN_LEAVES_NOTHING = r"""
import json, os, subprocess, sys
import pipebit
from pipebit import _shm

def shm():
    return sorted(os.listdir("/dev/shm"))

def cli(*args):
    done = subprocess.run([sys.executable, "-m", "pipebit", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout

out = {}
with pipebit.SafeSender("stale_safe", 0) as s:
    s.send([1])
with pipebit.FastSender("stale_fast", 0) as f:
    f.send([2])
live = pipebit.SafeReceiver("live", 0)
out["clean_with_a_live_pipe"] = cli("clean")
out["after_clean_with_a_live_pipe"] = sorted(os.listdir(_shm.user_dir()))
live.close_connection()
out["clean"] = cli("clean")
out["shm_after_clean"] = shm()
out["ls_after_clean"] = cli("ls")
out["clean_with_nothing"] = cli("clean")
out["listed"] = [p.name for p in pipebit.list_pipes()]
out["shm_after_looking"] = shm()  # looking (ls, clean, list_pipes) makes no directory
with pipebit.SafeSender("again", 0) as s:  # the directory is made again, private as before
    s.send([3])
out["mode_again"] = oct(os.stat(_shm.user_dir()).st_mode & 0o777)
with pipebit.SafeReceiver("again", 0) as r:
    out["received_again"] = r.receive(timeout=5)
out["rm"] = cli("rm", "again")
out["shm_after_rm"] = shm()
print(json.dumps(out))
"""

# Processes create, use and remove pipes at once: the directory vanishes and comes back all the
# time, and every lifecycle step must still hold the lock alone (a pipe made by one is never
# unlinked under another, a name is never half-created).
CHURN = r"""
import json, sys, time
import pipebit
who, rounds = sys.argv[1], int(sys.argv[2])
errors = []
for i in range(rounds):
    name = f"churn-{who}-{i % 3}"
    try:
        with pipebit.SafeSender(name, 0, capacity=4096) as s, pipebit.SafeReceiver(name, 0, start="oldest") as r:
            s.send([who, i])
            got = r.receive(timeout=5)
            if got != [[who, i]]:
                errors.append(f"round {i}: got {got}")
        pipebit.remove(name)
    except Exception as exc:
        errors.append(f"round {i}: {type(exc).__name__}: {exc}")
print(json.dumps(errors))
"""


def _prefix() -> tuple[str, ...]:
    prefix = private_shm_prefix("64m")
    if prefix is None:
        pytest.skip("needs a private tmpfs on /dev/shm (unshare -m as root, or unshare -r -m)")
    return prefix


def _run_in_private_shm(code: str) -> str:
    """Run ``code`` in a fresh interpreter with a /dev/shm of its own; its stdout."""
    result = subprocess.run(
        [*_prefix(), sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_clean_and_rm_leave_no_directory_behind() -> None:
    out = json.loads(_run_in_private_shm(CLEAN_LEAVES_NOTHING).splitlines()[-1])
    assert out["clean_with_a_live_pipe"].splitlines() == ["removed stale_fast", "removed stale_safe"]
    assert out["after_clean_with_a_live_pipe"] == ["live.lock", "live.slot00"]  # kept: not empty
    assert out["clean"] == "removed live\n"
    assert out["shm_after_clean"] == []  # not even an empty pipebit-<uid> directory
    assert out["ls_after_clean"].splitlines()[0].split()[0] == "NAME"
    assert out["clean_with_nothing"] == ""  # "no stale pipes" goes to stderr
    assert out["listed"] == []
    assert out["shm_after_looking"] == []
    assert out["mode_again"] == "0o700"
    assert out["received_again"] == [[3]]
    assert out["rm"] == "removed again\n"
    assert out["shm_after_rm"] == []


def test_the_lifecycle_lock_holds_while_the_directory_comes_and_goes() -> None:
    prefix = _prefix()
    # One namespace for all: a shell starts the workers together and waits for them.
    script = " & ".join(f'"$0" -c "$1" w{k} 100 > /dev/shm/out{k}' for k in range(4)) + " & wait"
    script += "; cat /dev/shm/out0 /dev/shm/out1 /dev/shm/out2 /dev/shm/out3; echo $(ls -A /dev/shm)"
    result = subprocess.run(
        [*prefix, "sh", "-c", script, sys.executable, CHURN],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *reports, left = result.stdout.strip().splitlines()
    assert len(reports) == 4, result.stdout + result.stderr
    assert [json.loads(report) for report in reports] == [[], [], [], []]
    assert left.split() == ["out0", "out1", "out2", "out3"]  # every pipe, and the directory, gone


STALE_LOCK = r"""
import fcntl, json, os
import pipebit
from pipebit import _lock, _shm

out = {}
with pipebit.SafeSender("p", 0) as s:
    s.send([1])
path = _shm.user_dir()
old = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # opened just before the directory goes
out["still_there_before"] = _lock._still_there(old, path)
pipebit.remove("p")  # the user's last pipe: its directory goes with it
out["exists_after_remove"] = os.path.exists(path)
out["still_there_after"] = _lock._still_there(old, path)
fcntl.flock(old, fcntl.LOCK_EX)  # a lock on the directory that is gone excludes no one
with _lock.lifecycle(timeout=2):
    out["lifecycle_past_a_stale_lock"] = True
current = os.open(_shm.user_dir(), os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(current, fcntl.LOCK_EX)  # a lock on the directory there now does
try:
    with _lock.lifecycle(timeout=0.3):
        out["lifecycle_past_a_held_lock"] = True
except pipebit.PipeTimeoutError:
    out["lifecycle_past_a_held_lock"] = False
print(json.dumps(out))
"""


def test_a_lock_on_a_removed_directory_excludes_no_one() -> None:
    assert json.loads(_run_in_private_shm(STALE_LOCK).splitlines()[-1]) == {
        "still_there_before": True,
        "exists_after_remove": False,
        "still_there_after": False,
        "lifecycle_past_a_stale_lock": True,
        "lifecycle_past_a_held_lock": False,
    }


DIRECTORY_REMOVED_MEANWHILE = r"""
import os, threading
from pipebit import _shm
path = _shm.user_dir()
stop = threading.Event()

def remove_it_again_and_again():
    while not stop.is_set():
        try:
            os.rmdir(path)  # as a process removing the user's last pipe does
        except OSError:
            pass

remover = threading.Thread(target=remove_it_again_and_again)
remover.start()
failures = 0
try:
    for _ in range(20000):
        try:
            _shm.user_dir()
        except FileNotFoundError:
            failures += 1
finally:
    stop.set()
    remover.join()
print(failures)
"""


def test_the_directory_removed_between_making_and_checking_it_is_made_again() -> None:
    """user_dir() makes the directory, then checks it; a process removing the user's last
    pipe may take it in between (lifecycle() calls user_dir() before it holds the lock)."""
    assert _run_in_private_shm(DIRECTORY_REMOVED_MEANWHILE).strip() == "0"
