"""Which certificate answers a TLS server name: the pure part of SNI, no ssl objects.

Rule (the policy's contract): an exact name wins, then a wildcard ``*.example.com`` that covers
exactly one more label (``a.example.com``, never ``a.b.example.com`` nor ``example.com``), then
the first certificate as the default. Among certificates claiming the same name, the earlier one
in the policy wins, so the order users write is the order that counts.

Names are compared case-insensitively without a trailing dot; server names arrive as A-labels
(Python hands IDNs to the SNI callback in ``xn--`` form), so no IDNA work happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType


def normalize(name: str) -> str:
    """Canonical form of a DNS name for comparison."""
    return name.strip().rstrip(".").lower()


def names_of(san_dns: Iterable[str], common_name: str | None) -> tuple[str, ...]:
    """The names a certificate answers for: its SAN DNS names, else (legacy) its CN."""
    names = tuple(dict.fromkeys(normalize(n) for n in san_dns if n.strip()))
    if names:
        return names
    return (normalize(common_name),) if common_name and common_name.strip() else ()


@dataclass(frozen=True, slots=True)
class SniIndex:
    """Name -> certificate position, built once per certificate set, read on every handshake."""

    exact: Mapping[str, int] = field(default_factory=dict)
    wildcard: Mapping[str, int] = field(default_factory=dict)  # "example.com" for "*.example.com"
    size: int = 0

    @classmethod
    def build(cls, names_per_certificate: Sequence[Iterable[str]]) -> SniIndex:
        exact: dict[str, int] = {}
        wildcard: dict[str, int] = {}
        for position, names in enumerate(names_per_certificate):
            for raw in names:
                name = normalize(raw)
                if name.startswith("*."):
                    # only a whole left-most label; "f*.example.com" partial wildcards are ignored
                    wildcard.setdefault(name[2:], position)
                elif "*" not in name and name:
                    exact.setdefault(name, position)
        return cls(MappingProxyType(exact), MappingProxyType(wildcard), len(names_per_certificate))

    def select(self, server_name: str | None) -> int | None:
        """Position of the certificate for ``server_name``; None only when there is no certificate."""
        if self.size == 0:
            return None
        if server_name:
            name = normalize(server_name)
            found = self.exact.get(name)
            if found is not None:
                return found
            _, dot, parent = name.partition(".")
            if dot and parent:
                found = self.wildcard.get(parent)
                if found is not None:
                    return found
        return 0


def matches(certificate_name: str, server_name: str) -> bool:
    """Does one certificate name cover ``server_name``? The single-name form of ``select``'s rule."""
    cert, host = normalize(certificate_name), normalize(server_name)
    if cert.startswith("*."):
        _, dot, parent = host.partition(".")
        return bool(dot) and parent == cert[2:] and "*" not in cert[2:]
    return cert == host and "*" not in cert
