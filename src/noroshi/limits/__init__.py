"""Rate limits, concurrency leases, budget counters and event counts.

`LocalLimiter` keeps them in process memory; `RedisLimiter` shares them between replicas;
`SharedLimiter` is `RedisLimiter` with a local fallback while Redis is away.
"""

from noroshi.limits.base import Decision, Limiter, Rule
from noroshi.limits.local import LocalLimiter
from noroshi.limits.redis import RedisLimiter
from noroshi.limits.shared import SharedLimiter

__all__ = ["Decision", "Limiter", "LocalLimiter", "RedisLimiter", "Rule", "SharedLimiter"]
