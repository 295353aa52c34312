"""Micro benchmarks of the policy hot paths (pytest-benchmark; no asserts on time).

Run: .venv/bin/python -m pytest bench/micro_policy.py --benchmark-only -q -p no:randomly

What they show: the per-request cost the policy layer adds in front of the proxy's
~20 µs budget at 50k requests/s: one bucket take (allowed and rejected), breaker
allow + record while closed, one pick per balancer over three upstreams.
"""

from __future__ import annotations

import itertools
import random

import pytest

from edge.balance import BALANCERS
from edge.balance.base import UpstreamState
from edge.balance.p2c import P2C
from edge.breaker import Breaker
from edge.health import ServiceHealth
from edge.policy.model import CircuitBreaker, RateLimit, Upstream
from edge.ratelimit import KeySpec, RateLimiter


def _upstreams(*weights: int) -> list[UpstreamState]:
    return [UpstreamState(i, Upstream(url=f"http://10.0.10.1:{8080 + i}", weight=w)) for i, w in enumerate(weights)]


def test_bucket_take_allowed(benchmark) -> None:
    limiter = RateLimiter("per_client", RateLimit(rate=1e7, burst=1000))
    tick = itertools.count(0.0, 1e-6).__next__
    benchmark(lambda: limiter.take("192.0.2.1", tick()))


def test_bucket_take_rejected(benchmark) -> None:
    limiter = RateLimiter("per_client", RateLimit(rate=1e-9, burst=1))
    limiter.take("192.0.2.1", 0.0)
    benchmark(limiter.take, "192.0.2.1", 0.0)


def test_bucket_take_new_keys(benchmark) -> None:
    """A flood of distinct clients: insert plus LRU eviction at the cap."""
    limiter = RateLimiter("per_client", RateLimit(rate=1.0, burst=10), max_keys=10_000)
    keys = itertools.cycle([f"198.51.{i // 256}.{i % 256}" for i in range(50_000)]).__next__
    benchmark(lambda: limiter.take(keys(), 0.0))


def test_key_spec_header(benchmark) -> None:
    spec = KeySpec("header:X-Api-Key")
    headers = {"x-api-key": "token-123"}.get
    benchmark(spec.key, "192.0.2.1", headers, "cloud")


def test_breaker_closed_allow_and_record(benchmark) -> None:
    breaker = Breaker(CircuitBreaker(), 0.0)

    def one() -> None:
        breaker.allow(5.0)
        breaker.record(True, 5.0)

    benchmark(one)


def test_health_success_response(benchmark) -> None:
    health = ServiceHealth(_upstreams(1, 1))
    benchmark(health.record_response, 0, 200, 1.0)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_pick(benchmark, name: str) -> None:
    states = _upstreams(3, 1, 1)
    balancer = P2C(states, rng=random.Random(1)) if name == "p2c" else BALANCERS[name](states)
    benchmark(balancer.pick, "192.0.2.1")
