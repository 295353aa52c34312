"""What to answer when a service cannot take a request: service ``fallback``.

Owns one decision: the breaker is open or no upstream is healthy (the shell found out),
and the service says ``fallback: stale | SERVICE | none``. ``stale`` serves the stored
copy even if expired, when the origin allowed that (``Entry.usable_stale``: not
``must-revalidate``/``no-cache``, within ``stale-if-error``); without such a copy the answer
is 503. A service name sends the request to that (degraded) service. ``none`` is 503.

Must not know: breakers, health checks, sockets. The shell passes the entry it looked up
(or None) and ``now``.
"""

from __future__ import annotations

from edge.cache.store import Entry

__all__ = ["SERVE_STALE", "UNAVAILABLE", "USE_SERVICE", "FallbackVerdict", "fallback_for"]

UNAVAILABLE = 0  # answer 503 with Retry-After
SERVE_STALE = 1  # answer from ``entry`` with ``head_lines(now, stale=True)``
USE_SERVICE = 2  # forward to ``service`` instead


class FallbackVerdict:
    __slots__ = ("entry", "kind", "service")

    def __init__(self, kind: int, entry: Entry | None = None, service: str | None = None) -> None:
        self.kind = kind
        self.entry = entry
        self.service = service

    def __repr__(self) -> str:
        return f"<FallbackVerdict {('unavailable', 'stale', 'service')[self.kind]} {self.service or ''}>"


_UNAVAILABLE = FallbackVerdict(UNAVAILABLE)


def fallback_for(fallback: str, entry: Entry | None, now: float, method: bytes = b"GET") -> FallbackVerdict:
    """The verdict for a request its service cannot serve now.

    ``fallback`` is the service's policy value; ``entry`` the cache's copy for this request
    (fresh entries never get here: they are hits). Only GET and HEAD are served stale.
    """
    if fallback == "none" or not fallback:
        return _UNAVAILABLE
    if fallback == "stale":
        if entry is not None and method in (b"GET", b"HEAD") and entry.usable_stale(now):
            return FallbackVerdict(SERVE_STALE, entry=entry)
        return _UNAVAILABLE
    return FallbackVerdict(USE_SERVICE, service=fallback)
