"""Cross-process locks that a killed process cannot leave held.

Three kinds, all ``flock(2)`` locks, which the kernel drops when the last
descriptor of the open file goes away -- including when its process is killed
by ``SIGKILL``.  ``flock`` locks belong to the open file description, not to the
process, so two endpoints in one process exclude each other just as two
processes do.

* :func:`lifecycle` -- user-wide, around creating, resetting and removing pipes:
  a ``flock`` on the per-user directory itself, so that removing a user's last
  pipe can remove the directory too (under this lock), leaving nothing behind.
* :class:`WriterLock` -- per pipe, around every commit to the ring and every change
  to the participant table.  On the hot path, so a raw ``flock`` on a descriptor
  opened once (~1 us for a lock/unlock pair here, against ~0.2 us for a POSIX
  semaphore, which is *not* released when its holder dies).
* :class:`SlotLock` -- held exclusively for as long as a participant occupies its
  slot in the table.  Another process proves the holder dead by taking it
  (``LOCK_NB``): unlike a stored pid, this cannot be fooled by pid reuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from . import _shm
from .errors import PipeBitError, PipeTimeoutError

LIFECYCLE_TIMEOUT = 30.0
LIFECYCLE_POLL = (0.001, 0.05)  # seconds between tries while another process holds it: first, most


@contextlib.contextmanager
def lifecycle(timeout: float = LIFECYCLE_TIMEOUT) -> Iterator[None]:
    """Hold the user-wide lifecycle lock; ``PipeTimeoutError`` after ``timeout`` seconds.

    The lock is a ``flock`` on the per-user directory.  Whoever holds it may remove
    the directory once it is empty (:func:`pipebit._shm.remove_user_dir_if_empty`),
    so a lock taken on a directory that is gone by then is let go, and the
    directory made (and locked) anew.  Polled, as ``flock`` has no timeout:
    creating and removing pipes is rare.
    """
    deadline, pause = time.monotonic() + timeout, LIFECYCLE_POLL[0]
    while True:
        path = _shm.user_dir()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed since user_dir() looked: make it again
            fd = -1
        except OSError as exc:
            raise PipeBitError(f"cannot take the lifecycle lock {path}: {exc}") from exc
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            except OSError as exc:
                os.close(fd)
                raise PipeBitError(f"cannot take the lifecycle lock {path}: {exc}") from exc
            else:
                if _still_there(fd, path):
                    break
            os.close(fd)
        if time.monotonic() >= deadline:
            raise PipeTimeoutError(
                f"waited {timeout:g}s for PipeBit's lifecycle lock {path}; another process is holding it"
            )
        time.sleep(pause)
        pause = min(pause * 2, LIFECYCLE_POLL[1])
    try:
        yield
    finally:
        os.close(fd)  # drops the lock


def _still_there(fd: int, path: Path) -> bool:
    """Whether the directory open as ``fd`` is still the one at ``path`` (not removed meanwhile)."""
    held = os.fstat(fd)
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


class WriterLock:
    """The per-pipe lock of writers and of table changes.  Not reentrant."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._fd = _shm.open_lock_file(path, create=create)

    def acquire(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SlotLock:
    """Exclusive hold of one participant slot, released by ``close()`` or by death."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def try_hold(self) -> bool:
        """Take the lock without waiting; ``False`` if a live participant holds it."""
        fd = _shm.open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def holder_is_alive(path: Path) -> bool:
    """Whether some open file description holds ``path``'s slot lock right now.

    A probe: it takes and at once drops the lock if it is free.  The caller must
    hold the pipe's :class:`WriterLock` so no one claims the slot meanwhile.
    """
    try:
        fd = _shm.open_lock_file(path, create=False)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got it
    return False
