"""Country of a client address from a MaxMind DB, and route ``geoip:`` decisions.

Owns the open ``geoip.database`` (memory-mapped, so several workers share one copy in the
page cache), its reload (open the new file, swap, close the old: lookups never see a
half-open reader), and the allow/deny rule of a route.

Invariants: ``country`` never raises for a bad or private address; it answers None
("unknown"), and the route's ``unknown: allow|deny`` decides. Country codes are upper-case
ISO 3166-1 alpha-2. Answers are cached per address string, bounded, and dropped on reload.

Must not know: sockets, signals, forwarding headers. The shell passes the real client IP
(forwarding headers believed only from trusted proxies, see edge/http/forwarding.py) and
calls ``reload`` on SIGHUP.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import maxminddb

from edge.policy.model import RouteGeoIP
from edge.zones import parse_client_ip

__all__ = ["GeoIPDatabase", "GeoRule", "geo_decision"]

# Distinct addresses remembered. A lookup costs ~3.5 µs with the C reader and ~11 µs with
# the pure-Python one (address parse included; bench/micro_features.py), a cached answer
# ~0.15 µs. Cleared wholesale when full: a flood of new addresses would churn an LRU as much.
DEFAULT_CACHE_SIZE = 65_536

# MODE_MMAP_EXT is the C extension over the same memory-mapped file; fall back to the
# pure-Python mmap reader where the extension was not built.
try:
    import maxminddb.extension

    DEFAULT_MODE = maxminddb.MODE_MMAP_EXT
except ImportError:  # pragma: no cover - depends on the wheel
    DEFAULT_MODE = maxminddb.MODE_MMAP


def _country_of(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    for field in ("country", "registered_country"):
        part = record.get(field)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2:
                return code.upper()
    return None


class GeoIPDatabase:
    """An open MMDB (GeoLite2-Country, GeoIP2-City or anything with ``country.iso_code``)."""

    __slots__ = ("_cache", "_reader", "_stat", "cache_size", "mode", "path")

    def __init__(self, path: str, mode: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.path = path
        self.mode = DEFAULT_MODE if mode is None else mode
        self.cache_size = max(1, cache_size)
        self._reader = maxminddb.open_database(path, self.mode)
        self._stat = _stat(path)
        self._cache: dict[str, str | None] = {}

    def country(self, ip: str) -> str | None:
        """ISO code of ``ip``'s country (else of its registered country); None if unknown."""
        cache = self._cache
        try:
            return cache[ip]
        except KeyError:
            pass
        code = self._lookup(ip)
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[ip] = code
        return code

    def _lookup(self, ip: str) -> str | None:
        address = parse_client_ip(ip)
        if address is None:
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None  # IPv6 address in an IPv4-only database, or a damaged record
        return _country_of(record)

    @property
    def metadata(self):
        return self._reader.metadata()

    def changed(self) -> bool:
        """Whether the file on disk is not the one open (replaced, e.g. by geoipupdate)."""
        return _stat(self.path) != self._stat

    def reload(self, path: str | None = None) -> None:
        """Open ``path`` (default: the same file again), swap, close the old reader.

        A file that does not open raises, and the old reader stays in service.
        """
        path = path or self.path
        reader = maxminddb.open_database(path, self.mode)
        old = self._reader
        self._reader = reader
        self.path = path
        self._stat = _stat(path)
        self._cache = {}
        old.close()

    def close(self) -> None:
        self._reader.close()


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def geo_decision(route_geoip: RouteGeoIP, country: str | None) -> bool:
    """Whether a client from ``country`` (None: unknown) may use a route with this rule."""
    if country is None:
        return route_geoip.unknown == "allow"
    if route_geoip.allow is not None:
        return country in route_geoip.allow or country.lower() in route_geoip.allow
    assert route_geoip.deny is not None
    return country not in route_geoip.deny and country.lower() not in route_geoip.deny


class GeoRule:
    """A route's ``geoip:`` compiled once: upper-cased code sets, one membership test."""

    __slots__ = ("allow", "deny", "unknown_allowed")

    def __init__(self, route_geoip: RouteGeoIP) -> None:
        self.allow = _codes(route_geoip.allow)
        self.deny = _codes(route_geoip.deny)
        self.unknown_allowed = route_geoip.unknown == "allow"

    def allowed(self, country: str | None) -> bool:
        if country is None:
            return self.unknown_allowed
        if self.allow is not None:
            return country in self.allow
        return self.deny is None or country not in self.deny


def _codes(codes: Iterable[str] | None) -> frozenset[str] | None:
    return None if codes is None else frozenset(c.upper() for c in codes)
