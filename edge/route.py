"""Routing: (listener, host, path) -> the route that serves it. Pure, compiled once per policy.

Order, as Traefik and Caddy users expect: an exact host beats a ``*.domain``
wildcard (which matches exactly one label, like a TLS wildcard), which beats routes
without a host; within the first host bucket that has a match, the longest
``path_prefix`` wins (a plain string prefix, like Traefik's PathPrefix). Host
matching is case-insensitive and ignores the port. Routes restricted to some
listeners are invisible on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["Router", "normalize_host"]

T = TypeVar("T")


def normalize_host(host: bytes | str) -> str:
    """``Cloud.Example.com:443`` -> ``cloud.example.com``; ``[::1]:8080`` -> ``[::1]``."""
    if isinstance(host, bytes):
        host = host.decode("latin-1")
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.find(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".")


class _Bucket(Generic[T]):
    """The routes of one host: (prefix, route) pairs, longest prefix first."""

    __slots__ = ("entries", "root")

    def __init__(self) -> None:
        self.entries: list[tuple[str, T]] = []
        self.root: T | None = None  # the "/" route, the common case, checked without a loop

    def add(self, prefix: str, route: T) -> None:
        if any(p == prefix for p, _ in self.entries):
            return  # first definition wins, as in the file's order
        self.entries.append((prefix, route))
        self.entries.sort(key=lambda item: len(item[0]), reverse=True)
        if prefix == "/":
            self.root = route

    def match(self, path: str) -> T | None:
        entries = self.entries
        if len(entries) == 1 and entries[0][0] == "/":
            return entries[0][1]
        for prefix, route in entries:
            if path.startswith(prefix):
                return route
        return None


class Router(Generic[T]):
    """Matches requests to routes for one listener. ``T`` is whatever the caller routes to."""

    __slots__ = ("_any", "_exact", "_wildcard", "catch_all")

    def __init__(self, routes: Sequence[tuple[str | None, str, T]]) -> None:
        """``routes``: (host or None, path_prefix, target) in the policy file's order."""
        self._exact: dict[str, _Bucket[T]] = {}
        self._wildcard: dict[str, _Bucket[T]] = {}
        self._any: _Bucket[T] | None = None
        for host, prefix, target in routes:
            if host is None:
                if self._any is None:
                    self._any = _Bucket()
                self._any.add(prefix, target)
                continue
            host = host.lower().rstrip(".")
            if host.startswith("*."):
                self._wildcard.setdefault(host[2:], _Bucket()).add(prefix, target)
            else:
                self._exact.setdefault(host, _Bucket()).add(prefix, target)
        # One route for every host and path (path_prefix "/", no host): the answer without a lookup.
        only_any = not self._exact and not self._wildcard and self._any is not None
        self.catch_all: T | None = (
            self._any.root if only_any and len(self._any.entries) == 1 else None  # type: ignore[union-attr]
        )

    def match(self, host: str, path: str) -> T | None:
        """``host`` already normalized (see ``normalize_host``)."""
        bucket = self._exact.get(host)
        if bucket is not None:
            found = bucket.match(path)
            if found is not None:
                return found
        if self._wildcard:
            dot = host.find(".")
            if dot > 0:
                bucket = self._wildcard.get(host[dot + 1 :])
                if bucket is not None:
                    found = bucket.match(path)
                    if found is not None:
                        return found
        if self._any is not None:
            return self._any.match(path)
        return None
