"""wrk: the command line for one test, and the parse of its ``--latency`` output.

Owns the knowledge of wrk's text format (latency units, the latency distribution,
"Socket errors", "Non-2xx or 3xx responses", "Requests/sec"). Pure: nothing here
runs a process; the harness does that and hands the text in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["WrkError", "WrkResult", "parse_duration_text", "parse_wrk", "wrk_argv"]

# wrk prints times with these suffixes (see wrk's units.c: us, ms, s, m, h).
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


class WrkError(ValueError):
    """wrk's output did not contain what a ``--latency`` run always prints."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (seconds) and error counts."""

    rps: float
    p50: float
    p99: float
    requests: int
    bytes_read: int
    non_2xx_3xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        """Failed requests as wrk counts them: non-2xx/3xx responses plus socket errors."""
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    @property
    def bytes_per_request(self) -> float:
        return self.bytes_read / self.requests if self.requests else 0.0


def wrk_argv(url: str, connections: int, duration_s: int, threads: int = 1, timeout_s: int = 2) -> list[str]:
    """The wrk command line for one test (wrk takes whole seconds only)."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration_s)}s",
        f"--timeout={int(timeout_s)}s",
        "--latency",
        url,
    ]


def _seconds(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of ``wrk --latency``; raise WrkError if a required part is missing."""
    percentiles = {float(p): _seconds(v, u) for p, v, u in _PERCENTILE.findall(text)}
    rps = _RPS.search(text)
    requests = _REQUESTS.search(text)
    if rps is None or requests is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkError("wrk output without Requests/sec, request count or latency distribution:\n" + text.strip())
    socket = _SOCKET.search(text)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if socket is not None:
        socket_errors = dict(zip(socket_errors, (int(g) for g in socket.groups())))
    non2xx = _NON2XX.search(text)
    return WrkResult(
        rps=float(rps.group(1)),
        p50=percentiles[50.0],
        p99=percentiles[99.0],
        requests=int(requests.group(1)),
        bytes_read=int(float(requests.group(4)) * _BYTE_UNITS[requests.group(5)]),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=socket_errors,
    )


def parse_duration_text(text: str, minimum: int = 1) -> int:
    """``10``, ``10s``, ``2m`` -> whole seconds >= ``minimum`` (wrk's ``-d`` takes whole seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|h)?\s*", text)
    if match is None:
        raise ValueError(f"duration {text!r}: expected whole seconds like 10, 10s or 1m")
    seconds = int(match.group(1)) * int(_TIME_UNITS[match.group(2) or "s"])
    if seconds < minimum:
        raise ValueError(f"duration {text!r}: must be at least {minimum}s")
    return seconds
