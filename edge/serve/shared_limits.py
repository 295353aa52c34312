"""``state.redis_url``: rate-limit buckets shared by every edge instance (and worker).

Why not a Redis round trip per request: it would put an await and a network hop on every
rate-limited request, and a Redis outage would stall or fail them. Instead each instance
decides locally (``RateLimiter.take``, synchronous) and, every ``INTERVAL``, reports the
tokens it took per key; one Lua script per limit refills each shared bucket on Redis' own
clock (instances' clocks never meet), subtracts every report, and answers the level, which
the local bucket adopts. Across N instances a key can thus get at most its burst plus about
N x rate x INTERVAL more than a single instance would allow, and an instance that has never
seen a key admits up to its burst before the first report: close enough for abuse control,
and never a delay or an error when Redis is slow or gone (limits are then per instance).

Owns: the periodic report, the Redis key layout (``edge:rl:LIMIT:KEY``, a hash with the
tokens ``t`` and their time ``s``, expiring once it would be full again) and the script.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from edge.redis_client import open_redis
from edge.serve.runtime import Runtime

__all__ = ["INTERVAL", "SharedLimits"]

log = logging.getLogger("edge.ratelimit")

INTERVAL = 0.1  # seconds between reports
BATCH = 500  # keys per script call; more wait for the next round
TIMEOUT = 0.5
PREFIX = "edge:rl:"
_ERROR_LOG_EVERY = 30.0

# KEYS: the buckets; ARGV[1] rate (tokens/s), ARGV[2] burst, ARGV[2+i] tokens taken for KEYS[i].
# Returns each bucket's level after the report, as strings (Lua numbers would be truncated).
_REPORT_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = math.ceil(burst / rate * 1000) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 't', 's')
  local tokens = tonumber(v[1])
  local stamp = tonumber(v[2])
  if tokens == nil or stamp == nil then
    tokens = burst
    stamp = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate) - tonumber(ARGV[i + 2])
  if tokens < 0 then tokens = 0 end
  redis.call('HSET', key, 't', tostring(tokens), 's', tostring(now))
  redis.call('PEXPIRE', key, ttl)
  out[i] = tostring(tokens)
end
return out
"""


class SharedLimits:
    """Reports local takes to Redis every ``INTERVAL`` and adopts the shared levels."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, runtime: Callable[[], Runtime]) -> None:
        self.url = url
        self._loop = loop
        self._runtime = runtime
        self._client = open_redis(url, TIMEOUT, 4)
        self._script = self._client.client.register_script(_REPORT_SCRIPT)
        self._task: asyncio.Task | None = None
        self.errors = 0
        self.reports = 0
        self._next_error_log = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.report()
            except Exception as exc:  # an odd reply must not end the reports for good
                self._failed(exc)

    async def report(self) -> None:
        """One round: every limit's takes since the last round, one script call per batch."""
        for limiter in list(self._runtime().limiters.values()):
            batch = limiter.report(BATCH)
            if not batch:
                continue
            keys = [f"{PREFIX}{limiter.name}:{key}" for key, _ in batch]
            args = [repr(limiter.rate), repr(limiter.burst), *(count for _, count in batch)]
            try:
                levels = await asyncio.wait_for(self._script(keys=keys, args=args), TIMEOUT)
            except Exception as exc:  # Redis slow or gone: the takes stay local, limits per instance
                self._failed(exc)
                continue
            if not isinstance(levels, list) or len(levels) != len(batch):
                self._failed(ValueError(f"unexpected reply {type(levels).__name__}"))
                continue
            now = self._loop.time()
            for (key, _), level in zip(batch, levels, strict=True):
                try:
                    limiter.adopt(key, float(level), now)
                except (TypeError, ValueError):
                    continue
            self.reports += 1

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        now = self._loop.time()
        if now >= self._next_error_log:
            self._next_error_log = now + _ERROR_LOG_EVERY
            log.warning("shared rate limits: redis report failed (%s: %s); limits are per instance meanwhile "
                        "(%d errors so far)", type(exc).__name__, exc, self.errors)

    async def close(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self._client.close()
        except Exception:  # closing a broken connection
            pass
