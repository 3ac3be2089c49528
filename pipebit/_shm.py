"""Names, the per-user directory, and POSIX shared memory: create, attach, unlink.

A pipe's plain name maps to OS objects that are private to the user:

* the segment ``/pipebit-<h>`` and the semaphores ``/pipebit-<h>.w`` and
  ``/pipebit-<h>.NN``, where ``<h>`` is 16 base32 characters of a BLAKE2b hash
  of the user id and the name.  That keeps every OS name under the 31-character
  limit of macOS and keeps two users' ``data_pipe`` apart.  The real name is
  stored inside the segment header, so tools can list pipes by it.
* lock files in the per-user directory (``/dev/shm/pipebit-<uid>/`` on Linux, so
  they share the segments' mount namespace even under systemd's ``PrivateTmp``;
  elsewhere under the temporary directory), created ``0600`` inside a ``0700``
  directory: ``<name>.lock`` (the writers' lock) and ``<name>.slotNN`` (liveness
  of the participant in table slot NN).

This is the only module that touches ``posix_ipc`` and ``mmap``; it translates
their errors into PipeBit errors.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import mmap
import os
import stat
import tempfile
from pathlib import Path

import posix_ipc

from ._limits import NAME_PATTERN
from .errors import (
    NoSpaceError,
    PipeBitError,
    PipeNotFoundError,
    PipePermissionError,
)

SEGMENT_PREFIX = "pipebit-"
_PRIVATE = 0o600


def _token(name: str) -> str:
    digest = hashlib.blake2b(f"{os.getuid()}\0{name}".encode(), digest_size=10).digest()
    return base64.b32encode(digest).decode("ascii").lower()


def segment_name(name: str) -> str:
    """The OS name of the pipe's shared-memory segment (29 characters)."""
    return f"/{SEGMENT_PREFIX}{_token(name)}"


def semaphore_name(name: str, which: str) -> str:
    """The OS name of one of the pipe's semaphores: ``"w"`` for writers, ``"NN"`` for a slot."""
    return f"/{SEGMENT_PREFIX}{_token(name)}.{which}"


MAKE_DIR_ATTEMPTS = 100  # user_dir(): a directory removed as often as it is made is not a race any more


def user_dir(*, create: bool = True) -> Path:
    """The per-user lock directory, created ``0700`` on first use and checked to be ours.
    With ``create=False`` (for looking only) a missing directory is not made: its path
    comes back, and reading it raises ``FileNotFoundError``."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    path = base / f"pipebit-{os.getuid()}"
    for attempt in range(MAKE_DIR_ATTEMPTS):
        if create:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise PipeBitError(f"cannot create PipeBit's lock directory {path}: {exc}") from exc
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return path
            if attempt == MAKE_DIR_ATTEMPTS - 1:
                raise
            # Removed since mkdir() found it: a process removing the user's last pipe takes
            # the directory too (under the lifecycle lock, which this may be about to take).
            continue
        break
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PipePermissionError(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700; "
            "something else is in its place, refusing to use it"
        )
    return path


def lock_path(name: str) -> Path:
    """The writers' lock file of pipe ``name``."""
    return user_dir() / f"{name}.lock"


def slot_path(name: str, index: int) -> Path:
    """The liveness lock file of slot ``index`` of pipe ``name``."""
    return user_dir() / f"{name}.slot{index:02d}"


def remove_user_dir_if_empty() -> bool:
    """Remove the per-user directory if it holds nothing (but the lifecycle lock file of
    earlier versions); whether it did.  Call under the lifecycle lock: every file of the
    directory is created under it, so none can appear meanwhile."""
    path = user_dir()
    try:
        with os.scandir(path) as entries:
            if {entry.name for entry in entries} - {".lifecycle.lock"}:
                return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / ".lifecycle.lock")
        os.rmdir(path)
    except OSError:  # not empty after all, or gone: either way it is not ours to remove now
        return False
    return True


def open_lock_file(path: Path, *, create: bool = True) -> int:
    """Open a lock file (``0600``, never following a symlink); ``FileNotFoundError`` if absent and not ``create``."""
    flags = os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    if create:
        flags |= os.O_CREAT
    try:
        return os.open(path, flags, _PRIVATE)
    except PermissionError as exc:
        raise PipePermissionError(f"cannot open lock file {path}: {exc}") from exc
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _os_error(f"cannot open lock file {path}", exc) from exc


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # MAP_POPULATE: Linux, Python 3.10+


class Segment:
    """A mapped shared-memory segment.  ``close()`` unmaps it; it never unlinks."""

    __slots__ = ("buf", "os_name", "size", "view")

    def __init__(self, os_name: str, fd: int) -> None:
        self.os_name = os_name
        self.size = os.fstat(fd).st_size
        # The pages were allocated when the segment was made (see _reserve); mapping
        # them all now, rather than one page fault at a time on first touch, keeps
        # faults off the send and receive paths and makes RSS show the segment from
        # the start instead of creeping up as the ring fills.
        self.buf: mmap.mmap | None = mmap.mmap(fd, self.size, flags=_MAP_FLAGS) if self.size else None
        self.view = memoryview(self.buf) if self.buf is not None else memoryview(b"")

    def close(self) -> None:
        """Release the mapping.  Views derived from :attr:`view` must be released first."""
        self.view.release()
        if self.buf is not None:
            try:
                self.buf.close()
            except BufferError:
                # Arrays a receiver returned as views of the pipe (receive(copy=False)) are
                # alive, in a forked child that inherited them: the mapping stays theirs, and
                # goes with the last of them.
                pass
            self.buf = None


def _check_owner(fd: int, os_name: str) -> None:
    info = os.fstat(fd)
    if info.st_uid != os.getuid():
        raise PipePermissionError(f"segment {os_name} belongs to uid {info.st_uid}, not to you")


def create_segment(name: str, size: int) -> Segment | None:
    """Create and map a zero-filled segment of ``size`` bytes; ``None`` if it already exists."""
    os_name = segment_name(name)
    try:
        shm = posix_ipc.SharedMemory(os_name, posix_ipc.O_CREX, mode=_PRIVATE, size=size)
    except posix_ipc.ExistentialError:
        return None
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise PipeBitError(f"cannot create shared memory for pipe {name!r}: {exc}") from exc
    try:
        _reserve(shm.fd, size, name)
        return Segment(os_name, shm.fd)
    except BaseException as exc:
        _unlink_quietly(os_name)  # a segment we could not finish is nobody's
        if isinstance(exc, OSError) and not isinstance(exc, PipeBitError):
            raise PipeBitError(f"cannot map shared memory for pipe {name!r}: {exc}") from exc
        raise
    finally:
        shm.close_fd()


def _reserve(fd: int, size: int, name: str) -> None:
    """Back every page of a new segment now, or raise :class:`NoSpaceError`.

    ftruncate(2) only sets a size; a page of tmpfs is allocated when first
    touched, and if /dev/shm is full then, the process dies of SIGBUS (no
    exception can be raised from a memory access).  posix_fallocate(3) makes the
    shortage an error here instead.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # pragma: no cover - not on macOS; nothing better exists there
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot: carry on
            return
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(
                f"not enough shared memory for pipe {name!r}: it needs {size} bytes and "
                f"{_free_shm()} are free (remove stale pipes with `pipebit clean`, or ask for a smaller capacity)"
            ) from None
        raise


def _free_shm() -> str:
    try:
        info = os.statvfs("/dev/shm")
    except OSError:
        return "fewer"
    return str(info.f_bavail * info.f_frsize)


def attach_segment(name: str) -> Segment:
    """Map the existing segment of pipe ``name``; ``PipeNotFoundError`` if there is none."""
    os_name = segment_name(name)
    try:
        shm = posix_ipc.SharedMemory(os_name)
    except posix_ipc.ExistentialError:
        raise PipeNotFoundError(f"no pipe named {name!r} exists") from None
    except posix_ipc.PermissionsError as exc:
        raise PipePermissionError(f"segment {os_name} of pipe {name!r} is not readable by you") from exc
    except posix_ipc.Error as exc:
        raise PipeBitError(f"cannot open shared memory of pipe {name!r}: {exc}") from exc
    try:
        _check_owner(shm.fd, os_name)
        return Segment(os_name, shm.fd)
    except PipeBitError:
        raise
    except OSError as exc:
        raise PipeBitError(f"cannot map shared memory of pipe {name!r}: {exc}") from exc
    finally:
        shm.close_fd()


def _unlink_quietly(os_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(os_name)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink_segment(name: str) -> bool:
    """Remove the segment's name (mappings stay valid until closed); ``False`` if absent."""
    return _unlink_quietly(segment_name(name))


def open_semaphore(name: str, which: str) -> posix_ipc.Semaphore:
    """Open (creating at 0, mode ``0600``, if needed) one of the pipe's semaphores."""
    try:
        return posix_ipc.Semaphore(semaphore_name(name, which), posix_ipc.O_CREAT, mode=_PRIVATE, initial_value=0)
    except posix_ipc.PermissionsError as exc:
        raise PipePermissionError(f"semaphore of pipe {name!r} is not yours: {exc}") from exc
    except (posix_ipc.Error, OSError) as exc:
        raise _os_error(f"cannot open a semaphore of pipe {name!r}", exc) from exc


def _os_error(what: str, exc: BaseException) -> PipeBitError:
    """The PipeBit error for an OS failure: :class:`NoSpaceError` when /dev/shm is full."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return NoSpaceError(f"{what}: /dev/shm is full ({_free_shm()} bytes free); `pipebit clean` may help")
    return PipeBitError(f"{what}: {exc}")


def sleep_on(semaphore: posix_ipc.Semaphore, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a post; ``True`` if one came.

    A signal handled meanwhile ends the wait early (sem_timedwait(3) fails with
    EINTR, which posix_ipc raises as ``SignalError``); that is an early wake-up,
    not an error: callers re-check their condition, and Python runs the handler
    (a ``KeyboardInterrupt``, say) at its next opportunity.
    """
    try:
        semaphore.acquire(timeout)
    except posix_ipc.BusyError:
        return False
    except posix_ipc.SignalError:
        return False
    return True


def drain(semaphore: posix_ipc.Semaphore) -> None:
    """Consume every pending post (left for an earlier holder of a slot)."""
    while sleep_on(semaphore, 0):
        pass


def semaphore_suffixes(slot_count: int) -> list[str]:
    """Every semaphore suffix a pipe may have created."""
    return ["w"] + [f"{i:02d}" for i in range(slot_count)]


def remove_os_objects(name: str, slot_count: int) -> list[str]:
    """Unlink the segment, semaphores and lock files of pipe ``name``; return what existed."""
    removed = []
    if unlink_segment(name):
        removed.append(segment_name(name))
    for which in semaphore_suffixes(slot_count):
        try:
            posix_ipc.unlink_semaphore(semaphore_name(name, which))
            removed.append(semaphore_name(name, which))
        except posix_ipc.ExistentialError:
            pass
    for path in [lock_path(name)] + [slot_path(name, i) for i in range(slot_count)]:
        try:
            path.unlink()
            removed.append(str(path))
        except FileNotFoundError:
            pass
    return removed


def names_in_user_dir() -> list[str]:
    """Real names of the pipes whose writers' lock file is in the per-user directory."""
    names: list[str] = []
    try:
        entries = os.listdir(user_dir(create=False))  # looking makes no directory
    except FileNotFoundError:  # no pipe yet, or the last one was removed, and the directory with it
        return names
    for entry in entries:
        if entry.endswith(".lock") and not entry.startswith("."):
            candidate = entry[: -len(".lock")]
            if NAME_PATTERN.match(candidate):
                names.append(candidate)
    return sorted(names)
