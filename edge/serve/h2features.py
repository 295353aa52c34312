"""The cache, quality-tier, access-rule and fallback side of an HTTP/2 stream (``StreamFeatures``).

What a route's ``zones``, ``geo``, ``rate_limit``, ``quality`` and ``cache`` keys and a service's
``fallback`` do to one stream, kept apart from the stream's proxying core (edge.serve.h2stream):
the same rules and the same ``Features`` glue as the HTTP/1.1 side (edge.serve.proxy), answered
through the stream's own primitives (``_local``, ``_send``, ``_headers``, ``_dispatch``,
``_complete``, ``_fail``, the deadline setters). A mixin without state of its own: every
attribute it touches is one of ``H2Stream``'s slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from edge.cache.fallback import SERVE_STALE, USE_SERVICE, fallback_for
from edge.http.forwarding import real_client_ip
from edge.http.h1 import RequestHead, ResponseHead
from edge.ratelimit import ALLOWED
from edge.serve.features import Features, answer_cached, tcp_rtt
from edge.serve.h2head import extra_pairs

if TYPE_CHECKING:
    from edge.cache.store import Entry
    from edge.quality import Pacer
    from edge.serve.h2stream import H2Stream
    from edge.serve.runtime import RouteRuntime, Runtime

    _Base = H2Stream
else:
    _Base = object

__all__ = ["StreamFeatures", "header_getter"]

log = logging.getLogger("edge.serve.h2")


def header_getter(head: RequestHead) -> Callable[[str], str | None]:
    """A request header's value by lower-case name, for rate-limit and hash keys (rarely asked)."""

    def get(lname: str) -> str | None:
        wanted = lname.encode("latin-1")
        for index, name in enumerate(head.names):
            if name == wanted:
                return head.lines[index][len(name) + 1 : -2].strip().decode("latin-1")
        return None

    return get


class StreamFeatures(_Base):
    __slots__ = ()

    def _admit(self, head: RequestHead, rt: Runtime, route: RouteRuntime) -> bool:
        """Zones, GeoIP, rate limit, tier and cache, as the HTTP/1.1 side does; False when answered."""
        conn = self.conn
        server = conn.server
        now = server.loop.time()
        client = real_client_ip(head, conn.peer, rt.trusted)
        # access rules first, exactly as on HTTP/1.1: a zone or country rule is never bypassed
        if route.zones is not None and not (rt.zone_matcher and rt.zone_matcher.allowed(route.zones, client)):
            self._local(403, "this route is not open to your network zone")
            return False
        if route.geo is not None:
            database = server.geoip
            if not route.geo.allowed(database.country(client) if database is not None else None):
                self._local(403, "this route is not open to your country")
                return False
        limiter = route.limiter
        if limiter is not None:
            decision = limiter.take(limiter.key_spec.key(client, header_getter(head), route.label), now)
            if decision is not ALLOWED:
                route.metrics.ratelimited += 1
                if decision.ban_for > 0:
                    server.ban(client, decision.ban_for)
                extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in limiter.headers(decision)]
                self._local(429, "rate limited", extra)
                return False
        if route.chooser is None and route.cache_ttl is None:
            return True
        fx = self.fx = Features()
        if route.chooser is not None:  # the tier goes upstream (a client-sent value is replaced)
            if not conn.rtt_seen:  # as HTTP/1.1: the connection's RTT is a measurement, taken once
                conn.rtt_seen = True
                rtt = tcp_rtt(conn.transport.get_extra_info("socket"))
                if rtt is not None:
                    server.clients.observe_rtt(client, rtt, now)
            fx.choose_tier(route.chooser, head, server.clients, client, now)
        if route.cache_ttl is None:
            return True
        store = server.cache_store
        found = fx.lookup(store, head, conn.proto, route.cache_ttl, now)
        if found == "fetch":
            self._fetch(store, fx, head)
            return False
        return not answer_cached(self, fx, found)

    def _fetch(self, store, fx: Features, head: RequestHead) -> None:
        """Ask a remote cache (Redis) for this request; ``_fetched`` goes on from there.
        The upstream's response timeout bounds the wait (then 504)."""
        self._wait_upstream()
        fx.fetch(store, head, self.conn.server.loop).add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved even when nobody waits for the answer any more
        if self.done or self.resp_started:
            return
        fx = self.fx
        head = self.head
        assert fx is not None and head is not None
        self._no_deadline()
        try:
            if error is not None:
                raise error
            found = fx.settle(task.result(), head, self.conn.server.loop.time())
            if not answer_cached(self, fx, found):
                self._dispatch(head)
        except Exception:  # as in the connection's event loop: a bug costs this stream, with an answer
            log.exception("h2 request handling failed")
            self._fail(500, "internal error")
        self.conn.flush()

    def _unavailable(self, reason: str, retry_after: int) -> None:
        """The service cannot take the request: its ``fallback`` (a stale copy, another
        service), else 503 with Retry-After; as on HTTP/1.1."""
        service = self.service
        head = self.head
        route = self.route
        assert head is not None and route is not None
        fallback = service.policy.fallback
        if fallback != "none":
            fx = self.fx
            verdict = fallback_for(fallback, fx.entry if fx is not None else None, self.conn.server.loop.time(),
                                   head.method)
            if verdict.kind == SERVE_STALE and verdict.entry is not None:
                assert fx is not None
                fx.cache_status = "stale"
                self._serve_entry(verdict.entry, stale=True)
                return
            if verdict.kind == USE_SERVICE and service is route.service and self.rt is not None:
                degraded = self.rt.services.get(verdict.service or "")
                if degraded is not None:
                    self.service = degraded  # once: the degraded service's own fallback is not followed
                    self._dispatch(head)
                    return
        self._local(503, reason, [(b"retry-after", b"%d" % retry_after)])

    def _serve_entry(self, entry: Entry, stale: bool) -> None:
        """Answer from a cached copy (a hit, or stale for ``fallback``): no upstream involved."""
        fx = self.fx
        head = self.head
        route = self.route
        assert fx is not None and head is not None and route is not None
        status, headers, chunks, size = fx.entry_headers(entry, head, self.conn.server.loop.time(), stale,
                                                         extra_pairs(route.add_response))
        self._answer(status, headers, chunks, size)

    def _answer(self, status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes], size: int) -> None:
        """Send a whole response we have in hand (from the cache) as HEADERS and DATA."""
        self.status = status
        self.resp_started = True
        self._streaming(self.conn.server.loop.time())
        try:
            self._headers(headers, not chunks)
        except H2Error:
            self._abort(ErrorCodes.INTERNAL_ERROR)
            return
        if not chunks:
            self.ending = self.ended = True
            self._complete()
            return
        self.bytes = size
        self.out.extend(chunks)
        self.out_size += size
        self._send(b"", True)

    def _features_head(self, fx: Features, rh: ResponseHead, head: RequestHead, route: RouteRuntime) -> bool:
        """Cache and tier on the response head: True when the stream was answered from the
        cache (the upstream's 304 to our revalidation), else ``rh`` was edited in place
        (tier lines, gzip: no content-length then; storing started)."""
        server = self.conn.server
        now = server.loop.time()
        cached = route.cache_ttl is not None
        wall = server.wall_offset + time.perf_counter() if cached else 0.0
        entry = fx.revalidated(rh, server.cache_store, now, wall) if fx.revalidating else None
        if entry is not None:
            self.no_body = True  # the upstream's 304 has none; the copy's body goes instead
            status, headers, chunks, size = fx.entry_headers(entry, head, now, False,
                                                             extra_pairs(route.add_response))
            self._answer(status, headers, chunks, size)
            return True
        fx.response_head(rh, head, server.cache_store if cached else None, now, wall)
        return False

    def _pace(self, pacer: Pacer, size: int) -> None:
        """max_rate: count the bytes; when over budget, stop reading this stream's upstream
        until tokens return (one timer per burst, as on HTTP/1.1); other streams go on."""
        loop = self.conn.server.loop
        now = loop.time()
        pacer.consume(size)
        if self.paced or self.up is None or pacer.allowance(now) > 0:
            return
        self.paced = True  # update_reading (from _send) pauses the upstream
        loop.call_later(pacer.delay_until_next(now), self._resume_paced)

    def _resume_paced(self) -> None:
        self.paced = False
        if not self.done:
            self.update_reading()
