"""`state.redis_url`: two real edge instances draw from one rate-limit bucket in a real redis-server."""

from __future__ import annotations

from tests.serve.test_features import get
from tests.support.procs import DemoUpstream, wait_until
from tests.support.redis import RedisServer, two_edges


def policy(port: int, up: DemoUpstream, redis_url: str) -> str:
    return (
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"state: {{redis_url: '{redis_url}'}}\n"
        "rate_limits: {per_key: {rate: 1/m, burst: 5, key: 'header:X-Key'}}\n"
        f"services: {{s: {{upstreams: [{{url: '{up.url}'}}]}}}}\n"
        "routes:\n  - {service: s, rate_limit: per_key}\n"
    )


def shared_tokens(redis: RedisServer, key: str) -> float:
    """The shared bucket's level (a bulk reply "$N\\r\\nVALUE\\r\\n"; full when absent)."""
    reply = redis.command("HGET", f"edge:rl:per_key:{key}", "t").split(b"\r\n")
    return float(reply[1]) if reply[0].startswith(b"$") and reply[0] != b"$-1" else 5.0


def statuses(port: int, key: str, n: int) -> list[int]:
    return [get(port, "/", f"X-Key: {key}")[0] for _ in range(n)]


def test_two_instances_share_one_bucket_and_redis_trouble_leaves_limits_local():
    with two_edges(policy, "limited") as (redis, _, a, b):
        a_port, b_port = a.port, b.port
        assert statuses(a_port, "alice", 5) == [200] * 5  # alice's whole burst, spent on a
        wait_until(lambda: shared_tokens(redis, "alice") < 1.0, what="a's report in redis")
        # b has never seen alice: it admits about one request before its own report brings
        # it the shared level, then rejects (alone it would admit 5)
        seen: list[int] = []

        def b_rejects() -> bool:
            seen.append(get(b_port, "/", "X-Key: alice")[0])
            return seen[-1] == 429

        wait_until(b_rejects, timeout=5, interval=0.1, what="b's 429 for alice")
        assert seen.count(200) <= 3, seen
        assert statuses(b_port, "alice", 3) == [429] * 3
        assert statuses(b_port, "bob", 5) == [200] * 5  # another key, another bucket
        redis.stop()
        # Redis gone: no errors, no delay; each instance limits on its own
        assert statuses(a_port, "carol", 6) == [200] * 5 + [429]
        wait_until(lambda: "shared rate limits: redis report failed" in a.stderr(), what="the logged failure")
