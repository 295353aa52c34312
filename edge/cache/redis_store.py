"""The shared response cache: entries kept in Redis, so every worker and every edge instance
(the VPS and the NAS, or a fleet) answers from one cache and a PURGE on one is seen by all.

Owns: the Redis layout, the msgpack encoding of an ``Entry``, the translation between this
process's monotonic clock and the wall clock the instances share, and the rule that a Redis
failure is a cache miss, never an error for the client.

Layout: one Redis hash per primary key (``edge:cache:`` + ``cache_key``). Field ``v`` holds
the Vary names of the newest response (msgpack list); each variant is a field named by its
Vary values (``""`` when the response has no Vary) holding the encoded entry. So a lookup
without Vary is one ``HMGET key v ""`` round trip, a lookup with Vary one more ``HGET``, and
``delete`` (an unsafe request, a PURGE) one ``DEL`` that drops every variant. Every write
sets the hash's expiry to the entry's lifetime plus ``stale_keep`` (copies kept for
``fallback: stale`` and revalidation).

Bounds: an entry is at most ``max_entry_size`` (``cache.max_size`` / 8, as in memory); the
total is Redis' own ``maxmemory`` with ``maxmemory-policy allkeys-lru`` (docs/features.md),
since only Redis sees what every instance stored. Writes are fire-and-forget and at most
``MAX_PENDING_WRITES`` are in flight: under a flood the cache stores less, edge never queues.

Must not know: sockets of clients, HTTP semantics (``edge.cache.policy`` decides).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable

import msgpack

from edge.cache.policy import ResponsePlan, vary_values
from edge.cache.store import DEFAULT_STALE_KEEP, ENTRY_OVERHEAD, ENTRY_SHARE, Entry, EntryWriter, _strip_age
from edge.redis_client import open_redis

__all__ = ["RedisStore", "decode_entry", "encode_entry"]

log = logging.getLogger("edge.cache")

PREFIX = b"edge:cache:"
LOOKUP_TIMEOUT = 0.5  # seconds; a slower Redis is a miss, the request goes upstream
MAX_PENDING_WRITES = 64
POOL_SIZE = 32  # connections to Redis per process; a lookup waits for one at most LOOKUP_TIMEOUT
_FORMAT = 1  # first element of every encoded entry; another value is ignored (a miss)
_SPEC_FIELD = b"v"
_ERROR_LOG_EVERY = 30.0
_CRLF = re.compile(rb"[\r\n]")
MAX_ENTRY = 8 * 1024 * 1024  # one value in Redis: larger responses stream through unstored
MAX_PENDING_DELETES = 10_000  # keys waiting to be dropped; beyond, an invalidation is lost (logged)
_DELETE_BATCH = 500

# KEYS[1] hash; ARGV: variant field, entry, Vary spec, expiry in ms.
_STORE_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'v', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


def _variant(vary: tuple[bytes, ...], get_header: Callable[[str], str | None]) -> bytes:
    if not vary:
        return b""
    return msgpack.packb(vary_values(vary, get_header))


def encode_entry(entry: Entry, wall_offset: float) -> bytes:
    """An entry as msgpack, its times on the wall clock (``now + wall_offset``)."""
    return msgpack.packb([
        _FORMAT, entry.key, entry.status, entry.reason, entry.lines, entry.names,
        b"".join(entry.chunks), entry.stored_at + wall_offset, entry.initial_age, entry.lifetime,
        entry.expires_at + wall_offset, entry.etag, entry.last_modified, entry.stale_ok, entry.explicit,
        entry.stale_if_error, list(entry.vary),
    ])


def decode_entry(blob: bytes, wall_offset: float, field: bytes = b"") -> Entry | None:
    """The entry ``encode_entry`` wrote, its times back on this process's clock, ``field`` its
    variant; None for anything else. Redis is shared, so what it returns is checked like
    input: every type, and header lines that could not split or inject a response."""
    try:
        (fmt, key, status, reason, lines, names, body, stored_at, initial_age, lifetime, expires_at, etag,
         last_modified, stale_ok, explicit, stale_if_error, vary) = msgpack.unpackb(blob)
        if fmt != _FORMAT or not _well_formed(key, status, reason, lines, names, body, etag, last_modified, vary):
            return None
        numbers = (stored_at, initial_age, lifetime, expires_at)
        if not all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers):
            return None
        if stale_if_error is not None and not isinstance(stale_if_error, (int, float)):
            return None
    except Exception:  # any value a foreign writer left: a miss
        return None
    entry = Entry.__new__(Entry)
    entry.key = key
    entry.status = status
    entry.reason = reason
    entry.lines = lines
    entry.wire = None
    entry.names = names
    entry.chunks = [body] if body else []
    entry.body_size = len(body)
    entry.cost = ENTRY_OVERHEAD + len(body)
    entry.vary = tuple(vary)
    entry.stored_at = stored_at - wall_offset
    entry.initial_age = max(0.0, float(initial_age))
    entry.lifetime = lifetime
    entry.expires_at = expires_at - wall_offset
    entry.etag = etag
    entry.last_modified = last_modified
    entry.stale_ok = bool(stale_ok)
    entry.explicit = bool(explicit)
    entry.stale_if_error = stale_if_error
    entry.vkey = field
    return entry


def _well_formed(key, status, reason, lines, names, body, etag, last_modified, vary) -> bool:
    if not (isinstance(key, bytes) and isinstance(body, bytes) and isinstance(reason, bytes)):
        return False
    if not (isinstance(status, int) and 200 <= status <= 599) or _CRLF.search(reason):
        return False
    if not (isinstance(lines, list) and isinstance(names, list) and len(lines) == len(names)):
        return False
    for line, name in zip(lines, names, strict=True):
        if not (isinstance(line, bytes) and isinstance(name, bytes) and line.endswith(b"\r\n")):
            return False
        if _CRLF.search(line, 0, len(line) - 2) or line[: len(name) + 1].lower() != name + b":":
            return False
    if not all(isinstance(v, str) and "\r" not in v and "\n" not in v for v in (etag, last_modified) if v is not None):
        return False
    return isinstance(vary, list) and all(isinstance(v, bytes) for v in vary)


class RedisStore:
    """``cache.backend: redis``. Lookups are awaited (``fetch``); everything else is the
    memory store's synchronous interface, with the Redis writes sent in the background."""

    remote = True

    def __init__(self, url: str, max_size: int, loop: asyncio.AbstractEventLoop,
                 stale_keep: float = DEFAULT_STALE_KEEP, clock: Callable[[], float] | None = None) -> None:
        self.url = url
        self.resize(max_size)
        self.stale_keep = stale_keep
        self._loop = loop
        clock = clock or loop.time
        self._clock = clock
        self.wall_offset = time.time() - clock()
        self._cache = open_redis(url, LOOKUP_TIMEOUT, POOL_SIZE)
        self._store_script = self._cache.client.register_script(_STORE_SCRIPT)
        self._writes: set[asyncio.Task] = set()
        # Lookups in flight by Redis key: concurrent requests for one key share one round trip
        # and one decoded entry (one copy of its body), as hits on the memory store do.
        self._flights: dict[bytes, asyncio.Task] = {}
        self._doomed: set[bytes] = set()  # keys to DEL, sent in batches by one task
        self._deleter: asyncio.Task | None = None
        self._closed = False
        self.errors = 0
        self.dropped_writes = 0
        self.dropped_deletes = 0
        self._next_error_log = 0.0

    def resize(self, max_size: int) -> None:
        """``cache.max_size`` (at start and on reload): one entry gets an eighth, at most MAX_ENTRY."""
        self.max_size = max_size
        self.max_entry_size = min(max_size // ENTRY_SHARE, MAX_ENTRY)

    # -- lookups --------------------------------------------------------------------------
    async def fetch(self, key: bytes, get_header: Callable[[str], str | None], now: float,
                    explicit_only: bool = False) -> Entry | None:
        """The stored response for this request, fresh or stale; None on a miss, and on any
        Redis trouble (logged, counted in ``errors``)."""
        rkey = PREFIX + key
        flight = self._flights.get(rkey)
        if flight is None:
            flight = self._flights[rkey] = self._loop.create_task(self._read(rkey))
            flight.add_done_callback(lambda _, rkey=rkey: self._flights.pop(rkey, None))
        try:
            vary, entry = await asyncio.shield(flight)
            if vary:  # the newest response varies: this request's own variant, one more round trip
                field = _variant(vary, get_header)
                blob = await self._cache.raw("hget", rkey, field)
                entry = decode_entry(blob, self.wall_offset, field) if blob is not None else None
        except Exception as exc:  # a cache that fails is a miss, whatever the cause
            self._failed("lookup", exc)
            return None
        if entry is None or now - entry.expires_at > self.stale_keep:
            return None
        if explicit_only and not entry.explicit:
            return None
        if entry.stored_at > now:  # the writer's clock is ahead of ours: no negative Age
            entry.stored_at = now
        return entry

    async def _read(self, rkey: bytes) -> tuple[tuple[bytes, ...], Entry | None]:
        """The Vary spec under ``rkey`` and, when there is none, the entry itself."""
        spec_blob, blob = await self._cache.raw("hmget", rkey, _SPEC_FIELD, b"")
        if spec_blob is None:
            return (), None
        try:
            vary = tuple(msgpack.unpackb(spec_blob))
            if not all(isinstance(name, bytes) for name in vary):
                return (), None
        except Exception:  # see decode_entry
            return (), None
        if vary:
            return vary, None
        return (), decode_entry(blob, self.wall_offset) if blob is not None else None

    def get(self, key: bytes, get_header: Callable[[str], str | None], now: float,
            explicit_only: bool = False) -> Entry | None:
        """No synchronous answer from a remote store: the shell awaits ``fetch``."""
        return None

    # -- filling --------------------------------------------------------------------------
    def begin(self, key: bytes, get_header: Callable[[str], str | None], status: int, reason: bytes,
              lines: list[bytes], names: list[bytes], plan: ResponsePlan, now: float,
              content_length: int | None = None) -> EntryWriter | None:
        """Collect a response the shell streams (``EntryWriter``); sent to Redis on commit."""
        if content_length is not None and content_length + ENTRY_OVERHEAD > self.max_entry_size:
            return None
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.dropped_writes += 1
            return None
        lines, names = _strip_age(lines, names)
        entry = Entry(key, status, reason, lines, names, plan, now)
        entry.vkey = _variant(plan.vary, get_header)
        if entry.cost > self.max_entry_size:
            return None
        return EntryWriter(self, entry, content_length)  # type: ignore[arg-type]

    def refresh(self, entry: Entry, lines: list[bytes], names: list[bytes], plan: ResponsePlan, now: float) -> None:
        """A 304 revalidated ``entry``: store it again with the merged lines and new freshness."""
        entry.lines, entry.names = _strip_age(lines, names)
        entry.wire = None
        entry._apply(plan, now)
        if not isinstance(entry.vkey, bytes):
            entry.vkey = b""
        self._publish(entry)

    def delete(self, key: bytes) -> int:
        """Drop every variant under ``key``, on every instance; the count is not known here.
        Invalidations never queue behind stores: they are batched into DELs of their own."""
        if self._closed:
            return 0
        doomed = self._doomed
        if len(doomed) >= MAX_PENDING_DELETES:
            self.dropped_deletes += 1
            self._failed("delete", RuntimeError(f"{MAX_PENDING_DELETES} invalidations pending"))
            return 0
        doomed.add(PREFIX + key)
        if self._deleter is None:
            self._deleter = self._loop.create_task(self._delete_batches())
        return 0

    async def _delete_batches(self) -> None:
        try:
            while self._doomed:
                batch = [self._doomed.pop() for _ in range(min(_DELETE_BATCH, len(self._doomed)))]
                try:
                    await asyncio.wait_for(self._cache.raw("delete", *batch), LOOKUP_TIMEOUT * 4)
                except Exception as exc:  # see fetch
                    self._failed("delete", exc)
        finally:
            self._deleter = None

    def sweep(self, now: float) -> int:
        """Redis expires the hashes itself."""
        return 0

    # -- EntryWriter's store interface ----------------------------------------------------
    def _reserve(self, nbytes: int) -> bool:
        return True  # the entry's own bound is checked by the writer; the total is Redis'

    def _release(self, nbytes: int) -> None:
        pass

    def _publish(self, entry: Entry) -> None:
        expiry = max(1, int((entry.expires_at - self._clock() + self.stale_keep) * 1000))
        variant = entry.vkey if isinstance(entry.vkey, bytes) else b""
        blob = encode_entry(entry, self.wall_offset)
        spec = msgpack.packb(list(entry.vary))
        self._background("store", self._store_script(keys=[PREFIX + entry.key], args=[variant, blob, spec, expiry]))

    # -- background writes ---------------------------------------------------------------
    def _background(self, what: str, coro) -> None:
        if self._closed or len(self._writes) >= MAX_PENDING_WRITES:
            coro.close()
            self.dropped_writes += 1
            return
        task = self._loop.create_task(self._guarded(what, coro))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _guarded(self, what: str, coro) -> None:
        try:
            await asyncio.wait_for(coro, LOOKUP_TIMEOUT * 4)
        except Exception as exc:  # see fetch
            self._failed(what, exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        now = self._clock()
        if now >= self._next_error_log:
            self._next_error_log = now + _ERROR_LOG_EVERY
            log.warning("redis cache %s failed (%s: %s); requests go upstream meanwhile (%d errors so far)",
                        what, type(exc).__name__, exc, self.errors)

    async def flush(self) -> None:
        """Wait for the writes and invalidations in flight (tests, shutdown)."""
        while self._writes or self._deleter is not None:
            pending = [*self._writes, *([self._deleter] if self._deleter is not None else [])]
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Reload to another URL, or shutdown: what is in flight goes out, nothing new starts."""
        await self.flush()
        self._closed = True
        try:
            await self._cache.close()
        except Exception:  # closing a broken connection
            pass

    def __len__(self) -> int:
        return 0
