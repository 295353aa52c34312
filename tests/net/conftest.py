"""Fixtures for the controller's tests: namespaces and the zone lab, always torn down."""

from __future__ import annotations

import pytest

from tests.net.netns import Lab, Netns, unique
from tests.support.privileged import require_netns, require_tool

ZONES = {"wan": "10.9.0", "mgmt": "10.0.1", "prod": "10.0.10", "iot": "10.0.20", "guest": "10.0.30"}


@pytest.fixture
def netns():
    """A factory of fresh namespaces: ``netns()`` -> Netns."""
    require_netns()
    require_tool("nft")
    made: list[Netns] = []

    def make(prefix: str = "edgt") -> Netns:
        ns = Netns(unique(prefix))
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.destroy()


@pytest.fixture
def lab():
    require_netns()
    require_tool("nft")
    built = Lab(ZONES)
    try:
        yield built
    finally:
        built.destroy()


def spec_policy(
    lab: Lab,
    tmp_path,
    *,
    extra: str = "",
    forward: str | None = None,
    blocklist: str = "1h",
    reconcile: str = "30s",
    socket: str | None = None,
) -> str:
    """The SPEC example's network section with the lab's veths instead of VLANs."""
    zones = "\n".join(
        f"    {zone}: {{interfaces: [{lab.ifname[zone]}], address: {lab.router_ip(zone)}/24}}" for zone in ZONES
    )
    forward = (
        forward
        if forward is not None
        else (
            "    - {from: mgmt,  to: any,        action: accept}\n"
            "    - {from: prod,  to: [iot, wan], action: accept}\n"
            "    - {from: guest, to: wan,        action: accept}\n"
            "    - {from: iot,   to: wan,        action: drop}\n"
        )
    )
    text = (
        "version: 1\n"
        "network:\n"
        f"  reconcile_interval: {reconcile}\n"
        f"  control_socket: {socket or tmp_path / 'net.sock'}\n"
        "  zones:\n"
        f"{zones}\n"
        "  forward:\n"
        f"{forward}"
        "  input:\n"
        '    - {from: mgmt, ports: ["22/tcp", "9901/tcp"], action: accept}\n'
        '    - {from: any,  ports: ["80/tcp", "443/tcp", "51820/udp"], action: accept}\n'
        "  masquerade: [{from: [prod, iot, guest], to: wan}]\n"
        f"  blocklist: {{timeout: {blocklist}}}\n"
        f"{extra}"
    )
    path = tmp_path / f"policy-{lab.tag}-{abs(hash(text)) % 10000}.yaml"
    path.write_text(text)
    return str(path)
