"""X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239), and who may extend them.

A client's own forwarding headers are believed (extended) only when the peer is in
``trusted_proxies``; from anyone else they are replaced, so a client cannot forge
its address to an upstream. The same rule picks the real client address used by
rate limits, GeoIP and zone rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from edge.http.h1 import RequestHead

__all__ = ["TrustedProxies", "forwarding_lines", "forwarded_node", "real_client_ip"]


class TrustedProxies:
    """Membership test for peer addresses, cached per address string."""

    __slots__ = ("_cache", "_networks")

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        found = self._cache.get(address)
        if found is None:
            if not self._networks:
                found = False
            else:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    found = False
                else:
                    found = any(ip in net for net in self._networks)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[address] = found
        return found


def forwarded_node(address: str) -> bytes:
    """RFC 7239 node: IPv6 quoted in brackets, IPv4 plain."""
    if ":" in address:
        return b'"[' + address.encode() + b']"'
    return address.encode()


def forwarding_lines(head: RequestHead, client: str, trusted: bool, proto: bytes) -> bytes:
    """The four forwarding header lines for the upstream request."""
    client_b = client.encode()
    host = head.host or b""
    node = forwarded_node(client)
    element = b"for=" + node + b";host=" + _quote(host) + b";proto=" + proto
    if trusted:
        xff = head.x_forwarded_for + b", " + client_b if head.x_forwarded_for else client_b
        xfp = head.x_forwarded_proto or proto
        xfh = head.x_forwarded_host or host
        fwd = head.forwarded + b", " + element if head.forwarded else element
    else:
        xff, xfp, xfh, fwd = client_b, proto, host, element
    return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nForwarded: %s\r\n" % (
        xff,
        xfp,
        xfh,
        fwd,
    )


def _quote(value: bytes) -> bytes:
    # host values may contain ':' (port), which is not a token character: quote it
    return b'"' + value + b'"' if b":" in value or b"[" in value else value


def real_client_ip(head: RequestHead, peer: str, trusted: TrustedProxies) -> str:
    """The client's address: the right-most untrusted X-Forwarded-For hop, else the peer."""
    if head.x_forwarded_for is None or peer not in trusted:
        return peer
    hops = [h.strip().decode("latin-1") for h in head.x_forwarded_for.split(b",")]
    for hop in reversed(hops):
        if hop and hop not in trusted:
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] or peer
