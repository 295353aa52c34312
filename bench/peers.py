"""The processes of a benchmark: the nginx origin and the proxies under test, as launch specs.

Owns which binary runs with which config and environment for each proxy (edge, nginx,
HAProxy, Caddy) and the origin. Configs are the templates in ``bench/configs/``
filled with the run's ports and directory (``${port}`` etc.; only the braced form, so
nginx's own ``$variables`` pass through). Pure: renders text and argv, starts nothing;
``bench/procs.py`` runs them and ``bench/harness.py`` decides the order.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "CONFIG_DIR",
    "PROXIES",
    "Launch",
    "RunPorts",
    "SMALL_BODY",
    "TlsFiles",
    "LARGE_BODY",
    "edge_binary",
    "launch_origin",
    "launch_proxy",
    "listen_address",
    "render",
    "tls_address",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# The proxies in the order they are measured and shown; edge first, the reference for ratios.
PROXIES = ("edge", "haproxy", "nginx", "caddy")

# Response bodies served by the origin at /small and /64k.
SMALL_BODY = (b"edge bench " * 10)[:99] + b"\n"  # exactly 100 bytes
LARGE_BODY = bytes(range(256)) * 256  # exactly 64 KiB

_PLACEHOLDER = re.compile(r"\$\{([a-z_0-9]+)\}")


@dataclass(frozen=True, slots=True)
class RunPorts:
    """The loopback ports of one run: origin (two), and per proxy a listener (and admin for edge);
    with --https also a TLS listener per proxy (``tls``)."""

    origin1: int
    origin2: int
    proxies: dict[str, int]
    edge_admin: int
    tls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The run's certificate (one for every proxy), issued by edge's internal CA for 127.0.0.1."""

    cert: Path  # leaf certificate (PEM, chain)
    key: Path  # its private key
    pem: Path  # cert + key in one file (HAProxy's crt)
    root: Path  # the CA root, for clients that verify


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one process: argv (without CPU pinning), extra env, files to write first."""

    name: str
    argv: list[str]
    host: str
    port: int
    files: dict[str, str | bytes] = field(default_factory=dict)
    tls_port: int | None = None  # the TLS listener (--https), on ``host``
    env: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def render(template: str, values: dict[str, object], source: str = "<template>") -> str:
    """Fill ``${name}`` placeholders; an unknown ``${name}`` is an error (a typo would hang the run).

    Only the braced form is a placeholder, so nginx's ``$host`` and a YAML ``$`` stay as written.
    """
    unknown: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            unknown.add(name)
            return match.group(0)
        return str(values[name])

    text = _PLACEHOLDER.sub(fill, template)
    if unknown:
        names = ", ".join("${" + n + "}" for n in sorted(unknown))
        raise ValueError(f"{source}: unknown placeholder(s) {names}; known: {', '.join(sorted(values))}")
    return text


def _template(name: str) -> str:
    return (CONFIG_DIR / name).read_text()


def _values(
    ports: RunPorts, run_dir: Path, name: str, policy_dir: Path = CONFIG_DIR, tls: TlsFiles | None = None
) -> dict[str, object]:
    values: dict[str, object] = {
        "policy_dir": policy_dir,
        "dir": run_dir,
        "port": ports.proxies.get(name, 0),
        "admin_port": ports.edge_admin,
        "origin_port1": ports.origin1,
        "origin_port2": ports.origin2,
        "access_log": run_dir / "edge-access.log",
    }
    if tls is not None:
        values.update(tls_port=ports.tls.get(name, 0), tls_cert=tls.cert, tls_key=tls.key, tls_pem=tls.pem)
    return values


def launch_origin(ports: RunPorts, run_dir: Path) -> Launch:
    """The nginx origin: /small (100 B) and /64k (64 KiB) on two ports."""
    conf = render(_template("origin-nginx.conf"), _values(ports, run_dir, "origin"), "origin-nginx.conf")
    return Launch(
        name="origin",
        argv=_nginx_argv(run_dir, "origin"),
        host="127.0.0.1",
        port=ports.origin1,
        files={"origin.conf": conf, "www/small": SMALL_BODY, "www/64k": LARGE_BODY},
    )


def _nginx_argv(run_dir: Path, name: str) -> list[str]:
    return [
        "nginx",
        "-p",
        str(run_dir),
        "-e",
        str(run_dir / f"{name}-error.log"),
        "-c",
        str(run_dir / f"{name}.conf"),
        "-g",
        "daemon off;",
    ]


def edge_binary() -> str | None:
    """The ``edge`` console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "edge"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("edge")


def binary(name: str) -> str | None:
    """The executable a proxy (or ``origin``) needs, or None when it is not installed."""
    if name == "edge":
        return edge_binary()
    return shutil.which({"origin": "nginx"}.get(name, name))


def _first_address(data: dict, tls: bool) -> tuple[str, int] | None:
    """The first address of the first plain (or TLS) listener, made connectable and checked loopback."""
    for listener in (data.get("listeners") or {}).values():
        listener = listener or {}
        if bool(listener.get("tls")) != tls:
            continue
        addresses = listener.get("listen") or ()
        for address in [addresses] if isinstance(addresses, str) else addresses:
            host, _, port = str(address).rpartition(":")
            host = host.strip("[]")
            host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"edge policy: listener address {address} is not loopback; the bench stays on lo")
            return host, int(port)
    return None


def listen_address(policy_text: str) -> tuple[str, int]:
    """The first plain-HTTP address of the policy's listeners: where wrk is pointed (and readiness asked)."""
    data = yaml.safe_load(policy_text) or {}
    found = _first_address(data, tls=False)
    if found is not None:
        return found
    if _first_address(data, tls=True) is not None:
        raise ValueError("edge policy: only TLS listeners; the bench needs a plain one too (readiness, plain tests)")
    raise ValueError("edge policy: no listener address (listeners.NAME.listen)")


# The TLS listener added (with --https) to an edge policy that has none: the run's certificate,
# ALPN h2 and http/1.1, edge's defaults otherwise (TLS 1.2 minimum, its modern cipher list).
BENCH_TLS_LISTENER = "bench-tls"


def tls_address(policy_text: str) -> tuple[str, int] | None:
    """The first address of the policy's first TLS listener: where the TLS clients are pointed."""
    return _first_address(yaml.safe_load(policy_text) or {}, tls=True)


def with_tls_listener(policy_text: str, values: dict[str, object]) -> str:
    """The policy with a TLS listener on ``${tls_port}`` using the run's certificate, unless it
    already has one (then it is used as written: a custom policy's own TLS settings)."""
    if tls_address(policy_text) is not None:
        return policy_text
    data = yaml.safe_load(policy_text) or {}
    listeners = data.setdefault("listeners", {})
    if BENCH_TLS_LISTENER in listeners:
        raise ValueError(f"edge policy: listener {BENCH_TLS_LISTENER!r} exists but has no tls section")
    listeners[BENCH_TLS_LISTENER] = {
        "listen": [f"127.0.0.1:{values['tls_port']}"],
        "tls": {
            "certificates": [{"cert": str(values["tls_cert"]), "key": str(values["tls_key"])}],
            "alpn": ["h2", "http/1.1"],
        },
    }
    header = "# rendered by bench/peers.py: the policy template plus the TLS listener of --https\n"
    return header + yaml.safe_dump(data, sort_keys=False)


# The peers' templates without and with a TLS listener (--https): the https ones are the plain
# ones plus the TLS listener only (tests/test_bench_smoke.py checks they stay in step).
TEMPLATES = {
    "nginx": ("nginx.conf", "nginx-https.conf"),
    "haproxy": ("haproxy.cfg", "haproxy-https.cfg"),
    "caddy": ("Caddyfile", "Caddyfile-https"),
}


def launch_proxy(
    name: str, ports: RunPorts, run_dir: Path, edge_policy: Path | None = None, tls: TlsFiles | None = None
) -> Launch:
    """The launch spec of one proxy under test, its config rendered for this run (with a TLS
    listener on ``ports.tls[name]`` when ``tls`` is given)."""
    source = Path(edge_policy or CONFIG_DIR / "edge.yaml").resolve()
    values = _values(ports, run_dir, name, source.parent, tls)
    port = ports.proxies[name]
    tls_port = ports.tls.get(name) if tls is not None else None
    if name == "edge":
        policy = render(source.read_text(), values, str(source))
        host, port = listen_address(policy)
        if tls is not None:
            policy = with_tls_listener(policy, values)
            tls_host, tls_port = tls_address(policy) or (host, 0)
            if tls_host != host:
                raise ValueError(f"edge policy: the TLS listener is on {tls_host}, the plain one on {host}")
        access_log = (yaml.safe_load(policy).get("access_log") or {}).get("path", "-")
        return Launch(
            name=name,
            argv=[edge_binary() or "edge", "serve", "-c", str(run_dir / "edge.yaml")],
            host=host,
            port=port,
            files={"edge.yaml": policy},
            tls_port=tls_port,
            notes={"policy": str(source), "access_log": str(access_log)},
        )
    if name not in TEMPLATES:
        raise ValueError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)})")
    template = TEMPLATES[name][tls is not None]
    conf = render(_template(template), values, template)
    if name == "nginx":
        return Launch(name, _nginx_argv(run_dir, "nginx"), "127.0.0.1", port, {"nginx.conf": conf}, tls_port)
    if name == "haproxy":
        argv = ["haproxy", "-db", "-f", str(run_dir / "haproxy.cfg")]
        return Launch(name, argv, "127.0.0.1", port, {"haproxy.cfg": conf}, tls_port)
    argv = ["caddy", "run", "--config", str(run_dir / "Caddyfile"), "--adapter", "caddyfile"]
    home = str(run_dir / "caddy-home")
    env = {"GOMAXPROCS": "1", "HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
    return Launch(name, argv, "127.0.0.1", port, {"Caddyfile": conf}, tls_port, env=env)
