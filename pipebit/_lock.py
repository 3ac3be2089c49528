"""Cross-process locks that a killed process cannot leave held.

Three kinds, all ``flock(2)`` locks, which the kernel drops when the last
descriptor of the open file goes away -- including when its process is killed
by ``SIGKILL``.  ``flock`` locks belong to the open file description, not to the
process, so two endpoints in one process exclude each other just as two
processes do.

* :func:`lifecycle` -- user-wide, around creating, resetting and removing pipes.
  These are rare, so the convenience of :mod:`filelock` (timeouts, its care with
  lock files unlinked under it) is worth its ~70 us.
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
from pathlib import Path
from typing import Iterator

import filelock

from . import _shm
from .errors import PipeBitError, PipeTimeoutError

LIFECYCLE_TIMEOUT = 30.0


@contextlib.contextmanager
def lifecycle(timeout: float = LIFECYCLE_TIMEOUT) -> Iterator[None]:
    """Hold the user-wide lifecycle lock; ``PipeTimeoutError`` after ``timeout`` seconds."""
    lock = filelock.FileLock(_shm.lifecycle_path(), timeout=timeout, mode=0o600, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise PipeTimeoutError(
            f"waited {timeout:g}s for PipeBit's lifecycle lock {_shm.lifecycle_path()}; another process is holding it"
        ) from exc
    except OSError as exc:
        raise PipeBitError(f"cannot take the lifecycle lock {_shm.lifecycle_path()}: {exc}") from exc
    try:
        yield
    finally:
        lock.release()


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
