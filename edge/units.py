"""Units of the policy file, parsed in one place.

Durations (``250ms`` ``5s`` ``1m`` ``1h``) become float seconds, rates (``10/s``
``600/m``) float events per second, bandwidths (``500kbps`` ``8mbps``) float
bytes per second, sizes (``64KiB`` ``1MiB``) int bytes. Every parser raises
``UnitError`` with a message fit to show a user; nothing here knows about YAML.
"""

from __future__ import annotations

import re

__all__ = [
    "UnitError",
    "parse_bandwidth",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "format_duration",
]


class UnitError(ValueError):
    """A value whose unit or number is not understood."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Bits per second, decimal prefixes as network people use them.
_BANDWIDTH_UNITS = {"bps": 1, "kbps": 1_000, "mbps": 1_000_000, "gbps": 1_000_000_000}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([a-zA-Z]+)\s*$")


def _split(text: object, what: str, example: str) -> tuple[float, str]:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected a {what} like {example!r}, got {text!r}")
    match = _NUMBER_UNIT.match(str(text))
    if match is None:
        raise UnitError(f"expected a {what} like {example!r}, got {text!r}")
    return float(match.group(1)), match.group(2).lower()


def parse_duration(text: object) -> float:
    """``250ms`` -> 0.25. A bare 0 is accepted; other numbers need a unit."""
    number, unit = _split(text, "duration", "5s")
    if not unit:
        if number == 0:
            return 0.0
        raise UnitError(f"duration {text!r} needs a unit (ms, s, m, h, d), e.g. '{text}s'")
    factor = _DURATION_UNITS.get(unit)
    if factor is None:
        raise UnitError(f"unknown duration unit {unit!r} in {text!r} (use ms, s, m, h or d)")
    return number * factor


def parse_rate(text: object) -> float:
    """``600/m`` -> 10.0 events per second."""
    if not isinstance(text, str):
        raise UnitError(f"expected a rate like '10/s', got {text!r}")
    match = _RATE.match(text)
    if match is None:
        raise UnitError(f"expected a rate like '10/s', got {text!r}")
    per = _RATE_UNITS.get(match.group(2).lower())
    if per is None:
        raise UnitError(f"unknown rate unit in {text!r} (use /s, /m or /h)")
    value = float(match.group(1))
    if value <= 0:
        raise UnitError(f"rate {text!r} must be above zero")
    return value / per


def parse_bandwidth(text: object) -> float:
    """``8mbps`` -> 1_000_000.0 bytes per second (bits / 8)."""
    number, unit = _split(text, "bandwidth", "8mbps")
    factor = _BANDWIDTH_UNITS.get(unit)
    if factor is None:
        raise UnitError(f"unknown bandwidth unit in {text!r} (use bps, kbps, mbps or gbps)")
    if number <= 0:
        raise UnitError(f"bandwidth {text!r} must be above zero")
    return number * factor / 8.0


def parse_size(text: object) -> int:
    """``64KiB`` -> 65536. A bare integer is bytes."""
    number, unit = _split(text, "size", "64KiB")
    factor = _SIZE_UNITS.get(unit)
    if factor is None:
        raise UnitError(f"unknown size unit in {text!r} (use B, KiB, MiB, GiB, KB, MB or GB)")
    return int(number * factor)


def format_duration(seconds: float) -> str:
    """The shortest exact policy spelling of ``seconds`` (for messages and plans)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, factor in (("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"
