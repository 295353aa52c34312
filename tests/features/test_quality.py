"""Client hints, per-client measurements, tier choice, pacing and compression decisions."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.policy.model import QualityProfile, Tier, TierCondition
from edge.quality import (
    ACCEPT_CH_LINE,
    NO_HINTS,
    ClientHints,
    ClientMeasurements,
    GzipStream,
    Measurement,
    Pacer,
    TierChooser,
    accepts_gzip,
    choose_tier,
    compressed_head,
    compression_for,
    compression_level,
    is_compressible,
    is_html,
    merge_vary,
    set_header,
    should_compress,
    vary_tokens,
)
from tests.features.heads import FakeClock, header_value, request, response

MBPS = 125_000.0  # bytes per second in one megabit per second

# The SPEC's example profile.
ADAPTIVE = QualityProfile(
    tiers=(
        Tier("low", when=TierCondition(save_data=True)),
        Tier("low", when=TierCondition(downlink_below=2 * MBPS)),
        Tier("medium", when=TierCondition(downlink_below=10 * MBPS, rtt_above=0.150), max_rate=8 * MBPS,
             compress=True),
        Tier("high"),
    )
)


def measured(throughput: float | None = None, rtt: float | None = None, fresh_until: float = 1e12) -> Measurement:
    m = Measurement(0.0, fresh_until)
    m.throughput = throughput
    m.rtt = rtt
    return m


# -- hints ---------------------------------------------------------------------------------
def test_hints_from_a_request_head() -> None:
    hints = ClientHints.from_head(request("/", "Save-Data: on", "Downlink: 1.5", "ECT: 3g", "RTT: 250"))
    assert hints.save_data is True
    assert hints.downlink == pytest.approx(1.5 * MBPS)
    assert hints.ect == "3g"
    assert hints.rtt == pytest.approx(0.25)


def test_no_hints_is_the_shared_constant() -> None:
    assert ClientHints.from_head(request("/", "Accept: */*")) is NO_HINTS


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (("Save-Data: off",), (False, None, None, None)),
        (("Save-Data: ON;x=1",), (True, None, None, None)),
        (("Downlink: -3", "RTT: nan", "ECT: 5g"), (False, None, None, None)),
        (("Downlink: inf", "RTT: 1e400"), (False, None, None, None)),
        (("Downlink: 10abc", "RTT: "), (False, None, None, None)),
        (("Downlink: " + "1" * 100,), (False, None, None, None)),
        (('ECT: "4G"',), (False, None, "4g", None)),
        (("RTT: 999999",), (False, None, None, 60.0)),  # capped, still "slow"
        (("Downlink: 0",), (False, 0.0, None, None)),
    ],
)
def test_hints_are_read_robustly(headers: tuple[str, ...], expected: tuple) -> None:
    hints = ClientHints.from_head(request("/", *headers))
    assert (hints.save_data, hints.downlink, hints.ect, hints.rtt) == expected


def test_first_hint_header_counts() -> None:
    assert ClientHints.from_head(request("/", "ECT: 2g", "ECT: 4g")).ect == "2g"


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_hint_parsing_never_raises(a: str, b: str, c: str, d: str) -> None:
    hints = ClientHints.from_values(a, b, c, d)
    assert hints.downlink is None or hints.downlink >= 0
    assert hints.rtt is None or 0 <= hints.rtt <= 60


# -- measurements --------------------------------------------------------------------------
def test_small_or_quick_samples_are_ignored() -> None:
    m = ClientMeasurements()
    assert not m.observe_throughput("192.0.2.1", 10_000, 1.0, 0.0)  # too few bytes
    assert not m.observe_throughput("192.0.2.1", 10_000_000, 0.01, 0.0)  # drained too fast to tell
    assert m.get("192.0.2.1", 0.0) is None
    assert m.observe_throughput("192.0.2.1", 1_000_000, 4.0, 0.0)
    assert m.get("192.0.2.1", 0.0).throughput == pytest.approx(250_000)


def test_throughput_is_an_exponentially_weighted_average() -> None:
    m = ClientMeasurements()
    m.observe_throughput("a", 1_000_000, 1.0, 0.0)  # 1 MB/s: the first sample sets it
    m.observe_throughput("a", 1_000_000, 4.0, 1.0)  # 250 kB/s
    assert m.get("a", 1.0).throughput == pytest.approx(625_000)


def test_rtt_average_and_junk() -> None:
    m = ClientMeasurements()
    assert m.observe_rtt("a", 0.2, 0.0)
    assert m.observe_rtt("a", 0.6, 0.0)
    assert m.get("a", 0.0).rtt == pytest.approx(0.3)
    assert not m.observe_rtt("a", 0.0, 0.0)
    assert not m.observe_rtt("a", float("nan"), 0.0)
    assert not m.observe_rtt("a", 1e9, 0.0)


def test_paced_samples_are_censored() -> None:
    """A response paced at 1 MB/s drains at ~1 MB/s whatever the link: that must not pin the
    client's measurement at the pace; a clearly slower drain still counts."""
    m = ClientMeasurements()
    assert not m.observe_throughput("a", 4_000_000, 4.1, 0.0, paced_at=1_000_000)
    assert m.get("a", 0.0) is None
    assert m.observe_throughput("a", 4_000_000, 16.0, 0.0, paced_at=1_000_000)


def test_idle_clients_expire_and_memory_is_capped() -> None:
    clock = FakeClock(0.0)
    m = ClientMeasurements(max_clients=3, idle_timeout=60.0)
    for ip in ("a", "b", "c", "d"):
        m.observe_rtt(ip, 0.05, clock.now)
    assert len(m) == 3 and m.get("a", clock.now) is None  # LRU evicted
    clock.advance(61)
    assert m.get("b", clock.now) is None
    assert m.sweep(clock.now) == 2
    assert len(m) == 0


def test_a_new_sample_after_expiry_starts_over() -> None:
    m = ClientMeasurements(idle_timeout=10.0)
    m.observe_throughput("a", 100_000, 1.0, 0.0)
    m.observe_throughput("a", 10_000_000, 1.0, 20.0)
    assert m.get("a", 20.0).throughput == pytest.approx(10_000_000)


def test_measurements_carry_over_through_export_and_import() -> None:
    old = ClientMeasurements()
    old.observe_throughput("a", 1_000_000, 2.0, 0.0)
    old.observe_rtt("a", 0.1, 0.0)
    state = old.export_state(5.0)
    new = ClientMeasurements()
    new.import_state(state, 100.0)
    got = new.get("a", 100.0)
    assert got.throughput == pytest.approx(500_000) and got.rtt == pytest.approx(0.1)
    new.import_state({"b": ["x", None, 5], "c": [1.0, 2.0, -1], "d": "junk"}, 100.0)
    assert new.get("b", 100.0).throughput is None
    assert new.get("c", 100.0) is None and new.get("d", 100.0) is None


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0.001, 1.0)), max_size=200))
@settings(max_examples=50)
def test_measurements_never_exceed_the_cap(samples: list[tuple[int, float]]) -> None:
    m = ClientMeasurements(max_clients=10, idle_timeout=5.0)
    now = 0.0
    for client, step in samples:
        now += step
        m.observe_rtt(f"10.0.0.{client}", 0.05, now)
        assert len(m) <= 10


# -- tier choice ----------------------------------------------------------------------------
def names(hints: ClientHints, m: Measurement | None = None) -> str:
    return choose_tier(ADAPTIVE, hints, m, 0.0).name


def test_save_data_gets_the_low_tier() -> None:
    assert names(ClientHints(save_data=True)) == "low"


def test_no_information_gets_the_last_tier() -> None:
    assert names(NO_HINTS) == "high"
    assert names(NO_HINTS, measured()) == "high"


def test_downlink_uses_the_lower_of_hint_and_measurement() -> None:
    slow, fast = 1 * MBPS, 50 * MBPS
    assert names(ClientHints(downlink=fast), measured(throughput=slow)) == "low"
    assert names(ClientHints(downlink=slow), measured(throughput=fast)) == "low"  # a hint can only lower
    assert names(ClientHints(downlink=fast), measured(throughput=fast)) == "high"
    assert names(NO_HINTS, measured(throughput=slow)) == "low"


def test_all_conditions_of_a_tier_must_hold() -> None:
    five = 5 * MBPS
    assert names(ClientHints(downlink=five)) == "high"  # downlink holds, rtt unknown
    assert names(ClientHints(downlink=five, rtt=0.1)) == "high"
    assert names(ClientHints(downlink=five, rtt=0.2)) == "medium"
    # rtt uses the higher of hint and measurement
    assert names(ClientHints(downlink=five, rtt=0.05), measured(rtt=0.3)) == "medium"


def test_boundaries_are_strict() -> None:
    assert names(ClientHints(downlink=2 * MBPS)) == "high"  # not *below* 2mbps
    assert names(ClientHints(downlink=5 * MBPS, rtt=0.150)) == "high"  # not *above* 150ms


def test_a_tier_header_named_like_a_common_one_is_always_looked_for() -> None:
    assert not TierChooser(ADAPTIVE).header_is_common  # X-Edge-Quality
    odd = QualityProfile(tiers=ADAPTIVE.tiers, upstream_header="Accept-Language")
    assert TierChooser(odd).header_is_common


def test_a_remembered_choice_follows_new_samples() -> None:
    clients = ClientMeasurements(min_seconds=0.0)
    chooser, other = TierChooser(ADAPTIVE), TierChooser(ADAPTIVE)
    clients.observe_throughput("10.0.0.1", 10_000_000, 1.0, 0.0)  # 10 MB/s: fast
    assert chooser.choose(NO_HINTS, clients.get("10.0.0.1", 0.0), 0.0).name == "high"
    assert chooser.choose(NO_HINTS, clients.get("10.0.0.1", 0.0), 0.0).name == "high"  # remembered
    for _ in range(10):
        clients.observe_throughput("10.0.0.1", 100_000, 1.0, 0.0)  # the link got slow
    assert chooser.choose(NO_HINTS, clients.get("10.0.0.1", 0.0), 0.0).name == "low"
    slow = ADAPTIVE.__class__(tiers=(Tier("only"),))
    assert TierChooser(slow).choose(NO_HINTS, clients.get("10.0.0.1", 0.0), 0.0).name == "only"  # per chooser
    assert other.choose(NO_HINTS, clients.get("10.0.0.1", 0.0), 0.0).name == "low"


def test_expired_measurements_are_ignored() -> None:
    chooser = TierChooser(ADAPTIVE)
    m = measured(throughput=MBPS, fresh_until=10.0)
    assert chooser.choose(NO_HINTS, m, 5.0).name == "low"
    assert chooser.choose(NO_HINTS, m, 10.0).name == "high"


def test_ect_and_save_data_false() -> None:
    profile = QualityProfile(
        tiers=(
            Tier("2g", when=TierCondition(ect_in=("slow-2g", "2g"))),
            Tier("plain", when=TierCondition(save_data=False)),
            Tier("saver"),
        )
    )
    chooser = TierChooser(profile)
    assert chooser.choose(ClientHints(ect="2g"), None, 0).name == "2g"
    assert chooser.choose(ClientHints(ect="4g"), None, 0).name == "plain"
    assert chooser.choose(ClientHints(save_data=True), None, 0).name == "saver"


def test_last_tier_is_default_whatever_its_when() -> None:
    profile = QualityProfile(tiers=(Tier("only", when=TierCondition(save_data=True)),))
    assert choose_tier(profile, NO_HINTS, None, 0).name == "only"


_maybe_rate = st.none() | st.floats(0, 1e9, allow_nan=False)
_maybe_rtt = st.none() | st.floats(0, 60, allow_nan=False)


@given(
    st.booleans(), _maybe_rate, st.none() | st.sampled_from(["slow-2g", "2g", "3g", "4g"]), _maybe_rtt,
    st.none() | st.tuples(_maybe_rate, _maybe_rtt),
)
def test_tier_choice_is_total_and_first_match(save_data, downlink, ect, rtt, m) -> None:
    hints = ClientHints(save_data, downlink, ect, rtt)
    measurement = None if m is None else measured(*m)
    tier = TierChooser(ADAPTIVE).choose(hints, measurement, 0.0)
    assert tier in ADAPTIVE.tiers
    # More information about a worse link never yields a better tier than the hint alone.
    order = ["low", "medium", "high"]
    alone = TierChooser(ADAPTIVE).choose(hints, None, 0.0)
    if measurement is not None and (m[0] is None or downlink is None or m[0] <= downlink) and (
        m[1] is None or rtt is None or m[1] >= rtt
    ):
        assert order.index(tier.name) <= order.index(alone.name)


# -- header rules ----------------------------------------------------------------------------
def test_client_sent_tier_header_is_replaced() -> None:
    head = request("/", "X-Edge-Quality: high", "Accept: */*", "x-edge-quality: ultra")
    chooser = TierChooser(ADAPTIVE)
    set_header(head.lines, head.names, chooser.lheader, chooser.header_lines["low"])
    assert header_value(head.lines, "x-edge-quality") == ["low"]
    assert header_value(head.lines, "accept") == ["*/*"]
    assert len(head.lines) == len(head.names) == 2


def test_vary_tokens_follow_the_profile() -> None:
    assert vary_tokens(ADAPTIVE) == ("Save-Data", "Downlink", "RTT")
    assert TierChooser(ADAPTIVE).vary == ("Save-Data", "Downlink", "RTT")
    assert vary_tokens(QualityProfile(tiers=(Tier("one"),))) == ()


def test_merge_vary() -> None:
    head = response(200, "Vary: Accept-Encoding", "Content-Type: text/html", "vary: downlink")
    merge_vary(head.lines, head.names, ("Save-Data", "Downlink"))
    assert header_value(head.lines, "vary") == ["Accept-Encoding, downlink, Save-Data"]
    assert head.names.count(b"vary") == 1
    plain = response(200)
    merge_vary(plain.lines, plain.names, ("Save-Data",))
    assert header_value(plain.lines, "vary") == ["Save-Data"]
    star = response(200, "Vary: *")
    merge_vary(star.lines, star.names, ("Save-Data",))
    assert header_value(star.lines, "vary") == ["*"]


def test_accept_ch_only_on_html() -> None:
    assert ACCEPT_CH_LINE.startswith(b"Accept-CH: ") and ACCEPT_CH_LINE.endswith(b"\r\n")
    assert is_html("text/html; charset=utf-8") and is_html("application/xhtml+xml")
    assert not is_html("application/json") and not is_html(None)


# -- pacing ------------------------------------------------------------------------------------
def test_pacer_paces_four_mebibytes_at_eight_mbps_to_about_four_seconds() -> None:
    """The shell's loop: write the allowance, sleep (call_later) the delay, repeat."""
    clock = FakeClock(0.0)
    pacer = Pacer(8 * MBPS, clock.now)
    left = 4 * 1024 * 1024
    wakeups = 0
    while left:
        n = min(left, pacer.allowance(clock.now))
        pacer.consume(n)
        left -= n
        if left:
            clock.advance(pacer.delay_until_next(clock.now, left))
            wakeups += 1
    assert 4.1 <= clock.now <= 4.25
    assert wakeups < 100  # a timer per burst, not per byte


def test_pacer_debt_is_waited_out() -> None:
    pacer = Pacer(1000.0, 0.0, burst=100)
    pacer.consume(1100)  # a whole chunk written in one go
    assert pacer.allowance(0.0) == 0
    assert pacer.delay_until_next(0.0, 50) == pytest.approx(1.05)
    assert pacer.allowance(1.05) == 50


def test_pacer_rejects_zero_rate() -> None:
    with pytest.raises(ValueError):
        Pacer(0, 0.0)


@given(
    st.floats(1_000, 10_000_000),
    st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 1 << 20)), min_size=1, max_size=60),
)
@settings(max_examples=80)
def test_pacer_never_exceeds_rate_over_any_window(rate: float, steps: list[tuple[float, int]]) -> None:
    """Writing only the allowance, bytes in any window [t0, t1] <= burst + rate * (t1 - t0)."""
    now = 0.0
    pacer = Pacer(rate, now)
    writes: list[tuple[float, int]] = []
    for wait, want in steps:
        now += wait
        n = min(want, pacer.allowance(now))
        pacer.consume(n)
        writes.append((now, n))
    for i, (t0, _) in enumerate(writes):
        total = 0
        for t1, n in writes[i:]:
            total += n
            assert total <= pacer.burst + rate * (t1 - t0) + 1


# -- compression -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.1", True),
        ("gzip;q=0, *", False),  # the explicit entry wins
        ("identity", False),
        ("", False),
        (None, False),
        ("gzip;q=abc", False),
        ("x-gzip", True),
    ],
)
def test_accept_encoding(value: str | None, expected: bool) -> None:
    assert accepts_gzip(value) is expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html; charset=utf-8", True),
        ("text/css", True),
        ("application/json", True),
        ("application/javascript", True),
        ("application/manifest+json", True),
        ("image/svg+xml", True),
        ("application/wasm", True),
        ("image/jpeg", False),
        ("video/mp4", False),
        ("application/zip", False),
        ("application/octet-stream", False),
        ("text/event-stream", False),
        (None, False),
    ],
)
def test_compressible_types(content_type: str | None, expected: bool) -> None:
    assert is_compressible(content_type) is expected


def decide(**kw) -> str | None:
    args = dict(
        compress=True, accept_encoding="gzip", status=200, content_type="text/html", content_encoding=None,
        content_range=None, content_length=100_000, cache_control=None,
    )
    args.update(kw)
    return compression_for(**args)


def test_compression_decisions() -> None:
    assert decide() == "gzip"
    assert decide(content_length=None) == "gzip"  # chunked from upstream
    assert decide(compress=False) is None  # the tier says no
    assert decide(accept_encoding="br") is None
    assert decide(content_encoding="gzip") is None  # never twice
    assert decide(content_encoding="identity") == "gzip"
    assert decide(status=206, content_range="bytes 0-99/1000") is None  # never ranges
    assert decide(content_range="bytes 0-99/1000") is None
    assert decide(status=304) is None and decide(status=204) is None
    assert decide(content_type="image/png") is None
    assert decide(content_length=200) is None  # too small to bother
    assert decide(cache_control="public, no-transform") is None


def test_should_compress_reads_a_response_head() -> None:
    head = response(200, "Content-Type: application/json", body=b"x" * 5000)
    assert should_compress("gzip", head, True) == "gzip"
    head = response(200, "Content-Type: application/json", "Content-Encoding: br", body=b"x" * 5000)
    assert should_compress("gzip", head, True) is None


def test_level_fits_the_tier() -> None:
    assert compression_level(Tier("low", max_rate=1 * MBPS)) == 9
    assert compression_level(Tier("medium", max_rate=8 * MBPS)) == 6
    assert compression_level(Tier("high")) == 4


def test_compressed_head() -> None:
    head = response(200, "Content-Type: text/html", 'ETag: "abc"', "Accept-Ranges: bytes", "Vary: Cookie",
                    body=b"x" * 2000)
    lines, names = compressed_head(head.lines, head.names)
    assert header_value(lines, "content-encoding") == ["gzip"]
    assert header_value(lines, "etag") == ['W/"abc"']
    assert header_value(lines, "accept-ranges") == []
    assert header_value(lines, "vary") == ["Cookie, Accept-Encoding"]
    assert len(lines) == len(names)


@given(st.lists(st.binary(max_size=5000), max_size=20), st.integers(1, 9), st.booleans())
@settings(max_examples=50)
def test_gzip_stream_round_trips(chunks: list[bytes], level: int, sync: bool) -> None:
    stream = GzipStream(level, sync=sync)
    out = b"".join(stream.feed(c) for c in chunks) + stream.finish()
    assert gzip.decompress(out) == b"".join(chunks)
    assert stream.bytes_in == sum(map(len, chunks)) and stream.bytes_out == len(out)


def test_gzip_stream_flushes_each_feed() -> None:
    """Each chunk is decodable on arrival: progressive pages stay progressive."""
    stream = GzipStream(6)
    d = zlib.decompressobj(31)
    assert d.decompress(stream.feed(b"<html>" + b"a" * 1000)) == b"<html>" + b"a" * 1000
    assert d.decompress(stream.feed(b"</html>")) == b"</html>"
    assert d.decompress(stream.finish()) == b"" and d.eof
