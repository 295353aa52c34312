"""Golden files: policy in (tests/net/golden/NAME.yaml), ruleset out (NAME.nft, nft text).

Set EDGE_UPDATE_GOLDEN=1 to rewrite the .nft files after an intended change, then read
the diff. The privileged twin (test_nft.py) proves the text is what the kernel lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge.net import render
from edge.net.desired import desired_from_policy
from edge.policy import load_policy

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def rendered(name: str) -> str:
    return render.render_text(desired_from_policy(load_policy(str(GOLDEN / f"{name}.yaml"))).ruleset)


@pytest.mark.parametrize("name", CASES)
def test_ruleset_matches_golden(name: str) -> None:
    text = rendered(name)
    path = GOLDEN / f"{name}.nft"
    if os.environ.get("EDGE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", CASES)
def test_batch_replaces_only_table_inet_edge(name: str) -> None:
    desired = desired_from_policy(load_policy(str(GOLDEN / f"{name}.yaml")))
    batch = render.render_batch(desired.ruleset)["nftables"]
    assert batch[1:4] == [{"add": render.table_ref()}, {"delete": render.table_ref()}, {"add": render.table_ref()}]
    for command in batch[1:]:
        ((verb, body),) = command.items()
        assert verb == "add" or body == render.table_ref()
        ((_kind, obj),) = body.items()
        assert obj.get("family") == "inet" and obj.get("table", obj.get("name")) == "edge"
        assert "flush" not in json.dumps(command)


def test_rendering_is_deterministic() -> None:
    assert rendered("spec") == rendered("spec")


def test_blocklist_elements_ride_in_the_same_batch() -> None:
    desired = desired_from_policy(load_policy(str(GOLDEN / "small.yaml")))
    batch = render.render_batch(
        desired.ruleset, [render.Element("blocklist", "192.0.2.7", 60), render.Element("blocklist6", "2001:db8::1")]
    )["nftables"]
    elements = [c["add"]["element"] for c in batch if "element" in c.get("add", {})]
    assert elements[0]["name"] == "blocklist" and elements[0]["elem"] == [{"elem": {"val": "192.0.2.7", "timeout": 60}}]
    assert elements[1]["name"] == "blocklist6" and elements[1]["elem"] == ["2001:db8::1"]


def test_duration_spelling() -> None:
    assert [render.format_duration(s) for s in (0, 59, 60, 3600, 5400, 86400, 90061)] == [
        "0s",
        "59s",
        "1m",
        "1h",
        "1h30m",
        "1d",
        "1d1h1m1s",
    ]


def test_normalize_sorts_anonymous_sets() -> None:
    assert render.normalize_listing('\t\tiifname { "b", "a" } accept  \n') == '\t\tiifname { "a", "b" } accept\n'
