"""testssl.sh against a real edge TLS listener: nothing below TLS 1.2, no weak cipher."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.privileged import require_tool
from tests.support.procs import Edge, free_port


@pytest.mark.slow
def test_testssl_finds_no_old_protocol_and_no_weak_cipher(tmp_path):
    require_tool("testssl")
    port = free_port()
    ca = tmp_path / "ca"
    edge = Edge(
        f"version: 1\nlisteners:\n  websecure:\n    listen: ['127.0.0.1:{port}']\n"
        f"    tls: {{certificates: [{{cert: '{ca}/localhost.pem', key: '{ca}/localhost.key'}}]}}\n"
        f"services: {{app: {{upstreams: [{{url: 'http://127.0.0.1:{free_port()}'}}]}}}}\n"
        "routes: [{service: app}]\n",
        port,
    )
    report = tmp_path / "testssl.json"
    try:
        subprocess.run(
            ["testssl", "--quiet", "--color", "0", "--protocols", "--std", "--jsonfile", str(report),
             f"127.0.0.1:{port}"],
            capture_output=True, timeout=240, check=False,
        )
    finally:
        edge.stop()
    findings = {entry["id"]: entry["finding"] for entry in json.loads(report.read_text())}
    for protocol in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[protocol] == "not offered", (protocol, findings)
    assert findings["TLS1_2"] == "offered"
    assert findings["TLS1_3"].startswith("offered")
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
        assert findings[weak] == "not offered", (weak, findings)
    assert findings["cipherlist_STRONG"] == "offered"
