"""Rate limits per client and per account, in Redis, as token buckets.

One Lua script checks and takes from every bucket a request is subject to (its client's and its
account's) in one atomic step, with Redis's own clock, so gateways in many processes and hosts
share each limit exactly and a request refused by one bucket takes nothing from another. A
bucket holds at most ``burst`` tokens and refills ``rate_per_s`` a second; its key expires once
it would be full again, so idle clients cost no memory.

When Redis cannot be reached the limiter lets requests through (and says so in its stats):
limits protect capacity, and the ledger's own bounded queues still hold; refusing every payment
because a cache is down would be the worse failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import RateLimited

log = logging.getLogger("regiongate.gateway.ratelimit")

# KEYS: one bucket key per limit. ARGV: per bucket, its rate_per_s then its burst; last, cost.
# Returns {allowed (1/0), retry_after_ms}.
BUCKET_SCRIPT = """
local now_parts = redis.call('TIME')
local now_ms = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local cost = tonumber(ARGV[#ARGV])
local states = {}
local wait_ms = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local stored = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(stored[1]) or burst
  local ts = tonumber(stored[2]) or now_ms
  tokens = math.min(burst, tokens + (math.max(0, now_ms - ts) * rate / 1000))
  if tokens < cost then
    wait_ms = math.max(wait_ms, math.ceil((cost - tokens) * 1000 / rate))
  end
  states[i] = {tokens, rate, burst}
end
if wait_ms > 0 then
  return {0, wait_ms}
end
for i, key in ipairs(KEYS) do
  local tokens, rate, burst = states[i][1] - cost, states[i][2], states[i][3]
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now_ms))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
return {1, 0}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not 0 < self.rate_per_s <= 1_000_000 or not 1 <= self.burst <= 10_000_000:
            raise ValueError(f"rate limit out of range: {self.rate_per_s}/s, burst {self.burst}")


@dataclass
class LimiterStats:
    allowed: int = 0
    refused: int = 0
    redis_errors: int = 0


def limiter_redis(url: str, timeout_ms: int = 50) -> redis.Redis:
    """A Redis client fit for the request path: short socket timeouts and no retries (the
    library's default retries with backoff took 7 s per call against a dead server)."""
    timeout_s = timeout_ms / 1000
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        per_client: Limit,
        per_account: Limit,
        key_prefix: str = "rg:rl:",
        timeout_ms: int = 50,
    ) -> None:
        if not 1 <= timeout_ms <= 5_000:
            raise ValueError(f"rate limiter timeout_ms must be in [1, 5000], got {timeout_ms}")
        self._timeout_s = timeout_ms / 1000
        self._redis = client
        self._script = client.register_script(BUCKET_SCRIPT)
        self._per_client = per_client
        self._per_account = per_account
        self._prefix = key_prefix
        self.stats = LimiterStats()

    async def check(self, client_id: str, account_id: str | None = None, cost: int = 1) -> None:
        """Take cost tokens from the client's bucket (and the account's), or raise RateLimited."""
        keys = [f"{self._prefix}c:{client_id}"]
        args: list[float] = [self._per_client.rate_per_s, self._per_client.burst]
        if account_id is not None:
            keys.append(f"{self._prefix}a:{account_id}")
            args += [self._per_account.rate_per_s, self._per_account.burst]
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, wait_ms = await self._script(keys=keys, args=[*args, cost])
        except (RedisError, OSError, TimeoutError) as exc:
            self.stats.redis_errors += 1
            log.warning("rate limiter unavailable, letting the request through: %s", exc)
            return
        if allowed:
            self.stats.allowed += 1
            return
        self.stats.refused += 1
        raise RateLimited("rate limit exceeded", retry_after_s=max(1, math.ceil(wait_ms / 1000)))
