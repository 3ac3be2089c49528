"""A Safe receiver's cache and the thread that reads ahead into it, whatever the transport.

:class:`ReceiveCache` is the part of :class:`pipebit.SafeReceiver` between the
back-end and ``receive()``: who reads the pipe when (a ``receive()`` call itself
while the application waits in one, the caching thread while it is busy
elsewhere -- or, when the back-end cannot be read from the caller's thread, the
thread always), the cache bounded in packets and bytes, and damage or loss met
in the pipe, kept to be raised at its place among the packets.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._async import AsyncReceiving
from ._frames import Held, release_views
from ._limits import Packet
from ._readiness import Readiness
from ._transport import SafeReader
from ._worker import Worker

# The longest the caching thread waits before looking by itself.  Senders wake
# it at once; this only bounds the cost of a wake-up lost to a crash.
SLEEP_SLICE = 2.0
# After a receive() call returns, the caching thread leaves the pipe to the
# application for this long, so a receive() loop reads with no thread hand-off.
HANDBACK = 0.02
# A receive() call stops reading the pipe once it has decoded this many bytes (it
# always takes at least one batch).  An application frees what one call returned all
# at once; megabytes of big packets freed together make glibc hand the memory back to
# the system, and the next packets then fault in fresh pages (a 1 MiB packet stream
# here: 75 page faults and ~350 us of receiver CPU per packet, against 3 and ~90 us).
READ_BYTES = 1 << 20
# How long a caching thread that may not read (its cache is full) waits between looks.
BLOCKED_PAUSE = 0.5
# How often a caching thread that holds views of the pipe looks whether a sender waits for room.
VIEWS_SLICE = 0.02


class ReceiveCache(AsyncReceiving):
    """The cache, its reading thread and the hand-over of the pipe (see the module's docstring).

    In event mode (``_ready`` set: a coroutine awaited, or ``fileno()`` was asked for) the
    thread reads ahead whenever the cache has room, never leaving the pipe to ``receive()``
    calls for ``HANDBACK``, and sets the readiness descriptor when the cache gains packets.
    """

    _mutex: threading.Lock
    _cond: threading.Condition
    _read_lock: threading.Lock
    _cache: list[Packet]
    _cached_bytes: int  # pipe bytes of the batches in the cache
    _reader_blocked: bool
    _views_cached: bool  # the cache may hold packets viewing the pipe (framed records' arrays)
    _callers: int
    _waiters: int
    _last_call: float
    # Damage or loss met in the pipe, raised by receive() once the packets before it are
    # returned: the first _problem_at cached packets come first.  While one waits, no more
    # is cached.
    _problem: Exception | None
    _problem_at: int
    _problem_end: Any  # the reader's position after the damaged batch
    _cache_start: Any  # the reader's position at the first cached packet
    _max_cached: int
    _max_cached_bytes: int
    _returned: int
    _reads_in_caller: bool
    _worker: Worker | None
    _reader: SafeReader | None
    _ready: Readiness | None  # event mode: readable while the cache holds packets or a problem
    _collecting: bool  # the caching thread has not ended

    def _init_cache(self, max_cached: int, max_cached_bytes: int) -> None:
        self._max_cached = max_cached
        self._max_cached_bytes = max_cached_bytes
        self._new_locks()
        self._clear_cache()
        self._returned = 0
        self._worker = None
        self._reader = None
        self._ready = None
        self._collecting = False
        self._init_async()

    def _clear_cache(self) -> None:
        self._cache = []
        self._cached_bytes = self._callers = self._waiters = self._problem_at = 0
        self._last_call = 0.0
        self._reader_blocked = self._views_cached = False
        self._problem = self._problem_end = self._cache_start = None

    def _take_cache(self) -> list[Packet]:
        """What receive() returns from the cache: all of it, or the packets before damage met
        after them.  Raises the damage's error when it is next.  Under the mutex; the caller
        counts the packets as returned."""
        if self._reader_blocked:
            self._cond.notify_all()
        ready = self._ready
        if ready is not None:
            ready.clear()  # set again below if something is left
        problem = self._problem
        if problem is None:
            packets = self._cache
            self._cache = []
            self._cached_bytes = 0
            self._views_cached = False
            return packets
        if ready is not None:
            ready.set()
        cut = self._problem_at
        if cut == 0:
            self._problem = None
            if not self._cache and ready is not None:
                ready.clear()
            raise problem
        packets, self._cache = self._cache[:cut], self._cache[cut:]
        self._problem_at = 0
        self._cache_start = self._problem_end
        if not self._cache:
            self._cached_bytes = 0
        return packets

    def _wait_for_cache(self, limit: float | None) -> list[Packet]:
        """receive() where only the caching thread reads: wait for it.  Under the mutex."""
        deadline = None if limit is None else time.monotonic() + limit
        self._waiters += 1
        try:
            while not self._cache and self._problem is None:
                self._require_open()  # closed while we waited
                assert self._worker is not None
                self._worker.check()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
        finally:
            self._waiters -= 1
        cached = self._take_cache()
        self._returned += len(cached)
        return cached

    def _read_in_call(self, reader: SafeReader, limit: float | None, *, look_at_cache: bool) -> list[Packet]:
        """Read the pipe in the caller's thread, waiting up to ``limit``.  Holds the read lock.

        ``look_at_cache``: first return what the caching thread read before it handed
        over the pipe (after each wait this is looked at anyway).
        """
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            if look_at_cache:
                with self._mutex:
                    self._require_open()  # closed while we waited
                    if self._cache or self._problem is not None:  # the thread read that first
                        return self._take_cache()
            look_at_cache = True
            packets = reader.read(self._max_cached, READ_BYTES)
            problem = reader.problem
            if problem is not None:  # raised now, or by the next call, after these packets
                if not packets:
                    raise problem
                with self._mutex:
                    self._problem, self._problem_at = problem, 0
            if packets:
                return packets
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            reader.wait_in_call(SLEEP_SLICE if remaining is None else min(remaining, SLEEP_SLICE))

    def _collect(self, stopping: threading.Event) -> None:
        """The caching thread: while the application is not in receive(), read ahead into the
        cache until it is full (over Redis: always, checking in meanwhile)."""
        try:
            self._read_ahead(stopping)
        finally:  # a failure is raised by receive(): wake it now
            with self._mutex:
                self._collecting = False
                if self._ready is not None:
                    self._ready.set()
                self._cond.notify_all()

    def _read_ahead(self, stopping: threading.Event) -> None:
        reader = self._reader
        assert reader is not None
        in_caller = self._reads_in_caller
        while not stopping.is_set():
            with self._mutex:
                room = self._room(in_caller)
                if room is None:  # full, or a problem not raised yet: wait for receive()
                    self._reader_blocked = True
                    self._cond.wait(BLOCKED_PAUSE)
                    self._reader_blocked = False
            if room is None:
                reader.keepalive()  # a receiver that does not read must still look alive
                continue
            if not room:
                continue  # the application reads for itself meanwhile
            with self._read_lock:
                if stopping.is_set() or self._callers:
                    continue
                start = reader.position()
                packets = reader.read(*room)
                problem = reader.problem
                if packets or problem is not None:
                    self._add_to_cache(packets, start)
                    # The cache holds them now.  Held here too, the views of a framed record
                    # would outlive receive()'s copies of them, and keep senders waiting for
                    # as long as the application stays in receive() calls (this thread does
                    # not read then, so nothing would replace them).
                    del packets
                    continue
                if self._ready is None:
                    if not self._callers:
                        self._wait_for_data(reader)
                    continue
            # Event mode: it sleeps without the read lock, which an awaiting coroutine takes
            # to read for itself (_read_in_loop()).
            self._wait_for_data(reader)

    def _add_to_cache(self, packets: list[Packet], start: Any) -> None:
        """Cache what a read returned (``start``: where it began), with the damage it met."""
        reader = self._reader
        assert reader is not None
        problem = reader.problem
        with self._mutex:
            if not self._cache:
                self._cache_start = start
            if reader.framed and not self._views_cached:
                self._views_cached = any(type(p) is Held for p in packets)
            self._cache += packets
            self._cached_bytes += reader.bytes_read
            if problem is not None:  # for receive() to raise after these packets
                self._problem, self._problem_at = problem, len(self._cache)
                self._problem_end = reader.position()
            if self._ready is not None:
                self._ready.set()
            if self._waiters:
                self._cond.notify_all()

    def _wait_for_data(self, reader: SafeReader) -> None:
        """The caching thread, with nothing to read: sleep until a writer commits.

        Read ahead, a framed record's arrays stay views of the pipe until receive() hands
        them over (with ``copy=False``, as views).  But a cache is not the application: it
        must not hold senders back.  So while it holds views it looks every VIEWS_SLICE
        whether a sender waits for room, and if one does, it copies them, letting their
        records go.
        """
        # In event mode it waits for a coroutine as receive() would: ``spin`` applies.
        wait = reader.wait if self._ready is None else reader.wait_in_call
        if not self._views_cached:
            wait(SLEEP_SLICE)
        elif not reader.writers_waiting():
            wait(VIEWS_SLICE)
        else:
            with self._mutex:
                self._cache = [release_views(p, True) if type(p) is Held else p for p in self._cache]
                self._views_cached = False

    def _room(self, in_caller: bool) -> tuple[int, int] | tuple[()] | None:
        """(packets, bytes) the caching thread may read now, ``()`` while the application reads
        for itself (it waits a little for that), ``None`` when it must not read: the cache is
        full, or holds a problem not raised yet.  Under the mutex."""
        if in_caller:
            idle = time.monotonic() - self._last_call
            if self._callers or (idle < HANDBACK and self._ready is None):  # the application reads for itself
                self._cond.wait(HANDBACK if self._callers else HANDBACK - idle)
                return ()
        if (
            len(self._cache) >= self._max_cached
            or self._cached_bytes >= self._max_cached_bytes
            or self._problem is not None
        ):
            return None
        return self._max_cached - len(self._cache), self._max_cached_bytes - self._cached_bytes

    # ------------------------------------------------------------ event mode
    def _open_readiness(self) -> Readiness:
        """Switch event mode on (once per connection) and count a user of the readiness."""
        with self._mutex:
            self._require_open()
            ready = self._ready
            if ready is None:
                ready = self._ready = Readiness()
                reader = self._reader
                if reader is not None and self._reads_in_caller:
                    ready.wake = reader.bind_wake_socket()
                if self._cache or self._problem is not None or not self._collecting:
                    ready.set()
                self._cond.notify_all()  # the thread stops leaving the pipe to receive() calls
            ready.use()
            return ready

    def _take_ready(self) -> list[Packet]:
        """What a coroutine takes as it resumes: never reads the pipe, never waits (the
        caching thread reads, and a receive() in the caller's thread may hold the pipe)."""
        with self._mutex:
            if self._front:
                return self._take_front()
            if self._cache or self._problem is not None:
                cached = self._take_cache()
                self._returned += len(cached)
                return cached
            self._require_open()
            assert self._worker is not None
            self._worker.check()
        return []

    def _read_in_loop(self) -> list[Packet]:
        """A coroutine reads the pipe for itself, in the loop's thread, if nothing waits in the
        cache and no one else reads right now (never waits: ``[]`` then); raises what
        ``receive()`` would raise.  What it reads it returns whole, in the same step of the
        coroutine, so that a cancellation cannot come between."""
        with self._mutex:
            reader = self._require_open()
            cached = bool(self._front or self._cache or self._problem is not None)
            # The read lock taken means the caching thread reads now: it sets readiness after.
            reads = not cached and self._read_lock.acquire(blocking=False)
        if not reads:
            return self._take_ready()
        try:
            start = reader.position()
            packets: list[Packet] = reader.read(self._max_cached, READ_BYTES)
            if reader.problem is not None:  # raised after these packets, as receive() does
                self._add_to_cache(packets, start)
                return self._take_ready()
        finally:
            self._read_lock.release()
        if packets:
            with self._mutex:
                self._returned += len(packets)
        return packets

    def _expect_wake(self) -> bool:
        reader = self._reader
        return reader is not None and reader.expect_wake()

    def _wake_expected(self) -> None:
        reader = self._reader
        if reader is not None:
            reader.wake_expected()

    def _retire_readiness(self) -> None:
        """Closing: waiting coroutines wake and raise PipeClosedError.  Under the mutex."""
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.retire()

    def _new_locks(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        # Whoever holds the read lock may use the reader: a receive() call, or the caching
        # thread.  The thread gives way while calls are in progress and for HANDBACK
        # seconds after the last one.
        self._read_lock = threading.Lock()
