"""Token-bucket rate limits: one ``RateLimiter`` per named limit, one bucket per key.

Owns: the buckets of one ``rate_limits:`` entry, their memory bound, ban counting for
persistent offenders, the IETF ``RateLimit-Policy`` / ``RateLimit`` header values
(draft-ietf-httpapi-ratelimit-headers-10: ``"name";q=20;w=2`` and ``"name";r=0;t=1``)
and the request-key extraction (``client_ip``, ``header:NAME``, ``route``, and
``cookie:NAME`` for the hash balancer).

Invariants: a bucket's tokens stay within ``[0, burst]``; ``retry_after`` is a whole
number of seconds, at least 1; requests are admitted or rejected, never delayed. The
number of buckets never exceeds ``max_keys``: buckets that would be full again are
dropped (an absent key means a full bucket), and past the cap the least recently used
bucket goes.

With ``state.redis_url`` the buckets are shared among instances: ``take`` stays local and
synchronous, counting what it takes (``taken``); the shell reports those counts every
100 ms and ``adopt``s the shared level each key has after every instance's reports.

Must not know: sockets, clocks, asyncio, the HTTP codec. Every time-dependent call
takes ``now`` (monotonic seconds) from the caller.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice

from edge.policy.model import RateLimit

__all__ = [
    "ALLOWED",
    "DEFAULT_MAX_KEYS",
    "Decision",
    "KeySpec",
    "RateLimiter",
]

# A flood of distinct client addresses must not grow memory without bound. 100k buckets
# cost about 20 MB (key string + slotted bucket + OrderedDict node), which a small VPS
# can spare; beyond that the least recently used bucket is evicted.
DEFAULT_MAX_KEYS = 100_000
# Ban counters live longer than buckets (a whole ``ban.within``), so they get their own cap.
DEFAULT_MAX_BAN_KEYS = 20_000
# Expired buckets reclaimed per new key, so a sweep never costs a long pause on the hot path.
_SWEEP_PER_INSERT = 4
# A header value used as a key is cut to this length: a client cannot make one key cost more.
MAX_KEY_LENGTH = 256


class Decision:
    """The outcome of ``take``. Allowed requests all share the ``ALLOWED`` instance."""

    __slots__ = ("allowed", "ban_for", "remaining", "reset", "retry_after")

    def __init__(self, allowed: bool, retry_after: int, remaining: int, reset: int, ban_for: float = 0.0) -> None:
        self.allowed = allowed
        # Whole seconds for the ``Retry-After`` header; at least 1 on a rejection.
        self.retry_after = retry_after
        # Whole tokens left after this request (``r=`` of the RateLimit header).
        self.remaining = remaining
        # Seconds until the next token (``t=``); equal to retry_after on a rejection.
        self.reset = reset
        # Non-zero exactly once per offence: hand the client to the block list for this long.
        self.ban_for = ban_for

    def __repr__(self) -> str:
        if self.allowed:
            return "<allowed>"
        return f"<rejected retry_after={self.retry_after} ban_for={self.ban_for}>"


# The allowed fast path returns this constant: no allocation per admitted request.
ALLOWED = Decision(True, 0, -1, 0)


class _Bucket:
    """Tokens as of ``stamp``; refilled lazily on the next take."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class _Offender:
    """Rejections of one key in the current and previous ``within`` window (sliding estimate)."""

    __slots__ = ("banned_until", "count", "previous", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.previous = 0
        self.banned_until = 0.0


class RateLimiter:
    """The buckets of one named limit. ``take(key, now)`` is the per-request call."""

    __slots__ = (
        "_ban_after",
        "_ban_for",
        "_ban_within",
        "_buckets",
        "_full_after",
        "_offenders",
        "burst",
        "key_spec",
        "max_ban_keys",
        "max_keys",
        "name",
        "policy_header",
        "rate",
        "rejected",
        "taken",
    )

    def __init__(
        self,
        name: str,
        limit: RateLimit,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_ban_keys: int = DEFAULT_MAX_BAN_KEYS,
    ) -> None:
        if limit.rate <= 0:
            raise ValueError("rate must be above zero")
        self.name = name
        self.rate = float(limit.rate)
        self.burst = float(limit.burst)
        self.key_spec = KeySpec(limit.key)
        self.max_keys = max(1, max_keys)
        self.max_ban_keys = max(1, max_ban_keys)
        # An empty bucket is full again after this long; older untouched buckets are full.
        self._full_after = self.burst / self.rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._offenders: OrderedDict[str, _Offender] = OrderedDict()
        ban = limit.ban
        self._ban_after = ban.after if ban is not None else 0
        self._ban_within = ban.within if ban is not None else 0.0
        self._ban_for = ban.for_ if ban is not None else 0.0
        # Rejections since start; the shell adds it to edge_ratelimit_rejected_total{route}.
        self.rejected = 0
        # Shared buckets (``state.redis_url``): tokens taken per key since the last report to
        # the other instances; None while the buckets are this process's alone.
        self.taken: dict[str, int] | None = None
        # Constant per limit: the whole bucket is the quota, the time to refill it the window.
        window = max(1, math.ceil(self._full_after))
        self.policy_header = f'"{_sf_string(name)}";q={limit.burst};w={window}'

    # -- the hot path ------------------------------------------------------------------
    def take(self, key: str, now: float) -> Decision:
        """Take one token for ``key``: ``ALLOWED``, or a rejection to answer with 429."""
        buckets = self._buckets
        bucket = buckets.get(key)
        taken = self.taken
        if bucket is None:
            self._insert(key, now)
            if taken is not None:
                self._count_taken(taken, key)
            return ALLOWED
        buckets.move_to_end(key)
        elapsed = now - bucket.stamp
        tokens = bucket.tokens
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
            bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            if taken is not None:
                self._count_taken(taken, key)
            return ALLOWED
        bucket.tokens = tokens
        return self._reject(key, tokens, now)

    def _insert(self, key: str, now: float) -> None:
        """A new key starts with a full bucket, minus this request's token."""
        buckets = self._buckets
        self._sweep(now, _SWEEP_PER_INSERT)
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)
        buckets[key] = _Bucket(self.burst - 1.0, now)

    def _reject(self, key: str, tokens: float, now: float) -> Decision:
        self.rejected += 1
        wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        ban_for = self._count_offence(key, now) if self._ban_after else 0.0
        return Decision(False, wait, 0, wait, ban_for)

    def _count_offence(self, key: str, now: float) -> float:
        """Count one rejection; return the ban duration the first time ``after`` is exceeded."""
        offenders = self._offenders
        offender = offenders.get(key)
        within = self._ban_within
        if offender is None:
            while len(offenders) >= self.max_ban_keys:
                offenders.popitem(last=False)
            offender = offenders[key] = _Offender(now)
        else:
            offenders.move_to_end(key)
        if offender.banned_until > now:
            return 0.0  # already reported; the block list (or this limiter) has it
        age = now - offender.start
        if age >= within:
            # Roll the window; after two windows of silence nothing carries over.
            offender.previous = offender.count if age < 2 * within else 0
            offender.start = now if age >= 2 * within else offender.start + within
            offender.count = 0
            age = now - offender.start
        offender.count += 1
        # Sliding-window estimate: the previous window weighted by how much of it still overlaps.
        estimate = offender.count + (offender.previous * (1.0 - age / within) if within > 0 else 0.0)
        if estimate > self._ban_after:
            offender.banned_until = now + self._ban_for
            offender.count = offender.previous = 0
            offender.start = now
            return self._ban_for
        return 0.0

    # -- headers -----------------------------------------------------------------------
    def ratelimit_header(self, decision: Decision) -> str:
        """``RateLimit`` value for a rejection (r=0, t=seconds until the next token)."""
        return f'"{_sf_string(self.name)}";r={max(0, decision.remaining)};t={decision.reset}'

    def headers(self, decision: Decision) -> list[tuple[str, str]]:
        """Every header a 429 carries: Retry-After, RateLimit-Policy, RateLimit."""
        return [
            ("Retry-After", str(decision.retry_after)),
            ("RateLimit-Policy", self.policy_header),
            ("RateLimit", self.ratelimit_header(decision)),
        ]

    def peek(self, key: str, now: float) -> tuple[int, int]:
        """(remaining whole tokens, seconds until the next token) without taking one.

        For a shell that also wants ``RateLimit`` on admitted responses; costs a lookup.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            return int(self.burst), 0
        tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)
        if tokens >= self.burst:
            return int(tokens), 0
        return int(tokens), max(1, math.ceil((1.0 - (tokens % 1.0)) / self.rate))

    # -- shared buckets (state.redis_url) ------------------------------------------------
    def share(self, shared: bool = True) -> None:
        """Start (or stop) counting tokens taken, for a shell that reports them elsewhere."""
        if not shared:
            self.taken = None
        elif self.taken is None:
            self.taken = {}

    def _count_taken(self, taken: dict[str, int], key: str) -> None:
        count = taken.get(key)
        if count is not None:
            taken[key] = count + 1
        elif len(taken) < self.max_keys:  # bounded like the buckets: beyond, a key stays local
            taken[key] = 1

    def report(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` (key, tokens taken) pairs since the last report, now forgotten
        (oldest first; the cost is the batch's, not the backlog's)."""
        taken = self.taken
        if not taken:
            return []
        if len(taken) <= limit:
            self.taken = {}
            return list(taken.items())
        batch = list(islice(taken.items(), limit))
        for key, _ in batch:
            del taken[key]
        return batch

    def adopt(self, key: str, level: float, now: float) -> None:
        """The shared bucket of ``key`` holds ``level`` tokens after every instance's reports,
        ours included: the local bucket takes that level, less what was taken here since."""
        taken = self.taken
        since = taken.get(key, 0) if taken is not None else 0
        tokens = min(self.burst, level) - since
        if tokens < 0.0:
            tokens = 0.0
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = tokens
            bucket.stamp = now
        elif tokens < self.burst:
            self._insert(key, now)
            self._buckets[key].tokens = tokens

    # -- memory --------------------------------------------------------------------------
    def _sweep(self, now: float, budget: int) -> int:
        """Drop up to ``budget`` least recently used buckets that are full again by now."""
        buckets = self._buckets
        horizon = now - self._full_after
        dropped = 0
        while buckets and dropped < budget:
            key = next(iter(buckets))
            # Oldest first: once one is too recent, every later one is too.
            if buckets[key].stamp > horizon:
                break
            del buckets[key]
            dropped += 1
        return dropped

    def sweep(self, now: float) -> int:
        """Drop every idle full bucket and every lapsed ban counter; for a periodic timer."""
        dropped = self._sweep(now, len(self._buckets))
        offenders = self._offenders
        stale = now - 2 * self._ban_within
        for key in [k for k, o in offenders.items() if o.start <= stale and o.banned_until <= now]:
            del offenders[key]
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)

    def tokens(self, key: str, now: float) -> float:
        """Tokens ``key`` would have at ``now`` (full when unknown); for tests and status."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)

    # -- reload and persistence ----------------------------------------------------------
    def export_state(self, now: float) -> dict[str, dict[str, float]]:
        """Plain data for reload carry-over and the state file, independent of the clock.

        ``buckets``: key -> tokens as of ``now`` (full buckets left out: absent means full).
        ``bans``: key -> seconds the ban has left.
        """
        burst = self.burst
        rate = self.rate
        buckets: dict[str, float] = {}
        for key, bucket in self._buckets.items():
            tokens = min(burst, bucket.tokens + max(0.0, now - bucket.stamp) * rate)
            if tokens < burst:
                buckets[key] = tokens
        bans = {k: o.banned_until - now for k, o in self._offenders.items() if o.banned_until > now}
        return {"buckets": buckets, "bans": bans}

    def import_state(self, state: dict[str, dict[str, float]], now: float) -> None:
        """Take over buckets and bans exported by ``export_state`` (maybe under other limits).

        Tokens are clamped to this limit's burst, so a lowered burst applies at once.
        """
        burst = self.burst
        buckets = self._buckets
        for key, tokens in state.get("buckets", {}).items():
            if len(buckets) >= self.max_keys:
                break
            value = float(tokens)
            if value != value:  # NaN from a damaged file
                continue
            buckets[key] = _Bucket(min(burst, max(0.0, value)), now)
        if self._ban_after:
            for key, left in state.get("bans", {}).items():
                if len(self._offenders) >= self.max_ban_keys:
                    break
                if float(left) > 0:
                    offender = self._offenders[key] = _Offender(now)
                    offender.banned_until = now + float(left)

    def carry_over(self, old: RateLimiter, now: float) -> None:
        """Reload: adopt the buckets of the limiter this one replaces."""
        self.import_state(old.export_state(now), now)
        self.rejected = old.rejected
        if self.taken is not None and old.taken:
            for key, count in old.taken.items():  # not yet reported to the other instances
                self.taken[key] = self.taken.get(key, 0) + count


def _sf_string(value: str) -> str:
    """Escape for a Structured Fields String (RFC 9651 3.3.3): printable ASCII only,
    backslash and quote escaped; anything else becomes ``?`` (a YAML key may be Unicode)."""
    if value.isascii() and value.isprintable() and "\\" not in value and '"' not in value:
        return value
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isascii() and char.isprintable():
            out.append(char)
        else:
            out.append("?")
    return "".join(out)


class KeySpec:
    """A parsed key spec: ``client_ip``, ``header:NAME``, ``route`` or ``cookie:NAME``.

    Parsed once when the policy compiles; ``key`` is then a couple of attribute reads.
    A request without the named header or cookie falls back to its client address
    (prefixed, so no header value can impersonate it): omitting the header must not
    escape the limit, nor pool every such client in one bucket.
    """

    __slots__ = ("kind", "name", "spec")

    CLIENT_IP = 0
    HEADER = 1
    ROUTE = 2
    COOKIE = 3

    def __init__(self, spec: str) -> None:
        self.spec = spec
        kind, _, name = spec.partition(":")
        if spec == "client_ip":
            self.kind, self.name = self.CLIENT_IP, ""
        elif spec == "route":
            self.kind, self.name = self.ROUTE, ""
        elif kind == "header" and name:
            self.kind, self.name = self.HEADER, name.lower()
        elif kind == "cookie" and name:
            self.kind, self.name = self.COOKIE, name
        else:
            raise ValueError(f"unknown key {spec!r}: expected client_ip, header:NAME, cookie:NAME or route")

    def key(self, client_ip: str, get_header: Callable[[str], str | None], route: str) -> str:
        """The key of one request.

        ``get_header(lowercase_name) -> str | None`` looks a request header up;
        ``route`` is the route's label.
        """
        kind = self.kind
        if kind == 0:
            return client_ip
        if kind == 2:
            return route
        value = get_header(self.name) if kind == 1 else cookie_value(get_header("cookie"), self.name)
        if not value:
            return "ip:" + client_ip
        return value if len(value) <= MAX_KEY_LENGTH else value[:MAX_KEY_LENGTH]


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None (RFC 6265 5.4 shape)."""
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"')
    return None
