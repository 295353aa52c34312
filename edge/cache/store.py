"""The response cache's memory store: entries bounded by bytes, LRU, filled while streaming.

Owns: stored responses (``Entry``), their byte accounting against ``cache.max_size``, LRU
eviction, the Vary secondary key, and the streaming fill (``EntryWriter``): the shell
appends each body chunk it writes to the client, and only a complete body is published.

Invariants:
- ``size`` (committed entries plus bytes reserved by writers still filling) never exceeds
  ``max_size``; a writer that cannot get room, or outgrows ``max_entry_size``, is abandoned
  and its bytes released at once.
- A reader never sees a partial body: entries become visible on ``commit`` only, replacing
  the previous entry of the same key and variant.
- Chunks are the very ``bytes`` objects the shell wrote to the client; the store neither
  joins nor copies them, so a response being streamed and stored exists once in memory.

Must not know: sockets, asyncio, HTTP semantics (``edge.cache.policy`` decides what and
how long to store; this module keeps what it is told). Time is passed in as ``now``.

The other backend, ``edge.cache.redis_store.RedisStore`` (shared by workers and instances),
has the same interface with an awaited lookup (``fetch``). See docs/features.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from edge.cache.policy import ResponsePlan, vary_values

__all__ = ["CacheStore", "Entry", "EntryWriter", "MemoryStore"]

# Bookkeeping per entry (slotted Entry, key, lists, OrderedDict node) and per body chunk
# (bytes object header and list slot), so a million tiny entries cannot hide from max_size.
ENTRY_OVERHEAD = 512
CHUNK_OVERHEAD = 40
# An expired entry is kept this long past its lifetime for ``fallback: stale`` and for
# revalidation, unless LRU pressure evicts it first.
DEFAULT_STALE_KEEP = 86400.0
# One entry may take at most this share of the store.
ENTRY_SHARE = 8

_WARNING_STALE = b'Warning: 110 - "Response is Stale"\r\n'
# Header fields a 304 answered from the cache carries (RFC 9110 15.4.5).
_NOT_MODIFIED_FIELDS = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})


class Entry:
    """One stored response. ``lines``/``names`` are its end-to-end header lines without
    Content-Length, Age and hop-by-hop fields; ``chunks`` its whole body."""

    __slots__ = (
        "body_size",
        "chunks",
        "cost",
        "etag",
        "expires_at",
        "explicit",
        "initial_age",
        "key",
        "last_modified",
        "lifetime",
        "lines",
        "names",
        "reason",
        "stale_if_error",
        "stale_ok",
        "status",
        "stored_at",
        "vary",
        "vkey",
        "wire",
    )

    def __init__(self, key: bytes, status: int, reason: bytes, lines: list[bytes], names: list[bytes],
                 plan: ResponsePlan, now: float) -> None:
        self.key = key
        self.vkey: object = key  # the store's key: key, or (key, vary values)
        self.status = status
        self.reason = reason
        self.lines = lines
        # (status line + stored lines, Content-Length line) of HTTP/1.1 hits, joined by the shell
        # on the first hit (edge.serve.features); None until then and after a refresh.
        self.wire: tuple[bytes, bytes] | None = None
        self.names = names
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.cost = ENTRY_OVERHEAD + _lines_size(lines)
        self.vary = plan.vary
        self._apply(plan, now)

    def _apply(self, plan: ResponsePlan, now: float) -> None:
        self.stored_at = now
        self.initial_age = plan.initial_age
        self.lifetime = plan.lifetime
        self.expires_at = now + plan.lifetime - plan.initial_age
        self.etag = plan.etag
        self.last_modified = plan.last_modified
        self.stale_ok = plan.stale_ok
        self.explicit = plan.explicit
        self.stale_if_error = plan.stale_if_error

    # -- freshness -------------------------------------------------------------------
    def age(self, now: float) -> float:
        """Current age (RFC 9111 4.2.3): the corrected initial age plus resident time."""
        return self.initial_age + (now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def usable_stale(self, now: float) -> bool:
        """Whether ``fallback: stale`` may serve it now the upstream is down."""
        if not self.stale_ok:
            return False
        sie = self.stale_if_error
        return sie is None or now - self.expires_at <= sie

    def satisfies(self, plan, now: float) -> bool:
        """Fresh enough for this request's own limits (``max-age``, ``min-fresh``)?"""
        if now >= self.expires_at or plan.revalidate:
            return False
        if plan.max_age is not None and self.age(now) > plan.max_age:
            return False
        return not (plan.min_fresh is not None and self.expires_at - now < plan.min_fresh)

    @property
    def validators(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    # -- serving ---------------------------------------------------------------------
    def head_lines(self, now: float, stale: bool = False) -> list[bytes]:
        """Header lines to answer from this entry: the stored ones, ``Age``, and for a stale
        copy ``Warning: 110`` (obsoleted by RFC 9111 but still the only standard signal).
        The shell adds Content-Length (``body_size``) and its own headers."""
        out = list(self.lines)
        out.append(b"Age: %d\r\n" % int(self.age(now)))
        if stale:
            out.append(_WARNING_STALE)
        return out

    def not_modified_lines(self, now: float) -> list[bytes]:
        """Header lines of a 304 answered from this entry."""
        out = [line for line, name in zip(self.lines, self.names) if name in _NOT_MODIFIED_FIELDS]
        out.append(b"Age: %d\r\n" % int(self.age(now)))
        return out

    def __repr__(self) -> str:
        return f"<Entry {self.key!r} {self.status} {self.body_size}B lifetime={self.lifetime}>"


def _lines_size(lines: list[bytes]) -> int:
    return sum(len(line) for line in lines) + CHUNK_OVERHEAD * len(lines)


def _strip_age(lines: list[bytes], names: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Copies without ``Age`` (the store computes it): the shell may go on editing its lists."""
    if b"age" not in names:
        return list(lines), list(names)
    keep = [i for i, n in enumerate(names) if n != b"age"]
    return [lines[i] for i in keep], [names[i] for i in keep]


class EntryWriter:
    """Fills one entry while the shell streams the same chunks to the client."""

    __slots__ = ("_store", "content_length", "entry", "state")

    FILLING = 0
    COMMITTED = 1
    ABANDONED = 2

    def __init__(self, store: MemoryStore, entry: Entry, content_length: int | None) -> None:
        self._store = store
        self.entry = entry
        self.content_length = content_length
        self.state = self.FILLING

    def append(self, chunk: bytes) -> bool:
        """Keep ``chunk`` (the bytes object itself); False once the writer is abandoned,
        after which the shell stops calling."""
        if self.state != self.FILLING:
            return False
        cost = len(chunk) + CHUNK_OVERHEAD
        entry = self.entry
        store = self._store
        if entry.cost + cost > store.max_entry_size or not store._reserve(cost):
            self.abandon()
            return False
        entry.chunks.append(bytes(chunk))  # a memoryview (see ResponseReader.views) would keep its whole read
        entry.body_size += len(chunk)
        entry.cost += cost
        return True

    def commit(self) -> Entry | None:
        """The body is complete: publish it. A body shorter or longer than the announced
        Content-Length (an upstream that broke off) is dropped instead."""
        if self.state != self.FILLING:
            return None
        if self.content_length is not None and self.content_length != self.entry.body_size:
            self.abandon()
            return None
        self.state = self.COMMITTED
        self._store._publish(self.entry)
        return self.entry

    def abandon(self) -> None:
        """Drop the partial entry and give its bytes back (client gone, upstream error...)."""
        if self.state == self.FILLING:
            self.state = self.ABANDONED
            self._store._release(self.entry.cost)
            self.entry.chunks = []


class CacheStore(Protocol):
    """What the shell needs from a store: ``MemoryStore``, or ``RedisStore`` (``remote``:
    its lookups are awaited through ``fetch``, ``get`` always misses)."""

    remote: bool

    def resize(self, max_size: int) -> None: ...

    def get(self, key: bytes, get_header: Callable[[str], str | None], now: float,
            explicit_only: bool = False) -> Entry | None: ...

    def begin(self, key: bytes, get_header: Callable[[str], str | None], status: int, reason: bytes,
              lines: list[bytes], names: list[bytes], plan: ResponsePlan, now: float,
              content_length: int | None = None) -> EntryWriter | None: ...

    def refresh(self, entry: Entry, lines: list[bytes], names: list[bytes], plan: ResponsePlan,
                now: float) -> None: ...

    def delete(self, key: bytes) -> int: ...


class MemoryStore:
    """Entries in one LRU OrderedDict, bounded by bytes.

    Why not aiocache's SimpleMemoryCache: it bounds neither entries nor bytes, has no LRU,
    and is coroutine-only; a cache hit here is two dict lookups without an await.
    """

    __slots__ = ("_entries", "_vary", "evictions", "max_entry_size", "max_size", "size", "stale_keep")

    remote = False

    def __init__(self, max_size: int, max_entry_size: int | None = None,
                 stale_keep: float = DEFAULT_STALE_KEEP) -> None:
        if max_size < ENTRY_OVERHEAD:
            raise ValueError(f"cache max_size must be at least {ENTRY_OVERHEAD} bytes")
        self.max_size = max_size
        self.max_entry_size = min(max_size, max_entry_size if max_entry_size is not None else max_size // ENTRY_SHARE)
        self.stale_keep = stale_keep
        self.size = 0  # committed entries + reservations of writers still filling
        self.evictions = 0
        # vkey -> Entry, least recently used first. vkey is the primary key for responses
        # without Vary, else (key, vary values).
        self._entries: OrderedDict[object, Entry] = OrderedDict()
        # primary key -> [Vary names of its newest response, number of entries under it]
        self._vary: dict[bytes, list] = {}

    def resize(self, max_size: int) -> None:
        """A reload changed ``cache.max_size``: evict down to it (entries stay otherwise)."""
        self.max_size = max(max_size, ENTRY_OVERHEAD)
        self.max_entry_size = self.max_size // ENTRY_SHARE
        self._evict_to(self.max_size)

    # -- lookups ---------------------------------------------------------------------
    def get(self, key: bytes, get_header: Callable[[str], str | None], now: float,
            explicit_only: bool = False) -> Entry | None:
        """The stored response for this request, fresh or stale; None on a miss.

        ``get_header(lower-case name)`` reads the request's headers for the Vary match.
        ``explicit_only`` (``RequestPlan.explicit_only``: the request has Cookie or
        Authorization) admits only responses that declared themselves shareable.
        The caller checks ``entry.satisfies(plan, now)``. Entries stale for longer than
        ``stale_keep`` are dropped here.
        """
        spec = self._vary.get(key)
        if spec is None:
            return None
        names = spec[0]
        vkey: object = (key, vary_values(names, get_header)) if names else key
        entries = self._entries
        entry = entries.get(vkey)
        if entry is None:
            return None
        if now - entry.expires_at > self.stale_keep:
            self._remove(entry)
            return None
        if explicit_only and not entry.explicit:
            return None
        entries.move_to_end(vkey)
        return entry

    # -- filling ---------------------------------------------------------------------
    def begin(self, key: bytes, get_header: Callable[[str], str | None], status: int, reason: bytes,
              lines: list[bytes], names: list[bytes], plan: ResponsePlan, now: float,
              content_length: int | None = None) -> EntryWriter | None:
        """Start storing a response the shell is about to stream; None when it cannot fit.

        ``lines``/``names`` are copied (the shell passes the upstream's lines, then adds its
        own per-request headers to its lists); ``content_length`` lets a too large body be
        refused before the first byte, and a truncated one be dropped at commit.
        """
        if content_length is not None and content_length + ENTRY_OVERHEAD > self.max_entry_size:
            return None
        lines, names = _strip_age(lines, names)
        entry = Entry(key, status, reason, lines, names, plan, now)
        if plan.vary:
            entry.vkey = (key, vary_values(plan.vary, get_header))
        if entry.cost > self.max_entry_size or not self._reserve(entry.cost):
            return None
        return EntryWriter(self, entry, content_length)

    def refresh(self, entry: Entry, lines: list[bytes], names: list[bytes], plan: ResponsePlan, now: float) -> None:
        """A 304 revalidated ``entry``: take the merged header lines and the new freshness."""
        lines, names = _strip_age(lines, names)
        old = _lines_size(entry.lines)
        new = _lines_size(lines)
        entry.lines = lines
        entry.wire = None
        entry.names = names
        entry._apply(plan, now)
        if self._entries.get(entry.vkey) is entry:
            self.size += new - old
            entry.cost += new - old
            self._entries.move_to_end(entry.vkey)
            self._evict_to(self.max_size)
        else:
            entry.cost += new - old

    def delete(self, key: bytes) -> int:
        """Drop every variant stored under ``key`` (a PURGE, or an unsafe request's target)."""
        if key not in self._vary:
            return 0
        doomed = [e for e in self._entries.values() if e.key == key]
        for entry in doomed:
            self._remove(entry)
        return len(doomed)

    # -- accounting ------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> bool:
        """Make room for ``nbytes`` by evicting least recently used entries."""
        if self.size + nbytes > self.max_size and not self._evict_to(self.max_size - nbytes):
            return False
        self.size += nbytes
        return True

    def _release(self, nbytes: int) -> None:
        self.size -= nbytes

    def _evict_to(self, limit: int) -> bool:
        entries = self._entries
        while self.size > limit and entries:
            _, entry = entries.popitem(last=False)
            self._forget(entry)
            self.evictions += 1
        return self.size <= limit

    def _publish(self, entry: Entry) -> None:
        entries = self._entries
        old = entries.get(entry.vkey)
        if old is not None:
            self._remove(old)
        entries[entry.vkey] = entry
        spec = self._vary.get(entry.key)
        if spec is None:
            self._vary[entry.key] = [entry.vary, 1]
        else:
            spec[0] = entry.vary  # the newest response's Vary decides later lookups
            spec[1] += 1

    def _remove(self, entry: Entry) -> None:
        if self._entries.get(entry.vkey) is entry:
            del self._entries[entry.vkey]
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.size -= entry.cost
        spec = self._vary.get(entry.key)
        if spec is not None:
            spec[1] -= 1
            if spec[1] <= 0:
                del self._vary[entry.key]

    def sweep(self, now: float) -> int:
        """Drop entries stale beyond ``stale_keep``; for a periodic timer."""
        doomed = [e for e in self._entries.values() if now - e.expires_at > self.stale_keep]
        for entry in doomed:
            self._remove(entry)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries.values())
