"""Quality tiers and the response cache on the data path: the per-request glue.

Only routes with ``quality:`` or ``cache:`` pay for any of this: the client connection
(HTTP/1.1, ``proxy.py``) or stream (HTTP/2, ``h2stream.py``) creates one ``Features``
object for such a request and calls in at fixed points
(request head, response head, body, end). Everything that decides lives in the pure
modules ``edge.quality`` and ``edge.cache``; this module turns their answers into
header lines and response bytes and never touches a transport.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from typing import TYPE_CHECKING

from edge.cache.policy import (
    cache_key,
    merge_304,
    not_modified,
    request_plan_from_head,
    response_plan,
    revalidation_headers,
)
from edge.cache.store import CacheStore, Entry, EntryWriter
from edge.http.h1 import RequestHead, ResponseHead
from edge.quality import (
    ACCEPT_CH_LINE,
    ClientMeasurements,
    GzipStream,
    Pacer,
    TierChooser,
    compressed_head,
    compression_level,
    is_html,
    should_compress,
)

if TYPE_CHECKING:
    from edge.policy.model import Tier

__all__ = ["Features", "TierOnly", "answer_cached", "tcp_rtt", "tier_features", "tier_memo", "tier_memo_holds",
           "unacked_bytes", "wants_accept_ch"]

_CONDITIONAL_NAMES = frozenset({b"if-none-match", b"if-modified-since"})

# Statuses whose responses never have a body (RFC 9110 6.4.1). A storable one (a 204: cacheable
# by default, 15.3.5, and kept by Varnish too) is complete at its head, so its copy is committed
# there: the shells call ``end`` only for responses with a body, and a writer left open would
# hold its reservation against ``cache.max_size`` for ever. (A 304 is never stored as such.)
_NO_BODY = frozenset({204, 304})

_TCP_INFO_RTT = struct.Struct("=I")  # tcpi_rtt (microseconds), the 16th u32 after 8 bytes of u8 fields
_TCP_INFO_RTT_OFFSET = 8 + 15 * 4


def tcp_rtt(sock: socket.socket | None) -> float | None:
    """The kernel's smoothed RTT of a TCP connection, in seconds (Linux TCP_INFO)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCP_INFO_RTT_OFFSET + 4:
        return None
    (rtt_us,) = _TCP_INFO_RTT.unpack_from(info, _TCP_INFO_RTT_OFFSET)
    return rtt_us / 1e6 if rtt_us else None


def unacked_bytes(transport, fd: int | None = None) -> int:
    """Bytes the kernel still holds for this connection: unsent plus sent but unacknowledged."""
    if fd is None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return 0
        fd = sock.fileno()
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0




class Features:
    """One request's tier and cache state.

    No ``__slots__`` and no ``__init__``: the defaults are class attributes, so a request
    that only gets a tier pays for an empty object and the two attributes it sets (this
    object is made per request on every quality or cache route).
    """

    plain = False  # True on the shared TierOnly: the shells skip the per-request cache work
    chooser: TierChooser | None = None
    tier: Tier | None = None
    plan = None
    key: bytes | None = None
    entry: Entry | None = None
    revalidating = False
    writer: EntryWriter | None = None
    gzip: GzipStream | None = None
    pacer: Pacer | None = None
    ttl = 0.0
    sent_at = 0.0
    cache_status: str | None = None
    inm: str | None = None  # the client's own If-None-Match / If-Modified-Since, kept
    ims: str | None = None  # before a revalidation replaces them in the upstream request

    # -- request side ---------------------------------------------------------------------
    def choose_tier(self, chooser: TierChooser, head: RequestHead, clients: ClientMeasurements, client: str,
                    now: float) -> None:
        """Pick the tier and put it in the upstream request (a client-sent value is replaced)."""
        self.chooser = chooser
        self.tier = chooser.request_tier(head, clients, client, now)

    def lookup(self, store: CacheStore, head: RequestHead, scheme: bytes, ttl: float, now: float) -> str:
        """'hit' (answer from ``self.entry``), 'miss' (forward), 'only-if-cached' (504), or
        'fetch': a remote store must be asked first (``settle`` takes its answer)."""
        self.ttl = ttl
        method = head.method
        if method not in (b"GET", b"HEAD"):
            if method not in (b"OPTIONS", b"TRACE"):  # an unsafe request makes stored copies stale
                store.delete(cache_key(head.host or b"", head.target, self.tier.name if self.tier else None, scheme))
            self.cache_status = "bypass"
            return "miss"
        plan = self.plan = request_plan_from_head(head)
        if not plan.lookup:
            self.cache_status = "bypass"
            return "miss"
        # request_plan_from_head made the names: no second property call (``or``: an empty list)
        if not _CONDITIONAL_NAMES.isdisjoint(head._names or head.names):  # the client's own conditionals
            self.inm = head.header("if-none-match")
            self.ims = head.header("if-modified-since")
        else:  # stored on the object: a class default read through it is a generic lookup (3.11)
            self.inm = self.ims = None
        tier = self.tier = self.tier  # likewise, for entry_response and the access log
        key = self.key = cache_key(head.host or b"", head.target, tier.name if tier is not None else None, scheme)
        if store.remote:
            if head.has_body():  # a GET with a body: not worth a round trip
                return self.settle(None, head, now)
            return "fetch"  # the shell awaits ``fetch``'s task, then calls settle
        entry = store.get(key, head.header, now, plan.explicit_only)
        if entry is not None and plan.any_fresh and now < entry.expires_at:  # settle's usual hit, inline
            self.entry = entry
            self.cache_status = "hit"
            return "hit"
        return self.settle(entry, head, now)

    def fetch(self, store: CacheStore, head: RequestHead, loop: asyncio.AbstractEventLoop) -> asyncio.Task:
        """The remote store's lookup for this request, as a task (``lookup`` said 'fetch')."""
        plan = self.plan
        assert plan is not None and self.key is not None
        return loop.create_task(store.fetch(self.key, head.header, loop.time(), plan.explicit_only))

    def settle(self, entry: Entry | None, head: RequestHead, now: float) -> str:
        """What the looked-up ``entry`` (None: a miss) means for this request: 'hit', 'miss'
        (forward; as a revalidation when the entry has validators) or 'only-if-cached'."""
        plan = self.plan
        assert plan is not None
        self.entry = entry
        if entry is not None and entry.satisfies(plan, now):
            self.cache_status = "hit"
            return "hit"
        if plan.only_if_cached:
            return "only-if-cached"
        self.cache_status = "miss"
        if entry is not None and entry.validators:
            head.lines, head.names = revalidation_headers(head.lines, head.names, entry.etag, entry.last_modified)
            self.revalidating = True
        return "miss"

    # -- answering from the cache ------------------------------------------------------------
    def entry_response(self, entry: Entry, head: RequestHead, now: float, stale: bool, extra: bytes,
                       connection: bytes) -> tuple[int, bytes, list[bytes], int]:
        """(status, head bytes, body chunks, body size) of a response served from ``entry``."""
        inm = self.inm
        ims = self.ims
        if not stale and (inm is not None or ims is not None) and not_modified(entry.etag, entry.last_modified,
                                                                               inm, ims):
            lines = entry.not_modified_lines(now)
            data = b"HTTP/1.1 304 Not Modified\r\n%s%s%s%s\r\n" % (b"".join(lines), self._tier_lines(), extra,
                                                                     connection)
            return 304, data, [], 0
        tier = self._tier_lines() if self.tier is not None else b""  # set with the chooser (choose_tier)
        if stale:
            length = b"" if entry.status == 204 else b"Content-Length: %d\r\n" % entry.body_size  # RFC 9110 8.6
            data = b"HTTP/1.1 %d %s\r\n%s%s%s%s%s\r\n" % (entry.status, entry.reason,
                                                         b"".join(entry.head_lines(now, stale=True)), tier, length,
                                                         extra, connection)
        else:
            # A fresh hit: the status line with the stored lines, and the Content-Length line, are
            # made once per entry (a committed body never changes; a refresh resets ``wire``);
            # per hit only Age (``entry.age``, inline) and one join of the parts.
            wire = entry.wire
            if wire is None:
                wire = entry.wire = (
                    b"HTTP/1.1 %d %s\r\n" % (entry.status, entry.reason) + b"".join(entry.lines),
                    b"" if entry.status == 204 else b"Content-Length: %d\r\n" % entry.body_size,  # RFC 9110 8.6
                )
            data = b"".join((wire[0], b"Age: %d\r\n" % int(entry.initial_age + (now - entry.stored_at)), tier,
                             wire[1], extra, connection, b"\r\n"))
        chunks = [] if head.method == b"HEAD" else entry.chunks
        return entry.status, data, chunks, entry.body_size

    def entry_headers(self, entry: Entry, head: RequestHead, now: float, stale: bool,
                      extra: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], list[bytes], int]:
        """``entry_response`` for HTTP/2: (status, header list from ``:status`` on, body chunks,
        body size). The same decisions (304 to the client's own conditional, ``age``, the stale
        ``warning``, the tier's lines); ``extra`` are the route's add_response pairs."""
        if not stale and not_modified(entry.etag, entry.last_modified, self.inm, self.ims):
            headers = [(b":status", b"304"), *_pairs(entry.not_modified_lines(now)), *_pairs(self._tier_list()),
                       *extra]
            return 304, headers, [], 0
        headers = [(b":status", b"%d" % entry.status), *_pairs(entry.head_lines(now, stale=stale)),
                   *_pairs(self._tier_list()), *extra]
        if entry.status != 204:  # RFC 9110 8.6: never in a 204
            headers.insert(len(headers) - len(extra), (b"content-length", b"%d" % entry.body_size))
        chunks = [] if head.method == b"HEAD" else entry.chunks
        return entry.status, headers, chunks, entry.body_size

    def _tier_lines(self) -> bytes:
        return b"".join(self._tier_list())

    def _tier_list(self) -> list[bytes]:
        chooser = self.chooser
        if chooser is None or self.tier is None:
            return []
        line = chooser.header_lines[self.tier.name]
        return [line, chooser.vary_line] if chooser.vary else [line]

    # -- response side ------------------------------------------------------------------------
    def revalidated(self, rh: ResponseHead, store: CacheStore, now: float, wall: float) -> Entry | None:
        """The upstream's 304 to our revalidation: refresh the entry and return it, else None."""
        entry = self.entry
        if not self.revalidating or rh.status != 304 or entry is None or self.plan is None:
            return None
        lines, names = merge_304(entry.lines, entry.names, rh.lines, rh.names)
        plan = response_plan(self.plan, entry.status, lines, names, self.ttl, wall, max(0.0, now - self.sent_at))
        if plan is not None:
            store.refresh(entry, lines, names, plan, now)
        self.cache_status = "revalidated"
        return entry

    def response_head(self, rh: ResponseHead, head: RequestHead, store: CacheStore | None, now: float,
                      wall: float) -> None:
        """Start storing the response if it may be, then add the tier's lines and maybe gzip."""
        if store is not None and self.plan is not None and self.key is not None and head.method == b"GET":
            plan = response_plan(self.plan, rh.status, rh.lines, rh.names, self.ttl, wall,
                                 max(0.0, now - self.sent_at))
            if plan is not None:
                empty = rh.status in _NO_BODY
                writer = store.begin(self.key, head.header, rh.status, rh.reason, rh.lines, rh.names, plan, now,
                                     None if empty else rh.content_length)
                if writer is not None:
                    if empty:
                        writer.commit()  # nothing follows the head: the copy is whole now
                    else:
                        self.writer = writer
        chooser = self.chooser
        tier = self.tier
        if chooser is None or tier is None:
            return
        self._tier_head(rh, head, chooser, tier)
        if tier.max_rate:
            self.pacer = Pacer(tier.max_rate, now)

    def _tier_head(self, rh: ResponseHead, head: RequestHead, chooser: TierChooser, tier: Tier) -> None:
        """gzip if the tier compresses, then Accept-CH (HTML only), the tier and its Vary.

        Our Vary is a line of its own even when the upstream sent one: Vary is a list, and
        two field lines mean their joined values (RFC 9110 5.3). The content type is found by
        one search of the lowered head, so no names list is made for it; one already made
        (the cache read the head) is kept in step."""
        if tier.compress and rh.status >= 200:
            encoding = should_compress(head.header("accept-encoding"), rh, True)
            if encoding == "gzip" and head.method != b"HEAD":
                rh.lines, rh.names = compressed_head(rh.lines, rh.names)
                rh.content_length = None
                rh.chunked = True
                self.gzip = GzipStream(compression_level(tier))
        lines = rh.lines
        names = rh._names
        if rh.status >= 200 and wants_accept_ch(lines):
            lines.append(ACCEPT_CH_LINE)
            if names is not None:
                names.append(b"accept-ch")
        lines += chooser.response_tails[tier.name]  # the tier line, and Vary (made once per profile)
        if names is not None:
            names += chooser.response_names

    def body(self, data: bytes) -> bytes:
        """Store the upstream's bytes (uncompressed), return what goes to the client."""
        writer = self.writer
        if writer is not None and not writer.append(data):
            self.writer = None  # too large for the cache: the entry was dropped
        gzip = self.gzip
        return gzip.feed(data) if gzip is not None else data

    def end(self) -> bytes:
        """The response is complete: commit the stored copy; the gzip trailer, if any."""
        writer = self.writer
        if writer is not None:
            self.writer = None
            writer.commit()
        gzip = self.gzip
        return gzip.finish() if gzip is not None else b""

    def abort(self) -> None:
        writer = self.writer
        if writer is not None:
            self.writer = None
            writer.abandon()



class TierOnly(Features):
    """The ``Features`` of every request of one tier on a route without ``cache:``, when the
    tier neither compresses nor paces: nothing in it changes per request, so one object per
    (profile, tier) serves them all (``TierChooser.shared``) and a request allocates none.

    The shells only read it (``sent_at`` is written for cached routes only; ``cache_status``
    only with a cache entry, which it never has); ``response_head`` adds the tier's lines.
    """

    def __init__(self, chooser: TierChooser, tier: Tier) -> None:
        self.chooser = chooser
        self.tier = tier
        self.tail = chooser.response_tails[tier.name]
        # What the shells read, as instance attributes: a class default read through an
        # instance is a generic lookup (type, then dict) that 3.11 does not specialise.
        self.plain = True
        self.key = None
        self.writer = None
        self.gzip = None
        self.pacer = None
        self.entry = None
        self.cache_status = None
        self.revalidating = False
        # the last Content-Type line seen at its index, and whether it is HTML (tier_head)
        self.ct_index = 0
        self.ct_line: bytes | None = None
        self.ct_html = False

    def response_head(self, rh: ResponseHead, head: RequestHead, store: CacheStore | None, now: float,
                      wall: float) -> None:
        """``Features.response_head`` for a plain tier: only its lines (``tier_head``)."""
        self.tier_head(rh)

    def tier_head(self, rh: ResponseHead) -> None:
        """Accept-CH (HTML only), the tier line and the profile's Vary: ``_tier_head`` without gzip.

        The Content-Type check remembers the last response's Content-Type line and its index:
        a head with the very same line there, and no "-" in the lines before it (so none of
        them is another spelling of Content-Type), has the same answer. Same origin, same kind
        of resource: the usual case costs a comparison and a short join, not a search."""
        lines = rh.lines
        names = rh._names
        if rh.status >= 200:
            at = self.ct_index
            if at < len(lines) and lines[at] == self.ct_line and 45 not in b"".join(lines[:at]):
                html = self.ct_html
            else:
                html = self._content_type_html(lines)
            if html:
                lines.append(ACCEPT_CH_LINE)
                if names is not None:
                    names.append(b"accept-ch")
        lines += self.tail
        if names is not None:
            names += self.chooser.response_names

    def _content_type_html(self, lines: list[bytes]) -> bool:
        """``wants_accept_ch``, remembering the Content-Type line when found the usual way."""
        before, found, _ = b"".join(lines).partition(b"Content-Type:")
        # ``45 in before`` (45 = "-") is a memchr, where a bytes operand would cost an exception
        if found and (not before or before[-1] == 10) and 45 not in before:
            at = before.count(b"\n")  # each line ends with its one LF (the parser refuses bare ones)
            line = lines[at] if at < len(lines) else b""
            if line[:13] == b"Content-Type:":
                html = _HTML_VALUES.get(line[13:-2])
                if html is None:
                    html = _remember_html(line[13:-2])
                self.ct_index, self.ct_line, self.ct_html = at, line, html
                return html
        return wants_accept_ch(lines)


def answer_cached(shell, fx: Features, found: str) -> bool:
    """A cache verdict ('hit', 'only-if-cached', 'miss') acted on by either protocol's shell
    (HTTP/1.1 connection or HTTP/2 stream: ``_serve_entry``, ``_local``): True when the request
    was answered here, False when it goes on to the upstream."""
    if found == "hit":
        shell._serve_entry(fx.entry, stale=False)
        return True
    if found == "only-if-cached":
        shell._local(504, "not in the cache (only-if-cached)")
        return True
    return False


def tier_features(chooser: TierChooser, tier: Tier) -> Features:
    """The ``Features`` of a request whose only feature is ``tier`` (a route without ``cache:``),
    when ``chooser.shared`` has none for it yet: the tier's shared ``TierOnly`` (made here,
    once), or a ``Features`` of its own when the tier gzips or paces (per-response state)."""
    if tier.compress or tier.max_rate:
        fx = Features()
        fx.chooser = chooser
        fx.tier = tier
        return fx
    fx = chooser.shared[id(tier)] = TierOnly(chooser, tier)
    return fx


def tier_memo(chooser: TierChooser, clients: ClientMeasurements, client: str, now: float,
              fx: Features) -> tuple | None:
    """What lets a connection reuse this request's tier for its next requests without hints:
    (measurement, its memo, chooser, the shared TierOnly, the upstream tier line), or None.

    The shell's check, per request: the measurement's memo is still that (chooser, tier) tuple
    (a sample clears it until the next choice remakes it; the chooser has one tuple per tier,
    so connections of a client keep their answer across samples that change nothing); the
    same chooser; ``now < fresh_until`` (not
    expired, evicted or replaced: see ``Measurement``); a head with only common headers (no
    hints; its names not made). Only for a client with a measurement (without one, "still
    none" needs the lookup this saves) and a plain tier; the caller asks only for a connection
    whose client address cannot change (not from a trusted proxy) and a head without rare headers.
    """
    if not fx.plain or chooser.header_is_common:
        return None
    entry = clients.get(client, now)
    if entry is None:
        return None
    memo = entry.memo
    if memo is None or memo[0] is not chooser or memo[1] is not fx.tier:
        return None
    return (entry, memo, chooser, fx, chooser.header_lines[fx.tier.name])


def tier_memo_holds(memo: tuple | None, chooser: TierChooser, head: RequestHead, now: float) -> bool:
    """The check ``tier_memo`` describes; proxy.py's ``_admit`` has it inline (one call less
    per request), this is its reference for the tests."""
    return (memo is not None and memo[0].memo is memo[1] and memo[2] is chooser and now < memo[0].fresh_until
            and not head.rare and head._names is None)


def wants_accept_ch(lines: list[bytes]) -> bool:
    """Whether a response with these header lines is HTML (so it gets ``Accept-CH``): its first
    Content-Type field, found case-insensitively, passes ``is_html``.

    The usual head spells the name ``Content-Type``: one exact search (``partition``) finds it,
    the lines before it are proven free of another spelling (no ``-`` at all, the usual case,
    else lowered and searched), and the answer for its value is remembered. Anything else takes
    the general way: the whole head lowered and searched.
    """
    blob = b"".join(lines)
    before, found, after = blob.partition(b"Content-Type:")
    # ``45 in before`` (45 = "-") is a memchr; a bytes operand of ``in`` would first be tried,
    # and fail, as an int: a TypeError raised and cleared (~1.5k instructions, callgrind).
    if found and (not before or before[-1] == 10) and (
        45 not in before or before.lower().find(b"content-type:") < 0
    ):
        value = after.partition(b"\r")[0]
        html = _HTML_VALUES.get(value)
        if html is None:
            html = _remember_html(value)
        return html
    blob = b"\n" + blob.lower()
    start = blob.find(b"\ncontent-type:")
    if start < 0:
        return False
    end = blob.find(b"\r", start)
    return blob.find(b"html", start, end) >= 0 and is_html(blob[start + 14 : end].decode("latin-1"))


# Content-Type values (as sent, after the colon) -> is_html: they repeat, and a dict lookup
# costs less than lowering and parsing each. Bounded: cleared when it grows past the cap.
_HTML_VALUES: dict[bytes, bool] = {}
_HTML_VALUES_MAX = 256


def _remember_html(value: bytes) -> bool:
    if len(_HTML_VALUES) >= _HTML_VALUES_MAX:
        _HTML_VALUES.clear()
    html = _HTML_VALUES[value] = is_html(value.decode("latin-1"))
    return html


def _pairs(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``b"Name: value\\r\\n"`` lines as HTTP/2 pairs (lower-case names): answers from the cache."""
    out = []
    for line in lines:
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    return out
