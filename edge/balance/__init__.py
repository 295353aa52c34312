"""Balancers: ordered upstream candidates for a service (see base.py for the interface)."""

from __future__ import annotations

from edge.balance.base import Balancer, RoundRobin, UpstreamState
from edge.balance.consistent import ConsistentHash
from edge.balance.least_conn import LeastConn
from edge.balance.p2c import P2C
from edge.balance.weighted import Weighted
from edge.policy.model import Service

__all__ = [
    "BALANCERS",
    "Balancer",
    "ConsistentHash",
    "LeastConn",
    "P2C",
    "RoundRobin",
    "UpstreamState",
    "Weighted",
    "make_balancer",
]

# balancer name in the policy -> class.
BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted": Weighted,
    "least_conn": LeastConn,
    "p2c": P2C,
    "hash": ConsistentHash,
}


def make_balancer(service: Service, upstreams: list[UpstreamState]) -> Balancer:
    """The balancer a service asks for (round_robin for an unknown name)."""
    return BALANCERS.get(service.balancer, RoundRobin)(upstreams, service)
