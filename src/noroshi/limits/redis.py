"""Limits shared by every replica through Redis.

Each check-and-update is one Lua script, run atomically by the server (EVALSHA, loaded on
first use), and reads the server's clock, so replicas with skewed clocks agree. Per scope:

    {prefix}rl:{scope}:log   sorted set  lease -> admitted at (µs); requests in the window
    {prefix}rl:{scope}:tok   hash        lease -> tokens, and "" -> their total
    {prefix}rl:{scope}:conc  sorted set  lease -> expires at (µs); live concurrency leases
    {prefix}hit:{scope}      sorted set  one member an event
    {prefix}spend:{subject}:{period}  hash  t -> tokens, c -> cost

    {prefix}batch:{id}  string      a batch of writes already applied

Every key expires once nothing in it can matter any more, so idle scopes disappear.
Admissions are never retried: a retried admission could be counted twice. What a request gives
back when it ends (releases), and the renewals of live concurrency leases, go through one
ordered outbox, sent in batches, each batch one atomic script marked with its id, so a batch
sent again after a lost reply is not applied twice. While Redis is away the outbox keeps its
batches (bounded) and sends them when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from noroshi.limits.base import (
    CONCURRENCY_RETRY_S,
    MAX_HITS,
    WINDOW_S,
    Decision,
    Limiter,
    Refusal,
    Rule,
    Settlement,
    Window,
    check_lease,
    decide,
    period_ttl_s,
)

__all__ = ["SHARED_LEASE_TTL_S", "RedisLimiter"]

log = logging.getLogger("noroshi.limits")

MAX_CONNECTIONS = 64
# A concurrency lease on Redis lives this long unless renewed; its replica renews the leases
# of the requests it runs every third of it, so a replica that dies frees its slots this soon.
SHARED_LEASE_TTL_S = 60.0
MAX_OUTBOX = 100_000  # writes kept while Redis is away; past it the oldest go
BATCH = 500  # writes sent in one script
BATCH_MARK_S = 600.0  # how long a batch's id is remembered against sending it twice
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

# A batch of writes, applied at once. KEYS[1]: the batch's mark. ARGV: the mark's time to live
# (ms), the lease time to live (µs), then operations, each a code and its arguments, taking
# its keys in order:
#   s lease tokens n        settle: keys tok, conc of each of n rules
#   p tokens cost ttl_ms    spend: key the bucket
#   r lease                 renew a live lease: key conc
#   c lease                 claim a slot for a lease admitted while Redis was away: key conc
_APPLY = (
    _PRELUDE
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local ttl = tonumber(ARGV[2])
local k, a = 2, 3
while a <= #ARGV do
  local op = ARGV[a]
  if op == 's' then
    local lease, tokens, n = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    a = a + 4
    for _ = 1, n do
      local tok, conc = KEYS[k], KEYS[k + 1]
      k = k + 2
      local old = redis.call('HGET', tok, lease)
      if old then
        redis.call('HSET', tok, lease, tokens)
        redis.call('HINCRBY', tok, '', tokens - tonumber(old))
      end
      redis.call('ZREM', conc, lease)
    end
  elseif op == 'p' then
    local key = KEYS[k]
    k = k + 1
    redis.call('HINCRBY', key, 't', ARGV[a + 1])
    redis.call('HINCRBYFLOAT', key, 'c', ARGV[a + 2])
    if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[a + 3]) end
    a = a + 4
  else
    local conc = KEYS[k]
    k = k + 1
    local mode = 'XX'
    if op == 'c' then mode = 'NX' end
    redis.call('ZADD', conc, mode, now + ttl, ARGV[a + 1])
    if redis.call('EXISTS', conc) == 1 then
      redis.call('PEXPIRE', conc, math.ceil(ttl / 1000) + 1000)
    end
    a = a + 2
  end
end
return 1
"""
)

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

# KEYS: the bucket. ARGV: tokens, cost, time to live (ms).
_SEED_SPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 't', ARGV[1], 'c', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""


class RedisLimiter(Limiter):
    """The limiter on Redis. `timeout_s` bounds each command, so a stalled Redis fails fast
    (and `SharedLimiter` can fall back) instead of holding requests. `on_unreachable` hears
    of every failure to send the outbox."""

    def __init__(
        self,
        url: str,
        prefix: str = "noroshi:",
        lease_ttl_s: float = SHARED_LEASE_TTL_S,
        timeout_s: float = 0.5,
        *,
        window_s: float = WINDOW_S,
        max_connections: int = MAX_CONNECTIONS,
        retry_s: float = 1.0,
        on_unreachable: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self.lease_ttl_s = lease_ttl_s
        self.window_s = window_s
        self.timeout_s = timeout_s
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
        self.unreachable = unreachable_errors()
        self._admit = self.client.register_script(_ADMIT)
        self._apply = self.client.register_script(_APPLY)
        self._hit = self.client.register_script(_HIT)
        self._seed_spend = self.client.register_script(_SEED_SPEND)
        self.outbox = _Outbox(self._send, self.unreachable, retry_s, on_unreachable)
        self._live: dict[str, list[str]] = {}  # lease -> its concurrency keys, while it runs
        self._renewer: asyncio.Task[None] | None = None

    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        check_lease(lease)
        if self.outbox.scopes and any(rule.scope in self.outbox.scopes for rule in rules):
            await self._settled()
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
        if refusal is None:
            self._hold(rules, lease)
        return decide(rules, windows, refusal)

    def _hold(self, rules: Sequence[Rule], lease: str) -> None:
        """Renew the lease's concurrency slots while the request runs."""
        conc = [self._rate_keys(rule.scope)[2] for rule in rules if rule.concurrency is not None]
        if not conc:
            return
        self._live[lease] = conc
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    def release(self, settlement: Settlement) -> None:
        self._live.pop(settlement.lease, None)
        self.outbox.put(settlement)

    async def released(self, settlement: Settlement) -> None:
        self._live.pop(settlement.lease, None)
        sent = self.outbox.put(settlement, wait=True)
        assert sent is not None
        with contextlib.suppress(TimeoutError):  # slow: it gets there, the answer goes on
            async with asyncio.timeout(self.timeout_s):
                await sent

    async def _settled(self) -> None:
        """Releases made here before this admission reach Redis before it does: a client that
        ends one request and starts the next is never refused for the slot it just gave back."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.outbox.flush()
        except TimeoutError:
            import redis.exceptions

            raise redis.exceptions.TimeoutError("the outbox did not drain in time") from None

    def claim(self, rules: Sequence[Rule], lease: str) -> None:
        """Take the concurrency slots of a request admitted while Redis was away and still
        running, so that Redis counts it until it is released."""
        self._hold(rules, lease)
        for key in self._live.get(lease, ()):
            self.outbox.put(_Renewal(lease, key, claim=True))

    async def flush(self) -> None:
        await self.outbox.flush()

    async def hit(self, scope: str, window_s: float) -> int:
        count: int = await self._hit([f"{self.prefix}hit:{scope}"], [_us(window_s), MAX_HITS])
        return count

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
        if self._renewer is not None:
            self._renewer.cancel()
        await self.outbox.close()
        await self.client.aclose()

    async def _renew(self) -> None:
        """Every third of a lease's life, renew the live ones, in the outbox's order, so a
        renewal can never come after the release of the same lease."""
        while self._live:
            await asyncio.sleep(self.lease_ttl_s / 3)
            if self.outbox.failing:
                continue  # what Redis lost meanwhile is not renewed by piling up renewals
            for lease, keys in list(self._live.items()):
                for key in keys:
                    self.outbox.put(_Renewal(lease, key))

    async def _send(self, mark: str, batch: Sequence[_Write]) -> None:
        keys = [f"{self.prefix}batch:{mark}"]
        args: list[Any] = [_ms(BATCH_MARK_S), _us(self.lease_ttl_s)]
        for write in batch:
            if isinstance(write, Settlement):
                if write.rules:
                    args += ["s", write.lease, write.tokens, len(write.rules)]
                for rule in write.rules:
                    keys += self._rate_keys(rule.scope)[1:]
                for period in write.periods:
                    keys.append(self._spend_key(write.subject, period))
                    args += ["p", write.tokens, repr(float(write.cost)), _ms(period_ttl_s(period))]
            else:
                keys.append(write.key)
                args += ["c" if write.claim else "r", write.lease]
        await self._apply(keys, args)

    def _rate_keys(self, scope: str) -> list[str]:
        base = f"{self.prefix}rl:{scope}"
        return [f"{base}:log", f"{base}:tok", f"{base}:conc"]

    def _spend_key(self, subject: str, period: str) -> str:
        return f"{self.prefix}spend:{subject}:{period}"


class _Renewal(NamedTuple):
    lease: str
    key: str  # a concurrency set
    claim: bool = False  # take the slot even if Redis no longer has it


_Write = Settlement | _Renewal


class _Outbox:
    """Writes to Redis in the order they were made, sent in batches by one task. A batch keeps
    its mark until Redis has taken it: sent again after a failure, it is applied once. While
    Redis cannot be reached the batch is tried again every `retry_s`; past `MAX_OUTBOX`
    writes waiting, the oldest go, and are counted."""

    def __init__(
        self,
        send: Callable[[str, Sequence[_Write]], Awaitable[None]],
        unreachable: tuple[type[BaseException], ...],
        retry_s: float,
        on_unreachable: Callable[[BaseException], None] | None,
    ) -> None:
        self.send = send
        self.unreachable = unreachable
        self.retry_s = retry_s
        self.on_unreachable = on_unreachable
        self.writes: deque[_Write] = deque()
        self.scopes: Counter[str] = Counter()  # of the releases not yet sent
        self._waiters: dict[int, asyncio.Future[None]] = {}  # id of a write -> its sender
        self.failing = False
        self.dropped = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.writes)

    def put(self, write: _Write, wait: bool = False) -> asyncio.Future[None] | None:
        """Queue `write`; with `wait`, a future that is done once Redis has it (or it is
        dropped)."""
        if len(self.writes) >= MAX_OUTBOX:
            self._done([self.writes.popleft()])
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error(
                    "Redis has been away too long: %d writes dropped (leases expire "
                    "on their own; budget counters undercount)",
                    self.dropped,
                )
        self.writes.append(write)
        if isinstance(write, Settlement):
            self.scopes.update(rule.scope for rule in write.rules)
        self._idle.clear()
        self._wake.set()
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        if not wait:
            return None
        sent = self._waiters[id(write)] = loop.create_future()
        return sent

    async def flush(self) -> None:
        await self._idle.wait()

    def _done(self, writes: Sequence[_Write]) -> None:
        scopes, waiters = self.scopes, self._waiters
        for write in writes:
            if isinstance(write, Settlement):
                scopes.subtract(rule.scope for rule in write.rules)
            if waiters and (sent := waiters.pop(id(write), None)) is not None and not sent.done():
                sent.set_result(None)
        for scope in [scope for scope, n in scopes.items() if n <= 0]:
            del scopes[scope]

    async def close(self, timeout_s: float = 2.0) -> None:
        """Send what is left, for a while; what Redis cannot take by then is lost."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.writes:
            log.warning("%d writes to Redis lost at close: it is away", len(self.writes))

    async def _run(self) -> None:
        writes = self.writes
        while True:
            while writes:
                batch = [writes.popleft() for _ in range(min(BATCH, len(writes)))]
                mark = secrets.token_hex(8)
                while True:
                    try:
                        await self.send(mark, batch)
                        self.failing = False
                        break
                    except self.unreachable as exc:
                        self.failing = True
                        if self.on_unreachable is not None:
                            self.on_unreachable(exc)
                        await asyncio.sleep(self.retry_s)
                    except Exception:
                        log.exception("a batch of %d writes to Redis failed; dropped", len(batch))
                        break
                self._done(batch)
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()


def unreachable_errors() -> tuple[type[Exception], ...]:
    """Unreachable, or unable to write (a replica promoted late, memory full): either way, no
    shared limits for now. Other errors are bugs, and are raised."""
    import redis.exceptions  # only when Redis is configured

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,
        OSError,
    )


def _arg(limit: int | None) -> int:
    return NONE if limit is None else limit


def _us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1_000)
