"""Micro benchmarks of the quality, cache, GeoIP and zone hot paths (pytest-benchmark; no asserts on time).

Run: .venv/bin/python -m pytest bench/micro_features.py --benchmark-only -q

What they show: the per-request cost each feature adds in front of the proxy's ~20 µs budget
at 50k requests/s: reading hints and choosing a tier, the cache's request plan, key and hit
lookup, a zone check, a GeoIP lookup (cached and not), and the per-chunk costs of pacing and
gzip that only paced/compressed responses pay.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edge.cache.policy import PLAIN_GET, cache_key, request_plan_from_head, response_plan
from edge.cache.store import MemoryStore
from edge.geoip import GeoIPDatabase
from edge.policy.model import Network, QualityProfile, Tier, TierCondition, Zone
from edge.quality import ClientHints, ClientMeasurements, GzipStream, Pacer, TierChooser
from edge.zones import ZoneMatcher
from tests.features.heads import request, response

MBPS = 125_000.0
PROFILE = QualityProfile(
    tiers=(
        Tier("low", when=TierCondition(save_data=True)),
        Tier("low", when=TierCondition(downlink_below=2 * MBPS)),
        Tier("medium", when=TierCondition(downlink_below=10 * MBPS, rtt_above=0.150), max_rate=8 * MBPS,
             compress=True),
        Tier("high"),
    )
)
# A browser-like request without client hints, and one with them.
PLAIN = request("/index.html", "User-Agent: Mozilla/5.0", "Accept: text/html", "Accept-Encoding: gzip, br",
                "Accept-Language: de", "Cookie: a=b")
HINTED = request("/index.html", "User-Agent: Mozilla/5.0", "Accept: text/html", "Save-Data: on", "Downlink: 1.5",
                 "ECT: 3g", "RTT: 250")


def test_hints_absent(benchmark) -> None:
    benchmark(ClientHints.from_head, PLAIN)


def test_hints_present(benchmark) -> None:
    benchmark(ClientHints.from_head, HINTED)


def test_measure_and_choose_tier(benchmark) -> None:
    """What a request on a route with ``quality:`` costs: hints, measurement lookup, choice."""
    chooser = TierChooser(PROFILE)
    clients = ClientMeasurements()
    clients.observe_throughput("192.0.2.1", 1_000_000, 1.0, 0.0)
    clients.observe_rtt("192.0.2.1", 0.05, 0.0)

    def per_request():
        hints = ClientHints.from_head(PLAIN)
        return chooser.choose(hints, clients.get("192.0.2.1", 1.0), 1.0)

    benchmark(per_request)


def test_cache_plan_and_key(benchmark) -> None:
    def per_request():
        request_plan_from_head(PLAIN)
        return cache_key(PLAIN.host, PLAIN.target, "high")

    benchmark(per_request)


def test_cache_hit_lookup(benchmark) -> None:
    store = MemoryStore(64 << 20)
    head = response(200, "Content-Type: text/html", "Vary: Accept-Encoding", body=b"x" * 1000)
    plan = response_plan(PLAIN_GET, 200, head.lines, head.names, 60.0, 1.7e9)
    key = cache_key(PLAIN.host, PLAIN.target, "high")
    writer = store.begin(key, PLAIN.header, 200, b"OK", head.lines, head.names, plan, 0.0)
    writer.append(b"x" * 1000)
    writer.commit()

    def per_request():
        entry = store.get(cache_key(PLAIN.host, PLAIN.target, "high"), PLAIN.header, 1.0)
        return entry.satisfies(PLAIN_GET, 1.0) and entry.head_lines(1.0)

    assert per_request()
    benchmark(per_request)


def test_zone_check_cached(benchmark) -> None:
    import ipaddress

    zones = ZoneMatcher(Network(zones={
        name: Zone(interfaces=(name,), address=(ipaddress.ip_interface(f"10.0.{i}.1/24"),))
        for i, name in enumerate(("mgmt", "prod", "iot", "guest"))
    }))
    benchmark(zones.allowed, ("mgmt",), "10.0.2.9")


@pytest.fixture(scope="module")
def mmdb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("geo") / "country.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    for i in range(1, 200):
        writer.insert_network(IPSet([f"{i}.0.0.0/8"]), {"country": {"iso_code": "DE" if i % 2 else "NL"}})
    writer.to_db_file(str(path))
    return path


def test_geoip_cached(benchmark, mmdb: Path) -> None:
    db = GeoIPDatabase(str(mmdb))
    benchmark(db.country, "81.2.3.4")


@pytest.mark.parametrize("mode", ["ext", "python"])
def test_geoip_uncached(benchmark, mmdb: Path, mode: str) -> None:
    db = GeoIPDatabase(str(mmdb), mode=None if mode == "ext" else maxminddb.MODE_MMAP)
    addresses = itertools.cycle([f"{i % 199 + 1}.{i % 251}.{i % 241}.{i % 239}" for i in range(100_000)]).__next__
    benchmark(lambda: db._lookup(addresses()))


def test_pacer_per_chunk(benchmark) -> None:
    pacer = Pacer(1e12, 0.0)
    tick = itertools.count(0.0, 1e-4).__next__

    def per_chunk():
        now = tick()
        n = pacer.allowance(now)
        pacer.consume(min(n, 65536))
        return pacer.delay_until_next(now)

    benchmark(per_chunk)


def test_gzip_64k_html_chunk(benchmark) -> None:
    chunk = (b"<div class='row'><span>item</span><a href='/photos/123'>photo 123</a></div>\n" * 900)[:65536]
    stream = GzipStream(6)
    benchmark(stream.feed, chunk)
