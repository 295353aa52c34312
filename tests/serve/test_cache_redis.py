"""`cache.backend: redis`: two real edge instances share one cache in a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from tests.serve.test_features import get
from tests.support.procs import DemoUpstream, Edge, free_port, wait_until
from tests.support.redis import RedisServer, two_edges


def policy(port: int, up: DemoUpstream, redis_url: str, extra_service: str = "") -> str:
    return (
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"cache: {{backend: redis, redis_url: '{redis_url}'}}\n"
        f"services: {{s: {{upstreams: [{{url: '{up.url}'}}]{extra_service}}}}}\n"
        "routes:\n  - {host: cache.test, service: s, cache: {ttl: 60s}}\n"
    )


@pytest.fixture(scope="module")
def pair():
    with two_edges(policy, "shared") as (redis, up, a, b):
        yield {"a": a.port, "b": b.port, "redis": redis, "up": up, "edge_b": b}


def redis_client(redis: RedisServer):
    import redis as redis_py

    return redis_py.Redis(host="127.0.0.1", port=redis.port)


def stored(redis: RedisServer, target: str) -> bool:
    return b":1\r\n" in redis.command("EXISTS", f"edge:cache:http|cache.test|{target}")


def test_a_response_cached_by_one_instance_is_a_hit_on_the_other(pair):
    a, b, redis = pair["a"], pair["b"], pair["redis"]
    first = get(a, "/count?shared=1", host="cache.test")
    assert first[0] == 200
    wait_until(lambda: stored(redis, "/count?shared=1"), what="the entry in redis")
    second = get(b, "/count?shared=1", host="cache.test")
    assert second[0] == 200 and second[2] == first[2]  # the same count: the upstream was not asked
    assert "age" in second[1]
    # the upstream's counter moved by exactly one for the two requests
    after = get(b, "/count?shared=2", host="cache.test")[2]
    assert int(after.split()[1]) == int(first[2].split()[1]) + 1
    wait_until(lambda: any(r.get("cache") == "hit" for r in pair["edge_b"].access_log()), what="a logged hit")


def test_variants_are_shared_and_kept_apart(pair):
    a, b, redis = pair["a"], pair["b"], pair["redis"]
    target = "/count?vary=Accept-Language&v=1"
    en = get(a, target, "Accept-Language: en", host="cache.test")[2]
    wait_until(lambda: stored(redis, target), what="the entry in redis")
    de = get(b, target, "Accept-Language: de", host="cache.test")[2]
    assert en.endswith(b" en\n") and de.endswith(b" de\n") and en != de
    assert get(b, target, "Accept-Language: en", host="cache.test")[2] == en


def test_an_unsafe_request_on_one_instance_invalidates_for_all(pair):
    a, b, redis = pair["a"], pair["b"], pair["redis"]
    target = "/count?purge=1"
    first = get(a, target, host="cache.test")[2]
    wait_until(lambda: stored(redis, target), what="the entry in redis")
    assert get(b, target, host="cache.test")[2] == first
    raw = f"POST {target} HTTP/1.1\r\nHost: cache.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    from tests.support.procs import raw_exchange

    assert raw_exchange(b, raw.encode()).startswith(b"HTTP/1.1 200")
    wait_until(lambda: not stored(redis, target), what="the entry gone from redis")
    assert get(a, target, host="cache.test")[2] != first


def test_revalidation_refreshes_the_shared_copy(pair):
    a, b, redis = pair["a"], pair["b"], pair["redis"]
    target = "/count?etag=1&cc=no-cache&r=1"
    first = get(a, target, host="cache.test")
    wait_until(lambda: stored(redis, target), what="the entry in redis")
    second = get(b, target, host="cache.test")  # no-cache: b revalidates, the upstream says 304
    assert second[0] == 200 and second[2] == first[2] and second[1]["etag"] == '"v1"'
    assert get(b, target, 'If-None-Match: "v1"', host="cache.test")[0] == 304


def test_stale_copy_from_another_instance_serves_while_the_upstream_is_down():
    redis = RedisServer()
    up = DemoUpstream("flaky")
    a_port, b_port = free_port(), free_port()
    service = ", fallback: stale, health_check: {path: /status/200, interval: 100ms, timeout: 300ms, " \
              "healthy: 1, unhealthy: 1}"
    text = policy(a_port, up, redis.url, service).replace("ttl: 60s", "ttl: 1s")
    a = Edge(text, a_port)
    b = Edge(policy(b_port, up, redis.url, service).replace("ttl: 60s", "ttl: 1s"), b_port)
    try:
        status, _, body = get(a_port, "/count?stale=1", host="cache.test")
        assert status == 200
        wait_until(lambda: stored(redis, "/count?stale=1"), what="the entry in redis")
        up.stop()
        # b never fetched it itself: its stale copy comes from what a stored
        wait_until(lambda: "warning" in get(b_port, "/count?stale=1", host="cache.test")[1], timeout=6,
                   interval=0.1, what="the copy served stale by the other instance")
        status, headers, stale = get(b_port, "/count?stale=1", host="cache.test")
        assert status == 200 and stale == body and headers["warning"].startswith("110")
    finally:
        a.stop()
        b.stop()
        up.stop()
        redis.stop()


def test_redis_down_means_misses_not_errors():
    redis = RedisServer()
    up = DemoUpstream("plain")
    port = free_port()
    edge = Edge(policy(port, up, redis.url), port)
    try:
        assert get(port, "/count?down=1", host="cache.test")[0] == 200
        redis.stop()
        bodies = [get(port, "/count?down=2", host="cache.test") for _ in range(3)]
        assert all(status == 200 for status, _, _ in bodies)
        assert len({body for _, _, body in bodies}) == 3  # every one went upstream
        wait_until(lambda: "redis cache" in edge.stderr(), what="the logged redis failure")
    finally:
        edge.stop()
        up.stop()


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ("cache: {backend: redis}", "cache.backend: backend redis needs cache.redis_url (or state.redis_url)"),
        ("cache: {backend: redis, redis_url: 'http://x'}", "cache.redis_url: redis URL must start with redis://"),
    ],
)
def test_check_names_a_redis_backend_without_a_usable_url(tmp_path, cache, message):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nlisteners: {web: {listen: ['127.0.0.1:1']}}\n" + cache + "\n")
    done = subprocess.run([sys.executable, "-m", "edge", "check", "-c", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert f"p.yaml:3: {message}" in done.stdout + done.stderr


def test_state_redis_url_is_enough_for_the_redis_cache(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nlisteners: {web: {listen: ['127.0.0.1:1']}}\n"
                    "state: {redis_url: 'redis://127.0.0.1:1/2'}\ncache: {backend: redis}\n")
    done = subprocess.run([sys.executable, "-m", "edge", "check", "-c", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def count_of(body: bytes) -> int:
    return int(body.split()[1])


def test_a_burst_of_concurrent_hits_is_answered_from_redis(pair):
    a, redis = pair["a"], pair["redis"]
    target = "/count?burst=1"
    first = get(a, target, host="cache.test")[2]
    wait_until(lambda: stored(redis, target), what="the entry in redis")
    with ThreadPoolExecutor(max_workers=64) as pool:
        bodies = list(pool.map(lambda _: get(a, target, host="cache.test")[2], range(200)))
    assert set(bodies) == {first}  # every one a hit: none went upstream
    # the upstream saw only the first request and this one since
    assert count_of(get(a, "/count?burst=2", host="cache.test")[2]) == count_of(first) + 1
    # many keys at once, each its own lookup (no single flight to share): every one a hit
    targets = [f"/count?burst=k{n}" for n in range(96)]
    firsts = {t: get(a, t, host="cache.test")[2] for t in targets}
    wait_until(lambda: all(stored(redis, t) for t in targets), what="every entry in redis")
    with ThreadPoolExecutor(max_workers=96) as pool:
        again = dict(zip(targets, pool.map(lambda t: get(a, t, host="cache.test")[2], targets), strict=True))
    assert again == firsts


def test_revalidation_refreshes_the_variant_it_read(pair):
    a, b, redis = pair["a"], pair["b"], pair["redis"]
    target = "/count?etag=1&cc=max-age%3D1&r=2"
    get(a, target, host="cache.test")
    wait_until(lambda: stored(redis, target), what="the entry in redis")
    log = pair["edge_b"]
    # fresh for 1 s: hits; then stale: b revalidates (the upstream answers 304)
    wait_until(lambda: get(b, target, host="cache.test")[0] == 200 and any(
        r.get("cache") == "revalidated" and "r=2" in r.get("path", "") for r in log.access_log()),
        timeout=8, interval=0.2, what="a revalidation on b")
    fields = redis_client(redis).hkeys(f"edge:cache:http|cache.test|{target}")
    assert sorted(fields) == [b"", b"v"]  # the refreshed copy went back to its own field
    assert get(a, target, host="cache.test")[1].get("age") in ("0", "1")  # fresh again, for a too


def test_a_malformed_entry_in_redis_is_a_miss(pair):
    a, redis = pair["a"], pair["redis"]
    client = redis_client(redis)
    bad = msgpack.packb([1, b"k", 200, b"OK", [b"X-Evil: 1\r\nInjected: yes\r\n"], [b"x-evil"], b"body",
                         "not a time", 0, 60, 0, None, None, True, True, None, []])
    for target, blob in (("/count?bad=1", bad), ("/count?bad=2", b"\x93\x01\x02"),
                         ("/count?bad=3", msgpack.packb([1, b"k", "200"]))):
        client.hset(f"edge:cache:http|cache.test|{target}", mapping={b"v": msgpack.packb([]), b"": blob})
        started = time.monotonic()
        status, headers, body = get(a, target, host="cache.test")
        assert status == 200 and body.startswith(b"count ") and "injected" not in headers
        assert time.monotonic() - started < 2  # answered from upstream at once, no hang
