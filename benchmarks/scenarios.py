"""The measured scenarios, run from the parent: one ``measure_*`` function per scenario.

Each function makes its channels, starts the child processes of :mod:`workers`
through a :class:`Harness` (receivers first, then the sender), collects what
they report and turns it into a :class:`~common.Measurement`: the numbers, and
a problem noted for every loss, reordering, corruption, failure or stall the
checks found.  :func:`scenario_steps` lists what one run of a scenario measures;
``bench.py`` runs them and ``report.py`` shows them.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue
import sys
import threading
import time
from functools import partial
from typing import Any, Callable

import peers
import workers
from common import Measurement, Settings, memory_status, percentile

import pipebit

THROUGHPUT_PEERS = (peers.PIPEBIT_SAFE, peers.MP_QUEUE, peers.MP_PIPE, peers.ZMQ_PUSH_PULL, peers.FASTER_FIFO)
FANOUT_PEERS = (peers.PIPEBIT_SAFE, peers.MP_QUEUE, peers.ZMQ_PUB_SUB, peers.ZMQ_PUB_SUB_RAISED, peers.FASTER_FIFO)
BANDWIDTH_PEERS = THROUGHPUT_PEERS
LATENCY_PEERS = (peers.PIPEBIT_SAFE, peers.PIPEBIT_SLEEP, peers.PIPEBIT_SPIN, *THROUGHPUT_PEERS[1:])
LATEST_PEERS = (peers.PIPEBIT_FAST, peers.ZMQ_CONFLATE)
LATEST_READERS = (0, 1, 3)
MEMORY_PEERS = (peers.PIPEBIT_SAFE, peers.MP_QUEUE, peers.ZMQ_PUSH_PULL, peers.FASTER_FIFO)

SMALL_CAPACITY = pipebit.DEFAULT_CAPACITY  # 4 MiB: PipeBit's default ring, and faster-fifo's buffer
MIB_CAPACITY = 64 << 20  # for 1 MiB packets: room for 64 of them in the ring (and faster-fifo's buffer)
MEMORY_CAP = 3 << 30  # a sender past this RSS is stopped early: the point is made
WATCHDOG_S = 180.0  # a measurement still running after this long has stalled


class HarnessError(Exception):
    """A measurement that could not finish: a child failed or stalled."""


class Harness:
    """Starts child processes, watches over them, and hands out unique channel names."""

    def __init__(self, settings: Settings, workdir: str) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.workdir = workdir
        self._serial = itertools.count()

    def channel(self, peer: str, receivers: int, capacity: int) -> peers.Channel:
        """A new channel with a name no earlier run used."""
        name = f"bench-{os.getpid()}-{next(self._serial)}"
        return peers.make_channel(self.ctx, peer, name, receivers=receivers, capacity=capacity, workdir=self.workdir)

    def start(self, jobs: list[workers.Job], results: Any) -> list[Any]:
        """Start one child per ``(function, args)``, in order (receivers first)."""
        processes = []
        for job in jobs:
            process = self.ctx.Process(target=workers.child_main, args=(job, results), daemon=True)
            process.start()
            processes.append(process)
        return processes

    @staticmethod
    def stop(processes: list[Any]) -> None:
        """Join children that are finishing; terminate any that are not."""
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    def run(self, jobs: list[workers.Job]) -> list[workers.Result]:
        """Run the children to completion and return their results; :class:`HarnessError` if they fail."""
        results = self.ctx.Queue()
        processes = self.start(jobs, results)
        collected: list[workers.Result] = []
        deadline = time.monotonic() + WATCHDOG_S
        try:
            while len(collected) < len(jobs):
                try:
                    result = results.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise HarnessError(f"stalled: stopped after {WATCHDOG_S:.0f} s") from None
                    if not any(process.is_alive() for process in processes):
                        raise HarnessError("children exited without reporting") from None
                    continue
                if result["role"] == "error":
                    raise HarnessError(f"a child failed: {root_cause(result, results)}")
                collected.append(result)
        finally:
            if len(collected) < len(jobs):
                for process in processes:
                    process.terminate()
            self.stop(processes)
            results.close()
        return collected

    def run_measured(
        self, jobs: list[workers.Job], measurement: Measurement, channels: list[peers.Channel]
    ) -> list[workers.Result] | None:
        """:meth:`run`, with a failure noted in ``measurement`` (then ``None``); ``channels`` discarded either way."""
        try:
            return self.run(jobs)
        except HarnessError as exc:
            measurement.problems.append(str(exc))
            return None
        finally:
            for channel in channels:
                peers.discard_channel(channel)

    def run_one_to_many(
        self,
        receive: Callable[..., workers.Result],
        send: Callable[..., workers.Result],
        common: dict[str, Any],
        receivers: int,
        measurement: Measurement,
    ) -> tuple[workers.Result, list[workers.Result]] | None:
        """``receivers`` children running ``receive`` (each given its ``index``), then one running ``send``.

        All are given ``common``, whose ``channel`` is discarded afterwards.  Returns
        the sender's result and the receivers', or ``None`` after noting a failure.
        """
        jobs = [workers.Job(receive, {**common, "index": index}) for index in range(receivers)]
        jobs.append(workers.Job(send, common))
        results = self.run_measured(jobs, measurement, [common["channel"]])
        if results is None:
            return None
        sender = next(r for r in results if r["role"] == "sender")
        return sender, [r for r in results if r["role"] != "sender"]


def root_cause(first: workers.Result, results: Any) -> str:
    """The error that started it: a failing child breaks the barrier, and the others then fail too.

    Waits briefly for the other children's reports, prints every traceback, and
    returns the first error that is not a broken barrier.
    """
    errors = [first]
    with contextlib.suppress(queue.Empty):
        while True:
            report = results.get(timeout=2.0)
            if report["role"] == "error":
                errors.append(report)
    for error in errors:
        print(error["traceback"], file=sys.stderr)
    causes = [e["error"] for e in errors if not e["error"].startswith("BrokenBarrierError")]
    return (causes or [first["error"]])[0]


# ------------------------------------------------------------------ scenarios
def measure_stream(
    harness: Harness, scenario: str, peer: str, run: int, *, kind: str, count: int, receivers: int
) -> Measurement:
    """One sender, ``receivers`` receivers, ``count`` packets of ``kind``: throughput per receiver."""
    s = harness.settings
    capacity = SMALL_CAPACITY if kind == workers.SMALL else MIB_CAPACITY
    warmup = s.warmup_small if kind == workers.SMALL else s.warmup_mib
    measurement = Measurement(scenario, peer, "", run)
    channel = harness.channel(peer, receivers, capacity)
    barrier = harness.ctx.Barrier(receivers + 1)
    acks = harness.ctx.Semaphore(0)
    common = {"channel": channel, "kind": kind, "count": count, "warmup": warmup, "barrier": barrier, "acks": acks}
    ran = harness.run_one_to_many(workers.stream_receiver, workers.stream_sender, common, receivers, measurement)
    if ran is None:
        return measurement
    sender, receiving = ran
    rates = [r["received"] / ((r["t_last"] - sender["t_first"]) / 1e9) for r in receiving if r["received"]]
    lost = sum(r["lost"] for r in receiving)
    measurement.values["rate"] = min(rates) if len(rates) == receivers else 0.0
    measurement.values["lost"] = lost
    measurement.values["loss_pct"] = 100.0 * lost / (count * receivers)
    if kind == workers.MIB:
        measurement.values["gbps"] = measurement.values["rate"] * workers.MIB_BYTES / 1e9
    if lost and peer not in peers.LOSSY:
        measurement.problems.append(f"LOST {lost} packets")
    disorder = sum(r["disorder"] for r in receiving)
    if disorder:
        measurement.problems.append(f"OUT OF ORDER {disorder} packets")
    if not all(r["intact"] for r in receiving):
        measurement.problems.append("CORRUPT last packet")
    return measurement


def measure_round_trip(harness: Harness, peer: str, run: int) -> Measurement:
    """Ping-pong over two channels: round-trip time percentiles."""
    s = harness.settings
    measurement = Measurement("latency", peer, "", run)
    out = harness.channel(peer, 1, SMALL_CAPACITY)
    back = harness.channel(peer, 1, SMALL_CAPACITY)
    barrier = harness.ctx.Barrier(2)
    jobs = [
        workers.Job(workers.echo, {"channel_in": out, "channel_out": back, "barrier": barrier}),
        workers.Job(
            workers.ping,
            {
                "channel_out": out,
                "channel_back": back,
                "count": s.round_trips,
                "warmup": s.warmup_round_trips,
                "barrier": barrier,
            },
        ),
    ]
    results = harness.run_measured(jobs, measurement, [out, back])
    if results is None:
        return measurement
    pinger = next(r for r in results if r["role"] == "ping")
    measurement.values["p50_us"] = pinger["p50_ns"] / 1e3
    measurement.values["p99_us"] = pinger["p99_ns"] / 1e3
    if pinger["wrong"]:
        measurement.problems.append(f"WRONG REPLY {pinger['wrong']} times")
    return measurement


def measure_latest(harness: Harness, peer: str, readers: int, run: int) -> Measurement:
    """A latest-value sender publishing flat out, with ``readers`` readers polling without pause."""
    s = harness.settings
    measurement = Measurement("latest", peer, readers_label(readers), run)
    channel = harness.channel(peer, readers, 0)
    barrier = harness.ctx.Barrier(readers + 1)
    common = {"channel": channel, "seconds": s.latest_seconds, "warmup_s": s.warmup_latest_s, "barrier": barrier}
    ran = harness.run_one_to_many(workers.latest_reader, workers.latest_sender, common, readers, measurement)
    if ran is None:
        return measurement
    sender, reading = ran
    values = measurement.values
    values["updates_per_s"] = sender["updates"] / (sender["elapsed_ns"] / 1e9)
    values["updates_per_cpu_s"] = sender["updates"] / (sender["cpu_ns"] / 1e9)
    values["sender_cpu_pct"] = 100.0 * sender["cpu_ns"] / sender["elapsed_ns"]
    if reading:
        values["reads_per_s"] = sum(r["reads"] for r in reading) / len(reading) / s.latest_seconds
        values["polls_per_s"] = sum(r["polls"] for r in reading) / len(reading) / s.latest_seconds
        ages = sorted(r["age_p50_ns"] for r in reading)
        values["age_p50_us"] = percentile(ages, 0.5) / 1e3
        values["age_p99_us"] = max(r["age_p99_ns"] for r in reading) / 1e3
    backwards = sum(r["backwards"] for r in reading)
    if backwards:
        measurement.problems.append(f"WENT BACKWARDS {backwards} times")
    if any(r["reads"] == 0 for r in reading):
        measurement.problems.append("a reader saw no value")
    return measurement


def readers_label(readers: int) -> str:
    return f"{readers} reader" if readers == 1 else f"{readers} readers"


def measure_memory(harness: Harness, peer: str, run: int) -> Measurement:
    """A sender flat out, a receiver handling ~1000 packets/s: RSS of both, idle and peak.

    This process takes part in the barrier: it reads both children's RSS while
    they are parked after the warm-up (idle), samples the sender's while the
    run lasts, and reads the sender's peak (``VmHWM``) before stopping it.
    """
    s = harness.settings
    measurement = Measurement("memory", peer, "", run)
    channel = harness.channel(peer, 1, SMALL_CAPACITY)
    barrier = harness.ctx.Barrier(3)
    acks = harness.ctx.Semaphore(0)
    progress = harness.ctx.Value("q", 0, lock=False)
    results = harness.ctx.Queue()
    common = {"channel": channel, "warmup": s.warmup_small, "barrier": barrier, "acks": acks}
    jobs = [
        workers.Job(
            workers.memory_receiver, {**common, "seconds": s.memory_seconds, "per_packet_s": s.slow_consumer_s}
        ),
        workers.Job(workers.memory_sender, {**common, "progress": progress}),
    ]
    processes = harness.start(jobs, results)
    receiver_pid, sender_pid = processes[0].pid, processes[1].pid
    try:
        barrier.wait(workers.BARRIER_TIMEOUT_S)  # the receiver is attached; the sender opens
        wait_for(lambda: barrier.n_waiting == 2 or barrier.broken, workers.BARRIER_TIMEOUT_S)
        sender_idle = memory_status(sender_pid)
        receiver_idle = memory_status(receiver_pid)
        barrier.wait(workers.BARRIER_TIMEOUT_S)  # go
        started = time.monotonic()
        peak_anon = sender_idle["RssAnon"]
        outcome: workers.Result | None = None
        while outcome is None:
            try:
                outcome = results.get(timeout=0.1)
            except queue.Empty:
                pass
            status = memory_status(sender_pid)
            peak_anon = max(peak_anon, status["RssAnon"])
            if status["VmRSS"] > MEMORY_CAP:
                measurement.problems.append(f"sender passed {MEMORY_CAP >> 30} GiB: stopped early")
                break
            if time.monotonic() - started > s.memory_seconds + WATCHDOG_S:
                raise HarnessError("stalled")
        elapsed = time.monotonic() - started
        sender_final = memory_status(sender_pid)
        sent = progress.value
    except (HarnessError, threading.BrokenBarrierError, OSError) as exc:
        measurement.problems.append(f"failed: {exc!r}")
        return measurement
    finally:
        for process in processes:
            process.terminate()
        harness.stop(processes)
        results.close()
        peers.discard_channel(channel)
    values = measurement.values
    values["sender_idle_mb"] = sender_idle["VmRSS"] / 1e6
    values["sender_peak_mb"] = sender_final["VmHWM"] / 1e6
    values["sender_growth_mb"] = (sender_final["VmHWM"] - sender_idle["VmRSS"]) / 1e6
    values["sender_anon_growth_mb"] = (peak_anon - sender_idle["RssAnon"]) / 1e6
    values["sender_shmem_mb"] = sender_final["RssShmem"] / 1e6
    values["sent_per_s"] = sent / elapsed
    if outcome is not None and outcome["role"] == "receiver":
        receiver_final = outcome["status"]
        values["receiver_idle_mb"] = receiver_idle["VmRSS"] / 1e6
        values["receiver_peak_mb"] = receiver_final["VmHWM"] / 1e6
        values["receiver_growth_mb"] = (receiver_final["VmHWM"] - receiver_idle["VmRSS"]) / 1e6
        values["received"] = outcome["received"]
        values["backlog"] = max(sent - outcome["received"], 0)
        if outcome["lost"]:
            measurement.problems.append(f"LOST {outcome['lost']} packets")
        if outcome["disorder"]:
            measurement.problems.append(f"OUT OF ORDER {outcome['disorder']} packets")
    elif outcome is not None:
        measurement.problems.append(f"receiver failed: {outcome['error']}")
    return measurement


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` until it holds; :class:`HarnessError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError("children never got ready")
        time.sleep(0.005)


def scenario_steps(harness: Harness, scenario: str) -> list[tuple[str, Callable[[int], Measurement]]]:
    """The measurements one run of ``scenario`` makes: ``(label, function of the run number)``."""
    s = harness.settings
    if scenario == "throughput":
        small = {"kind": workers.SMALL, "count": s.small_count, "receivers": 1}
        return [(peer, partial(measure_stream, harness, scenario, peer, **small)) for peer in THROUGHPUT_PEERS]
    if scenario == "fanout":
        fan = {"kind": workers.SMALL, "count": s.fanout_count, "receivers": s.fanout_receivers}
        return [(peer, partial(measure_stream, harness, scenario, peer, **fan)) for peer in FANOUT_PEERS]
    if scenario == "bandwidth":
        large = {"kind": workers.MIB, "count": s.mib_count, "receivers": 1}
        return [(peer, partial(measure_stream, harness, scenario, peer, **large)) for peer in BANDWIDTH_PEERS]
    if scenario == "latency":
        return [(peer, partial(measure_round_trip, harness, peer)) for peer in LATENCY_PEERS]
    if scenario == "latest":
        return [
            (f"{peer}, {readers_label(readers)}", partial(measure_latest, harness, peer, readers))
            for readers in LATEST_READERS
            for peer in LATEST_PEERS
        ]
    return [(peer, partial(measure_memory, harness, peer)) for peer in MEMORY_PEERS]
