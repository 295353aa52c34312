"""Adaptive quality: what a client's network can take, which tier it gets, and how the tier applies.

Owns the pure decisions of the ``quality_profiles`` feature:

- ``ClientHints``: the client hints ``Save-Data``, ``Downlink``, ``ECT`` and ``RTT`` read
  from a request head, in base units (bytes per second, seconds). Garbage reads as absent.
- ``ClientMeasurements``: per client IP, exponentially weighted averages of delivered
  throughput and RTT that the shell measures; expires idle clients; hard-capped LRU.
- ``TierChooser`` / ``choose_tier``: the first tier of a profile whose ``when`` holds.
- ``Pacer``: a byte token bucket for a tier's ``max_rate`` on the write side.
- ``compression_for`` / ``GzipStream``: whether and how to gzip one response.
- Header rules: the tier header sent upstream (a client-sent one is replaced), the tier
  echoed to the client, ``Vary`` and ``Accept-CH``.

Invariants: hints and measurements can only *lower* a client's tier relative to the other
source (``downlink_below`` compares the lower of hint and measurement, ``rtt_above`` the
higher), so a client lying in its hints gains nothing but a worse tier. An unknown value
never satisfies a condition: no data means the default (last) tier.

Must not know: sockets, clocks, asyncio, TCP_INFO. Time is passed in as ``now``
(monotonic seconds); the shell measures and calls in.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict

from edge.http.h1 import is_common_request_header
from edge.policy.model import QualityProfile, Tier

__all__ = [
    "ACCEPT_CH_LINE",
    "NO_HINTS",
    "ClientHints",
    "ClientMeasurements",
    "GzipStream",
    "Measurement",
    "Pacer",
    "TierChooser",
    "accepts_gzip",
    "choose_tier",
    "compressed_head",
    "compression_for",
    "compression_level",
    "is_compressible",
    "is_html",
    "merge_vary",
    "set_header",
    "should_compress",
    "vary_tokens",
]

# -- client hints ----------------------------------------------------------------------------
# RFC 8942 / Network Information API. Chrome rounds Downlink to 25 kbps and caps it at 10 Mbps,
# and RTT to 25 ms capped at 3000 ms; we accept any sane value and cap at these bounds so a
# silly number cannot overflow anything downstream.
_MAX_DOWNLINK_MBPS = 100_000.0
_MAX_RTT_MS = 60_000.0
_MAX_HINT_LENGTH = 32  # a longer value is garbage, not a hint
_ECT_VALUES = frozenset({"slow-2g", "2g", "3g", "4g"})
_HINT_NAMES = frozenset({b"save-data", b"downlink", b"ect", b"rtt"})

# Advertised on HTML responses so browsers send the hints on the following requests.
ACCEPT_CH_LINE = b"Accept-CH: Save-Data, Downlink, ECT, RTT\r\n"


class ClientHints:
    """The hints of one request in base units; ``None`` where absent or unreadable."""

    __slots__ = ("downlink", "ect", "rtt", "save_data")

    def __init__(
        self, save_data: bool = False, downlink: float | None = None, ect: str | None = None, rtt: float | None = None
    ) -> None:
        self.save_data = save_data
        self.downlink = downlink  # bytes per second
        self.ect = ect  # one of slow-2g, 2g, 3g, 4g
        self.rtt = rtt  # seconds

    @classmethod
    def from_values(
        cls, save_data: str | None, downlink: str | None, ect: str | None, rtt: str | None
    ) -> ClientHints:
        """Parse raw header values; every problem reads as "absent"."""
        if save_data is None and downlink is None and ect is None and rtt is None:
            return NO_HINTS
        return cls(_parse_save_data(save_data), _parse_downlink(downlink), _parse_ect(ect), _parse_rtt(rtt))

    @classmethod
    def from_head(cls, head) -> ClientHints:
        """The hints of a request head (``RequestHead`` or anything with ``names``/``lines``).

        One pass over the header names; a request without hints (the usual case) returns
        the shared ``NO_HINTS`` without allocating.
        """
        names = head.names
        if _HINT_NAMES.isdisjoint(names):  # the usual request: one C-level pass
            return NO_HINTS
        found: dict[bytes, str] | None = None
        for index, name in enumerate(names):
            if name in _HINT_NAMES:
                if found is None:
                    found = {}
                if name not in found:  # the first one counts, as with RequestHead.header
                    line = head.lines[index]
                    found[name] = line[len(name) + 1 : -2].strip().decode("latin-1")
        if found is None:
            return NO_HINTS
        return cls.from_values(found.get(b"save-data"), found.get(b"downlink"), found.get(b"ect"), found.get(b"rtt"))

    def __repr__(self) -> str:
        return f"<ClientHints save_data={self.save_data} downlink={self.downlink} ect={self.ect} rtt={self.rtt}>"


NO_HINTS = ClientHints()


def _parse_save_data(value: str | None) -> bool:
    # "on", optionally with parameters ("on;foo"); anything else means off (the spec's rule).
    if not value:
        return False
    return value.split(";", 1)[0].strip().lower() == "on"


def _parse_number(value: str | None, cap: float) -> float | None:
    if not value or len(value) > _MAX_HINT_LENGTH:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return min(number, cap)


def _parse_downlink(value: str | None) -> float | None:
    mbps = _parse_number(value, _MAX_DOWNLINK_MBPS)
    return None if mbps is None else mbps * 125_000.0  # megabits -> bytes per second


def _parse_rtt(value: str | None) -> float | None:
    ms = _parse_number(value, _MAX_RTT_MS)
    return None if ms is None else ms / 1000.0


def _parse_ect(value: str | None) -> str | None:
    if not value or len(value) > _MAX_HINT_LENGTH:
        return None
    ect = value.strip().strip('"').lower()
    return ect if ect in _ECT_VALUES else None


# -- measurements ----------------------------------------------------------------------------
# Why a bounded OrderedDict and not aiocache's SimpleMemoryCache: that backend has no size
# bound and no LRU (a flood of client addresses would grow it without limit), every call is a
# coroutine (an await per request on the hot path for what is a dict lookup), and it cannot
# update a value in place. The same slotted-record-in-an-OrderedDict shape as the rate
# limiter gives a hard cap, O(1) LRU and no allocation on an update.

# 50k clients cost about 8 MB (key string + slotted record + OrderedDict node).
DEFAULT_MAX_CLIENTS = 50_000
# A client not seen for this long is forgotten: its network may have changed.
DEFAULT_IDLE_TIMEOUT = 600.0
# A response smaller than this, or drained faster than this, says nothing about the link:
# it fits in socket buffers and the drain time is the loop's, not the network's.
MIN_SAMPLE_BYTES = 64 * 1024
MIN_SAMPLE_SECONDS = 0.05
# Weight of a new sample in the average. 0.5 follows a changed link within two or three
# large responses while one odd sample cannot flip a tier on its own.
THROUGHPUT_WEIGHT = 0.5
# The kernel's TCP_INFO rtt is already smoothed (srtt), so a gentler weight suffices.
RTT_WEIGHT = 0.25
# A paced response drains at about the pace: a sample within this fraction of the pace is
# censored (the link is at least that fast) and does not pull the average down.
PACED_SAMPLE_MARGIN = 0.85
_SWEEP_PER_INSERT = 4


class Measurement:
    """One client's averages; ``None`` until measured. ``fresh_until`` bounds its use.

    While ``now < fresh_until`` and ``memo`` is the same tuple, the client's tier without hints
    is the one in ``memo``: every sample clears it, and an entry that leaves its store other
    than by expiry (evicted, replaced) gets ``fresh_until = -inf``. A connection may so keep
    its last decision (edge.serve.features.tier_memo) without looking the client up again.
    """

    __slots__ = ("fresh_until", "memo", "rtt", "stamp", "throughput")

    def __init__(self, stamp: float, fresh_until: float) -> None:
        self.throughput: float | None = None  # bytes per second
        self.rtt: float | None = None  # seconds
        self.stamp = stamp
        self.fresh_until = fresh_until
        # (TierChooser, Tier) last chosen from these averages for a request without hints;
        # cleared whenever a sample changes them.
        self.memo: tuple | None = None

    def __repr__(self) -> str:
        return f"<Measurement throughput={self.throughput} rtt={self.rtt}>"


class ClientMeasurements:
    """Per client IP averages that survive across connections; the shell feeds samples."""

    __slots__ = ("_clients", "idle_timeout", "max_clients", "min_bytes", "min_seconds")

    def __init__(
        self,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        min_bytes: int = MIN_SAMPLE_BYTES,
        min_seconds: float = MIN_SAMPLE_SECONDS,
    ) -> None:
        self.max_clients = max(1, max_clients)
        self.idle_timeout = idle_timeout
        self.min_bytes = min_bytes
        self.min_seconds = min_seconds
        self._clients: OrderedDict[str, Measurement] = OrderedDict()

    def get(self, ip: str, now: float) -> Measurement | None:
        """The client's measurement, or None when unknown or idle too long."""
        entry = self._clients.get(ip)
        if entry is None:
            return None
        if entry.fresh_until <= now:
            del self._clients[ip]
            return None
        return entry

    def _touch(self, ip: str, now: float) -> Measurement:
        clients = self._clients
        entry = clients.get(ip)
        if entry is None or entry.fresh_until <= now:
            if entry is not None:
                del clients[ip]
            self._sweep(now, _SWEEP_PER_INSERT)
            while len(clients) >= self.max_clients:
                clients.popitem(last=False)[1].fresh_until = -math.inf  # evicted: see Measurement
            entry = clients[ip] = Measurement(now, now + self.idle_timeout)
        else:
            clients.move_to_end(ip)
            entry.stamp = now
            entry.fresh_until = now + self.idle_timeout
        return entry

    def observe_throughput(
        self, ip: str, nbytes: int, seconds: float, now: float, paced_at: float | None = None
    ) -> bool:
        """One delivered response: ``nbytes`` written, drained by the socket in ``seconds``.

        Returns whether the sample counted. Too small or too quick samples are ignored. With
        ``paced_at`` (the Pacer's rate, bytes/s) a sample near the pace is ignored too: it
        measures our pacing, not the link, and would keep a client in a paced tier forever.
        """
        if nbytes < self.min_bytes or seconds < self.min_seconds or not math.isfinite(seconds):
            return False
        rate = nbytes / seconds
        if paced_at is not None and rate >= paced_at * PACED_SAMPLE_MARGIN:
            return False
        entry = self._touch(ip, now)
        old = entry.throughput
        entry.throughput = rate if old is None else old + THROUGHPUT_WEIGHT * (rate - old)
        entry.memo = None
        return True

    def observe_rtt(self, ip: str, rtt: float, now: float) -> bool:
        """A kernel RTT sample (seconds) for a connection of ``ip``; 0 or junk is ignored."""
        if not 0 < rtt < 60:  # also refuses NaN
            return False
        entry = self._touch(ip, now)
        old = entry.rtt
        entry.rtt = rtt if old is None else old + RTT_WEIGHT * (rtt - old)
        entry.memo = None
        return True

    def _sweep(self, now: float, budget: int) -> int:
        clients = self._clients
        dropped = 0
        while clients and dropped < budget:
            key = next(iter(clients))
            if clients[key].fresh_until > now:
                break  # LRU order: the rest were touched later
            del clients[key]
            dropped += 1
        return dropped

    def sweep(self, now: float) -> int:
        """Forget every idle client; for a periodic timer."""
        return self._sweep(now, len(self._clients))

    def __len__(self) -> int:
        return len(self._clients)

    # -- reload and persistence ----------------------------------------------------------
    def export_state(self, now: float) -> dict[str, list]:
        """ip -> [throughput or None, rtt or None, seconds left]; for reload and the state file."""
        return {
            ip: [m.throughput, m.rtt, m.fresh_until - now] for ip, m in self._clients.items() if m.fresh_until > now
        }

    def import_state(self, state: dict[str, list], now: float) -> None:
        clients = self._clients
        for ip, value in state.items():
            if len(clients) >= self.max_clients:
                break
            try:
                throughput, rtt, left = value
                left = min(float(left), self.idle_timeout)
            except (TypeError, ValueError):
                continue
            if not left > 0:
                continue
            entry = Measurement(now, now + left)
            entry.throughput = _finite_or_none(throughput)
            entry.rtt = _finite_or_none(rtt)
            old = clients.get(ip)
            if old is not None:
                old.fresh_until = -math.inf  # replaced: see Measurement
            clients[ip] = entry


def _finite_or_none(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


# -- tier choice ------------------------------------------------------------------------------
class _Condition:
    """A ``when`` compiled to plain attributes; ``None`` means "not part of the condition"."""

    __slots__ = ("downlink_below", "ect_in", "rtt_above", "save_data")

    def __init__(self, tier: Tier) -> None:
        when = tier.when
        self.save_data = when.save_data if when is not None else None
        self.downlink_below = when.downlink_below if when is not None else None
        self.rtt_above = when.rtt_above if when is not None else None
        self.ect_in = frozenset(when.ect_in) if when is not None and when.ect_in is not None else None


class TierChooser:
    """A profile compiled once per policy load; ``choose`` is the per-request call."""

    __slots__ = ("_conditions", "_memos", "_unsignalled", "default", "header_is_common", "header_lines", "header_name",
                 "lheader", "profile", "response_names", "response_tails", "shared", "tiers", "vary", "vary_line")

    def __init__(self, profile: QualityProfile) -> None:
        self.profile = profile
        self.tiers = profile.tiers
        # The last tier is the default whatever its ``when`` says, so it is not checked.
        self._conditions = tuple((_Condition(t), t) for t in profile.tiers[:-1])
        self.default = profile.tiers[-1]
        self.header_name = profile.upstream_header
        self.lheader = profile.upstream_header.lower().encode("latin-1")
        # a tier header named like a header the HTTP/1.1 parser files as common (odd, but
        # possible): a client-sent one cannot be told by RequestHead.rare, so always look
        self.header_is_common = is_common_request_header(self.lheader)
        # Pre-encoded ``X-Edge-Quality: NAME\r\n`` per tier name, for upstream and the client.
        self.header_lines = {
            t.name: f"{profile.upstream_header}: {t.name}\r\n".encode("latin-1") for t in profile.tiers
        }
        self.vary = vary_tokens(profile)
        # ``Vary`` for a response that has none of its own: the common case, made once.
        self.vary_line = ("Vary: " + ", ".join(self.vary) + "\r\n").encode("latin-1") if self.vary else b""
        # What a response gets per tier after any Accept-CH: the tier line, then Vary when the
        # profile has one; names parallel to it. Made once, added with one list ``+=``.
        vary_names = (b"vary",) if self.vary else ()
        vary_lines = (self.vary_line,) if self.vary else ()
        self.response_tails = {name: (line, *vary_lines) for name, line in self.header_lines.items()}
        self.response_names = (self.lheader, *vary_names)
        # Per tier (by id: names may repeat in a profile, with different settings), an object the
        # shell shares among that tier's requests (edge.serve.features fills it on first use;
        # nothing here reads it). A new policy load starts empty.
        self.shared: dict[int, object] = {}
        # Measurement.memo values: one (chooser, tier) tuple per tier, so that a memo remade after
        # a sample that changed nothing is the very same object (a connection's kept tier holds).
        self._memos = {id(t): (self, t) for t in profile.tiers}
        # The tier of a client with neither hints nor a fresh measurement (most requests).
        self._unsignalled = self._choose(NO_HINTS, None, 0.0)

    def choose(self, hints: ClientHints, measured: Measurement | None, now: float) -> Tier:
        if measured is not None and measured.fresh_until <= now:
            measured = None
        if hints is NO_HINTS:  # most requests: the answer depends on the measurement alone
            if measured is None:
                return self._unsignalled
            memo = measured.memo
            if memo is not None and memo[0] is self:
                return memo[1]
            tier = self._choose(hints, measured, now)
            measured.memo = self._memos[id(tier)]
            return tier
        return self._choose(hints, measured, now)

    def request_tier(self, head, clients: ClientMeasurements, ip: str, now: float) -> Tier:
        """The tier of one request (a ``RequestHead``), put in its head for the upstream in the
        profile's header (a client-sent one is replaced, never trusted).

        The usual request has only common headers (``head.rare`` false: no hints, nothing to
        replace) and is decided here in this one call: the client's measurement and its memo,
        as ``choose`` would, without the three calls that cost more than the dict lookup they
        wrap (87 bytecodes in three calls per request before, one call of 40 now).
        """
        if head.rare or self.header_is_common:  # hints, or a client-sent tier header, may be there
            tier = self.choose(ClientHints.from_head(head), clients.get(ip, now), now)
            set_header(head.lines, head.names, self.lheader, self.header_lines[tier.name])
            return tier
        entry = clients._clients.get(ip)
        if entry is None:
            tier = self._unsignalled
        elif entry.fresh_until <= now:
            clients.get(ip, now)  # forgets it, as a lookup does
            tier = self._unsignalled
        else:
            memo = entry.memo
            if memo is not None and memo[0] is self:
                tier = memo[1]
            else:
                tier = self._choose(NO_HINTS, entry, now)
                entry.memo = self._memos[id(tier)]
        head.lines.append(self.header_lines[tier.name])
        names = head._names  # kept in step only when already made (the parser makes none)
        if names is not None:
            names.append(self.lheader)
        return tier

    def _choose(self, hints: ClientHints, measured: Measurement | None, now: float) -> Tier:
        # The lower downlink and the higher rtt of hint and measurement (either may be None).
        downlink = hints.downlink
        rtt = hints.rtt
        if measured is not None:
            m = measured.throughput
            if m is not None and (downlink is None or m < downlink):
                downlink = m
            m = measured.rtt
            if m is not None and (rtt is None or m > rtt):
                rtt = m
        for cond, tier in self._conditions:
            if cond.save_data is not None and cond.save_data != hints.save_data:
                continue
            if cond.downlink_below is not None and (downlink is None or downlink >= cond.downlink_below):
                continue
            if cond.rtt_above is not None and (rtt is None or rtt <= cond.rtt_above):
                continue
            if cond.ect_in is not None and hints.ect not in cond.ect_in:
                continue
            return tier
        return self.default


def choose_tier(profile: QualityProfile, hints: ClientHints, measured: Measurement | None, now: float) -> Tier:
    """The first tier whose ``when`` holds, else the last (uncompiled; prefer ``TierChooser``)."""
    return TierChooser(profile).choose(hints, measured, now)


def vary_tokens(profile: QualityProfile) -> tuple[str, ...]:
    """The request headers a profile's choice depends on, for the response's ``Vary``.

    The proxy's own measurement cannot be named in ``Vary``; edge's cache keys on the tier
    itself, and downstream shared caches see the echoed tier header.
    """
    tokens: list[str] = []
    for tier in profile.tiers[:-1]:
        when = tier.when
        if when is None:
            continue
        for used, token in (
            (when.save_data is not None, "Save-Data"),
            (when.downlink_below is not None, "Downlink"),
            (when.ect_in is not None, "ECT"),
            (when.rtt_above is not None, "RTT"),
        ):
            if used and token not in tokens:
                tokens.append(token)
    return tuple(tokens)


# -- header rules ----------------------------------------------------------------------------
def set_header(lines: list[bytes], names: list[bytes], lname: bytes, line: bytes) -> None:
    """Replace every ``lname`` header with ``line`` (in place).

    For the tier header upstream: whatever the client sent under that name is dropped,
    never trusted, and exactly one line with the chosen tier goes on.
    """
    if lname in names:
        keep = [i for i, n in enumerate(names) if n != lname]
        lines[:] = [lines[i] for i in keep]
        names[:] = [names[i] for i in keep]
    lines.append(line)
    names.append(lname)


def merge_vary(lines: list[bytes], names: list[bytes], tokens: tuple[str, ...]) -> None:
    """Add ``tokens`` to the response's ``Vary`` (in place), once each, case-insensitively.

    ``Vary: *`` already covers everything and is left alone.
    """
    if not tokens:
        return
    present: list[str] = []
    first = -1
    for index, name in enumerate(names):
        if name == b"vary":
            if first < 0:
                first = index
            value = lines[index][5:-2].decode("latin-1")
            present.extend(t.strip() for t in value.split(",") if t.strip())
    lower = {t.lower() for t in present}
    if "*" in lower:
        return
    missing = [t for t in tokens if t.lower() not in lower]
    if not missing:
        return
    line = ("Vary: " + ", ".join(present + missing) + "\r\n").encode("latin-1")
    if first < 0:
        lines.append(line)
        names.append(b"vary")
        return
    keep = [i for i, n in enumerate(names) if n != b"vary" or i == first]
    lines[:] = [line if i == first else lines[i] for i in keep]
    names[:] = [names[i] for i in keep]


def _header(lines: list[bytes], names: list[bytes], lname: bytes) -> str | None:
    for index, name in enumerate(names):
        if name == lname:
            return lines[index][len(lname) + 1 : -2].strip().decode("latin-1")
    return None


def is_html(content_type: str | None) -> bool:
    """Whether ``Accept-CH`` belongs on this response (HTML documents only)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml")


# -- pacing ----------------------------------------------------------------------------------
# The bucket holds this long at the paced rate, and never less than MIN_BURST: small enough
# that a 4 MiB download at 1 MB/s takes ~4 s, large enough that the shell wakes at most
# about 20 times a second per paced response.
BURST_SECONDS = 0.05
MIN_BURST = 16 * 1024


class Pacer:
    """A byte token bucket for one response (or one connection) paced at ``rate`` bytes/s.

    The shell writes at most ``allowance(now)`` bytes, ``consume``s what it wrote, and
    when bytes are left over schedules itself with ``loop.call_later(delay_until_next(now))``
    (pausing the upstream read meanwhile): one timer per burst, never a sleep per chunk.
    Over any window of ``t`` seconds at most ``burst + rate * t`` bytes go out.
    """

    __slots__ = ("burst", "quantum", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float, burst: int | None = None) -> None:
        if not rate > 0:
            raise ValueError("rate must be above zero")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MIN_BURST, rate * BURST_SECONDS))
        # The smallest write worth a wake-up: half a burst.
        self.quantum = max(1, int(self.burst // 2))
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now

    def allowance(self, now: float) -> int:
        """Whole bytes that may be written now (0 while in debt)."""
        self._refill(now)
        tokens = self.tokens
        return int(tokens) if tokens > 0 else 0

    def consume(self, nbytes: int) -> None:
        """Account ``nbytes`` written. Writing more than the allowance runs a debt that
        ``delay_until_next`` makes the shell wait out (for a shell that writes whole chunks)."""
        self.tokens -= nbytes

    def delay_until_next(self, now: float, want: int | None = None) -> float:
        """Seconds until ``want`` bytes (default: one quantum, capped at the burst) may go."""
        self._refill(now)
        need = float(self.quantum if want is None else min(want, self.burst))
        missing = need - self.tokens
        return missing / self.rate if missing > 0 else 0.0


# -- compression ------------------------------------------------------------------------------
# Not worth a gzip header and a chunked response below this (and small bodies barely shrink).
MIN_COMPRESS_LENGTH = 1024
_COMPRESSIBLE_EXACT = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/wasm",  # wasm modules shrink by half or more
        "application/vnd.ms-fontobject",
        "application/x-font-ttf",
        "application/graphql-response+json",
        "image/svg+xml",
        "image/x-icon",
        "image/bmp",
        "font/ttf",
        "font/otf",
    }
)
# Text that must reach the client as it is produced; gzip would hold it back.
_NEVER_COMPRESS = frozenset({"text/event-stream"})


def is_compressible(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _NEVER_COMPRESS:
        return False
    if media.startswith("text/") or media in _COMPRESSIBLE_EXACT:
        return True
    return media.endswith("+json") or media.endswith("+xml")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` admits gzip (RFC 9110 12.5.3: q=0 refuses; ``*`` covers)."""
    if not accept_encoding:
        return False
    star = False
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding == "*":
            star = q > 0
        else:
            return q > 0  # an explicit gzip entry decides, whatever ``*`` says
    return star


def compression_for(
    compress: bool,
    accept_encoding: str | None,
    status: int,
    content_type: str | None,
    content_encoding: str | None,
    content_range: str | None,
    content_length: int | None,
    cache_control: str | None = None,
) -> str | None:
    """``"gzip"`` when this response should be compressed on the way out, else None.

    Never twice (any Content-Encoding but identity), never ranges (206 or Content-Range),
    never bodiless statuses, never ``Cache-Control: no-transform`` (RFC 9110 7.7), only
    compressible media types, and only bodies of at least ``MIN_COMPRESS_LENGTH`` (or of
    unknown length).
    """
    if not compress or status < 200 or status in (204, 206, 304):
        return None
    if content_encoding and content_encoding.strip().lower() != "identity":
        return None
    if content_range is not None:
        return None
    if content_length is not None and content_length < MIN_COMPRESS_LENGTH:
        return None
    if not is_compressible(content_type):
        return None
    if cache_control and "no-transform" in cache_control.lower():
        return None
    if not accepts_gzip(accept_encoding):
        return None
    return "gzip"


def should_compress(accept_encoding, head, compress: bool) -> str | None:
    """``compression_for`` over a ``ResponseHead`` (status, lines, names, content_length)."""
    lines, names = head.lines, head.names
    return compression_for(
        compress,
        accept_encoding,
        head.status,
        _header(lines, names, b"content-type"),
        _header(lines, names, b"content-encoding"),
        _header(lines, names, b"content-range"),
        head.content_length,
        _header(lines, names, b"cache-control"),
    )


# zlib level by the tier's pace: the slower the client's link, the more CPU a byte saved
# is worth. zlib 6 compresses text at ~50 MB/s per core and 9 at ~15 MB/s, both far above
# a paced link; an unpaced (fast) tier gets 4, near 6's ratio at ~1.5x its speed.
_LEVELS = ((250_000.0, 9), (1_250_000.0, 6))  # (max_rate at or below, level): <=2mbps, <=10mbps
_LEVEL_FAST = 4


def compression_level(tier: Tier) -> int:
    rate = tier.max_rate
    if rate is not None:
        for bound, level in _LEVELS:
            if rate <= bound:
                return level
    return _LEVEL_FAST


def compressed_head(lines: list[bytes], names: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The response header lines once gzipped: ``Content-Encoding: gzip`` added, a strong
    ``ETag`` made weak (the bytes differ from the origin's), ``Accept-Ranges`` dropped, and
    ``Vary: Accept-Encoding``. The shell drops Content-Length and sends chunked (HTTP/1.1)
    or lets the stream end mark the end (HTTP/2, HTTP/1.0 close)."""
    out_lines: list[bytes] = []
    out_names: list[bytes] = []
    for line, name in zip(lines, names):
        if name in (b"accept-ranges", b"content-length", b"content-md5"):
            continue
        if name == b"etag":
            value = line[5:-2].strip()
            if not value.startswith(b"W/"):
                line = b"ETag: W/" + value + b"\r\n"
        out_lines.append(line)
        out_names.append(name)
    out_lines.append(b"Content-Encoding: gzip\r\n")
    out_names.append(b"content-encoding")
    merge_vary(out_lines, out_names, ("Accept-Encoding",))
    return out_lines, out_names


class GzipStream:
    """Streaming gzip for one response body: ``feed`` each chunk, ``finish`` at the end.

    Every ``feed`` ends with a sync flush, so what the upstream sent reaches the client now
    (a server-rendered page arriving in pieces stays progressive) at a cost of 5 bytes and
    a little ratio per upstream read (reads are up to 64 KiB, so it is small).
    """

    __slots__ = ("_z", "bytes_in", "bytes_out", "sync")

    def __init__(self, level: int = 6, sync: bool = True) -> None:
        # wbits 31 = 16 + 15: a gzip header and trailer around a 32 KiB-window deflate stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31, 8)
        self.sync = sync
        self.bytes_in = 0
        self.bytes_out = 0

    def feed(self, data: bytes) -> bytes:
        z = self._z
        self.bytes_in += len(data)
        out = z.compress(data)
        if self.sync:
            out += z.flush(zlib.Z_SYNC_FLUSH)
        self.bytes_out += len(out)
        return out

    def finish(self) -> bytes:
        out = self._z.flush(zlib.Z_FINISH)
        self.bytes_out += len(out)
        return out
