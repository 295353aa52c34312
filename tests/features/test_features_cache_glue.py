"""``Features`` (the per-request cache glue) against a real ``MemoryStore``: every response it
starts storing is committed or given back, so the store's byte accounting never leaks."""

from __future__ import annotations

import pytest

from edge.cache.store import MemoryStore
from edge.serve.features import Features
from tests.features.heads import FakeClock, request, response

WALL = 1_700_000_000.0


def looked_up(store: MemoryStore, target: str, now: float, *headers: str, method: str = "GET") -> Features:
    fx = Features()
    assert fx.lookup(store, request(target, *headers, method=method), b"https", 60.0, now) == "miss"
    fx.sent_at = now  # forwarded now; the shell's loop time
    return fx


@pytest.mark.parametrize("field", ["Cache-Control: max-age=60", 'ETag: "e"'])
def test_a_204_is_stored_whole_at_its_head(field: str) -> None:
    """A 204 has no body (RFC 9110 6.4.1) and is cacheable by default (15.3.5): nothing will
    follow its head, so the copy is committed at once and no writer stays open. The shells
    never call ``end`` for a body-less response (HTTP/1.1 ``response_end``, HTTP/2 at the head)."""
    clock = FakeClock()
    store = MemoryStore(64 * 1024)
    for n in range(500):  # 500 x ~665 bytes would be ~5 x max_size if each reservation leaked
        target = f"/status/204?n={n}"
        head = request(target)
        fx = looked_up(store, target, clock.now)
        fx.response_head(response(204, field), head, store, clock.now, WALL)
        assert fx.writer is None
        assert store.get(fx.key, head.header, clock.now) is not None  # a hit from now on
    # only committed entries count: what is stored adds up to the store's size
    assert store.size == sum(entry.cost for entry in store._entries.values()) <= store.max_size
    # and the cache still works for bodies
    target = "/count"
    fx = looked_up(store, target, clock.now)
    fx.response_head(response(200, body=b"hello"), request(target), store, clock.now, WALL)
    assert fx.body(b"hello") == b"hello" and fx.end() == b""
    assert store.get(fx.key, request(target).header, clock.now).body_size == 5


def test_a_cached_204_is_answered_without_content_length() -> None:
    """RFC 9110 8.6: no Content-Length in a 204, on either protocol."""
    clock = FakeClock()
    store = MemoryStore(64 * 1024)
    head = request("/nothing")
    fx = looked_up(store, "/nothing", clock.now)
    fx.response_head(response(204), head, store, clock.now, WALL)
    hit = Features()
    assert hit.lookup(store, request("/nothing"), b"https", 60.0, clock.now) == "hit"
    status, data, chunks, size = hit.entry_response(hit.entry, head, clock.now, False, b"", b"")
    assert status == 204 and data.startswith(b"HTTP/1.1 204 ") and b"content-length" not in data.lower()
    assert chunks == [] and size == 0
    status, headers, chunks, size = hit.entry_headers(hit.entry, head, clock.now, False, [])
    assert status == 204 and headers[0] == (b":status", b"204") and b"content-length" not in dict(headers)
    assert chunks == [] and size == 0


def test_a_304_the_client_asked_for_is_never_stored_nor_held() -> None:
    """A 304 to the client's own conditional (edge had no copy, so it forwarded it as is)."""
    clock = FakeClock()
    store = MemoryStore(64 * 1024)
    for n in range(200):
        target = f"/count?etag=1&n={n}"
        head = request(target, 'If-None-Match: "v1"')
        fx = looked_up(store, target, clock.now, 'If-None-Match: "v1"')
        fx.response_head(response(304, 'ETag: "v1"', "Cache-Control: max-age=60"), head, store, clock.now, WALL)
        assert fx.writer is None
    assert store.size == 0 and len(store) == 0


def test_head_requests_never_start_a_copy() -> None:
    clock = FakeClock()
    store = MemoryStore(64 * 1024)
    head = request("/x", method="HEAD")
    fx = looked_up(store, "/x", clock.now, method="HEAD")
    fx.response_head(response(200, "Content-Length: 10"), head, store, clock.now, WALL)
    fx.response_head(response(204), head, store, clock.now, WALL)
    assert fx.writer is None and store.size == 0


def test_abort_after_end_is_harmless_and_abort_gives_the_bytes_back() -> None:
    clock = FakeClock()
    store = MemoryStore(64 * 1024)
    fx = looked_up(store, "/big", clock.now)
    fx.response_head(response(200, body=b"x" * 100), request("/big"), store, clock.now, WALL)
    assert fx.writer is not None and store.size > 0
    fx.body(b"x" * 50)
    fx.abort()  # the client left mid-body
    assert fx.writer is None and store.size == 0
    fx.abort()
    assert store.size == 0
