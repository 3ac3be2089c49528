"""What the benchmark modules share: an invocation's settings, one measurement, and small helpers.

The leaf of benchmarks/: it imports nothing else from this folder, so that the
scenarios, the child processes, the report and the command-line scripts can all
import it without a circle.  Everything here is written once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
