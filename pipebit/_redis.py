"""Pipes on a Redis server: the keys, the server-side scripts, connecting, snapshots, removal.

Every key of pipe ``<name>`` carries the hash tag ``{<name>}``, so a pipe's keys
share one cluster slot and each script touches only keys it declares:

* ``pipebit:{<name>}:meta`` (hash) -- ``model`` (``safe``/``fast``), ``capacity``,
  ``packet_len``, ``created_ns`` (the incarnation), ``head``, ``tail`` and
  ``read_mark`` (Safe: how far receivers that have left had read), ``written``,
  ``last_write_ms``;
* ``pipebit:{<name>}:stream`` (Safe) -- one entry per batch of packets, fields
  ``n`` (packet count) and ``d`` (a MessagePack array of the packets).  An entry's
  id is ``<bytes>-<packets>``: the pipe's byte and packet counts at the end of the
  entry, so ids grow with every entry and positions compare like ring offsets;
* ``pipebit:{<name>}:latest`` (Fast) -- a stream trimmed to its newest entry;
* ``pipebit:{<name>}:members``, ``:alive``, ``:receivers``, ``:counts`` (hashes by
  member id) -- who is attached (``role pid attached_ms host``), until when it is
  alive (a deadline on the server's clock, pushed forward every second), each
  Safe receiver's position (the id of the last entry it read), and packets
  counted (senders: acknowledged, which also makes retried deliveries idempotent);
* ``pipebit:{<name>}:groups`` (hash by group name) -- each receiver group's release
  position, which holds senders back like a receiver's; ``:gstats`` its counters and
  which group each member is of (:mod:`pipebit._redis_group`; a group is also a
  consumer group of the stream).

Every decision that involves more than one key -- may a batch be added, what to
trim, where a receiver starts -- is a Lua script, so it is atomic on the server
and uses the server's clock only.  This is the only module that imports redis-py;
its errors become PipeBit errors here.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any, Callable, TypeVar

from ._address import RedisPipe, Server
from ._limits import max_packet_bytes
from ._stats import GroupStats, Participant, PipeStats
from .errors import DependencyError, PipeBusyError, PipeNotFoundError, TransportError

try:
    import redis
    import redis.backoff
    import redis.retry
except ImportError as exc:  # the optional extra
    raise DependencyError(
        f'pipes on a Redis server need the redis package: pip install "pipebit[redis]" ({exc})'
    ) from None

CONNECT_TIMEOUT = 3.0  # seconds: a server that is not there is an error this soon, never a hang
SOCKET_TIMEOUT = 5.0  # longer than any blocking read (BLOCK_MS)
BLOCK_MS = 1000  # the longest a blocking read waits before the reader checks in again
ALIVE_MS = 5000  # a member that has not checked in for this long no longer holds senders back
BEAT_INTERVAL = 1.0  # how often a member pushes its deadline forward
FORGET_MS = 3_600_000  # a dead member's entries are deleted after this long
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0  # reconnection delays, doubling
KEY_KINDS = ("meta", "data", "members", "alive", "receivers", "counts", "groups", "gstats")

#: Errors after which an operation is retried on a new connection (the server
#: restarted, the network dropped, the server is loading its data).
TRANSIENT: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)
_FATAL_CONNECTION = (redis.AuthenticationError,)

T = TypeVar("T")

_LUA_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(x) return string.format('%.0f', x) end
local function split(id)
  local b, s = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(b), tonumber(s)
end
local function entry_start(entry)
  local b, s = split(entry[1])
  local f = entry[2]
  local n, d = 0, ''
  for i = 1, #f, 2 do
    if f[i] == 'n' then n = tonumber(f[i + 1]) elseif f[i] == 'd' then d = f[i + 1] end
  end
  return b - #d, s - n
end
local function first_start(stream, head)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not first then return head end
  local b, s = entry_start(first)
  return fmt(b) .. '-' .. fmt(s)
end
local function later(a, b)
  if split(a) >= split(b) then return a end
  return b
end
local function mark_read(meta, position)
  -- A receiver that leaves (or is forgotten) had read up to position: read_mark, the furthest
  -- such position, only grows, and only to where the pipe has reached.
  local m = redis.call('HMGET', meta, 'read_mark', 'head')
  local p, head = split(position), m[2] and split(m[2])
  if not p or not head then return end
  if p > (split(m[1] or '0-0') or -1) and p <= head then redis.call('HSET', meta, 'read_mark', position) end
end
local function check_in(id, info, ttl, now)
  redis.call('HSET', KEYS[4], id, fmt(now + tonumber(ttl)))
  redis.call('HSETNX', KEYS[3], id, info)
end
"""

# Attach (creating, overriding or rebuilding the pipe as asked) and register a member.
# ARGV: model, capacity|'', default capacity, packet_len|'', override, create, id, info, role,
#       start, resume created_ns|'', resume position|'', ttl ms, forget ms
_OPEN = (
    _LUA_PRELUDE
    + """
local now = now_ms()
local meta = KEYS[1]
local live = 0
local alive = redis.call('HGETALL', KEYS[4])
for i = 1, #alive, 2 do
  local deadline = tonumber(alive[i + 1])
  if deadline + tonumber(ARGV[14]) < now then
    local read = redis.call('HGET', KEYS[5], alive[i])
    if read then mark_read(meta, read) end
    for k = 3, 6 do redis.call('HDEL', KEYS[k], alive[i], alive[i] .. '.w') end
  elseif deadline > now then live = live + 1 end
end
local status = 'attached'
local exists = redis.call('EXISTS', meta) == 1
if exists then
  local model, capacity = unpack(redis.call('HMGET', meta, 'model', 'capacity'))
  if ARGV[5] == '1' and (model ~= ARGV[1] or (ARGV[2] ~= '' and ARGV[2] ~= capacity)) then
    if live > 0 then return {'busy', tostring(live)} end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
    exists = false
  elseif model ~= ARGV[1] then
    return {'mismatch', model}
  elseif ARGV[2] ~= '' and ARGV[2] ~= capacity then
    return {'size', capacity}
  end
end
local packet_len = ARGV[4] ~= '' and ARGV[4] or '0'
if not exists then
  if ARGV[6] ~= '1' then return {'missing'} end
  local t = redis.call('TIME')
  redis.call('HSET', meta, 'model', ARGV[1], 'capacity', ARGV[2] ~= '' and ARGV[2] or ARGV[3],
    'packet_len', packet_len, 'created_ns', t[1] .. string.format('%06d', tonumber(t[2])) .. '000',
    'head', '0-0', 'tail', '0-0', 'read_mark', '0-0', 'written', '0', 'last_write_ms', '0')
  status = 'created'
elseif ARGV[5] == '1' then
  redis.call('HSET', meta, 'packet_len', packet_len, 'tail', redis.call('HGET', meta, 'head'))
  if ARGV[1] == 'fast' then redis.call('XTRIM', KEYS[2], 'MAXLEN', 0) end
  status = 'overridden'
end
check_in(ARGV[7], ARGV[8], ARGV[13], now)
local m = redis.call('HMGET', meta, 'model', 'capacity', 'packet_len', 'created_ns', 'head', 'tail')
local position = ''
if ARGV[9] == 'receiver' or ARGV[9] == 'member' then
  if ARGV[1] == 'safe' then
    local oldest = later(m[6], first_start(KEYS[2], m[5]))
    if ARGV[11] == m[4] and split(ARGV[12]) >= split(oldest) and split(ARGV[12]) <= split(m[5]) then
      position = ARGV[12]
    elseif ARGV[10] == 'new' then position = m[5]
    else
      position = oldest
      if ARGV[10] == 'unread' then
        -- Past what any receiver has read: those attached (or dead, not yet forgotten), and
        -- those that left (read_mark).  Each is an entry boundary no later than head.
        local marks = redis.call('HVALS', KEYS[5])
        marks[#marks + 1] = redis.call('HGET', meta, 'read_mark') or '0-0'
        local head = split(m[5])
        for _, mark in ipairs(marks) do
          local b = split(mark)
          if b and b > split(position) and b <= head then position = mark end
        end
      end
    end
    if ARGV[9] == 'receiver' then redis.call('HSET', KEYS[5], ARGV[7], position) end
  else
    local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
    position = (ARGV[10] == 'new' and last) and last[1] or '0-0'
  end
  redis.call('HSET', KEYS[6], ARGV[7], '0')
end
return {status, m[1], m[2], m[3], m[4], position, redis.call('HLEN', KEYS[7])}
"""
)

# Safe: append one batch if live receivers leave room, then trim what no one needs.
# ARGV: id, created_ns, packets acknowledged after this batch, n, d, ttl ms, info
_ADD = (
    _LUA_PRELUDE
    + """
local now = now_ms()
local m = redis.call('HMGET', KEYS[1], 'created_ns', 'packet_len', 'capacity', 'head', 'tail')
if m[1] ~= ARGV[2] then return {'gone'} end
check_in(ARGV[1], ARGV[7], ARGV[6], now)
local groups = redis.call('HLEN', KEYS[7])
if tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0') >= tonumber(ARGV[3]) then return {'ok', m[2], groups} end
local capacity = tonumber(m[3])
local hb, hs = split(m[4])
local low, holder = hb, ''
local positions = redis.call('HGETALL', KEYS[5])
for i = 1, #positions, 2 do
  local deadline = tonumber(redis.call('HGET', KEYS[4], positions[i]) or '0')
  local b = split(positions[i + 1])
  if deadline > now and b < low then low, holder = b, positions[i] end
end
for _, p in ipairs(redis.call('HVALS', KEYS[7])) do  -- a group holds senders back, members or not
  local b = split(p)
  if b and b < low then low, holder = b, 'group' end
end
local d = ARGV[5]
if hb + #d - low > capacity then
  redis.call('HSET', KEYS[6], ARGV[1] .. '.w', '1')
  return {'full', m[2], groups, holder, fmt(hb - low)}
end
redis.call('HDEL', KEYS[6], ARGV[1] .. '.w')
local nb, ns = hb + #d, hs + tonumber(ARGV[4])
local id = fmt(nb) .. '-' .. fmt(ns)
redis.call('XADD', KEYS[2], id, 'n', ARGV[4], 'd', d)
redis.call('HSET', KEYS[1], 'head', id, 'written', fmt(ns), 'last_write_ms', fmt(now))
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
local cut = math.min(low, math.max(nb - capacity, split(m[5])))
redis.call('XTRIM', KEYS[2], 'MINID', fmt(cut + 1))
-- MINID goes by entry ends; an entry that starts before nb - capacity and ends after it would
-- keep more than capacity bytes, where the ring would have overwritten that record: it goes
-- too, once no live receiver has it left to read.
while true do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if not first or split(first[1]) > low or entry_start(first) >= nb - capacity then break end
  redis.call('XDEL', KEYS[2], first[1])
end
return {'ok', m[2], groups}
"""
)

# Fast: publish a value as the newest (the stream keeps only it).
# ARGV: id, created_ns, publications after this one, payload, ttl ms, info
_PUBLISH = (
    _LUA_PRELUDE
    + """
local now = now_ms()
local m = redis.call('HMGET', KEYS[1], 'created_ns', 'packet_len')
if m[1] ~= ARGV[2] then return {'gone'} end
check_in(ARGV[1], ARGV[6], ARGV[5], now)
if tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0') >= tonumber(ARGV[3]) then return {'ok', m[2]} end
redis.call('XADD', KEYS[2], 'MAXLEN', '1', '*', 'd', ARGV[4])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'written', 1)
redis.call('HSET', KEYS[1], 'last_write_ms', fmt(now))
return {'ok', m[2]}
"""
)

# Check in: push the deadline forward; receivers also report position and count.
# ARGV: id, created_ns, ttl ms, info, position|'', packets|''
_BEAT = (
    _LUA_PRELUDE
    + """
local now = now_ms()
local m = redis.call('HMGET', KEYS[1], 'created_ns', 'packet_len', 'head')
if m[1] ~= ARGV[2] then return {'gone'} end
check_in(ARGV[1], ARGV[4], ARGV[3], now)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], later(ARGV[5], first_start(KEYS[2], m[3])))
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[6], ARGV[1], ARGV[6]) end
return {'ok', m[2]}
"""
)


# Leave: take a member off the pipe's lists.  A Safe receiver also says up to where it returned
# packets to its application: those no longer count as unread (read_mark).
# ARGV: id, created_ns, position|''
_LEAVE = (
    _LUA_PRELUDE
    + """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'created_ns') == ARGV[2] then mark_read(KEYS[1], ARGV[3]) end
for k = 3, 6 do redis.call('HDEL', KEYS[k], ARGV[1], ARGV[1] .. '.w') end
return 'ok'
"""
)


def keys(name: str) -> list[str]:
    """The keys of pipe ``name``, in the order the scripts expect them (see :data:`KEY_KINDS`)."""
    return [f"pipebit:{{{name}}}:{kind}" for kind in KEY_KINDS]


def data_key(name: str, model: str) -> str:
    """The stream of a Safe pipe, or the one-entry stream of a Fast pipe's current value."""
    return f"pipebit:{{{name}}}:{'stream' if model == 'safe' else 'latest'}"


def pipe_keys(name: str, model: str) -> list[str]:
    """``keys(name)`` with the data key of ``model``."""
    found = keys(name)
    found[1] = data_key(name, model)
    return found


_AUTH_FAILURES = ("WRONGPASS", "NOAUTH", "unauthenticated")


def describe(exc: BaseException, server: Server) -> TransportError:
    """The PipeBit error for a redis-py error talking to ``server``: whose fault, and what to check."""
    text = str(exc)
    # A server that wants a password may also answer a client that has not given one with
    # "Protocol error: unauthenticated multibulk length" (what redis-py 7 meets) and hang up.
    if isinstance(exc, redis.AuthenticationError) or any(word in text for word in _AUTH_FAILURES):
        why = "authentication failed (check the user and password in the URL)"
    elif isinstance(exc, (redis.TimeoutError, socket.timeout)) and "connecting" in text.lower():
        if server.tls:
            why = (
                f"no answer within {CONNECT_TIMEOUT:g}s, or no TLS handshake within {SOCKET_TIMEOUT:g}s "
                "(is the host right, the port open, and does the server speak TLS, as rediss:// asks?)"
            )
        else:
            why = f"no answer within {CONNECT_TIMEOUT:g}s (is the host right, and the port open?)"
    elif isinstance(exc, (redis.TimeoutError, socket.timeout)):
        why = f"connected, but no reply within {SOCKET_TIMEOUT:g}s (is a Redis server listening on that port?)"
    elif isinstance(exc, (redis.ConnectionError, OSError)):
        why = "cannot connect (is a Redis server running there?)"
    else:
        why = "the server refused a command"
    return TransportError(f"Redis server {server}: {why}: {exc}")


class Link:
    """One endpoint's connections to its server, with the scripts registered.

    redis-py's own retries are off: callers decide what to retry (a background
    thread, with :func:`backoff` delays) and what to report.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = redis.Redis(
            host=server.host,
            port=server.port,
            db=server.db,
            username=server.username,
            password=server.password,
            ssl=server.tls,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            socket_keepalive=True,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        self.open_script = self.client.register_script(_OPEN)
        self.add_script = self.client.register_script(_ADD)
        self.publish_script = self.client.register_script(_PUBLISH)
        self.beat_script = self.client.register_script(_BEAT)
        self.leave_script = self.client.register_script(_LEAVE)

    def reload_scripts(self) -> None:
        """Load the scripts again: a restarted server has forgotten them.  (Direct calls reload
        by themselves; pipelined ones, which skip redis-py's per-call check, need this.)
        A lost connection is left for the caller's next attempt to meet."""
        try:
            scripts = (self.open_script, self.add_script, self.publish_script, self.beat_script, self.leave_script)
            for script in scripts:
                sha: Any = self.client.script_load(script.script)  # redis-py's type for it varies by version
                script.sha = sha
        except Exception as exc:
            if not transient(exc):
                raise describe(exc, self.server) from exc

    def call(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` once; redis-py errors become :class:`TransportError`."""
        try:
            return operation()
        except redis.RedisError as exc:
            raise describe(exc, self.server) from exc

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a broken connection may fail; it is closed either way
            pass

    def forget(self) -> None:
        """In a forked child: drop the parent's connections without using them."""
        self.client = None  # type: ignore[assignment]  # the parent's: any use after this is a bug, and fails


def missing_script(exc: BaseException) -> bool:
    """Whether a pipelined script call failed because the server does not know the script."""
    return isinstance(exc, redis.exceptions.NoScriptError)


def transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying on a new connection."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, _FATAL_CONNECTION)


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0, 1, ...)."""
    return min(BACKOFF_FIRST * (1 << min(attempt, 10)), BACKOFF_MAX)


def new_member(role: str) -> tuple[str, str]:
    """A fresh member id and its description ``role pid attached_ms host``."""
    return secrets.token_hex(6), f"{role} {os.getpid()} {time.time_ns() // 1_000_000} {socket.gethostname()}"


def decode_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_entries(reply: Any) -> list[Any]:
    """The ``(id, fields)`` entries of an XREAD reply on one stream: a list of
    ``[stream, entries]`` (RESP2) or a dict ``{stream: entries}`` (RESP3); none on a timeout."""
    if not reply:
        return []
    if isinstance(reply, dict):
        entries = next(iter(reply.values()))
        if entries and entries[0] and not isinstance(entries[0][0], (bytes, str)):
            entries = entries[0]  # redis-py wraps the entries in one more list there
        return list(entries)
    return list(reply[0][1])


def split_id(entry_id: str) -> tuple[int, int]:
    """``(bytes, packets)`` of a position ``<bytes>-<packets>``."""
    head, _, tail = entry_id.partition("-")
    return int(head), int(tail or 0)


# ------------------------------------------------------------------ snapshots
def _hash(raw: Any) -> dict[str, str]:
    return {decode_text(k): decode_text(v) for k, v in (raw or {}).items()}


def read_stats(link: Link, name: str) -> tuple[PipeStats, list[str]]:
    """Snapshot pipe ``name``, and the member ids in the order of its participants.

    :class:`PipeNotFoundError` if it does not exist.
    """
    meta_key, _, members_key, alive_key, receivers_key, counts_key, groups_key, gstats_key = keys(name)
    pipe = link.client.pipeline(transaction=True)
    for key in (meta_key, members_key, alive_key, receivers_key, counts_key, groups_key, gstats_key):
        pipe.hgetall(key)
    pipe.time()
    pipe.xrange(data_key(name, "safe"), count=1)
    pipe.xrevrange(data_key(name, "fast"), count=1)
    raw, members, alive, positions, counts, group_positions, gstats, now, first, newest = link.call(pipe.execute)
    meta = _hash(raw)
    if not meta:
        raise PipeNotFoundError(f"no pipe {f'{link.server}/{name}'!r} exists")
    by_attach = sorted(_hash(members).items(), key=lambda item: (item[1].split()[2], item[0]))
    alive, positions, counts, gstats = _hash(alive), _hash(positions), _hash(counts), _hash(gstats)
    now_ms = now[0] * 1000 + now[1] // 1000
    safe = meta["model"] == "safe"
    capacity, written = int(meta["capacity"]), int(meta.get("written", 0))
    head_bytes = split_id(meta.get("head", "0-0"))[0]
    participants = []
    for index, (member, info) in enumerate(by_attach):
        role, pid, attached_ms = info.split()[:3]
        live = int(alive.get(member, 0)) > now_ms
        lag = None
        if safe and role == "receiver" and member in positions:
            lag = max(written - split_id(positions[member])[1], 0)
        participants.append(
            Participant(
                slot=index,
                role=role,
                pid=int(pid),
                alive=live,
                attached_at=int(attached_ms) / 1000,
                packets=int(counts.get(member, 0)),
                lag=lag,
                waiting=role == "sender" and live and member + ".w" in counts,
                group=gstats.get("m." + member),
            )
        )
    live_positions = [split_id(positions[m])[0] for m in positions if int(alive.get(m, 0)) > now_ms]
    live_positions += [split_id(p)[0] for p in _hash(group_positions).values()]  # groups hold it too
    if safe:
        oldest = head_bytes
        if first:
            entry_id, fields = first[0]
            fields = {decode_text(k): v for k, v in fields.items()}
            oldest = split_id(decode_text(entry_id))[0] - len(fields.get("d", b""))
        used = head_bytes - min([oldest, *live_positions])
        unread = head_bytes - min(live_positions, default=head_bytes)
        max_packet = max_packet_bytes(capacity)
    else:
        used = len({decode_text(k): v for k, v in newest[0][1].items()}.get("d", b"")) if newest else 0
        unread, max_packet = 0, capacity
    last = int(meta.get("last_write_ms", 0))
    stats = PipeStats(
        name=name,
        model=meta["model"],
        capacity=capacity,
        max_packet_bytes=max_packet,
        packet_len=int(meta.get("packet_len", 0)),
        created_at=int(meta["created_ns"]) / 1e9,
        packets_written=written,
        last_write_at=last / 1000 if last else None,
        used_bytes=min(max(used, 0), capacity),
        unread_bytes=max(unread, 0),
        writers_waiting=sum(1 for p in participants if p.waiting),
        participants=tuple(participants),
        groups=tuple(_group_stats(group, gstats, written, participants) for group in sorted(_hash(group_positions))),
    )
    return stats, [member for member, _ in by_attach]


def _group_stats(group: str, gstats: dict[str, str], written: int, participants: list[Participant]) -> GroupStats:
    def count(field: str) -> int:
        return int(gstats.get(f"{group}.{field}", 0))

    return GroupStats(
        name=group,
        members=sum(1 for p in participants if p.alive and p.group == group),
        lag=max(written - split_id(gstats.get(f"{group}.last", "0-0"))[1], 0),
        unacked=count("unacked"),
        delivered=count("delivered"),
        redelivered=count("redelivered"),
        acked=count("acked"),
        created_at=count("created") / 1000,
    )


def _link(server: Server) -> Link:
    link = Link(server)
    link.call(link.client.ping)
    return link


def pipe_stats(address: RedisPipe) -> PipeStats:
    """Snapshot one pipe on a Redis server."""
    link = _link(address.server)
    try:
        return read_stats(link, address.name)[0]
    finally:
        link.close()


def list_pipes(server: Server) -> list[PipeStats]:
    """Snapshots of every pipe on ``server``, sorted by name (those removed meanwhile left out)."""
    link = _link(server)
    try:
        names = set()
        for key in link.call(lambda: list(link.client.scan_iter(match="pipebit:{*}:meta", count=1000))):
            text = decode_text(key)
            if text.startswith("pipebit:{") and text.endswith("}:meta"):
                names.add(text[len("pipebit:{") : -len("}:meta")])
        found = []
        for name in sorted(names):
            try:
                found.append(read_stats(link, name)[0])
            except PipeNotFoundError:
                continue
        return found
    finally:
        link.close()


def remove_pipe(address: RedisPipe, *, force: bool = False) -> list[str]:
    """Delete pipe ``address``'s keys; :class:`PipeBusyError` while live members are attached,
    unless ``force`` (they then get :class:`PipeClosedError`)."""
    link = _link(address.server)
    try:
        if not force:
            stats = read_stats(link, address.name)[0]
            live = sum(1 for p in stats.participants if p.alive)
            if live:
                raise PipeBusyError(
                    f"pipe {str(address)!r} has {live} live process(es) attached; close them first or remove with force"
                )
        names = [*keys(address.name), data_key(address.name, "fast")]
        names[1] = data_key(address.name, "safe")
        existing = [key for key, there in zip(names, link.call(lambda: _exist_each(link, names))) if there]
        if not existing:
            raise PipeNotFoundError(f"no pipe {str(address)!r} exists")
        link.call(lambda: link.client.delete(*existing))
        return existing
    finally:
        link.close()


def _exist_each(link: Link, names: list[str]) -> list[int]:
    pipe = link.client.pipeline(transaction=False)
    for key in names:
        pipe.exists(key)
    return list(pipe.execute())
