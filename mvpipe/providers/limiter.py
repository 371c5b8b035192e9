"""The shared provider quota: at most N operations in flight per provider, across all workers.

Slots are members of a Redis sorted set scored by their expiry, so a dead worker's slot frees
itself; a poll refreshes its slot and a finished operation releases it. Scenes that find no slot
wait in a line (ordered by first arrival) and are told how long to sleep by their place in it,
so they neither spin nor hold a worker slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

_ACQUIRE = """
local slots, line, seen = KEYS[1], KEYS[2], KEYS[3]
local now, member, ttl, limit, stale = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]),
    tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now - stale)
for _, m in ipairs(gone) do redis.call('ZREM', line, m); redis.call('ZREM', seen, m) end
if redis.call('ZSCORE', slots, member) then
  redis.call('ZADD', slots, now + ttl, member)
  return {1, 0}
end
redis.call('ZADD', line, 'NX', now, member)
redis.call('ZADD', seen, now, member)
local free = limit - redis.call('ZCARD', slots)
local rank = redis.call('ZRANK', line, member)
if rank < free then
  redis.call('ZADD', slots, now + ttl, member)
  redis.call('ZREM', line, member)
  redis.call('ZREM', seen, member)
  return {1, 0}
end
return {0, rank - math.max(free, 0) + 1}
"""


def slot_member(project_id: str, sequence: int) -> str:
    """The quota slot of one scene (one operation in flight per scene at most)."""
    return f"{project_id}:{sequence:03d}"


@dataclass(frozen=True)
class SlotDecision:
    granted: bool
    #: how many waiters (this one included) must get a slot before this one can
    place: int = 0


class QuotaLimiter:
    def __init__(self, client: redis.Redis, *, prefix: str = "mvpipe:quota") -> None:
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)

    def _keys(self, provider: str) -> list[str]:
        base = f"{self.prefix}:{provider}"
        return [f"{base}:slots", f"{base}:line", f"{base}:seen"]

    def acquire(
        self, provider: str, member: str, *, limit: int, ttl: float, line_ttl: float
    ) -> SlotDecision:
        """Take (or refresh) `member`'s slot; `line_ttl` drops waiters that stopped asking."""
        granted, place = self._acquire(
            keys=self._keys(provider), args=[time.time(), member, ttl, limit, line_ttl]
        )
        return SlotDecision(bool(granted), int(place))

    def release(self, provider: str, member: str) -> None:
        slots, line, seen = self._keys(provider)
        pipe = self.client.pipeline()
        pipe.zrem(slots, member)
        pipe.zrem(line, member)
        pipe.zrem(seen, member)
        pipe.execute()
