"""Token buckets, memory bounds, bans, headers and key specs, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.policy.model import Ban, RateLimit
from edge.ratelimit import ALLOWED, KeySpec, RateLimiter, cookie_value
from tests.policy_logic.fakes import FakeClock


def limiter(rate: float = 10.0, burst: int = 20, ban: Ban | None = None, **kw) -> RateLimiter:
    return RateLimiter("per_client", RateLimit(rate=rate, burst=burst, ban=ban), **kw)


def test_burst_then_reject_then_refill() -> None:
    clock = FakeClock()
    lim = limiter(rate=10, burst=20)
    assert all(lim.take("1.2.3.4", clock.now) is ALLOWED for _ in range(20))
    rejected = lim.take("1.2.3.4", clock.now)
    assert not rejected.allowed
    assert rejected.retry_after == 1  # 0.1 s to the next token, rounded up to whole seconds
    assert rejected.remaining == 0
    assert lim.rejected == 1
    clock.advance(0.1)
    assert lim.take("1.2.3.4", clock.now) is ALLOWED
    assert not lim.take("1.2.3.4", clock.now).allowed


def test_keys_are_independent() -> None:
    lim = limiter(rate=1, burst=2)
    assert lim.take("a", 0.0).allowed and lim.take("a", 0.0).allowed
    assert not lim.take("a", 0.0).allowed
    assert lim.take("b", 0.0) is ALLOWED


def test_retry_after_is_whole_seconds_for_slow_rates() -> None:
    lim = limiter(rate=1 / 60, burst=1)  # 1/m
    assert lim.take("k", 0.0).allowed
    decision = lim.take("k", 0.0)
    assert decision.retry_after == 60 and decision.reset == 60
    decision = lim.take("k", 59.5)
    assert decision.retry_after == 1


def test_never_delays_only_admits_or_rejects() -> None:
    """No queueing: a rejected request costs no token, so the next token arrives on time."""
    lim = limiter(rate=1, burst=1)
    lim.take("k", 0.0)
    for _ in range(100):
        assert not lim.take("k", 0.5).allowed
    assert lim.take("k", 1.0).allowed


def test_headers_follow_draft() -> None:
    lim = limiter(rate=10, burst=20)
    assert lim.policy_header == '"per_client";q=20;w=2'
    for _ in range(20):
        lim.take("k", 0.0)
    decision = lim.take("k", 0.0)
    headers = dict(lim.headers(decision))
    assert headers == {
        "Retry-After": "1",
        "RateLimit-Policy": '"per_client";q=20;w=2',
        "RateLimit": '"per_client";r=0;t=1',
    }


def test_policy_header_escapes_and_rounds_window_up() -> None:
    lim = RateLimiter('we"ird', RateLimit(rate=3, burst=10))
    assert lim.policy_header == '"we\\"ird";q=10;w=4'


def test_peek_reports_without_taking() -> None:
    lim = limiter(rate=10, burst=20)
    assert lim.peek("k", 0.0) == (20, 0)
    lim.take("k", 0.0)
    assert lim.peek("k", 0.0) == (19, 1)
    assert lim.peek("k", 0.0) == (19, 1)


def test_idle_full_buckets_expire() -> None:
    clock = FakeClock()
    lim = limiter(rate=10, burst=20)  # an empty bucket is full again after 2 s
    for i in range(50):
        lim.take(f"10.0.0.{i}", clock.now)
    assert len(lim) == 50
    clock.advance(1.9)
    assert lim.sweep(clock.now) == 0
    clock.advance(0.2)
    assert lim.sweep(clock.now) == 50
    assert len(lim) == 0


def test_new_keys_reclaim_expired_buckets_on_the_way() -> None:
    clock = FakeClock()
    lim = limiter(rate=10, burst=20)
    for i in range(100):
        lim.take(f"old{i}", clock.now)
    clock.advance(5)
    for i in range(30):
        lim.take(f"new{i}", clock.now)
    # each insert reclaims a few expired buckets without a full sweep
    assert len(lim) < 100


def test_hard_cap_evicts_least_recently_used() -> None:
    lim = limiter(rate=0.001, burst=5, max_keys=100)
    for i in range(100):
        lim.take(f"k{i}", 0.0)
    lim.take("k0", 0.0)  # k0 becomes most recently used
    for i in range(100, 150):
        lim.take(f"k{i}", 0.0)
    assert len(lim) == 100
    assert lim.tokens("k0", 0.0) == 3.0  # kept: used recently
    assert lim.tokens("k1", 0.0) == 5.0  # evicted: reads as full


def test_flood_of_distinct_keys_stays_bounded() -> None:
    lim = limiter(rate=1, burst=1, max_keys=1000)
    for i in range(20_000):
        lim.take(f"attacker-{i}", i * 0.0001)
    assert len(lim) <= 1000


def test_ban_reported_once_when_after_exceeded() -> None:
    clock = FakeClock()
    lim = limiter(rate=1, burst=1, ban=Ban(after=5, within=60.0, for_=3600.0))
    lim.take("bad", clock.now)
    bans = []
    for _ in range(20):
        clock.advance(0.01)
        decision = lim.take("bad", clock.now)
        assert not decision.allowed
        if decision.ban_for:
            bans.append(decision.ban_for)
    assert bans == [3600.0]


def test_no_ban_for_rejections_spread_over_time() -> None:
    clock = FakeClock()
    lim = limiter(rate=1, burst=1, ban=Ban(after=5, within=10.0, for_=60.0))
    for _ in range(30):
        lim.take("slowpoke", clock.now)  # admitted
        decision = lim.take("slowpoke", clock.now)  # one rejection every 5 s
        assert not decision.allowed and not decision.ban_for
        clock.advance(5.0)


def test_ban_can_be_reported_again_after_it_lapses() -> None:
    clock = FakeClock()
    lim = limiter(rate=0.001, burst=1, ban=Ban(after=2, within=10.0, for_=30.0))
    lim.take("k", clock.now)
    reports = [lim.take("k", clock.now).ban_for for _ in range(5)]
    assert reports.count(30.0) == 1
    clock.advance(31)
    reports = [lim.take("k", clock.now).ban_for for _ in range(5)]
    assert reports.count(30.0) == 1


def test_export_import_carries_tokens_and_bans() -> None:
    old = limiter(rate=1, burst=10, ban=Ban(after=1, within=60.0, for_=100.0))
    for _ in range(13):
        old.take("a", 50.0)
    old.take("b", 50.0)
    state = old.export_state(52.0)
    assert state["buckets"].keys() == {"a"}  # b refilled to full: absent means full
    assert math.isclose(state["buckets"]["a"], 2.0)
    assert state["bans"] and math.isclose(state["bans"]["a"], 98.0)
    # a new process: its clock starts somewhere else entirely
    new = limiter(rate=1, burst=10, ban=Ban(after=1, within=60.0, for_=100.0))
    new.import_state(state, 7.0)
    assert math.isclose(new.tokens("a", 7.0), 2.0)
    assert new.take("a", 7.0).allowed and new.take("a", 7.0).allowed
    decision = new.take("a", 7.0)
    assert not decision.allowed and decision.ban_for == 0.0  # still banned: not reported twice


def test_import_clamps_to_a_lowered_burst() -> None:
    old = limiter(rate=0.001, burst=100)
    old.take("full-ish", 0.0)  # 99 tokens
    for _ in range(95):
        old.take("drained", 0.0)  # 5 tokens
    new = limiter(rate=0.001, burst=10)
    new.carry_over(old, 0.0)
    assert new.tokens("full-ish", 0.0) == 10.0
    assert math.isclose(new.tokens("drained", 0.0), 5.0)


def test_import_ignores_garbage_values() -> None:
    lim = limiter()
    lim.import_state({"buckets": {"x": float("nan"), "y": -5.0, "z": 1e9}}, 0.0)
    assert lim.tokens("y", 0.0) == 0.0
    assert lim.tokens("z", 0.0) == 20.0
    assert lim.tokens("x", 0.0) == 20.0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=500),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=200
    ),
)
def test_property_bucket_within_bounds(rate: float, burst: int, steps: list[tuple[float, str]]) -> None:
    lim = limiter(rate=rate, burst=burst)
    now = 0.0
    admitted = 0
    for dt, key in steps:
        now += dt
        decision = lim.take(key, now)
        admitted += decision.allowed
        if not decision.allowed:
            assert decision.retry_after >= 1 and isinstance(decision.retry_after, int)
        for k in "abc":
            assert 0.0 <= lim.tokens(k, now) <= burst
    # never more than burst plus what the rate refilled, per key
    assert admitted <= 3 * burst + rate * now + 3


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=300),
)
def test_property_admitted_never_exceeds_budget(rate: float, burst: int, gaps: list[float]) -> None:
    lim = limiter(rate=rate, burst=burst)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += lim.take("k", now).allowed
        assert admitted <= burst + rate * now + 1e-6


def test_key_specs() -> None:
    headers = {"x-api-key": "secret-1", "cookie": 'a=1; sid="abc" ; b=2'}
    get = headers.get
    assert KeySpec("client_ip").key("192.0.2.1", get, "cloud") == "192.0.2.1"
    assert KeySpec("route").key("192.0.2.1", get, "cloud") == "cloud"
    assert KeySpec("header:X-Api-Key").key("192.0.2.1", get, "cloud") == "secret-1"
    assert KeySpec("cookie:sid").key("192.0.2.1", get, "cloud") == "abc"
    # missing header or cookie: the client's own bucket, not one shared by everyone
    assert KeySpec("header:X-Other").key("192.0.2.1", get, "cloud") == "ip:192.0.2.1"
    assert KeySpec("cookie:nope").key("192.0.2.1", get, "cloud") == "ip:192.0.2.1"
    long_value = {"x-api-key": "v" * 10_000}.get
    assert len(KeySpec("header:x-api-key").key("1.1.1.1", long_value, "r")) == 256
    with pytest.raises(ValueError):
        KeySpec("body:foo")


def test_cookie_value() -> None:
    assert cookie_value(None, "a") is None
    assert cookie_value("a=1;b=2", "b") == "2"
    assert cookie_value("ab=1", "a") is None


@settings(max_examples=100, deadline=None)
@given(
    takes=st.lists(st.tuples(st.floats(min_value=0, max_value=3), st.sampled_from("abcde")), max_size=100),
    offset=st.floats(min_value=-1e6, max_value=1e6),
)
def test_property_export_import_round_trip(takes: list[tuple[float, str]], offset: float) -> None:
    """Export then import on another clock origin: every key has the same tokens."""
    old = limiter(rate=2, burst=7)
    now = 0.0
    for dt, key in takes:
        now += dt
        old.take(key, now)
    new = limiter(rate=2, burst=7)
    new.import_state(old.export_state(now), now + offset)
    for key in "abcde":
        assert math.isclose(new.tokens(key, now + offset), old.tokens(key, now), abs_tol=1e-9)


def test_policy_name_is_a_valid_structured_field_string() -> None:
    lim = RateLimiter("größe\\x", RateLimit(rate=1, burst=1))
    assert lim.policy_header == '"gr??e\\\\x";q=1;w=1'


def test_ban_within_zero_does_not_divide_by_zero() -> None:
    lim = limiter(rate=0.001, burst=1, ban=Ban(after=1, within=0.0, for_=5.0))
    lim.take("k", 0.0)
    assert [lim.take("k", 0.0).ban_for for _ in range(3)].count(5.0) <= 1


# -- shared buckets (state.redis_url): counting, reporting, adopting ------------------------


def test_a_shared_limiter_counts_what_it_takes_and_reports_once() -> None:
    limiter = RateLimiter("api", RateLimit(rate=1.0, burst=3.0))
    limiter.take("a", 0.0)
    assert limiter.taken is None  # not shared: nothing counted
    limiter.share()
    for _ in range(5):
        limiter.take("a", 0.0)  # 2 admitted, 3 rejected: only admissions count
    limiter.take("b", 0.0)
    assert sorted(limiter.report(10)) == [("a", 2), ("b", 1)]
    assert limiter.report(10) == []


def test_report_batches_are_bounded_and_lose_nothing() -> None:
    limiter = RateLimiter("api", RateLimit(rate=1.0, burst=3.0))
    limiter.share()
    for n in range(7):
        limiter.take(f"k{n}", 0.0)
    first, second = limiter.report(5), limiter.report(5)
    assert len(first) == 5 and len(second) == 2
    assert {k for k, _ in first + second} == {f"k{n}" for n in range(7)}


def test_adopting_the_shared_level_keeps_takes_made_since_the_report() -> None:
    limiter = RateLimiter("api", RateLimit(rate=1.0, burst=10.0))
    limiter.share()
    limiter.take("a", 0.0)
    limiter.report(10)  # reported 1; meanwhile another instance took 8 of the shared bucket
    limiter.take("a", 0.0)  # taken here after the report
    limiter.adopt("a", 1.0, 0.0)  # shared level: 10 - 1 - 8
    assert limiter.tokens("a", 0.0) == 0.0  # 1 shared, less the 1 taken since
    assert limiter.take("a", 0.0) is not ALLOWED
    assert limiter.tokens("a", 1.0) == 1.0  # and it refills at the rate as before


def test_adopting_a_key_never_seen_here_starts_its_bucket() -> None:
    limiter = RateLimiter("api", RateLimit(rate=1.0, burst=5.0))
    limiter.share()
    limiter.adopt("a", 0.0, 0.0)
    assert limiter.take("a", 0.0) is not ALLOWED
    limiter.adopt("b", 9.0, 0.0)  # levels are clamped to this limit's burst
    assert limiter.tokens("b", 0.0) == 5.0 and len(limiter) == 1


def test_unreported_takes_survive_a_reload() -> None:
    old = RateLimiter("api", RateLimit(rate=1.0, burst=5.0))
    old.share()
    old.take("a", 0.0)
    new = RateLimiter("api", RateLimit(rate=2.0, burst=5.0))
    new.share()
    new.carry_over(old, 0.0)
    assert new.report(10) == [("a", 1)]


def test_unreported_takes_are_bounded_like_the_buckets() -> None:
    limiter = RateLimiter("api", RateLimit(rate=1.0, burst=3.0), max_keys=100)
    limiter.share()
    for n in range(1000):  # a flood of distinct keys while reports lag (or Redis is down)
        limiter.take(f"k{n}", 0.0)
    assert limiter.taken is not None and len(limiter.taken) == 100
    limiter.take("k0", 0.0)  # a key already counted keeps counting
    assert limiter.taken["k0"] == 2
    assert [k for k, _ in limiter.report(3)] == ["k0", "k1", "k2"]  # oldest first
