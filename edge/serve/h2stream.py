"""One HTTP/2 request stream proxied to an HTTP/1.1 upstream connection from the shared pools.

``H2Stream`` is to a stream what ``ClientConnection`` is to an HTTP/1.1 connection: it routes the
request, leases from the same ``UpstreamPool`` (so HTTP/1.1 and HTTP/2 clients share upstream
keep-alive connections, caps and queues), and implements the duck-typed interface the pool and
``UpstreamConnection`` call: ``upstream_ready/failed``, ``wants_upstream``, ``wait_for_pool``,
``response_head/body/end``, ``start_tunnel``, ``upstream_lost``, ``flush``,
``pause_reading/resume_reading``.

Flow control, both ways, per stream (so a slow stream never stalls the others):

- request body: DATA is acknowledged (WINDOW_UPDATE) only once written to the upstream's
  transport while that transport is below its high-water mark; bytes that arrive before the
  upstream connection or while it is full stay unacknowledged, so the client's window, not our
  memory, bounds them (``STREAM_WINDOW`` per stream).
- response body: sent as the client's window allows; the rest waits in ``out``; above
  ``OUT_HIGH`` buffered bytes (or while the client's socket is full) the upstream connection
  of this stream alone stops being read, and resumes on WINDOW_UPDATE.

Routes with ``quality:`` or ``cache:`` get a ``Features`` object (``fx``) and with it what the
HTTP/1.1 side does: answers from the cache (hits, 304s, stale ``fallback``), revalidation,
storing while streaming, gzip, and ``max_rate`` pacing of this stream's upstream reads; every
other stream only ever checks ``fx is None``. That side, with the access rules and rate limits,
is the ``StreamFeatures`` mixin (edge.serve.h2features); response frames are queued by
edge.serve.h2send.

The stream owns no socket: it calls the h2 state machine and the connection's ``flush``.
A stream ends when its END_STREAM (or RST_STREAM) was sent, or the client reset it.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from edge.http.forwarding import forwarding_lines, real_client_ip
from edge.http.h1 import RequestHead, ResponseHead
from edge.route import normalize_host
from edge.serve.features import Features
from edge.serve.h2features import StreamFeatures, header_getter
from edge.serve.h2head import (
    H2RequestError,
    checked_request_head,
    extra_pairs,
    local_response,
    upstream_request,
)
from edge.serve.h2send import queue_data, queue_headers, send_window

if TYPE_CHECKING:
    from edge.balance import UpstreamState
    from edge.serve.h2conn import H2Connection
    from edge.serve.pool import UpstreamPool
    from edge.serve.proxy import UpstreamConnection
    from edge.serve.runtime import RouteRuntime, Runtime, ServiceRuntime

__all__ = ["OUT_HIGH", "H2Stream"]

log = logging.getLogger("edge.serve.h2")

OUT_HIGH = 64 * 1024  # response bytes buffered per stream (client window full) before the upstream is paused
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_CONTINUE = [(b":status", b"100")]
_INF = float("inf")
_clock = time.perf_counter
# deadline kinds
_NONE, _UPSTREAM, _POOL, _BODY, _STREAM = range(5)
_LINGER_RESET = struct.pack("ii", 1, 0)


def _cut(up: UpstreamConnection, hard: bool) -> None:
    """End an upstream exchange midway: its state is unknown, so the connection is never reused.

    ``hard`` (the request body was still flowing): reset the connection (SO_LINGER 0) so neither
    our buffers nor the kernel's keep the rest of a body the upstream may not be reading.
    """
    up.client = None
    transport = up.transport
    if up.closed or transport is None:
        return
    if hard:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
    transport.abort()


class H2Stream(StreamFeatures):
    __slots__ = (
        "active",
        "attempts",
        "balance_key",
        "body_size",
        "bytes",
        "conn",
        "deadline",
        "delimited",
        "done",
        "ended",
        "ending",
        "fx",
        "gen",
        "head",
        "kind",
        "no_body",
        "out",
        "out_size",
        "paced",
        "pool",
        "pre",
        "reading_paused",
        "remaining",
        "req_done",
        "resp_started",
        "route",
        "rt",
        "service",
        "sid",
        "status",
        "t0",
        "tried",
        "uindex",
        "unacked",
        "up",
        "up_full",
        "upstream_label",
        "ustate",
    )

    def __init__(self, conn: H2Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.head: RequestHead | None = None
        self.rt: Runtime | None = None
        self.route: RouteRuntime | None = None
        self.service: ServiceRuntime = None  # type: ignore[assignment]  # the route's, or its fallback service
        self.fx: Features | None = None  # tier and cache state: routes with quality: or cache: only
        self.ustate: UpstreamState | None = None
        self.pool: UpstreamPool | None = None
        self.up: UpstreamConnection | None = None
        self.req_done = False
        self.pre: list[bytes] | None = None
        self.unacked = 0  # request DATA bytes received but not yet acknowledged to the client
        self.up_full = False  # the upstream transport is above its high-water mark
        self.body_size = 0
        self.status = 0
        self.resp_started = False
        self.no_body = False
        self.delimited = False
        self.bytes = 0
        self.t0 = 0.0
        self.attempts = 0
        self.tried: list[UpstreamState] | None = None
        self.upstream_label: str | None = None
        self.uindex = -1
        self.gen = -1
        self.balance_key: str | None = None
        self.out: deque[bytes] = deque()
        self.out_size = 0
        self.ending = False  # END_STREAM goes out after ``out`` drains
        self.ended = False  # END_STREAM was sent
        self.done = False  # nothing more to send or receive for this stream
        self.reading_paused = False  # we paused reading this stream's upstream connection
        self.paced = False  # max_rate: the upstream waits for the pacer's tokens
        self.remaining = -1  # response body bytes still expected (content-length), -1 unknown
        self.deadline = _INF
        self.kind = _NONE
        self.active = 0.0

    # -- starting -------------------------------------------------------------------------
    def start(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        conn = self.conn
        server = conn.server
        rt = server.runtime
        self.rt = rt
        self.req_done = end_stream
        self.t0 = _clock()
        try:
            head = checked_request_head(headers, end_stream, rt.limits.max_header_size)
        except H2RequestError as exc:
            server.metrics.bad_requests += 1
            if exc.reset:
                self._reset(ErrorCodes.PROTOCOL_ERROR)
            else:
                self._local(exc.status, exc.reason)
            return
        self.head = head
        router = rt.routers.get(conn.listener)
        route = router.match(normalize_host(head.host or b""), head.path.decode("latin-1")) if router else None
        if route is None:
            self._local(404, "no route for this host and path")
            return
        self.route = route
        self.service = route.service
        limit = rt.limits.max_body_size
        if limit is not None and head.content_length and head.content_length > limit:
            self._local(413, "request body too large")
            return
        if route.guarded and not self._admit(head, rt, route):
            return
        self._dispatch(head)

    def _dispatch(self, head: RequestHead) -> None:
        """Breaker, balancer, lease: send the request to an upstream of ``self.service``."""
        service = self.service
        conn = self.conn
        breaker = service.breaker
        if breaker is not None:
            now = conn.server.loop.time()
            if not breaker.allow(now):
                self._unavailable("circuit open", breaker.retry_after(now))
                return
            self.gen = breaker.generation
        hash_key = service.hash_key
        if hash_key is not None:
            route = self.route
            rt = self.rt
            assert route is not None and rt is not None
            client = real_client_ip(head, conn.peer, rt.trusted)
            self.balance_key = hash_key.key(client, header_getter(head), route.label)
        ustate = service.balancer.pick(self.balance_key)
        if ustate is None:
            self._unavailable("no healthy upstream", service.health.retry_after(conn.server.loop.time()))
            return
        fx = self.fx
        if fx is not None:
            fx.sent_at = conn.server.loop.time()
        req_done = self.req_done
        if head.expect_continue and not req_done:
            try:
                conn.h2.send_headers(self.sid, _CONTINUE)
            except H2Error:
                pass
        self.attempts = 1
        if req_done:
            self._wait_upstream()
        else:
            self._body_deadline()
        self._lease(ustate)

    def _record(self, status: int) -> None:
        """Tell health and breaker how the upstream did (status 0: no response at all)."""
        index = self.uindex
        route = self.route
        if index < 0 or route is None:
            return
        self.uindex = -1
        self.service.record_outcome(index, status, self.conn.server.loop.time(), self.gen)

    def _lease(self, ustate: UpstreamState) -> None:
        route = self.route
        assert route is not None
        ustate.inflight += 1
        self.ustate = ustate
        self.uindex = ustate.index
        self.upstream_label = ustate.label
        pool = self.service.pools[ustate.index]
        self.pool = pool
        pool.acquire(self)  # type: ignore[arg-type]

    # -- deadlines --------------------------------------------------------------------------
    def _set_deadline(self, when: float, kind: int) -> None:
        self.deadline = when
        self.kind = kind
        conn = self.conn
        if when < conn.deadline:
            conn.deadline = when

    def _no_deadline(self) -> None:
        self.deadline = _INF
        self.kind = _NONE

    def _streaming(self, now: float) -> None:
        """The response is flowing: from now on the service's idle timeout bounds each stall."""
        self.active = now
        self._set_deadline(now + self.service.policy.timeouts.idle, _STREAM)

    def _wait_upstream(self) -> None:
        if not self.resp_started:
            self._set_deadline(self.conn.server.loop.time() + self.service.response_timeout, _UPSTREAM)

    def _body_deadline(self) -> None:
        now = self.conn.server.loop.time()
        self.active = now
        self._set_deadline(now + self.conn.server.runtime.limits.idle_timeout, _BODY)

    def on_timeout(self, now: float) -> None:
        kind = self.kind
        self.deadline = _INF
        self.kind = _NONE
        if kind == _UPSTREAM:
            self._record(0)
            self._fail(504, "upstream did not answer in time")
        elif kind == _POOL:
            self._fail(503, "upstream connection limit reached")
        elif kind == _BODY:
            idle = self.conn.server.runtime.limits.idle_timeout
            if now - self.active < idle:
                self._set_deadline(self.active + idle, _BODY)
            else:
                self._fail(408, "request body stalled")
        elif kind == _STREAM:
            service = self.service
            idle = service.policy.timeouts.idle if service is not None else 60.0
            if now - self.active < idle:
                self._set_deadline(self.active + idle, _STREAM)
            else:
                self._abort(ErrorCodes.CANCEL)

    # -- request body (from the connection's events) ----------------------------------------
    def request_body(self, data: bytes, flow_len: int) -> None:
        head = self.head
        if self.done or head is None or (self.resp_started and self.up is None):
            self.conn.ack(self.sid, flow_len)
            return
        size = len(data)
        self.body_size += size
        limit = self.conn.server.runtime.limits.max_body_size
        if limit is not None and self.body_size > limit:
            self.conn.ack(self.sid, flow_len)
            self._fail(413, "request body too large")
            return
        if self.kind == _BODY:
            self.active = self.conn.server.loop.time()
        if head.chunked:
            if not size:
                self.conn.ack(self.sid, flow_len)
                return
            data = b"%x\r\n%s\r\n" % (size, data)
        up = self.up
        if up is not None:
            up.transport.write(data)
            if self.up_full:
                self.unacked += flow_len
            else:
                self.conn.ack(self.sid, flow_len)
            return
        pre = self.pre
        if pre is None:
            pre = self.pre = []
        pre.append(data)
        self.unacked += flow_len

    def request_end(self) -> None:
        if self.req_done:
            return
        self.req_done = True
        head = self.head
        if head is None or self.done:
            return
        if head.chunked:
            if self.up is not None:
                self.up.transport.write(b"0\r\n\r\n")
            elif not self.resp_started:
                if self.pre is None:
                    self.pre = []
                self.pre.append(b"0\r\n\r\n")
        if self.kind == _BODY:
            self._wait_upstream()

    # -- pool callbacks -----------------------------------------------------------------------
    def wants_upstream(self, pool: UpstreamPool) -> bool:
        return self.pool is pool and self.up is None and not self.done and self.head is not None

    def wait_for_pool(self, deadline: float) -> None:
        if self.kind in (_UPSTREAM, _NONE, _BODY):
            self._set_deadline(deadline, _POOL)

    def upstream_ready(self, up: UpstreamConnection, reused: bool) -> None:
        self.up = up
        up.client = self  # type: ignore[assignment]
        up.reused = reused
        up.got_bytes = False
        head = self.head
        route = self.route
        assert head is not None and route is not None
        up.reader.expect_no_body = head.method == b"HEAD"
        if self.kind == _POOL:
            if self.req_done:
                self._wait_upstream()
            else:
                self._body_deadline()
        conn = self.conn
        data = upstream_request(head, forwarding_lines(head, conn.peer, conn.trusted, conn.proto), route.add_request)
        pre = self.pre
        self.up_full = False
        if pre:
            self.pre = None
            up.transport.writelines([data, *pre])
        else:
            up.transport.write(data)
        if self.unacked and not self.up_full:
            conn.ack(self.sid, self.unacked)
            self.unacked = 0
        up.transport.resume_reading()  # a connection comes back from the pool however its last user left it
        self.reading_paused = False
        self.update_reading()
        conn.flush()

    def upstream_failed(self, status: int, reason: str, connect_failure: bool = False) -> None:
        """The lease or the exchange failed before a response head reached the client."""
        self._record(0)
        if connect_failure and self._retry_elsewhere():
            return
        self._fail(status, reason)

    def _retry_elsewhere(self) -> bool:
        """retries: body-less idempotent requests whose connect failed go to the next candidate."""
        head = self.head
        route = self.route
        if head is None or route is None or self.resp_started or self.done:
            return False
        if head.method not in _IDEMPOTENT or self.attempts > self.service.retries or head.has_body():
            return False
        failed = self.ustate
        tried = self.tried or []
        if failed is not None:
            tried.append(failed)
            failed.inflight -= 1
            self.ustate = None
        self.tried = tried
        nxt = next((u for u in self.service.balancer.candidates(None) if u not in tried), None)
        if nxt is None:
            return False
        self.attempts += 1
        self.pool = None
        self.up = None
        self._lease(nxt)
        return True

    def upstream_lost(self, up: UpstreamConnection) -> None:
        """The upstream connection closed while serving us."""
        if self.up is not up:
            return
        self.up = None
        if self.resp_started:
            if self.delimited:
                if not self.done:
                    self._end_body()  # a close-delimited body ends with the connection
            else:
                self._abort(ErrorCodes.INTERNAL_ERROR)  # truncated: the client must not take it as whole
            return
        head = self.head
        if up.reused and not up.got_bytes and self.attempts == 1 and head is not None and not head.has_body():
            # A keep-alive connection the upstream closed just as we reused it: retry once, fresh.
            self.attempts += 1
            pool = self.pool
            assert pool is not None
            pool.drop_idle()
            pool.acquire(self)  # type: ignore[arg-type]
            return
        self._record(0)
        self._fail(502, "upstream closed the connection")

    def start_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        self._fail(502, "unexpected 101 from upstream")  # we never ask for an upgrade over HTTP/2

    def pause_reading(self, reason: int) -> None:
        """The upstream's transport is full: stop acknowledging this stream's DATA."""
        self.up_full = True

    def resume_reading(self, reason: int) -> None:
        self.up_full = False
        if self.unacked and self.up is not None:
            self.conn.ack(self.sid, self.unacked)
            self.unacked = 0
            self.conn.flush()

    def flush(self) -> None:
        self.conn.flush()

    # -- response (from UpstreamConnection) ---------------------------------------------------
    def response_head(self, rh: ResponseHead) -> None:
        head = self.head
        route = self.route
        if head is None or route is None or self.done:
            return
        status = rh.status
        if status < 200:
            return  # 100/103 are not relayed; 101 ends in start_tunnel
        self.status = status
        self.resp_started = True
        self._record(status)
        ustate = self.ustate
        if ustate is not None:
            ustate.inflight -= 1
            self.ustate = None
        no_body = head.method == b"HEAD" or status == 204 or status == 304
        self.no_body = no_body
        self.delimited = not no_body and rh.content_length is None and not rh.chunked
        fx = self.fx
        if fx is not None and self._features_head(fx, rh, head, route):
            return
        self.remaining = -1 if no_body or rh.content_length is None else rh.content_length
        h2c = self.conn.h2
        try:
            queue_headers(h2c, self.sid, no_body, h2c.encoder.response_block, rh, extra_pairs(route.add_response))
        except H2Error:
            self._abort(ErrorCodes.INTERNAL_ERROR)
            return
        self._streaming(self.conn.server.loop.time())
        if no_body:
            self.ending = True
            self.ended = True
            self._complete()

    def response_body(self, data: bytes) -> None:
        if self.no_body or self.done:
            return
        remaining = self.remaining
        if remaining > 0:
            # the last bytes of a known length: END_STREAM rides on the last DATA frame
            self.remaining = remaining = remaining - len(data)
        fx = self.fx
        if fx is not None:
            data = fx.body(data)  # stored as it came, maybe compressed for the client
            if remaining == 0:
                data += fx.end()  # the whole body arrived: commit the copy (no gzip with a known length)
            if fx.pacer is not None and data:
                self._pace(fx.pacer, len(data))
        self.bytes += len(data)
        if self.kind == _STREAM:
            self.active = self.conn.server.loop.time()
        self._send(data, remaining == 0)

    def response_end(self) -> None:
        if self.head is None or not self.resp_started:
            return  # 1xx interim responses end here too
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            if self.reading_paused:
                self.reading_paused = False
                up.transport.resume_reading()
            if self.req_done and not self.delimited and up.keep_alive_ok():
                assert self.pool is not None
                up.release_to = self.pool  # pooled once the read that ended the response is parsed
            else:
                up.close()
        if not self.done:
            self._end_body()

    def _end_body(self) -> None:
        """The upstream's body is complete: END_STREAM after what is queued (and the gzip trailer)."""
        fx = self.fx
        if fx is not None and not self.ending and not self.no_body:
            tail = fx.end()
            if tail:
                self.bytes += len(tail)
                self._send(tail, True)
                return
        self._send(b"", True)

    # -- sending to the client ----------------------------------------------------------------
    def _headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """A final response head of our own making (edge.serve.h2send; raises H2Error)."""
        h2c = self.conn.h2
        queue_headers(h2c, self.sid, end_stream, h2c.encoder.encode, headers)

    def _send(self, data: bytes, end: bool) -> None:
        if data:
            self.out.append(data)
            self.out_size += len(data)
        if end:
            self.ending = True
        self.send_pending()

    def send_pending(self) -> None:
        """Send what the client's windows allow; END_STREAM once everything went out."""
        if self.done:
            return
        out = self.out
        h2c = self.conn.h2
        sid = self.sid
        try:
            if out:
                window = send_window(h2c, sid)
                frame = h2c.max_outbound_frame_size
                sent = 0
                while out and window > 0:
                    chunk = out[0]
                    size = len(chunk)
                    if size <= window and size <= frame:
                        out.popleft()
                        queue_data(h2c, sid, chunk, self.ending and not out)
                    else:
                        size = min(window, frame)
                        queue_data(h2c, sid, chunk[:size], False)
                        out[0] = chunk[size:]
                    window -= size
                    sent += size
                self.out_size -= sent
                if sent and self.kind == _STREAM:
                    self.active = self.conn.server.loop.time()
                if not out and self.ending:
                    self.ended = True  # the last DATA frame carried END_STREAM
            if self.ending and not out and not self.ended:
                queue_data(h2c, sid, b"", True)
                self.ended = True
        except H2Error:
            self._abort(ErrorCodes.INTERNAL_ERROR)
            return
        if self.ended:
            self._complete()
        else:
            self.update_reading()
        self.conn.flush()  # a no-op inside the connection's read (it flushes once at its end)

    def update_reading(self) -> None:
        """Read this stream's upstream only while its output fits (and the client's socket drains)."""
        up = self.up
        if up is None:
            return
        pause = self.paced or self.out_size > OUT_HIGH or self.conn.write_paused
        if pause != self.reading_paused:
            self.reading_paused = pause
            if pause:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    # -- finishing ------------------------------------------------------------------------------
    def _complete(self) -> None:
        """END_STREAM went out: log, and stop the client's upload if it is still going."""
        self._log_and_count()
        if not self.req_done:
            self._reset_quietly(ErrorCodes.NO_ERROR)  # RFC 9113 8.1: a complete response, the rest unread
        self._release()

    def _release(self) -> None:
        fx = self.fx
        if fx is not None:
            fx.abort()  # no-op after ``end``; a copy still filling now could never be completed
        self.done = True
        self.deadline = _INF
        self.kind = _NONE
        if self.unacked:
            self.conn.ack(self.sid, self.unacked)  # returns the connection-level window
            self.unacked = 0
        self.pre = None
        self.out.clear()
        self.conn.stream_done(self)

    def _local(self, status: int, detail: str, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        """Answer this stream ourselves (no upstream involved)."""
        self.status = status
        self.resp_started = True
        now = self.conn.server.loop.time()
        self.active = now  # a client that never opens its window for our answer is cut like a stalled download
        self._set_deadline(now + self.conn.server.runtime.limits.idle_timeout, _STREAM)
        headers, body = local_response(status, detail, _REASONS.get(status, "Error"), list(extra))
        head_only = self.head is not None and self.head.method == b"HEAD"
        try:
            self._headers(headers, head_only)
        except H2Error:
            self._abort(ErrorCodes.INTERNAL_ERROR)
            return
        if head_only:
            self.ending = self.ended = True
            self._complete()
        else:
            self._send(body, True)

    def _fail(self, status: int, detail: str) -> None:
        """The exchange failed: answer ``status`` if nothing was sent yet, else reset the stream."""
        fx = self.fx
        if fx is not None:
            fx.abort()  # a copy being stored is incomplete: dropped
        up = self.up
        if up is not None:
            self.up = None
            _cut(up, not self.req_done)
        if self.pool is not None:
            self.pool.cancel_wait(self)  # type: ignore[arg-type]
        ustate = self.ustate
        if ustate is not None:
            ustate.inflight -= 1
            self.ustate = None
        if self.done:
            return
        if self.resp_started:
            self._abort(ErrorCodes.INTERNAL_ERROR)
            return
        self._local(status, detail)

    def _abort(self, code: int) -> None:
        """Reset the stream (a truncated or timed-out response); the upstream exchange is cut too."""
        if self.done:
            return
        self._reset_quietly(code)
        self.cancel()
        self.conn.stream_done(self)
        self.conn.flush()

    def _reset(self, code: int) -> None:
        self._reset_quietly(code)
        self._release()
        self.conn.flush()

    def _reset_quietly(self, code: int) -> None:
        try:
            self.conn.h2.reset_stream(self.sid, code)
        except H2Error:
            pass

    def cancel(self) -> None:
        """The client reset the stream or left: cut the upstream exchange, free what we hold."""
        if self.done:
            return
        self.done = True
        self.deadline = _INF
        fx = self.fx
        if fx is not None:
            fx.abort()
        self.kind = _NONE
        up = self.up
        if up is not None:
            self.up = None
            _cut(up, not self.req_done)
        if self.pool is not None:
            self.pool.cancel_wait(self)  # type: ignore[arg-type]
        ustate = self.ustate
        if ustate is not None:
            ustate.inflight -= 1
            self.ustate = None
        if self.unacked:
            self.conn.ack(self.sid, self.unacked)
            self.unacked = 0
        self.pre = None
        self.out.clear()
        self.out_size = 0

    def _log_and_count(self) -> None:
        head = self.head
        if head is None:
            return
        conn = self.conn
        server = conn.server
        now = _clock()
        duration = now - self.t0
        status = self.status
        route = self.route
        if route is not None:
            route.metrics.observe(self.service.name, status, duration)
        else:
            server.unrouted.observe("", status, duration)
        access = server.access_log
        if access.enabled:
            record = (
                server.wall_offset + now,
                conn.peer,
                (head.host or b"").decode("latin-1"),
                head.method.decode("latin-1"),
                head.target.decode("latin-1"),
                status,
                self.bytes,
                duration,
                self.upstream_label,
                route.label if route is not None else None,
            )
            fx = self.fx
            if fx is not None:  # tier and cache status, as HTTP/1.1 logs them
                record += (fx.tier.name if fx.tier is not None else None, fx.cache_status)
            access.log(record)
