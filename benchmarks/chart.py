"""The chart of ``docs/benchmarks.png``: one panel per scenario, PipeBit beside its peers."""

from __future__ import annotations

import peers
from common import Measurement
from report import rate, summarize

SHORT_NAMES = {
    peers.PIPEBIT_SPIN: "PipeBit Safe\nspin",
    peers.PIPEBIT_SLEEP: "PipeBit Safe\nspin=0",
    peers.ZMQ_PUB_SUB: "zmq PUB/SUB\ndefault HWM",
    peers.ZMQ_PUB_SUB_RAISED: "zmq PUB/SUB\nHWM raised",
    peers.ZMQ_CONFLATE: "zmq\nCONFLATE",
}


def draw(measurements: list[Measurement], path: str) -> None:
    """Six panels, one per scenario: medians as bars, min-max over runs as whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = summarize(measurements)
    panels: list[tuple[str, str, str, bool]] = [
        ("throughput", "rate", "1→1 small packets (packets/s)", False),
        ("fanout", "rate", "1→4 fan-out (packets/s per receiver)", False),
        ("bandwidth", "gbps", "1 MiB packets 1→1 (GB/s)", False),
        ("latency", "p50_us", "round trip p50 (µs, lower is better)", False),
        ("latest", "updates_per_s", "latest value: sender updates/s", False),
        ("memory", "sender_growth_mb", "memory: sender RSS growth (MB, log scale)", True),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(16, 9))
    for axis, (scenario, key, title, log) in zip(axes.flat, panels):
        rows = [s for s in summaries.values() if s.scenario == scenario and s.median(key) is not None]
        axis.set_title(title, fontsize=10)
        if not rows:
            axis.text(0.5, 0.5, "not run", ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            continue
        labels = [SHORT_NAMES.get(row.peer, row.peer) + (f"\n{row.variant}" if row.variant else "") for row in rows]
        medians = [row.median(key) or 0.0 for row in rows]
        spreads = [row.spread(key) or (0.0, 0.0) for row in rows]
        below = [max(m - lo, 0.0) for m, (lo, _) in zip(medians, spreads)]
        above = [max(hi - m, 0.0) for m, (_, hi) in zip(medians, spreads)]
        colors = ["tab:orange" if row.peer.startswith("PipeBit") else "tab:blue" for row in rows]
        positions = range(len(rows))
        if log:
            axis.set_yscale("log")
            medians = [max(m, 0.1) for m in medians]
        axis.bar(positions, medians, color=colors, yerr=[below, above], capsize=3)
        if scenario == "latency":
            p99 = [row.median("p99_us") or 0.0 for row in rows]
            axis.plot(positions, p99, "k_", markersize=14, label="p99")
            axis.legend(fontsize=8)
        if scenario == "fanout":
            for x, row in zip(positions, rows):
                loss = row.median("loss_pct") or 0.0
                if loss:
                    top = medians[x] + above[x]
                    axis.annotate(f"lost {loss:.0f} %", (x, top), ha="center", va="bottom", fontsize=8)
        if scenario == "memory":  # the log scale hides zero: print every value
            for x, row in zip(positions, rows):
                growth = row.median(key) or 0.0
                axis.annotate(f"+{growth:,.1f} MB", (x, medians[x]), ha="center", va="bottom", fontsize=8)
        if key in {"rate", "updates_per_s"}:
            axis.yaxis.set_major_formatter(lambda value, _: rate(value))
        axis.set_xticks(list(positions))
        axis.set_xticklabels(labels, fontsize=7)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("PipeBit vs peers (orange: PipeBit; bars: median, whiskers: min-max over runs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
