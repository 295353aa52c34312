"""The bounded memory store: streaming fill, LRU by bytes, Vary, freshness, stale fallback, 304 refresh."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cache.policy import PLAIN_GET, ResponsePlan, cache_key, merge_304, request_plan, response_plan
from edge.cache.store import CHUNK_OVERHEAD, ENTRY_OVERHEAD, EntryWriter, MemoryStore
from tests.features.heads import FakeClock, header_value, request, response

WALL = 1_700_000_000.0
KEY = cache_key(b"cloud.example.com", b"/photo")


def no_headers(name: str) -> str | None:
    return None


def plan_of(*headers: str, status: int = 200, ttl: float = 60.0) -> ResponsePlan:
    head = response(status, *headers)
    plan = response_plan(PLAIN_GET, head.status, head.lines, head.names, ttl, WALL)
    assert plan is not None
    return plan


def fill(store: MemoryStore, key: bytes, body: list[bytes], now: float, *headers: str, get_header=no_headers,
         content_length: int | None = None):
    head = response(200, "Content-Type: text/plain", *headers)
    plan = response_plan(PLAIN_GET, 200, head.lines, head.names, 60.0, WALL)
    writer = store.begin(key, get_header, 200, b"OK", head.lines, head.names, plan, now, content_length)
    if writer is None:
        return None
    for chunk in body:
        if not writer.append(chunk):
            return None
    return writer.commit()


def test_miss_fill_hit() -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20)
    assert store.get(KEY, no_headers, clock.now) is None
    chunks = [b"a" * 1000, b"b" * 500]
    entry = fill(store, KEY, chunks, clock.now)
    hit = store.get(KEY, no_headers, clock.now)
    assert hit is entry and hit.body_size == 1500
    assert hit.chunks[0] is chunks[0]  # the very bytes written to the client: no copy
    assert hit.fresh(clock.now) and hit.satisfies(PLAIN_GET, clock.now)
    assert header_value(hit.head_lines(clock.now), "content-type") == ["text/plain"]


def test_partial_entries_are_invisible_until_commit() -> None:
    store = MemoryStore(1 << 20)
    head = response(200)
    plan = plan_of()
    writer = store.begin(KEY, no_headers, 200, b"OK", head.lines, head.names, plan, 0.0)
    writer.append(b"x" * 100)
    assert store.get(KEY, no_headers, 0.0) is None
    writer.commit()
    assert store.get(KEY, no_headers, 0.0).body_size == 100


def test_truncated_body_is_dropped_and_its_bytes_released() -> None:
    store = MemoryStore(1 << 20)
    assert fill(store, KEY, [b"x" * 10], 0.0, content_length=20) is None
    assert store.get(KEY, no_headers, 0.0) is None
    assert store.size == 0


def test_abandon_releases_and_stops_appends() -> None:
    store = MemoryStore(1 << 20)
    head = response(200)
    writer = store.begin(KEY, no_headers, 200, b"OK", head.lines, head.names, plan_of(), 0.0)
    writer.append(b"x" * 1000)
    assert store.size > 1000
    writer.abandon()
    assert store.size == 0 and writer.state == EntryWriter.ABANDONED
    assert not writer.append(b"y") and writer.commit() is None


def test_entry_larger_than_its_share_is_abandoned_mid_stream() -> None:
    store = MemoryStore(80_000)  # per-entry cap: 10 000 bytes
    assert store.max_entry_size == 10_000
    assert fill(store, KEY, [b"x" * 4000] * 3, 0.0) is None
    assert store.size == 0
    # and refused up front when Content-Length says so
    head = response(200)
    assert store.begin(KEY, no_headers, 200, b"OK", head.lines, head.names, plan_of(), 0.0, 50_000) is None


def test_lru_eviction_by_bytes() -> None:
    store = MemoryStore(10_000, max_entry_size=10_000)
    keys = [cache_key(b"h", f"/{i}".encode()) for i in range(4)]
    for key in keys[:3]:
        fill(store, key, [b"x" * 2000], 0.0)
    store.get(keys[0], no_headers, 0.0)  # touch: keys[1] is now least recently used
    fill(store, keys[3], [b"x" * 2000], 0.0)
    assert store.get(keys[1], no_headers, 0.0) is None
    assert all(store.get(k, no_headers, 0.0) is not None for k in (keys[0], keys[2], keys[3]))
    assert store.size <= store.max_size and store.evictions == 1


def test_replacing_an_entry_releases_the_old_one() -> None:
    store = MemoryStore(1 << 20)
    fill(store, KEY, [b"x" * 1000], 0.0)
    size = store.size
    fill(store, KEY, [b"y" * 1000], 1.0)
    assert store.size == size and len(store) == 1
    assert store.get(KEY, no_headers, 1.0).chunks == [b"y" * 1000]


def test_vary_keeps_variants_apart() -> None:
    store = MemoryStore(1 << 20)
    de = request("/", "Accept-Language: de")
    en = request("/", "Accept-Language: en")
    fill(store, KEY, [b"Hallo"], 0.0, "Vary: Accept-Language", get_header=de.header)
    fill(store, KEY, [b"Hello"], 0.0, "Vary: Accept-Language", get_header=en.header)
    assert store.get(KEY, de.header, 0.0).chunks == [b"Hallo"]
    assert store.get(KEY, en.header, 0.0).chunks == [b"Hello"]
    assert store.get(KEY, request("/").header, 0.0) is None  # no Accept-Language: another variant
    assert store.delete(KEY) == 2 and len(store) == 0 and store.size == 0


def test_tier_is_part_of_the_key() -> None:
    store = MemoryStore(1 << 20)
    low = cache_key(b"h", b"/v", "low")
    fill(store, low, [b"small"], 0.0)
    assert store.get(cache_key(b"h", b"/v", "high"), no_headers, 0.0) is None
    assert store.get(low, no_headers, 0.0) is not None


def test_cookie_requests_only_see_explicit_entries() -> None:
    store = MemoryStore(1 << 20)
    fill(store, KEY, [b"anonymous page"], 0.0)  # stored under the route's ttl
    assert store.get(KEY, no_headers, 0.0, explicit_only=True) is None
    fill(store, KEY, [b"public"], 0.0, "Cache-Control: public, max-age=60")
    assert store.get(KEY, no_headers, 0.0, explicit_only=True) is not None


def test_freshness_age_and_stale_fallback() -> None:
    clock = FakeClock(0.0)
    store = MemoryStore(1 << 20, stale_keep=3600)
    fill(store, KEY, [b"x"], clock.now, "Age: 10", "Cache-Control: max-age=60")
    clock.advance(20)
    entry = store.get(KEY, no_headers, clock.now)
    assert entry.age(clock.now) == 30 and entry.fresh(clock.now)
    assert header_value(entry.head_lines(clock.now), "age") == ["30"]
    clock.advance(40)  # age 70 > 60
    entry = store.get(KEY, no_headers, clock.now)
    assert not entry.fresh(clock.now) and not entry.satisfies(PLAIN_GET, clock.now)
    assert entry.usable_stale(clock.now)
    lines = entry.head_lines(clock.now, stale=True)
    assert header_value(lines, "age") == ["70"]
    assert header_value(lines, "warning") == ['110 - "Response is Stale"']
    clock.advance(3600)
    assert store.get(KEY, no_headers, clock.now) is None  # beyond stale_keep: gone
    assert store.size == 0


def test_request_limits_on_freshness() -> None:
    store = MemoryStore(1 << 20)
    entry = fill(store, KEY, [b"x"], 0.0, "Cache-Control: max-age=100")
    assert entry.satisfies(PLAIN_GET, 50.0)
    assert not entry.satisfies(request_plan(b"GET", cache_control="max-age=10"), 50.0)
    assert not entry.satisfies(request_plan(b"GET", cache_control="min-fresh=60"), 50.0)
    assert not entry.satisfies(request_plan(b"GET", cache_control="no-cache"), 50.0)


def test_stale_if_error_and_must_revalidate_bound_the_fallback() -> None:
    store = MemoryStore(1 << 20)
    entry = fill(store, KEY, [b"x"], 0.0, "Cache-Control: max-age=10, stale-if-error=30")
    assert entry.usable_stale(35.0) and not entry.usable_stale(45.0)
    strict = fill(store, cache_key(b"h", b"/s"), [b"x"], 0.0, "Cache-Control: max-age=10, must-revalidate")
    assert not strict.usable_stale(11.0)


def test_refresh_after_304() -> None:
    clock = FakeClock(0.0)
    store = MemoryStore(1 << 20)
    entry = fill(store, KEY, [b"body"], clock.now, 'ETag: "v1"', "Cache-Control: max-age=10")
    clock.advance(30)
    assert not entry.fresh(clock.now)
    not_modified = response(304, 'ETag: "v1"', "Cache-Control: max-age=100", "Age: 2")
    lines, names = merge_304(entry.lines, entry.names, not_modified.lines, not_modified.names)
    plan = response_plan(PLAIN_GET, 200, lines, names, 60.0, WALL)
    plan.initial_age = 2.0
    size = store.size
    store.refresh(entry, lines, names, plan, clock.now)
    assert entry.fresh(clock.now) and entry.age(clock.now) == 2
    assert header_value(entry.lines, "cache-control") == ["max-age=100"]
    assert entry.chunks == [b"body"]
    assert store.size == size + (len(b"max-age=100") - len(b"max-age=10"))
    head_304 = entry.not_modified_lines(clock.now)
    assert header_value(head_304, "etag") == ['"v1"'] and header_value(head_304, "content-type") == []


def test_stored_age_header_is_not_kept() -> None:
    store = MemoryStore(1 << 20)
    entry = fill(store, KEY, [b"x"], 0.0, "Age: 5")
    assert header_value(entry.lines, "age") == []
    assert header_value(entry.head_lines(0.0), "age") == ["5"]


def test_sweep_drops_long_stale_entries() -> None:
    store = MemoryStore(1 << 20, stale_keep=10)
    fill(store, KEY, [b"x"], 0.0, "Cache-Control: max-age=5")
    fill(store, cache_key(b"h", b"/b"), [b"x"], 0.0, "Cache-Control: max-age=500")
    assert store.sweep(16.0) == 1 and len(store) == 1


def test_max_size_must_hold_an_entry() -> None:
    with pytest.raises(ValueError):
        MemoryStore(10)


# Operations: (key index, body chunk sizes, commit?) ; the store never exceeds max_size,
# including bytes reserved by writers still filling.
@given(
    st.integers(2_000, 60_000),
    st.lists(
        st.tuples(st.integers(0, 15), st.lists(st.integers(0, 9_000), max_size=6), st.sampled_from(["commit", "abandon",
                                                                                                     "open"])),
        max_size=40,
    ),
)
@settings(max_examples=150, deadline=None)
def test_store_never_exceeds_max_size(max_size: int, ops) -> None:
    store = MemoryStore(max_size, max_entry_size=max_size // 2)
    open_writers = []
    head = response(200, "Content-Type: text/plain")
    plan = plan_of()
    now = 0.0
    for index, sizes, end in ops:
        now += 1.0
        key = cache_key(b"h", b"/%d" % index)
        writer = store.begin(key, no_headers, 200, b"OK", head.lines, head.names, plan, now)
        if writer is None:
            continue
        for size in sizes:
            writer.append(b"x" * size)
            assert 0 <= store.size <= max_size
        if end == "commit":
            writer.commit()
        elif end == "abandon":
            writer.abandon()
        else:
            open_writers.append(writer)
        assert 0 <= store.size <= max_size
        accounted = sum(e.cost for e in store) + sum(w.entry.cost for w in open_writers if w.state == w.FILLING)
        assert store.size == accounted
    for writer in open_writers:
        writer.abandon()
    assert store.size == sum(e.cost for e in store)
    for entry in store:
        assert entry.cost == ENTRY_OVERHEAD + sum(len(x) + CHUNK_OVERHEAD for x in entry.lines) + sum(
            len(c) + CHUNK_OVERHEAD for c in entry.chunks)


# -- fallback -------------------------------------------------------------------------------------
def test_fallback_verdicts() -> None:
    from edge.cache.fallback import SERVE_STALE, UNAVAILABLE, USE_SERVICE, fallback_for

    store = MemoryStore(1 << 20)
    entry = fill(store, KEY, [b"x"], 0.0, "Cache-Control: max-age=10")
    strict = fill(store, cache_key(b"h", b"/s"), [b"x"], 0.0, "Cache-Control: max-age=10, must-revalidate")
    assert fallback_for("stale", entry, 500.0).kind == SERVE_STALE
    assert fallback_for("stale", entry, 500.0).entry is entry
    assert fallback_for("stale", entry, 500.0, method=b"POST").kind == UNAVAILABLE
    assert fallback_for("stale", strict, 500.0).kind == UNAVAILABLE
    assert fallback_for("stale", None, 500.0).kind == UNAVAILABLE
    assert fallback_for("none", entry, 500.0).kind == UNAVAILABLE
    degraded = fallback_for("nextcloud_ro", None, 500.0)
    assert degraded.kind == USE_SERVICE and degraded.service == "nextcloud_ro"


# -- the whole conversation, as the data path will hold it ------------------------------------------
def test_miss_hit_stale_revalidate_conversation() -> None:
    """Miss and store, hit, client 304, stale, revalidate with edge's validators, 304 merge, hit."""
    from edge.cache.policy import not_modified, request_plan_from_head, revalidation_headers

    clock = FakeClock(0.0)
    store = MemoryStore(1 << 20)
    req = request("/album/1", "Accept-Encoding: gzip")
    plan = request_plan_from_head(req)
    key = cache_key(req.host, req.target, "high", b"https")
    assert store.get(key, req.header, clock.now, plan.explicit_only) is None  # miss: go upstream

    upstream = response(200, "Content-Type: text/html", 'ETag: "v1"', "Cache-Control: max-age=30",
                        "Vary: Accept-Encoding", body=b"<html>album</html>")
    rp = response_plan(plan, upstream.status, upstream.lines, upstream.names, 60.0, WALL, 0.01)
    writer = store.begin(key, req.header, upstream.status, upstream.reason, upstream.lines, upstream.names, rp,
                         clock.now, upstream.content_length)
    for chunk in (b"<html>", b"album</html>"):
        assert writer.append(chunk)
    entry = writer.commit()

    clock.advance(10)
    again = request("/album/1", "Accept-Encoding: gzip", 'If-None-Match: "v1"')
    hit = store.get(key, again.header, clock.now, request_plan_from_head(again).explicit_only)
    assert hit is entry and hit.satisfies(PLAIN_GET, clock.now)
    assert not_modified(hit.etag, hit.last_modified, again.header("if-none-match"), None)  # edge answers 304
    assert store.get(key, request("/album/1", "Accept-Encoding: br").header, clock.now) is None  # other variant

    clock.advance(30)  # age 40 > 30: stale
    stale = store.get(key, again.header, clock.now)
    assert stale is entry and not stale.satisfies(PLAIN_GET, clock.now) and stale.validators
    lines, names = revalidation_headers(again.lines, again.names, stale.etag, stale.last_modified)
    assert header_value(lines, "if-none-match") == ['"v1"'] and header_value(lines, "accept-encoding") == ["gzip"]
    assert names == [b"accept-encoding", b"if-none-match"]

    answer = response(304, 'ETag: "v1"', "Cache-Control: max-age=300")
    merged_lines, merged_names = merge_304(stale.lines, stale.names, answer.lines, answer.names)
    rp = response_plan(plan, stale.status, merged_lines, merged_names, 60.0, WALL + 40)
    store.refresh(stale, merged_lines, merged_names, rp, clock.now)
    assert store.get(key, req.header, clock.now).satisfies(PLAIN_GET, clock.now)
    assert b"".join(entry.chunks) == b"<html>album</html>"
    served = entry.head_lines(clock.now)
    assert header_value(served, "age") == ["0"] and header_value(served, "cache-control") == ["max-age=300"]


def test_the_shell_may_edit_its_header_lists_after_begin() -> None:
    store = MemoryStore(1 << 20)
    head = response(200, "Content-Type: text/html")
    writer = store.begin(KEY, no_headers, 200, b"OK", head.lines, head.names, plan_of(), 0.0)
    head.lines.append(b"X-Edge-Quality: low\r\n")
    head.names.append(b"x-edge-quality")
    entry = writer.commit()
    assert header_value(entry.lines, "x-edge-quality") == []
