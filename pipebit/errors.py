"""The exceptions PipeBit raises, all under one root.

Every error also subclasses the builtin a caller would try first, so
``except ValueError`` keeps working for code that does not know PipeBit::

    PipeBitError
     ├── InvalidNameError          (ValueError)     the pipe name breaks the naming rule
     ├── ArgumentTypeError         (TypeError)      an argument (name, timeout, size...) has the wrong type
     │    └── PacketTypeError                       send() got a value the codec cannot carry
     ├── PacketSizeError           (ValueError)     wrong packet length, or too big for the pipe
     ├── InvalidArgumentError      (ValueError)     any other bad argument (debug, timeout, capacity...)
 │    └── CapacityMismatchError                 an explicit capacity/slot_size differs from the existing pipe's
     ├── PipeNotFoundError         (FileNotFoundError) no pipe of that name exists
     ├── PipePermissionError       (PermissionError)  the pipe or its lock directory is not yours
     ├── NoSpaceError              (OSError)        /dev/shm has no room for a new pipe
     ├── PipeTimeoutError          (TimeoutError)   a blocking call ran out of time
     ├── TransportError            (ConnectionError) the Redis server is not there, refused us, or cut us off
     ├── DependencyError           (ImportError)    a Redis URL was used, but redis-py is not installed
     ├── PipeClosedError                            you closed this endpoint (or forked after opening it)
     ├── PipeBusyError                              the change needs the pipe to be idle, and it is not
     ├── WorkerError                                a background thread of this endpoint failed
     └── PipeFormatError                            the segment is not a PipeBit pipe we can read
          ├── ModelMismatchError   (ValueError)     a Safe endpoint met a Fast pipe, or the reverse
          └── CorruptPacketError                    bytes in the pipe do not decode to a packet
               └── NumpyMissingError (ImportError)  a packet holds an array, and this receiver has no numpy

Messages name the pipe and say whose fault the error is: the caller's argument,
the caller's own earlier action, a peer process, or the segment's contents.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "CapacityMismatchError",
    "CorruptPacketError",
    "DependencyError",
    "InvalidArgumentError",
    "InvalidNameError",
    "ModelMismatchError",
    "NoSpaceError",
    "NumpyMissingError",
    "PacketSizeError",
    "PacketTypeError",
    "PipeBitError",
    "PipeBitWarning",
    "PipeBusyError",
    "PipeClosedError",
    "PipeFormatError",
    "PipeNotFoundError",
    "PipePermissionError",
    "PipeTimeoutError",
    "TransportError",
    "UndeliveredPacketsWarning",
    "WorkerError",
]


class PipeBitError(Exception):
    """Root of every exception PipeBit raises on purpose."""


class InvalidNameError(PipeBitError, ValueError):
    """The pipe name is not 1-64 characters of letters, digits, ``.``, ``_``, ``-``."""


class ArgumentTypeError(PipeBitError, TypeError):
    """An argument is of the wrong type (a name that is not a ``str``, a ``debug`` that is not 0/1...)."""


class PacketTypeError(ArgumentTypeError):
    """A packet is not a list/tuple, or holds a value of a type PipeBit cannot carry."""


class PacketSizeError(PipeBitError, ValueError):
    """A packet has the wrong number of elements, or encodes larger than the pipe holds."""


class InvalidArgumentError(PipeBitError, ValueError):
    """An argument other than the name or the packet is out of its documented range."""


class CapacityMismatchError(InvalidArgumentError):
    """An explicit ``capacity`` (Safe) or ``slot_size`` (Fast) differs from the size of the
    pipe that already exists under that name.  An explicit size is never ignored: pass the
    same size in every process (or none, to take the pipe's), recreate the pipe with
    ``override=True`` on a sender while it is idle, or remove it (``pipebit rm NAME``)."""


class PipeNotFoundError(PipeBitError, FileNotFoundError):
    """An operation that never creates a pipe was given the name of one that does not exist."""


class PipePermissionError(PipeBitError, PermissionError):
    """The segment or lock directory belongs to another user or has unsafe permissions."""


class NoSpaceError(PipeBitError, OSError):
    """There is not enough shared memory (``/dev/shm``) to create the pipe."""


class PipeTimeoutError(PipeBitError, TimeoutError):
    """A blocking call did not complete within its timeout."""


class TransportError(PipeBitError, ConnectionError):
    """A pipe on a Redis server could not be reached: no server at that address, a failed
    login, a refused command, or (from ``receive()``) a connection lost long enough to
    lose packets."""


class DependencyError(PipeBitError, ImportError):
    """A feature needs an optional package that is not installed (the message says which)."""


class PipeClosedError(PipeBitError):
    """The endpoint was closed (or inherited across ``fork``) and cannot be used."""


class PipeBusyError(PipeBitError):
    """The operation needs the pipe to be idle, but live processes are attached."""


class WorkerError(PipeBitError):
    """A background thread of this endpoint failed; the cause is chained."""


class PipeFormatError(PipeBitError):
    """The shared-memory segment is not a PipeBit pipe this version can read."""


class ModelMismatchError(PipeFormatError, ValueError):
    """The pipe exists with the other model (Safe versus Fast)."""


class CorruptPacketError(PipeFormatError):
    """Bytes read from the pipe do not decode to a valid packet."""


class NumpyMissingError(CorruptPacketError, DependencyError):
    """A packet holds a numpy array, and this receiver cannot import numpy (``pip install 'pipebit[numpy]'``).

    Raised by ``receive()`` once, after the packets it could decode: a packet holding an
    array is lost to this receiver, and only that packet (the others of its record
    arrive, the next call goes on after it).  It is also a :class:`DependencyError`
    (and so an ``ImportError``) naming what to install: a receiver that may meet
    arrays needs numpy, like their sender."""


class PipeBitWarning(UserWarning):
    """Base class of the warnings PipeBit emits."""


class UndeliveredPacketsWarning(PipeBitWarning):
    """A sender was closed (or the interpreter exited) before all packets reached the pipe."""
