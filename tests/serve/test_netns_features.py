"""Quality measurement and zone rules in a namespace topology: real veths, a real 1 Mbit/s link.

A router namespace runs edge and a demo upstream; host namespaces reach it over veths.
One host's link is shaped with ``tc tbf rate 1mbit``: after one large download edge
measures it and moves it to the low tier, while a host on an unshaped link stays high.
The same topology proves a route's ``zones:`` rule by source subnet.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests.net.netns import PYTHON, Lab, await_condition
from tests.support.privileged import require_netns, require_tool

_FETCH = textwrap.dedent(
    """
    import json, sys, urllib.request, urllib.error
    url = sys.argv[1]
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
            print(json.dumps({"status": r.status, "headers": dict(r.headers), "size": len(body),
                              "body": body[:2000].decode("latin-1")}))
    except urllib.error.HTTPError as e:
        print(json.dumps({"status": e.code, "headers": dict(e.headers), "size": 0, "body": ""}))
    """
)

POLICY = """
version: 1
listeners: {{web: {{listen: ["0.0.0.0:8080"]}}}}
services: {{app: {{upstreams: [{{url: "http://127.0.0.1:8081"}}]}}}}
quality_profiles:
  adaptive:
    tiers:
      - {{name: low, when: {{downlink_below: 4mbps}}}}
      - {{name: high}}
routes:
  - {{host: admin.test, service: app, zones: [mgmt]}}
  - {{service: app, quality: adaptive}}
network:
  zones:
    mgmt: {{interfaces: [{mgmt_if}], address: 10.77.1.1/24}}
    slow: {{interfaces: [{slow_if}], address: 10.77.20.1/24}}
"""


@pytest.fixture
def lab(tmp_path):
    require_netns()
    require_tool("tc")
    lab = Lab({"mgmt": "10.77.1", "slow": "10.77.20"})
    try:
        router = lab.router
        for zone in ("mgmt", "slow"):
            router.ip("addr", "add", f"{lab.router_ip(zone)}/24", "dev", lab.ifname[zone])
        # the slow host's downlink: everything the router sends it leaves through a 1 Mbit/s bucket
        router.exec("tc", "qdisc", "add", "dev", lab.ifname["slow"], "root", "tbf", "rate", "1mbit",
                    "burst", "16kb", "latency", "200ms")
        policy = tmp_path / "edge.yaml"
        policy.write_text(POLICY.format(mgmt_if=lab.ifname["mgmt"], slow_if=lab.ifname["slow"]))
        router.spawn(PYTHON, "-m", "edge.demo", "--listen", "127.0.0.1:8081", stdout=subprocess.DEVNULL)
        router.spawn(PYTHON, "-m", "edge", "serve", "-c", str(policy), stdout=subprocess.DEVNULL)
        await_condition(lambda: lab.hosts["mgmt"].probe([f"{lab.router_ip('mgmt')}:8080"])
                        [f"{lab.router_ip('mgmt')}:8080"] is not None, timeout=15, what="edge in the router ns")
        yield lab
    finally:
        lab.destroy()


def fetch(lab: Lab, zone: str, path: str, host: str | None = None) -> dict:
    ns = lab.hosts[zone]
    url = f"http://{lab.router_ip(zone)}:8080{path}"
    code = _FETCH
    if host is not None:  # urllib sends the Host of the URL; an explicit one needs a header
        code = code.replace("urllib.request.urlopen(url,", f"urllib.request.urlopen(urllib.request.Request(url, "
                                                          f"headers={{'Host': '{host}'}}),")
    return json.loads(ns.python(code, url, timeout=60).stdout)


def tier_seen(lab: Lab, zone: str) -> str:
    reply = fetch(lab, zone, "/headers")
    headers = {k.lower(): v for k, v in json.loads(reply["body"])["headers"]}
    return headers["x-edge-quality"]


def test_a_shaped_client_moves_to_the_low_tier_after_a_large_download(lab):
    assert tier_seen(lab, "slow") == "high"  # nothing measured yet
    big = fetch(lab, "slow", "/bytes/400000")
    assert big["size"] == 400000
    # the sample is taken as the download drains (checked every 0.2 s): await it
    await_condition(lambda: tier_seen(lab, "slow") == "low", timeout=5, interval=0.1, what="the low tier")
    fast = fetch(lab, "mgmt", "/bytes/400000")
    assert fast["size"] == 400000
    assert tier_seen(lab, "mgmt") == "high"


def test_route_zones_by_source_subnet(lab):
    assert fetch(lab, "mgmt", "/headers", host="admin.test")["status"] == 200
    assert fetch(lab, "slow", "/headers", host="admin.test")["status"] == 403
