"""What the child processes run.  Every function here runs in its own spawned process.

Each scenario has the same rhythm, kept in step by a ``multiprocessing.Barrier``:

1. receivers open their ends (PipeBit receivers with ``start="new"``), then wait;
2. the sender opens its end (so no receiver can miss the first packet), and
   every process warms up (see :func:`warm_up_sender`);
3. everyone waits until all are ready, and only then does the clock start;
4. the measured part; receivers check count and order of everything they get;
5. everyone waits until all are done, then closes.

Times that are compared across processes come from ``time.monotonic_ns()``:
on Linux ``CLOCK_MONOTONIC`` is one clock for the whole system, so a stamp
taken in the sender can be subtracted from one taken in a receiver.  Times
within one process (round trips) use ``time.perf_counter_ns()``.
"""

from __future__ import annotations

import time
import traceback
from array import array
from dataclasses import dataclass
from typing import Any, Callable

import peers
from common import memory_status, percentile

Result = dict[str, Any]

SMALL = "small"  # the README's packet: [i, i + 1, i + 2, i + 3, i + 4]
MIB = "mib"  # [i, <1 MiB of bytes>]
MIB_BYTES = 1 << 20
PAYLOAD = bytes(range(256)) * (MIB_BYTES // 256)

# Markers in a packet's first element; measured packets count up from 0.
WARMUP = -1
END_WARMUP = -2
STOP = -3

BARRIER_TIMEOUT_S = 120.0


def make_packet(kind: str, i: int) -> list[Any]:
    """The packet number ``i`` of ``kind`` (the measured loops build theirs inline)."""
    if kind == SMALL:
        return [i, i + 1, i + 2, i + 3, i + 4]
    return [i, PAYLOAD]


@dataclass
class Job:
    """What one child process runs: ``body(**kwargs)``."""

    body: Callable[..., Result | None]
    kwargs: dict[str, Any]


def child_main(job: Job, results: Any) -> None:
    """Run ``job`` and report its result (or its error) to the parent."""
    try:
        result = job.body(**job.kwargs)
    except BaseException as exc:
        job.kwargs["barrier"].abort()  # the others stop waiting for us
        results.put({"role": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return
    if result is not None:
        results.put(result)


# ------------------------------------------------------------------ warm-up
def warm_up_sender(sender: Any, kind: str, count: int, acks: Any, receivers: int) -> None:
    """Send ``count`` warm-up packets, more until every receiver has acknowledged, then a marker.

    The extra packets are for ZeroMQ PUB/SUB, whose subscribers miss whatever is
    published before their subscription reaches the publisher ("slow joiners");
    for the other peers they are a few more warm-up packets.  Every peer goes
    through the same handshake.
    """
    for _ in range(count):
        sender.send(make_packet(kind, WARMUP))
    acknowledged = 0
    while acknowledged < receivers:
        if acks.acquire(timeout=0.05):
            acknowledged += 1
        else:
            for _ in range(max(1, count // 10)):
                sender.send(make_packet(kind, WARMUP))
    sender.send(make_packet(kind, END_WARMUP))


def warm_up_receiver(receiver: Any, count: int, acks: Any) -> None:
    """Receive warm-up packets: acknowledge after ``count``, return at the end marker."""
    seen = 0
    acknowledged = False
    while True:
        batch = receiver.recv()
        if not batch and acknowledged:
            return  # a lossy peer dropped the end marker; the sender is waiting for us
        for packet in batch:
            if packet[0] == END_WARMUP:
                return
            seen += 1
        if not acknowledged and seen >= count:
            acks.release()
            acknowledged = True


# --------------------------------------------------- streams: 1->1, 1->N, 1 MiB
def stream_sender(*, channel: peers.Channel, kind: str, count: int, warmup: int, barrier: Any, acks: Any) -> Result:
    """Send ``count`` packets as fast as ``send()`` allows; report when the first left."""
    barrier.wait(BARRIER_TIMEOUT_S)  # every receiver is attached
    sender = peers.open_sender(channel)
    warm_up_sender(sender, kind, warmup, acks, channel.receivers)
    barrier.wait(BARRIER_TIMEOUT_S)  # everyone is warm
    send = sender.send
    t_first = time.monotonic_ns()
    if kind == SMALL:
        for i in range(count):
            send([i, i + 1, i + 2, i + 3, i + 4])
    else:
        payload = PAYLOAD
        for i in range(count):
            send([i, payload])
    t_sent = time.monotonic_ns()
    barrier.wait(BARRIER_TIMEOUT_S)  # every receiver is done
    sender.close()
    return {"role": "sender", "t_first": t_first, "t_sent": t_sent}


def stream_receiver(
    *, channel: peers.Channel, index: int, kind: str, count: int, warmup: int, barrier: Any, acks: Any
) -> Result:
    """Receive until packet ``count - 1`` arrives (or a lossy peer falls silent), checking order.

    A packet whose number is ahead of the expected one means packets were lost;
    one behind it means a duplicate or a reordering.  The last packet is also
    compared in full with what was sent.
    """
    receiver = peers.open_receiver(channel, index)
    barrier.wait(BARRIER_TIMEOUT_S)  # attached before the sender opens
    warm_up_receiver(receiver, warmup, acks)
    barrier.wait(BARRIER_TIMEOUT_S)  # everyone is warm: the sender starts now
    recv = receiver.recv
    expected = received = lost = disorder = 0
    t_last = 0
    last: list[Any] = []
    while expected < count:
        batch = recv()
        if not batch:
            break  # only lossy peers return nothing: silent for peers.IDLE_TIMEOUT_S
        t_last = time.monotonic_ns()
        # The order check is inline here and in memory_receiver, not a shared function:
        # a call per packet (most peers hand out one per recv()) would be part of what is measured.
        for packet in batch:
            number = packet[0]
            if number != expected:
                if number < expected:
                    disorder += 1
                    continue
                lost += number - expected
            expected = number + 1
        received += len(batch)
        last = batch[-1]
    lost += count - expected  # a tail that never came
    intact = not last or last == make_packet(kind, last[0])
    barrier.wait(BARRIER_TIMEOUT_S)
    receiver.close()
    return {
        "role": "receiver",
        "index": index,
        "received": received,
        "lost": lost,
        "disorder": disorder,
        "intact": intact,
        "t_last": t_last,
    }


# ----------------------------------------------------------------- round trip
def ping(*, channel_out: peers.Channel, channel_back: peers.Channel, count: int, warmup: int, barrier: Any) -> Result:
    """Send a packet, wait for it to come back, ``warmup + count`` times; time each round trip."""
    receiver = peers.open_receiver(channel_back, 0)
    barrier.wait(BARRIER_TIMEOUT_S)  # both receivers are attached
    sender = peers.open_sender(channel_out)
    barrier.wait(BARRIER_TIMEOUT_S)  # both senders are open
    samples = array("q")
    wrong = 0
    for i in range(warmup + count):
        packet = [i, i + 1, i + 2, i + 3, i + 4]
        start = time.perf_counter_ns()
        sender.send(packet)
        reply = receiver.recv()
        elapsed = time.perf_counter_ns() - start
        if reply != [packet]:
            wrong += 1
        if i >= warmup:
            samples.append(elapsed)
    sender.send(make_packet(SMALL, STOP))
    barrier.wait(BARRIER_TIMEOUT_S)
    sender.close()
    receiver.close()
    ordered = sorted(samples)
    return {
        "role": "ping",
        "count": len(ordered),
        "wrong": wrong,
        "p50_ns": percentile(ordered, 0.50),
        "p99_ns": percentile(ordered, 0.99),
    }


def echo(*, channel_in: peers.Channel, channel_out: peers.Channel, barrier: Any) -> Result:
    """Send back every packet received, until the stop marker."""
    receiver = peers.open_receiver(channel_in, 0)
    barrier.wait(BARRIER_TIMEOUT_S)
    sender = peers.open_sender(channel_out)
    barrier.wait(BARRIER_TIMEOUT_S)
    echoed = 0
    running = True
    while running:
        for packet in receiver.recv():
            if packet[0] == STOP:
                running = False
                break
            sender.send(packet)
            echoed += 1
    barrier.wait(BARRIER_TIMEOUT_S)
    sender.close()
    receiver.close()
    return {"role": "echo", "echoed": echoed}


# --------------------------------------------------------------- latest value
def latest_sender(*, channel: peers.Channel, seconds: float, warmup_s: float, barrier: Any) -> Result:
    """Publish ``[i, send time, ...]`` as fast as possible for ``seconds``."""
    barrier.wait(BARRIER_TIMEOUT_S)  # readers are attached
    sender = peers.open_sender(channel)
    barrier.wait(BARRIER_TIMEOUT_S)  # readers start polling
    send = sender.send
    until = time.monotonic_ns() + int(warmup_s * 1e9)
    while (now := time.monotonic_ns()) < until:
        send([WARMUP, now, 0, 0, 0])
    barrier.wait(BARRIER_TIMEOUT_S)  # the measured window starts
    start = time.monotonic_ns()
    cpu_start = time.process_time_ns()
    until = start + int(seconds * 1e9)
    i = 0
    while (now := time.monotonic_ns()) < until:
        send([i, now, i + 2, i + 3, i + 4])
        i += 1
    elapsed = time.monotonic_ns() - start
    cpu = time.process_time_ns() - cpu_start
    barrier.wait(BARRIER_TIMEOUT_S)  # readers are done
    sender.close()
    return {"role": "sender", "updates": i, "elapsed_ns": elapsed, "cpu_ns": cpu}


def latest_reader(*, channel: peers.Channel, index: int, seconds: float, warmup_s: float, barrier: Any) -> Result:
    """Poll without pause for ``seconds``; for each new value, note how old it is.

    The age is the time from the sender's stamp (taken just before ``send()``)
    to the moment ``poll()`` returned the value here.  Values must only go forward.
    """
    reader = peers.open_reader(channel, index)
    barrier.wait(BARRIER_TIMEOUT_S)
    barrier.wait(BARRIER_TIMEOUT_S)
    poll = reader.poll
    until = time.monotonic() + warmup_s
    while time.monotonic() < until:
        poll()
    barrier.wait(BARRIER_TIMEOUT_S)
    ages = array("q")
    polls = reads = backwards = 0
    newest = -1
    until_ns = time.monotonic_ns() + int(seconds * 1e9)
    while True:
        batch = poll()
        now = time.monotonic_ns()
        polls += 1
        if batch:
            packet = batch[0]
            if packet[0] >= 0:  # not a warm-up value
                if packet[0] <= newest:
                    backwards += 1
                newest = packet[0]
                ages.append(now - packet[1])
                reads += 1
        if now >= until_ns:
            break
    barrier.wait(BARRIER_TIMEOUT_S)
    reader.close()
    ordered = sorted(ages)
    return {
        "role": "reader",
        "index": index,
        "reads": reads,
        "polls": polls,
        "backwards": backwards,
        "age_p50_ns": percentile(ordered, 0.50),
        "age_p99_ns": percentile(ordered, 0.99),
    }


# ---------------------------------------------------------------------- memory
def memory_sender(*, channel: peers.Channel, warmup: int, barrier: Any, acks: Any, progress: Any) -> None:
    """Send small packets as fast as ``send()`` allows, forever; the parent ends this process.

    It is stopped with SIGTERM rather than asked to stop because, with a slow
    receiver, a peer with backpressure is blocked inside ``send()`` -- which is the point.
    """
    barrier.wait(BARRIER_TIMEOUT_S)
    sender = peers.open_sender(channel)
    warm_up_sender(sender, SMALL, warmup, acks, 1)
    barrier.wait(BARRIER_TIMEOUT_S)  # idle: the parent has read our RSS
    send = sender.send
    i = 0
    while True:
        send([i, i + 1, i + 2, i + 3, i + 4])
        i += 1
        if not i & 1023:
            progress.value = i


def memory_receiver(
    *, channel: peers.Channel, seconds: float, warmup: int, per_packet_s: float, barrier: Any, acks: Any
) -> Result:
    """Handle one packet per ``per_packet_s`` (a slow consumer) for ``seconds``, checking order."""
    receiver = peers.open_receiver(channel, 0)
    barrier.wait(BARRIER_TIMEOUT_S)
    warm_up_receiver(receiver, warmup, acks)
    barrier.wait(BARRIER_TIMEOUT_S)
    until = time.monotonic() + seconds
    expected = lost = disorder = 0
    while time.monotonic() < until:
        for packet in receiver.recv():
            number = packet[0]
            if number != expected:
                if number < expected:
                    disorder += 1
                    continue
                lost += number - expected
            expected = number + 1
            time.sleep(per_packet_s)  # the work this consumer does per packet
            if time.monotonic() >= until:
                break
    status = memory_status()
    receiver.close()
    return {"role": "receiver", "received": expected - lost, "lost": lost, "disorder": disorder, "status": status}
