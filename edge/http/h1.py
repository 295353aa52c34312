"""HTTP/1.1 message heads over httptools (llhttp), strict: bytes in, heads and body events out.

llhttp with every leniency off (httptools' default) already rejects both
Content-Length and Transfer-Encoding, repeated Content-Length, bare LF, obs-fold,
bad chunk sizes and control characters. On top of it this module enforces what
llhttp leaves to the application: exactly one valid Host, Transfer-Encoding exactly
``chunked`` (other codings 501, garbage 400, any coding on HTTP/1.0 400), HTTP/1.0
or 1.1 only, origin-form targets, and ``limits.max_header_size`` (431).

``RequestReader`` and ``ResponseReader`` are sans-IO: the caller feeds bytes and
receives calls on a *sink*; problems raise ``ProtocolError(status, reason)``.
Header lines that go on are kept pre-encoded (``b"Name: value\\r\\n"``) with
hop-by-hop and forwarding headers already taken out, so the proxy only joins bytes.
"""

from __future__ import annotations

import re
from typing import Protocol

import httptools

__all__ = [
    "HOP_BY_HOP",
    "ProtocolError",
    "RequestHead",
    "RequestReader",
    "RequestSink",
    "ResponseHead",
    "ResponseReader",
    "ResponseSink",
]

# RFC 9110 7.6.1 plus the ones RFC 2616 and practice add; never forwarded as they are.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Request headers the proxy sets itself (client values believed only from trusted proxies).
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})

_LENGTH_NAMES = frozenset({b"Content-Length", b"content-length"})
_HOST_NAMES = frozenset({b"Host", b"host"})
_CONNECTION_NAMES = frozenset({b"Connection", b"connection"})
# Connection tokens that name no other header (nothing extra to remove).
_CONNECTION_PLAIN = frozenset({b"close", b"keep-alive", b"upgrade"})


def _plain_names(names: str) -> frozenset[bytes]:
    """Exact-case header names that are forwarded as they are (as sent, and all lower case).

    The hot path checks a name against this set first: no lower(), no special-casing, no
    per-header size bookkeeping for responses; anything else takes the full path."""
    found = set()
    for name in names.split():
        found.add(name.encode())
        found.add(name.lower().encode())
    return frozenset(found)


_COMMON = """Accept-Ranges Cache-Control Content-Type Content-Encoding Content-Language Content-Disposition
    Content-Range Content-Location Date ETag Etag Expires Last-Modified Pragma Vary Via Link Age Server Location
    Set-Cookie Cookie Authorization Range If-Range If-None-Match If-Modified-Since If-Match If-Unmodified-Since"""
_PLAIN_REQUEST = _plain_names(_COMMON + """ User-Agent Accept Accept-Language Accept-Encoding Referer Origin DNT
    Upgrade-Insecure-Requests Sec-Fetch-Site Sec-Fetch-Mode Sec-Fetch-Dest Sec-Fetch-User Sec-CH-UA Sec-CH-UA-Mobile
    Sec-CH-UA-Platform Priority X-Requested-With Sec-WebSocket-Key Sec-WebSocket-Version Sec-WebSocket-Extensions
    Sec-WebSocket-Protocol""")


def is_common_request_header(lname: bytes) -> bool:
    """Whether the request parser files ``lname`` without marking the head ``rare``."""
    return lname in _PLAIN_REQUEST or lname in _LENGTH_NAMES or lname == b"host" or lname in HOP_BY_HOP or (
        lname in FORWARDING) or lname == b"expect"


_PLAIN_RESPONSE = _plain_names(_COMMON + """ X-Content-Type-Options X-Frame-Options X-XSS-Protection
    Strict-Transport-Security Content-Security-Policy Referrer-Policy Permissions-Policy Access-Control-Allow-Origin
    Access-Control-Allow-Credentials Access-Control-Expose-Headers X-Powered-By Alt-Svc WWW-Authenticate Retry-After
    X-Request-Id Sec-WebSocket-Accept Sec-WebSocket-Protocol Sec-WebSocket-Extensions""")

# A read's body part from this size on goes to a ``views`` sink as a memoryview. Measured on
# this machine (ResponseReader.feed of a whole response, caches warm): view / bytes path
# 6.9 / 6.1 us at 16 KiB, 6.7 / 6.1 us at 32 KiB, 6.6 / 7.1 us at 64 KiB (the detour: a fresh
# parser, two views, one more call; httptools' on_body copy grows with the size).
_VIEW_FROM = 48 * 1024
_KNOWN_HEAD_SIZE = 8192  # known heads (see RequestReader, _KNOWN_HEADS) are at most this; larger ones parse each time

_KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"deflate", b"compress", b"x-gzip", b"x-compress", b"identity"})
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# reg-name / IPv4 / [IPv6], optional :port (RFC 3986 authority without userinfo)
_HOST = re.compile(rb"^(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


class ProtocolError(Exception):
    """Bad input from a peer: answer ``status`` (when a client sent it) and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class RequestHead:
    """One parsed request head, ready to be re-emitted upstream."""

    __slots__ = (
        "_names",
        "chunked",
        "connection_tokens",
        "content_length",
        "expect_continue",
        "forwarded",
        "host",
        "keep_alive",
        "lines",
        "method",
        "rare",
        "target",
        "upgrade",
        "version",
        "x_forwarded_for",
        "x_forwarded_host",
        "x_forwarded_proto",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = b"1.1"
        self.host: bytes | None = None
        self.lines: list[bytes] = []  # end-to-end header lines, CRLF included
        self._names: list[bytes] | None = None  # see ``names``
        # a forwarded header outside the common set arrived (client hints, a client-sent
        # tier header...): without one, code looking for such headers can skip the scan
        self.rare = False
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.connection_tokens: list[bytes] | None = None
        self.x_forwarded_for: bytes | None = None
        self.x_forwarded_proto: bytes | None = None
        self.x_forwarded_host: bytes | None = None
        self.forwarded: bytes | None = None

    names = property(
        lambda self: _names_of(self),
        lambda self, value: setattr(self, "_names", value),
        doc="The lower-case names of ``lines``, parallel to them (made on first use, then kept).",
    )

    def copy(self) -> RequestHead:
        """A head of its own with the same fields: the proxy adds lines and names in place."""
        other = RequestHead.__new__(RequestHead)
        other.method = self.method
        other.target = self.target
        other.version = self.version
        other.host = self.host
        other.lines = self.lines.copy()
        names = self._names
        other._names = None if names is None else names.copy()
        other.rare = self.rare
        other.content_length = self.content_length
        other.chunked = self.chunked
        other.keep_alive = self.keep_alive
        other.upgrade = self.upgrade
        other.expect_continue = self.expect_continue
        other.connection_tokens = self.connection_tokens  # replaced, never changed in place
        other.x_forwarded_for = self.x_forwarded_for
        other.x_forwarded_proto = self.x_forwarded_proto
        other.x_forwarded_host = self.x_forwarded_host
        other.forwarded = self.forwarded
        return other

    def header(self, lname: str) -> str | None:
        """The first end-to-end header named ``lname`` (lower case), decoded; None if absent."""
        wanted = lname.encode("latin-1")
        for index, name in enumerate(self.names):
            if name == wanted:
                return self.lines[index][len(name) + 1 : -2].strip().decode("latin-1")
        return None

    @property
    def path(self) -> bytes:
        q = self.target.find(b"?")
        return self.target if q < 0 else self.target[:q]

    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method.decode()} {self.target!r} HTTP/{self.version.decode()}>"


def _names_of(head: RequestHead | ResponseHead) -> list[bytes]:
    """``head.names`` on first use: the parsers keep only the lines (a name never contains ':').
    ``partition`` is the cheapest split here (1.0 us for 6 lines, ``index`` + slice 1.7 us,
    a regex over the joined lines 1.6 us)."""
    names = head._names
    if names is None:
        names = head._names = [line.partition(b":")[0].lower() for line in head.lines]
    return names


class RequestSink(Protocol):
    def request_head(self, head: RequestHead) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_end(self) -> None: ...


def _check_transfer_encoding(value: bytes) -> None:
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings == [b"chunked"]:
        return
    if all(_TOKEN.match(c) for c in codings) and all(c in _KNOWN_CODINGS for c in codings):
        raise ProtocolError(501, "transfer coding not implemented")
    raise ProtocolError(400, "invalid Transfer-Encoding")


class RequestReader:
    """Feeds request bytes to httptools and turns its callbacks into checked heads."""

    __slots__ = ("_at_start", "_head", "_head_size", "_host_ok", "_in_head", "_known", "_known_head", "_known_limit",
                 "_learn", "_lines", "_max_head", "_parser", "_raw", "_sink", "_url", "on_body", "on_message_complete")

    def __init__(self, sink: RequestSink, max_header_size: int = 32 * 1024) -> None:
        self._sink = sink
        self._max_head = max_header_size
        # httptools calls these directly: the sink's own methods, no hop through a method here
        self.on_body = sink.request_body
        self.on_message_complete = sink.request_end
        self._parser = httptools.HttpRequestParser(self)
        self._head: RequestHead | None = None
        self._url = b""
        self._head_size = 0  # exact: URL and header lines as llhttp reports them
        self._raw = 0  # bytes fed while a head that began in an earlier read is still open
        self._in_head = False
        self._lines: list[bytes] = []  # the open head's lines
        self._host_ok: bytes | None = None  # the last Host value that passed the grammar check
        # A keep-alive client repeats its request head (a poller, a health check, a benchmark; a
        # browser between pages less often): the last bodiless head's bytes, blank line and all,
        # and what they parsed to. The same bytes at a message start parse the same (llhttp is
        # strict: the first CRLFCRLF ends a head, and nothing else of the reader changes the
        # answer), so they skip the parser and its callbacks. Per connection: nothing is shared.
        self._at_start = True  # the parser waits for the first byte of a message
        self._known: bytes | None = None
        self._known_head: RequestHead | None = None
        self._known_limit = min(max_header_size, _KNOWN_HEAD_SIZE + 4)
        self._learn: bytes | None = None  # this feed's first head, when it may become _known

    def feed(self, data: bytes) -> int:
        """Parse ``data``; return -1, or the offset of tunnel bytes after an Upgrade/CONNECT head.

        Raises ProtocolError for anything malformed or too large.
        """
        start = 0
        learn = None
        if self._at_start:
            known = self._known
            if known is not None and data.startswith(known):
                size = len(known)
                sink = self._sink
                while True:  # pipelined repeats too
                    sink.request_head(self._known_head.copy())  # type: ignore[union-attr]
                    self.on_message_complete()
                    start += size
                    if start == len(data):
                        return -1
                    if not data.startswith(known, start):
                        break
                data = data[start:]
            first = data[0] if data else 13
            if first != 13 and first != 10:  # llhttp skips CR and LF before a message: the head starts here
                end = data.find(b"\r\n\r\n", 0, self._known_limit)
                if end > 0:
                    learn = data[: end + 4]
        self._learn = learn  # only a head that starts this read, at a message start, may become known
        if not start:
            return self._feed(data)
        at = self._feed(data)
        return at if at < 0 else start + at

    def _feed(self, data: bytes) -> int:
        if self._in_head:
            # all of this read belongs to the open head (llhttp buffers a long header value
            # before calling back, so this is what bounds memory for an endless head)
            self._raw += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._at_start = False  # what follows is the tunnel's
            return int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(400, _reason(exc)) from None
        if self._in_head and self._raw > self._max_head + 4:
            raise ProtocolError(431, "request header fields too large")
        return -1

    @property
    def in_head(self) -> bool:
        return self._in_head

    def close(self) -> None:
        """The connection is gone: drop the parser and the sink (they and we refer to each other)."""
        self._parser = self._sink = self.on_body = self.on_message_complete = None  # type: ignore[assignment]

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._at_start = False
        self._head = head = RequestHead()
        self._lines = head.lines
        self._url = b""
        self._in_head = True
        self._head_size = 0
        self._raw = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_head:
            raise ProtocolError(431, "request target too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if name in _PLAIN_REQUEST and self._in_head:  # the common case: forwarded as it is
            size = self._head_size + len(name) + len(value) + 4
            if size > self._max_head:
                raise ProtocolError(431, "request header fields too large")
            self._head_size = size
            self._lines.append(name + b": " + value + b"\r\n")
            return
        if name in _HOST_NAMES and self._in_head:  # every request has one: as _header does, without lower()
            head = self._head
            size = self._head_size + len(name) + len(value) + 4
            if size > self._max_head:
                raise ProtocolError(431, "request header fields too large")
            if head.host is not None:  # type: ignore[union-attr]
                raise ProtocolError(400, "more than one Host header")
            head.host = value  # type: ignore[union-attr]
            self._head_size = size
            return
        self._header(name, value)

    def _header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked body's trailer: never a header of the request, never forwarded
        head = self._head
        assert head is not None
        lname = name.lower()
        size = len(name) + len(value) + 4
        if self._head_size + size > self._max_head:
            raise ProtocolError(431, "request header fields too large")
        if lname == b"host":
            if head.host is not None:
                raise ProtocolError(400, "more than one Host header")
            head.host = value
        elif lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                if head.chunked:
                    raise ProtocolError(400, "more than one Transfer-Encoding header")
                _check_transfer_encoding(value)
                head.chunked = True
            elif lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",") if t.strip()]
                head.connection_tokens = (head.connection_tokens or []) + tokens
            elif lname == b"upgrade":
                head.upgrade = value
            # the rest (te, trailer, keep-alive, proxy-*) are dropped
        elif lname in FORWARDING:
            if lname == b"x-forwarded-for":
                head.x_forwarded_for = value if head.x_forwarded_for is None else head.x_forwarded_for + b", " + value
            elif lname == b"forwarded":
                head.forwarded = value if head.forwarded is None else head.forwarded + b", " + value
            elif lname == b"x-forwarded-proto":
                head.x_forwarded_proto = value
            else:
                head.x_forwarded_host = value
        elif lname == b"content-length":
            head.content_length = int(value)  # llhttp checked digits and repeats
        elif lname == b"expect":
            if value.strip().lower() == b"100-continue":
                head.expect_continue = True
            else:
                raise ProtocolError(417, "unsupported expectation")
        else:
            head.lines.append(name + b": " + value + b"\r\n")
            head.rare = True
        self._head_size += size

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        self._in_head = False
        if len(self._url) + self._head_size > self._max_head:
            raise ProtocolError(431, "request header fields too large")
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            head.version = b"1.1"
        elif version == "1.0":
            head.version = b"1.0"
            if head.chunked:
                raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
        else:
            raise ProtocolError(505, "HTTP version not supported")
        head.method = parser.get_method()
        if head.method == b"CONNECT":
            raise ProtocolError(405, "CONNECT is not supported")
        url = self._url
        if not url.startswith(b"/") and not (url == b"*" and head.method == b"OPTIONS"):
            raise ProtocolError(400, "only origin-form request targets are accepted")
        # a dot-segment follows a "/" (find, not ``in``: bytes.__contains__ first tries, and fails,
        # to read its argument as an int: an exception raised and cleared, ~0.3 us)
        if (url.find(b"/.") >= 0 or url.find(b"%") >= 0) and has_dot_segment(url):
            raise ProtocolError(400, "dot-segments in the request path")
        head.target = url
        host = head.host
        if host is None:
            raise ProtocolError(400, "missing Host header")
        if host != self._host_ok:  # keep-alive clients repeat their Host: check its grammar once
            if not _HOST.match(host):
                raise ProtocolError(400, "invalid Host header")
            self._host_ok = host
        head.keep_alive = parser.should_keep_alive()
        tokens = head.connection_tokens
        if tokens and not _CONNECTION_PLAIN.issuperset(tokens):
            _drop_connection_listed(head, tokens)
        if head.upgrade is not None and not (tokens and b"upgrade" in tokens):
            head.upgrade = None  # Upgrade without Connection: upgrade is not an upgrade
        if not head.chunked and not head.content_length and head.upgrade is None:
            # no body: llhttp ends the message here, so the next byte starts one (see __init__)
            self._at_start = head.keep_alive  # after a last request llhttp refuses more bytes
            learn = self._learn
            if learn is not None:
                self._learn = None
                if head.keep_alive and not head.expect_continue:
                    self._known = learn
                    self._known_head = head.copy()  # before the sink changes its lines
        else:
            self._learn = None
        self._sink.request_head(head)



_ENCODED_DOT = re.compile(rb"%2e", re.IGNORECASE)


def has_dot_segment(target: bytes) -> bool:
    """``/a/../b``, ``/./``, ``/%2e%2e/``: paths a route prefix must not be fooled by.

    Browsers resolve these before sending, so only tools and attackers send them; an
    upstream would resolve them after edge matched the route (Traefik sanitises too).
    """
    path = target.split(b"?", 1)[0]
    percent = path.find(b"%") >= 0
    if not percent and path.find(b".") < 0:
        return False
    if percent:
        path = _ENCODED_DOT.sub(b".", path)
    return any(segment in (b".", b"..") for segment in path.split(b"/"))


def _drop_connection_listed(head: RequestHead | ResponseHead, tokens: list[bytes]) -> None:
    """Remove headers named in Connection (RFC 9110 7.6.1), besides the standard hop-by-hop."""
    extra = [t for t in tokens if t not in _CONNECTION_PLAIN]
    if not extra:
        return
    keep = [i for i, n in enumerate(head.names) if n not in extra]
    head.lines = [head.lines[i] for i in keep]
    head.names = [head.names[i] for i in keep]


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\r", " ").replace("\n", " ")[:120]


# -- responses from upstreams -------------------------------------------------------------
class ResponseHead:
    """One parsed upstream response head."""

    __slots__ = ("_names", "chunked", "connection_tokens", "content_length", "keep_alive", "lines", "reason", "status",
                 "upgrade")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.lines: list[bytes] = []
        self._names: list[bytes] | None = None  # see ``names``
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.connection_tokens: list[bytes] | None = None
        self.upgrade: bytes | None = None

    names = RequestHead.names

    def copy(self) -> ResponseHead:
        """A head of its own with the same fields: sinks add and replace lines in place."""
        other = ResponseHead.__new__(ResponseHead)
        other.status = self.status
        other.reason = self.reason
        other.lines = self.lines.copy()
        names = self._names
        other._names = None if names is None else names.copy()
        other.content_length = self.content_length
        other.chunked = self.chunked
        other.keep_alive = self.keep_alive
        other.connection_tokens = self.connection_tokens  # replaced, never changed in place
        other.upgrade = self.upgrade
        return other


# Response heads already parsed, by their bytes up to the blank line. An upstream answers the
# same resource with the same head until its Date ticks, so most heads are seen before: a head
# found here skips the parser and its nine callbacks (about a fifth of the Python a proxied
# request runs). What a head parses to depends only on its bytes (llhttp is strict: the first
# CRLFCRLF ends it) and on two things of the reader, checked before a lookup: the size limit,
# and a HEAD request's bodiless answer (never looked up). Only heads whose body is exactly
# Content-Length bytes are kept (not 1xx, 204, 304), on a connection that stays open: the parser
# has nothing to do after those.
_KNOWN_HEADS: dict[bytes, tuple[ResponseHead, int]] = {}  # head bytes -> (parse, size the parser counted)
_KNOWN_HEADS_MAX = 256


class ResponseSink(Protocol):
    def response_head(self, head: ResponseHead) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...


class _HeadOnly(Exception):
    """Stops httptools after the head of a response that has no body (HEAD requests)."""


class ResponseReader:
    """Parses upstream responses; the caller says when a response has no body (HEAD)."""

    __slots__ = ("_at_start", "_begins", "_body_length", "_head", "_head_size", "_in_head", "_known_limit", "_learn",
                 "_left", "_lines", "_max_head", "_parser", "_raw", "_sink", "clean", "ended", "expect_no_body",
                 "on_body", "trailing", "views")

    def __init__(self, sink: ResponseSink, max_header_size: int = 64 * 1024) -> None:
        self._sink = sink
        self._max_head = max_header_size
        self.on_body = sink.response_body  # httptools calls the sink directly
        self._parser = httptools.HttpResponseParser(self)
        self._head: ResponseHead | None = None
        self._lines: list[bytes] = []  # the open head's forwarded lines
        self._head_size = 0  # bytes of the open head's headers that are not in _lines
        self.expect_no_body = False  # set for HEAD requests: llhttp cannot be told otherwise
        self.clean = True  # False once the byte stream can no longer be trusted for reuse
        self._in_head = False
        self._raw = 0
        self.ended = False  # a final response completed during the current feed
        self.trailing = False  # ... and bytes of another message followed it in that feed
        # Body pass-through: once a Content-Length body is known to continue past the read
        # that carried its head, the following reads are counted down and handed to the sink
        # as they are (no parser pass, no copy, no callback per chunk): _left bytes to go.
        self._left = 0
        self._body_length = -1  # Content-Length of a head completed during this feed
        self._begins = 0  # messages begun during this feed
        # The sink takes memoryview body chunks (slices of the read's bytes, never of a buffer
        # that is reused): then a large body part of the read that carries the head goes to it
        # uncopied too. Set per lease by a sink that only writes or joins its chunks.
        self.views = False
        self._at_start = True  # the parser waits for the first byte of a message
        self._known_limit = min(max_header_size, _KNOWN_HEAD_SIZE + 4)
        self._learn: bytes | None = None  # this feed's head bytes, when its head may join _KNOWN_HEADS

    def feed(self, data: bytes) -> int:
        """Parse ``data``; return -1, or the offset of tunnel bytes after a 101 head.

        Raises ProtocolError(502, ...) for a malformed response.
        """
        left = self._left
        if left:
            return self._pass_body(data, left)
        self.ended = self.trailing = False
        learn = None
        if self._at_start and not self.expect_no_body and data.startswith(b"HTTP/1."):
            end = data.find(b"\r\n\r\n", 0, self._known_limit)  # a head within the limits, blank line and all
            if end > 0:
                learn = data[:end]
                known = _KNOWN_HEADS.get(learn)
                if known is not None and known[1] <= self._max_head:  # the parser counts a little more than the wire
                    self._learn = None
                    return self._known(known[0], data, end + 4)
        self._learn = learn
        return self._parse(data)

    def _known(self, known: ResponseHead, data: bytes, start: int) -> int:
        """A head parsed before, at the start of ``data``: its Content-Length body follows."""
        self._head = head = known.copy()
        length: int = known.content_length  # type: ignore[assignment]  # the wire's: gzip changes the head's
        sink = self._sink
        sink.response_head(head)
        size = len(data) - start
        if size < length:
            self._left = length - size  # the parser stays at a message start: _pass_body knows
            if size:
                sink.response_body(memoryview(data)[start:] if self.views and size >= _VIEW_FROM else data[start:])
            return -1
        if length:
            sink.response_body(
                memoryview(data)[start : start + length] if self.views and length >= _VIEW_FROM
                else data[start : start + length])
        self.ended = True
        sink.response_end()
        rest = start + length
        if rest == len(data):
            return -1
        at = self._parse(data[rest:])  # ``ended`` stays: a message starting there is trailing
        return at if at < 0 else rest + at

    def _parse(self, data: bytes) -> int:
        self._begins = 0
        self._body_length = -1
        if self._in_head:
            self._raw += len(data)
            if self._raw > self._max_head:
                raise ProtocolError(502, "upstream response head too large")
        body = -1  # where the body begins in a read that starts with a head and carries much body
        if self.views and len(data) > _VIEW_FROM and not self.expect_no_body and data.startswith(b"HTTP/1."):
            end = data.find(b"\r\n\r\n", 0, self._max_head + 4)
            if end >= 0 and len(data) - end - 4 >= _VIEW_FROM:
                body = end + 4
        base = 0  # where in ``data`` the bytes last given to the parser begin (a 101's offset counts from there)
        try:
            if body < 0:
                self._parser.feed_data(data)
            else:
                # the head alone first: if it announces a Content-Length body, its bytes in this
                # read go to the sink as a view (httptools' on_body would copy them)
                view = memoryview(data)
                self._parser.feed_data(view[:body])
                length = self._body_length
                if length > 0 and not self.ended and self._begins == 1:
                    self._body_length = -1
                    at = self._pass_body(view[body:], length)
                    return at if at < 0 else body + at
                base = body  # a 1xx head came first: what follows it is parsed as one read would be
                self._parser.feed_data(view[body:])
        except httptools.HttpParserUpgrade as exc:
            return base + int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _HeadOnly):
                # llhttp would read a body next; start a fresh parser for the next response.
                self._parser = httptools.HttpResponseParser(self)
                self._at_start = True
                self._in_head = False
                if not data.endswith(b"\r\n\r\n"):
                    self.clean = False  # bytes after a bodiless head: never reuse this connection
                self.ended = True
                self._sink.response_end()
                return -1
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(502, "malformed upstream response: " + _reason(exc)) from None
        if self._in_head and self._head_size + sum(map(len, self._lines)) > self._max_head:
            raise ProtocolError(502, "upstream response head too large")  # a head still open after this read
        length = self._body_length
        if length > 0:
            self._body_length = -1
            if not self.ended and self._begins == 1 and data.startswith(b"HTTP/1."):
                # the read began with this head (strict CRLF framing: its first blank line ends it)
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    left = length - (len(data) - end - 4)
                    if left > 0:
                        self._left = left
        return -1

    def _pass_body(self, data: bytes | memoryview, left: int) -> int:
        """The rest of a Content-Length body, straight to the sink; what follows it is parsed."""
        self.ended = self.trailing = False
        size = len(data)
        if size < left:
            self._left = left - size
            self._sink.response_body(data)
            return -1
        self._left = 0
        self._sink.response_body(data if size == left else data[:left])
        if not self._at_start:
            # the parser stopped mid-body: a fresh one reads whatever comes after this response
            self._parser = httptools.HttpResponseParser(self)
            self._at_start = True
        self.ended = True
        self._sink.response_end()
        if size == left:
            return -1
        # ``ended`` stays: a message starting there is trailing (bytes: _parse looks for a head)
        at = self._parse(bytes(data[left:]))
        return at if at < 0 else left + at  # offsets count from the start of ``data``

    def on_message_begin(self) -> None:
        self._begins += 1
        self._at_start = False
        if self.ended:
            self.trailing = True  # another message started right behind a complete response
        self._head = head = ResponseHead()
        self._lines = head.lines
        self._head_size = 0
        self._raw = 0
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        head = self._head
        assert head is not None
        head.reason += reason
        if len(head.reason) > 256:
            raise ProtocolError(502, "upstream reason phrase too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if name in _PLAIN_RESPONSE and self._in_head:  # the common case: forwarded as it is
            self._lines.append(name + b": " + value + b"\r\n")  # size: see on_headers_complete
        elif name in _LENGTH_NAMES and self._in_head:  # the next most common (llhttp checked its digits)
            self._head_size += len(name) + len(value) + 4
            self._head.content_length = int(value)  # type: ignore[union-attr]
        elif value == b"keep-alive" and name in _CONNECTION_NAMES and self._in_head:  # as _header files it
            head = self._head
            self._head_size += len(name) + 14
            tokens = head.connection_tokens  # type: ignore[union-attr]
            head.connection_tokens = [b"keep-alive"] if tokens is None else [*tokens, b"keep-alive"]  # type: ignore[union-attr]
        else:
            self._header(name, value)

    def _header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers of a chunked response are not forwarded
        head = self._head
        assert head is not None
        lname = name.lower()
        if lname in HOP_BY_HOP:
            self._head_size += len(name) + len(value) + 4
            if lname == b"transfer-encoding":
                head.chunked = value.strip().lower().endswith(b"chunked")
            elif lname == b"connection":
                lvalue = value.lower()
                if lvalue == b"keep-alive" or lvalue == b"close":
                    tokens = [lvalue]
                else:
                    tokens = [t.strip().lower() for t in value.split(b",") if t.strip()]
                head.connection_tokens = (head.connection_tokens or []) + tokens
            elif lname == b"upgrade":
                head.upgrade = value
        elif lname == b"content-length":
            self._head_size += len(name) + len(value) + 4
            head.content_length = int(value)
        else:
            self._lines.append(name + b": " + value + b"\r\n")
            return
        if self._head_size > self._max_head:
            raise ProtocolError(502, "upstream response head too large")

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        self._in_head = False
        # forwarded lines are counted here, all at once (each is len(name) + len(value) + 4)
        size = self._head_size + sum(map(len, self._lines))
        if size > self._max_head:
            raise ProtocolError(502, "upstream response head too large")
        parser = self._parser
        head.status = parser.get_status_code()
        head.keep_alive = parser.should_keep_alive()
        tokens = head.connection_tokens
        if tokens and not _CONNECTION_PLAIN.issuperset(tokens):
            _drop_connection_listed(head, tokens)
        learn = self._learn
        if learn is not None:
            self._learn = None
            # the feed began with this head, so ``learn`` is all of it (see _KNOWN_HEADS)
            status = head.status  # 1xx, 204 and 304 have no body, whatever their Content-Length says
            if (self._begins == 1 and status >= 200 and status != 204 and status != 304
                    and head.content_length is not None and not head.chunked and head.upgrade is None
                    and head.keep_alive):  # after a last response llhttp refuses more bytes: the parser must see them
                if len(_KNOWN_HEADS) >= _KNOWN_HEADS_MAX:
                    _KNOWN_HEADS.clear()
                _KNOWN_HEADS[learn] = (head.copy(), size)  # before the sink changes its lines
        self._sink.response_head(head)
        if self.expect_no_body and head.status >= 200:
            raise _HeadOnly()
        length = head.content_length
        if length and not head.chunked and head.status >= 200:
            self._body_length = length

    def on_message_complete(self) -> None:
        head = self._head
        if head is not None and head.status >= 200:
            self.ended = True
        self._at_start = head is None or head.keep_alive  # after a last response llhttp refuses more bytes
        self._sink.response_end()
