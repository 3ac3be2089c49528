"""The public surface: exports, the exception tree, argument checks, lifecycle, remove()."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pipebit
from pipebit import _endpoint, _shm, _stats, errors, fast, safe

from .redis_server import both_transports

SHM = Path("/dev/shm")


def _pipe_files(name: str) -> list[str]:
    """Every OS object of pipe ``name`` that exists: segment, semaphores, lock files."""
    token = _shm.segment_name(name)[len("/pipebit-") :]
    found = [entry.name for entry in SHM.iterdir() if token in entry.name]
    found += [entry.name for entry in _shm.user_dir().iterdir() if entry.name.startswith(f"{name}.")]
    return sorted(found)


def assert_no_pipe(name: str) -> None:
    assert _pipe_files(name) == []


def receive_exactly(receiver: pipebit.SafeReceiver, count: int, deadline: float = 15.0) -> list[list[Any]]:
    got: list[list[Any]] = []
    end = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < end:
        got += receiver.receive(timeout=0.5)
    assert len(got) == count, got
    return got


# ------------------------------------------------------------------ exports
def test_every_name_in_all_exists() -> None:
    for export in pipebit.__all__:
        assert hasattr(pipebit, export), export
    assert len(set(pipebit.__all__)) == len(pipebit.__all__)


def test_all_is_sorted_constants_first() -> None:
    assert pipebit.__all__ == sorted(pipebit.__all__, key=lambda export: (not export.isupper(), export))


def test_every_public_exception_endpoint_and_stats_record_is_exported() -> None:
    for module in (errors, safe, fast, _stats):
        for attr, obj in vars(module).items():
            if attr.startswith("_") or not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            if issubclass(obj, (BaseException, _endpoint.Endpoint)) or dataclasses.is_dataclass(obj):
                assert attr in pipebit.__all__, f"{module.__name__}.{attr} is not in pipebit.__all__"
                assert getattr(pipebit, attr) is obj
    for module in (errors, safe, fast, _stats):
        for attr in module.__all__:
            assert getattr(pipebit, attr) is getattr(module, attr)
    assert pipebit.DEFAULT_CAPACITY == 4 << 20


# --------------------------------------------------------------- exceptions
EXCEPTIONS = [
    obj
    for obj in vars(errors).values()
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
]


@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda e: e.__name__)
def test_every_exception_is_a_pipebit_error(error: type[Exception]) -> None:
    assert issubclass(error, pipebit.PipeBitError)
    assert error.__name__ in pipebit.__all__
    raised = error("a message")
    assert str(raised) == "a message"


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (pipebit.InvalidNameError, ValueError),
        (pipebit.PacketSizeError, ValueError),
        (pipebit.InvalidArgumentError, ValueError),
        (pipebit.ModelMismatchError, ValueError),
        (pipebit.PacketTypeError, TypeError),
        (pipebit.ArgumentTypeError, TypeError),
        (pipebit.PipeTimeoutError, TimeoutError),
        (pipebit.PipeNotFoundError, FileNotFoundError),
        (pipebit.PipePermissionError, PermissionError),
        (pipebit.PacketTypeError, pipebit.ArgumentTypeError),
        (pipebit.ModelMismatchError, pipebit.PipeFormatError),
        (pipebit.CorruptPacketError, pipebit.PipeFormatError),
    ],
    ids=lambda c: c.__name__,
)
def test_exceptions_are_also_the_builtin_a_caller_would_catch(error: type[Exception], builtin: type) -> None:
    assert issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("x")


def test_warnings_have_their_own_root() -> None:
    assert issubclass(pipebit.UndeliveredPacketsWarning, pipebit.PipeBitWarning)
    assert issubclass(pipebit.PipeBitWarning, UserWarning)
    assert not issubclass(pipebit.PipeBitWarning, pipebit.PipeBitError)


# ----------------------------------------------------- argument validation
ENDPOINTS_WITH_DEBUG: list[tuple[str, Callable[[str, Any], Any]]] = [
    ("SafeSender", pipebit.SafeSender),
    ("SafeReceiver", pipebit.SafeReceiver),
    ("SafeSender_kw", lambda n, d: pipebit.SafeSender(n, debug=d)),
    ("BitPackSender", lambda n, d: pipebit.BitPackSender(n, 0, False, d)),
    ("BitPackReceiver", pipebit.BitPackReceiver),
]


@pytest.mark.parametrize("debug", [2, -1, "1", 0.5, 1.0, None, "yes", [1]], ids=repr)
@pytest.mark.parametrize("make", [m for _, m in ENDPOINTS_WITH_DEBUG], ids=[i for i, _ in ENDPOINTS_WITH_DEBUG])
def test_debug_must_be_0_1_true_or_false(name: str, make: Callable[[str, Any], Any], debug: Any) -> None:
    with pytest.raises(pipebit.InvalidArgumentError) as info:
        make(name, debug).close_connection()
    assert isinstance(info.value, ValueError)
    assert "debug" in str(info.value)
    assert repr(debug) in str(info.value)
    assert_no_pipe(name)


@pytest.mark.parametrize("debug", [0, 1, False, True], ids=repr)
def test_debug_values_accepted_and_logging_only_when_on(
    name: str, debug: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipebit")
    with pipebit.SafeSender(name, debug) as sender, pipebit.SafeReceiver(name, debug) as receiver:
        sender.send([1])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [[1]]
    ours = [record for record in caplog.records if record.name == "pipebit" and name in record.getMessage()]
    if debug:
        assert ours, "debug=1 should log lifecycle events naming the pipe"
    else:
        assert ours == []


BAD_TIMEOUTS: list[tuple[Any, type[Exception]]] = [
    (-1, pipebit.InvalidArgumentError),
    (-0.001, pipebit.InvalidArgumentError),
    (math.nan, pipebit.InvalidArgumentError),
    ("x", pipebit.ArgumentTypeError),
    ("1", pipebit.ArgumentTypeError),
    (True, pipebit.ArgumentTypeError),
    ([1], pipebit.ArgumentTypeError),
]


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS, ids=[repr(t) for t, _ in BAD_TIMEOUTS])
def test_receive_and_flush_check_their_timeout(name: str, timeout: Any, error: type[Exception]) -> None:
    builtin = ValueError if issubclass(error, ValueError) else TypeError
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        with pytest.raises(error) as info:
            receiver.receive(timeout=timeout)
        assert isinstance(info.value, builtin)
        assert "timeout" in str(info.value)
        with pytest.raises(error):
            sender.flush(timeout=timeout)
        # Both still work after refusing the argument.
        sender.send([1])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [[1]]


BAD_OPTIONS: list[tuple[str, Callable[[str], Any], type[Exception], str]] = [
    ("start_middle", lambda n: pipebit.SafeReceiver(n, start="middle"), pipebit.InvalidArgumentError, "start"),
    ("start_none", lambda n: pipebit.SafeReceiver(n, start=None), pipebit.InvalidArgumentError, "start"),
    ("recv_capacity_100", lambda n: pipebit.SafeReceiver(n, capacity=100), pipebit.InvalidArgumentError, "capacity"),
    ("send_capacity_100", lambda n: pipebit.SafeSender(n, capacity=100), pipebit.InvalidArgumentError, "capacity"),
    ("capacity_0", lambda n: pipebit.SafeSender(n, capacity=0), pipebit.InvalidArgumentError, "capacity"),
    ("capacity_neg", lambda n: pipebit.SafeSender(n, capacity=-4096), pipebit.InvalidArgumentError, "capacity"),
    ("capacity_huge", lambda n: pipebit.SafeSender(n, capacity=1 << 60), pipebit.InvalidArgumentError, "capacity"),
    ("capacity_big", lambda n: pipebit.SafeSender(n, capacity="big"), pipebit.ArgumentTypeError, "capacity"),
    ("capacity_float", lambda n: pipebit.SafeReceiver(n, capacity=8192.0), pipebit.ArgumentTypeError, "capacity"),
    ("capacity_bool", lambda n: pipebit.SafeSender(n, capacity=True), pipebit.ArgumentTypeError, "capacity"),
    ("queue_size_0", lambda n: pipebit.SafeSender(n, queue_size=0), pipebit.InvalidArgumentError, "queue_size"),
    ("queue_size_str", lambda n: pipebit.SafeSender(n, queue_size="9"), pipebit.ArgumentTypeError, "queue_size"),
    ("max_cached_0", lambda n: pipebit.SafeReceiver(n, max_cached=0), pipebit.InvalidArgumentError, "max_cached"),
    ("max_cached_none", lambda n: pipebit.SafeReceiver(n, max_cached=None), pipebit.ArgumentTypeError, "max_cached"),
    ("size_neg", lambda n: pipebit.SafeSender(n, size=-1), pipebit.InvalidArgumentError, "size"),
    ("bitpack_size_neg", lambda n: pipebit.BitPackSender(n, -3), pipebit.InvalidArgumentError, "size"),
    ("size_str", lambda n: pipebit.SafeSender(n, size="3"), pipebit.ArgumentTypeError, "size"),
    ("flush_timeout", lambda n: pipebit.SafeSender(n, flush_timeout=-1), pipebit.InvalidArgumentError, "flush_timeout"),
]


@pytest.mark.parametrize(
    ("make", "error", "word"), [case[1:] for case in BAD_OPTIONS], ids=[case[0] for case in BAD_OPTIONS]
)
def test_bad_options_are_refused_before_anything_is_created(
    name: str, make: Callable[[str], Any], error: type[Exception], word: str
) -> None:
    builtin = ValueError if issubclass(error, ValueError) else TypeError
    with pytest.raises(error) as info:
        make(name).close_connection()
    assert isinstance(info.value, builtin)
    assert word in str(info.value)
    assert_no_pipe(name)


def test_capacity_error_states_the_range(name: str) -> None:
    with pytest.raises(pipebit.InvalidArgumentError) as info:
        pipebit.SafeSender(name, 0, capacity=100)
    assert "4096" in str(info.value)
    assert "100" in str(info.value)


def test_start_error_names_the_choices(name: str) -> None:
    with pytest.raises(pipebit.InvalidArgumentError) as info:
        pipebit.SafeReceiver(name, 0, start="middle")
    message = str(info.value)
    assert "'oldest'" in message
    assert "'new'" in message
    assert "'middle'" in message


# -------------------------------------------------------------- lifecycle
@both_transports
def test_close_is_idempotent_and_later_use_raises_pipe_closed(name: str) -> None:
    sender = pipebit.SafeSender(name, 0)
    receiver = pipebit.SafeReceiver(name, 0)
    try:
        assert not sender.closed
        assert not receiver.closed
    finally:
        for _ in range(3):
            sender.close_connection()
            receiver.close_connection()
    assert sender.closed
    assert receiver.closed
    for call in (
        lambda: sender.send([1]),
        lambda: sender.flush(timeout=1),
        receiver.receive,
        lambda: receiver.receive(timeout=0),
        lambda: receiver.receive(timeout=None),
    ):
        with pytest.raises(pipebit.PipeClosedError) as info:
            call()
        assert "close_connection" in str(info.value)
        assert repr(name) in str(info.value)
    assert list(receiver) == []  # iteration ends at once on a closed receiver


@both_transports
def test_open_connection_after_close_reconnects(name: str) -> None:
    sender = pipebit.SafeSender(name, 0)
    receiver = pipebit.SafeReceiver(name, 0)
    try:
        sender.send(["first"])
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [["first"]]
        sender.close_connection()
        receiver.close_connection()
        with pytest.raises(pipebit.PipeClosedError):
            sender.send(["lost"])

        sender.open_connection()
        assert not sender.closed
        sender.send(["while the receiver is closed"])
        sender.flush(timeout=10)
        receiver.open_connection()
        receiver.open_connection()  # a no-op when connected
        sender.open_connection()
        assert not receiver.closed
        sender.send(["second"])
        sender.flush(timeout=10)
        # Reconnecting resumes where the receiver stopped: nothing twice, nothing skipped.
        assert receive_exactly(receiver, 2) == [["while the receiver is closed"], ["second"]]
        assert receiver.receive(timeout=0.2) == []
    finally:
        sender.close_connection()
        receiver.close_connection()


@both_transports
def test_context_manager_closes_on_exit_even_after_an_error(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        assert not sender.closed
        assert not receiver.closed
        sender.send([1])
    assert sender.closed
    assert receiver.closed
    with pytest.raises(RuntimeError, match="boom"), pipebit.SafeSender(name, 0) as failing:
        raise RuntimeError("boom")
    assert failing.closed
    with pytest.raises(pipebit.PipeClosedError):
        failing.send([2])
    # The packet sent inside the first block was delivered before the sender closed.
    with pipebit.SafeReceiver(name, 0, start="oldest") as late:
        assert receive_exactly(late, 1) == [[1]]


@pytest.mark.parametrize(
    "make",
    [
        lambda n: pipebit.SafeSender(n, 0),
        lambda n: pipebit.SafeReceiver(n, 0),
        lambda n: pipebit.BitPackSender(n, 0),
        pipebit.BitPackReceiver,
    ],
    ids=["SafeSender", "SafeReceiver", "BitPackSender", "BitPackReceiver"],
)
def test_repr_shows_name_and_state(name: str, make: Callable[[str], Any]) -> None:
    endpoint = make(name)
    try:
        text = repr(endpoint)
        assert repr(name) in text
        assert type(endpoint).__name__ in text
        assert f"capacity={pipebit.DEFAULT_CAPACITY}" in text
        assert "closed" not in text
    finally:
        endpoint.close_connection()
    text = repr(endpoint)
    assert repr(name) in text
    assert "closed" in text
    assert "capacity" not in text


# --------------------------------------------------------------- receiving
@both_transports
def test_receive_with_timeout_zero_returns_at_once(name: str) -> None:
    with pipebit.SafeReceiver(name, 0) as receiver:
        started = time.monotonic()
        assert receiver.receive(timeout=0) == []
        assert time.monotonic() - started < 1.0
        assert receiver.receive() == []  # the default timeout is short, too


@both_transports
def test_receive_with_timeout_none_waits_for_a_packet(name: str) -> None:
    results: list[Any] = []
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:

        def wait_for_packet() -> None:
            try:
                results.append(receiver.receive(timeout=None))
            except Exception as exc:  # pragma: no cover - reported below
                results.append(exc)

        timer = threading.Timer(0.3, sender.send, args=(["late"],))
        waiter = threading.Thread(target=wait_for_packet)
        started = time.monotonic()
        waiter.start()
        timer.start()
        waiter.join(timeout=20)
        blocked_for = time.monotonic() - started
        timer.join(timeout=20)
        still_waiting = waiter.is_alive()
        if still_waiting:  # unblock the thread before failing: closing wakes receive()
            receiver.close_connection()
            waiter.join(timeout=20)
    assert not still_waiting, "receive(timeout=None) did not return after a packet was sent"
    assert results == [[["late"]]]
    assert blocked_for >= 0.25  # it waited for the packet rather than returning []


@both_transports
def test_iterating_a_receiver_yields_packets_one_by_one(name: str) -> None:
    with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        for i in range(5):
            sender.send([i, f"p{i}"])
        got = list(itertools.islice(iter(receiver), 5))
    assert got == [[i, f"p{i}"] for i in range(5)]


@both_transports
def test_iteration_ends_when_the_receiver_is_closed(name: str) -> None:
    seen: list[Any] = []
    with pipebit.SafeSender(name, 0) as sender:
        receiver = pipebit.SafeReceiver(name, 0)

        def consume() -> None:
            for packet in receiver:
                seen.append(packet)

        try:
            thread = threading.Thread(target=consume)
            thread.start()
            sender.send(["one"])
            deadline = time.monotonic() + 15
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            receiver.close_connection()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert seen == [["one"]]


# ------------------------------------------------------------------ remove
@both_transports
def test_remove_of_a_missing_pipe_raises_not_found(name: str) -> None:
    with pytest.raises(pipebit.PipeNotFoundError) as info:
        pipebit.remove(name)
    assert isinstance(info.value, FileNotFoundError)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("role", ["receiver", "sender"])
def test_remove_refuses_while_an_endpoint_is_attached_then_removes_everything(name: str, role: str) -> None:
    endpoint: Any = pipebit.SafeReceiver(name, 0) if role == "receiver" else pipebit.SafeSender(name, 0)
    try:
        files_before = _pipe_files(name)
        with pytest.raises(pipebit.PipeBusyError) as info:
            pipebit.remove(name)
        assert repr(name) in str(info.value)
        assert _pipe_files(name) == files_before  # refused: nothing touched
        # ... and the pipe still works.
        with pipebit.SafeSender(name, 0) as sender, pipebit.SafeReceiver(name, 0, start="new") as receiver:
            sender.send(["still here"])
            sender.flush(timeout=10)
            assert receive_exactly(receiver, 1) == [["still here"]]
    finally:
        endpoint.close_connection()
    removed = pipebit.remove(name)
    assert _shm.segment_name(name) in removed
    assert str(_shm.lock_path(name)) in removed
    assert_no_pipe(name)
    with pytest.raises(pipebit.PipeNotFoundError):
        pipebit.remove(name)


@both_transports
def test_an_endpoint_is_of_its_own_class_on_every_transport(name: str) -> None:
    # One face over both transports: no per-transport subclass is made behind the user's
    # back, so a subclass of the user's own works on a Redis server too.
    class Tagged(pipebit.SafeSender):
        def send_tagged(self, value: int) -> None:
            self.send(["tag", value])

    with Tagged(name, 0) as sender, pipebit.SafeReceiver(name, 0) as receiver:
        assert type(sender) is Tagged
        assert type(receiver) is pipebit.SafeReceiver
        assert repr(sender).startswith("<Tagged ")
        sender.send_tagged(1)
        sender.flush(timeout=10)
        assert receive_exactly(receiver, 1) == [["tag", 1]]
