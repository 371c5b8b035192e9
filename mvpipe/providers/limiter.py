"""The shared provider quota: at most N operations in flight per provider, across all workers.

Slots are members of a Redis sorted set scored by their expiry, so a dead worker's slot frees
itself; a poll refreshes its slot and a finished operation releases it. A scene waits and submits
under a member named after it, `<project>:<sequence>`; once its job is stored, the slot moves to
a member of that job's own (`job_member`), so two jobs of one scene (one kept after a cancel, one
of a regeneration) hold two slots and neither's end frees the other's. A freed slot goes to the
waiting project with the fewest jobs in flight, round robin among equals, each project's scenes
in the order they asked (`mvpipe.providers.fairness` states the rule; the Lua here applies it in
the same atomic step as the request or the release). Waiters may park a wake-up message: the
scene that releases a slot hands back the messages of the waiters now entitled to one, so the
next job starts as soon as a slot frees instead of at the waiter's next timed check. The limiter
stores those messages as opaque strings; sending them is the caller's business. Waiters that stop
asking drop out of the line, and every key expires when the provider sits idle, so a dead worker
leaks nothing.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from mvpipe.errors import ConfigurationError, InvalidInput
from mvpipe.providers.fairness import PLACE_SCAN, ProjectLine
from mvpipe.settings import (
    COUNT_KEEP_SECONDS,
    KEY_SLACK_SECONDS,
    MAX_SLOT_SECONDS,
)

#: The oldest Redis the scripts run on: their EXPIRE takes NX and GT.
REDIS_MAJOR = 7

# Per provider: `slots` (member -> expiry), `seen` (waiter -> last request), `parked` (waiter ->
# wake-up message), `inflight` (project -> slots held), `order` (waiting projects, scored by
# slots held, named `<ticket:015d>|<project>` so ties sort by ticket), `tickets` (project ->
# ticket), `turn` (the last ticket issued), and one `line:<project>` per waiting project (waiter
# -> first request).
_COMMON = """
local slots, seen, parked, inflight, order, tickets, turn =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local lines = ARGV[1]

local function project_of(m) return string.match(m, '^(.*):') end
local function entry(t, p) return string.format('%015d', t) .. '|' .. p end
local function split(e)
  local bar = string.find(e, '|', 1, true)
  return tonumber(string.sub(e, 1, bar - 1)), string.sub(e, bar + 1)
end
local function flight(p) return tonumber(redis.call('HGET', inflight, p) or '0') end

-- The project's count moved by `d`; answers the new count.
local function add_flight(p, d)
  local n = redis.call('HINCRBY', inflight, p, d)
  if n <= 0 then redis.call('HDEL', inflight, p) end
  local t = redis.call('HGET', tickets, p)
  if t then redis.call('ZADD', order, flight(p), entry(tonumber(t), p)) end
  return n
end

-- (Re)join the rotation at its back.
local function new_ticket(p)
  local old = redis.call('HGET', tickets, p)
  if old then redis.call('ZREM', order, entry(tonumber(old), p)) end
  local t = redis.call('INCR', turn)
  redis.call('HSET', tickets, p, t)
  redis.call('ZADD', order, flight(p), entry(t, p))
end

-- Out of the line (granted, left or gone quiet); a project with no waiters leaves the rotation.
local function unwait(m)
  local p = project_of(m)
  redis.call('ZREM', lines .. p, m)
  redis.call('ZREM', seen, m)
  redis.call('HDEL', parked, m)
  if redis.call('ZCARD', lines .. p) == 0 then
    local t = redis.call('HGET', tickets, p)
    if t then
      redis.call('ZREM', order, entry(tonumber(t), p))
      redis.call('HDEL', tickets, p)
    end
  end
end

local function expire_slots(now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', slots, '-inf', now)) do
    redis.call('ZREM', slots, m)
    add_flight(project_of(m), -1)
  end
end

-- fairness.allot: the waiters the next k free slots go to. Only the first k projects in the
-- rotation and the first k waiters of each can be reached by k picks, and never more picks
-- than waiters (so a raised limit costs what the line holds, not what the limit allows).
local function allot(k)
  local picks = {}
  k = math.min(k, redis.call('ZCARD', seen))
  if k <= 0 then return picks end
  local next_t = tonumber(redis.call('GET', turn) or '0') + 1
  local cand = {}
  local raw = redis.call('ZRANGE', order, 0, k - 1, 'WITHSCORES')
  for i = 1, #raw, 2 do
    local t, p = split(raw[i])
    local q = redis.call('ZRANGE', lines .. p, 0, k - 1)
    table.insert(cand, {f = tonumber(raw[i + 1]), t = t, q = q, n = 0})
  end
  while #picks < k do
    local best = nil
    for _, c in ipairs(cand) do
      if c.n < #c.q and (best == nil or c.f < best.f or (c.f == best.f and c.t < best.t)) then
        best = c
      end
    end
    if best == nil then break end
    best.n = best.n + 1
    table.insert(picks, best.q[best.n])
    best.f, best.t, next_t = best.f + 1, next_t, next_t + 1
  end
  return picks
end
"""

# A step that writes `member`'s slot (`acquire`, `hold`): the slot lasts `ttl` from `now`;
# `due` says whether this process's remembered renewal of the counting keys falls short of it.
_STEP = (
    _COMMON
    + f"""
local now, member, ttl, due = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local p = project_of(member)

-- The keys that count held slots (`slots`, `inflight`, renewed together) outlive every slot in
-- them by `KEY_SLACK_SECONDS` at least. The calling process knows when it last renewed them: a
-- step renews them (`due`) only when a slot it writes now could outlive them otherwise, so a busy
-- process renews them about once in `COUNT_KEEP_SECONDS` less its slots' life, not on every
-- request. Every worker renews them for the same `COUNT_KEEP_SECONDS`, so a renewal never
-- shortens them (GT guards it all the same). `made`: this step may have made the key (a first
-- slot, a first count), which then has no expiry yet, whatever the process remembers: NX gives it
-- one and leaves one that is there (GT leaves a key with none as it is, so a due renewal falls
-- back on NX too).
local function keep_key(key, made)
  if due and redis.call('EXPIRE', key, {COUNT_KEEP_SECONDS}, 'GT') == 1 then return end
  if made or due then redis.call('EXPIRE', key, {COUNT_KEEP_SECONDS}, 'NX') end
end

local function keep_counts(slots_made, flight_made)
  keep_key(slots, slots_made)
  keep_key(inflight, flight_made)
end
"""
)

_ACQUIRE = (
    _STEP
    + f"""
local limit, stale, park, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
-- Every entry in the waiters' keys is dead `keep` seconds after the last request (keys made in
-- this step included), so an idle provider leaves nothing behind.
local function done(result)
  for i = 1, #KEYS do
    if KEYS[i] ~= slots and KEYS[i] ~= inflight then redis.call('EXPIRE', KEYS[i], keep) end
  end
  return result
end
-- A slot written (`fresh`: not held before; `held`: slots held before it). The first slot makes
-- `slots`, a project's first count may make `inflight`. The waiters' keys are kept alive by the
-- waiters' own requests, so only the keys that count held slots need a longer life.
local function granted(fresh, held)
  local first = fresh == 1 and redis.call('HINCRBY', inflight, p, 1) == 1
  keep_counts(fresh == 1 and held == 0, first)
  return {{1, 0, fresh}}
end
local waiting = redis.call('ZCARD', seen)
local held = waiting == 0 and redis.call('ZCARD', slots)
if held and held < limit then
  -- Nobody waits and there is room: the rule picks this request at once, so it skips the
  -- line's bookkeeping, and expired slots are pruned by the first request that finds the pool
  -- full or a line (a holder whose own slot lapsed meanwhile just keeps it: nobody took it).
  -- One ZADD takes a new slot (it answers 1) or refreshes a held one (0).
  return granted(redis.call('ZADD', slots, now + ttl, member), held)
end
expire_slots(now)
if waiting > 0 then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', seen, '-inf', now - stale)) do unwait(m) end
  waiting = redis.call('ZCARD', seen)
end
if redis.call('ZSCORE', slots, member) then
  return granted(redis.call('ZADD', slots, now + ttl, member), 1)
end
held = redis.call('ZCARD', slots)
if waiting == 0 and held < limit then
  return granted(redis.call('ZADD', slots, now + ttl, member), held)
end
local line = lines .. p
redis.call('ZADD', line, 'NX', now, member)
redis.call('EXPIRE', line, keep)
redis.call('ZADD', seen, now, member)
if not redis.call('HGET', tickets, p) then new_ticket(p) end
local free = limit - held
for _, m in ipairs(allot(free)) do
  if m == member then
    unwait(member)
    local result = granted(redis.call('ZADD', slots, now + ttl, member), held)
    if redis.call('HGET', tickets, p) then new_ticket(p) end
    return done(result)
  end
end
keep_counts(false, false)
if park ~= '' then redis.call('HSET', parked, member, park) end
-- fairness.slots_ahead
local rank = redis.call('ZRANK', line, member)
local level = flight(p) + rank
local ahead = rank
local mine = tonumber(redis.call('HGET', tickets, p))
local near = redis.call('ZRANGEBYSCORE', order, '-inf', level, 'WITHSCORES', 'LIMIT', 0,
  {PLACE_SCAN})
for i = 1, #near, 2 do
  local t, q = split(near[i])
  local f = tonumber(near[i + 1])
  if q ~= p then
    if f < level then
      ahead = ahead + math.min(redis.call('ZCARD', lines .. q), level - f)
    elseif rank > 0 or t < mine then
      ahead = ahead + 1
    end
  end
end
return done({{0, math.max(1, ahead + 1 - math.max(free, 0)), 0}})
"""
)

_RELEASE = (
    _COMMON
    + """
local member, limit, now, keep_slot = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if redis.call('ZCARD', seen) == 0 then
  -- Nobody waits: no line to leave, nobody to wake, and no project holds a ticket (tickets
  -- live only while their project has waiters), so only the slot and its count change.
  if keep_slot ~= '1' and redis.call('ZREM', slots, member) == 1 then
    local p = project_of(member)
    if redis.call('HINCRBY', inflight, p, -1) <= 0 then redis.call('HDEL', inflight, p) end
  end
  return {}
end
if keep_slot ~= '1' and redis.call('ZREM', slots, member) == 1 then
  add_flight(project_of(member), -1)
end
-- A member out of `seen` is in no line and parked nowhere (they are written and cleared together).
if redis.call('ZSCORE', seen, member) then unwait(member) end
expire_slots(now)
local woken = {}
for _, m in ipairs(allot(limit - redis.call('ZCARD', slots))) do
  local message = redis.call('HGET', parked, m)
  if message then
    redis.call('HDEL', parked, m)
    table.insert(woken, message)
  end
end
return woken
"""
)

#: The server's version, read by a script: scripts are what the quota's user may run already
#: (INFO is in the `@dangerous` ACL category a least-privilege user is often denied).
#: `redis.REDIS_VERSION` exists from Redis 7 on; an older server answers ''.
_VERSION = "return redis.REDIS_VERSION or ''"

_HOLD = (
    _STEP
    + """
local moved = ARGV[6]
-- A running job's slot: taken (or refreshed) whatever the line, since the job already runs at
-- the provider and must count; its submission's slot, if named, becomes this one. Within one
-- project (a job and its scene always are) the move is a rename: the project's count changes
-- only by the slots gained and lost (none, unless the job held a slot already: one fewer), so
-- its ticket and place in the rotation stay as they are.
-- The job's slot is written first, so a move never empties (and so remakes) the keys: only a
-- fresh slot that moved none may have made them.
local fresh = redis.call('ZADD', slots, now + ttl, member)
local gone, removed = 0, 0
if moved ~= '' and moved ~= member then
  removed = redis.call('ZREM', slots, moved)
  if removed == 1 then
    if project_of(moved) == p then gone = 1 else add_flight(project_of(moved), -1) end
  end
end
local first = false
if fresh > gone then first = add_flight(p, 1) == 1 elseif fresh < gone then add_flight(p, -1) end
keep_counts(fresh == 1 and removed == 0, first)
return fresh
"""
)

_SNAPSHOT = (
    _COMMON
    + """
local out = {{}, redis.call('ZRANGE', slots, 0, -1), redis.call('HKEYS', parked)}
local raw = redis.call('ZRANGE', order, 0, -1, 'WITHSCORES')
for i = 1, #raw, 2 do
  local t, p = split(raw[i])
  table.insert(out[1], {p, raw[i + 1], tostring(t), redis.call('ZRANGE', lines .. p, 0, -1)})
end
return out
"""
)


def slot_member(project_id: str, sequence: int) -> str:
    """A scene's place in the quota while it waits and submits (stable across its executions,
    so a waiter keeps its place in line). The limiter reads the project back as everything
    before the last colon."""
    return f"{project_id}:{sequence:03d}"


def job_member(project_id: str, sequence: int, stage: str, operation_id: str) -> str:
    """The quota slot of one stored job, apart from its scene's: a job kept running after a
    cancel and the scene's next job (a regeneration's) are two jobs at the provider, so two
    slots, and the poll that sees one finish frees that one's only. The operation id is
    hashed: provider ids may hold any character, the member's project part none but its own."""
    digest = hashlib.sha256(operation_id.encode()).hexdigest()[:16]
    return f"{slot_member(project_id, sequence)}-{stage}-{digest}"


def member_project(member: str) -> str:
    """The project a slot member belongs to (the Lua's `project_of`)."""
    project, colon, _ = member.rpartition(":")
    if not colon or not project or "|" in project:
        raise InvalidInput(f"slot member {member!r} is not <project>:<sequence>")
    return project


@dataclass(frozen=True)
class SlotDecision:
    granted: bool
    #: how many more slots must free before this waiter's turn, at least 1 (see
    #: `fairness.Admission`); 0 when granted
    place: int = 0
    #: granted now, not a slot the member held already: only then is it the caller's to
    #: give back when it does not go on (a duplicate must not free the owner's slot)
    fresh: bool = False


@dataclass(frozen=True)
class QuotaSnapshot:
    """One provider's quota as the limiter sees it (read in one atomic step)."""

    #: waiting projects in rotation order
    lines: tuple[ProjectLine, ...]
    #: slot members held now (expired ones included until the next step prunes them)
    held: tuple[str, ...]
    #: waiters with a parked wake-up message
    parked: frozenset[str]

    def in_flight(self, project: str) -> int:
        return sum(1 for member in self.held if member_project(member) == project)


class QuotaLimiter:
    """One process's handle on the quota pools. `clock` gives the slots' times (shared by every
    worker: the wall clock); `timer` this process's own, for the renewals it remembers."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "mvpipe:quota",
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._timer = timer
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._hold = client.register_script(_HOLD)
        self._version = client.register_script(_VERSION)
        #: pool -> until when (`timer`) this process last made its counting keys last
        self._kept_until: dict[str, float] = {}
        #: the server's version was read and is recent enough (read at the first step, not
        #: here: building a context reaches no server, so a Redis away is the first step's
        #: outage, retried as any)
        self._server_checked = False

    def _keys(self, provider: str) -> list[str]:
        base = f"{self.prefix}:{provider}"
        parts = ("slots", "seen", "parked", "inflight", "order", "tickets", "turn")
        return [f"{base}:{part}" for part in parts]

    def _lines(self, provider: str) -> str:
        return f"{self.prefix}:{provider}:line:"

    def _check_server(self) -> None:
        """Refuse a Redis the scripts cannot run on, before their first write (one read of its
        version per limiter): an older one fails them halfway, leaving keys with no expiry."""
        if not self._server_checked:
            require_redis_version(_text(self._version()))
            self._server_checked = True

    def _step(self, provider: str, script: Script, member: str, ttl: float, *args: object) -> Any:
        """Run `script` (`_ACQUIRE`, `_HOLD`: `args` follow the ones they share), which writes
        `member`'s slot of `ttl`, telling it whether to renew the keys that count held slots:
        only when the renewal this process remembers would not outlive that slot by
        `KEY_SLACK_SECONDS`, as `RunBoard.keep_run_alive` does for a run's mark. Renewed keys
        last `COUNT_KEEP_SECONDS` from before the step was sent, at least."""
        member_project(member)
        if not 0 <= ttl <= MAX_SLOT_SECONDS:
            raise ConfigurationError(
                f"a quota slot of {ttl:g} s does not fit under the quota keys' life: at most"
                f" {MAX_SLOT_SECONDS} s (a poll's liveness: lower MVPIPE_BACKOFF_MAX,"
                " MVPIPE_POLL_SECONDS or MVPIPE_LIVENESS_SLACK_SECONDS)"
            )
        self._check_server()
        started = self._timer()
        due = started + ttl + KEY_SLACK_SECONDS > self._kept_until.get(provider, -math.inf)
        result = script(
            keys=self._keys(provider),
            args=[self._lines(provider), repr(self._clock()), member, ttl, int(due), *args],
        )
        if due:
            self._kept_until[provider] = started + COUNT_KEEP_SECONDS
        return result

    def acquire(
        self,
        provider: str,
        member: str,
        *,
        limit: int,
        ttl: float,
        line_ttl: float,
        park: str | None = None,
    ) -> SlotDecision:
        """Take (or refresh) `member`'s slot, or queue it; `line_ttl` drops waiters that
        stopped asking. A denied waiter's `park` message is kept until a release hands it out
        (parking in the same atomic step as the denial, so no release can slip in between)."""
        keep = math.ceil(line_ttl) + KEY_SLACK_SECONDS
        granted, place, fresh = self._step(
            provider, self._acquire, member, ttl, limit, line_ttl, park or "", keep
        )
        return SlotDecision(bool(granted), int(place), bool(fresh))

    def hold(
        self,
        provider: str,
        member: str,
        *,
        ttl: float,
        moved_from: str | None = None,
    ) -> bool:
        """Take (or refresh) the slot of a job already running at the provider, whatever the
        line (it counts against the quota until it finishes); `moved_from` (its submission's
        slot) is freed in the same step, so the move never counts the job twice or not at
        all. True when the slot was not held before."""
        if moved_from is not None:
            member_project(moved_from)
        return bool(self._step(provider, self._hold, member, ttl, moved_from or ""))

    def release(self, provider: str, member: str, *, limit: int) -> list[str]:
        """Free `member`'s slot (a no-op if it holds none); returns the parked messages of the
        waiters now entitled to a free slot, each handed out once."""
        return self._hand_on(provider, member, limit, keep_slot=False)

    def leave(self, provider: str, member: str, *, limit: int) -> list[str]:
        """Take a waiter out of the line (its run was cancelled); a slot it holds stays. Returns
        the parked messages of the waiters now entitled to a free slot, as `release` does."""
        return self._hand_on(provider, member, limit, keep_slot=True)

    def _hand_on(self, provider: str, member: str, limit: int, *, keep_slot: bool) -> list[str]:
        member_project(member)
        woken = self._release(
            keys=self._keys(provider),
            args=[self._lines(provider), member, limit, repr(self._clock()), int(keep_slot)],
        )
        return [_text(m) for m in woken]

    def slots_held(self, provider: str) -> dict[str, int]:
        """Slots each project holds now (one read of at most the quota's many counts)."""
        counts = self.client.hgetall(self._keys(provider)[3])
        return {_text(project): int(n) for project, n in counts.items()}

    def snapshot(self, provider: str) -> QuotaSnapshot:
        lines, held, parked = self._snapshot(
            keys=self._keys(provider), args=[self._lines(provider)]
        )
        return QuotaSnapshot(
            lines=tuple(
                ProjectLine(
                    _text(project), int(in_flight), int(ticket), tuple(_text(m) for m in waiters)
                )
                for project, in_flight, ticket, waiters in lines
            ),
            held=tuple(_text(m) for m in held),
            parked=frozenset(_text(m) for m in parked),
        )


def require_redis_version(version: object) -> None:
    """Refuse a server older than Redis `REDIS_MAJOR` (as `redis.REDIS_VERSION` says), or one whose
    version does not read as one: the scripts' EXPIRE NX/GT would fail after their first
    writes."""
    match = re.fullmatch(r"(\d+)\.\d+(\.\d+)?", str(version))
    if match is None or int(match.group(1)) < REDIS_MAJOR:
        raise ConfigurationError(
            f"mvpipe's Redis reports version {str(version)[:40]!r}; its quota needs Redis"
            f" {REDIS_MAJOR} or later (EXPIRE NX/GT): upgrade it or point MVPIPE_REDIS_URL at"
            " one"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
