"""Rate limits per client and per account, in Redis, as token buckets.

One Lua script checks and takes from every bucket a request is subject to (its client's and its
account's) in one atomic step, with Redis's own clock, so gateways in many processes and hosts
share each limit and a request refused by one bucket takes nothing from another. A bucket holds
at most ``burst`` tokens and refills ``rate_per_s`` a second; its key expires once it would be
full again, so idle clients cost no memory.

A Redis round trip per request was the gateway's largest cost (measured: throughput nearly
doubled without it), so each process leases tokens: one script call takes about a tenth of a
second of a bucket's rate (at least one token, at most its burst) and later requests spend them
locally. Tokens leave Redis before they are spent, so no limit is ever exceeded; an unused lease
is dropped after a second, which can only make a limit stricter.

When Redis cannot be reached the limiter lets requests through (and says so in its stats):
limits protect capacity, and the ledger's own bounded queues still hold; refusing every payment
because a cache is down would be the worse failure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import RateLimited
from gateway.observability import RATE_LIMITER_FAIL_OPEN

log = logging.getLogger("regiongate.gateway.ratelimit")

# KEYS: one bucket key per limit. ARGV: per bucket its rate_per_s, burst, the tokens it must
# grant (need) and the most it may grant (want). All or nothing: returns {1, granted...} having
# taken `granted` from each bucket, or {0, wait_ms} having taken nothing.
BUCKET_SCRIPT = """
local now_parts = redis.call('TIME')
local now_ms = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local states = {}
local wait_ms = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local need = tonumber(ARGV[4 * i - 1])
  local want = tonumber(ARGV[4 * i])
  local stored = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(stored[1]) or burst
  local ts = tonumber(stored[2]) or now_ms
  tokens = math.min(burst, tokens + (math.max(0, now_ms - ts) * rate / 1000))
  if tokens < need then
    wait_ms = math.max(wait_ms, math.ceil((need - tokens) * 1000 / rate))
  end
  states[i] = {tokens, rate, burst, math.max(need, math.min(want, math.floor(tokens)))}
end
if wait_ms > 0 then
  return {0, wait_ms}
end
local result = {1}
for i, key in ipairs(KEYS) do
  local tokens, rate, burst, grant = states[i][1], states[i][2], states[i][3], states[i][4]
  tokens = tokens - grant
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now_ms))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  result[i + 1] = grant
end
return result
"""

LEASE_WINDOW_S = 0.1
"""A lease takes about this much of a bucket's rate at once (at least 1, at most its burst)."""
LEASES_MAX = 100_000
"""Most leases a process holds; past it expired ones, then the oldest, are dropped."""
REFILL_WAITS_MAX = 8
"""Refills in flight a request waits out before it takes a lease itself (each is bounded by the
limiter's timeout, so a request waits at most this many timeouts)."""
LEASE_TTL_S = 1.0
"""Leased tokens unused after this long are dropped, so no process hoards a bucket."""


@dataclass(frozen=True, slots=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not 0 < self.rate_per_s <= 1_000_000 or not 1 <= self.burst <= 10_000_000:
            raise ValueError(f"rate limit out of range: {self.rate_per_s}/s, burst {self.burst}")

    @property
    def lease(self) -> int:
        return max(1, min(self.burst, int(self.rate_per_s * LEASE_WINDOW_S)))


@dataclass
class LimiterStats:
    allowed: int = 0
    refused: int = 0
    redis_calls: int = 0
    redis_errors: int = 0


@dataclass
class _Lease:
    tokens: int
    expires_at: float


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
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, asyncio.Future] = {}
        self._waiting: collections.Counter[str] = collections.Counter()
        """Requests waiting for each bucket's refill: the next refill asks for their tokens too."""
        self.stats = LimiterStats()

    async def check(
        self, client_id: str | None, account_id: str | None = None, cost: int = 1
    ) -> None:
        """Take cost tokens from the client's bucket and the account's (each when given), or
        raise RateLimited. The gateway takes the client's before it authorises a request and
        the account's after, so a refused caller spends only its own budget.

        Tokens come from this process's leases when they hold enough; otherwise one script call
        takes a new lease for every bucket short of tokens, all or nothing."""
        if client_id is None and account_id is None:
            raise ValueError("a rate limit check needs a client, an account or both")
        wanted = []
        if client_id is not None:
            wanted.append((f"{self._prefix}c:{client_id}", self._per_client))
        if account_id is not None:
            wanted.append((f"{self._prefix}a:{account_id}", self._per_account))
        for _ in range(REFILL_WAITS_MAX + 1):
            now = time.monotonic()
            short = self._short(wanted, cost, now)
            # One refill per bucket at a time in this process: concurrent requests that all
            # found a lease empty wait for the refill in flight, rather than each taking a
            # lease and dropping the others' (which drained a bucket at a fraction of its
            # limit: measured as spurious 429s for 64 concurrent requests of one client).
            in_flight = [self._refills[key] for key, _ in short if key in self._refills]
            if not in_flight:
                break
            for key, _ in short:
                self._waiting[key] += cost
            try:
                await asyncio.wait(in_flight, timeout=self._timeout_s)
            finally:
                for key, _ in short:
                    self._waiting[key] -= cost
                    if self._waiting[key] <= 0:
                        del self._waiting[key]
        if short:
            refills = {key: asyncio.get_running_loop().create_future() for key, _ in short}
            self._refills.update(refills)
            try:
                await self._refill(short, cost, now, {key for key, _ in wanted})
            finally:
                for key, future in refills.items():
                    if self._refills.get(key) is future:
                        del self._refills[key]
                    future.set_result(None)
        for key, _ in wanted:
            lease = self._leases.get(key)
            if lease is not None:  # None only when Redis was unreachable: let it through
                lease.tokens -= cost
        self.stats.allowed += 1

    def _short(self, wanted: list[tuple[str, Limit]], cost: int, now: float) -> list:
        return [
            (key, limit)
            for key, limit in wanted
            if (lease := self._leases.get(key)) is None
            or lease.expires_at <= now
            or lease.tokens < cost
        ]

    async def _refill(
        self, short: list[tuple[str, Limit]], cost: int, now: float, spending: set[str]
    ) -> None:
        """Take a lease for every bucket short of tokens, all or nothing, or raise RateLimited.
        The leases in spending (this request's) survive the trim to LEASES_MAX."""
        if short:
            args: list[float] = []
            for key, limit in short:
                # Enough for the requests waiting on this refill too (at most the burst), so
                # that one refill serves a burst of concurrent requests, not a tenth of it.
                want = min(limit.burst, max(limit.lease, cost + self._waiting.get(key, 0)))
                args += [limit.rate_per_s, limit.burst, cost, max(cost, want)]
            self.stats.redis_calls += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await self._script(keys=[key for key, _ in short], args=args)
            except (RedisError, OSError, TimeoutError) as exc:
                self.stats.redis_errors += 1
                RATE_LIMITER_FAIL_OPEN.inc()
                log.warning("rate limiter unavailable, letting the request through: %s", exc)
                return
            if not reply[0]:
                self.stats.refused += 1
                raise RateLimited(
                    "rate limit exceeded", retry_after_s=max(1, math.ceil(reply[1] / 1000))
                )
            for (key, _), granted in zip(short, reply[1:], strict=True):
                # Added to what is left, never replacing it: a lease taken by a racing refill
                # is spent, not dropped.
                lease = self._leases.get(key)
                left = lease.tokens if lease is not None and lease.expires_at > now else 0
                self._leases[key] = _Lease(max(0, left) + int(granted), now + LEASE_TTL_S)
            if len(self._leases) > LEASES_MAX:
                # Expired leases go first; if live ones alone exceed the bound, the oldest go
                # too (their tokens are lost, which only makes a limit stricter). The leases
                # this request is about to spend always stay.
                others = [
                    (k, v)
                    for k, v in self._leases.items()
                    if v.expires_at > now and k not in spending
                ]
                budget = max(0, LEASES_MAX - len(spending))
                kept = others[max(0, len(others) - budget) :] if budget else []
                self._leases = {**dict(kept), **{k: self._leases[k] for k in spending}}
