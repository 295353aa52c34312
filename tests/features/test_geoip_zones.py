"""GeoIP lookups on an MMDB the test builds itself (mmdb-writer), route allow/deny, zone matching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edge.geoip import GeoIPDatabase, GeoRule, geo_decision
from edge.policy.model import Network, RouteGeoIP, Vlan, WireGuardInterface, Zone
from edge.zones import ZoneMatcher, parse_client_ip


def build_mmdb(path: Path, networks: dict[str, dict]) -> Path:
    """A GeoLite2-Country shaped database: IPv6 tree with IPv4 mapped in, as MaxMind ships it."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country",
                        description="edge test database")
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


def country(code: str) -> dict:
    return {"country": {"iso_code": code, "names": {"en": code}}, "registered_country": {"iso_code": code}}


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    return build_mmdb(
        tmp_path / "country.mmdb",
        {
            "81.0.0.0/8": country("DE"),
            "145.0.0.0/8": country("NL"),
            "203.0.113.0/24": {"registered_country": {"iso_code": "au"}},  # no country: registered one
            "2a01:4f8::/32": country("DE"),
            "198.51.100.0/24": {"continent": {"code": "EU"}},  # neither: unknown
        },
    )


@pytest.mark.parametrize("mode", [None, maxminddb.MODE_MMAP])
def test_country_lookups(mmdb: Path, mode) -> None:
    db = GeoIPDatabase(str(mmdb), mode=mode)
    assert db.country("81.2.3.4") == "DE"
    assert db.country("::ffff:81.2.3.4") == "DE"  # dual-stack socket
    assert db.country("145.1.1.1") == "NL"
    assert db.country("2a01:4f8:1::1") == "DE"
    assert db.country("203.0.113.9") == "AU"
    assert db.country("198.51.100.1") is None
    assert db.country("8.8.8.8") is None
    assert db.country("not an ip") is None
    assert db.country("fe80::1%eth0") is None
    db.close()


def test_ipv6_client_on_an_ipv4_only_database(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["81.0.0.0/8"]), country("DE"))
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    db = GeoIPDatabase(str(tmp_path / "v4.mmdb"))
    assert db.country("81.0.0.1") == "DE"
    assert db.country("2a01:4f8::1") is None  # no exception, just unknown


def test_reload_swaps_to_the_new_file_and_drops_cached_answers(mmdb: Path, tmp_path: Path) -> None:
    db = GeoIPDatabase(str(mmdb))
    assert db.country("81.2.3.4") == "DE"
    assert not db.changed()
    # geoipupdate writes a new file and renames it over the old one
    fresh = build_mmdb(tmp_path / "new.mmdb", {"81.0.0.0/8": country("AT")})
    os.replace(fresh, mmdb)
    assert db.changed()
    assert db.country("81.2.3.4") == "DE"  # the open reader is still the old file
    db.reload()
    assert db.country("81.2.3.4") == "AT" and not db.changed()


def test_a_broken_file_keeps_the_old_reader(mmdb: Path, tmp_path: Path) -> None:
    db = GeoIPDatabase(str(mmdb))
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a database")
    with pytest.raises(maxminddb.InvalidDatabaseError):
        db.reload(str(broken))
    assert db.country("81.2.3.4") == "DE" and db.path == str(mmdb)


def test_lookup_cache_is_bounded(mmdb: Path) -> None:
    db = GeoIPDatabase(str(mmdb), cache_size=4)
    for i in range(20):
        assert db.country(f"81.0.0.{i}") == "DE"
        assert len(db._cache) <= 4


@pytest.mark.parametrize(
    ("rule", "code", "expected"),
    [
        (RouteGeoIP(allow=("DE", "NL")), "DE", True),
        (RouteGeoIP(allow=("DE", "NL")), "US", False),
        (RouteGeoIP(allow=("de",)), "DE", True),  # a lower-case policy still matches
        (RouteGeoIP(allow=("DE",)), None, True),  # unknown: allow is the default
        (RouteGeoIP(allow=("DE",), unknown="deny"), None, False),
        (RouteGeoIP(deny=("RU", "CN")), "RU", False),
        (RouteGeoIP(deny=("RU", "CN")), "DE", True),
        (RouteGeoIP(deny=("ru",)), "RU", False),
        (RouteGeoIP(deny=("RU",), unknown="deny"), None, False),
    ],
)
def test_geo_decision(rule: RouteGeoIP, code: str | None, expected: bool) -> None:
    assert geo_decision(rule, code) is expected
    assert GeoRule(rule).allowed(code) is expected


def test_geo_route_end_to_end(mmdb: Path) -> None:
    db = GeoIPDatabase(str(mmdb))
    rule = GeoRule(RouteGeoIP(allow=("DE", "NL")))
    assert rule.allowed(db.country("81.2.3.4"))
    assert not rule.allowed(db.country("203.0.113.9"))
    assert rule.allowed(db.country("10.0.0.1"))  # private address: unknown, allowed by default


# -- zones ----------------------------------------------------------------------------------------
def spec_network() -> Network:
    return Network(
        zones={
            "wan": Zone(interfaces=("eth0",)),
            "mgmt": Zone(vlan=Vlan("eth1", 1), address=(ipaddress.ip_interface("10.0.1.1/24"),)),
            "prod": Zone(vlan=Vlan("eth1", 10), address=(ipaddress.ip_interface("10.0.10.1/24"),)),
            "iot": Zone(vlan=Vlan("eth1", 20), address=(ipaddress.ip_interface("10.0.20.1/24"),
                                                         ipaddress.ip_interface("fd00:20::1/64"))),
            "jump": Zone(vlan=Vlan("eth1", 2), address=(ipaddress.ip_interface("10.0.20.5/32"),)),
            "tunnel": Zone(interfaces=("wg0",)),
        },
        wireguard={"wg0": WireGuardInterface(private_key_file="/k",
                                             address=(ipaddress.ip_interface("10.99.0.1/24"),))},
    )


def test_zone_of() -> None:
    zones = ZoneMatcher(spec_network())
    assert zones.zone_of("10.0.1.7") == "mgmt"
    assert zones.zone_of("10.0.10.20") == "prod"
    assert zones.zone_of("10.0.20.9") == "iot"
    assert zones.zone_of("fd00:20::abcd") == "iot"
    assert zones.zone_of("::ffff:10.0.1.7") == "mgmt"
    assert zones.zone_of("10.0.20.5") == "jump"  # the more specific subnet wins
    assert zones.zone_of("10.99.0.2") == "tunnel"  # from wg0's address
    assert zones.zone_of("192.0.2.1") is None
    assert zones.zone_of("127.0.0.1") is None
    assert zones.zone_of("garbage") is None
    assert sorted(zones.subnets("iot")) == ["10.0.20.0/24", "fd00:20::/64"]
    assert zones.subnets("wan") == []


def test_route_zone_rule() -> None:
    zones = ZoneMatcher(spec_network())
    assert zones.allowed(("mgmt",), "10.0.1.7")
    assert not zones.allowed(("mgmt",), "10.0.20.9")  # the IoT VLAN never reaches an admin route
    assert not zones.allowed(("mgmt",), "203.0.113.1")
    assert zones.allowed(("mgmt", "tunnel"), "10.99.0.10")
    assert zones.allowed(None, "203.0.113.1")  # a route without zones: admits all


def test_no_network_section_means_no_zone() -> None:
    zones = ZoneMatcher(None)
    assert zones.zone_of("10.0.1.7") is None
    assert not zones.allowed(("mgmt",), "10.0.1.7")


def test_exact_tie_goes_to_the_first_zone() -> None:
    net = Network(zones={
        "a": Zone(interfaces=("x",), address=(ipaddress.ip_interface("10.1.0.1/24"),)),
        "b": Zone(interfaces=("y",), address=(ipaddress.ip_interface("10.1.0.2/24"),)),
    })
    assert ZoneMatcher(net).zone_of("10.1.0.9") == "a"


def test_zone_cache_is_bounded() -> None:
    zones = ZoneMatcher(spec_network(), cache_size=8)
    for i in range(100):
        zones.zone_of(f"10.0.1.{i}")
        assert len(zones._cache) <= 8


@given(st.ip_addresses())
def test_zone_of_agrees_with_a_linear_scan(address) -> None:
    network = spec_network()
    zones = ZoneMatcher(network)
    best = None
    for name, zone in network.zones.items():
        nets = [i.network for i in zone.address]
        if name == "tunnel":
            nets = [i.network for i in network.wireguard["wg0"].address]
        for net in nets:
            if net.version == address.version and address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, name)
    assert zones.zone_of(str(address)) == (best[1] if best else None)


def test_parse_client_ip() -> None:
    assert str(parse_client_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parse_client_ip("fe80::1%eth0")) == "fe80::1"
    assert parse_client_ip("/run/edge.sock") is None
