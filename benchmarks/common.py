"""What the benchmark modules share: an invocation's settings, one measurement, and small helpers.

The leaf of benchmarks/: it imports nothing else from this folder, so that the
scenarios, the child processes, the report and the command-line scripts can all
import it without a circle.  Everything here is written once for all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import msgpack

import pipebit


# ------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Sizes of one invocation; ``--quick`` shrinks the long ones."""

    quick: bool
    runs: int
    small_count: int = 200_000
    fanout_count: int = 100_000
    fanout_receivers: int = 4
    mib_count: int = 1000
    round_trips: int = 20_000
    latest_seconds: float = 2.0
    memory_seconds: float = 10.0
    warmup_small: int = 2000
    warmup_mib: int = 20
    warmup_round_trips: int = 1000
    warmup_latest_s: float = 0.2
    slow_consumer_s: float = 0.001  # the memory scenario's receiver handles ~1000 packets/s
    redis_count: int = 300_000  # packets per run over Redis (and shared memory beside it)


def settings_for(quick: bool, runs: int | None) -> Settings:
    """The settings of quick mode (1 run, shorter scenarios) or of full mode (5 runs)."""
    if quick:
        return Settings(
            quick=True,
            runs=runs or 1,
            fanout_count=30_000,
            mib_count=300,
            round_trips=5000,
            latest_seconds=1.0,
            memory_seconds=3.0,
            redis_count=50_000,
        )
    return Settings(quick=False, runs=runs or 5)


@dataclass
class Measurement:
    """One peer, one run of one scenario: its numbers and what its checks found."""

    scenario: str
    peer: str
    variant: str
    run: int
    values: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def case(self) -> str:
        return f"{self.peer}, {self.variant}" if self.variant else self.peer


# ----------------------------------------------------------------- statistics
def percentile(sorted_values: Any, fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (``nan`` if empty).

    ``fraction=0.5`` is the median the scripts print: the upper middle value
    when the count is even.
    """
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))])


# ---------------------------------------------------------------- the machine
def memory_status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` and ``RssShmem`` of a process, in bytes.

    A process that has exited but not been reaped has none of them: the dict is
    then empty.  ``OSError`` if there is no such process.
    """
    status: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssShmem"):
                status[key] = int(value.split()[0]) * 1024
    return status


def load_average() -> str:
    """The load averages over 1, 5 and 15 minutes, as the environment header shows them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def msgpack_version() -> str:
    """The version of the MessagePack library PipeBit encodes with."""
    return ".".join(map(str, msgpack.version))


# -------------------------------------------------------------------- cleanup
def remove_pipe(name: str) -> None:
    """Remove pipe ``name`` and all it holds in /dev/shm, whoever is attached; one already gone is fine."""
    try:
        pipebit.remove(name, force=True)
    except pipebit.PipeNotFoundError:
        pass
