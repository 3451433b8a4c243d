"""Limits shared by every replica through Redis.

Each check-and-update is one Lua script, run atomically by the server (EVALSHA, loaded on
first use), and reads the server's clock, so replicas with skewed clocks agree. Per scope:

    {prefix}rl:{scope}:log   sorted set  lease -> admitted at (µs); requests in the window
    {prefix}rl:{scope}:tok   hash        lease -> tokens, and "" -> their total
    {prefix}rl:{scope}:conc  sorted set  lease -> expires at (µs); live concurrency leases
    {prefix}hit:{scope}      sorted set  one member an event
    {prefix}spend:{subject}:{period}  hash  t -> tokens, c -> cost

Every key expires once nothing in it can matter any more, so idle scopes disappear.
Commands are never retried: a retried admission could be counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from noroshi.limits.base import (
    CONCURRENCY_RETRY_S,
    LEASE_TTL_S,
    MAX_HITS,
    WINDOW_S,
    Decision,
    Limiter,
    Refusal,
    Rule,
    Window,
    check_lease,
    decide,
    period_ttl_s,
)

__all__ = ["RedisLimiter"]

MAX_CONNECTIONS = 64
REASONS = {1: "rpm", 2: "tpm", 3: "concurrency"}
NONE = -1  # an unlimited limit, in a script's arguments

# Times are integer microseconds. Lua's tostring keeps only 14 digits, so no time is ever
# turned into a string by concatenation; redis.call converts numbers exactly.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function score(key, rank)
  local r = redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')
  if r[2] then return tonumber(r[2]) end
  return nil
end
"""

# KEYS: log, tok, conc of each rule. ARGV: lease, tokens, window, lease ttl, concurrency retry
# (µs), then rpm, tpm, concurrency of each rule (-1: none).
# Returns refused rule (0: none), reason, wait, then for each rule: requests, tokens,
# until the oldest leaves, until the newest leaves, until the request window has room.
_ADMIT = (
    _PRELUDE
    + """
local lease, want = ARGV[1], tonumber(ARGV[2])
local window, ttl, conc_retry = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #KEYS / 3
local refused, reason, wait = 0, 0, 0

local function limits(i)
  return tonumber(ARGV[3 * i + 3]), tonumber(ARGV[3 * i + 4]), tonumber(ARGV[3 * i + 5])
end

local function consider(i, code, w)
  if w < 1 then w = 1 end
  if refused == 0 or w > wait then refused, reason, wait = i, code, w end
end

local function forget(tok, members)
  local freed = 0
  for s = 1, #members, 1000 do
    local chunk = {unpack(members, s, math.min(s + 999, #members))}
    for _, a in ipairs(redis.call('HMGET', tok, unpack(chunk))) do
      if a then freed = freed + tonumber(a) end
    end
    redis.call('HDEL', tok, unpack(chunk))
  end
  if freed ~= 0 then redis.call('HINCRBY', tok, '', -freed) end
end

local function room(log, rpm, count)
  if count < rpm then return 0 end
  if rpm == 0 then return window end
  return score(log, count - rpm) + window - now
end

local function freed_at(log, tok, need)
  local freed, rank = 0, 0
  while true do
    local page = redis.call('ZRANGE', log, rank, rank + 99, 'WITHSCORES')
    if #page == 0 then return window end
    local members = {}
    for j = 1, #page, 2 do members[#members + 1] = page[j] end
    for j, a in ipairs(redis.call('HMGET', tok, unpack(members))) do
      if a then freed = freed + tonumber(a) end
      if freed >= need then return tonumber(page[2 * j]) + window - now end
    end
    rank = rank + 100
  end
end

for i = 1, n do
  local log, tok, conc = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local rpm, tpm, cc = limits(i)
  if rpm >= 0 or tpm >= 0 then
    local gone = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
    if #gone > 0 then
      redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
      forget(tok, gone)
    end
  end
  if rpm >= 0 then
    local count = redis.call('ZCARD', log)
    if count >= rpm then consider(i, 1, room(log, rpm, count)) end
  end
  if tpm >= 0 then
    local used = tonumber(redis.call('HGET', tok, '') or '0')
    if want > tpm then consider(i, 2, window)
    elseif used + want > tpm then consider(i, 2, freed_at(log, tok, used + want - tpm)) end
  end
  if cc >= 0 then
    redis.call('ZREMRANGEBYSCORE', conc, '-inf', now)
    if redis.call('ZCARD', conc) >= cc then
      local first = score(conc, 0)
      local w = conc_retry
      if first and first - now < w then w = first - now end
      consider(i, 3, w)
    end
  end
end

if refused == 0 then
  local keep = math.ceil(window / 1000) + 1000
  for i = 1, n do
    local log, tok, conc = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local rpm, tpm, cc = limits(i)
    if rpm >= 0 or tpm >= 0 then
      redis.call('ZADD', log, now, lease)
      redis.call('PEXPIRE', log, keep)
    end
    if tpm >= 0 then
      local old = tonumber(redis.call('HGET', tok, lease) or '0')
      redis.call('HSET', tok, lease, want)
      redis.call('HINCRBY', tok, '', want - old)
      redis.call('PEXPIRE', tok, keep)
    end
    if cc >= 0 then
      redis.call('ZADD', conc, now + ttl, lease)
      redis.call('PEXPIRE', conc, math.ceil(ttl / 1000) + 1000)
    end
  end
end

local out = {refused, reason, wait}
for i = 1, n do
  local log, tok = KEYS[3 * i - 2], KEYS[3 * i - 1]
  local rpm, tpm = limits(i)
  local count, used, oldest, newest, free = 0, 0, 0, 0, 0
  if rpm >= 0 or tpm >= 0 then
    count = redis.call('ZCARD', log)
    if count > 0 then
      oldest = score(log, 0) + window - now
      newest = score(log, -1) + window - now
    end
    if rpm >= 0 then free = room(log, rpm, count) end
  end
  if tpm >= 0 then used = tonumber(redis.call('HGET', tok, '') or '0') end
  for _, v in ipairs({count, used, oldest, newest, free}) do out[#out + 1] = v end
end
return out
"""
)

# KEYS: tok, conc of each rule. ARGV: lease, tokens.
_SETTLE = """
local lease, tokens = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local old = redis.call('HGET', KEYS[i], lease)
  if old then
    redis.call('HSET', KEYS[i], lease, tokens)
    redis.call('HINCRBY', KEYS[i], '', tokens - tonumber(old))
  end
  redis.call('ZREM', KEYS[i + 1], lease)
end
"""

# KEYS: the log. ARGV: window (µs), most members kept.
_HIT = (
    _PRELUDE
    + """
local key, window, cap = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local member, n = string.format('%.0f', now), 0
while redis.call('ZADD', key, 'NX', now, member) == 0 do
  n = n + 1
  member = string.format('%.0f-%d', now, n)
end
local count = redis.call('ZCARD', key)
if count > cap then
  redis.call('ZREMRANGEBYRANK', key, 0, count - cap - 1)
  count = cap
end
redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
return count
"""
)

# KEYS: buckets. ARGV: tokens, cost, then each bucket's time to live (ms).
_ADD_SPEND = """
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 't', ARGV[1])
  redis.call('HINCRBYFLOAT', key, 'c', ARGV[2])
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[i + 2]) end
end
"""

# KEYS: the bucket. ARGV: tokens, cost, time to live (ms).
_SEED_SPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 't', ARGV[1], 'c', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""


class RedisLimiter(Limiter):
    """The limiter on Redis. `timeout_s` bounds each command, so a stalled Redis fails fast
    (and `SharedLimiter` can fall back) instead of holding requests."""

    def __init__(
        self,
        url: str,
        prefix: str = "noroshi:",
        lease_ttl_s: float = LEASE_TTL_S,
        timeout_s: float = 0.5,
        *,
        window_s: float = WINDOW_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.prefix = prefix
        self.lease_ttl_s = lease_ttl_s
        self.window_s = window_s
        # imported only when Redis is configured: the client costs a tenth of a second at start
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s * 4,  # waiting for a free connection, under a burst
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.client = aioredis.Redis.from_pool(pool)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)
        self._hit = self.client.register_script(_HIT)
        self._add_spend = self.client.register_script(_ADD_SPEND)
        self._seed_spend = self.client.register_script(_SEED_SPEND)

    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        check_lease(lease)
        keys: list[str] = []
        args: list[Any] = [lease, tokens, _us(self.window_s), _us(self.lease_ttl_s)]
        args.append(_us(CONCURRENCY_RETRY_S))
        for rule in rules:
            keys += self._rate_keys(rule.scope)
            args += [_arg(rule.rpm), _arg(rule.tpm), _arg(rule.concurrency)]
        reply = await self._admit(keys, args)
        refused, reason, wait = reply[:3]
        windows = [
            Window(int(r[0]), int(r[1]), r[2] / 1e6, r[3] / 1e6, r[4] / 1e6)
            for r in (reply[3 + 5 * i : 8 + 5 * i] for i in range(len(rules)))
        ]
        refusal = Refusal(refused - 1, REASONS[reason], wait / 1e6) if refused else None
        return decide(rules, windows, refusal)

    async def settle(self, rules: Sequence[Rule], lease: str, tokens: int) -> None:
        keys = []
        for rule in rules:
            keys += self._rate_keys(rule.scope)[1:]
        if keys:
            await self._settle(keys, [lease, tokens])

    async def hit(self, scope: str, window_s: float) -> int:
        count: int = await self._hit([f"{self.prefix}hit:{scope}"], [_us(window_s), MAX_HITS])
        return count

    async def add_spend(
        self, subject: str, periods: Sequence[str], tokens: int, cost: float
    ) -> None:
        if periods:
            keys = [self._spend_key(subject, period) for period in periods]
            ttls = [_ms(period_ttl_s(period)) for period in periods]
            await self._add_spend(keys, [tokens, repr(float(cost)), *ttls])

    async def spend(self, subject: str, periods: Sequence[str]) -> list[tuple[int, float]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for period in periods:
                pipe.hmget(self._spend_key(subject, period), ["t", "c"])
            replies = await pipe.execute()
        return [(int(t or 0), float(c or 0)) for t, c in replies]

    async def seed_spend(self, subject: str, period: str, tokens: int, cost: float) -> None:
        key = self._spend_key(subject, period)
        await self._seed_spend([key], [tokens, repr(float(cost)), _ms(period_ttl_s(period))])

    async def close(self) -> None:
        await self.client.aclose()

    def _rate_keys(self, scope: str) -> list[str]:
        base = f"{self.prefix}rl:{scope}"
        return [f"{base}:log", f"{base}:tok", f"{base}:conc"]

    def _spend_key(self, subject: str, period: str) -> str:
        return f"{self.prefix}spend:{subject}:{period}"


def _arg(limit: int | None) -> int:
    return NONE if limit is None else limit


def _us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1_000)
