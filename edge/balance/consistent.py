"""Consistent hashing (``balancer: hash``): the same key goes to the same upstream.

A ring of 64-bit points, ``VNODES`` virtual nodes per unit of weight for each upstream,
placed by hashing the upstream's ``host:port`` label, so a point's place depends only on
its own upstream: when one upstream leaves the policy (or goes unhealthy), only the keys
it owned move, each to the next upstream along the ring, and everyone else's stay put.
The hash is blake2b, not Python's ``hash()``, so every worker, every restart and every
edge instance agrees on the mapping (sessions stick across a fleet).

Walking the ring past unhealthy owners gives both the pick and the retry order. The key
string comes from ``edge.ratelimit.KeySpec`` (client_ip, header:NAME, cookie:NAME).
"""

from __future__ import annotations

from bisect import bisect
from hashlib import blake2b

from edge.balance.base import Balancer, UpstreamState
from edge.policy.model import Service

__all__ = ["ConsistentHash", "key_hash"]

# Virtual nodes per unit of weight. 160 (ketama's choice) keeps each upstream's share
# within a few percent of its weight for a handful of upstreams.
VNODES = 160
# The whole ring is capped so heavy weights cannot make a huge ring (bisect stays cheap).
MAX_POINTS = 16_384


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a key (same in every process and on every machine)."""
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class ConsistentHash(Balancer):
    """A ring of virtual nodes; ``pick(key)`` walks clockwise to the first healthy owner."""

    __slots__ = ("_next", "_owners", "_points")

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        super().__init__(upstreams, service)
        self._next = 0
        total_weight = sum(s.weight for s in upstreams) or 1
        scale = min(1.0, MAX_POINTS / (VNODES * total_weight))
        ring: list[tuple[int, int, UpstreamState]] = []
        for state in upstreams:
            for replica in range(max(1, round(VNODES * state.weight * scale))):
                # The label (not the list position) places the point: positions shift on removal.
                ring.append((key_hash(f"{state.label}#{replica}"), state.index, state))
        ring.sort(key=lambda point: (point[0], point[1]))
        self._points = [point[0] for point in ring]
        self._owners = [point[2] for point in ring]

    def pick(self, key: str | None = None) -> UpstreamState | None:
        if key is None:
            return self._any()
        owners = self._owners
        size = len(owners)
        if not size:
            return None
        at = bisect(self._points, key_hash(key))
        owner = owners[at if at < size else 0]
        if owner.healthy:
            return owner
        if not any(s.healthy for s in self.upstreams):
            return None
        for step in range(1, size):
            owner = owners[(at + step) % size]
            if owner.healthy:
                return owner
        return None

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        """Distinct healthy owners in ring order from the key's point: a retry's next stop."""
        if key is None:
            first = self._any()
            if first is None:
                return []
            return [first] + [s for s in self.upstreams if s.healthy and s is not first]
        owners = self._owners
        size = len(owners)
        healthy = sum(1 for s in self.upstreams if s.healthy)
        found: list[UpstreamState] = []
        if not size or not healthy:
            return found
        at = bisect(self._points, key_hash(key))
        for step in range(size):
            owner = owners[(at + step) % size]
            if owner.healthy and owner not in found:
                found.append(owner)
                if len(found) == healthy:
                    break
        return found

    def _any(self) -> UpstreamState | None:
        """No key (should not happen: KeySpec falls back to the client address): round robin."""
        upstreams = self.upstreams
        count = len(upstreams)
        for step in range(count):
            position = (self._next + step) % count
            if upstreams[position].healthy:
                self._next = (position + 1) % count
                return upstreams[position]
        return None
