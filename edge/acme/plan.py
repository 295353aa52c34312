"""What ACME should do and when: host selection, renewal times, retry backoff. Pure, no I/O.

Owns the schedule of one TLS listener's ACME hosts as immutable ``HostStatus`` values and the
transition function ``advance``: every change of a host goes through it, with ``now`` passed in
(no clock, no sockets, no files here), so the manager's shell stays a loop that asks "what is
due?", does it, and feeds the outcome back.

Invariants:
- a host is in exactly one ``HostState``; ``next_check`` is when the shell must look at it again;
- a failure never loses a certificate that still serves: a renewal that fails leaves
  ``not_after`` as it was and only moves ``next_check`` by the backoff;
- renewal starts when ``RENEW_BEFORE`` (30 days) remain, or half the lifetime for certificates
  shorter than 60 days, so a 6-day certificate does not renew on every check; and a certificate
  just issued is never due before ``REISSUE_GAP``, whatever the clock says.

Knows nothing of the ``acme`` package, the terminator or the storage layout.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from edge.policy.model import Policy

RENEW_BEFORE = dt.timedelta(days=30)
# Failed validations count against the CA's limits (Let's Encrypt: 5 per host per hour), so the
# first retry waits 5 minutes and each next one twice as long, up to a twice-daily attempt.
RETRY_FIRST = dt.timedelta(minutes=5)
RETRY_MAX = dt.timedelta(hours=12)
# A certificate due for renewal the moment it is issued (the CA's lifetime is shorter than the
# renewal margin, or the clock is wrong) is not ordered again before this: no order loop.
REISSUE_GAP = dt.timedelta(hours=12)
# Even with nothing due the shell looks again this often: clocks jump, files get deleted.
CHECK_INTERVAL = dt.timedelta(hours=12)


class HostState(enum.Enum):
    MISSING = "missing"  # no certificate yet (or an unusable one): issue as soon as possible
    VALID = "valid"  # serving a certificate that is not yet due for renewal
    DUE = "due"  # serving, renewal time reached
    ISSUING = "issuing"  # an order is in progress
    FAILED = "failed"  # the last attempt failed; retried at next_check


class Event(enum.Enum):
    LOADED = "loaded"  # a stored certificate was read (not_after given) or found missing (None)
    STARTED = "started"  # the shell began an order
    ISSUED = "issued"  # a new certificate is stored (not_after given)
    FAILED = "failed"  # the order failed (error given)
    TICK = "tick"  # time passed: a VALID host may have become DUE


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host's certificate as the manager sees it; also what ``status()`` reports."""

    host: str
    state: HostState
    next_check: dt.datetime
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    failures: int = 0
    error: str | None = None
    last_issued: dt.datetime | None = None

    @property
    def serving(self) -> bool:
        """A certificate exists on disk for this host (perhaps an expired one)."""
        return self.not_after is not None


def renew_at(not_before: dt.datetime, not_after: dt.datetime, renew_before: dt.timedelta = RENEW_BEFORE) -> dt.datetime:
    """When to start renewing: ``renew_before`` ahead of expiry, at most half the lifetime."""
    lifetime = not_after - not_before
    return not_after - min(renew_before, lifetime / 2)


def retry_delay(failures: int) -> dt.timedelta:
    """Backoff after ``failures`` consecutive failures (1 -> RETRY_FIRST, doubling, capped)."""
    if failures <= 0:
        return dt.timedelta(0)
    return min(RETRY_FIRST * (2 ** min(failures - 1, 16)), RETRY_MAX)


def advance(
    status: HostStatus,
    event: Event,
    now: dt.datetime,
    *,
    validity: tuple[dt.datetime, dt.datetime] | None = None,
    error: str | None = None,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> HostStatus:
    """The one transition function: ``status`` after ``event`` at ``now``.

    ``validity`` is (not_before, not_after) for LOADED (None: nothing usable stored) and ISSUED;
    ``error`` is the reason for FAILED.
    """
    if event is Event.LOADED:
        if validity is None:
            return replace(status, state=HostState.MISSING, not_before=None, not_after=None, next_check=now)
        return _scheduled(replace(status, not_before=validity[0], not_after=validity[1]), now, renew_before)
    if event is Event.STARTED:
        return replace(status, state=HostState.ISSUING)
    if event is Event.ISSUED:
        if validity is None:
            raise ValueError("ISSUED needs the new certificate's validity")
        fresh = replace(status, not_before=validity[0], not_after=validity[1], failures=0, error=None, last_issued=now)
        scheduled = _scheduled(fresh, now, renew_before)
        if scheduled.state is HostState.DUE:  # due at birth: a wrong clock, or a CA's short lifetime
            return replace(scheduled, state=HostState.VALID, next_check=now + REISSUE_GAP)
        return scheduled
    if event is Event.FAILED:
        failures = status.failures + 1
        return replace(
            status, state=HostState.FAILED, failures=failures, error=error, next_check=now + retry_delay(failures)
        )
    if event is Event.TICK:
        if status.state is HostState.VALID and status.next_check <= now:
            return _scheduled(status, now, renew_before)
        return status
    raise ValueError(f"unknown event {event!r}")  # pragma: no cover - closed enum


def _scheduled(status: HostStatus, now: dt.datetime, renew_before: dt.timedelta) -> HostStatus:
    """VALID until the renewal time (checked at least every CHECK_INTERVAL), else DUE now."""
    assert status.not_before is not None and status.not_after is not None
    when = renew_at(status.not_before, status.not_after, renew_before)
    if when <= now:
        return replace(status, state=HostState.DUE, next_check=now)
    return replace(status, state=HostState.VALID, next_check=min(when, now + CHECK_INTERVAL))


def new_host(host: str, now: dt.datetime) -> HostStatus:
    """A host not looked at yet: the shell loads its stored certificate first."""
    return HostStatus(host=host, state=HostState.MISSING, next_check=now)


def wants_order(status: HostStatus, now: dt.datetime) -> bool:
    """Should the shell start an order for this host now?"""
    if status.state in (HostState.MISSING, HostState.DUE):
        return status.next_check <= now
    if status.state is HostState.FAILED:
        return status.next_check <= now
    return False


def seconds_until_next(statuses: Iterable[HostStatus], now: dt.datetime) -> float:
    """How long the shell may sleep: until the earliest next_check, at most CHECK_INTERVAL."""
    soonest = now + CHECK_INTERVAL
    for status in statuses:
        if status.state is not HostState.ISSUING and status.next_check < soonest:
            soonest = status.next_check
    return max(0.0, (soonest - now).total_seconds())


# -- which hosts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPlan:
    """The names one listener's ACME issues for, and the route hosts it cannot and why."""

    hosts: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (host, reason)


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, IDNs as A-labels (what SNI and the CA use)."""
    name = host.strip().rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def hosts_for_listener(policy: Policy, listener: str, covered: Iterable[str] = ()) -> HostPlan:
    """Route hosts of the routes that apply to ``listener``, in policy order, without duplicates.

    A route applies when its ``listeners`` is unset or names this listener. Skipped: wildcard
    hosts (only DNS-01 can prove them, and edge answers HTTP-01 and TLS-ALPN-01), IP addresses,
    and names in ``covered`` (served by a certificate the policy lists for this listener, which
    wins SNI selection anyway, so an ACME certificate for them would never be used).
    """
    covered_names = {normalize_host(n) for n in covered}
    hosts: dict[str, None] = {}
    skipped: dict[str, str] = {}
    for route in policy.routes:
        if route.host is None:
            continue
        if route.listeners is not None and listener not in route.listeners:
            continue
        host = normalize_host(route.host)
        if host in hosts or host in skipped:
            continue
        reason = _unfit(host, covered_names)
        if reason is None:
            hosts[host] = None
        else:
            skipped[host] = reason
    return HostPlan(tuple(hosts), tuple(skipped.items()))


def _unfit(host: str, covered: set[str]) -> str | None:
    if host.startswith("*."):
        return "wildcard names need the DNS-01 challenge, which edge does not answer"
    try:
        ipaddress.ip_address(host)
        return "IP addresses are not issued by ACME here (use edge's internal CA)"
    except ValueError:
        pass
    if "." not in host:
        return "single-label names cannot get a public certificate"
    if host in covered or _parent_wildcard(host) in covered:
        return "already served by a certificate in tls.certificates"
    return None


def _parent_wildcard(host: str) -> str:
    _, _, parent = host.partition(".")
    return "*." + parent
