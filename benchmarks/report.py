"""Turning measurements into the report: the environment header, the targets and one table per scenario."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
from dataclasses import dataclass
from typing import Callable

import notes
import peers
from common import Measurement, Settings, load_average, msgpack_version

import pipebit

Format = Callable[[float], str]

TIMES = "\N{MULTIPLICATION SIGN}"  # written as escapes: ruff flags the characters as look-alikes
DASH = "\N{EN DASH}"


def rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def fixed(digits: int) -> Format:
    return lambda value: f"{value:,.{digits}f}"


def ratio(value: float) -> str:
    return f"{value:.2f}{TIMES}" if value < 1 else f"{value:.1f}{TIMES}"


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    format: Format


@dataclass(frozen=True)
class Table:
    """How one scenario is shown: its title, columns, and which column PipeBit's ratios use."""

    title: str
    columns: tuple[Column, ...]
    higher_is_better: bool | None  # None: no ratio column
    note: str


TABLES = {
    "throughput": Table(
        "1. One to one: {small_count:,} small packets",
        (Column("packets/s", "rate", rate),),
        True,
        "End to end: from the first send() to the last packet received, checked in order.",
    ),
    "fanout": Table(
        "2. Fan-out, one to {fanout_receivers}: {fanout_count:,} small packets to every receiver",
        (Column("packets/s per receiver", "rate", rate), Column("lost", "loss_pct", lambda v: f"{v:.1f} %")),
        True,
        "Rate of the slowest receiver, from the first send() to its last packet (delivered packets only). "
        "Lost: share of the packets every receiver should have got.",
    ),
    "bandwidth": Table(
        "3. Bandwidth, one to one: {mib_count:,} packets of 1 MiB",
        (Column("GB/s", "gbps", fixed(2)),),
        True,
        "End to end, 1 GB = 10^9 bytes.",
    ),
    "latency": Table(
        "4. Round trip: {round_trips:,} ping-pongs of a small packet over two channels",
        (Column("p50 µs", "p50_us", fixed(1)), Column("p99 µs", "p99_us", fixed(1))),
        False,
        "One process sends and waits for its packet to come back from an echo process.",
    ),
    "latest": Table(
        "5. Latest value: a sender publishing flat out for {latest_seconds:g} s, readers polling",
        (
            Column("updates/s", "updates_per_s", rate),
            Column("updates per sender CPU-s", "updates_per_cpu_s", rate),
            Column("sender CPU", "sender_cpu_pct", lambda v: f"{v:.0f} %"),
            Column("new values read/s per reader", "reads_per_s", rate),
            Column("age p50 µs", "age_p50_us", fixed(1)),
            Column("age p99 µs", "age_p99_us", fixed(1)),
        ),
        True,
        "Age: from the sender's time.monotonic_ns() stamp in the packet to the reader holding the value. "
        "With 3 readers polling without pause, 4 busy processes share 2 cores: the sender gets a share of a "
        "core, which is why updates per CPU-second of the sender are shown too.",
    ),
    "memory": Table(
        "6. Memory: a sender flat out, a receiver handling ~1000 packets/s, for {memory_seconds:g} s",
        (
            Column("sender idle MB", "sender_idle_mb", fixed(1)),
            Column("sender peak MB", "sender_peak_mb", fixed(1)),
            Column("sender growth MB", "sender_growth_mb", fixed(1)),
            Column("of it heap MB", "sender_anon_growth_mb", fixed(1)),
            Column("receiver idle MB", "receiver_idle_mb", fixed(1)),
            Column("receiver peak MB", "receiver_peak_mb", fixed(1)),
            Column("sent/s", "sent_per_s", rate),
            Column("backlog (packets)", "backlog", lambda v: f"{v:,.0f}"),
        ),
        None,
        "RSS in MB (10^6 bytes). Idle: after the warm-up, before the run. Peak: the kernel's VmHWM. "
        "Growth: peak minus idle; 'of it heap' is the private (RssAnon) part. PipeBit maps its ring whole "
        "when it attaches (its pages were allocated when the pipe was made), so the ring is part of the "
        "idle figure. Backlog: sent but not yet handled by the receiver.",
    ),
}


# ------------------------------------------------------------- environment
def environment(settings: Settings) -> list[tuple[str, str]]:
    """``(label, value)`` pairs describing the machine, the software and the invocation."""
    import zmq

    cpu = "unknown"
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as file:
        memory_kb = int(file.readline().split()[1])
    cores = os.cpu_count() or 0
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{cpu}, {cores} cores ({len(os.sched_getaffinity(0))} usable)"),
        ("memory", f"{memory_kb / 1e6:.1f} GB"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("pipebit", f"{pipebit.__version__} (msgpack {msgpack_version()})"),
        ("pyzmq", f"{zmq.__version__} (libzmq {zmq.zmq_version()})"),
        ("faster-fifo", importlib.metadata.version("faster-fifo")),
        ("mode", f"{'quick' if settings.quick else 'full'}, {settings.runs} run(s), medians"),
        ("load average at start", load_average()),
        (
            "caveat",
            f"a shared, noisy virtual machine with {cores} cores: medians of {settings.runs} run(s); "
            "compare ratios within this page, not absolute numbers across machines",
        ),
    ]


# ------------------------------------------------------------------ summary
@dataclass
class Summary:
    """All runs of one row of a table."""

    scenario: str
    peer: str
    variant: str
    samples: dict[str, list[float]]
    problems: list[str]
    runs: int

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def spread(self, key: str) -> tuple[float, float] | None:
        values = self.samples.get(key)
        return (min(values), max(values)) if values else None

    @property
    def case(self) -> str:
        return f"{self.peer}, {self.variant}" if self.variant else self.peer


def summarize(measurements: list[Measurement]) -> dict[tuple[str, str], Summary]:
    """Group the runs of each ``(scenario, case)``, in the order they were first measured."""
    summaries: dict[tuple[str, str], Summary] = {}
    for m in measurements:
        key = (m.scenario, m.case)
        if key not in summaries:
            summaries[key] = Summary(m.scenario, m.peer, m.variant, {}, [], 0)
        summary = summaries[key]
        summary.runs += 1
        for name, value in m.values.items():
            summary.samples.setdefault(name, []).append(value)
        summary.problems += [f"run {m.run}: {problem}" for problem in m.problems]
    return summaries


def pipebit_row(summaries: dict[tuple[str, str], Summary], scenario: str, variant: str) -> Summary | None:
    for summary in summaries.values():
        if summary.scenario == scenario and summary.variant == variant and summary.peer.startswith("PipeBit"):
            return summary
    return None


def ratio_of(a: Summary | None, b: Summary | None, key: str) -> float | None:
    if a is None or b is None:
        return None
    x, y = a.median(key), b.median(key)
    if x is None or y is None or y == 0:
        return None
    return x / y


# ------------------------------------------------------------------- tables
def scenario_table(scenario: str, settings: Settings, summaries: dict[tuple[str, str], Summary]) -> list[str]:
    table = TABLES[scenario]
    rows = [s for s in summaries.values() if s.scenario == scenario]
    if not rows:
        return []
    headers = ["peer", *(c.header for c in table.columns), "checks"]
    if table.higher_is_better is not None:
        headers.append("PipeBit ÷ peer")
    lines = [f"### {table.title.format(**vars(settings))}", "", table.note, ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    primary = table.columns[0].key
    comparisons = []
    for row in rows:
        cells = [f"**{row.case}**" if row.peer.startswith("PipeBit") else row.case]
        for index, column in enumerate(table.columns):
            value = row.median(column.key)
            cell = "—" if value is None else column.format(value)
            spread = row.spread(column.key)
            if index == 0 and spread is not None and settings.runs > 1:
                cell += f" ({column.format(spread[0])}{DASH}{column.format(spread[1])})"
            cells.append(cell)
        cells.append("; ".join(row.problems) if row.problems else "ok")
        if table.higher_is_better is not None:
            mine = pipebit_row(summaries, scenario, row.variant)
            value = ratio_of(mine, row, primary)
            if row.peer.startswith("PipeBit") or value is None:  # PipeBit's own variants: no ratio
                cells.append("—")
            else:
                cells.append(ratio(value))
                comparisons.append(f"{ratio(value)} {row.case}")
        lines.append("| " + " | ".join(cells) + " |")
    if comparisons:
        mine = pipebit_row(summaries, scenario, rows[0].variant)
        who = mine.peer if mine else "PipeBit"
        measure = table.columns[0].header
        separator = "; " if any(", " in text for text in comparisons) else ", "
        better = "" if table.higher_is_better else ", lower is better"
        lines += ["", f"{who} ({measure}{better}) = {separator.join(comparisons)}."]
    if scenario == "latest":
        lines += ["", *readers_and_sender(summaries)]
    return [*lines, ""]


def readers_and_sender(summaries: dict[tuple[str, str], Summary]) -> list[str]:
    """Does attaching readers slow the sender?  Its rate with 3 readers against its rate with none."""
    lines = []
    for peer in (peers.PIPEBIT_FAST, peers.ZMQ_CONFLATE):
        alone = summaries.get(("latest", f"{peer}, 0 readers"))
        watched = summaries.get(("latest", f"{peer}, 3 readers"))
        wall = ratio_of(watched, alone, "updates_per_s")
        cpu = ratio_of(watched, alone, "updates_per_cpu_s")
        if wall is not None and cpu is not None:
            lines.append(
                f"- {peer} with 3 readers attached: {wall:.0%} of its rate alone by the clock, "
                f"{cpu:.0%} per CPU-second of the sender."
            )
    return lines


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    met: bool | None


def targets(summaries: dict[tuple[str, str], Summary]) -> list[Target]:
    """Each target of the issue, with what was measured and whether it is met."""

    safe, fast = peers.PIPEBIT_SAFE, peers.PIPEBIT_FAST

    def get(scenario: str, case: str) -> Summary | None:
        return summaries.get((scenario, case))

    def versus(
        text: str, scenario: str, peer: str, *, key: str, goal: float, higher: bool = True, mine: str = safe
    ) -> Target:
        a, b = get(scenario, mine), get(scenario, peer)
        value = ratio_of(a, b, key)
        if value is None or a is None or b is None:
            return Target(text, "not measured", None)
        column = TABLES[scenario].columns[0]
        mine, theirs = column.format(a.median(key) or 0.0), column.format(b.median(key) or 0.0)
        measured = f"{ratio(value)} ({mine} vs {theirs} {column.header})"
        met = (value >= goal if higher else value <= goal) and not a.problems
        return Target(text, measured, met)

    found = [
        versus(f"1→1 small: Safe ≥ 8{TIMES} mp.Queue", "throughput", peers.MP_QUEUE, key="rate", goal=8),
        versus(f"1→1 small: Safe ≥ 2.5{TIMES} zmq PUSH/PULL", "throughput", peers.ZMQ_PUSH_PULL, key="rate", goal=2.5),
    ]
    fan = versus(
        f"1→4: Safe ≥ 1.3{TIMES} zmq PUB/SUB (HWM raised), no loss",
        "fanout",
        peers.ZMQ_PUB_SUB_RAISED,
        key="rate",
        goal=1.3,
    )
    mine = get("fanout", safe)
    if mine is not None and fan.met is not None:
        lost = max(mine.samples.get("lost", [0]))
        fan = Target(fan.text, f"{fan.measured}, lost {lost:.0f}", fan.met and lost == 0)
    found.append(fan)
    found.append(versus(f"1 MiB: Safe ≥ 2{TIMES} zmq PUSH/PULL", "bandwidth", peers.ZMQ_PUSH_PULL, key="gbps", goal=2))
    found.append(
        versus(
            f'round trip p50: Safe (default spin="auto", asleep when idle) ≤ 0.7{TIMES} mp.Pipe',
            "latency",
            peers.MP_PIPE,
            key="p50_us",
            goal=0.7,
            higher=False,
        )
    )
    found.append(
        versus(
            f"round trip p50: Safe with spin=0 (every wait a sleep) ≤ 0.7{TIMES} mp.Pipe",
            "latency",
            peers.MP_PIPE,
            key="p50_us",
            goal=0.7,
            higher=False,
            mine=peers.PIPEBIT_SLEEP,
        )
    )

    spin = get("latency", peers.PIPEBIT_SPIN)
    spin_p50 = spin.median("p50_us") if spin else None
    if spin is None or spin_p50 is None:
        found.append(Target("round trip p50, opt-in spin mode ≤ 20 µs", "not measured", None))
    else:
        met = spin_p50 <= 20 and not spin.problems
        found.append(Target("round trip p50, opt-in spin mode ≤ 20 µs", f"{spin_p50:.1f} µs", met))

    three, one = get("latest", f"{fast}, 3 readers"), get("latest", f"{fast}, 1 reader")
    updates = three.median("updates_per_s") if three else None
    if three is None or updates is None:
        found.append(Target("Fast ≥ 1M updates/s, 3 readers attached", "not measured", None))
    else:
        found.append(
            Target(
                "Fast ≥ 1M updates/s, 3 readers attached", f"{rate(updates)}/s", updates >= 1e6 and not three.problems
            )
        )
    age = three.median("age_p50_us") if three else None
    if three is None or age is None:
        found.append(Target("Fast: polling reader sees a new value within 5 µs p50", "not measured", None))
    else:
        single = one.median("age_p50_us") if one else None
        extra = f" (1 reader: {single:.1f} µs)" if single is not None else ""
        met = age <= 5 and not three.problems
        found.append(Target("Fast: polling reader sees a new value within 5 µs p50", f"{age:.1f} µs{extra}", met))

    memory = get("memory", safe)
    growth = memory.median("sender_growth_mb") if memory else None
    if memory is None or growth is None:
        found.append(Target("memory: Safe sender RSS ≤ idle + 5 MB", "not measured", None))
    else:
        heap = memory.median("sender_anon_growth_mb") or 0.0
        found.append(
            Target(
                "memory: Safe sender RSS ≤ idle + 5 MB",
                f"+{growth:.1f} MB (heap +{heap:.1f} MB)",
                growth <= 5 and not memory.problems,
            )
        )
    return found


def render(
    env: list[tuple[str, str]],
    settings: Settings,
    measurements: list[Measurement],
    elapsed: float,
    chart: str,
    *,
    redis: str | None = None,
    floor: str | None = None,
) -> str:
    """The whole report, in markdown: header, targets, one table per scenario, the Redis
    section (its own table, when measured), chart, where the time goes (with the floor
    table, when measured), method."""
    summaries = summarize(measurements)
    minutes, seconds = divmod(round(elapsed), 60)
    lines = [
        "# PipeBit benchmarks",
        "",
        "Generated by `python benchmarks/bench.py"
        + (" --quick" if settings.quick else "")
        + f"` in {minutes} min {seconds} s. PipeBit against `multiprocessing.Queue`, `multiprocessing.Pipe`, "
        "pyzmq over `ipc://` and faster-fifo, all measured in the same invocation.",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in env),
        "",
        "## Targets",
        "",
        notes.TARGET_NOTE,
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]
    for target in targets(summaries):
        verdict = "—" if target.met is None else ("yes" if target.met else "**no**")
        lines.append(f"| {target.text} | {target.measured} | {verdict} |")
    lines += ["", "## Results", ""]
    for scenario in TABLES:
        lines += scenario_table(scenario, settings, summaries)
    if redis is not None:
        lines += ["### 7. Over Redis: the Safe pipeline on a Redis server on loopback, beside shared memory", ""]
        lines += [notes.REDIS_NOTE, "", redis, ""]
    lines += [f"![PipeBit benchmarks chart]({chart})", "", "## Where PipeBit's time and memory go", "", notes.COSTS]
    if floor is not None:
        lines += [floor]
    lines += ["## Method", ""]
    lines.append(
        notes.METHOD.format(
            warmup_small=settings.warmup_small,
            warmup_mib=settings.warmup_mib,
            warmup_round_trips=settings.warmup_round_trips,
            idle=peers.IDLE_TIMEOUT_S,
            spin=peers.SPIN_S,
            spin_us=peers.SPIN_S * 1e6,
            runs=settings.runs,
        )
    )
    return "\n".join(lines)
