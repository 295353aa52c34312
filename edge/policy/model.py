"""The policy file as frozen dataclasses: the one shape every part of edge reads.

Field types drive the YAML reader in ``schema.py``; defaults are the SPEC's. Values
are already in base units (seconds, bytes, bytes per second, events per second).
Cross references between sections (a route's service, a rule's zone) are checked in
``load.py``, not here. Nothing in this module does I/O.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from edge import units
from edge.policy.schema import FieldError, Parse

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# -- small grammars ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Address:
    """A listen or connect address: ``0.0.0.0:80``, ``[::]:443``, ``localhost:8080``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: object) -> Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an address like '0.0.0.0:80', got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT like '0.0.0.0:80' or '[::]:443', got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError names the problem
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets, like '[::]:443', got {value!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range 1-65535")
    return Address(host or "0.0.0.0", number)


def parse_addresses(value: list) -> tuple[Address, ...]:
    if not value:
        raise ValueError("needs at least one address")
    return tuple(parse_address(v) for v in value)


def parse_networks(value: list) -> tuple[IPNetwork, ...]:
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network like 10.0.0.0/8") from None
    return tuple(out)


def parse_interfaces(value: list) -> tuple[IPInterface, ...]:
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_interface(str(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an address with prefix like 10.0.1.1/24") from None
    return tuple(out)


def parse_workers(value: object) -> int:
    """``auto`` is kept as 0 and resolved to the core count at start."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}")
    return value


_KEY_RE = re.compile(r"^(client_ip|route|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")
_HASH_KEY_RE = re.compile(r"^(client_ip|(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")


def parse_limit_key(value: object) -> str:
    if not isinstance(value, str) or not _KEY_RE.match(value):
        raise ValueError(f"expected client_ip, route or header:NAME, got {value!r}")
    return value


def parse_hash_key(value: object) -> str:
    if not isinstance(value, str) or not _HASH_KEY_RE.match(value):
        raise ValueError(f"expected client_ip, header:NAME or cookie:NAME, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PortSpec:
    """``22/tcp`` or ``6000-6010/udp``."""

    first: int
    last: int
    protocol: Literal["tcp", "udp"]

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{ports}/{self.protocol}"


_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?/(tcp|udp)$")


def parse_ports(value: list) -> tuple[PortSpec, ...]:
    out = []
    for item in value:
        match = _PORT_RE.match(str(item))
        if match is None:
            raise ValueError(f"expected PORT/tcp, PORT/udp or FIRST-LAST/tcp, got {item!r}")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 0 < first <= last < 65536:
            raise ValueError(f"port range {item!r} out of 1-65535 or reversed")
        out.append(PortSpec(first, last, match.group(3)))  # type: ignore[arg-type]
    return tuple(out)


def parse_zone_ref(value: object) -> tuple[str, ...]:
    """``any``, one zone name, or a list of names; ``("any",)`` stands for any."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"expected a zone name, a list of zone names or 'any', got {value!r}")
    return tuple(items)


def parse_wg_key(value: object) -> str:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("expected a WireGuard key: 44 characters of base64 (32 bytes)")
    return str(value)


def parse_upstream_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL like 'http://10.0.10.20:8080', got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL like 'http://10.0.10.20:8080', got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an upstream URL has no path or query, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from None
    return value


Duration = Annotated[float, Parse(units.parse_duration)]
Rate = Annotated[float, Parse(units.parse_rate)]
Bandwidth = Annotated[float, Parse(units.parse_bandwidth)]
Size = Annotated[int, Parse(units.parse_size)]
Networks = Annotated[tuple, Parse(parse_networks, single_to_list=True)]
ZoneRef = Annotated[tuple, Parse(parse_zone_ref)]


# -- top-level sections --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Admin:
    listen: Annotated[Address, Parse(parse_address)] = Address("127.0.0.1", 9901)
    token_file: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0
    max_header_size: Size = 32 * 1024
    max_body_size: Size | None = None

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be above zero")
        if not 1024 <= self.max_header_size <= 1024 * 1024:
            raise FieldError("max_header_size", "must be between 1KiB and 1MiB")


@dataclass(frozen=True, slots=True)
class AccessLog:
    enabled: bool = True
    path: str = "-"


@dataclass(frozen=True, slots=True)
class State:
    file: str | None = None
    redis_url: str | None = None


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Acme:
    directory: str
    storage: str
    email: str | None = None
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"
    ca_bundle: str | None = None


@dataclass(frozen=True, slots=True)
class Tls:
    certificates: tuple[Certificate, ...] = ()
    acme: Acme | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    alpn: tuple[Literal["h2", "http/1.1"], ...] = ("h2", "http/1.1")
    client_ca: str | None = None

    def __post_init__(self) -> None:
        if not self.certificates and self.acme is None:
            raise ValueError("tls needs certificates, acme, or both")


@dataclass(frozen=True, slots=True)
class Listener:
    listen: Annotated[tuple, Parse(parse_addresses, single_to_list=True)]
    redirect_https: bool = False
    proxy_protocol: bool = False
    tls: Tls | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    url: Annotated[str, Parse(parse_upstream_url)]
    weight: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1000:
            raise FieldError("weight", f"must be 1-1000, got {self.weight}")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def label(self) -> str:
        """``host:port``, the metrics label."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    healthy: int = 2
    unhealthy: int = 3


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    error_ratio: float = 0.5
    min_requests: int = 20
    window: Duration = 10.0
    open_for: Duration = 30.0
    half_open_requests: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.error_ratio <= 1:
            raise FieldError("error_ratio", "must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: Duration = 2.0
    response_header: Duration = 30.0
    idle: Duration = 60.0


@dataclass(frozen=True, slots=True)
class Service:
    upstreams: tuple[Upstream, ...]
    balancer: Literal["round_robin", "weighted", "least_conn", "p2c", "hash"] = "round_robin"
    hash_key: Annotated[str, Parse(parse_hash_key)] = "client_ip"
    send_proxy_protocol: bool = False
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    timeouts: Timeouts = Timeouts()
    retries: int = 1
    fallback: str = "none"
    max_connections: int = 512

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise FieldError("upstreams", "needs at least one upstream")
        if self.max_connections < 1:
            raise FieldError("max_connections", "must be at least 1")
        if not 0 <= self.retries <= 5:
            raise FieldError("retries", "must be 0-5")


@dataclass(frozen=True, slots=True)
class Ban:
    after: int
    within: Duration
    for_: Duration


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: Rate
    burst: int
    key: Annotated[str, Parse(parse_limit_key)] = "client_ip"
    ban: Ban | None = None

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise FieldError("burst", "must be at least 1")


@dataclass(frozen=True, slots=True)
class TierCondition:
    save_data: bool | None = None
    downlink_below: Bandwidth | None = None
    rtt_above: Duration | None = None
    ect_in: tuple[Literal["slow-2g", "2g", "3g", "4g"], ...] | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    when: TierCondition | None = None
    max_rate: Bandwidth | None = None
    compress: bool = False


@dataclass(frozen=True, slots=True)
class QualityProfile:
    tiers: tuple[Tier, ...]
    upstream_header: str = "X-Edge-Quality"

    def __post_init__(self) -> None:
        if not self.tiers:
            raise FieldError("tiers", "needs at least one tier")


@dataclass(frozen=True, slots=True)
class GeoIP:
    database: str


@dataclass(frozen=True, slots=True)
class Cache:
    max_size: Size = 256 * 1024 * 1024
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None


@dataclass(frozen=True, slots=True)
class RouteGeoIP:
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None
    unknown: Literal["allow", "deny"] = "allow"

    def __post_init__(self) -> None:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("geoip needs exactly one of allow or deny")


@dataclass(frozen=True, slots=True)
class RouteCache:
    ttl: Duration


@dataclass(frozen=True, slots=True)
class RouteHeaders:
    add_response: dict[str, str] = field(default_factory=dict)
    add_request: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    name: str | None = None
    host: str | None = None
    path_prefix: str = "/"
    listeners: tuple[str, ...] | None = None
    rate_limit: str | None = None
    quality: str | None = None
    geoip: RouteGeoIP | None = None
    cache: RouteCache | None = None
    headers: RouteHeaders | None = None
    zones: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.path_prefix.startswith("/"):
            raise FieldError("path_prefix", f"must start with '/', got {self.path_prefix!r}")


@dataclass(frozen=True, slots=True)
class Reload:
    verify_for: Duration = 30.0
    max_error_ratio: float = 0.2


# -- network -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Vlan:
    parent: str
    id: int

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 4094:
            raise FieldError("id", f"must be 1-4094, got {self.id}")

    @property
    def link_name(self) -> str:
        return f"{self.parent}.{self.id}"


@dataclass(frozen=True, slots=True)
class Zone:
    interfaces: tuple[str, ...] = ()
    vlan: Vlan | None = None
    address: Annotated[tuple, Parse(parse_interfaces, single_to_list=True)] = ()

    def __post_init__(self) -> None:
        if not self.interfaces and self.vlan is None:
            raise ValueError("a zone needs interfaces, a vlan, or both")


@dataclass(frozen=True, slots=True)
class ForwardRule:
    from_: ZoneRef
    to: ZoneRef
    action: Literal["accept", "drop", "reject"]


@dataclass(frozen=True, slots=True)
class InputRule:
    from_: ZoneRef
    action: Literal["accept", "drop", "reject"]
    ports: Annotated[tuple, Parse(parse_ports)] = ()


@dataclass(frozen=True, slots=True)
class Masquerade:
    from_: ZoneRef
    to: ZoneRef


@dataclass(frozen=True, slots=True)
class Blocklist:
    timeout: Duration = 3600.0


@dataclass(frozen=True, slots=True)
class WireGuardPeer:
    public_key: Annotated[str, Parse(parse_wg_key)]
    allowed_ips: Networks
    keepalive: Duration | None = None
    endpoint: str | None = None
    preshared_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class WireGuardInterface:
    private_key_file: str
    address: Annotated[tuple, Parse(parse_interfaces, single_to_list=True)] = ()
    listen_port: int | None = None
    endpoint: str | None = None
    peers: dict[str, WireGuardPeer] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Network:
    zones: dict[str, Zone] = field(default_factory=dict)
    reconcile_interval: Duration = 30.0
    control_socket: str = "/run/edge/net.sock"
    forward: tuple[ForwardRule, ...] = ()
    input: tuple[InputRule, ...] = ()
    masquerade: tuple[Masquerade, ...] = ()
    blocklist: Blocklist | None = None
    wireguard: dict[str, WireGuardInterface] = field(default_factory=dict)


# -- the whole file ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Policy:
    version: Literal[1]
    admin: Admin | None = None
    trusted_proxies: Networks = ()
    workers: Annotated[int, Parse(parse_workers)] = 1
    limits: Limits = Limits()
    access_log: AccessLog = AccessLog()
    state: State = State()
    listeners: dict[str, Listener] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    quality_profiles: dict[str, QualityProfile] = field(default_factory=dict)
    geoip: GeoIP | None = None
    cache: Cache = Cache()
    routes: tuple[Route, ...] = ()
    reload: Reload | None = None
    network: Network | None = None
    # Where the file was read from; not a YAML key.
    source: str = field(default="", metadata={"key": "\0source"})
