"""Redis connections for what several edge instances share: the response cache
(``cache.backend: redis``) and rate-limit buckets (``state.redis_url``).

Owns: the URL syntax and the client settings (aiocache's Redis backend over redis-py's
asyncio client: a timeout on every operation, a bounded connection pool in which a caller
waits at most that timeout). Callers treat every Redis error as "not shared right now" and go on.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ["open_redis", "parse_redis_url"]


def parse_redis_url(url: str) -> dict:
    """``redis://[:password@]host[:port][/db]`` or ``rediss://`` (TLS) as connection options;
    ValueError with the reason otherwise (the policy loader reports it with file and line)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis URL must start with redis:// or rediss://, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"redis URL has no host: {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"redis URL has a bad port: {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"redis URL database must be a number: {url!r}")
    return {
        "endpoint": parts.hostname,
        "port": port,
        "db": int(path) if path else 0,
        "password": unquote(parts.password) if parts.password else None,
        "ssl": parts.scheme == "rediss",
    }


def open_redis(url: str, timeout: float, pool_size: int):
    """An aiocache ``RedisCache`` for ``url`` (no serializer, no namespace: callers use
    ``raw`` and scripts on ``.client``); connects lazily, on first use."""
    from aiocache import RedisCache
    from aiocache.serializers import NullSerializer
    from redis.asyncio import BlockingConnectionPool

    options = parse_redis_url(url)
    # A full pool makes a caller wait (up to ``timeout``) for a connection, not fail at once:
    # a burst of lookups is exactly what a shared cache must absorb.
    return RedisCache(serializer=NullSerializer(), namespace=None, timeout=timeout, pool_max_size=pool_size,
                      create_connection_timeout=timeout, connection_pool_class=BlockingConnectionPool,
                      connection_pool_kwargs={"timeout": timeout}, **options)
