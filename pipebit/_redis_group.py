"""Receiver groups of a Safe pipe on a Redis server: a consumer group of the pipe's stream.

Guarantees as on shared memory (``docs/groups.md``); the mechanism behind each:

* **Each packet to one member.**  A group is a consumer group of the stream; a
  member is a consumer.  A claim is ``XREADGROUP ... >``: whole stream entries, each
  to one consumer.  While a pipe has groups, senders keep entries small
  (:data:`~pipebit._limits.GROUP_ENTRY_PACKETS`), so that work can be shared.
* **Nothing lost when a member dies.**  What a member was given stays in the
  group's pending entries until it acknowledges it (``XACK``, sent with its next
  claim).  A claim first looks at the pending entries: those of a consumer whose
  check-in deadline has passed (dead, or cut off for 5 s) are taken over with
  ``XCLAIM`` and handed out before any new entry.
* **Durable.**  Each claim stores the group's release position -- the start of its
  oldest pending entry, or the end of the last entry delivered -- in the pipe's
  ``groups`` hash, which the sending script treats like a live receiver's position,
  whether the group has members or not.

Every step is a Lua script, atomic on the server (:mod:`pipebit._redis` has the
keys).  A member checks in from a thread of its face every second while the
application works, so a slow job does not make it look dead.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from . import _codec
from . import _redis as R
from ._address import RedisPipe
from ._group import BatchSizer
from ._layout import GROUPS
from ._limits import DEFAULT_CAPACITY, GROUP_ENTRY_PACKETS, Packet
from ._redis_member import Log, RedisMember
from .errors import PipeBusyError, PipeClosedError, PipeNotFoundError

# Join (or create, at ARGV[4]) group ARGV[1] as consumer ARGV[2].  ARGV: group, id, created_ns,
# start position, most groups
_JOIN = (
    R._LUA_PRELUDE
    + """
local m = redis.call('HMGET', KEYS[1], 'created_ns', 'head')
if m[1] ~= ARGV[3] then return {'gone'} end
local g = ARGV[1]
if redis.call('HEXISTS', KEYS[7], g) == 0 then
  if redis.call('HLEN', KEYS[7]) >= tonumber(ARGV[5]) then return {'full'} end
  local made = redis.pcall('XGROUP', 'CREATE', KEYS[2], g, ARGV[4], 'MKSTREAM')
  if type(made) == 'table' and made.err then redis.call('XGROUP', 'SETID', KEYS[2], g, ARGV[4]) end
  redis.call('HSET', KEYS[7], g, ARGV[4])
  redis.call('HSET', KEYS[8], g .. '.last', ARGV[4], g .. '.created', fmt(now_ms()), g .. '.delivered', 0,
    g .. '.redelivered', 0, g .. '.acked', 0, g .. '.unacked', 0)
end
redis.call('HSET', KEYS[8], 'm.' .. ARGV[2], g)
redis.call('XGROUP', 'CREATECONSUMER', KEYS[2], g, ARGV[2])
return {'ok'}
"""
)

# Acknowledge, then claim.  ARGV: group, id, created_ns, ttl ms, info, entries wanted, packets
# acknowledged, then the ids acknowledged.  Returns status, redelivered?, packets no member has
# taken, live members, then the entries.
_CLAIM = (
    R._LUA_PRELUDE
    + """
local now = now_ms()
local m = redis.call('HMGET', KEYS[1], 'created_ns', 'written')
if m[1] ~= ARGV[3] then return {'gone'} end
local g, me = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[7], g) == 0 then return {'nogroup'} end
check_in(me, ARGV[5], ARGV[4], now)
if #ARGV > 7 then
  redis.call('XACK', KEYS[2], g, unpack(ARGV, 8))
  redis.call('HINCRBY', KEYS[8], g .. '.acked', ARGV[7])
  redis.call('HINCRBY', KEYS[8], g .. '.unacked', -tonumber(ARGV[7]))
end
local entries, again = {}, 0
local function alive(consumer) return tonumber(redis.call('HGET', KEYS[4], consumer) or '0') > now end
if tonumber(ARGV[6]) > 0 then
  local dead, ids = nil, {}
  for _, p in ipairs(redis.call('XPENDING', KEYS[2], g, '-', '+', 1000)) do
    if p[2] ~= me and (p[2] == dead or (not dead and not alive(p[2]))) then dead = p[2]; ids[#ids + 1] = p[1] end
  end
  if dead then
    again = 1
    for _, e in ipairs(redis.call('XCLAIM', KEYS[2], g, me, 0, unpack(ids))) do
      if e then entries[#entries + 1] = e end
    end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[2], g, dead)
    redis.call('HDEL', KEYS[8], 'm.' .. dead)
  else
    local read = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', ARGV[6], 'STREAMS', KEYS[2], '>')
    if read and read[1] then entries = read[1][2] end
    if #entries > 0 then redis.call('HSET', KEYS[8], g .. '.last', entries[#entries][1]) end
  end
end
local n = 0
for _, e in ipairs(entries) do
  local _, first = entry_start(e)
  local _, after = split(e[1])
  n = n + after - first
end
redis.call('HINCRBY', KEYS[8], g .. '.delivered', n)
if again == 1 then redis.call('HINCRBY', KEYS[8], g .. '.redelivered', n)
else redis.call('HINCRBY', KEYS[8], g .. '.unacked', n) end
local last = redis.call('HGET', KEYS[8], g .. '.last')
local release = last
local summary = redis.call('XPENDING', KEYS[2], g)
if tonumber(summary[1]) > 0 then
  local oldest = redis.call('XRANGE', KEYS[2], summary[2], summary[2])[1]
  if oldest then local b, s = entry_start(oldest); release = fmt(b) .. '-' .. fmt(s) end
end
redis.call('HSET', KEYS[7], g, release)
local members = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], g)) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if alive(info['name']) then members = members + 1
  elseif tonumber(info['pending']) == 0 then  -- a dead member that held nothing: forget it
    redis.call('XGROUP', 'DELCONSUMER', KEYS[2], g, info['name'])
    redis.call('HDEL', KEYS[8], 'm.' .. info['name'])
  end
end
local _, done = split(last)
return {'ok', again, fmt(tonumber(m[2] or '0') - done), members, entries}
"""
)

# Leave group ARGV[1] as consumer ARGV[2], having acknowledged ARGV[4..] (ARGV[3] packets).
_LEAVE_GROUP = (
    R._LUA_PRELUDE
    + """
local g, me = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[7], g) == 0 then return 'gone' end
if #ARGV > 3 then
  redis.call('XACK', KEYS[2], g, unpack(ARGV, 4))
  redis.call('HINCRBY', KEYS[8], g .. '.acked', ARGV[3])
  redis.call('HINCRBY', KEYS[8], g .. '.unacked', -tonumber(ARGV[3]))
end
local mine = redis.call('XPENDING', KEYS[2], g, '-', '+', 1, me)
if #mine == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[2], g, me) end
redis.call('HDEL', KEYS[8], 'm.' .. me)
return 'ok'
"""
)

# Remove group ARGV[1], unless a live member is attached.
_REMOVE = (
    R._LUA_PRELUDE
    + """
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nopipe'} end
local g = ARGV[1]
if redis.call('HEXISTS', KEYS[7], g) == 0 then return {'missing'} end
local live = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], g)) do
  for i = 1, #c, 2 do
    if c[i] == 'name' and tonumber(redis.call('HGET', KEYS[4], c[i + 1]) or '0') > now then live = live + 1 end
  end
end
if live > 0 then return {'busy', live} end
redis.call('XGROUP', 'DESTROY', KEYS[2], g)
redis.call('HDEL', KEYS[7], g)
for _, f in ipairs({'last', 'created', 'delivered', 'redelivered', 'acked', 'unacked'}) do
  redis.call('HDEL', KEYS[8], g .. '.' .. f)
end
return {'ok'}
"""
)


class RedisGroupReader(RedisMember):
    """A member of a receiver group of a Safe pipe on a Redis server (see the module's docstring)."""

    keepalive_interval: float | None = R.BEAT_INTERVAL

    def __init__(
        self,
        address: RedisPipe,
        *,
        group: str,
        start: str,
        capacity: int | None,
        batch: int | None,
        max_packets: int,
        create: bool,
        log: Log | None,
    ) -> None:
        super().__init__(address, "member", create, log)
        position, _ = self.join(size=capacity, default=DEFAULT_CAPACITY, start=start)
        self.group = group
        self.sizer = BatchSizer(batch, max_packets)
        link = self.link
        assert link is not None
        try:
            self._claim = link.client.register_script(_CLAIM)
            self._leave_group = link.client.register_script(_LEAVE_GROUP)
            reply = link.call(
                lambda: link.client.register_script(_JOIN)(
                    keys=self.keys(), args=[group, self.member, self.created, position, GROUPS]
                )
            )
            status = R.decode_text(reply[0])
            if status == "full":
                raise PipeBusyError(
                    f"pipe {self.shown!r} already has {GROUPS} receiver groups, so group {group!r} cannot be "
                    "created; remove one with pipebit.remove_group() or `pipebit rm NAME --group G`"
                )
            if status == "gone":
                raise self.removed()
        except BaseException:
            self.leave()
            raise
        self.problem: Exception | None = None
        self._held: list[str] = []  # ids of the entries returned last, not acknowledged yet
        self._held_packets = 0
        self._available, self._members = 0, 1  # as the last claim saw them
        self._received = 0

    def take(self, timeout: float | None, closing: Callable[[], bool]) -> list[Packet]:
        """Acknowledge the entries returned last, claim the next (a dead member's first), and
        decode them; wait on the server while there are none."""
        self.sizer.learn()
        self.problem = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            want = self.sizer.want(max(self._available, 1), self._members)
            entries = self._round_trip(max(1, math.ceil(want / GROUP_ENTRY_PACKETS)))
            if entries:
                return self._decode(entries)
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or closing():
                return []
            self._wait(1.0 if remaining is None else min(remaining, 1.0))

    def _round_trip(self, entries: int) -> list[Any]:
        link = self.link
        assert link is not None
        args: list[Any] = [self.group, self.member, self.created, R.ALIVE_MS, self.info, entries, self._held_packets]
        try:
            reply = self._claim(keys=self.keys(), args=[*args, *self._held])
        except Exception as exc:
            self.recover(exc)
            return []
        self._attempt = 0
        status = R.decode_text(reply[0])
        if status == "gone":
            raise self.removed()
        if status == "nogroup":
            raise PipeClosedError(f"receiver group {self.group!r} of pipe {self.shown!r} was removed")
        self._held, self._held_packets = [], 0
        self._available, self._members = int(reply[2]), int(reply[3])
        return list(reply[4])

    def _decode(self, entries: list[Any]) -> list[Packet]:
        packets: list[Packet] = []
        for entry_id, raw in entries:
            fields = dict(zip(raw[::2], raw[1::2]))
            count, payload = int(fields.get(b"n", 0)), fields.get(b"d", b"")
            self._held.append(R.decode_text(entry_id))
            self._held_packets += count
            decoded, damage = _codec.decode_batch(payload, count)
            packets += decoded
            if damage is not None and self.problem is None:
                self.problem = type(damage)(f"pipe {self.shown!r}, receiver group {self.group!r}: {damage}")
        self._received += len(packets)
        self.sizer.returned(len(packets))
        return packets

    def _wait(self, seconds: float) -> None:
        """Block on the server until an entry newer than the group's last arrives, or ``seconds``."""
        link = self.link
        assert link is not None
        try:
            last = link.client.hget(self.keys()[7], f"{self.group}.last") or b"0-0"
            link.client.xread({self.keys()[1]: last}, count=1, block=max(1, int(seconds * 1000)))
        except Exception as exc:
            self.recover(exc)

    def ack(self) -> None:
        """Acknowledge the entries returned last (one round trip, claiming nothing)."""
        if self._held:
            self._round_trip(0)

    def keepalive(self) -> None:
        """Check in: a member busy with its batch must not look dead."""
        try:
            reply = self.beat(None, "", str(self._received))
        except Exception as exc:
            if R.transient(exc):
                return
            raise
        if R.decode_text(reply[0]) == "gone":
            raise self.removed()

    def close(self, acknowledge: bool = True) -> None:
        """Leave the group (acknowledging the entries returned last, unless not ``acknowledge``:
        they then go to another member), then the pipe."""
        link = self.link
        if link is not None:
            held = self._held if acknowledge else []
            args: list[Any] = [self.group, self.member, self._held_packets if acknowledge else 0, *held]
            try:
                self._leave_group(keys=self.keys(), args=args)
            except Exception as exc:
                self._log(f"could not leave the group: {exc}")
        self.leave()


def open_member(address: RedisPipe, **options: Any) -> RedisGroupReader:
    return RedisGroupReader(address, **options)


def remove_group(address: RedisPipe, group: str) -> None:
    """Remove receiver group ``group`` of pipe ``address``; see :func:`pipebit.remove_group`."""
    link = R.Link(address.server)
    try:
        reply = link.call(
            lambda: link.client.register_script(_REMOVE)(keys=R.pipe_keys(address.name, "safe"), args=[group])
        )
        status = R.decode_text(reply[0])
        if status == "nopipe":
            raise PipeNotFoundError(f"no pipe {str(address)!r} exists")
        if status == "missing":
            raise PipeNotFoundError(f"pipe {str(address)!r} has no receiver group {group!r}")
        if status == "busy":
            raise PipeBusyError(
                f"receiver group {group!r} of pipe {str(address)!r} has {reply[1]} live member(s); close them first"
            )
    finally:
        link.close()
