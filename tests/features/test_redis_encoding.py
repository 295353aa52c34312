"""The shared cache's entry encoding and URL parsing: pure, no Redis needed."""

from __future__ import annotations

import pytest

from edge.cache.redis_store import decode_entry, encode_entry
from edge.cache.store import MemoryStore
from edge.redis_client import parse_redis_url
from tests.features.test_cache_store import KEY, fill


def test_an_entry_survives_the_round_trip_with_its_times_moved_to_the_other_clock():
    entry = fill(MemoryStore(1 << 20), KEY, [b"hello ", b"world"], 100.0, 'ETag: "x"', "Vary: Accept-Language",
                 get_header=lambda name: "en" if name == "accept-language" else None)
    assert entry is not None
    # written where wall = monotonic + 1000, read where wall = monotonic + 500: the same
    # wall-clock instants land 500 s later on the reader's monotonic clock
    blob = encode_entry(entry, wall_offset=1000.0)
    back = decode_entry(blob, wall_offset=500.0)
    assert back is not None
    assert back.chunks == [b"hello world"] and back.body_size == 11
    assert (back.status, back.reason, back.lines, back.names) == (entry.status, entry.reason, entry.lines, entry.names)
    assert back.etag == entry.etag and back.vary == (b"accept-language",)
    assert back.stored_at == pytest.approx(entry.stored_at + 500.0)
    assert back.expires_at - back.stored_at == pytest.approx(entry.expires_at - entry.stored_at)
    assert back.age(back.stored_at + 3) == pytest.approx(entry.age(entry.stored_at + 3))


@pytest.mark.parametrize("blob", [b"", b"\x93\x01\x02\x03", b"not msgpack \xff\xff", b"\x91\x02"])
def test_anything_else_in_the_hash_is_a_miss(blob):
    assert decode_entry(blob, 0.0) is None


def test_redis_urls():
    assert parse_redis_url("redis://127.0.0.1:6380/2") == {
        "endpoint": "127.0.0.1", "port": 6380, "db": 2, "password": None, "ssl": False}
    assert parse_redis_url("rediss://:s%40cret@cache.lan")["password"] == "s@cret"
    for bad in ("http://x", "redis://", "redis://h:port", "redis://h/db"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)
