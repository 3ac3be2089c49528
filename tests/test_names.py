"""Pipe names: the naming rule, how names map to OS objects, and who may see them."""

from __future__ import annotations

import os
import random
import shutil
import stat
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import pipebit
from pipebit import _layout, _limits, _shm

SHM = Path("/dev/shm")
NAME_CHARS = string.ascii_letters + string.digits + "_-"
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _segment_file(name: str) -> Path:
    return SHM / _shm.segment_name(name).lstrip("/")


def _token(name: str) -> str:
    return _shm.segment_name(name)[len("/pipebit-") :]


@pytest.fixture
def own_names() -> Iterator[list[str]]:
    """Names the test builds itself (to control their shape); each pipe is removed at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            pipebit.remove(name, force=True)
        except pipebit.PipeNotFoundError:
            pass


# ------------------------------------------------------------ valid names
def _valid_names() -> list[str]:
    hex_part = uuid.uuid4().hex
    return [
        random.choice(NAME_CHARS),  # 1 character
        (f"t{hex_part}" * 3)[:64],  # 64 characters
        f"my.pipe_v2-{hex_part[:12]}",
        f"0123456789-{hex_part[:8]}",
        f"_{hex_part[:10]}",
        f"-{hex_part[:10]}",
        f"dots..{hex_part[:6]}.",
        f"UPPER.lower-{hex_part[:6]}",
    ]


def test_valid_names_work_for_a_real_pipe(own_names: list[str]) -> None:
    names = _valid_names()
    assert len(names[0]) == 1
    assert len(names[1]) == 64
    for name in names:
        own_names.append(name)
        with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0, start="new") as receiver:
            assert sender.name == name
            assert receiver.name == name
            sender.send([name])
            sender.flush(timeout=10)
            got = receiver.receive(timeout=10)
            assert got == [[name]]
            segment = _shm.attach_segment(name)
            try:
                assert _layout.read_static(segment.view, segment.size).name == name
            finally:
                segment.close()


# ---------------------------------------------------------- invalid names
INVALID_NAMES = {
    "empty": "",
    "65_chars": "a" * 65,
    "leading_dot": ".hidden",
    "only_dot": ".",
    "dotdot": "..",
    "slash": "/",
    "parent_path": "../x",
    "inner_slash": "a/b",
    "absolute": "/nonexistent-pipebit-probe",
    "nul": "a\0b",
    "space": "a b",
    "tab": "a\tb",
    "newline": "a\nb",
    "trailing_newline": "abc\n",
    "cyrillic_a": "d\u0430ta",  # CYRILLIC SMALL LETTER A looks like a Latin 'a'
    "fullwidth": "\uff44\uff41\uff54\uff41",  # fullwidth 'data'
    "accented": "caf\u00e9",
    "digit_lookalike": "pipe\u0661",  # Arabic-Indic digit one
    "backslash": "a\\b",
    "colon": "a:b",
}


def _open_and_undo(open_endpoint: Callable[[str], Any], name: str) -> None:
    endpoint = open_endpoint(name)
    # Only reached if the name was accepted: remove what it created, so the failure leaves nothing behind.
    endpoint.close_connection()
    pipebit.remove(name, force=True)


@pytest.mark.parametrize("bad", list(INVALID_NAMES.values()), ids=list(INVALID_NAMES))
@pytest.mark.parametrize(
    "open_endpoint",
    [
        lambda n: pipebit.SafeSender(n, 0),
        lambda n: pipebit.SafeReceiver(n, 0),
        lambda n: pipebit.BitPackSender(n, 0, False),
        pipebit.BitPackReceiver,
    ],
    ids=["SafeSender", "SafeReceiver", "BitPackSender", "BitPackReceiver"],
)
def test_invalid_names_are_refused_stating_the_rule(bad: str, open_endpoint: Callable[[str], Any]) -> None:
    with pytest.raises(pipebit.InvalidNameError) as info:
        _open_and_undo(open_endpoint, bad)
    assert isinstance(info.value, ValueError)
    assert _limits.NAME_RULE in str(info.value)
    assert "1-64 characters" in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", list(INVALID_NAMES.values()), ids=list(INVALID_NAMES))
def test_remove_refuses_invalid_names(bad: str) -> None:
    with pytest.raises(pipebit.InvalidNameError) as info:
        pipebit.remove(bad)
    assert _limits.NAME_RULE in str(info.value)


def test_remove_cannot_delete_files_outside_the_lock_directory(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    files = [victim.with_suffix(".lock"), victim.with_suffix(".slot00")]
    for path in files:
        path.write_text("not PipeBit's")
    sneaky = os.path.relpath(victim, _shm.user_dir())
    assert sneaky.startswith("..")
    with pytest.raises(pipebit.InvalidNameError):
        pipebit.remove(sneaky)
    assert [path.exists() for path in files] == [True, True]


@pytest.mark.parametrize("bad", [b"abc", None, 1, 1.5, Path("abc"), ["abc"]], ids=repr)
@pytest.mark.parametrize(
    "use",
    [
        lambda n: pipebit.SafeSender(n, 0).close_connection(),
        lambda n: pipebit.SafeReceiver(n, 0).close_connection(),
        lambda n: pipebit.BitPackSender(n, 0, False).close_connection(),
        lambda n: pipebit.BitPackReceiver(n).close_connection(),
        pipebit.remove,
    ],
    ids=["SafeSender", "SafeReceiver", "BitPackSender", "BitPackReceiver", "remove"],
)
def test_non_str_names_raise_type_error(bad: object, use: Callable[[object], None]) -> None:
    with pytest.raises(pipebit.ArgumentTypeError) as info:
        use(bad)
    assert isinstance(info.value, TypeError)
    assert "str" in str(info.value)


# ------------------------------------------------------------- OS names
def test_segment_names_are_short_prefixed_and_distinct() -> None:
    names = [
        "a",
        "b",
        "A",
        "a.",
        "a-",
        "a_",
        "data_pipe",
        "data_pipf",
        "Data_pipe",
        "x" * 64,
        "x" * 63 + "y",
        "x" * 63,
    ]
    segments = [_shm.segment_name(name) for name in names]
    for name, segment in zip(names, segments):
        assert len(segment) <= 31, segment
        assert segment.startswith("/pipebit-"), segment
        assert "/" not in segment[1:], segment
        assert segment == _shm.segment_name(name)  # stable
        for which in ("w", "00", "63"):
            semaphore = _shm.semaphore_name(name, which)
            assert len(semaphore) <= 31, semaphore
            assert semaphore.startswith(segment), semaphore
    assert len(set(segments)) == len(names)


def test_the_real_name_is_stored_in_the_header(name: str, own_names: list[str]) -> None:
    long_name = (name + "-" + "z" * 64)[:64]
    own_names.append(long_name)
    for pipe_name in (name, long_name):
        with pipebit.SafeSender(pipe_name, 0):
            assert _segment_file(pipe_name).exists()
            segment = _shm.attach_segment(pipe_name)
            try:
                info = _layout.read_static(segment.view, segment.size)
            finally:
                segment.close()
            assert info.name == pipe_name


# ---------------------------------------------------------- permissions
def test_files_are_private_to_the_user(name: str) -> None:
    old_umask = os.umask(0)  # modes must come from PipeBit, not from a kind umask
    try:
        with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
            sender.send([1])
            sender.flush(timeout=10)
            assert receiver.receive(timeout=10) == [[1]]

            segment = _segment_file(name)
            assert _mode(segment) == 0o600
            assert os.lstat(segment).st_uid == os.getuid()

            user_dir = _shm.user_dir()
            assert _mode(user_dir) == 0o700
            assert os.lstat(user_dir).st_uid == os.getuid()

            lock_file = _shm.lock_path(name)
            assert lock_file.parent == user_dir
            assert _mode(lock_file) == 0o600

            slot_files = sorted(user_dir.glob(f"{name}.slot*"))
            assert len(slot_files) >= 2  # one per endpoint
            assert {_mode(path) for path in slot_files} == {0o600}

            semaphores = sorted(SHM.glob(f"sem.pipebit-{_token(name)}.*"))
            assert semaphores, "a receiver sleeping on its semaphore should have created it"
            assert {_mode(path) for path in semaphores} == {0o600}
    finally:
        os.umask(old_umask)


# ------------------------------------------------------ per-user isolation
CHILD_AS_NOBODY = """
import os
import sys

# The interpreter's standard library lives under /root (mode 0700), unreadable once
# we are uid 65534: load pipebit's dependencies now, then forget pipebit itself and
# import it again after dropping privileges.
import pipebit
for module in [m for m in sys.modules if m == "pipebit" or m.startswith("pipebit.")]:
    del sys.modules[module]

os.setgroups([])
os.setgid(65534)
os.setuid(65534)

import pipebit
from pipebit import _shm

name = sys.argv[1]
sender = pipebit.SafeSender(name, 0)
sender.send([b"from another user"])
sender.flush(timeout=10)
sender.close_connection()
print(os.getuid(), _shm.segment_name(name), flush=True)
"""


def _remove_new_entries_of(uid: int, directory: Path, before: set[str]) -> None:
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name in before or entry.lstat().st_uid != uid:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def test_pipes_of_another_user_are_separate(name: str, reaper: Any) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user (uid 65534)")
    other_dir = SHM / f"pipebit-{NOBODY}"
    shm_before = set(os.listdir(SHM))
    other_dir_before = set(os.listdir(other_dir)) if other_dir.is_dir() else set()
    env = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        with pipebit.SafeReceiver(name, 0) as receiver, pipebit.SafeSender(name, 0) as sender:
            child = reaper.spawn(CHILD_AS_NOBODY, name, env=env, cwd="/")
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            uid_text, other_segment = out.split()
            assert int(uid_text) == NOBODY

            ours = _shm.segment_name(name)
            assert other_segment != ours
            assert other_segment.startswith("/pipebit-")
            other_file = SHM / other_segment.lstrip("/")
            assert other_file.stat().st_uid == NOBODY
            assert _mode(other_file) == 0o600
            assert _segment_file(name).stat().st_uid == 0
            assert (other_dir / f"{name}.lock").stat().st_uid == NOBODY
            assert _mode(other_dir) == 0o700

            assert receiver.receive(timeout=1.0) == []
            sender.send([b"ours"])
            sender.flush(timeout=10)
            assert receiver.receive(timeout=10) == [[b"ours"]]
    finally:
        # The other user's pipe is not reachable through pipebit as root; remove its files.
        if other_dir.is_dir() and other_dir.name in shm_before:
            _remove_new_entries_of(NOBODY, other_dir, other_dir_before)
        _remove_new_entries_of(NOBODY, SHM, shm_before)
