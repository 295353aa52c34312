"""Balancers: ordered upstream candidates for a service (see base.py for the interface)."""

from __future__ import annotations

from edge.balance.base import Balancer, RoundRobin, UpstreamState
from edge.policy.model import Service

__all__ = ["Balancer", "RoundRobin", "UpstreamState", "make_balancer"]

# balancer name in the policy -> class; the traffic-policy work adds the others here.
BALANCERS: dict[str, type[Balancer]] = {"round_robin": RoundRobin}


def make_balancer(service: Service, upstreams: list[UpstreamState]) -> Balancer:
    """The balancer a service asks for; round_robin until its kind is implemented."""
    return BALANCERS.get(service.balancer, RoundRobin)(upstreams, service)
