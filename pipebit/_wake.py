"""Waking an event loop straight from another process: a datagram to an abstract socket.

A receiver's semaphore wakes a *thread*; an event loop can only wait on file
descriptors.  So a coroutine awaiting a Safe pipe over shared memory binds a
Unix datagram socket in Linux's abstract namespace, named after its slot (the
pipe, the slot's index and its token), and marks its slot (:data:`WAKE_COROUTINE`);
a writer that sees the mark sends one byte to that name instead of posting the
semaphore.  The loop's ``epoll`` wakes at once: no thread in between, no hand-over
of the GIL.

Why this and not a FIFO: an abstract name is no file, so a receiver killed with
``SIGKILL`` leaves nothing behind (the kernel drops the name with the socket),
and a datagram sent to a name nobody holds fails at once (``ECONNREFUSED``) rather
than raising ``SIGPIPE``.  The name is private to a network namespace: a writer in
another one (a container sharing ``/dev/shm`` but not the network) gets that
error, and posts the semaphore instead, which wakes the receiver's thread (the
slower path, never a lost wake-up).  Nothing is read from a datagram: a process
that sends to the name can cause a spurious wake-up, nothing else.
"""

from __future__ import annotations

import hashlib
import os
import socket

# Bits of a slot's ``waiting`` word (docs/format.md): a thread sleeps on the slot's
# semaphore; a coroutine awaits a datagram to the slot's name.
WAKE_SEMAPHORE = 1
WAKE_COROUTINE = 2


def address(pipe: str, index: int, token: int) -> bytes:
    """The abstract name of the wake socket of slot ``index`` (held with ``token``) of
    ``pipe``: a digest, so that every pipe name fits the 107 bytes a name may take."""
    digest = hashlib.blake2b(f"{os.getuid()}/{pipe}/{index}/{token}".encode(), digest_size=20).hexdigest()
    return b"\0pipebit-wake-" + digest.encode()


def _datagram_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


class WakeSender:
    """A writer's side: one unbound socket, opened at the first wake-up it sends."""

    __slots__ = ("_socket",)

    def __init__(self) -> None:
        self._socket: socket.socket | None = None

    def wake(self, name: bytes) -> bool:
        """Send a wake-up to ``name``; ``False`` if no socket holds that name here (the
        caller then wakes the receiver's thread instead)."""
        sock = self._socket
        if sock is None:
            sock = self._socket = _datagram_socket()
        try:
            sock.sendto(b"\1", name)
        except BlockingIOError:  # its queue is full of wake-ups: it is awake already
            return True
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class WakeSocket:
    """A receiver's side: bound to its slot's name, readable once a writer woke it."""

    __slots__ = ("_name", "_socket")

    def __init__(self, name: bytes) -> None:
        """Bind ``name``; :class:`OSError` if that cannot be done (the name is taken)."""
        sock = _datagram_socket()
        try:
            sock.bind(name)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._name = name

    def poke(self) -> None:
        """Wake it from this process: a coroutine watching it must look at the endpoint."""
        try:
            self._socket.sendto(b"\1", self._name)
        except OSError:  # BlockingIOError: it is readable already
            pass

    def fileno(self) -> int:
        return self._socket.fileno()

    def drain(self) -> None:
        """Read a wake-up (one waits, nearly always: a writer sends one only while the slot
        is marked, and the mark goes as the coroutine wakes).  Any left over keep the socket
        readable, so the loop calls back once more for each: harmless."""
        try:
            self._socket.recv(64)
        except OSError:  # BlockingIOError: none came (the wait timed out, or was cancelled)
            pass

    def close(self) -> None:
        self._socket.close()
