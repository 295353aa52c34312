"""The tier's fast paths (issue 6's overhead) against the general ways they shortcut: the
one-call request decision (``TierChooser.request_tier``), the shared ``TierOnly`` of a plain
tier, and the Accept-CH check (``wants_accept_ch``). Each must answer as the general way does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.policy.model import QualityProfile, Tier, TierCondition
from edge.quality import NO_HINTS, ClientHints, ClientMeasurements, TierChooser, is_html, set_header
from edge.serve.features import Features, TierOnly, tier_features, tier_memo, tier_memo_holds, wants_accept_ch
from tests.features.heads import FakeClock, header_value, request, response

MBPS = 125_000.0
PROFILE = QualityProfile(
    tiers=(
        Tier("low", when=TierCondition(save_data=True), max_rate=2 * MBPS, compress=True),
        Tier("medium", when=TierCondition(downlink_below=10 * MBPS, rtt_above=0.150), compress=True),
        Tier("high"),
    )
)


def _reference_accept_ch(lines: list[bytes]) -> bool:
    """The check as it was before the fast path: the whole head lowered and searched."""
    blob = b"\n" + b"".join(lines).lower()
    start = blob.find(b"\ncontent-type:")
    if start < 0:
        return False
    end = blob.find(b"\r", start)
    return b"html" in blob[start:end] and is_html(blob[start + 14 : end].decode("latin-1"))


def _reference_tier(chooser: TierChooser, head, clients: ClientMeasurements, ip: str, now: float):
    """``Features.choose_tier`` as it was: ``choose`` over hints and measurement, then set_header."""
    tier = chooser.choose(ClientHints.from_head(head), clients.get(ip, now), now)
    set_header(head.lines, head.names, chooser.lheader, chooser.header_lines[tier.name])
    return tier


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ("Content-Type: text/html",),
        ("Server: x", "Content-Type: text/html; charset=utf-8"),
        ("Server: x", "Content-Type: application/octet-stream"),
        ("content-type: text/html",),  # another spelling: the general way
        ("CONTENT-TYPE: Text/HTML",),
        ("Content-Type: application/xhtml+xml",),
        ("Content-Type: text/htmlx",),  # html in it, but not HTML
        ("Content-Type: application/json", "X-Note: text/html"),
        ("X-Original-Content-Type: text/html", "Content-Type: text/plain"),  # the exact name mid-line
        ("X-Original-Content-Type: text/plain", "Content-Type: text/html"),
        ("content-type: text/plain", "Content-Type: text/html"),  # the first one counts, whatever its case
        ("content-type: text/html", "Content-Type: text/plain"),
        ("X-Frame-Options: DENY", "Content-Type: text/html"),  # a "-" before it: lowered and searched
        ("Content-Type: text/html", "Content-Type: text/plain"),
        ("Content-Type:text/html",),
    ],
)
def test_accept_ch_fast_path_answers_as_the_whole_head_search(headers: tuple[str, ...]) -> None:
    lines = response(200, *headers).lines
    assert wants_accept_ch(lines) == _reference_accept_ch(lines)
    assert wants_accept_ch(lines) == _reference_accept_ch(lines)  # remembered values too


_NAME = st.sampled_from(["Content-Type", "content-type", "CONTENT-type", "X-Content-Type", "Server", "Date", "ETag"])
_VALUE = st.sampled_from(["text/html", "Text/HTML; charset=x", "text/plain", "application/xhtml+xml", "html",
                          "a-b", "x/y-html"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=6))
def test_accept_ch_fast_path_is_the_reference_on_any_head(fields: list[tuple[str, str]]) -> None:
    lines = [f"{name}: {value}\r\n".encode("latin-1") for name, value in fields]
    assert wants_accept_ch(lines) == _reference_accept_ch(lines)


@pytest.mark.parametrize(
    "headers",
    [(), ("Accept: */*",), ("Save-Data: on",), ("Downlink: 1", "RTT: 300"), ("X-Edge-Quality: low",),
     ("Accept: */*", "x-edge-quality: ultra", "ECT: 2g")],
)
@pytest.mark.parametrize("sample", [None, "fast", "slow", "expired"])
def test_request_tier_is_choose_plus_set_header(headers: tuple[str, ...], sample: str | None) -> None:
    clock = FakeClock()
    clients = ClientMeasurements(min_seconds=0.0, idle_timeout=10.0)
    if sample == "fast":
        clients.observe_throughput("10.0.0.1", 10_000_000, 1.0, clock.now)
        clients.observe_rtt("10.0.0.1", 0.01, clock.now)
    elif sample in ("slow", "expired"):
        clients.observe_throughput("10.0.0.1", 100_000, 1.0, clock.now)
        clients.observe_rtt("10.0.0.1", 0.3, clock.now)
    if sample == "expired":
        clock.advance(11.0)
    chooser = TierChooser(PROFILE)
    for names_made in (False, True):  # the second time through the remembered choice
        fast, slow = request("/", *headers), request("/", *headers)
        if names_made:
            assert fast.names is not None  # made before the tier is chosen (a limiter read a header)
        expected = _reference_tier(chooser, slow, clients, "10.0.0.1", clock.now)
        assert chooser.request_tier(fast, clients, "10.0.0.1", clock.now) is expected
        assert fast.lines == slow.lines
        assert header_value(fast.lines, "x-edge-quality") == [expected.name]
        assert len(fast.names) == len(fast.lines)  # names, when made, stay in step


def test_request_tier_follows_new_samples_and_expiry() -> None:
    clock = FakeClock()
    clients = ClientMeasurements(min_seconds=0.0, idle_timeout=10.0)
    chooser = TierChooser(PROFILE)
    assert chooser.request_tier(request("/"), clients, "10.0.0.1", clock.now).name == "high"
    for _ in range(5):
        clients.observe_throughput("10.0.0.1", 100_000, 1.0, clock.now)
        clients.observe_rtt("10.0.0.1", 0.3, clock.now)
    assert chooser.request_tier(request("/"), clients, "10.0.0.1", clock.now).name == "medium"
    assert chooser.request_tier(request("/"), clients, "10.0.0.1", clock.now).name == "medium"  # remembered
    clock.advance(10.0)  # idle for the whole timeout: forgotten
    assert chooser.request_tier(request("/"), clients, "10.0.0.1", clock.now).name == "high"
    assert len(clients) == 0


def test_a_plain_tier_shares_one_object_and_a_stateful_tier_gets_its_own() -> None:
    chooser = TierChooser(PROFILE)
    high, medium = PROFILE.tiers[2], PROFILE.tiers[1]
    shared = tier_features(chooser, high)
    assert isinstance(shared, TierOnly) and chooser.shared[id(high)] is shared
    assert shared.plain and shared.tier is high and shared.chooser is chooser
    assert shared.key is None and shared.writer is None and shared.gzip is None and shared.pacer is None
    assert shared.entry is None and shared.cache_status is None and not shared.revalidating
    own = tier_features(chooser, medium)
    assert type(own) is Features and not own.plain and own.tier is medium
    assert tier_features(chooser, medium) is not own and id(medium) not in chooser.shared
    assert TierChooser(PROFILE).shared == {}  # a new policy load starts without


@pytest.mark.parametrize(
    "status, headers",
    [
        (200, ("Content-Type: text/html",)),
        (200, ("Content-Type: image/png", "Vary: Accept-Encoding")),
        (404, ("content-type: text/html; charset=utf-8",)),
        (304, ("ETag: \"x\"",)),
        (200, ()),
    ],
)
@pytest.mark.parametrize("names_made", [False, True])
def test_tier_only_head_is_the_features_head(status: int, headers: tuple[str, ...], names_made: bool) -> None:
    chooser = TierChooser(PROFILE)
    high = PROFILE.tiers[2]
    shared, general = response(status, *headers), response(status, *headers)
    if names_made:
        assert shared.names is not None and general.names is not None
    tier_features(chooser, high).tier_head(shared)
    fx = Features()
    fx.chooser, fx.tier = chooser, high
    fx.response_head(general, request("/"), None, 0.0, 0.0)
    assert shared.lines == general.lines
    assert shared._names == general._names
    if names_made:
        assert len(shared.names) == len(shared.lines)


def test_no_hints_requests_never_parse_hints() -> None:
    assert ClientHints.from_head(request("/", "Accept: */*")) is NO_HINTS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(_NAME, _VALUE), max_size=5), min_size=1, max_size=6))
def test_the_remembered_content_type_answers_as_the_reference(heads: list[list[tuple[str, str]]]) -> None:
    """One shared TierOnly over a sequence of heads: whatever it remembered from the previous
    ones, each head gets Accept-CH exactly when the whole-head search says HTML."""
    shared = tier_features(TierChooser(PROFILE), PROFILE.tiers[2])
    assert isinstance(shared, TierOnly)
    for fields in heads:
        lines = [f"{name}: {value}\r\n".encode("latin-1") for name, value in fields]
        rh = response(200)
        rh.lines = list(lines)
        shared.tier_head(rh)
        assert (b"Accept-CH: Save-Data, Downlink, ECT, RTT\r\n" in rh.lines) == _reference_accept_ch(lines)


def test_the_remembered_content_type_needs_the_same_line_at_the_same_place() -> None:
    shared = tier_features(TierChooser(PROFILE), PROFILE.tiers[2])
    html = ["Server: x", "Content-Type: text/html"]
    for headers, expected in [
        (html, True),
        (html, True),  # remembered
        (["Server: y", "Content-Type: text/html"], True),
        (["Content-Type: text/html"], True),  # another place
        (["Server: x", "Content-Type: text/plain"], False),  # another line
        (["Server: x", "content-type: text/plain", "Content-Type: text/html"], False),
        (["X-A: b", "Content-Type: text/html"], True),  # a "-" before it: searched
        (["x-a: b", "Content-Type: text/plain"], False),
    ]:
        rh = response(200, *headers)
        shared.tier_head(rh)
        assert (b"Accept-CH: Save-Data, Downlink, ECT, RTT\r\n" in rh.lines) == expected, headers


class _Connection:
    """proxy.py's tier-only branch of ``_admit`` for one client connection (not from a trusted proxy)."""

    def __init__(self, clients: ClientMeasurements, ip: str = "10.0.0.1") -> None:
        self.clients, self.ip, self.memo, self.reused = clients, ip, None, 0

    def tier(self, chooser: TierChooser, now: float, *headers: str):
        head = request("/", *headers)
        if tier_memo_holds(self.memo, chooser, head, now):
            head.lines.append(self.memo[4])
            fx = self.memo[3]
            self.reused += 1
        else:
            tier = chooser.request_tier(head, self.clients, self.ip, now)
            fx = chooser.shared.get(id(tier)) or tier_features(chooser, tier)
            if not head.rare:
                self.memo = tier_memo(chooser, self.clients, self.ip, now, fx)
        assert header_value(head.lines, "x-edge-quality") == [fx.tier.name]
        return fx.tier


def _reference(chooser: TierChooser, clients: ClientMeasurements, now: float, *headers: str):
    return TierChooser(chooser.profile).choose(ClientHints.from_head(request("/", *headers)),
                                               clients.get("10.0.0.1", now), now).name


def test_a_connection_keeps_its_tier_until_a_sample_expiry_or_eviction_changes_it() -> None:
    clock = FakeClock()
    clients = ClientMeasurements(min_seconds=0.0, idle_timeout=10.0, max_clients=2)
    chooser = TierChooser(PROFILE)
    conn, other = _Connection(clients), _Connection(clients)
    clients.observe_rtt("10.0.0.1", 0.01, clock.now)
    assert conn.tier(chooser, clock.now).name == "high" and conn.memo is not None
    assert conn.tier(chooser, clock.now).name == "high" and conn.reused == 1
    clients.observe_rtt("10.0.0.1", 0.02, clock.now)  # a sample: no reuse until a choice remakes the memo
    assert other.tier(chooser, clock.now).name == "high" and other.reused == 0
    assert conn.tier(chooser, clock.now).name == "high" and conn.reused == 2  # remade by the other connection
    assert conn.tier(chooser, clock.now, "Save-Data: on").name == "low"  # hints: never the memo
    assert conn.tier(chooser, clock.now).name == "high" and conn.reused == 3
    assert conn.tier(TierChooser(PROFILE), clock.now).name == "high" and conn.reused == 3  # another chooser
    for _ in range(6):  # the link turned slow: medium (gzip: not shared, never remembered)
        clients.observe_throughput("10.0.0.1", 100_000, 1.0, clock.now)
        clients.observe_rtt("10.0.0.1", 0.3, clock.now)
    assert conn.tier(chooser, clock.now).name == "medium" and conn.memo is None
    clients.observe_throughput("10.0.0.1", 100_000_000, 1.0, clock.now)  # fast again
    clients.observe_throughput("10.0.0.1", 100_000_000, 1.0, clock.now)
    assert conn.tier(chooser, clock.now).name == "high" and conn.memo is not None
    clock.advance(10.0)  # idle for the whole timeout: expired
    assert not tier_memo_holds(conn.memo, chooser, request("/"), clock.now)
    assert conn.tier(chooser, clock.now).name == "high" and conn.memo is None  # no measurement: no memo
    clients.observe_rtt("10.0.0.1", 0.01, clock.now)
    assert conn.tier(chooser, clock.now).name == "high" and conn.memo is not None
    clients.observe_rtt("10.0.0.2", 0.01, clock.now)
    clients.observe_rtt("10.0.0.3", 0.01, clock.now)  # max_clients 2: 10.0.0.1 evicted
    assert not tier_memo_holds(conn.memo, chooser, request("/"), clock.now)


def test_an_imported_measurement_replaces_a_remembered_one() -> None:
    clock = FakeClock()
    clients = ClientMeasurements(min_seconds=0.0, idle_timeout=100.0)
    chooser = TierChooser(PROFILE)
    conn = _Connection(clients)
    clients.observe_rtt("10.0.0.1", 0.01, clock.now)
    assert conn.tier(chooser, clock.now).name == "high" and conn.memo is not None
    clients.import_state({"10.0.0.1": [100_000.0, 0.3, 50.0]}, clock.now)  # a reload's slow client
    assert not tier_memo_holds(conn.memo, chooser, request("/"), clock.now)
    assert conn.tier(chooser, clock.now).name == "medium"


_STEP = st.one_of(
    st.tuples(st.just("rtt"), st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.sampled_from([0.01, 0.2, 0.5])),
    st.tuples(st.just("throughput"), st.sampled_from(["10.0.0.1", "10.0.0.2"]),
              st.sampled_from([100_000, 5_000_000, 100_000_000])),
    st.tuples(st.just("advance"), st.just(""), st.sampled_from([0.5, 4.0, 11.0])),
    st.tuples(st.just("request"), st.sampled_from([0, 1]), st.sampled_from(["", "Save-Data: on", "RTT: 400"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=30))
def test_a_remembered_tier_is_always_the_tier_chosen_afresh(steps: list[tuple]) -> None:
    clock = FakeClock()
    clients = ClientMeasurements(min_seconds=0.0, idle_timeout=10.0, max_clients=2)
    chooser = TierChooser(PROFILE)
    connections = [_Connection(clients), _Connection(clients)]
    for kind, what, value in steps:
        if kind == "rtt":
            clients.observe_rtt(what, value, clock.now)
        elif kind == "throughput":
            clients.observe_throughput(what, value, 1.0, clock.now)
        elif kind == "advance":
            clock.advance(value)
        else:
            headers = (value,) if value else ()
            expected = _reference(chooser, clients, clock.now, *headers)
            assert connections[what].tier(chooser, clock.now, *headers).name == expected


def test_tiers_of_one_name_are_shared_apart() -> None:
    """Names may repeat in a profile (the SPEC's example has two "low"), settings too may differ."""
    plain, gzipped = Tier("low", when=TierCondition(save_data=True)), Tier("low", compress=True)
    chooser = TierChooser(QualityProfile(tiers=(plain, gzipped, Tier("high"))))
    first = chooser.shared.get(id(plain)) or tier_features(chooser, plain)
    assert isinstance(first, TierOnly) and first.tier is plain
    second = chooser.shared.get(id(gzipped)) or tier_features(chooser, gzipped)
    assert type(second) is Features and second.tier is gzipped
    assert (chooser.shared.get(id(plain)) or tier_features(chooser, plain)) is first
