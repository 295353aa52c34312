"""The HTTP/1.1 data path: one protocol object per client connection and per upstream connection.

Callbacks all the way (no task or future per request): bytes from the client go
through ``RequestReader`` into ``request_head/body/end``; the head is routed, an
upstream connection is leased from the pool, and the head and body are written
to it. The upstream's bytes go through ``ResponseReader`` into
``response_head/body/end`` here, which write to the client. Writes produced while
handling one read are coalesced into one ``writelines``. Backpressure: a full write
buffer on one side pauses reading on the other.

Pipelined requests queue behind the active one and are answered in order. Upgrade
requests (WebSocket) become a byte tunnel after the upstream's 101. Every wait has a
deadline that the server's sweeper checks (``deadline``/``on_timeout``), so a
request costs no timer handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from edge.cache.fallback import SERVE_STALE, USE_SERVICE, fallback_for
from edge.http import proxyproto
from edge.http.forwarding import forwarding_lines, real_client_ip
from edge.http.h1 import ProtocolError, RequestHead, RequestReader, ResponseHead, ResponseReader
from edge.ratelimit import ALLOWED
from edge.route import normalize_host
from edge.serve.features import Features, answer_cached, tcp_rtt, tier_features, tier_memo, unacked_bytes

if TYPE_CHECKING:
    from edge.balance import UpstreamState
    from edge.serve.pool import UpstreamPool
    from edge.serve.runtime import RouteRuntime, Runtime, ServiceRuntime
    from edge.serve.server import Server

__all__ = ["ClientConnection", "UpstreamConnection", "error_response"]

log = logging.getLogger("edge.serve")

_REASONS = {
    308: "Permanent Redirect",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ACME_PREFIX = b"/.well-known/acme-challenge/"
_RETAIN_LIMIT = 64 * 1024  # request bodies up to this are kept for the one retry on a stale connection
_PRE_BUFFER_LIMIT = 256 * 1024  # body buffered while the upstream connects; beyond it, stop reading
_PIPELINE_LIMIT = 16  # queued pipelined requests before we stop reading the client
_TLS_RECORD = 16384  # TLS plaintext record limit (RFC 8446 5.1): what one write may join
_PIPELINE_MAX = 128  # parsed from reads already in hand beyond that: the client is flooding us
_MEASURE_FROM = 65536  # response bytes below which a drain says nothing about the link
_DRAIN_CHECK = 0.2  # seconds between looks at a large response's delivery (quality routes only)
_DRAIN_GIVE_UP = 30.0

# deadline kinds
_NONE, _HEAD, _IDLE, _UPSTREAM, _POOL, _BODY, _STREAM, _TUNNEL = range(8)
_TUNNEL_IDLE = 3600.0  # a WebSocket silent this long (no byte either way) is closed (HAProxy: timeout tunnel)
_INF = float("inf")
_clock = time.perf_counter  # durations: uvloop's loop.time() has millisecond resolution
# read-pause reasons (bit mask)
_BY_UPSTREAM, _BY_BUFFER, _BY_ERROR, _BY_WRITE = 1, 2, 4, 8


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_LENGTH_LINES: dict[int, bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\n", made once per (status, reason) seen."""
    found = _STATUS_LINES.get((status, reason))
    if found is None:
        found = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 512:  # upstreams choose reasons: keep the cache bounded
            _STATUS_LINES[(status, reason)] = found
    return found


def _content_length(length: int) -> bytes:
    """The Content-Length line; the few sizes a site serves most are made once."""
    found = _LENGTH_LINES.get(length)
    if found is None:
        found = b"Content-Length: %d\r\n" % length
        if len(_LENGTH_LINES) >= 4096:
            _LENGTH_LINES.clear()
        _LENGTH_LINES[length] = found
    return found


def error_response(status: int, detail: str, close: bool, extra: bytes = b"") -> bytes:
    """A short plain-text response the proxy makes itself."""
    reason = _REASONS.get(status, "Error")
    body = f"{status} {reason}: {detail}\n".encode("utf-8", "replace")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (status, reason.encode(), len(body), extra, b"Connection: close\r\n" if close else b"", body)
    )


_H2: list = []


def _h2_protocol():
    """The HTTP/2 connection class, imported once on first use (edge.serve.h2conn)."""
    if not _H2:
        try:
            from edge.serve.h2conn import H2Connection
        except ImportError:
            H2Connection = None
        _H2.append(H2Connection)
    return _H2[0]


def head_ok(head: RequestHead | None) -> bool:
    """After a response to an upgrade request the upstream connection is never reused."""
    return head is not None and head.upgrade is None


class _ClosedTransport:
    """A closed client connection's transport: whatever still calls it after connection_lost
    (a late upstream byte, a flush) finds a closed transport that ignores it."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass

    def close(self) -> None:
        pass

    abort = pause_reading = resume_reading = close

    def is_closing(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        return 0


_CLOSED = _ClosedTransport()


class _Pending:
    """A pipelined request waiting for the ones before it to be answered."""

    __slots__ = ("body", "done", "head", "size")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.body: list[bytes] = []
        self.done = False
        self.size = 0


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_attempts",
        "_balance_key",
        "_body_pending",
        "_bytes",
        "_bytes_mark",
        "_client",
        "_close_after",
        "_closed",
        "_deferred",
        "_drain_sample",
        "_fell_back",
        "_fwd_host",
        "_fwd_lines",
        "_fx",
        "_gen",
        "_head",
        "_host",
        "_host_raw",
        "_in_feed",
        "_out",
        "_paced",
        "_paused",
        "_pending",
        "_pool",
        "_pre",
        "_pre_size",
        "_proxy_buf",
        "_req_done",
        "_resp_chunked",
        "_resp_delimited",
        "_resp_no_body",
        "_resp_started",
        "_resp_t0",
        "_retained",
        "_retained_size",
        "_route",
        "_rt",
        "_rtt_seen",
        "_service",
        "_status",
        "_t0",
        "_tier_memo",
        "_tls",
        "_to_lease",
        "_tried",
        "_tunnel",
        "_tunnel_buf",
        "_uindex",
        "_up",
        "_upstream_label",
        "_ustate",
        "_write_paused",
        "bytes_tunnelled",
        "deadline",
        "deadline_kind",
        "listener",
        "peer",
        "peer_port",
        "proto",
        "reader",
        "server",
        "transport",
        "trusted",
    )

    def __init__(self, server: Server, listener: str, proto: bytes) -> None:
        self.server = server
        self.listener = listener
        self.proto = proto
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = ""
        self.trusted = False
        self.reader = RequestReader(self, server.runtime.limits.max_header_size)
        self.deadline = _INF
        self.deadline_kind = _NONE
        self._closed = False
        self._close_after = False
        self._paused = 0
        self._write_paused = False
        self._tunnel: UpstreamConnection | None = None
        self._pending: deque[_Pending] = deque()
        self._body_pending: _Pending | None = None
        self._out: list[bytes] = []
        self._deferred: tuple[int, str] | None = None
        self.bytes_tunnelled = 0
        self._fwd_host: bytes | None = None
        self._fwd_lines = b""
        self._host_raw: bytes | None = None
        self._host = ""
        self._tunnel_buf: bytearray | None = None  # client bytes after an upgrade head, before the 101
        self._proxy_buf: bytes | None = None  # PROXY header bytes so far, while one is expected
        self._tls = proto == b"https"
        self.peer_port = 0
        self._in_feed = False
        self._to_lease: UpstreamState | None = None
        self._rtt_seen = False
        self._tier_memo: tuple | None = None  # this connection's last plain tier (features.tier_memo)
        self._drain_sample: list | None = None  # a throughput sample waiting for the client to drain
        self._reset()

    def _reset(self) -> None:
        """Forget the active request (after its response, or before the first)."""
        self._head: RequestHead | None = None
        self._rt: Runtime | None = None
        self._route: RouteRuntime | None = None
        self._ustate: UpstreamState | None = None
        self._pool: UpstreamPool | None = None
        self._up: UpstreamConnection | None = None
        self._req_done = False
        self._pre: list[bytes] | None = None
        self._pre_size = 0
        self._retained: list[bytes] | None = None
        self._retained_size = 0
        self._status = 0
        self._resp_started = False
        self._resp_chunked = False
        self._resp_delimited = False
        self._resp_no_body = False
        self._bytes = 0
        self._attempts = 0
        self._tried: list[UpstreamState] | None = None
        self._upstream_label: str | None = None
        self._service: ServiceRuntime | None = None
        self._fx: Features | None = None
        self._client: str | None = None
        self._fell_back = False
        self._paced = False
        self._resp_t0 = 0.0
        self._bytes_mark = 0
        self._uindex = -1
        self._gen = -1
        self._balance_key: str | None = None
        self._t0 = 0.0

    # -- transport events ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.proto == b"https":
            tls = transport.get_extra_info("ssl_object")
            if tls is not None and tls.selected_alpn_protocol() == "h2" and _h2_protocol() is not None:
                h2 = _h2_protocol()(self.server, self.listener, self.proto)  # type: ignore[misc]
                transport.set_protocol(h2)  # type: ignore[attr-defined]
                h2.connection_made(transport)
                self.reader.close()  # this protocol is done with: freed now, not by the collector
                return
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unix"
        self.peer_port = peer[1] if peer else 0
        server = self.server
        self.trusted = self.peer in server.runtime.trusted
        server.connection_opened(self)
        if self.listener in server.runtime.proxy_protocol:
            if not self.trusted:  # a PROXY header is believed only from trusted_proxies
                self._closed = True
                transport.close()
                return
            self._proxy_buf = b""
        self.deadline = server.loop.time() + server.runtime.limits.header_timeout
        self.deadline_kind = _HEAD

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self.bytes_tunnelled += len(data)
            self._tunnel.transport.write(data)
            return
        try:
            self._received(data)
        except Exception:  # a bug must cost one connection, with an answer, never the loop
            log.exception("request handling failed")
            if self._resp_started or self._closed:
                self._abort()
            else:
                self._reject(500, "internal error")

    def _received(self, data: bytes) -> None:
        if self._closed or self._deferred is not None:
            return
        if self._proxy_buf is not None:
            data = self._proxy_header(data)
            if not data:
                return
        if self.deadline_kind == _IDLE:
            self.deadline = self.server.loop.time() + self.server.runtime.limits.header_timeout
            self.deadline_kind = _HEAD
        buf = self._tunnel_buf
        if buf is not None:  # the parser handed over at an upgrade: these bytes wait for its 101
            buf += data
            if len(buf) > _PRE_BUFFER_LIMIT:
                self.pause_reading(_BY_BUFFER)
            return
        self._in_feed = True
        try:
            offset = self.reader.feed(data)
        except ProtocolError as exc:
            self._in_feed = False
            self._reject(exc.status, exc.reason)  # closes, or defers behind the active request
            self._lease_parsed()
            return
        self._in_feed = False
        if offset >= 0:
            # Everything after an upgrade head belongs to the tunnel, if there will be one:
            # held until the upstream's 101, dropped with the connection otherwise.
            self._tunnel_buf = bytearray(data[offset:])
        self._lease_parsed()
        if self._out:
            self.flush()

    def _proxy_header(self, data: bytes) -> bytes:
        """Read the PROXY header that starts the connection; return the bytes after it."""
        buf = self._proxy_buf + data  # type: ignore[operator]
        try:
            found = proxyproto.parse(buf)
        except ProtocolError as exc:
            self._proxy_buf = None
            self._reject(exc.status, exc.reason)
            return b""
        if found is None:
            self._proxy_buf = buf
            return b""
        consumed, header = found
        self._proxy_buf = None
        if header.source is not None:
            address = header.source[0]
            self.peer = address[7:] if address.startswith("::ffff:") and "." in address else address
            self.peer_port = header.source[1]
            self.trusted = self.peer in self.server.runtime.trusted
        return buf[consumed:]

    def eof_received(self) -> bool:
        # A client half-close while we answer: let the answer finish, then close.
        if self._head is not None and self._tunnel is None:
            self._close_after = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connection_closed(self)
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.client = None
            tunnel.close()
        up = self._up
        if up is not None:
            # The client left mid-exchange: the upstream connection's state is unknown.
            self._up = None
            up.client = None
            up.abort()
        fx = self._fx
        if fx is not None:
            fx.abort()  # a copy being stored is incomplete: its bytes go back to cache.max_size
        if self._pool is not None:
            self._pool.cancel_wait(self)
        if self._head is not None and self._ustate is not None and not self._resp_started:
            self._ustate.inflight -= 1
            self._ustate = None
        # Let refcounting free this connection now: the transport holds us and we hold it, the
        # parser holds the reader's callbacks and the reader ours. Left to the cyclic collector,
        # every connection's objects (its SSL object and buffers too) were freed in bulk, late,
        # and glibc's malloc paid for the fragmentation: a third more CPU in malloc after 30 s
        # of one handshake per request, 5% more per handshake.
        self.transport = _CLOSED  # type: ignore[assignment]
        self.reader.close()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.pause_reading(_BY_WRITE)  # a client that does not read gets no more of its requests served
        up = self._tunnel or self._up
        if up is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.resume_reading(_BY_WRITE)
        up = self._tunnel or self._up
        if up is not None and not self._paced:
            up.transport.resume_reading()
        if self.deadline_kind == _STREAM and self._service is not None:
            self.deadline = self.server.loop.time() + self._service.policy.timeouts.idle
        elif self._head is None and self._pending and not self._closed:
            self._next_pending()  # pipelined requests held while the client did not read

    def pause_reading(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self.transport.resume_reading()

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if self._closed:
                return
            # uvloop's TLS transport makes one record per piece: a small response (head and
            # body) goes as one record, a large one keeps its pieces (no copy of the body)
            if self._tls and len(out) > 1 and sum(map(len, out)) <= _TLS_RECORD:
                self.transport.write(b"".join(out))
                return
            self.transport.writelines(out)

    # -- request side (RequestReader sink) ----------------------------------------------
    def request_head(self, head: RequestHead) -> None:
        if self._head is not None or self._pending or self._write_paused:
            if len(self._pending) >= _PIPELINE_MAX:
                raise ProtocolError(503, "too many pipelined requests")
            pending = _Pending(head)
            self._pending.append(pending)
            self._body_pending = pending
            if len(self._pending) >= _PIPELINE_LIMIT:
                self.pause_reading(_BY_BUFFER)
            return
        self._body_pending = None
        self._start(head)

    def request_body(self, data: bytes) -> None:
        pending = self._body_pending
        if pending is not None:
            pending.body.append(data)
            pending.size += len(data)
            if pending.size > _PRE_BUFFER_LIMIT:
                self.pause_reading(_BY_BUFFER)
            return
        head = self._head
        if head is None:  # the request was already answered (an error): drop the rest
            return
        self._bytes_in(len(data))
        if self._closed:
            return
        if head.chunked:
            self._send_body(b"%x\r\n" % len(data))
            self._send_body(data)
            self._send_body(b"\r\n")
        else:
            self._send_body(data)

    def request_end(self) -> None:
        pending = self._body_pending
        if pending is not None:
            pending.done = True
            self._body_pending = None
            return
        head = self._head
        if head is None:
            return
        self._req_done = True
        if head.chunked:
            self._send_body(b"0\r\n\r\n")
        if self.deadline_kind == _BODY:
            self._wait_upstream()

    def _bytes_in(self, size: int) -> None:
        """Count a request body chunk against limits.max_body_size and refresh the body deadline."""
        self._retained_size += size
        limit = self.server.runtime.limits.max_body_size
        if limit is not None and self._retained_size > limit:
            self._fail(413, "request body too large", close=True)
            return
        if self.deadline_kind == _BODY:
            self.deadline = self.server.loop.time() + self.server.runtime.limits.idle_timeout

    def _send_body(self, data: bytes) -> None:
        retained = self._retained
        if retained is not None:
            if self._retained_size <= _RETAIN_LIMIT:
                retained.append(data)
            else:
                self._retained = None
        up = self._up
        if up is not None:
            up.transport.write(data)
            return
        pre = self._pre
        if pre is None:
            pre = self._pre = []
        pre.append(data)
        self._pre_size += len(data)
        if self._pre_size > _PRE_BUFFER_LIMIT:
            self.pause_reading(_BY_BUFFER)

    # -- starting a request ---------------------------------------------------------------
    def _start(self, head: RequestHead) -> None:
        server = self.server
        rt = server.runtime
        self._head = head
        self._rt = rt
        self._t0 = _clock()
        self._retained_size = 0
        if not head.keep_alive or server.draining or head.upgrade is not None:
            # after an upgrade request, refused or answered here, the client's bytes are not HTTP
            self._close_after = True
        plain_duties = self.proto == b"http" and (rt.redirect_https or server.acme_http01)
        if plain_duties and self._plain_listener_answers(head, rt):
            return
        router = rt.routers.get(self.listener)
        if router is None:
            route = None
        else:
            route = router.catch_all  # a listener with one route for every host and path
            if route is None:
                raw_host = head.host
                if raw_host != self._host_raw:  # keep-alive clients repeat their Host: normalise it once
                    self._host_raw = raw_host
                    self._host = normalize_host(raw_host or b"")
                route = router.match(self._host, head.path.decode("latin-1"))
        if route is None:
            self._local(404, "no route for this host and path")
            return
        self._route = route
        self._service = route.service
        limits = rt.limits
        if limits.max_body_size is not None and head.content_length and head.content_length > limits.max_body_size:
            self._local(413, "request body too large", close=True)
            return
        if route.guarded and not self._admit(head, rt, route):
            return
        self._dispatch(head)

    def _dispatch(self, head: RequestHead) -> None:
        """Breaker, balancer, lease: send the request to an upstream of ``self._service``."""
        service = self._service
        assert service is not None
        breaker = service.breaker
        if breaker is not None:
            now = self.server.loop.time()
            if not breaker.allow(now):
                self._unavailable("circuit open", breaker.retry_after(now))
                return
            self._gen = breaker.generation
        hash_key = service.hash_key
        if hash_key is not None:
            route = self._route
            assert route is not None
            self._balance_key = hash_key.key(self._client_ip(), head.header, route.label)
        ustate = service.balancer.pick(self._balance_key)
        if ustate is None:
            self._unavailable("no healthy upstream", service.health.retry_after(self.server.loop.time()))
            return
        fx = self._fx
        if fx is not None and fx.key is not None:  # only a cache lookup's key uses it (response_plan)
            fx.sent_at = self.server.loop.time()
        if head.chunked or head.content_length:
            if head.expect_continue:
                self._out.append(_CONTINUE)
            self._retained = []
            self._body_deadline()
        else:
            self._req_done = True
            if not self._resp_started:  # _wait_upstream, inline
                self.deadline = self.server.loop.time() + service.response_timeout
                self.deadline_kind = _UPSTREAM
        self._attempts = 1
        if self._in_feed:
            self._to_lease = ustate  # see _lease_parsed
        else:
            self._lease(ustate)

    def _client_ip(self) -> str:
        """The real client address (forwarding headers believed only from trusted proxies)."""
        client = self._client
        if client is None:
            if not self.trusted:  # forwarding headers count only from trusted proxies
                return self.peer
            head = self._head
            assert head is not None and self._rt is not None
            client = self._client = real_client_ip(head, self.peer, self._rt.trusted)
        return client

    def _unavailable(self, reason: str, retry_after: int) -> None:
        """The service cannot take the request: its ``fallback``, else 503 with Retry-After."""
        service = self._service
        head = self._head
        assert service is not None and head is not None
        fallback = service.policy.fallback
        if fallback != "none":
            fx = self._fx
            verdict = fallback_for(fallback, fx.entry if fx is not None else None, self.server.loop.time(),
                                   head.method)
            if verdict.kind == SERVE_STALE and verdict.entry is not None:
                assert fx is not None
                fx.cache_status = "stale"
                self._serve_entry(verdict.entry, stale=True)
                return
            if verdict.kind == USE_SERVICE and not self._fell_back and self._rt is not None:
                degraded = self._rt.services.get(verdict.service or "")
                if degraded is not None:
                    self._fell_back = True
                    self._service = degraded
                    self._dispatch(head)
                    return
        self._local(503, reason, extra=b"Retry-After: %d\r\n" % retry_after)

    def _serve_entry(self, entry, stale: bool) -> None:
        """Answer the active request from a cached copy (a hit, or stale for ``fallback``)."""
        fx = self._fx
        head = self._head
        route = self._route
        assert fx is not None and head is not None and route is not None
        if (head.chunked or head.content_length) and not self._req_done:  # head.has_body(), without its call
            self._close_after = True
        connection = b"Connection: close\r\n" if self._close_after else (
            b"Connection: keep-alive\r\n" if head.version == b"1.0" else b"")
        status, data, chunks, size = fx.entry_response(entry, head, self.server.loop.time(), stale,
                                                       route.add_response, connection)
        self._status = status
        self._resp_started = True
        self._bytes = size if chunks else 0
        self._out.append(data)
        self._out.extend(chunks)
        self._finish()

    def _admit(self, head: RequestHead, rt: Runtime, route: RouteRuntime) -> bool:
        """Zones, GeoIP, rate limit, quality tier, cache; False when the request was answered."""
        server = self.server
        now = server.loop.time()
        client = self._client_ip() if self.trusted else self.peer  # _client_ip's answer, without its call
        if route.zones is not None and not (rt.zone_matcher and rt.zone_matcher.allowed(route.zones, client)):
            self._local(403, "this route is not open to your network zone")
            return False
        geo = route.geo
        if geo is not None:
            database = server.geoip
            if not geo.allowed(database.country(client) if database is not None else None):
                self._local(403, "this route is not open to your country")
                return False
        limiter = route.limiter
        if limiter is not None:
            decision = limiter.take(limiter.key_spec.key(client, head.header, route.label), now)
            if decision is not ALLOWED:
                route.metrics.ratelimited += 1
                if decision.ban_for > 0:
                    server.ban(client, decision.ban_for)
                extra = "".join(f"{name}: {value}\r\n" for name, value in limiter.headers(decision))
                self._local(429, "rate limited", extra=extra.encode("latin-1"))
                return False
        chooser = route.chooser
        if chooser is not None:
            if not self._rtt_seen:
                self._rtt_seen = True
                rtt = tcp_rtt(self.transport.get_extra_info("socket"))
                if rtt is not None:
                    server.clients.observe_rtt(client, rtt, now)
            if route.cache_ttl is None:  # a tier only: one shared object per tier unless it gzips or paces
                # the last request's tier, while nothing it rests on changed (features.tier_memo_holds, inline)
                memo = self._tier_memo
                if (memo is not None and memo[0].memo is memo[1] and memo[2] is chooser
                        and now < memo[0].fresh_until and not head.rare and head._names is None):
                    head.lines.append(memo[4])
                    self._fx = memo[3]
                    return True
                tier = chooser.request_tier(head, server.clients, client, now)
                fx = self._fx = chooser.shared.get(id(tier)) or tier_features(chooser, tier)
                if not self.trusted and not head.rare:
                    self._tier_memo = tier_memo(chooser, server.clients, client, now, fx)
                return True
            fx = self._fx = Features()
            fx.choose_tier(chooser, head, server.clients, client, now)
        elif route.cache_ttl is None:
            return True
        else:
            fx = self._fx = Features()
        if route.cache_ttl is not None:
            store = server.cache_store
            found = fx.lookup(store, head, self.proto, route.cache_ttl, now)
            if found == "fetch":
                self._fetch(store, fx, head)
                return False
            if answer_cached(self, fx, found):
                return False
        return True

    def _fetch(self, store, fx: Features, head: RequestHead) -> None:
        """Ask a remote cache (Redis) for this request; ``_fetched`` goes on from there.
        Pipelined requests queue behind it as behind any active request."""
        assert self._service is not None
        loop = self.server.loop
        # the lookup counts against the upstream's answer time: a stuck one ends in a 504
        self.deadline = loop.time() + self._service.response_timeout
        self.deadline_kind = _UPSTREAM
        fx.fetch(store, head, loop).add_done_callback(partial(self._fetched, head))

    def _fetched(self, head: RequestHead, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved even when nobody waits for the answer any more
        if self._closed or self._head is not head:
            return
        fx = self._fx
        assert fx is not None
        try:
            if error is not None:
                raise error
            found = fx.settle(task.result(), head, self.server.loop.time())
            if not answer_cached(self, fx, found):
                self._dispatch(head)
        except Exception:  # as in data_received: a bug costs one connection, with an answer
            log.exception("request handling failed")
            if self._resp_started or self._closed:
                self._abort()
            else:
                self._local(500, "internal error", close=True)  # not _reject: this request is complete
            return
        self.flush()

    def _record(self, status: int) -> None:
        """Tell health and breaker how the upstream did (status 0: no response at all)."""
        index = self._uindex
        route = self._route
        if index < 0 or route is None:
            return
        self._uindex = -1
        service = self._service
        assert service is not None
        service.record_outcome(index, status, self.server.loop.time(), self._gen)

    def _plain_listener_answers(self, head: RequestHead, rt: Runtime) -> bool:
        """ACME http-01 answers, then the 308 to https for ``redirect_https`` listeners."""
        path = head.path
        if path.startswith(_ACME_PREFIX):
            answer = self.server.acme_http01.get(path[len(_ACME_PREFIX) :].decode("latin-1"))
            if answer is not None:
                self._status = 200
                self._resp_started = True
                self._out.append(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(answer), b"Connection: close\r\n" if self._close_after else b"", answer)
                )
                self._finish()
                return True
            return False
        port = rt.redirect_https.get(self.listener)
        if port is None:
            return False
        host = normalize_host(head.host or b"").encode("latin-1")
        authority = host if port == 443 else b"%s:%d" % (host, port)
        location = b"https://" + authority + head.target
        self._local(308, "use https", extra=b"Location: " + location + b"\r\n")
        return True

    def _wait_upstream(self) -> None:
        if self._resp_started:
            return
        route = self._route
        assert route is not None
        self.deadline = self.server.loop.time() + self._service.response_timeout  # type: ignore[union-attr]
        self.deadline_kind = _UPSTREAM

    def _lease_parsed(self) -> None:
        """Lease for the request started during this read, now that all of the read parsed.

        A bad request later in the same bytes (a smuggling attempt, a broken chunk) thus
        never opens or touches an upstream connection for the request before it.
        """
        ustate = self._to_lease
        if ustate is not None:
            self._to_lease = None
            if not self._closed and self._head is not None and self._ustate is None:
                ustate.inflight += 1  # _lease, inline
                self._ustate = ustate
                index = self._uindex = ustate.index
                self._upstream_label = ustate.label
                pool = self._pool = self._service.pools[index]  # type: ignore[union-attr]
                pool.acquire(self)

    def _lease(self, ustate: UpstreamState) -> None:
        route = self._route
        assert route is not None
        ustate.inflight += 1
        self._ustate = ustate
        self._uindex = ustate.index
        self._upstream_label = ustate.label
        pool = self._service.pools[ustate.index]  # type: ignore[union-attr]
        self._pool = pool
        pool.acquire(self)

    def _forwarding(self, head: RequestHead) -> bytes:
        """The forwarding header lines; from an untrusted peer they depend only on the Host,
        so a keep-alive connection reuses the last ones (measured: ~1 us a request)."""
        if self.trusted:
            return forwarding_lines(head, self.peer, True, self.proto)
        host = head.host
        if host is not self._fwd_host and host != self._fwd_host:
            self._fwd_lines = forwarding_lines(head, self.peer, False, self.proto)
            self._fwd_host = host
        return self._fwd_lines

    # -- pool callbacks -------------------------------------------------------------------
    def wants_upstream(self, pool: UpstreamPool) -> bool:
        return self._pool is pool and self._up is None and not self._closed and self._head is not None

    def wait_for_pool(self, deadline: float) -> None:
        if self.deadline_kind in (_UPSTREAM, _NONE, _HEAD):
            self.deadline = deadline
            self.deadline_kind = _POOL

    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        self._up = conn
        conn.client = self
        conn.reused = reused
        conn.got_bytes = False
        head = self._head
        assert head is not None
        reader = conn.reader
        reader.expect_no_body = head.method == b"HEAD"
        reader.views = True  # response_body only writes or joins its chunks (fx.body: gzip, cache copy)
        if self.deadline_kind == _POOL:
            self._wait_upstream() if self._req_done else self._body_deadline()
        # the request head (as _request_bytes, inline)
        if head.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif head.content_length is not None:
            framing = b"Content-Length: %d\r\n" % head.content_length
        else:
            framing = b""
        if head.upgrade is not None:  # on top of the body's framing, never instead of it
            framing += b"Connection: upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"
        host = head.host
        if self.trusted:
            forwarding = forwarding_lines(head, self.peer, True, self.proto)
        elif host is self._fwd_host or host == self._fwd_host:  # see _forwarding
            forwarding = self._fwd_lines
        else:
            forwarding = self._forwarding(head)
        data = b"".join(
            (
                head.method,
                b" ",
                head.target,
                b" HTTP/1.1\r\nHost: ",
                host or b"",
                b"\r\n",
                *head.lines,
                forwarding,
                self._route.add_request,  # type: ignore[union-attr]
                framing,
                b"\r\n",
            )
        )
        if not reused and self._service is not None and self._service.policy.send_proxy_protocol:
            local = self.transport.get_extra_info("sockname") or ("0.0.0.0", 0)
            data = proxyproto.build_v2((self.peer, self.peer_port), (local[0], local[1])) + data
        pre = self._pre
        if pre:
            self._pre = None
            self._pre_size = 0
            conn.transport.writelines([data, *pre])
            self.resume_reading(_BY_BUFFER)
        else:
            conn.transport.write(data)
        if self._write_paused:
            conn.transport.pause_reading()
        if self._out:
            self.flush()

    def _body_deadline(self) -> None:
        self.deadline = self.server.loop.time() + self.server.runtime.limits.idle_timeout
        self.deadline_kind = _BODY

    def upstream_failed(self, status: int, reason: str, connect_failure: bool = False) -> None:
        """The lease or the exchange failed before a response head reached the client."""
        self._record(0)
        if connect_failure and self._retry_elsewhere():
            return
        self._fail(status, reason, close=not self._req_done)

    def _retry_elsewhere(self) -> bool:
        """retries: idempotent requests whose connect failed go to the next candidate."""
        head = self._head
        route = self._route
        if head is None or route is None or self._resp_started or head.upgrade is not None:
            return False
        service = self._service
        assert service is not None
        if head.method not in _IDEMPOTENT or self._attempts > service.retries:
            return False
        if head.has_body() and self._retained is None:
            return False
        failed = self._ustate
        tried = self._tried or []
        if failed is not None:
            tried.append(failed)
            failed.inflight -= 1
            self._ustate = None
        self._tried = tried
        nxt = next((u for u in service.balancer.candidates(None) if u not in tried), None)
        if nxt is None:
            return False
        self._attempts += 1
        self._pool = None
        self._up = None
        self._pre = list(self._retained or ())
        self._pre_size = sum(map(len, self._pre))
        self._lease(nxt)
        return True

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The upstream connection closed while serving us."""
        if self._tunnel is conn:
            self._tunnel = None
            self._close()  # flushes what the upstream sent last
            return
        if self._up is not conn:
            return
        self._up = None
        if self._resp_started:
            if self._resp_delimited:
                self.response_end()  # a close-delimited body ends with the connection
            else:
                self._abort()  # truncated: the client must see an error, not a short body
            return
        if conn.reused and not conn.got_bytes and self._attempts == 1 and self._head is not None and (
            self._head.method in _IDEMPOTENT
        ) and (
            not self._head or not self._head.has_body() or (self._retained is not None and self._req_done)
        ):
            # A keep-alive connection the upstream closed just as we reused it: retry once, fresh.
            self._attempts += 1
            self._pre = list(self._retained or ())
            pool = self._pool
            assert pool is not None
            pool.drop_idle()  # its siblings are likely stale too (the upstream restarted)
            pool.acquire(self)
            return
        self._record(0)
        self._fail(502, "upstream closed the connection", close=not self._req_done)

    # -- response side (called by UpstreamConnection) -------------------------------------
    def response_head(self, rh: ResponseHead) -> None:
        head = self._head
        route = self._route
        if head is None or route is None:
            return
        status = rh.status
        if status < 200:
            if status == 101:
                return  # the tunnel starts once the parser hands over (start_tunnel)
            if status != 100 and head.version == b"1.1":
                self._out.append(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, rh.reason, b"".join(rh.lines)))
            return
        index = self._uindex  # _record, inline: a success changes nothing unless there is a record to clear
        if index >= 0:
            self._uindex = -1
            service = self._service
            assert service is not None
            if status >= 500 or service.breaker is not None or service.health.needs_record(index):
                service.record_outcome(index, status, self.server.loop.time(), self._gen)
        ustate = self._ustate
        if ustate is not None:
            ustate.inflight -= 1
            self._ustate = None
        fx = self._fx
        delimited = None  # whether the upstream's close ends its body, taken before gzip re-frames it
        if fx is not None and fx.plain:  # the shared TierOnly: its lines, no cache, no gzip
            fx.tier_head(rh)
            length = rh.content_length
            if length is None or length >= _MEASURE_FROM:  # _measure's start (it skips smaller ones)
                self._resp_t0 = self.server.loop.time()
        elif fx is not None:
            delimited = rh.content_length is None and not rh.chunked
            server = self.server
            now = server.loop.time()
            cached = route.cache_ttl is not None
            wall = server.wall_offset + _clock() if cached else 0.0
            entry = fx.revalidated(rh, server.cache_store, now, wall) if fx.revalidating else None
            if entry is not None:  # our conditional request came back 304: answer from the copy
                self._resp_no_body = True
                connection = b"Connection: close\r\n" if self._close_after or not self._req_done else b""
                status, data, chunks, size = fx.entry_response(entry, head, now, False, route.add_response, connection)
                self._status = status
                self._resp_started = True
                self._bytes = size if chunks else 0
                self._out.append(data)
                self._out.extend(chunks)
                return
            fx.response_head(rh, head, server.cache_store if cached else None, now, wall)
            self._resp_t0 = now
        self._status = status
        self._resp_started = True
        no_body = head.method == b"HEAD" or status == 204 or status == 304
        self._resp_no_body = no_body
        length = rh.content_length
        if no_body:
            framing = _content_length(length) if length is not None and status != 204 else b""
        elif length is not None:
            framing = _content_length(length)
        elif rh.chunked and head.version == b"1.1":
            framing = b"Transfer-Encoding: chunked\r\n"
            self._resp_chunked = True
            if delimited:
                self._resp_delimited = True
        elif head.version == b"1.1" and not rh.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
            self._resp_chunked = True
            self._resp_delimited = True
        else:
            framing = b""
            self._resp_delimited = not rh.chunked if delimited is None else delimited
            self._close_after = True
        if not self._req_done:
            self._close_after = True  # answered before the body ended: do not guess the rest
        if self._close_after:
            conn = b"Connection: close\r\n"
        elif head.version == b"1.0":
            conn = b"Connection: keep-alive\r\n"
        else:
            conn = b""
        self._out.append(b"".join((_status_line(status, rh.reason), *rh.lines, framing, route.add_response, conn,
                                   b"\r\n")))
        self.deadline = self.server.loop.time() + route.service.idle_timeout
        self.deadline_kind = _STREAM

    def response_body(self, data: bytes) -> None:
        if self._resp_no_body or self._head is None:
            return
        fx = self._fx
        if fx is not None:
            if fx.writer is not None or fx.gzip is not None:  # storing or compressing
                data = fx.body(data)
                if not data:
                    return
            if fx.pacer is not None:
                self._pace(fx.pacer, len(data))
        self._bytes += len(data)
        if self._resp_chunked:
            self._out.append(b"%x\r\n" % len(data))
            self._out.append(data)
            self._out.append(b"\r\n")
        else:
            self._out.append(data)
        if len(self._out) > 64:
            self.flush()

    def response_end(self) -> None:
        if self._head is None or not self._resp_started:
            return  # 1xx interim responses end here too
        fx = self._fx
        if fx is not None and not self._resp_no_body:
            if fx.writer is not None or fx.gzip is not None:
                tail = fx.end()
                if tail:
                    self._bytes += len(tail)
                    self._out.append(b"%x\r\n%s\r\n" % (len(tail), tail) if self._resp_chunked else tail)
            if self._bytes >= _MEASURE_FROM:
                self._measure(fx)
        if self._resp_chunked:
            self._out.append(b"0\r\n\r\n")
        up = self._up
        if up is not None:
            self._up = None
            up.client = None
            # a connection that carried a PROXY header speaks for one client: never shared
            private = self._service is not None and self._service.policy.send_proxy_protocol
            reusable = self._req_done and not self._resp_delimited and head_ok(self._head) and not private
            if reusable and up.keep_alive_ok():
                assert self._pool is not None
                if self._write_paused or self._paced:
                    up.transport.resume_reading()  # paused on our behalf; the next user needs it reading
                up.release_to = self._pool  # pooled once the read that ended the response is parsed
            elif self._req_done:
                up.close()
            else:
                up.abort()  # answered before our body went out: the rest would never be read
        self._finish()

    def _pace(self, pacer, size: int) -> None:
        """max_rate: count the bytes; when over budget, pause the upstream until tokens return."""
        loop = self.server.loop
        now = loop.time()
        pacer.consume(size)
        if self._paced or pacer.allowance(now) > 0:
            return
        up = self._up
        if up is None:
            return
        self._paced = True
        up.transport.pause_reading()
        loop.call_later(pacer.delay_until_next(now), self._resume_paced)

    def _resume_paced(self) -> None:
        self._paced = False
        up = self._up
        if up is not None and not self._write_paused and not self._closed:
            up.transport.resume_reading()

    def _measure(self, fx: Features) -> None:
        """How fast this client drains a large response: input for its quality tier.

        The upstream is usually done long before the client, and the kernel's send buffer
        takes most of a response at once, so the sample is taken later: every
        ``_DRAIN_CHECK`` seconds while bytes are still queued (ours plus the socket's
        unacknowledged ones), the rate so far is delivered bytes over elapsed time; the last
        such rate counts once the queue is empty.
        """
        tier = fx.tier
        if tier is None or self._bytes < _MEASURE_FROM:
            return
        # A connection about to close hands its fd back at once while the kernel still sends:
        # a duplicate keeps the socket observable (its FIN waits for the last check).
        watch = None
        if self._close_after:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    watch = os.dup(sock.fileno())
                except OSError:
                    watch = None
        previous = self._drain_sample
        if previous is not None and previous[5] is not None:
            os.close(previous[5])  # replaced before its last check: do not leak its descriptor
        self._drain_sample = [self._client_ip(), self._bytes, self._resp_t0, tier.max_rate, None, watch]
        self.server.loop.call_later(_DRAIN_CHECK, self._drain_check)

    def _drain_check(self) -> None:
        sample = self._drain_sample
        if sample is None:
            return
        client, size, started, paced_at, rate, watch = sample
        loop = self.server.loop
        now = loop.time()
        elapsed = max(now - started, 1e-3)
        queued = self.transport.get_write_buffer_size() + unacked_bytes(self.transport, watch)
        if queued > 0 and elapsed < _DRAIN_GIVE_UP:
            sample[4] = (size - queued) / elapsed
            loop.call_later(_DRAIN_CHECK, self._drain_check)
            return
        self._drain_sample = None
        if watch is not None:
            os.close(watch)
        if rate is None:
            rate = size / elapsed  # drained before the first check: at least this fast
        if rate > 0:
            self.server.clients.observe_throughput(client, size, size / rate, now, paced_at=paced_at)

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are a byte pipe."""
        head = self._head
        route = self._route
        if head is None or route is None or head.upgrade is None:
            self._fail(502, "unexpected 101 from upstream", close=True)
            return
        rh = conn.reader_head
        self._status = 101
        self._resp_started = True
        self._record(101)
        if self._ustate is not None:
            self._ustate.inflight -= 1
            self._ustate = None
        upgrade = rh.upgrade if rh is not None and rh.upgrade else head.upgrade
        lines = b"".join(rh.lines) if rh is not None else b""
        self._out.append(
            b"HTTP/1.1 101 Switching Protocols\r\n%sConnection: upgrade\r\nUpgrade: %s\r\n\r\n" % (lines, upgrade)
        )
        if rest:
            self._out.append(rest)
        held = self._tunnel_buf
        self._tunnel_buf = None
        if held:
            conn.transport.write(bytes(held))
            self.resume_reading(_BY_BUFFER)
        self._up = None
        self._tunnel = conn
        conn.tunnel = True
        if self._paused & _BY_UPSTREAM:
            self.resume_reading(_BY_UPSTREAM)
        self.deadline = self.server.loop.time() + _TUNNEL_IDLE
        self.deadline_kind = _TUNNEL
        self._log_and_count()
        self.flush()

    # -- finishing ------------------------------------------------------------------------
    def _log_and_count(self) -> None:
        head = self._head
        route = self._route
        if head is None:
            return
        server = self.server
        now = _clock()
        duration = now - self._t0
        status = self._status
        service = self._service.name if self._service is not None else ""
        if route is not None:
            route.metrics.observe(service, status, duration)
        else:
            server.unrouted.observe("", status, duration)
        log = server.access_log
        if log.enabled:
            fx = self._fx
            upstream = self._upstream_label
            log.log(
                (
                    server.wall_offset + now,
                    self.peer,
                    head.host,  # bytes: decoded (once per distinct value) when the batch is written
                    head.method,
                    head.target,
                    status,
                    self._bytes,
                    duration,
                    upstream,
                    route.label if route is not None else None,
                    fx.tier.name if fx is not None and fx.tier is not None else None,
                    fx.cache_status if fx is not None else None,
                )
            )

    def _finish(self) -> None:
        """The response is complete: log it, then serve the next request or wait for one."""
        self._log_and_count()
        head = self._head
        self._reset()
        if self._paused & _BY_UPSTREAM:
            self.resume_reading(_BY_UPSTREAM)  # that upstream connection is gone from this exchange
        if self._deferred is not None and not self._pending:
            self._reject(*self._deferred)
            return
        if self._close_after or self.server.draining or head is None:
            self.flush()
            self._close()
            return
        if self._pending:
            self.flush()  # the answer goes to the transport first: it says whether the client keeps up
            if not self._write_paused:
                self._next_pending()
                return
        # idle, or pipelined requests waiting for a client that does not read its answers
        # (each would pile another response into our buffer): resume_writing goes on
        self.deadline = self.server.loop.time() + self.server.runtime.limits.idle_timeout
        self.deadline_kind = _IDLE
        self.flush()

    def _next_pending(self) -> None:
        """Start the oldest pipelined request."""
        nxt = self._pending.popleft()
        if self._body_pending is nxt:
            self._body_pending = None  # its body is still arriving: later chunks go to it directly
        if len(self._pending) < _PIPELINE_LIMIT:
            self.resume_reading(_BY_BUFFER)
        self._start(nxt.head)
        if self._head is nxt.head:
            for chunk in nxt.body:
                self.request_body(chunk)
            if nxt.done:
                self.request_end()
        self.flush()

    def _local(self, status: int, detail: str, close: bool = False, extra: bytes = b"") -> None:
        """Answer the active request ourselves (no upstream involved)."""
        head = self._head
        if head is not None and head.has_body() and not self._req_done:
            close = True  # its body is unread: closing is the only safe way to skip it
        if close:
            self._close_after = True
        self._status = status
        self._resp_started = True
        self._out.append(error_response(status, detail, self._close_after, extra))
        self._finish()

    def _fail(self, status: int, detail: str, close: bool = False) -> None:
        """An exchange failed: answer with ``status`` if nothing was sent yet, else cut the connection."""
        if self._fx is not None:
            self._fx.abort()
        up = self._up
        if up is not None:
            self._up = None
            up.client = None
            up.abort()
        if self._pool is not None:
            self._pool.cancel_wait(self)
        ustate = self._ustate
        if ustate is not None:
            ustate.inflight -= 1
            self._ustate = None
        if self._resp_started:
            self._abort()
            return
        extra = b"Retry-After: 5\r\n" if status == 503 else b""
        self._local(status, detail, close=close, extra=extra)

    def _reject(self, status: int, reason: str) -> None:
        """Malformed input: answer and close; the request never reaches an upstream.

        Requests pipelined before the bad one (complete, already read) are answered first.
        """
        self.server.metrics.bad_requests += 1
        if self._head is not None and self._req_done and self._deferred is None:
            self._deferred = (status, reason)
            self.pause_reading(_BY_ERROR)
            while self._pending and not self._pending[-1].done:
                self._pending.pop()  # the bad request itself, or one whose body was cut short
            self._body_pending = None
            return
        if self._head is not None and self._resp_started:
            self._abort()
            return
        if self._head is not None and self._up is not None:
            up = self._up
            self._up = None
            up.client = None
            up.abort()
        if self._ustate is not None:
            self._ustate.inflight -= 1
            self._ustate = None
        self._pending.clear()
        self._body_pending = None
        self._out.append(error_response(status, reason, True))
        self.flush()
        self._closed = True
        self.transport.close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()

    def _abort(self) -> None:
        self.flush()
        self._closed = True
        self.transport.abort()

    # -- deadlines (the server's sweeper calls this) --------------------------------------
    def on_timeout(self, now: float) -> None:
        kind = self.deadline_kind
        self.deadline = _INF
        self.deadline_kind = _NONE
        if kind == _IDLE:
            self._close()
        elif kind == _HEAD:
            if self.reader.in_head:
                self._reject(408, "request head not received in time")
            else:
                self._close()
        elif kind == _UPSTREAM:
            self._record(0)
            self._fail(504, "upstream did not answer in time", close=True)
        elif kind == _POOL:
            self._fail(503, "upstream connection limit reached", close=not self._req_done)
        elif kind == _BODY:
            self._fail(408, "request body stalled", close=True)
        elif kind == _TUNNEL:
            if self.bytes_tunnelled != self._bytes_mark:
                self._bytes_mark = self.bytes_tunnelled
                self.deadline = now + _TUNNEL_IDLE
                self.deadline_kind = _TUNNEL
                return
            self._close()
        elif kind == _STREAM:
            if self._bytes != self._bytes_mark:  # still moving: the idle timeout is about silence
                self._bytes_mark = self._bytes
                service = self._service
                self.deadline = now + (service.policy.timeouts.idle if service is not None else 60.0)
                self.deadline_kind = _STREAM
                return
            self._abort()

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the current response."""
        self._close_after = True
        if self._head is None and self._tunnel is None:
            self._close()


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, leased to one client at a time."""

    __slots__ = (
        "_keep_alive",
        "client",
        "closed",
        "got_bytes",
        "idle_since",
        "pool",
        "reader",
        "reader_head",
        "release_to",
        "reused",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.client: ClientConnection | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.reader = ResponseReader(self)
        self.reader_head: ResponseHead | None = None
        self.closed = False
        self.got_bytes = False
        self.reused = False
        self.tunnel = False
        self.idle_since = 0.0
        self._keep_alive = True
        self.release_to: UpstreamPool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self.close()  # bytes on an idle connection: it is not in a state we can reuse
            return
        if self.tunnel:
            client.bytes_tunnelled += len(data)
            client.transport.write(data)
            return
        self.got_bytes = True
        try:
            offset = self.reader.feed(data)
        except ProtocolError as exc:
            self._broken(exc.status, exc.reason)
            return
        except Exception:
            log.exception("upstream response handling failed")
            self._broken(502, "internal error handling the upstream response")
            return
        pool = self.release_to
        if pool is not None:
            self.release_to = None
            self.reader.views = False  # the next lease may be an HTTP/2 stream's: its code expects bytes
            if self.reader.trailing:
                self.abort()  # more bytes than the response: this stream cannot be trusted again
            else:
                pool.release(self)
        if offset >= 0:
            client.start_tunnel(self, data[offset:])
            return
        client.flush()

    def _broken(self, status: int, reason: str) -> None:
        """This connection's bytes cannot be trusted: fail whoever leases it now, then drop it."""
        self.release_to = None
        current = self.client  # the response may have ended, and its client moved on, mid-read
        if current is not None:
            current.upstream_failed(status, reason)
            current.flush()
        self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(self)
            client.flush()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading(_BY_UPSTREAM)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading(_BY_UPSTREAM)

    # ResponseReader sink: forward to the client that leases us
    def response_head(self, head: ResponseHead) -> None:
        self.reader_head = head
        self._keep_alive = head.keep_alive
        if self.client is not None:
            self.client.response_head(head)

    def response_body(self, data: bytes) -> None:
        if self.client is not None:
            self.client.response_body(data)

    def response_end(self) -> None:
        if self.reader_head is not None and self.reader_head.status == 101:
            return
        if self.client is not None:
            self.client.response_end()

    def keep_alive_ok(self) -> bool:
        return (
            self._keep_alive and self.reader.clean and not self.closed and not self.transport.is_closing()
            and self.transport.get_write_buffer_size() == 0  # none of the last request is still queued
        )

    def usable(self) -> bool:
        return not self.closed and not self.transport.is_closing()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, buffered bytes and all (an upstream that stopped reading)."""
        if not self.closed and self.transport is not None:
            self.transport.abort()
