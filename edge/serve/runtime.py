"""A policy compiled for serving: routers per listener, services with balancers and pools.

``compile_runtime`` is called at start and on every SIGHUP, off the hot path; the
server then swaps one reference. A service whose definition did not change keeps
its ServiceRuntime (pools, upstream health, in-flight counts) across the reload;
route counters live in the ``Metrics`` registry keyed by the route's label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge.balance import Balancer, UpstreamState, make_balancer
from edge.breaker import Breaker
from edge.geoip import GeoRule
from edge.health import ServiceHealth
from edge.http.forwarding import TrustedProxies
from edge.policy.model import Policy, Route, Service
from edge.quality import TierChooser
from edge.ratelimit import KeySpec, RateLimiter
from edge.route import Router
from edge.serve.metrics import Metrics, RouteMetrics
from edge.serve.pool import UpstreamPool
from edge.zones import ZoneMatcher

__all__ = ["RouteRuntime", "Runtime", "ServiceRuntime", "compile_runtime"]


class ServiceRuntime:
    __slots__ = ("balancer", "breaker", "hash_key", "health", "idle_timeout", "name", "policy", "pools",
                 "response_timeout", "retries", "upstreams")

    def __init__(self, name: str, policy: Service, loop: asyncio.AbstractEventLoop, factory: Callable) -> None:
        self.name = name
        self.policy = policy
        self.upstreams = [UpstreamState(i, u) for i, u in enumerate(policy.upstreams)]
        self.balancer: Balancer = make_balancer(policy, self.upstreams)
        self.health = ServiceHealth(self.upstreams, policy.health_check)
        cb = policy.circuit_breaker
        self.breaker: Breaker | None = Breaker(cb, loop.time()) if cb is not None else None
        self.hash_key: KeySpec | None = KeySpec(policy.hash_key) if policy.balancer == "hash" else None
        timeouts = policy.timeouts
        self.pools = [
            UpstreamPool(loop, state, policy.max_connections, timeouts.connect, timeouts.idle, factory)
            for state in self.upstreams
        ]
        self.response_timeout = timeouts.response_header
        self.idle_timeout = timeouts.idle
        self.retries = policy.retries

    def record_outcome(self, index: int, status: int, now: float, generation: int) -> None:
        """How upstream ``index`` did, for its health and the breaker (status 0: no response).

        One place for both protocols' exchanges; ``generation`` is the breaker's when the
        request was admitted (-1: not checked)."""
        self.health.record_response(index, status, now)
        breaker = self.breaker
        if breaker is not None:
            breaker.record(0 < status < 500, now, generation)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


class RouteRuntime:
    __slots__ = ("add_request", "add_response", "cache_ttl", "chooser", "geo", "guarded", "label", "limiter", "metrics",
                 "policy", "service", "zones")

    def __init__(
        self, label: str, policy: Route, service: ServiceRuntime, metrics: RouteMetrics, limiter: RateLimiter | None
    ) -> None:
        self.label = label
        self.policy = policy
        self.service = service
        self.metrics = metrics
        self.limiter = limiter
        self.geo = GeoRule(policy.geoip) if policy.geoip is not None else None
        self.zones = frozenset(policy.zones) if policy.zones is not None else None
        self.chooser: TierChooser | None = None  # set by compile_runtime from quality_profiles
        self.cache_ttl = policy.cache.ttl if policy.cache is not None else None
        self.guarded = False  # any per-request check beyond routing (see compile_runtime)
        headers = policy.headers
        self.add_response = b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in (headers.add_response.items() if headers else ())
        )
        self.add_request = b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in (headers.add_request.items() if headers else ())
        )


class Runtime:
    """Everything a request needs from the policy, immutable once built."""

    __slots__ = (
        "limiters", "limits", "policy", "proxy_protocol", "redirect_https", "routers", "routes", "services", "trusted",
        "zone_matcher",
    )

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.limits = policy.limits
        self.trusted = TrustedProxies(policy.trusted_proxies)
        self.services: dict[str, ServiceRuntime] = {}
        self.limiters: dict[str, RateLimiter] = {}
        self.routes: list[RouteRuntime] = []
        self.routers: dict[str, Router[RouteRuntime]] = {}
        self.zone_matcher = ZoneMatcher(policy.network) if any(r.zones for r in policy.routes) else None
        self.proxy_protocol = frozenset(n for n, lst in policy.listeners.items() if lst.proxy_protocol)
        # plain listener name -> the https port its 308s point to
        self.redirect_https: dict[str, int] = {}
        https_ports = [a.port for lst in policy.listeners.values() if lst.tls is not None for a in lst.listen]
        for name, listener in policy.listeners.items():
            if listener.redirect_https and listener.tls is None:
                self.redirect_https[name] = 443 if not https_ports or 443 in https_ports else https_ports[0]


def route_label(index: int, route: Route) -> str:
    return route.name if route.name is not None else str(index)


def compile_runtime(
    policy: Policy,
    loop: asyncio.AbstractEventLoop,
    metrics: Metrics,
    factory: Callable,
    previous: Runtime | None = None,
) -> Runtime:
    runtime = Runtime(policy)
    now = loop.time()
    old = previous.services if previous is not None else {}
    for name, service in policy.services.items():
        kept = old.get(name)
        if kept is not None and kept.policy == service:
            runtime.services[name] = kept  # pools, health, breaker, in-flight counts: all of it
            continue
        fresh = runtime.services[name] = ServiceRuntime(name, service, loop, factory)
        if kept is not None:  # changed: carry what still applies (health by upstream, breaker state)
            fresh.health.carry_over(kept.health, now)
            if fresh.breaker is not None and kept.breaker is not None:
                fresh.breaker.carry_over(kept.breaker, now)
    old_limiters = previous.limiters if previous is not None else {}
    old_limits = previous.policy.rate_limits if previous is not None else {}
    shared = policy.state.redis_url is not None
    for name, limit in policy.rate_limits.items():
        if name in old_limiters and old_limits.get(name) == limit:
            limiter = runtime.limiters[name] = old_limiters[name]  # unchanged: the very same buckets
            limiter.share(shared)
            continue
        limiter = runtime.limiters[name] = RateLimiter(name, limit)
        limiter.share(shared)
        if name in old_limiters:
            limiter.carry_over(old_limiters[name], now)
    choosers: dict[str, TierChooser] = {}
    for index, route in enumerate(policy.routes):
        label = route_label(index, route)
        limiter = runtime.limiters.get(route.rate_limit) if route.rate_limit else None
        service = runtime.services[route.service]
        compiled = RouteRuntime(label, route, service, metrics.route(label), limiter)
        if route.quality is not None:
            compiled.chooser = choosers.setdefault(route.quality, TierChooser(policy.quality_profiles[route.quality]))
        checks = (compiled.limiter, compiled.geo, compiled.zones, compiled.chooser, compiled.cache_ttl)
        compiled.guarded = any(x is not None for x in checks)
        runtime.routes.append(compiled)
    for listener in policy.listeners:
        entries = [
            (rr.policy.host, rr.policy.path_prefix, rr)
            for rr in runtime.routes
            if rr.policy.listeners is None or listener in rr.policy.listeners
        ]
        runtime.routers[listener] = Router(entries)
    return runtime


def retired_services(old: Runtime, new: Runtime) -> list[ServiceRuntime]:
    """Services of ``old`` that ``new`` does not keep (their pools close once drained)."""
    kept = {id(s) for s in new.services.values()}
    return [s for s in old.services.values() if id(s) not in kept]


def changed_route_labels(old: Policy, new: Policy) -> set[str]:
    """Labels of routes the new policy adds or changes (the route or its service)."""
    before = {route_label(i, r): (r, old.services.get(r.service)) for i, r in enumerate(old.routes)}
    changed = set()
    for index, route in enumerate(new.routes):
        label = route_label(index, route)
        if before.get(label) != (route, new.services.get(route.service)):
            changed.add(label)
    return changed
