"""The ``pipebit`` command: see, watch, feed and remove pipes from a shell.

``ls``, ``stat``, ``hz`` and ``clean`` read the snapshots of :func:`pipebit.list_pipes`
and :func:`pipebit.pipe_stats` without attaching.  ``tail`` attaches a receiver and
``send`` a sender, to an existing pipe only: no command creates a pipe.  Expected
failures print ``pipebit: error: ...`` and exit 1; usage errors exit 2 (argparse's way).

Pipes on a Redis server work the same: a NAME may be a URL
(``redis://host:6379/0/data_pipe``), ``ls`` takes a server URL, and while
``PIPEBIT_URL`` is set every command works on that server.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import fnmatch
import inspect
import json
import os
import signal
import sys
import time
import warnings
from typing import Any, Callable, Iterator, List, Sequence

from . import __version__, _codec, list_pipes, pipe_stats, remove, remove_group
from ._render import Unprintable, format_packet, from_json, int_from_json
from ._stats import GroupStats, Participant, PipeStats
from .errors import (
    PacketSizeError,
    PipeBitError,
    PipeBusyError,
    PipeNotFoundError,
    PipeTimeoutError,
    UndeliveredPacketsWarning,
)
from .fast import FastReceiver, FastSender
from .safe import SafeReceiver, SafeSender

POLL = 0.25  # seconds between checks for Ctrl-C while tail waits for packets
QUOTE_CHARS = 80  # an argument quoted in an error message is cut to about this many characters
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


# ------------------------------------------------------------------ formatting
def _size(n: int) -> str:
    """Bytes the way ``ls -h`` shows them: 512B, 64K, 4.0M."""
    value, unit = float(n), "B"
    for unit in "BKMGT":
        if value < 1024 or unit == "T":
            break
        value /= 1024
    return f"{n}B" if unit == "B" else f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"


def _age(timestamp: float | None) -> str:
    """How long ago ``timestamp`` (seconds since the epoch) was: 3s, 2m, 5h, 4d, or never."""
    if timestamp is None:
        return "never"
    seconds = max(time.time() - timestamp, 0.0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit}"
    return f"{int(seconds)}s"


def _state(stats: PipeStats) -> str:
    """``stale`` (no live process attached), ``blocked`` (a sender waits for room), ``group``
    (no live process attached, but a receiver group is owed packets) or ``live``."""
    if stats.stale:
        return "stale"
    if stats.writers_waiting:
        return "blocked"
    return "live" if any(p.alive for p in stats.participants) else "group"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns aligned under ``header``; those in ``right`` (numbers) flush right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        for row in [header, *rows]
    ]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _ls_row(s: PipeStats) -> list[str]:
    lag = "-" if s.max_lag is None else s.max_lag
    groups = ",".join(f"{g.name}({g.members})" for g in s.groups) or "-"
    cells = (s.name, s.model, _size(s.capacity), f"{s.fill:.0%}", s.packets_written, s.senders, s.receivers, lag)
    return [*map(str, cells), groups, _age(s.last_write_at), _state(s)]


def _group_row(g: GroupStats) -> list[str]:
    return [*map(str, (g.name, g.members, g.lag, g.unacked, g.delivered, g.redelivered, g.acked))]


def _participant_row(p: Participant) -> list[str]:
    waiting = ("yes" if p.waiting else "no") if p.role in ("receiver", "member") else "-"
    role = f"member:{p.group}" if p.group is not None else p.role
    cells = (p.slot, role, p.pid, "alive" if p.alive else "dead", "-" if p.lag is None else p.lag, p.packets, waiting)
    return [*map(str, cells), _age(p.attached_at) + " ago"]


def _record(stats: PipeStats) -> dict[str, Any]:
    """A snapshot as JSON-ready data: its fields plus the derived figures."""
    derived = {key: getattr(stats, key) for key in ("fill", "senders", "receivers", "max_lag", "stale")}
    return {**dataclasses.asdict(stats), **derived, "state": _state(stats)}


class _Failure(Exception):
    """An expected failure whose message is complete: :func:`main` prints it and exits 1."""


def _quote(text: str) -> str:
    """``text`` quoted for an error message, cut short: a packet argument can be 128 KiB."""
    return repr(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "...")


def _packet(text: str) -> List[Any]:
    """argparse type of ``send``'s packets: a JSON array that any pipe can carry.

    Whatever can be wrong with one argument on its own is found here, so a bad
    argument is a usage error (exit status 2) before anything is sent.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # argv bytes that are not UTF-8 arrive as lone surrogates (PEP 383)
        raise argparse.ArgumentTypeError(f"not UTF-8 text (at character {exc.start}): {_quote(text)}") from None
    try:
        value = json.loads(text, object_hook=from_json, parse_int=int_from_json)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {_quote(text)}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {_quote(text)}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise argparse.ArgumentTypeError(f"nests deeper than Python's JSON decoder goes: {_quote(text)}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"a packet must be a JSON array like '[1, \"a\"]', not {_quote(text)}")
    try:
        _codec.encode(value)
    except PipeBitError as exc:  # PacketTypeError: a lone surrogate from a "\ud800" escape; PacketSizeError
        raise argparse.ArgumentTypeError(f"{exc}: {_quote(text)}") from None
    return value


def _number(kind: Callable[[str], Any], above_zero: bool) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` that is >= 0 (or > 0)."""

    def convert(text: str) -> Any:
        with contextlib.suppress(ValueError):
            value = kind(text)
            if value > 0 or (value == 0 and not above_zero):  # and not nan
                return value
        raise argparse.ArgumentTypeError(f"expected a number {'>' if above_zero else '>='} 0, not {_quote(text)}")

    return convert


_count, _seconds = _number(int, above_zero=False), _number(float, above_zero=True)


def _emit(packets: list[Any], as_json: bool, name: str) -> None:
    """Print packets one per line (reprs, or JSON lines), flushed so a pipe downstream sees them now.

    A packet that cannot be printed raises :class:`_Failure` once those before it are
    printed: skipping it would be a loss no one sees, and a line that is not what was
    sent would be worse.
    """
    lines: list[str] = []
    error: _Failure | None = None
    for packet in packets:
        try:
            lines.append(format_packet(packet, as_json) + "\n")
        except Unprintable as exc:
            error = _Failure(f"a packet of pipe {name!r} cannot be printed{' as JSON' if as_json else ''}: {exc}")
            break
    if lines:
        text = "".join(lines)
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # a terminal (or PYTHONIOENCODING) without some character: escape it
            encoding = sys.stdout.encoding or "ascii"  # TextIOWrapper encodes all before writing any
            sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))
        sys.stdout.flush()
    if error is not None:
        raise error


# --------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _stop_signals_held() -> Iterator[Callable[[float], bool]]:
    """Hold SIGINT/SIGTERM pending in the block; yield ``stopped(timeout)``: did one come (waiting ``timeout`` s)?

    Blocked, not handled, also in threads started inside: a handled signal interrupts semaphore waits
    (sem_timedwait(3): EINTR), and posix_ipc raises ``SignalError`` out of the library's receive().
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    seen: list[int] = []

    def stopped(timeout: float) -> bool:
        if not seen and signal.sigtimedwait(_STOP_SIGNALS, max(timeout, 0.0)) is not None:
            seen.append(1)
        return bool(seen)

    try:
        yield stopped
    finally:
        while signal.sigtimedwait(_STOP_SIGNALS, 0) is not None:  # a second Ctrl-C: we are stopping anyway
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value); ``None`` for no deadline."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _attach(cls: Any, name: str, expected: PipeStats, **options: Any) -> Any:
    """Open endpoint ``cls`` on the existing pipe ``name`` (never creating one), which
    must still be the incarnation ``expected`` describes."""
    endpoint = cls(name, 0, create=False, **options)
    if endpoint.stats().pipe.created_at != expected.created_at:
        endpoint.close_connection()
        raise PipeNotFoundError(f"pipe {name!r} was removed (or replaced) just now")
    return endpoint


def _when_it_exists(name: str, stopped: Callable[[float], bool]) -> PipeStats | None:
    """Wait until pipe ``name`` exists and return its snapshot; ``None`` if a stop signal came first."""
    while not stopped(POLL):
        with contextlib.suppress(PipeNotFoundError):
            return pipe_stats(name)
    return None


def _check_fits(name: str, stats: PipeStats, packets: Sequence[List[Any]]) -> None:
    """Raise :class:`PacketSizeError` unless every packet meets the pipe's rules (its packet length,
    its largest packet).  A sender finds a packet it refuses only when it comes to it, with
    those before it already on their way: checked first, a refusal sends nothing."""
    for number, packet in enumerate(packets, 1):
        if stats.packet_len and len(packet) != stats.packet_len:
            why = f"has {len(packet)} elements; pipe {name!r} carries packets of {stats.packet_len}"
        elif (size := len(_codec.encode(packet))) > stats.max_packet_bytes:
            why = f"encodes to {size} bytes; pipe {name!r} carries at most {stats.max_packet_bytes} bytes per packet"
        else:
            continue
        raise PacketSizeError(f"packet {number} {why}: nothing was sent")


def _first_seq(receiver: SafeReceiver) -> int:
    """Sequence number of the first packet a just-attached Safe receiver gets: ``written -
    lag - read`` of its slot.  Its reader thread updates those without the pipe's lock,
    so snapshots are taken until two agree."""
    previous = None
    for _ in range(50):
        stats = receiver.stats()
        me = next(p for p in stats.pipe.participants if p.slot == stats.slot)
        seq = stats.pipe.packets_written - (me.lag or 0) - me.packets
        if seq == previous:
            break
        previous = seq
    return seq


# -------------------------------------------------------------------- commands
def cmd_ls(args: argparse.Namespace) -> int:
    """List this user's pipes (or those on a Redis server), one row each.

    SEND and RECV count live senders and receivers; LAG is the packets the slowest
    live receiver has not read; GROUPS names each receiver group with its live
    members.  STATE is live, blocked (a sender waits for a receiver to read), group
    (no live process attached, but a receiver group is owed packets: they wait for
    its next member) or stale (no live process attached and no group owed packets:
    see `pipebit clean`).
    With URL, or while PIPEBIT_URL is set, the pipes on that Redis server.

    example:
      pipebit ls
      pipebit ls --json | jq -r '.[] | select(.stale) | .name'
      pipebit ls redis://sensor-hub:6379/0
    """
    pipes = list_pipes(args.url)
    if args.json:
        print(json.dumps([_record(s) for s in pipes], indent=2))
        return 0
    header = ("NAME", "MODEL", "CAPACITY", "FILL", "WRITTEN", "SEND", "RECV", "LAG", "GROUPS", "LAST-WRITE", "STATE")
    print(_table(header, [_ls_row(s) for s in pipes], right={2, 3, 4, 5, 6, 7, 8}))
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    """Show everything about one pipe, and each sender and receiver attached to it.

    Each has its pid, whether it is alive or died without detaching, its lag in
    packets, and (receivers) whether it is waiting for data.  Each receiver group
    has its live members, LAG (packets no member has taken yet), UNACKED (taken, not
    acknowledged), and how many packets it delivered, redelivered after a member died,
    and had acknowledged.

    example:
      pipebit stat data_pipe
    """
    s = pipe_stats(args.name)
    if args.json:
        print(json.dumps(_record(s), indent=2))
        return 0
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
    last = "never" if s.last_write_at is None else _age(s.last_write_at) + " ago"
    print(f"name:       {s.name}\nmodel:      {s.model}\nstate:      {_state(s)}")
    print(f"capacity:   {_size(s.capacity)} ({s.capacity} bytes), packets up to {s.max_packet_bytes} bytes")
    print(f"packets:    {s.packets_written} written, last write {last}; length {s.packet_len or 'any'}")
    print(f"fill:       {s.fill:.1%} (used {_size(s.used_bytes)}, unread {_size(s.unread_bytes)})")
    print(f"created:    {created} ({_age(s.created_at)} ago)")
    print(f"attached:   {s.senders} live sender(s), {s.receivers} live receiver(s)")
    print(f"lag:        {'-' if s.max_lag is None else s.max_lag} (packets the slowest live receiver has not read)")
    if s.writers_waiting:
        slow = max((p for p in s.participants if p.alive and p.lag), key=lambda p: p.lag or 0, default=None)
        why = f": receiver pid {slow.pid} has not read {slow.lag} packet(s)" if slow else ""
        print(f"\n{s.writers_waiting} sender(s) waiting for room in the pipe{why}")
    if s.participants:
        header = ("SLOT", "ROLE", "PID", "STATE", "LAG", "PACKETS", "WAITING", "ATTACHED")
        print("\n" + _table(header, [_participant_row(p) for p in s.participants], right={2, 4, 5}))
    if s.groups:
        columns = ("GROUP", "MEMBERS", "LAG", "UNACKED", "DELIVERED", "REDELIVERED", "ACKED")
        print("\n" + _table(columns, [_group_row(g) for g in s.groups], right={1, 2, 3, 4, 5, 6}))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print a pipe's packets as they arrive, one per line, until Ctrl-C.

    Python reprs (a numpy array as its shape and dtype), or JSON lines with --json
    (bytes as {"$bytes": "<base64>"}; arrays, whole, as {"$array": {"dtype": "<f4",
    "shape": [2, 3], "data": "<base64>"}}, data in C order and dtype's byte order;
    dict keys that are not text as their reprs).  Ctrl-C (or SIGTERM) detaches
    and exits with status 0.  A packet that cannot be printed (JSON has no NaN)
    ends tail with status 1, after the packets before it.  tail attaches a
    receiver: while it runs, a Safe pipe's senders wait for it like for any other.

    With --wait, a pipe that does not exist yet is waited for (Ctrl-C ends the
    wait with status 0), and once it appears every packet it still holds is
    printed (Fast: its current value), then new ones.

    example:
      pipebit tail data_pipe
      pipebit tail -n 5 --json data_pipe   # the last 5 retained, then new ones
      pipebit tail --wait data_pipe        # before the pipe's first sender starts
    """
    last = args.n or 0
    with _stop_signals_held() as stopped:  # before attaching: the receiver's thread inherits the mask
        try:
            stats = pipe_stats(args.name)
        except PipeNotFoundError:
            if not args.wait:
                raise
            appeared = _when_it_exists(args.name, stopped)
            if appeared is None:
                return 0
            stats, last = appeared, sys.maxsize  # all of it is new to us
        if stats.model == "fast":
            receiver = _attach(FastReceiver, args.name, stats, start="current" if last else "new")
        else:
            receiver = _attach(SafeReceiver, args.name, stats, start="oldest" if last else "new")
        try:
            if last and isinstance(receiver, SafeReceiver):
                # Packets committed before the snapshot are "retained"; later ones are new.
                owed = max(stats.packets_written - _first_seq(receiver), 0)
                # No more than owed are kept: -n may be larger than a deque's maxlen can be.
                kept: collections.deque[Any] = collections.deque(maxlen=min(last, owed))
                while owed > 0 and not stopped(0):
                    batch = receiver.receive(timeout=POLL)
                    kept.extend(batch[:owed])
                    if len(batch) >= owed:
                        _emit([*kept, *batch[owed:]], args.json, args.name)
                    owed -= len(batch)
            while not stopped(0):
                _emit(receiver.receive(timeout=POLL), args.json, args.name)
        finally:
            receiver.close_connection()
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Send each JSON array as one packet to an existing pipe; wait until all are in it.

    Bytes are written {"$bytes": "<base64>"}, and numpy arrays {"$array": {"dtype":
    "<f4", "shape": [2, 3], "data": "<base64>"}} (numpy needed), as tail --json
    prints them.  If any
    argument is not a JSON array a pipe can carry, nothing is sent and the exit
    status is 2; if this pipe refuses one (too long, or too big), nothing is sent
    and the exit status is 1.

    example:
      pipebit send data_pipe '[1, 2.5, "three"]' '[{"$bytes": "Zm91cg=="}, null]'
    """
    stats = pipe_stats(args.name)
    _check_fits(args.name, stats, args.packets)
    fast = stats.model == "fast"
    sender = _attach(FastSender, args.name, stats) if fast else _attach(SafeSender, args.name, stats, flush_timeout=0)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        for packet in args.packets:
            if fast:
                sender.send(packet)
            else:  # send() too waits, while the ring (and so the sender's queue) is full
                sender.send(packet, timeout=_left(deadline))
        if not fast:
            sender.flush(timeout=_left(deadline))
    except PipeTimeoutError as exc:
        raise PipeTimeoutError(f"{exc}; packets not in the pipe yet were dropped") from None
    finally:
        with warnings.catch_warnings():  # all delivered, or the error raised says what was not
            warnings.simplefilter("ignore", UndeliveredPacketsWarning)
            sender.close_connection()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove pipes: their shared memory, semaphores and lock files; or a receiver group.

    Refuses (exit status 1) while live processes are attached, unless --force:
    they then get PipeClosedError.  With --group G, removes only receiver group G of
    each pipe (refused while it has live members): what it had not consumed stops
    holding senders back.

    example:
      pipebit rm data_pipe
      pipebit rm --force data_pipe other_pipe
      pipebit rm jobs --group resize
    """
    status = 0
    if args.group is not None:
        for name in args.names:
            try:
                remove_group(name, args.group)
            except PipeBitError as exc:
                _complain(str(exc))
                status = 1
            else:
                print(f"removed group {args.group} of {name}")
        return status
    for name in args.names:
        try:
            remove(name, force=args.force)
        except PipeBitError as exc:  # PipeBusyError's message says how many processes are attached
            _complain(f"{exc} (`pipebit rm --force {name}`)" if isinstance(exc, PipeBusyError) else str(exc))
            status = 1
        else:
            print(f"removed {name}")
    return status


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove every stale pipe of this user (no live process attached).

    With PATTERNs, only pipes whose names match one (shell-style: *, ?, [...]).
    Prints each pipe removed; a pipe that gained a process meanwhile is skipped.

    example:
      pipebit clean --dry-run
      pipebit clean 'test-*'
    """
    removed = 0
    for s in list_pipes():
        if not s.stale or (args.patterns and not any(fnmatch.fnmatchcase(s.name, p) for p in args.patterns)):
            continue
        try:
            if not args.dry_run:
                remove(s.name)
        except PipeBusyError:
            print(f"skipped {s.name}: in use again", file=sys.stderr)
        except PipeNotFoundError:
            pass
        else:
            print(f"{'would remove' if args.dry_run else 'removed'} {s.name}")
            removed += 1
    if not removed:
        print("no stale pipes", file=sys.stderr)
    return 0


def cmd_hz(args: argparse.Namespace) -> int:
    """Print the rate of packets written to a pipe, once a second, until Ctrl-C.

    It reads the pipe's packet counter without attaching, so it works for Safe and
    Fast pipes alike and never slows a sender.

    example:
      pipebit hz data_pipe --window 10
      pipebit hz data_pipe --count 3
    """
    first = pipe_stats(args.name)
    created, samples, lines = first.created_at, collections.deque([(time.monotonic(), first.packets_written)]), 0
    with _stop_signals_held() as stopped:
        tick = time.monotonic()
        while args.count is None or lines < args.count:
            tick += 1.0
            if stopped(tick - time.monotonic()):
                break
            s, now = pipe_stats(args.name), time.monotonic()
            if s.created_at != created or s.packets_written < samples[-1][1]:  # recreated: counting anew
                created = s.created_at
                samples.clear()
            samples.append((now, s.packets_written))
            while len(samples) > 2 and now - samples[1][0] >= args.window:
                samples.popleft()
            (t0, w0), (t1, w1) = samples[0], samples[-1]
            rate = (
                f"{(w1 - w0) / (t1 - t0):.2f} packets/s  (window {t1 - t0:.1f}s)" if t1 > t0 else "-  (pipe recreated)"
            )
            print(f"average rate: {rate}", flush=True)
            lines += 1
    return 0


# ---------------------------------------------------------------------- parser
def _complain(message: str) -> None:
    print(f"pipebit: error: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    """The command line; each ``cmd_*`` docstring is that command's help, example included."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="pipebit",
        description="Inspect, watch, feed and remove PipeBit pipes (over shared memory, or on a Redis server).",
        epilog="example:\n  pipebit ls\n  pipebit stat data_pipe\n  pipebit tail -n 10 data_pipe",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"pipebit {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    sub = {}
    for func in (cmd_ls, cmd_stat, cmd_tail, cmd_send, cmd_rm, cmd_clean, cmd_hz):
        text, example = inspect.cleandoc(func.__doc__ or "").split("\n\nexample:\n")
        name = func.__name__[len("cmd_") :]
        sub[name] = commands.add_parser(
            name, help=text.split("\n")[0], description=text, epilog="example:\n" + example, formatter_class=raw
        )
        sub[name].set_defaults(func=func)
    for name in ("stat", "tail", "send", "hz"):
        sub[name].add_argument("name", metavar="NAME", help="the pipe's name (or redis://host:port/db/name)")
    for name in ("ls", "stat", "tail"):
        sub[name].add_argument("--json", action="store_true", help="print JSON")
    sub["ls"].add_argument("url", nargs="?", metavar="URL", help="a Redis server: redis://host:port/db")
    sub["tail"].add_argument("-n", type=_count, metavar="K", help="first the last K retained (Fast: the current value)")
    sub["tail"].add_argument("--wait", action="store_true", help="wait for a pipe that does not exist yet")
    sub["send"].add_argument("packets", nargs="+", type=_packet, metavar="JSON", help="a packet: a JSON array")
    sub["send"].add_argument("--timeout", type=_seconds, metavar="S", help="give up after S s if the pipe stays full")
    sub["rm"].add_argument("names", nargs="+", metavar="NAME", help="a pipe's name")
    sub["rm"].add_argument("--force", action="store_true", help="remove even while processes are attached")
    sub["rm"].add_argument("--group", metavar="G", help="remove only receiver group G of each pipe")
    sub["clean"].add_argument("patterns", nargs="*", metavar="PATTERN", help="only pipes whose names match")
    sub["clean"].add_argument("--dry-run", action="store_true", help="only print what would be removed")
    sub["hz"].add_argument("--window", type=_seconds, default=5.0, metavar="S", help="average over the last S s (5)")
    sub["hz"].add_argument("--count", type=_count, metavar="N", help="stop after N lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pipebit`` and ``python -m pipebit``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PipeNotFoundError as exc:
        _complain(f"{exc} (`pipebit ls` lists the pipes there are)")
    except (PipeBitError, _Failure) as exc:
        _complain(str(exc))
    except KeyboardInterrupt:
        print("pipebit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read our output went away: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
