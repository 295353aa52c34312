"""Results of a run: rows, ratios to edge, the issue's targets, the table, JSON and plot.

Owns the presentation and the arithmetic on measured numbers; pure except for
``write_json`` and ``write_plot``. The printed table is also a format: ``parse_table``
reads it back (the smoke test and later tooling rely on it), so change both together.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "TESTS",
    "Row",
    "Target",
    "combine",
    "format_table",
    "format_time",
    "format_tls",
    "parse_table",
    "ratios",
    "targets",
    "write_json",
    "write_plot",
]

# test name -> (path, connections): what each test asks its load generator for.
TESTS: dict[str, tuple[str, int]] = {
    "small": ("/small", 50),
    "64k": ("/64k", 50),
    "latency": ("/small", 1),
    "https-small": ("/small", 50),
    "h2": ("/small", 50),
    "handshakes": ("/small", 50),
}
# Plain HTTP tests (the default) and the TLS tests (the default with --https).
PLAIN_TESTS = ("small", "64k", "latency")
HTTPS_TESTS = ("https-small", "h2", "handshakes")
# test -> the load generator: wrk (keep-alive HTTP/1.1, over TLS for https-small), h2load
# (-m streams per connection), or bench.handshakes (a new connection and full handshake per request).
TOOLS = {
    "small": "wrk",
    "64k": "wrk",
    "latency": "wrk",
    "https-small": "wrk",
    "h2": "h2load",
    "handshakes": "handshakes",
}
H2_STREAMS = 10  # h2load -m: concurrent streams per connection
# path -> body size the origin serves there; fewer bytes per response means a proxy answered itself.
BODY_SIZES = {"/small": 100, "/64k": 65536}

REFERENCE = "edge"


@dataclass(frozen=True, slots=True)
class Row:
    """One proxy x test: measured numbers (seconds for latencies), or why there are none."""

    proxy: str
    test: str
    status: str = "ok"  # ok | failed | skipped
    message: str = ""
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    errors: int = 0
    requests: int = 0
    bytes_per_request: float = 0.0
    detail: dict[str, int] = field(default_factory=dict)
    proxy_cpu: float = 0.0  # CPU seconds of the proxy's processes per wall second of the test
    # Busy fractions of the CPUs (softirq included: loopback traffic is mostly softirq work), and
    # the share of the proxy's CPU that other processes took. None when not pinned.
    client_cpu_busy: float | None = None
    proxy_cpu_busy: float | None = None
    others_cpu: float | None = None
    wrk_output: str = ""
    runs: list[dict[str, float]] = field(default_factory=list)  # each run's numbers when repeated
    # From the origin's stub_status around the test: connections the proxy opened to it, and
    # requests it forwarded. None when the origin could not be asked.
    upstream_connections: int | None = None
    origin_requests: int | None = None

    @property
    def rps_per_cpu(self) -> float:
        """Requests per CPU-second of the proxy's own processes: its capacity on one core, which
        stays comparable when the client side is the bottleneck (full handshakes are)."""
        return self.rps / self.proxy_cpu if self.proxy_cpu > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issues' targets: ``edge_value <op> factor * peer_value`` (the peer is ``against``)."""

    test: str
    metric: str
    op: str
    factor: float
    edge: float
    peer: float
    against: str = "haproxy"

    @property
    def ratio(self) -> float:
        return self.edge / self.peer if self.peer else math.inf

    @property
    def met(self) -> bool:
        return self.ratio >= self.factor if self.op == ">=" else self.ratio <= self.factor


# (test, metric, op, factor, peer): issue 2's targets (plain HTTP, against HAProxy) and
# issue 3's (TLS: keep-alive and handshakes against HAProxy, HTTP/2 against Caddy).
TARGETS = (
    ("small", "rps", ">=", 0.6, "haproxy"),
    ("small", "p99", "<=", 2.0, "haproxy"),
    ("64k", "rps", ">=", 0.9, "haproxy"),
    ("latency", "p50", "<=", 1.5, "haproxy"),
    ("https-small", "rps", ">=", 0.6, "haproxy"),
    ("h2", "rps", ">=", 1.0, "caddy"),
    ("handshakes", "rps", ">=", 0.8, "haproxy"),
    # The client's half of a full handshake costs OpenSSL more than the server's: with one client
    # CPU, handshakes/s is often the client's ceiling. Handshakes per proxy CPU-second is not.
    ("handshakes", "rps_per_cpu", ">=", 0.8, "haproxy"),
)
# How a target's metric is printed.
METRIC_LABELS = {"rps_per_cpu": "rps/cpu"}


def combine(runs: list[Row]) -> Row:
    """The rows of one proxy x test over repeated rounds -> one row: medians of rps, latencies
    and CPU, errors summed, the worst CPU-contention figures; a failed round fails the row."""
    if len(runs) == 1:
        return runs[0]
    for index, run in enumerate(runs, 1):
        if run.status != "ok":
            return Row(run.proxy, run.test, run.status, f"{run.message} (round {index} of {len(runs)})")
    first = runs[0]
    detail: dict[str, int] = {}
    for run in runs:
        for key, value in run.detail.items():
            detail[key] = detail.get(key, 0) + value
    client = [r.client_cpu_busy for r in runs if r.client_cpu_busy is not None]
    proxy = [r.proxy_cpu_busy for r in runs if r.proxy_cpu_busy is not None]
    others = [r.others_cpu for r in runs if r.others_cpu is not None]
    opened = [r.upstream_connections for r in runs if r.upstream_connections is not None]
    forwarded = [r.origin_requests for r in runs if r.origin_requests is not None]
    return Row(
        first.proxy,
        first.test,
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        errors=sum(r.errors for r in runs),
        requests=sum(r.requests for r in runs),
        bytes_per_request=statistics.median(r.bytes_per_request for r in runs),
        detail=detail,
        proxy_cpu=statistics.median(r.proxy_cpu for r in runs),
        client_cpu_busy=max(client) if client else None,
        proxy_cpu_busy=statistics.median(proxy) if proxy else None,
        others_cpu=max(others) if others else None,
        upstream_connections=sum(opened) if len(opened) == len(runs) else None,
        origin_requests=sum(forwarded) if len(forwarded) == len(runs) else None,
        wrk_output="\n".join(r.wrk_output for r in runs),
        runs=[{"rps": r.rps, "p50": r.p50, "p99": r.p99, "errors": r.errors, "cpu": r.proxy_cpu} for r in runs],
    )


def format_time(seconds: float) -> str:
    """Latency the way people read it: 512us, 1.23ms, 1.20s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def _ok(rows: list[Row], proxy: str, test: str) -> Row | None:
    return next((r for r in rows if r.proxy == proxy and r.test == test and r.status == "ok"), None)


def ratios(rows: list[Row], row: Row) -> dict[str, float] | None:
    """edge/peer for rps, p50 and p99 in the same test; None for edge itself or without an edge row."""
    ref = _ok(rows, REFERENCE, row.test)
    if row.proxy == REFERENCE or ref is None or row.status != "ok":
        return None
    return {
        metric: (getattr(ref, metric) / getattr(row, metric)) if getattr(row, metric) else math.inf
        for metric in ("rps", "p50", "p99")
    }


def targets(rows: list[Row]) -> list[Target]:
    """The issues' targets that this run can judge (both edge and that target's peer measured)."""
    found = []
    for test, metric, op, factor, peer in TARGETS:
        ref, other = _ok(rows, REFERENCE, test), _ok(rows, peer, test)
        if ref is not None and other is not None:
            found.append(Target(test, metric, op, factor, getattr(ref, metric), getattr(other, metric), peer))
    return found


_HEADER = ("proxy", "test", "rps", "p50", "p99", "errors", "rps e/p", "p50 e/p", "p99 e/p", "cpu")
_WIDTHS = (8, 11, 10, 9, 9, 7, 8, 8, 8, 5)
# A client CPU this busy means the number is the client's ceiling rather than the proxy's.
CLIENT_SATURATED = 0.95
# ... while the proxy's CPU (softirq included) was less busy than this.
PROXY_IDLE = 0.90
# More new upstream connections than this share of requests: the proxy is not reusing them.
UPSTREAM_REUSE_MISSING = 0.01
# Other processes using this much of the proxy's CPU make the row unfit for comparison.
PROXY_CPU_CONTENDED = 0.10


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, _WIDTHS))).rstrip()


def format_table(rows: list[Row]) -> str:
    """The one table: a row per proxy x test, ratios edge/peer (e/p) on the peers' rows, the proxy's
    own CPU use (of one core), then the targets, and notes on rows not to trust."""
    out = [_line(_HEADER)]
    # A proxy that did not run: one line (not one per test), above the measurements.
    out.extend(dict.fromkeys(f"{row.proxy}: {' '.join(row.message.split())}" for row in rows if row.status != "ok"))
    for row in rows:
        if row.status != "ok":
            continue
        ratio = ratios(rows, row)
        ratio_cells = ("-", "-", "-") if ratio is None else tuple(f"{ratio[m]:.2f}" for m in ("rps", "p50", "p99"))
        cells = (row.proxy, row.test, f"{row.rps:,.0f}", format_time(row.p50), format_time(row.p99), str(row.errors))
        out.append(_line((*cells, *ratio_cells, f"{row.proxy_cpu:.0%}")))
    judged = targets(rows)
    if judged:
        out.append("")
        peers = sorted({t.against for t in judged})
        out.append(f"targets (edge vs {peers[0]}):" if len(peers) == 1 else "targets (edge vs peer, same run):")
        width = max(8, *(len(t.test) for t in judged))
        for t in judged:
            verdict = "met" if t.met else "MISSED"
            want = f"(want {t.op} {t.factor:g})"
            label = METRIC_LABELS.get(t.metric, t.metric)
            out.append(f"  {t.test:<{width}} {label:<4} edge/{t.against} {t.ratio:.2f} {want}  {verdict}")
    client_bound = [
        f"{r.proxy} {r.test}"
        for r in rows
        if r.status == "ok"
        and r.client_cpu_busy is not None
        and r.proxy_cpu_busy is not None
        and r.client_cpu_busy >= CLIENT_SATURATED
        and r.proxy_cpu_busy < PROXY_IDLE
    ]
    if client_bound:
        out.append("")
        out.append(
            f"note: client-bound (CPU 0 >= {CLIENT_SATURATED:.0%} busy, CPU 1 < {PROXY_IDLE:.0%}): "
            f"{', '.join(client_bound)};"
        )
        out.append("      their rps is the origin + load generator ceiling, not the proxy's (see rps/cpu).")
    reconnecting = [
        f"{r.proxy} {r.test} ({r.upstream_connections:,} for {r.requests:,} requests)"
        for r in rows
        if r.status == "ok"
        and r.upstream_connections is not None
        and r.upstream_connections > max(100, UPSTREAM_REUSE_MISSING * r.requests)
    ]
    if reconnecting:
        out.append("")
        out.append(f"note: new connections to the origin during: {', '.join(reconnecting)};")
        out.append("      upstream keep-alive is not working for those.")
    contended = [
        f"{r.proxy} {r.test} ({r.others_cpu:.0%})"
        for r in rows
        if r.status == "ok" and r.others_cpu is not None and r.others_cpu >= PROXY_CPU_CONTENDED
    ]
    if contended:
        out.append("")
        out.append(f"note: other processes used the proxy's CPU during: {', '.join(contended)};")
        out.append("      those numbers are low by about that share: measure on a quiet machine.")
    return "\n".join(out)


def format_tls(tls: dict[str, dict[str, str]]) -> str:
    """What each proxy's TLS listener negotiated with the benchmark's client settings, and a note
    when they differ (then the TLS rows compare different work)."""
    if not tls:
        return ""
    out = ["tls (openssl s_client with the load generators' client settings):"]
    for proxy, info in tls.items():
        if info.get("error"):
            out.append(f"  {proxy:<8} {info['error']}")
            continue
        cells = (info.get(k) or "?" for k in ("version", "cipher", "group", "signature"))
        out.append(f"  {proxy:<8} " + "  ".join(cells) + f"  alpn {info.get('alpn') or '-'}")
    seen = {(i.get("version"), i.get("cipher"), i.get("group")) for i in tls.values() if not i.get("error")}
    if len(seen) > 1:
        out.append("note: the proxies negotiated different TLS parameters: the TLS rows are not comparable.")
    return "\n".join(out)


_TIME = re.compile(r"^([\d.]+)(us|ms|s)$")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _parse_time(text: str) -> float:
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"not a latency: {text!r}")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_table(text: str) -> list[dict[str, object]]:
    """Read the measured rows back from ``format_table`` output (failure lines become status rows)."""
    rows: list[dict[str, object]] = []
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if tuple(parts[:6]) == _HEADER[:6]:
            in_table = True
            continue
        if not parts and in_table:
            break  # the table ends at the first blank line (the targets follow)
        if not in_table:
            continue
        if parts[0].endswith(":"):
            message = line.split(":", 1)[1].strip()
            status = "skipped" if message.startswith(("skipped", "h2 not available")) else "failed"
            rows.append({"proxy": parts[0][:-1], "status": status, "message": message})
            continue
        if len(parts) != len(_HEADER):
            continue
        rows.append(
            {
                "proxy": parts[0],
                "test": parts[1],
                "status": "ok",
                "rps": float(parts[2].replace(",", "")),
                "p50": _parse_time(parts[3]),
                "p99": _parse_time(parts[4]),
                "errors": int(parts[5]),
                "ratios": None if parts[6] == "-" else dict(zip(("rps", "p50", "p99"), map(float, parts[6:9]))),
                "cpu": float(parts[9].rstrip("%")) / 100,
            }
        )
    return rows


def write_json(path: Path, meta: dict[str, object], rows: list[Row]) -> None:
    """The whole run as JSON: metadata, rows (latencies in seconds), ratios and targets."""
    document = {
        "meta": meta,
        "rows": [asdict(r) | {"rps_per_cpu": r.rps_per_cpu, "ratios_edge_over_peer": ratios(rows, r)} for r in rows],
        "targets": [asdict(t) | {"ratio": t.ratio, "met": t.met} for t in targets(rows)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def _value(rows: list[Row], proxy: str, test: str, metric: str) -> float:
    row = _ok(rows, proxy, test)
    return float(getattr(row, metric)) if row is not None else 0.0


def write_plot(path: Path, rows: list[Row]) -> bool:
    """Bar charts of rps and p99 per test and proxy; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in rows if r.status == "ok"]
    tests = list(dict.fromkeys(r.test for r in measured))
    proxies = list(dict.fromkeys(r.proxy for r in measured))
    if not tests:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(proxies), 1)
    for axis, metric, label, scale in ((axes[0], "rps", "requests/s", 1.0), (axes[1], "p99", "p99 (ms)", 1e3)):
        for i, proxy in enumerate(proxies):
            values = [_value(measured, proxy, test, metric) * scale for test in tests]
            axis.bar([x + i * width for x in range(len(tests))], values, width, label=proxy)
        axis.set_xticks([x + width * (len(proxies) - 1) / 2 for x in range(len(tests))], tests)
        axis.set_ylabel(label)
        axis.set_title(f"{label}, {'higher' if metric == 'rps' else 'lower'} is better")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
