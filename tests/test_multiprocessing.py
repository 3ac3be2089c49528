"""Sending from :mod:`multiprocessing` children: what a child sent is delivered when it ends.

A child started with ``fork`` or ``forkserver`` ends with ``os._exit()``, which
skips :mod:`atexit`; PipeBit closes its endpoints from multiprocessing's own exit
instead (see ``pipebit/_endpoint.py``).  Each child here sends and returns, with
no ``flush()`` and no ``close_connection()``, while a receiver in this process
holds the pipe full: so when the child's function returns, its sender still has
packets queued (the child reports how many), and the child then gets time to
end.  Only then does the test start receiving, which lets the child's exit flush
go on.  The receiver must get every packet, once, in order.

Child functions live at module level: ``spawn`` and ``forkserver`` children
import this module to find them.  They get the pipe name (a ``redis://`` URL
in the Redis run) and a file to use as their stderr as arguments.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import pytest

import pipebit

from .conftest import Reaper
from .redis_server import both_transports

COUNT = 12_000
PAD = "p" * 100  # [i, PAD] encodes to ~110 bytes
# 1 MiB of ring holds ~9,000 such packets and the sender's queue ~8,000 more, so
# every send() returns while the receiver holds the pipe full.
CAPACITY = 1 << 20
FLUSH_TIMEOUT = 20.0  # far longer than any test waits before it starts receiving
ENDING = 0.5  # seconds a child gets to end, were nothing to hold it, before the test receives


def send_and_return(
    name: str,
    count: int,
    stderr: Path,
    done: Connection | None = None,
    *,
    pad: str = PAD,
    flush_timeout: float = FLUSH_TIMEOUT,
    flush: bool = False,
) -> int:
    """A child's whole task: send ``count`` packets ``[i, pad]`` and return -- the sender
    is neither flushed (unless ``flush``) nor closed.  Returns (and sends to ``done``) how
    many packets were still queued, not yet in the pipe, as it returned."""
    like_a_script(stderr)
    sender = pipebit.SafeSender(name, 0, flush_timeout=flush_timeout)
    for i in range(count):
        sender.send([i, pad])
    if flush:
        sender.flush()
    pending = sender.stats().pending
    if done is not None:
        done.send(pending)
        done.close()
    return pending


def like_a_script(stderr: Path) -> None:
    """Print warnings as a script does, to a stderr that is the file ``stderr``.

    A fork child inherits pytest's warning state: its "warnings are errors" filter,
    and ``catch_warnings(record=True)``, which collects warnings in a list instead
    of printing them.  Emptying the filters restores Python's default action (print
    each once); a replaced ``warnings.showwarning`` is called instead of the list.
    A forkserver child writes to the stderr the fork server started with (that of
    the test which first used it), so each child is given a file of its own test.
    """
    # Line-buffered; multiprocessing flushes sys.stderr as the child ends.
    sys.stderr = stderr.open("a", buffering=1)  # this process's stderr until it ends
    warnings.resetwarnings()
    warnings.showwarning = print_warning


def print_warning(  # noqa: PLR0917 - the signature of warnings.showwarning()
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def send_and_raise(name: str, count: int, stderr: Path) -> None:
    """Send ``count`` packets, then fail."""
    send_and_return(name, count, stderr)
    raise RuntimeError("the child's function failed after sending")


def exit_on_sigterm() -> None:
    """The recipe of docs/exit-and-signals.md, as a ``Pool`` initializer."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def send_from_a_thread(name: str, stderr: Path) -> None:
    """Start a (non-daemon) thread that sends 100 packets, one every 5 ms, and return
    while it still sends.  The thread says how far it got."""
    like_a_script(stderr)
    sender = pipebit.SafeSender(name, 0)

    def keep_sending() -> None:
        sent = 0
        try:
            while sent < 100:
                sender.send([sent, PAD])
                sent += 1
                time.sleep(0.005)
        except pipebit.PipeClosedError:
            print(f"stopped after {sent} packets", file=sys.stderr)
        else:
            print(f"finished after {sent} packets", file=sys.stderr)

    threading.Thread(target=keep_sending).start()
    time.sleep(0.1)


@contextlib.contextmanager
def forking_with_threads() -> Iterator[None]:
    """Let ``fork`` copy this process although its receiver's thread runs.

    CPython 3.12+ warns (DeprecationWarning) when ``os.fork()`` copies a process
    with several threads, since a lock another thread holds stays held in the
    child.  The children here use only endpoints they open themselves; PipeBit's
    ``os.register_at_fork`` hook drops the inherited ones and renews its lock.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded", DeprecationWarning)
        yield


def holding_receiver(name: str, capacity: int = CAPACITY) -> pipebit.SafeReceiver:
    """A receiver that holds the pipe full until the test calls ``receive()``: its
    thread reads one packet ahead (``max_cached=1``), then waits."""
    return pipebit.SafeReceiver(name, 0, capacity=capacity, max_cached=1, start="oldest")


def drain(receiver: pipebit.SafeReceiver, pad: str = PAD) -> list[int]:
    """The numbers of the packets the receiver gets until none comes for 1 s; each
    packet must be whole: ``[number, pad]``."""
    got: list[Any] = []
    while batch := receiver.receive(timeout=1.0):
        got += batch
    assert all(len(p) == 2 and p[1] == pad for p in got), "a packet is not [i, pad]"
    return [p[0] for p in got]


def order(seqs: list[int]) -> str:
    """Whether ``seqs`` is 0, 1, 2, ... -- else the first position where it is not."""
    wrong = next((i for i, s in enumerate(seqs) if s != i), None)
    return "in order" if wrong is None else f"out of order from position {wrong}"


def check_all_in_order(receiver: pipebit.SafeReceiver, what: str) -> None:
    seqs = drain(receiver)
    assert seqs == list(range(COUNT)), f"{what}: got {len(seqs)} of {COUNT} packets, {order(seqs)}"


@pytest.fixture
def stderr(tmp_path: Path) -> Path:
    """The file the test's children use as their stderr."""
    return tmp_path / "child-stderr.txt"


def read(stderr: Path) -> str:
    return stderr.read_text() if stderr.exists() else ""


def no_trouble_in(stderr: Path) -> None:
    text = read(stderr)
    assert "Warning" not in text, text
    assert "Traceback" not in text, text


@both_transports
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_that_sends_and_returns_delivers_everything(name: str, method: str, stderr: Path) -> None:
    context = multiprocessing.get_context(method)
    with holding_receiver(name) as receiver:
        returned, done = context.Pipe(duplex=False)
        with forking_with_threads():
            child = context.Process(target=send_and_return, args=(name, COUNT, stderr, done))
            child.start()
        done.close()
        assert returned.poll(30), "the child's function did not return within 30 s"
        pending = returned.recv()
        returned.close()
        assert pending > 0, "the test needs packets still queued when the child's function returns"
        child.join(ENDING)  # a child that ended here without its exit flush would lose them
        check_all_in_order(receiver, f"Process ({method}), {pending} queued at return")
        child.join(30)
        assert child.exitcode == 0
    print(f"\n[mp] Process ({method}): {pending} of {COUNT} packets were queued when its function returned")
    no_trouble_in(stderr)


@both_transports
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor_task_delivers_everything(name: str, method: str, stderr: Path) -> None:
    context = multiprocessing.get_context(method)
    executor = ProcessPoolExecutor(1, mp_context=context)
    with holding_receiver(name) as receiver, forking_with_threads(), executor:
        pending = executor.submit(send_and_return, name, COUNT, stderr).result(30)
        assert pending > 0, "the test needs packets still queued when the task returns"
        # shutdown() hands the worker a None task: it leaves its loop and ends the
        # normal way.  wait=False lets this test receive while the worker ends.
        executor.shutdown(wait=False)
        time.sleep(ENDING)
        check_all_in_order(receiver, f"ProcessPoolExecutor ({method}), {pending} queued at return")
    no_trouble_in(stderr)


def test_process_whose_function_raises_delivers_everything(name: str, stderr: Path) -> None:
    # _bootstrap() runs multiprocessing's exit in a finally: after an exception too.
    context = multiprocessing.get_context("fork")
    with holding_receiver(name) as receiver:
        with forking_with_threads():
            child = context.Process(target=send_and_raise, args=(name, COUNT, stderr))
            child.start()
        child.join(ENDING + 2)  # the function has raised by now; the child waits to deliver
        check_all_in_order(receiver, "Process (fork) whose function raised")
        child.join(30)
        assert child.exitcode == 1
    assert "RuntimeError: the child's function failed after sending" in read(stderr)


def test_pool_closed_and_joined_delivers_everything(name: str, stderr: Path) -> None:
    context = multiprocessing.get_context("fork")
    with holding_receiver(name) as receiver:
        with forking_with_threads():
            pool = context.Pool(1)
        try:
            pending = pool.apply(send_and_return, (name, COUNT, stderr))
            assert pending > 0, "the test needs packets still queued when the task returns"
            pool.close()  # the worker gets a sentinel, leaves its loop and ends the normal way
            time.sleep(ENDING)
            check_all_in_order(receiver, f"Pool (fork) close()+join(), {pending} queued at return")
            pool.join()
        finally:
            pool.terminate()  # a no-op once joined; after a failure, it ends the worker
    no_trouble_in(stderr)


def test_pool_with_block_loses_only_the_unflushed_tail(make_name: Callable[[], str], stderr: Path) -> None:
    # "with Pool() as p:" ends with terminate(): its workers die of SIGTERM, whose
    # default action is immediate death, so nothing runs at their end.  The receiver
    # gets a gap-free prefix, missing at most what was still queued when the task
    # returned.  A task that ends with flush() has delivered everything by then.
    context = multiprocessing.get_context("fork")
    name = make_name()
    with holding_receiver(name) as receiver:
        with forking_with_threads(), context.Pool(1) as pool:
            pending = pool.apply(send_and_return, (name, COUNT, stderr))
        seqs = drain(receiver)
    print(f"\n[mp] with Pool() as p: {len(seqs)} of {COUNT} packets delivered ({pending} were queued at return)")
    assert seqs == list(range(len(seqs))), f"not a gap-free prefix: {order(seqs)}"
    assert len(seqs) >= COUNT - pending

    name = make_name()
    with pipebit.SafeReceiver(name, 0, capacity=CAPACITY, start="oldest") as receiver:
        with forking_with_threads(), context.Pool(1) as pool:
            assert pool.apply(send_and_return, (name, COUNT, stderr), {"flush": True}) == 0
        check_all_in_order(receiver, "with Pool() as p, the task ends with flush()")


def test_pool_with_block_and_the_sigterm_recipe_is_no_remedy(name: str, stderr: Path) -> None:
    # terminate() hands the worker a sentinel, then SIGTERMs it.  With the recipe, the
    # SystemExit usually cuts short the exit the sentinel began: inside PipeBit's
    # flush, the warning says how many packets that dropped; a moment earlier (inside
    # multiprocessing's exit machinery), the flush never starts and nothing is said.
    # If the signal comes first, the worker's exit flush waits flush_timeout for this
    # receiver, then warns.  Whatever happens, what arrives is a gap-free prefix.
    context = multiprocessing.get_context("fork")
    with holding_receiver(name) as receiver:
        with forking_with_threads(), context.Pool(1, initializer=exit_on_sigterm) as pool:
            pending = pool.apply(send_and_return, (name, COUNT, stderr), {"flush_timeout": 2.0})
        seqs = drain(receiver)
    print(f"\n[mp] with Pool(initializer=recipe) as p: {len(seqs)} of {COUNT} delivered ({pending} queued)")
    assert seqs == list(range(len(seqs))), f"not a gap-free prefix: {order(seqs)}"
    assert len(seqs) >= COUNT - pending
    match = re.search(r"UndeliveredPacketsWarning: .*?(\d+) packet", read(stderr))
    if match:  # the count it gives is exact
        assert len(seqs) == COUNT - int(match.group(1)), read(stderr)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_thread_still_sending_when_the_function_returns(name: str, method: str, stderr: Path) -> None:
    # Up to 3.12, BaseProcess._bootstrap() runs multiprocessing's exit (which closes
    # the endpoints) before it joins the child's non-daemon threads; from 3.13 the
    # threads are joined first and multiprocessing's exit runs from atexit after.
    context = multiprocessing.get_context(method)
    with pipebit.SafeReceiver(name, 0, start="oldest") as receiver:
        with forking_with_threads():
            child = context.Process(target=send_from_a_thread, args=(name, stderr))
            child.start()
        child.join(30)
        assert child.exitcode == 0
        match = re.search(r"(stopped|finished) after (\d+) packets", read(stderr))
        assert match, read(stderr)
        print(f"\n[mp] {method}: the thread {match.group(0)}")
        assert match.group(1) == ("finished" if sys.version_info >= (3, 13) else "stopped")
        assert "Traceback" not in read(stderr)  # a stopped thread met PipeClosedError, nothing else
        sent = int(match.group(2))
        seqs = drain(receiver)
        assert seqs == list(range(sent)), f"got {len(seqs)} of {sent} packets, {order(seqs)}"


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_child_exit_with_a_stalled_receiver_warns_and_ends(name: str, method: str, stderr: Path) -> None:
    count, pad, flush_timeout = 2000, "pp", 1.0
    context = multiprocessing.get_context(method)
    # 2000 packets [i, "pp"] encode to ~13.6 KB: more than the 8 KiB ring holds, less
    # than ring plus the sender's queue (8 KiB too), so every send() returns and the
    # child ends with packets queued behind a receiver that does not read.
    with holding_receiver(name, capacity=8192) as receiver:
        with forking_with_threads():
            child = context.Process(
                target=send_and_return,
                args=(name, count, stderr),
                kwargs={"pad": pad, "flush_timeout": flush_timeout},
            )
            child.start()
        started = time.monotonic()
        child.join(30)
        took = time.monotonic() - started
        print(f"\n[mp] with a stalled receiver the {method} child ended {took:.2f}s after it started")
        assert child.exitcode == 0
        assert flush_timeout <= took < flush_timeout + 10
        match = re.search(r"UndeliveredPacketsWarning: .*?\b(\d+) packet", read(stderr))
        assert match, f"no UndeliveredPacketsWarning with a count on the child's stderr:\n{read(stderr)}"
        undelivered = int(match.group(1))
        assert 0 < undelivered < count
        # The count is exact: this receiver was owed every packet that reached the pipe.
        seqs = drain(receiver, pad)
        assert seqs == list(range(count - undelivered)), f"got {len(seqs)} packets, {order(seqs)}"


NO_MULTIPROCESSING = """
import sys, pipebit
with pipebit.SafeSender(sys.argv[1], 0) as sender:
    sender.send([1])
print(sorted(m for m in sys.modules if m.startswith("multiprocessing")))
"""


def test_a_program_without_multiprocessing_does_not_load_it(name: str, reaper: Reaper) -> None:
    child = reaper.spawn(NO_MULTIPROCESSING, name)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "[]"
