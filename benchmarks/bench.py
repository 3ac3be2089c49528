"""PipeBit's benchmark suite: PipeBit against multiprocessing, pyzmq and faster-fifo.

Usage::

    python benchmarks/bench.py              # full: 5 runs of everything (under 15 minutes)
    python benchmarks/bench.py --quick      # 1 run, shorter scenarios (under 2 minutes)
    python benchmarks/bench.py --only latency --only memory --runs 5
    python benchmarks/bench.py --write-docs # also write docs/benchmarks.md and docs/benchmarks.png

Needs ``pip install -e ".[bench]"`` (pyzmq, faster-fifo, matplotlib).  Prints an
environment header and one markdown table per scenario to stdout, progress to
stderr.  Each table shows the median of the runs, the spread, what the checks
found, and PipeBit's ratio to each peer measured in the same invocation.

Every process is a real child process started with the ``spawn`` method; in
each run the peers of a scenario are measured one after the other, so slow
phases of a noisy machine hit all of them.  How each scenario is measured is
described in ``METHOD`` in ``notes.py`` and at the end of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import chart
import floor
import redis_bench
import report
import scenarios
from common import Measurement, Settings, load_average, settings_for

import pipebit

SCENARIOS = ("throughput", "fanout", "bandwidth", "latency", "latest", "memory", "redis", "floor")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark PipeBit against its peers.")
    parser.add_argument("--quick", action="store_true", help="1 run, shorter scenarios (under 2 minutes)")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default: 5, or 1 with --quick)")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md and docs/benchmarks.png")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def measure_redis(settings: Settings) -> str:
    """The Safe pipeline over Redis next to shared memory (see redis_bench.py), or why it was not measured."""
    try:
        return redis_bench.measure(settings.redis_count, settings.runs, with_header=False)
    except (RuntimeError, ImportError) as exc:  # no redis-server, or no redis-py (pipebit.DependencyError)
        return f"Not measured: {exc}."


# What follows this marker line in docs/benchmarks.md is pasted by hand from other scripts: kept as it is.
KEPT_MARKER = "<!-- kept by bench.py --write-docs: results of other scripts -->"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_for(args.quick, args.runs)
    selected = [name for name in SCENARIOS if not args.only or name in args.only]
    environment = report.environment(settings)
    started = time.monotonic()
    measurements: list[Measurement] = []
    redis_section: str | None = None
    floor_section: str | None = None
    workdir = tempfile.mkdtemp(prefix="pipebit-bench-")  # ZeroMQ's ipc:// socket files
    try:
        harness = scenarios.Harness(settings, workdir)
        for scenario in selected:
            if scenario == "redis":
                print(f"[{time.monotonic() - started:6.1f}s] redis: shared memory and Redis", file=sys.stderr)
                redis_section = measure_redis(settings)
                continue
            if scenario == "floor":
                print(f"[{time.monotonic() - started:6.1f}s] floor: send() piece by piece", file=sys.stderr)
                floor_section = floor.report(calls=50_000 if settings.quick else 200_000, rounds=settings.runs + 2)
                continue
            for run in range(1, settings.runs + 1):
                for label, measure in scenarios.scenario_steps(harness, scenario):
                    print(f"[{time.monotonic() - started:6.1f}s] {scenario} run {run}: {label}", file=sys.stderr)
                    measurement = measure(run)
                    if measurement.problems:
                        print(f"    problems: {'; '.join(measurement.problems)}", file=sys.stderr)
                    measurements.append(measurement)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    leftovers = [p.name for p in pipebit.list_pipes() if p.name.startswith(f"bench-{os.getpid()}-")]
    if leftovers:
        print(f"warning: pipes left behind: {leftovers}", file=sys.stderr)
    elapsed = time.monotonic() - started
    at_start = [label for label, _ in environment].index("load average at start")
    environment.insert(
        at_start + 1, ("load average at end", f"{load_average()} (other work on the machine shows here)")
    )
    text = report.render(
        environment, settings, measurements, elapsed, chart="benchmarks.png", redis=redis_section, floor=floor_section
    )
    print(text)
    if args.write_docs:
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
        chart.draw(measurements, os.path.join(docs, "benchmarks.png"))
        path = os.path.join(docs, "benchmarks.md")
        with open(path) as file:  # sections other scripts wrote (asyncio_bench.py) are kept
            _, marker, kept = file.read().partition(KEPT_MARKER)
        with open(path, "w") as file:
            file.write(text + (f"\n{marker}{kept}" if marker else ""))
        print(f"wrote {docs}/benchmarks.md and {docs}/benchmarks.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
