"""The shared provider quota: at most N operations in flight per provider, across all workers.

Slots are members of a Redis sorted set scored by their expiry, so a dead worker's slot frees
itself; a poll refreshes its slot and a finished operation releases it. Scenes that find no slot
wait in a line, ordered by first arrival, and may park a wake-up message with their place: the
scene that releases a slot hands back the messages of the waiters now entitled to one, so the
next job starts as soon as a slot frees instead of at the waiter's next timed check. The limiter
stores those messages as opaque strings; sending them is the caller's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

_ACQUIRE = """
local slots, line, seen, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, member, ttl, limit, stale, park = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]),
    tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now - stale)
for _, m in ipairs(gone) do
  redis.call('ZREM', line, m); redis.call('ZREM', seen, m); redis.call('HDEL', parked, m)
end
if redis.call('ZSCORE', slots, member) then
  redis.call('ZADD', slots, now + ttl, member)
  return {1, 0, 0}
end
redis.call('ZADD', line, 'NX', now, member)
redis.call('ZADD', seen, now, member)
local free = limit - redis.call('ZCARD', slots)
local rank = redis.call('ZRANK', line, member)
if rank < free then
  redis.call('ZADD', slots, now + ttl, member)
  redis.call('ZREM', line, member)
  redis.call('ZREM', seen, member)
  redis.call('HDEL', parked, member)
  return {1, 0, 1}
end
if park ~= '' then redis.call('HSET', parked, member, park) end
return {0, rank - math.max(free, 0) + 1, 0}
"""

_RELEASE = """
local slots, line, seen, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, limit, now, keep_slot = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if keep_slot ~= '1' then redis.call('ZREM', slots, member) end
redis.call('ZREM', line, member)
redis.call('ZREM', seen, member)
redis.call('HDEL', parked, member)
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local free = limit - redis.call('ZCARD', slots)
local woken = {}
if free > 0 then
  for _, m in ipairs(redis.call('ZRANGE', line, 0, free - 1)) do
    local message = redis.call('HGET', parked, m)
    if message then
      redis.call('HDEL', parked, m)
      table.insert(woken, message)
    end
  end
end
return woken
"""


def slot_member(project_id: str, sequence: int) -> str:
    """The quota slot of one scene (one operation in flight per scene at most)."""
    return f"{project_id}:{sequence:03d}"


@dataclass(frozen=True)
class SlotDecision:
    granted: bool
    #: how many waiters (this one included) must get a slot before this one can
    place: int = 0
    #: granted now, not a slot the member held already: only then is it the caller's to
    #: give back when it does not go on (a duplicate must not free the owner's slot)
    fresh: bool = False


class QuotaLimiter:
    def __init__(self, client: redis.Redis, *, prefix: str = "mvpipe:quota") -> None:
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def _keys(self, provider: str) -> list[str]:
        base = f"{self.prefix}:{provider}"
        return [f"{base}:{part}" for part in ("slots", "line", "seen", "parked")]

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
        granted, place, fresh = self._acquire(
            keys=self._keys(provider),
            args=[repr(time.time()), member, ttl, limit, line_ttl, park or ""],
        )
        return SlotDecision(bool(granted), int(place), bool(fresh))

    def release(self, provider: str, member: str, *, limit: int) -> list[str]:
        """Free `member`'s slot (a no-op if it holds none); returns the parked messages of the
        waiters now entitled to a free slot, each handed out once."""
        return self._hand_on(provider, member, limit, keep_slot=False)

    def leave(self, provider: str, member: str, *, limit: int) -> list[str]:
        """Take a waiter out of the line (its run was cancelled); a slot it holds stays. Returns
        the parked messages of the waiters now entitled to a free slot, as `release` does."""
        return self._hand_on(provider, member, limit, keep_slot=True)

    def _hand_on(self, provider: str, member: str, limit: int, *, keep_slot: bool) -> list[str]:
        woken = self._release(
            keys=self._keys(provider),
            args=[member, limit, repr(time.time()), "1" if keep_slot else "0"],
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in woken]
