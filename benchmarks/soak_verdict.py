"""The soak's verdict: lost, corrupt and disordered packets, memory growth, crashes and leftovers.

Lost means a packet missing inside any receiver's run of a sender, or, for
the anchors (attached before every sender and drained at the end), missing at
either end of what the pipe got from a sender.  A killed sender's tail -- what
it called ``send()`` for that never reached the pipe -- is reported, not lost.
Growth is counted after a warm-up, for every long-lived process and for this
pipe's objects in /dev/shm.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from soak_orchestrator import MB, Ending, Soak, Worker, shm_bytes
from soak_worker import NOTHING

import pipebit


def verdict(soak: Soak, ending: Ending) -> dict[str, Any]:
    """Every check of the soak, from what the workers reported and the samples; prints the summary and returns it."""
    args = soak.args
    everyone, stop_at = ending.everyone, ending.stop_at
    leftover_alive, end_waiting = ending.leftover_alive, ending.end_waiting
    senders = [w for w in everyone if w.role == "sender"]
    receivers = [w for w in everyone if w.role in ("anchor", "churn")]
    anchors = [w for w in receivers if w.role == "anchor"]

    def report(worker: Worker) -> dict[str, Any]:
        return worker.final or worker.progress or NOTHING

    reports = [report(w) for w in receivers]
    folded = soak.folded
    corrupt = sum(r["corrupt"] for r in reports) + folded["corrupt"]
    disorder = sum(r["disorder"] for r in reports) + folded["disorder"]
    problems = ([p for r in reports for p in r["problems"]] + folded["problems"])[:10]
    # What the pipe got from each sender id: all of it for a sender stopped cleanly;
    # for a killed one, up to the last packet any receiver saw.
    delivered_end: dict[int, int] = {}
    tails: dict[int, int] = {}
    for sender in senders:
        seen = [r["senders"].get(str(sender.key), [0, sender.start_seq - 1, 0])[1] for r in reports]
        seen.append(soak.folded_last.get(str(sender.key), sender.start_seq - 1))
        last_seen = max([sender.start_seq - 1, *seen]) + 1
        if sender.killed:
            delivered_end[sender.key] = last_seen
            tails[sender.key] = (sender.sent_at_kill or sender.start_seq) - last_seen
        else:
            delivered_end[sender.key] = (sender.final or {}).get("next_seq", last_seen)
    # Lost: packets missing inside any receiver's run of a sender, plus, for the anchors
    # (attached before every sender and drained at the end), any missing at either end.
    lost = sum(r["missing"] for r in reports) + folded["missing"]
    lost_detail = [f"{w.role} {w.key}: {report(w)['missing']} missing" for w in receivers if report(w)["missing"]]
    lost_detail += soak.folded_detail
    for anchor in anchors:
        runs = report(anchor)["senders"]
        for sender in senders:
            end = delivered_end[sender.key]
            if end == sender.start_seq:
                continue  # nothing of it reached the pipe
            first, last, count = runs.get(str(sender.key), [end, end - 1, 0])
            short = max(first - sender.start_seq, 0) + max(end - 1 - last, 0)
            if short:
                lost += short
                lost_detail.append(
                    f"anchor {anchor.key}, sender {sender.key}: got {first}..{last} ({count}), "
                    f"pipe had {sender.start_seq}..{end - 1}"
                )
    negative_tails = {sid: t for sid, t in tails.items() if t < 0}
    warm = min(max(3.0, args.seconds * 0.1), 30.0)
    running = [s for s in soak.samples if not s.get("after_stop")]
    growth = {}
    for worker in everyone:
        after = [v for t, v in worker.rss if t >= warm]
        if worker.role != "churn" and not worker.killed and len(after) >= 2:
            growth[f"{worker.role}-{worker.key}"] = max(after) - after[0]
    orchestrator = [s["rss_orchestrator"] for s in running if s["t"] >= warm]
    if len(orchestrator) >= 2:
        growth["orchestrator"] = max(orchestrator) - orchestrator[0]
    rss_growth = max(growth.values(), default=0)
    shm_series = [s["shm_pipe"] for s in running if s["t"] >= warm]
    shm_growth = (max(shm_series) - shm_series[0]) if len(shm_series) >= 2 else 0
    used_series = [s["shm_used"] for s in running if s["t"] >= warm] or [0]
    rss_series = [s["rss_total"] for s in running if s["t"] >= warm] or [0]
    moved = sum(report(a)["packets"] for a in anchors) // max(len(anchors), 1)
    received = sum(r["packets"] for r in reports) + folded["packets"]

    pipebit.remove(soak.name, force=True)
    leftovers = shm_bytes(soak.name)
    shutil.rmtree(soak.tmp, ignore_errors=True)

    failures = []
    if lost:
        failures.append(f"{lost} packets lost by attached receivers")
    if corrupt:
        failures.append(f"{corrupt} corrupt packets")
    if disorder:
        failures.append(f"{disorder} packets out of order or duplicated")
    if negative_tails:
        failures.append(f"receivers got packets a killed sender never sent: {negative_tails}")
    if soak.crashed:
        failures.append(f"crashes: {soak.crashed[:3]}")
    if moved == 0:
        failures.append("no packet moved")
    if rss_growth > args.max_rss_growth * MB:
        failures.append(f"RSS grew {rss_growth / MB:.1f} MB after warm-up (limit {args.max_rss_growth} MB)")
    if shm_growth > args.max_shm_growth * MB:
        failures.append(f"/dev/shm grew {shm_growth / MB:.1f} MB after warm-up (limit {args.max_shm_growth} MB)")
    if leftover_alive:
        failures.append(f"{leftover_alive} participants still alive after every worker ended")
    if leftovers:
        failures.append(f"{leftovers} bytes left in /dev/shm after removing the pipe")
    warnings = []
    if end_waiting:
        warnings.append(f"writers_waiting is {end_waiting} with no sender left (a sender was killed while waiting)")

    summary = {
        "name": soak.name,
        "seconds": args.seconds,
        "seed": args.seed,
        "packets_moved": moved,
        "packets_received": received,
        "packets_lost": lost,
        "lost_detail": lost_detail[:10],
        "corrupt": corrupt,
        "disorder": disorder,
        "problems": problems,
        "undelivered_tails": {str(k): v for k, v in tails.items()},
        "senders": len(senders),
        **{k.replace(" ", "_"): v for k, v in soak.events.items()},
        "warm_up_s": warm,
        "rss_growth_bytes": rss_growth,
        "rss_growth_by_process": growth,
        "rss_total_min_max": [min(rss_series), max(rss_series)],
        "shm_growth_bytes": shm_growth,
        "shm_pipe_min_max": [min(shm_series, default=0), max(shm_series, default=0)],
        "shm_used_min_max": [min(used_series), max(used_series)],
        "writers_waiting_at_end": end_waiting,
        "stop_phase_s": time.monotonic() - stop_at,
        "crashed": soak.crashed,
        "failures": failures,
        "warnings": warnings,
        "verdict": "PASS" if not failures else "FAIL",
    }
    print_summary(summary)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    """The summary as the soak prints it: a row per figure, problems, then the verdict line."""
    tails = s["undelivered_tails"]
    rows = [
        ("duration", f"{s['seconds']:g} s (+{s['stop_phase_s']:.1f} s to stop and drain), seed {s['seed']}"),
        ("packets moved", f"{s['packets_moved']:,} (through the pipe, as an anchor saw them)"),
        ("packets received", f"{s['packets_received']:,} (all receivers)"),
        ("packets lost", f"{s['packets_lost']} (attached receivers)"),
        ("corrupt / disordered", f"{s['corrupt']} / {s['disorder']}"),
        ("senders", f"{s['senders']} ({s['senders_killed']} SIGKILLed and replaced)"),
        ("undelivered tails", f"{sum(tails.values()):,} packets sent by killed senders, not in the pipe: {tails}"),
        (
            "receivers",
            f"{s['receivers_joined']} joined, {s['receivers_left']} left, {s['receivers_killed']} SIGKILLed",
        ),
        (
            "RSS after warm-up",
            f"total {s['rss_total_min_max'][0] / MB:.1f}..{s['rss_total_min_max'][1] / MB:.1f} MB; "
            f"largest growth of a long-lived process {s['rss_growth_bytes'] / MB:+.1f} MB",
        ),
        (
            "/dev/shm after warm-up",
            f"this pipe {s['shm_pipe_min_max'][0] / 1024:.0f}..{s['shm_pipe_min_max'][1] / 1024:.0f} KB "
            f"(growth {s['shm_growth_bytes'] / 1024:+.0f} KB); whole mount "
            f"{s['shm_used_min_max'][0] / MB:.1f}..{s['shm_used_min_max'][1] / MB:.1f} MB",
        ),
        ("writers_waiting at end", str(s["writers_waiting_at_end"])),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for problem in s["problems"]:
        print(f"problem: {problem}")
    for detail in s["lost_detail"]:
        print(f"lost: {detail}")
    for warning in s["warnings"]:
        print(f"warning: {warning}")
    reasons = "; ".join(s["failures"])
    print(
        f"VERDICT: {s['verdict']}"
        + (f" ({reasons})" if reasons else "")
        + f" - {s['packets_moved']:,} packets, {s['packets_lost']} lost, {s['corrupt']} corrupt, "
        f"RSS {s['rss_growth_bytes'] / MB:+.1f} MB, shm {s['shm_growth_bytes'] / MB:+.2f} MB",
        flush=True,
    )
