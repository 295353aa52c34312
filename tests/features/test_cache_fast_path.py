"""The cache hit's fast paths (issue 6's cache-hit benchmark) against the general ways they
shortcut: the inline fresh-hit decision (``RequestPlan.any_fresh``), the joined key, and the
hit's head made from per-entry parts (``Entry.wire``). Each must give the same answer and bytes."""

from __future__ import annotations

import pytest

from edge.cache.policy import PLAIN_GET, cache_key, merge_304, request_plan, response_plan
from edge.cache.store import MemoryStore
from edge.policy.model import QualityProfile, Tier
from edge.quality import TierChooser
from edge.serve.features import Features
from tests.features.heads import FakeClock, request, response

WALL = 1_700_000_000.0


@pytest.mark.parametrize("host, target, tier, scheme", [
    (b"Cloud.Example.com", b"/a?b=c", None, b"https"), (b"x", b"/", "low", b""), (b"", b"*", "", b"http"),
])
def test_cache_key_is_the_concatenation_it_was(host: bytes, target: bytes, tier: str | None, scheme: bytes) -> None:
    old = scheme + b"|" + host.lower() + b"|" + target
    if tier:
        old += b"|" + tier.encode("latin-1")
    assert cache_key(host, target, tier, scheme) == old


@pytest.mark.parametrize("cache_control", [None, "no-cache", "max-age=0", "max-age=5", "min-fresh=30", "max-stale=9",
                                           "only-if-cached"])
def test_any_fresh_means_satisfied_whenever_fresh(cache_control: str | None) -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20)
    entry = _stored(store, "/p", clock.now, "Cache-Control: max-age=60")
    plan = request_plan(b"GET", cache_control=cache_control)
    for age in (0.0, 10.0, 40.0, 59.0, 61.0):
        now = clock.now + age
        if plan.any_fresh:
            assert entry.satisfies(plan, now) == (now < entry.expires_at)
    assert request_plan(b"GET").any_fresh and PLAIN_GET.any_fresh


def _stored(store: MemoryStore, target: str, now: float, *headers: str, status: int = 200, body: bytes = b"hello",
            tier: str | None = None):
    head = request(target)
    rh = response(status, *headers, body=body)
    plan = response_plan(PLAIN_GET, status, rh.lines, rh.names, 60.0, WALL)
    assert plan is not None
    writer = store.begin(cache_key(b"cloud.example.com", target.encode(), tier, b"https"), head.header, status,
                         rh.reason, rh.lines, rh.names, plan, now, None)
    assert writer is not None
    if body:
        assert writer.append(body)
    return writer.commit()


def _old_head(entry, now: float, tier: bytes, extra: bytes, connection: bytes) -> bytes:
    """A fresh hit's head as entry_response made it before ``Entry.wire``."""
    block = b"".join(entry.lines) + b"Age: %d\r\n" % int(entry.age(now))
    length = b"" if entry.status == 204 else b"Content-Length: %d\r\n" % entry.body_size
    return b"HTTP/1.1 %d %s\r\n%s%s%s%s%s\r\n" % (entry.status, entry.reason, block, tier, length, extra, connection)


@pytest.mark.parametrize("status, body", [(200, b"hello"), (204, b""), (404, b"gone")])
@pytest.mark.parametrize("with_tier", [False, True])
def test_a_fresh_hit_s_head_is_byte_for_byte_the_old_one(status: int, body: bytes, with_tier: bool) -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20)
    profile = QualityProfile(tiers=(Tier("only"),))
    chooser = TierChooser(profile) if with_tier else None
    entry = _stored(store, "/h", clock.now, "Content-Type: text/plain", "Cache-Control: max-age=60", status=status,
                    body=body, tier="only" if with_tier else None)
    for step, (extra, connection) in enumerate([(b"", b""), (b"X-A: 1\r\n", b"Connection: close\r\n")] * 2):
        now = clock.advance(7.3 * step)
        fx = Features()
        if chooser is not None:
            fx.chooser, fx.tier = chooser, profile.tiers[0]
        head = request("/h")
        assert fx.lookup(store, head, b"https", 60.0, now) == "hit" and fx.entry is entry
        assert fx.cache_status == "hit"
        got_status, data, chunks, size = fx.entry_response(entry, head, now, False, extra, connection)
        assert data == _old_head(entry, now, fx._tier_lines(), extra, connection)
        assert got_status == status and size == len(body) and chunks == entry.chunks
    assert entry.wire is not None  # made once, on the first hit


def test_a_refreshed_entry_s_hit_shows_the_new_lines() -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20)
    entry = _stored(store, "/r", clock.now, 'ETag: "1"', "Cache-Control: max-age=60", "X-Version: 1")
    fx = Features()
    assert fx.lookup(store, request("/r"), b"https", 60.0, clock.now) == "hit"
    fx.entry_response(entry, request("/r"), clock.now, False, b"", b"")
    assert entry.wire is not None and b"X-Version: 1" in entry.wire[0]
    not_modified = response(304, 'ETag: "1"', "Cache-Control: max-age=60", "X-Version: 2")
    lines, names = merge_304(entry.lines, entry.names, not_modified.lines, not_modified.names)
    plan = response_plan(PLAIN_GET, 200, lines, names, 60.0, WALL)
    store.refresh(entry, lines, names, plan, clock.advance(100.0))
    assert entry.wire is None
    fx = Features()
    assert fx.lookup(store, request("/r"), b"https", 60.0, clock.now) == "hit"
    _, data, _, _ = fx.entry_response(entry, request("/r"), clock.now, False, b"", b"")
    assert b"X-Version: 2" in data and b"X-Version: 1" not in data
    assert data == _old_head(entry, clock.now, b"", b"", b"")


def test_a_stale_or_conditional_request_still_takes_the_general_way() -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20)
    entry = _stored(store, "/c", clock.now, 'ETag: "v"', "Cache-Control: max-age=60")
    fx = Features()
    head = request("/c", 'If-None-Match: "v"')
    assert fx.lookup(store, head, b"https", 60.0, clock.now) == "hit"
    status, data, chunks, size = fx.entry_response(entry, head, clock.now, False, b"", b"")
    assert status == 304 and data.startswith(b"HTTP/1.1 304 ") and chunks == [] and size == 0
    fx = Features()
    assert fx.lookup(store, request("/c", "Cache-Control: max-age=0"), b"https", 60.0, clock.now) == "miss"
    assert fx.revalidating  # no-cache by max-age=0: a revalidation, not a hit
    later = clock.advance(61.0)
    fx = Features()
    assert fx.lookup(store, request("/c"), b"https", 60.0, later) == "miss"
    status, data, _, _ = fx.entry_response(entry, request("/c"), later, True, b"", b"")
    assert status == 200 and b"Warning: 110" in data and b"Age: 61\r\n" in data
