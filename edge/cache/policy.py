"""HTTP caching rules for edge's shared response cache (RFC 9111), as pure functions.

Owns: reading ``Cache-Control``; whether a request may be answered from the cache and
whether its response may be stored (``RequestPlan``, ``ResponsePlan``); freshness lifetime
and age; the cache key and the Vary secondary key; the conditional headers for
revalidation, the merge of a 304 into a stored response, and the client's own conditional
request against a stored response.

Rules beyond the RFC, chosen for a self-hoster's apps (which often forget Cache-Control on
personal pages): a request carrying ``Authorization`` *or* ``Cookie`` is answered from, and
stored into, the cache only when the response said so explicitly (``public`` or
``s-maxage``; RFC 9111 3.5 would also take ``must-revalidate`` for Authorization, but such
an entry would then answer anonymous requests too). The route's ``ttl`` is only the default
lifetime for responses that give none. ``Set-Cookie`` responses
are never stored (one user's session must never reach another). Range requests bypass the
cache. ``must-revalidate``, ``proxy-revalidate`` and ``no-cache`` responses are never served
stale, not even as a fallback.

Must not know: sockets, the store's layout, clocks. Monotonic ``now`` and wall-clock
``wall`` (for Date/Expires) are passed in.
"""

from __future__ import annotations

import calendar
import email.utils
import re
from collections.abc import Callable

__all__ = [
    "DEFAULT_CACHEABLE",
    "CacheControl",
    "RequestPlan",
    "ResponsePlan",
    "cache_key",
    "conditional_lines",
    "merge_304",
    "not_modified",
    "parse_http_date",
    "request_plan",
    "request_plan_from_head",
    "response_plan",
    "revalidation_headers",
    "strip_conditionals",
    "vary_names",
    "vary_values",
]

# RFC 9110 15.1 "heuristically cacheable" statuses: the route's ttl applies to them.
DEFAULT_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Never stored: partial content (we keep whole bodies only) and 304 (it refreshes, see merge_304).
_NEVER_STORED = frozenset({206, 304})
# Lifetimes beyond a year are treated as a year (RFC 9111 1.2.2 allows capping delta-seconds).
MAX_LIFETIME = 365 * 86400.0
# Stored header fields the cache owns or that depend on the stored body: never taken from a 304.
_NOT_UPDATED = frozenset({b"content-length", b"content-encoding", b"content-range", b"transfer-encoding", b"age"})
_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since"})


class CacheControl:
    """The directives of one ``Cache-Control`` value; unknown ones are ignored."""

    __slots__ = (
        "max_age",
        "max_stale",
        "min_fresh",
        "must_revalidate",
        "no_cache",
        "no_store",
        "no_transform",
        "only_if_cached",
        "private",
        "proxy_revalidate",
        "public",
        "s_maxage",
        "stale_if_error",
    )

    def __init__(self) -> None:
        self.no_store = False
        self.no_cache = False
        self.private = False
        self.public = False
        self.must_revalidate = False
        self.proxy_revalidate = False
        self.no_transform = False
        self.only_if_cached = False
        self.max_age: float | None = None
        self.s_maxage: float | None = None
        self.max_stale: float | None = None
        self.min_fresh: float | None = None
        self.stale_if_error: float | None = None

    @classmethod
    def parse(cls, value: str | None) -> CacheControl:
        cc = cls()
        if not value:
            return cc
        for part in _split_directives(value):
            name, eq, arg = part.partition("=")
            name = name.strip().lower()
            arg = arg.strip()
            if name == "no-store":
                cc.no_store = True
            elif name == "no-cache":
                # ``no-cache="Set-Cookie"`` (field names) is treated as plain no-cache: stricter.
                cc.no_cache = True
            elif name == "private":
                cc.private = True
            elif name == "public":
                cc.public = True
            elif name == "must-revalidate":
                cc.must_revalidate = True
            elif name == "proxy-revalidate":
                cc.proxy_revalidate = True
            elif name == "no-transform":
                cc.no_transform = True
            elif name == "only-if-cached":
                cc.only_if_cached = True
            elif name == "max-age":
                cc.max_age = _delta_seconds(arg)
            elif name == "s-maxage":
                cc.s_maxage = _delta_seconds(arg)
            elif name == "max-stale":
                cc.max_stale = _delta_seconds(arg) if eq else MAX_LIFETIME
            elif name == "min-fresh":
                cc.min_fresh = _delta_seconds(arg)
            elif name == "stale-if-error":
                cc.stale_if_error = _delta_seconds(arg)
        return cc


def _split_directives(value: str) -> list[str]:
    """Split on commas outside quoted strings (``no-cache="a, b"`` is one directive)."""
    if '"' not in value:
        return value.split(",")
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _delta_seconds(arg: str) -> float | None:
    """RFC 9111 1.2.2: digits only; an invalid value is as if the directive carried 0
    (the stricter reading), a huge one is capped."""
    arg = arg.strip('"')
    if not arg.isdigit() or not arg.isascii():
        return 0.0
    return min(float(int(arg[:12])), MAX_LIFETIME)


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime) as epoch seconds, or None."""
    if not value:
        return None
    try:
        parts = email.utils.parsedate(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parts is None:
        return None
    try:
        return float(calendar.timegm(parts))
    except (OverflowError, ValueError):
        return None


# -- keys ---------------------------------------------------------------------------------------
def cache_key(host: bytes, target: bytes, tier: str | None = None, scheme: bytes = b"") -> bytes:
    """The primary key. HEAD and GET share it (only they are cached, so the method is not
    in it); the quality tier is, since the upstream was told the tier and may have answered
    differently. Host is case-insensitive; the target is taken as sent."""
    if tier:  # one join, not four concatenations (the same bytes: Redis keys stay as they were)
        return b"|".join((scheme, host.lower(), target, tier.encode("latin-1")))
    return b"|".join((scheme, host.lower(), target))


def vary_names(value: str | None) -> tuple[bytes, ...] | None:
    """The request header names a response varies on, lower case; None for ``Vary: *``."""
    if not value:
        return ()
    names: list[bytes] = []
    for token in value.split(","):
        token = token.strip().lower()
        if token == "*":
            return None
        if token:
            name = token.encode("latin-1")
            if name not in names:
                names.append(name)
    names.sort()
    return tuple(names)


def vary_values(names: tuple[bytes, ...], get_header: Callable[[str], str | None]) -> tuple[str | None, ...]:
    """The secondary key: the request's values of the Vary'd headers, whitespace-normalised
    (``gzip, br`` and ``gzip,br`` are the same); an absent header is None, not ""."""
    out: list[str | None] = []
    for name in names:
        value = get_header(name.decode("latin-1"))
        out.append(None if value is None else "".join(value.split()))
    return tuple(out)


# -- requests -----------------------------------------------------------------------------------
class RequestPlan:
    """What the cache may do for one request; the common plans are shared constants."""

    __slots__ = ("any_fresh", "explicit_only", "lookup", "max_age", "min_fresh", "only_if_cached", "revalidate",
                 "store")

    def __init__(
        self,
        lookup: bool,
        store: bool,
        revalidate: bool = False,
        explicit_only: bool = False,
        max_age: float | None = None,
        min_fresh: float | None = None,
        only_if_cached: bool = False,
    ) -> None:
        self.lookup = lookup  # a stored response may answer it
        self.store = store  # its response may be stored
        self.revalidate = revalidate  # a stored response needs validation first (client no-cache)
        # Cookie/Authorization: only responses that declared themselves shareable count.
        self.explicit_only = explicit_only
        self.max_age = max_age  # the client accepts nothing older
        self.min_fresh = min_fresh  # the client wants at least this much freshness left
        self.only_if_cached = only_if_cached  # a miss is answered 504, never forwarded
        # Any fresh entry satisfies it (``Entry.satisfies`` is then ``now < expires_at``):
        # lets the shell decide the usual hit without that call.
        self.any_fresh = not revalidate and max_age is None and min_fresh is None

    def __repr__(self) -> str:
        return (
            f"<RequestPlan lookup={self.lookup} store={self.store} revalidate={self.revalidate} "
            f"explicit_only={self.explicit_only}>"
        )


BYPASS = RequestPlan(False, False)
PLAIN_GET = RequestPlan(True, True)
PLAIN_HEAD = RequestPlan(True, False)  # answered from GET's entry; a HEAD response is not stored
PRIVATE_GET = RequestPlan(True, True, explicit_only=True)
PRIVATE_HEAD = RequestPlan(True, False, explicit_only=True)


def request_plan(
    method: bytes,
    cache_control: str | None = None,
    pragma: str | None = None,
    authorization: bool = False,
    cookie: bool = False,
    range_: bool = False,
    other_conditionals: bool = False,
) -> RequestPlan:
    """The plan for a request on a route with ``cache:``.

    Only GET and HEAD; not Range requests, nor If-Match/If-Unmodified-Since/If-Range ones
    (edge keeps whole representations and answers no preconditions but If-None-Match and
    If-Modified-Since).
    """
    if method == b"GET":
        head = False
    elif method == b"HEAD":
        head = True
    else:
        return BYPASS
    if range_ or other_conditionals:
        return BYPASS
    private = authorization or cookie
    if cache_control is None and pragma is None:
        if private:
            return PRIVATE_HEAD if head else PRIVATE_GET
        return PLAIN_HEAD if head else PLAIN_GET
    cc = CacheControl.parse(cache_control)
    # RFC 9111 5.4: Pragma: no-cache counts only when there is no Cache-Control.
    no_cache = cc.no_cache or (cache_control is None and pragma is not None and "no-cache" in pragma.lower())
    return RequestPlan(
        lookup=True,
        store=not head and not cc.no_store,
        revalidate=no_cache or cc.max_age == 0,
        explicit_only=private,
        max_age=cc.max_age,
        min_fresh=cc.min_fresh,
        only_if_cached=cc.only_if_cached,
    )


_REQUEST_NAMES = frozenset(
    {b"cache-control", b"pragma", b"authorization", b"cookie", b"range", b"if-match", b"if-unmodified-since",
     b"if-range"}
)


def request_plan_from_head(head) -> RequestPlan:
    """``request_plan`` over a ``RequestHead``: one pass over its header names."""
    names = head.names
    if _REQUEST_NAMES.isdisjoint(names):  # a plain GET or HEAD: one C-level pass
        method = head.method
        return PLAIN_GET if method == b"GET" else PLAIN_HEAD if method == b"HEAD" else BYPASS
    cache_control = pragma = None
    authorization = cookie = range_ = other = False
    for index, name in enumerate(names):
        if name not in _REQUEST_NAMES:
            continue
        if name == b"cache-control":
            value = head.lines[index][14:-2].strip().decode("latin-1")
            cache_control = value if cache_control is None else cache_control + ", " + value
        elif name == b"pragma":
            pragma = head.lines[index][7:-2].strip().decode("latin-1")
        elif name == b"authorization":
            authorization = True
        elif name == b"cookie":
            cookie = True
        elif name == b"range":
            range_ = True
        else:
            other = True
    return request_plan(head.method, cache_control, pragma, authorization, cookie, range_, other)


# -- responses ----------------------------------------------------------------------------------
class ResponsePlan:
    """How to store one response: its lifetime, age at arrival and validators."""

    __slots__ = ("etag", "explicit", "initial_age", "last_modified", "lifetime", "stale_if_error", "stale_ok", "vary")

    def __init__(
        self,
        lifetime: float,
        initial_age: float,
        etag: str | None,
        last_modified: str | None,
        vary: tuple[bytes, ...],
        stale_ok: bool,
        explicit: bool,
        stale_if_error: float | None = None,
    ) -> None:
        self.lifetime = lifetime  # freshness lifetime, seconds
        self.initial_age = initial_age  # corrected initial age (RFC 9111 4.2.3), seconds
        self.etag = etag
        self.last_modified = last_modified
        self.vary = vary  # lower-case request header names, sorted
        self.stale_ok = stale_ok  # may be served stale when the upstream is down
        self.explicit = explicit  # declared shareable (public / s-maxage): may answer Cookie requests
        self.stale_if_error = stale_if_error  # RFC 5861 bound on stale serving, if the origin gave one

    def __repr__(self) -> str:
        return f"<ResponsePlan lifetime={self.lifetime} age={self.initial_age} etag={self.etag} vary={self.vary}>"


def _headers(lines: list[bytes], names: list[bytes], wanted: frozenset[bytes]) -> dict[bytes, str]:
    """The wanted headers' values; repeated list-valued ones joined with ", "."""
    found: dict[bytes, str] = {}
    for index, name in enumerate(names):
        if name in wanted:
            value = lines[index][len(name) + 1 : -2].strip().decode("latin-1")
            found[name] = found[name] + ", " + value if name in found else value
    return found


_RESPONSE_NAMES = frozenset(
    {b"cache-control", b"expires", b"date", b"age", b"etag", b"last-modified", b"vary", b"set-cookie", b"pragma"}
)


def response_plan(
    request: RequestPlan,
    status: int,
    lines: list[bytes],
    names: list[bytes],
    default_ttl: float,
    wall: float,
    response_delay: float = 0.0,
) -> ResponsePlan | None:
    """The storage plan for a response to a GET, or None when it must not be stored.

    ``lines``/``names`` are the response's end-to-end header lines (as in ``ResponseHead``);
    ``default_ttl`` the route's ``cache.ttl``; ``wall`` the wall clock (epoch seconds) when
    the response head arrived, for Date/Expires; ``response_delay`` the seconds between
    sending the request and receiving the head (RFC 9111 4.2.3).
    """
    if not request.store or status < 200 or status in _NEVER_STORED:
        return None
    h = _headers(lines, names, _RESPONSE_NAMES)
    if b"set-cookie" in h:
        return None
    cc = CacheControl.parse(h.get(b"cache-control"))
    if cc.no_store or cc.private:
        return None
    explicit = cc.public or cc.s_maxage is not None
    if request.explicit_only and not explicit:
        return None
    vary = vary_names(h.get(b"vary"))
    if vary is None:
        return None  # Vary: * never matches a later request
    date = parse_http_date(h.get(b"date"))
    # Lifetime (RFC 9111 4.2.1): s-maxage, then max-age, then Expires - Date, then the route's.
    if cc.no_cache:
        lifetime = 0.0
    elif cc.s_maxage is not None:
        lifetime = cc.s_maxage
    elif cc.max_age is not None:
        lifetime = cc.max_age
    elif b"expires" in h:
        expires = parse_http_date(h[b"expires"])
        lifetime = 0.0 if expires is None else max(0.0, expires - (date if date is not None else wall))
    elif status in DEFAULT_CACHEABLE and b"pragma" not in h:
        lifetime = default_ttl
    else:
        return None  # no explicit freshness and not heuristically cacheable
    etag = h.get(b"etag")
    last_modified = h.get(b"last-modified")
    if lifetime <= 0 and etag is None and last_modified is None:
        return None  # born stale and cannot be revalidated: useless
    # Age (RFC 9111 4.2.3).
    apparent_age = max(0.0, wall - date) if date is not None else 0.0
    age_value = _delta_seconds(h[b"age"].split(",")[0].strip()) if b"age" in h else 0.0
    corrected_age = (age_value or 0.0) + max(0.0, response_delay)
    initial_age = max(apparent_age, corrected_age)
    stale_ok = not (cc.must_revalidate or cc.proxy_revalidate or cc.no_cache)
    return ResponsePlan(
        min(lifetime, MAX_LIFETIME), initial_age, etag, last_modified, vary, stale_ok, explicit, cc.stale_if_error
    )


# -- revalidation ----------------------------------------------------------------------------------
def conditional_lines(etag: str | None, last_modified: str | None) -> list[bytes]:
    """Header lines that revalidate a stored response (RFC 9111 4.3.1)."""
    out: list[bytes] = []
    if etag is not None:
        out.append(b"If-None-Match: " + etag.encode("latin-1") + b"\r\n")
    if last_modified is not None:
        out.append(b"If-Modified-Since: " + last_modified.encode("latin-1") + b"\r\n")
    return out


def strip_conditionals(lines: list[bytes], names: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The request lines without the client's If-None-Match/If-Modified-Since.

    When edge revalidates its own copy, the upstream must judge edge's validators: a 304
    to the client's validators would leave edge nothing to merge into.
    """
    keep = [i for i, n in enumerate(names) if n not in _CONDITIONALS]
    return [lines[i] for i in keep], [names[i] for i in keep]


def revalidation_headers(
    lines: list[bytes], names: list[bytes], etag: str | None, last_modified: str | None
) -> tuple[list[bytes], list[bytes]]:
    """The request's header lines for revalidating a stored copy upstream: the client's
    If-None-Match/If-Modified-Since replaced by the stored response's validators."""
    out_lines, out_names = strip_conditionals(lines, names)
    if etag is not None:
        out_lines.append(b"If-None-Match: " + etag.encode("latin-1") + b"\r\n")
        out_names.append(b"if-none-match")
    if last_modified is not None:
        out_lines.append(b"If-Modified-Since: " + last_modified.encode("latin-1") + b"\r\n")
        out_names.append(b"if-modified-since")
    return out_lines, out_names


def merge_304(
    stored_lines: list[bytes], stored_names: list[bytes], lines: list[bytes], names: list[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """A stored response's header lines updated by a 304 (RFC 9111 3.2 / 4.3.4).

    Each header in the 304 replaces the stored ones of that name; the body-describing
    fields stay as stored.
    """
    updates = {n for n in names if n not in _NOT_UPDATED}
    if not updates:
        return stored_lines, stored_names
    out_lines = [line for line, name in zip(stored_lines, stored_names) if name not in updates]
    out_names = [name for name in stored_names if name not in updates]
    for line, name in zip(lines, names):
        if name in updates:
            out_lines.append(line)
            out_names.append(name)
    return out_lines, out_names


# An entity-tag may contain commas, so a list of them is matched, not split.
_ETAGS = re.compile(r'(?:W/)?"[^"]*"')


def _etag_opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(etag: str | None, last_modified: str | None, if_none_match: str | None,
                 if_modified_since: str | None) -> bool:
    """Whether the client's conditional GET is satisfied by the stored validators, so the
    cache answers 304 itself (RFC 9110 13.1.2, 13.1.3: weak comparison; If-Modified-Since
    only when there is no If-None-Match)."""
    if if_none_match is not None:
        if etag is None:
            return False
        if if_none_match.strip() == "*":
            return True
        mine = _etag_opaque(etag)
        return any(_etag_opaque(t) == mine for t in _ETAGS.findall(if_none_match))
    if if_modified_since is not None and last_modified is not None:
        since = parse_http_date(if_modified_since)
        modified = parse_http_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False
