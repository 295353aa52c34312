"""``state.file``: rate-limit buckets and bans, breakers, upstream health and client measurements.

Written (msgpack, atomically: temp file + rename, mode 0600) on shutdown and read back at
start. Every part exports clock-independent data (tokens now, seconds left), so a saved
file means the same thing after a restart whatever the monotonic clock says. A missing
or damaged file is logged and ignored: state is an optimisation, never a reason not to
serve.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import msgpack

from edge.quality import ClientMeasurements
from edge.serve.runtime import Runtime

__all__ = ["load_state", "save_state"]

log = logging.getLogger("edge.state")
FORMAT = 1
MAX_AGE = 24 * 3600.0  # older state is stale: the world moved on


def save_state(runtime: Runtime, path: str, now: float, clients: ClientMeasurements | None = None) -> None:
    data = {
        "format": FORMAT,
        "saved_at": time.time(),
        "limiters": {name: limiter.export_state(now) for name, limiter in runtime.limiters.items()},
        "breakers": {
            name: service.breaker.export_state(now)
            for name, service in runtime.services.items()
            if service.breaker is not None
        },
        "health": {name: service.health.export_state(now) for name, service in runtime.services.items()},
        "clients": clients.export_state(now) if clients is not None else {},
    }
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgpack.packb(data, use_bin_type=True))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


def load_state(runtime: Runtime, path: str, now: float, clients: ClientMeasurements | None = None) -> bool:
    """Import what ``path`` holds into ``runtime``; False (and a log line) if nothing was usable."""
    try:
        with open(path, "rb") as handle:
            data = msgpack.unpackb(handle.read(), raw=False, strict_map_key=False)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        log.warning("state file %s not used: %s", path, exc)
        return False
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.warning("state file %s not used: unknown format", path)
        return False
    age = time.time() - float(data.get("saved_at", 0))
    if age > MAX_AGE:
        log.info("state file %s is %.0f h old: not used", path, age / 3600)
        return False
    try:
        for name, saved in data.get("limiters", {}).items():
            limiter = runtime.limiters.get(name)
            if limiter is not None:
                limiter.import_state(_aged(saved, age), now)
        for name, saved in data.get("breakers", {}).items():
            service = runtime.services.get(name)
            if service is not None and service.breaker is not None:
                service.breaker.import_state(saved, now)
        for name, saved in data.get("health", {}).items():
            service = runtime.services.get(name)
            if service is not None:
                service.health.import_state(saved, now)
        if clients is not None and data.get("clients"):
            clients.import_state(data["clients"], now)
    except (TypeError, ValueError, AttributeError) as exc:
        log.warning("state file %s partly used: %s", path, exc)
    return True


def _aged(saved: dict, age: float) -> dict:
    """Bans count down while edge was stopped; buckets refill on import by their own rules."""
    bans = {key: left - age for key, left in saved.get("bans", {}).items() if left - age > 0}
    return {"buckets": saved.get("buckets", {}), "bans": bans}
