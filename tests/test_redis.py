"""Pipes on a Redis server: a real ``redis-server`` on loopback, real processes, nothing mocked.

The behaviours Redis shares with shared memory are the ``@both_transports`` tests of
test_safe.py, test_fast.py and test_cli.py; this file covers what is Redis's own:
selecting it, backpressure with heartbeats, a server restart mid-stream, errors
for a server that is wrong or not there, and the seed scripts across "machines".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import pipebit
from pipebit import _address, _codec

from .conftest import Reaper
from .helpers import Child, receive_n, wait_until
from .redis_server import RedisServer, free_port, skip_without_redis, start_server
from .test_seed_scripts import EXPECTED, read_packets, run_script, stop


@pytest.fixture
def server(redis_keys_guard: RedisServer) -> RedisServer:
    """The session's Redis server; the test fails if it leaves PipeBit keys there."""
    return redis_keys_guard


@pytest.fixture
def url(server: RedisServer, make_name: Callable[[], str]) -> Iterator[str]:
    """A unique pipe on the server, removed at teardown."""
    name = make_name()
    yield server.pipe_url(name)
    try:
        pipebit.remove(server.pipe_url(name), force=True)
    except pipebit.PipeNotFoundError:
        pass


# ------------------------------------------------------------------ selecting Redis
def test_a_url_or_pipebit_url_selects_redis_and_the_classes_stay_the_same(
    server: RedisServer, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pipebit.SafeSender(url, 0) as sender, pipebit.BitPackReceiver(url) as receiver:
        assert isinstance(sender, pipebit.SafeSender)
        assert isinstance(receiver, (pipebit.BitPackReceiver, pipebit.SafeReceiver))
        assert sender.name == url.rsplit("/", 1)[1]
        assert "redis://127.0.0.1" in repr(sender)
        sender.send([1])
        assert receive_n(receiver, 1) == [[1]]
    plain = url.rsplit("/", 1)[1]
    monkeypatch.setenv("PIPEBIT_URL", server.url)
    with pipebit.BitPackSender(plain, 1, False) as sender:  # a plain name now lives on that server
        sender.send([2])
        sender.flush(timeout=10)
    assert pipebit.pipe_stats(plain).packets_written == 2
    assert plain in [s.name for s in pipebit.list_pipes()]
    monkeypatch.delenv("PIPEBIT_URL")
    with pytest.raises(pipebit.PipeNotFoundError):  # and not in shared memory
        pipebit.pipe_stats(plain)


@pytest.mark.parametrize(
    "bad",
    [
        "redis://",
        "redis:///0/p",
        "redis://localhost:99999/0/p",
        "redis://localhost/0/",
        "redis://localhost/0/a/b",
        "redis://localhost/0/bad name",
        "redis://localhost/0/p?db=1",
        "redis://localhost/x/p",
        "redis://h\udcff/0/p",  # a host with no IDNA form: redis-py's connect raised UnicodeError
        "redis://" + "a" * 64 + "/0/p",  # a DNS label over 63 characters: the same
    ],
)
def test_wrong_urls_are_invalid_names(bad: str) -> None:
    with pytest.raises(pipebit.InvalidNameError):
        pipebit.SafeSender(bad, 0)


def test_a_server_url_whose_host_cannot_be_looked_up_is_an_invalid_name() -> None:
    with pytest.raises(pipebit.InvalidNameError, match="cannot be looked up"):
        pipebit.list_pipes("redis://h\udcff/0")


def test_a_wrong_pipebit_url_is_an_invalid_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPEBIT_URL", "redis://localhost:6379/0/a_pipe")
    with pytest.raises(pipebit.InvalidNameError, match="PIPEBIT_URL"):
        pipebit.SafeReceiver("p", 0)
    monkeypatch.setenv("PIPEBIT_URL", "http://localhost")
    with pytest.raises(pipebit.InvalidNameError, match="not a Redis URL"):
        pipebit.FastSender("p", 0)


def test_url_parts_and_the_password_never_shown() -> None:
    address = _address.parse("rediss://me:s3cret@example.org:7000/3/data_pipe")
    assert isinstance(address, _address.RedisPipe)
    server = address.server
    assert (server.host, server.port, server.db, server.tls) == ("example.org", 7000, 3, True)
    assert (server.username, server.password, address.name) == ("me", "s3cret", "data_pipe")
    assert "s3cret" not in str(address) + repr(address)
    assert _address.parse("redis://h/p").server.db == 0  # type: ignore[union-attr]
    with pytest.raises(pipebit.InvalidNameError) as info:
        _address.parse("redis://me:s3cret@h/0/a/b")
    assert "s3cret" not in str(info.value)


def test_without_redis_py_the_error_says_what_to_install(server: RedisServer, reaper: Reaper) -> None:
    code = """
import sys
sys.modules["redis"] = None  # as if it were not installed
import pipebit
try:
    pipebit.SafeSender(sys.argv[1], 0)
except ImportError as exc:
    print(type(exc).__name__, isinstance(exc, pipebit.PipeBitError), exc)
"""
    child = Child(reaper, code, server.pipe_url("never_created"))
    assert child.wait(30) == 0, child.describe()
    out = "".join(child.out)
    assert out.startswith("DependencyError True"), out
    assert 'pip install "pipebit[redis]"' in out


# ------------------------------------------------------------- errors within a timeout
def test_no_server_there_is_a_transport_error_at_once() -> None:
    skip_without_redis()
    started = time.monotonic()
    with pytest.raises(pipebit.TransportError, match="cannot connect") as info:
        pipebit.SafeSender(f"redis://127.0.0.1:{free_port()}/0/p", 0)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(pipebit.TransportError):
        pipebit.pipe_stats(f"redis://127.0.0.1:{free_port()}/0/p")


def test_a_host_that_does_not_answer_fails_within_the_connect_timeout() -> None:
    skip_without_redis()
    started = time.monotonic()
    with pytest.raises(pipebit.TransportError):
        pipebit.FastReceiver("redis://10.255.255.1:6379/0/p", 0)  # unroutable: no answer, or no route
    assert time.monotonic() - started < 8


def test_a_port_that_does_not_speak_redis_fails_within_the_socket_timeout() -> None:
    skip_without_redis()
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        started = time.monotonic()
        with pytest.raises(pipebit.TransportError, match="no reply within 5s"):
            pipebit.SafeSender(f"redis://127.0.0.1:{listener.getsockname()[1]}/0/p", 0)
        assert time.monotonic() - started < 8


def test_wrong_or_missing_password_is_an_authentication_error(tmp_path: Path) -> None:
    guarded = start_server(tmp_path, "--requirepass", "right")
    try:
        base = f"127.0.0.1:{guarded.port}/0/p"
        for attempt in (f"redis://:wrong@{base}", f"redis://{base}"):
            started = time.monotonic()
            with pytest.raises(pipebit.TransportError, match="authentication failed") as info:
                pipebit.SafeReceiver(attempt, 0)
            assert time.monotonic() - started < 5
            assert "wrong" not in str(info.value).replace("wrong password", "")
        with pipebit.SafeSender(f"redis://:right@{base}", 0) as sender:
            sender.send([1])
        pipebit.remove(f"redis://:right@{base}")
    finally:
        guarded.stop()


def test_a_server_hanging_up_on_an_unauthenticated_client_reads_as_an_authentication_error(
    tmp_path: Path,
) -> None:
    # Some redis-py versions (7.x) send a command of many arguments before authenticating; a
    # server that wants a password answers that with a protocol error, not NOAUTH.  Take the
    # server's own words, then check PipeBit's translation of them.
    redis = pytest.importorskip("redis")
    from pipebit import _redis

    guarded = start_server(tmp_path, "--requirepass", "right")
    try:
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as raw:
            raw.sendall(b"*20\r\n")
            reply = raw.recv(4096).decode()
    finally:
        guarded.stop()
    assert reply.startswith("-"), reply
    assert "unauthenticated" in reply, reply
    error = redis.ResponseError(reply[1:].strip().removeprefix("ERR "))
    server = _address.parse_server(f"redis://127.0.0.1:{guarded.port}/0")
    assert "authentication failed" in str(_redis.describe(error, server))


# ------------------------------------------------------------------------ safe model
def test_create_false_and_the_model_and_size_rules(url: str) -> None:
    for cls in (pipebit.SafeSender, pipebit.SafeReceiver, pipebit.FastSender, pipebit.FastReceiver):
        with pytest.raises(pipebit.PipeNotFoundError):
            cls(url, 0, create=False)
    with pipebit.SafeSender(url, 0, size=2, capacity=4096) as sender:
        with pytest.raises(pipebit.PacketSizeError, match="2 elements"):
            sender.send([1])
        with pytest.raises(pipebit.PacketTypeError):
            sender.send([1, object()])  # type: ignore[list-item]
        with pytest.raises(pipebit.PacketTypeError):
            sender.send("no list")  # type: ignore[arg-type]
        with pytest.raises(pipebit.PacketSizeError, match="at most 4075 bytes") as info:
            sender.send([1, b"x" * 4096])
        for way_out in ("capacity=4096", "override=True", f"pipebit rm {url}"):  # as for a size mismatch
            assert way_out in str(info.value)
        sender.send([1, b"x" * 4000])  # the largest packet still fits
        sender.flush(timeout=10)
        stats = sender.stats()
        assert (stats.pipe.model, stats.pipe.capacity, stats.pipe.packet_len) == ("safe", 4096, 2)
        assert (stats.role, stats.packets, stats.pending) == ("sender", 1, 0)


def test_a_value_too_big_for_a_fast_pipe_names_the_ways_out(server: RedisServer, make_name: Callable[[], str]) -> None:
    url = server.pipe_url(make_name())
    try:
        with pipebit.FastSender(url, 0, slot_size=256) as sender:
            with pytest.raises(pipebit.PacketSizeError, match="at most 256 bytes") as info:
                sender.send([b"x" * 300])
            for way_out in ("slot_size=256", "override=True", f"pipebit rm {url}"):
                assert way_out in str(info.value)
    finally:
        pipebit.remove(url, force=True)


DYING_RECEIVER = """
import sys, pipebit
from pipebit import _redis
_redis.ALIVE_MS = 300  # so that, killed, it is soon dead to the others
with pipebit.SafeReceiver(sys.argv[1], 0, start="oldest") as r:
    got = []
    while len(got) < int(sys.argv[2]):
        got += r.receive(timeout=30)
    print("got", len(got), flush=True)
    while True:
        r.receive(timeout=None)
"""


@pytest.mark.parametrize("forgotten", [False, True], ids=["dead", "forgotten"])
def test_unread_start_passes_what_a_dead_receiver_read_and_still_once_it_is_forgotten(
    url: str, reaper: Reaper, monkeypatch: pytest.MonkeyPatch, forgotten: bool
) -> None:
    from pipebit import _redis

    with pipebit.SafeSender(url, 0) as sender:
        for i in range(10):
            sender.send([i])
        sender.flush(timeout=10)
        child = Child(reaper, DYING_RECEIVER, url, "10")
        child.expect("got", 30)
        wait_until(
            lambda: [p.lag for p in pipebit.pipe_stats(url).participants if p.role == "receiver"] == [0],
            10,
            "the server to hold the child's position",
        )
        child.kill()
        time.sleep(0.5)  # past its deadline
        for i in range(10, 15):
            sender.send([i])
        sender.flush(timeout=10)
        if forgotten:  # the next attach deletes its entries, and keeps how far it had read
            monkeypatch.setattr(_redis, "FORGET_MS", 0)
        with pipebit.SafeReceiver(url, 0, start="unread") as receiver:
            assert receive_n(receiver, 5, timeout=20) == [[i] for i in range(10, 15)]
            assert receiver.receive(timeout=0.3) == []
        left = [p for p in pipebit.pipe_stats(url).participants if p.role == "receiver"]
        assert len(left) == (0 if forgotten else 1)


def test_a_receiver_whose_cache_is_full_by_bytes_keeps_checking_in(url: str) -> None:
    from pipebit import _redis

    with (
        pipebit.SafeReceiver(url, 0, capacity=256 << 10, max_cached_bytes=16 << 10) as receiver,
        pipebit.SafeSender(url, 0) as sender,
    ):
        for i in range(8):
            sender.send([i, b"x" * (8 << 10)], timeout=30)
        sender.flush(timeout=30)
        wait_until(lambda: receiver.stats().pending >= 2, 10, "the receiver's cache to fill")
        time.sleep(_redis.ALIVE_MS / 1000 + 1.5)  # what a receiver that stopped checking in would outlive
        (mine,) = [p for p in pipebit.pipe_stats(url).participants if p.role == "receiver"]
        assert mine.alive, "a receiver that is alive but not reading was let go"
        assert [p[0] for p in receive_n(receiver, 8, timeout=20)] == list(range(8))


def add_raw_entry(server: RedisServer, url: str, packets: list[bytes]) -> None:
    """Append an entry of ``packets`` (encoded, or any bytes) as a sender would, moving ``head`` on."""
    name = url.rsplit("/", 1)[1]
    client = server.client()
    meta, stream = f"pipebit:{{{name}}}:meta", f"pipebit:{{{name}}}:stream"
    end_bytes, end_seq = (int(part) for part in client.hget(meta, "head").decode().split("-"))
    data = _codec.join_batch(packets)
    entry = f"{end_bytes + len(data)}-{end_seq + len(packets)}"
    client.xadd(stream, {"n": len(packets), "d": data}, id=entry)
    client.hset(meta, mapping={"head": entry, "written": end_seq + len(packets)})


def test_each_damaged_entry_is_raised_in_its_place_and_costs_only_itself(url: str, server: RedisServer) -> None:
    def send(sender: pipebit.SafeSender, value: int) -> None:
        sender.send([value])
        sender.flush(timeout=10)

    broken = b"\xc1"  # a byte MessagePack never uses
    with pipebit.SafeSender(url, 0) as sender:
        send(sender, 0)
        add_raw_entry(server, url, [_codec.encode([10]), broken, _codec.encode([11])])
        send(sender, 1)
        add_raw_entry(server, url, [_codec.encode([20]), broken])
        send(sender, 2)
    events: list[Any] = []
    with pipebit.SafeReceiver(url, 0, start="oldest") as receiver:  # all of it in the thread's first read
        quiet = 0
        while quiet < 3:
            try:
                got = receiver.receive(timeout=0.3)
            except pipebit.CorruptPacketError:
                events.append("damage")
                continue
            events += [p[0] for p in got]
            quiet = 0 if got else quiet + 1
    assert events == [0, 10, "damage", 1, 20, "damage", 2]


SENDER = """
import sys, pipebit
with pipebit.SafeSender(sys.argv[1], 0, capacity=int(sys.argv[3])) as s:
    for i in range(int(sys.argv[2])):
        s.send([i, "x" * 100])
        if i % 500 == 0:
            print("sent", i, flush=True)
    s.flush(timeout=120)
print("done", flush=True)
"""

HOLDER = """
import sys, time, pipebit
r = pipebit.SafeReceiver(sys.argv[1], 0, max_cached=1, capacity=8192)  # reads one entry ahead, then nothing
print("ready", flush=True)
time.sleep(600)
"""


def test_a_live_stalled_receiver_holds_the_sender_and_a_killed_one_lets_go(url: str, reaper: Reaper) -> None:
    holder = Child(reaper, HOLDER, url)
    holder.expect("ready", 30)
    with pipebit.SafeSender(url, 0, capacity=8192, queue_size=10, flush_timeout=0) as sender:
        for i in range(200):  # 200 x ~106 bytes: more than the pipe holds for the holder
            try:
                sender.send([i, "x" * 100], timeout=3)
            except pipebit.PipeTimeoutError:
                break
        else:
            pytest.fail("the sender was never held back")
        time.sleep(2)  # longer than a check-in: the holder is alive, and still holds
        assert pipebit.pipe_stats(url).writers_waiting == 1
        with pytest.raises(pipebit.PipeTimeoutError):
            sender.flush(timeout=0.5)
        holder.kill()
        released = wait_until(lambda: sender.stats().pending == 0, 15, "the sender to be let go")
        assert released < 5 + 3, f"a killed receiver held the sender for {released:.1f}s"
        stats = pipebit.pipe_stats(url)
        assert stats.receivers == 0
        assert stats.unread_bytes == 0


def test_several_receivers_in_processes_each_get_everything(url: str, reaper: Reaper) -> None:
    code = """
import sys, json, pipebit
# Small caches: backpressure on the way.  The capacity the sender asks for: an explicit size is never ignored.
with pipebit.SafeReceiver(sys.argv[1], 0, max_cached=500, capacity=65536) as r:
    print("ready", flush=True)
    got = []
    while len(got) < 20000:
        got += r.receive(timeout=30)
print("got", json.dumps([p[0] for p in got]), flush=True)
"""
    receivers = [Child(reaper, code, url) for _ in range(3)]
    for child in receivers:
        child.expect("ready", 30)
    sender = Child(reaper, SENDER, url, "20000", "65536")
    sender.expect("done", 120)
    for child in receivers:
        assert child.expect_json("got", 120) == list(range(20000))


def test_reading_ahead_stops_at_max_cached_bytes(url: str) -> None:
    # 8 KiB packets, the application never calling receive(): the thread caches about
    # max_cached_bytes, plus at most one stream entry it overshoots with (a batch of up to
    # a quarter of the capacity: 8 packets here), not all 30.
    packet_bytes = 8 << 10
    with (
        pipebit.SafeReceiver(url, 0, capacity=256 << 10, max_cached_bytes=32 << 10) as receiver,
        pipebit.SafeSender(url, 0) as sender,
    ):
        for i in range(30):
            sender.send([i, b"x" * packet_bytes], timeout=30)
        sender.flush(timeout=30)
        time.sleep(1.5)  # the thread has had every chance to read more
        assert 0 < receiver.stats().pending <= 32 // 8 + 8
        got = receive_n(receiver, 30)
    assert [p[0] for p in got] == list(range(30))


def test_a_receiver_cut_off_past_its_expiry_is_told_what_it_lost(url: str, reaper: Reaper) -> None:
    code = """
import sys, pipebit
with pipebit.SafeReceiver(sys.argv[1], 0, capacity=4096) as r:
    print("ready", flush=True)
    got = []
    while True:
        try:
            got += r.receive(timeout=30)
        except pipebit.TransportError as exc:
            print("lost", exc, flush=True)
            continue
        print("seq", got[-1][0], flush=True)
"""
    receiver = Child(reaper, code, url)
    receiver.expect("ready", 30)
    with pipebit.SafeSender(url, 0, capacity=4096) as sender:
        sender.send([0, ""])
        receiver.expect("seq", 30)
        receiver.kill(signal.SIGSTOP)  # cut off: no check-in for longer than the 5 s expiry
        time.sleep(6.5)
        for i in range(1, 101):
            sender.send([i, "x" * 100], timeout=10)  # 10 KiB through a 4 KiB pipe: the oldest are trimmed
        sender.flush(timeout=10)
        receiver.kill(signal.SIGCONT)
        words = receiver.expect("lost", 30)
        assert " ".join(words).endswith("senders trimmed them meanwhile"), words
        assert 0 < int(words[words.index("lost") + 1]) < 100, words
        assert receiver.expect("seq", 30) == ["100"]


# ---------------------------------------------------------------------- connection loss
def test_a_server_restart_mid_stream_loses_and_repeats_nothing(url: str, server: RedisServer, reaper: Reaper) -> None:
    count = 6000
    steady = """
import sys, time, pipebit
with pipebit.SafeSender(sys.argv[1], 0) as s:
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        s.send([i], timeout=120)
        time.sleep(0.0005)
    s.flush(timeout=120)
print("done", flush=True)
"""
    with pipebit.SafeReceiver(url, 0) as receiver, pipebit.FastReceiver(url + "_fast", 0) as fast:
        sender = Child(reaper, steady, url, str(count))
        sender.expect("ready", 30)
        got = receive_n(receiver, 200)
        server.restart(down_for=1.0)  # SIGTERM: Redis writes its append-only file, then comes back
        got += receive_n(receiver, count - len(got), timeout=120)
        sender.expect("done", 120)
        assert receiver.receive(timeout=0.5) == []
        with pipebit.FastSender(url + "_fast", 0) as fast_sender:  # Fast endpoints reconnect too
            fast_sender.send(["after"])
            assert fast.receive(timeout=10) == [["after"]]
    assert [p[0] for p in got] == list(range(count))
    pipebit.remove(url + "_fast")


def test_a_sender_keeps_its_queue_while_the_server_is_away(tmp_path: Path) -> None:
    own = start_server(tmp_path, appendonly=True)
    try:
        url = own.pipe_url("away")
        with pipebit.SafeReceiver(url, 0) as receiver, pipebit.SafeSender(url, 0) as sender:
            sender.send([0])
            assert receive_n(receiver, 1) == [[0]]
            own.stop()
            for i in range(1, 101):
                sender.send([i], timeout=0)  # returns at once: the queue has room
            with pytest.raises(pipebit.PipeTimeoutError):
                sender.flush(timeout=0.5)
            own.start()
            sender.flush(timeout=30)
            assert receive_n(receiver, 100) == [[i] for i in range(1, 101)]
        pipebit.remove(url)
    finally:
        own.stop()


# ------------------------------------------------------------------------ fast model
def test_fast_over_redis_newest_value_for_late_and_live_receivers(url: str, reaper: Reaper) -> None:
    code = """
import sys, pipebit
with pipebit.FastSender(sys.argv[1], 0) as s:
    for i in range(2000):
        s.send([i, "v"])
print("done", flush=True)
"""
    with pipebit.FastReceiver(url, 0, start="new") as live:
        child = Child(reaper, code, url)
        seen: list[int] = []
        while not seen or seen[-1] < 1999:
            batch = live.receive(timeout=30)
            assert batch, "no value within 30 s"
            seen.append(batch[0][0])
        child.expect("done", 30)
    assert seen == sorted(set(seen))  # never backwards, never twice
    with pipebit.FastReceiver(url, 0) as late:
        assert late.receive(timeout=0) == [[1999, "v"]]
        assert late.receive(timeout=0.2) == []


STOPPED_FAST_RECEIVER = """
import sys, pipebit
with pipebit.FastReceiver(sys.argv[1], 0) as r:
    print("ready", flush=True)
    while True:
        print("got", r.receive(timeout=None)[0][0], flush=True)
"""


def test_a_fast_receiver_stopped_after_the_reply_came_returns_the_newest_value(url: str, reaper: Reaper) -> None:
    # Stopped while blocked in receive(): the server's reply (value 1) waits in its socket while
    # 2..50 are published.  Once resumed, receive() must give the newest value, as on shared memory.
    with pipebit.FastSender(url, 0) as sender:
        child = Child(reaper, STOPPED_FAST_RECEIVER, url)
        child.expect("ready", 30)
        sender.send([0])
        assert child.expect("got", 30) == ["0"]
        time.sleep(0.3)  # blocked in receive() again
        child.kill(signal.SIGSTOP)
        time.sleep(0.3)
        for i in range(1, 51):
            sender.send([i])
        time.sleep(1.5)  # longer than a blocking read: its reply is long in the socket
        child.kill(signal.SIGCONT)
        assert child.expect("got", 30) == ["50"]


def test_fast_send_never_waits_for_a_frozen_server(url: str, server: RedisServer) -> None:
    # The server stopped with SIGSTOP: the connection is up, but nothing answers.  send()
    # hands values to the background thread and returns; flush() says the value is not
    # out yet; once the server runs again the newest value reaches the receiver.
    assert server.process is not None
    with pipebit.FastReceiver(url, 0, start="new") as receiver, pipebit.FastSender(url, 0) as sender:
        sender.send([0])
        sender.flush(timeout=30)
        assert receiver.receive(timeout=10) == [[0]]
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(1, 1001):
                sender.send([i])
            sending = time.monotonic() - started
            with pytest.raises(pipebit.PipeTimeoutError, match="not published"):
                sender.flush(timeout=0.5)
        finally:
            server.process.send_signal(signal.SIGCONT)
        sender.flush(timeout=30)
        seen = [0]
        while seen[-1] != 1000:
            batch = receiver.receive(timeout=10)
            assert batch, f"the newest value never came; last seen {seen[-1]}"
            seen.append(batch[0][0])
    assert seen == sorted(set(seen))  # never backwards, never twice
    # A round trip to the frozen server would have taken the 5 s socket timeout.
    assert sending < 2.0, f"1000 send()s took {sending:.1f} s while the server was frozen"


# ------------------------------------------------------------------- fork and exit
def test_fork_closes_inherited_redis_endpoints_in_the_child(url: str, reaper: Reaper) -> None:
    code = """
import os, sys, pipebit
sender = pipebit.SafeSender(sys.argv[1], 0)
pid = os.fork()
if pid == 0:
    try:
        sender.send([1])
    except pipebit.PipeClosedError as exc:
        os._exit(0 if "fork" in str(exc) else 1)
    os._exit(2)
_, status = os.waitpid(pid, 0)
sender.send(["parent"])
print("child", os.waitstatus_to_exitcode(status), flush=True)
"""
    with pipebit.SafeReceiver(url, 0) as receiver:
        child = Child(reaper, code, url)
        assert child.expect("child", 30) == ["0"]
        assert receive_n(receiver, 1) == [["parent"]]  # and the exit flushed it
        assert child.wait(30) == 0


# -------------------------------------------------------------------- seed scripts
def test_the_seed_scripts_run_unchanged_across_machines_with_pipebit_url(server: RedisServer) -> None:
    env = {"PIPEBIT_URL": server.url}
    try:
        receiver = run_script("receiver.py", **env)  # on "the server"
        try:
            time.sleep(0.5)
            sender = run_script("sender.py", **env)  # on "the sensor box"
            out, err = sender.communicate(timeout=60)
            assert sender.returncode == 0, err
            assert "Finished!" in out
            assert "pipebit:" in err  # debug=1
            assert read_packets(receiver, 50) == EXPECTED
        finally:
            stop(receiver)
        # A receiver started after: the first one read all 50, so with start="unread" (the
        # default) it gets none of them again, only what the next run of the sender sends.
        late = run_script("receiver.py", **env)
        try:
            time.sleep(0.5)
            again = run_script("sender.py", **env)
            out, err = again.communicate(timeout=60)
            assert again.returncode == 0, err
            assert read_packets(late, 50) == EXPECTED
            time.sleep(1.0)  # were the first run's packets delivered too, 50 more would be printed by now
            late.send_signal(signal.SIGINT)
            late.wait(10)
            assert late.stdout is not None
            rest = late.stdout.read()  # what read_packets() buffered, too
            assert "[" not in rest, rest
        finally:
            stop(late)
    finally:
        pipebit.remove(server.pipe_url("data_pipe"), force=True)


# ------------------------------------------------------------------------------- CLI
def test_cli_over_redis_with_a_url_and_with_pipebit_url(server: RedisServer, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with pipebit.SafeReceiver(url, 0) as receiver:
        cli = [sys.executable, "-m", "pipebit"]
        run = subprocess.run
        assert run([*cli, "send", url, "[1]", "[2]"], capture_output=True, timeout=30, check=False).returncode == 0
        assert receive_n(receiver, 2) == [[1], [2]]
        listed = run([*cli, "ls", "--json", server.url], capture_output=True, text=True, timeout=30, check=True)
        row = next(r for r in json.loads(listed.stdout) if r["name"] == name)
        assert (row["model"], row["packets_written"], row["receivers"], row["state"]) == ("safe", 2, 1, "live")
        env = {**os.environ, "PIPEBIT_URL": server.url}
        shown = run([*cli, "stat", name], capture_output=True, text=True, timeout=30, env=env, check=True)
        assert "1 live receiver(s)" in shown.stdout
        refused = run([*cli, "rm", name], capture_output=True, text=True, timeout=30, env=env, check=False)
        assert refused.returncode == 1
        assert "live process" in refused.stderr
    removed = run([*cli, "rm", name], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert (removed.returncode, removed.stdout.strip()) == (0, f"removed {name}")
    assert not server.pipebit_keys()


def test_an_endpoint_of_a_removed_pipe_is_told(url: str) -> None:
    sender = pipebit.SafeSender(url, 0)
    receiver = pipebit.SafeReceiver(url, 0)
    try:
        pipebit.remove(url, force=True)
        with pytest.raises(pipebit.PipeClosedError, match="removed"):
            receiver.receive(timeout=5)

        def send_and_flush() -> None:
            sender.send([1])
            sender.flush(timeout=5)

        with pytest.raises(pipebit.PipeClosedError, match="removed"):  # from send(), or at the latest flush()
            send_and_flush()
    finally:
        receiver.close_connection()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pipebit.UndeliveredPacketsWarning)  # [1], if send() took it
            sender.close_connection()
