"""h2load: the command line of the HTTP/2 test, and the parse of its output and per-request log.

Owns the knowledge of h2load's text format ("finished in ..., N req/s", "requests: ... succeeded,
... failed, ... errored, ... timeout", "status codes:", "traffic: ... data", "Application
protocol:") and of its ``--log-file`` (tab-separated: start time in microseconds since the epoch,
HTTP status, microseconds until the end of the response), from which p50 and p99 are computed
(h2load prints only min/max/mean itself). Pure: nothing here runs a process.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench.wrk import WrkError, WrkResult

__all__ = ["H2loadError", "h2load_argv", "parse_h2load", "percentiles_from_log"]

_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_DATA = re.compile(r"^traffic: .*?, [\d.]+[KMG]?B \((\d+)\) data", re.MULTILINE)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.MULTILINE)


class H2loadError(WrkError):
    """h2load's output lacked what every run prints, or it did not speak HTTP/2."""


def h2load_argv(
    url: str,
    connections: int,
    streams: int,
    duration_s: int,
    log_file: Path,
    ciphersuites: str,
    groups: str,
) -> list[str]:
    """``h2load -c50 -m10 -D 10``: one thread, TLS 1.3 suite and group pinned like the other clients."""
    return [
        "h2load",
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        f"-D{int(duration_s)}",
        f"--tls13-ciphers={ciphersuites}",
        f"--groups={groups}",
        f"--log-file={log_file}",
        url,
    ]


def percentiles_from_log(text: str) -> tuple[float, float, int]:
    """(p50, p99, responses) in seconds from h2load's ``--log-file``; zeros when it is empty."""
    latencies = sorted(int(line.split("\t")[2]) for line in text.splitlines() if line.count("\t") >= 2)
    if not latencies:
        return 0.0, 0.0, 0

    def at(fraction: float) -> float:
        index = min(len(latencies) - 1, max(0, math.ceil(fraction * len(latencies) - 1e-9) - 1))  # nearest rank
        return latencies[index] / 1e6

    return at(0.50), at(0.99), len(latencies)


def parse_h2load(text: str, log_text: str = "") -> WrkResult:
    """h2load's summary (and its per-request log, for percentiles) -> the same result type as wrk's."""
    finished, requests, status = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if finished is None or requests is None or status is None:
        raise H2loadError("h2load output without 'finished in', 'requests:' or 'status codes:':\n" + text.strip())
    protocol = _PROTOCOL.search(text)
    if protocol is None or protocol.group(1) != "h2":
        spoke = protocol.group(1) if protocol else "no ALPN"
        raise H2loadError(f"h2load negotiated {spoke}, not h2: the proxy did not offer HTTP/2")
    _total, _started, _done, succeeded, failed, errored, timeout = (int(g) for g in requests.groups())
    _ok2, _ok3, client4, server5 = (int(g) for g in status.groups())
    data = _DATA.search(text)
    p50, p99, _logged = percentiles_from_log(log_text)
    # "failed" counts errored and timed-out requests as well as non-2xx/3xx ones (h2load's
    # Stats::req_failed): report the parts, not the sum twice.
    other_failed = max(0, failed - errored - timeout - client4 - server5)
    return WrkResult(
        rps=float(finished.group(3)),
        p50=p50,
        p99=p99,
        requests=succeeded,
        bytes_read=int(data.group(1)) if data else 0,
        non_2xx_3xx=client4 + server5,
        socket_errors={"errored": errored, "timeout": timeout, "failed": other_failed},
    )
