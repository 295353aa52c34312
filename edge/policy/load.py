"""Read a policy file: YAML -> ``Policy``, or ``PolicyErrors`` naming file, line and key.

Two passes: ``schema.Loader`` checks shapes, types and units field by field; then
``_check_references`` checks what one section says about another (a route's service,
a rule's zone). Relative file paths in the policy are resolved against the policy
file's folder, so a policy can travel with its certificates.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Any

import yaml

from edge.policy.model import Policy
from edge.policy.schema import Loader, PolicyError, PolicyErrors, did_you_mean, is_invalid

__all__ = ["load_policy", "parse_policy", "default_policy_path"]


def default_policy_path() -> str:
    return os.environ.get("EDGE_POLICY") or "policies/edge.yaml"


def load_policy(path: str) -> Policy:
    """Read and validate ``path``; raise ``PolicyErrors`` with every problem found."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PolicyErrors([PolicyError(path, 0, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise PolicyErrors([PolicyError(path, 0, "", "not UTF-8 text")]) from None
    policy = parse_policy(text, name, base_dir=os.path.dirname(os.path.abspath(path)))
    return dataclasses.replace(policy, source=os.path.abspath(path))


def parse_policy(text: str, file: str = "<policy>", base_dir: str | None = None) -> Policy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyErrors([PolicyError(file, line, "", f"YAML syntax: {problem}")]) from None
    if node is None:
        raise PolicyErrors([PolicyError(file, 1, "", "empty policy: it needs at least 'version: 1'")])
    loader = Loader(file)
    policy = loader.load(Policy, node)
    if not is_invalid(policy) and not loader.errors:
        _check_references(policy, loader)
    if loader.errors or is_invalid(policy):
        if not loader.errors:  # pragma: no cover - an invalid value always logs an error
            loader.error(1, "", "invalid policy")
        raise PolicyErrors(loader.errors)
    if base_dir is not None:
        policy = _resolve_paths(policy, base_dir)
    return policy


def _check_references(policy: Policy, loader: Loader) -> None:
    err = loader.error_at
    if not policy.listeners and policy.network is None:
        err("", "a policy needs at least one of 'listeners' or 'network'")
    admin = policy.admin
    if admin is not None and admin.token_file is None and not _is_loopback(admin.listen.host):
        err("admin.listen", "a non-loopback admin address needs admin.token_file (metrics and status are private)")
    _check_redis(policy, err)
    zones = policy.network.zones if policy.network else {}
    for name, service in policy.services.items():
        fallback = service.fallback
        if fallback not in ("stale", "none"):
            if fallback == name:
                err(f"services.{name}.fallback", "a service cannot fall back to itself")
            elif fallback not in policy.services:
                hint = did_you_mean(fallback, policy.services)
                err(
                    f"services.{name}.fallback",
                    f"expected stale, none or a service name; unknown service {fallback!r}{hint}",
                )
    names: dict[str, int] = {}
    for index, route in enumerate(policy.routes):
        where = f"routes[{index}]"
        _known(err, f"{where}.service", route.service, policy.services, "service")
        for n, listener in enumerate(route.listeners or ()):
            _known(err, f"{where}.listeners[{n}]", listener, policy.listeners, "listener")
        if route.rate_limit is not None:
            _known(err, f"{where}.rate_limit", route.rate_limit, policy.rate_limits, "rate limit")
        if route.quality is not None:
            _known(err, f"{where}.quality", route.quality, policy.quality_profiles, "quality profile")
        if route.geoip is not None and policy.geoip is None:
            err(f"{where}.geoip", "needs the top-level 'geoip: {database: ...}' section")
        for n, zone in enumerate(route.zones or ()):
            _known(err, f"{where}.zones[{n}]", zone, zones, "zone")
        if route.host is not None:
            host = route.host.lower()
            label = host[2:] if host.startswith("*.") else host
            if not label or "*" in label or ":" in label or "/" in label:
                err(f"{where}.host", f"expected a host name or '*.domain', got {route.host!r}")
        if route.name is not None:
            if route.name in names:
                err(f"{where}.name", f"name {route.name!r} is already used by routes[{names[route.name]}]")
            names[route.name] = index
    if policy.network is not None:
        _check_network(policy, loader)


def _check_redis(policy: Policy, err: Any) -> None:
    """Redis URLs parse, and ``cache.backend: redis`` has one (its own, else ``state.redis_url``)."""
    from edge.redis_client import parse_redis_url

    for key, url in (("cache.redis_url", policy.cache.redis_url), ("state.redis_url", policy.state.redis_url)):
        if url is not None:
            try:
                parse_redis_url(url)
            except ValueError as exc:
                err(key, str(exc))
    if policy.cache.backend == "redis" and not (policy.cache.redis_url or policy.state.redis_url):
        err("cache.backend", "backend redis needs cache.redis_url (or state.redis_url)")


def _check_network(policy: Policy, loader: Loader) -> None:
    network = policy.network
    assert network is not None
    zones = network.zones
    err = loader.error_at
    for section in ("forward", "input", "masquerade"):
        for index, rule in enumerate(getattr(network, section)):
            for key in ("from", "to"):
                refs = getattr(rule, key + "_" if key == "from" else key, None)
                if refs is None:
                    continue
                for zone in refs:
                    if zone == "any":
                        if len(refs) > 1:
                            err(f"network.{section}[{index}].{key}", "'any' cannot be combined with zones")
                        continue
                    _known(err, f"network.{section}[{index}].{key}", zone, zones, "zone")
    vlans: dict[tuple[str, int], str] = {}
    for name, zone in zones.items():
        if name == "any":
            err(f"network.zones.{name}", "'any' is reserved")
        if zone.vlan is not None:
            key = (zone.vlan.parent, zone.vlan.id)
            if key in vlans:
                err(f"network.zones.{name}.vlan", f"vlan {zone.vlan.link_name} is already zone {vlans[key]!r}")
            vlans[key] = name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _known(err: Any, key: str, value: str, known: Any, what: str) -> None:
    if value not in known:
        err(key, f"unknown {what} {value!r}{did_you_mean(value, known)}")


_PATH_FIELDS = {
    "Admin": ("token_file",),
    "Certificate": ("cert", "key"),
    "Acme": ("storage", "ca_bundle"),
    "Tls": ("client_ca",),
    "GeoIP": ("database",),
    "State": ("file",),
    "WireGuardInterface": ("private_key_file",),
    "WireGuardPeer": ("preshared_key_file",),
}


def _resolve_paths(value: Any, base_dir: str) -> Any:
    """Rebuild the frozen tree with relative file paths made absolute."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        path_fields = _PATH_FIELDS.get(type(value).__name__, ())
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            if f.name in path_fields and isinstance(current, str) and current:
                new = current if os.path.isabs(current) else os.path.normpath(os.path.join(base_dir, current))
            else:
                new = _resolve_paths(current, base_dir)
            if new is not current:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, tuple):
        items = tuple(_resolve_paths(v, base_dir) for v in value)
        return items if any(a is not b for a, b in zip(items, value)) else value
    if isinstance(value, dict):
        items_map = {k: _resolve_paths(v, base_dir) for k, v in value.items()}
        return items_map if any(items_map[k] is not value[k] for k in value) else value
    return value
