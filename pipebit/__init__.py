"""PipeBit: named pipelines between processes, over shared memory (or a Redis server).

A pipe is named by a plain string.  One side sends lists, the other receives
them::

    import pipebit

    sender = pipebit.SafeSender("data_pipe", 0)
    sender.send([1, 2, 3])

    receiver = pipebit.SafeReceiver("data_pipe", 0)   # in another process
    receiver.receive()                                # -> [[1, 2, 3]]

The Safe pipeline (``SafeSender``/``SafeReceiver``, also ``BitPackSender``/
``BitPackReceiver``) is lossless and ordered.  See the README for the details
and ``docs/format.md`` for the shared-memory layout.  A name that is a Redis URL
(``"redis://host:6379/0/data_pipe"``), or a plain name while the environment
variable ``PIPEBIT_URL`` names a Redis server, puts the pipe on that server
(``pip install "pipebit[redis]"``; see ``docs/redis.md``).
"""

from ._limits import DEFAULT_CAPACITY
from ._stats import EndpointStats, GroupStats, Participant, PipeStats
from ._transport import list_pipes, pipe_stats, remove, remove_group
from .errors import (
    ArgumentTypeError,
    CapacityMismatchError,
    CorruptPacketError,
    DependencyError,
    InvalidArgumentError,
    InvalidNameError,
    ModelMismatchError,
    NoSpaceError,
    NumpyMissingError,
    PacketSizeError,
    PacketTypeError,
    PipeBitError,
    PipeBitWarning,
    PipeBusyError,
    PipeClosedError,
    PipeFormatError,
    PipeNotFoundError,
    PipePermissionError,
    PipeTimeoutError,
    TransportError,
    UndeliveredPacketsWarning,
    WorkerError,
)
from .fast import FastReceiver, FastSender
from .safe import BitPackReceiver, BitPackSender, SafeReceiver, SafeSender

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CAPACITY",
    "ArgumentTypeError",
    "BitPackReceiver",
    "BitPackSender",
    "CapacityMismatchError",
    "CorruptPacketError",
    "DependencyError",
    "EndpointStats",
    "FastReceiver",
    "FastSender",
    "GroupStats",
    "InvalidArgumentError",
    "InvalidNameError",
    "ModelMismatchError",
    "NoSpaceError",
    "NumpyMissingError",
    "PacketSizeError",
    "PacketTypeError",
    "Participant",
    "PipeBitError",
    "PipeBitWarning",
    "PipeBusyError",
    "PipeClosedError",
    "PipeFormatError",
    "PipeNotFoundError",
    "PipePermissionError",
    "PipeStats",
    "PipeTimeoutError",
    "SafeReceiver",
    "SafeSender",
    "TransportError",
    "UndeliveredPacketsWarning",
    "WorkerError",
    "__version__",
    "list_pipes",
    "pipe_stats",
    "remove",
    "remove_group",
]
