"""ACME through a real ``edge serve`` process: Pebble validates edge's own HTTP-01 answer."""

from __future__ import annotations

import socket
import ssl

from tests.acme.conftest import Pebble
from tests.support.procs import Edge, wait_until


def test_edge_serve_obtains_and_serves_an_acme_certificate(pebble: Pebble, tmp_path) -> None:
    host = "serve.acme.test"
    policy = f"""
version: 1
listeners:
  web: {{listen: ["127.0.0.1:{pebble.http_port}"], redirect_https: true}}
  websecure:
    listen: ["127.0.0.1:{pebble.tls_port}"]
    tls:
      acme: {{directory: "{pebble.directory}", storage: "{tmp_path}/acme", challenge: http-01,
              ca_bundle: "{pebble.ca_bundle}"}}
services: {{app: {{upstreams: [{{url: "http://127.0.0.1:9"}}]}}}}
routes: [{{service: app, host: {host}}}]
"""
    edge = Edge(policy, pebble.tls_port)
    try:
        root = pebble.issuing_root().decode()

        def served() -> bool:
            ctx = ssl.create_default_context(cadata=root)
            try:
                with socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=2) as raw, \
                        ctx.wrap_socket(raw, server_hostname=host) as tls:
                    return tls.version() is not None
            except (ssl.SSLError, OSError):
                return False

        wait_until(served, timeout=60, interval=0.25, what="a certificate from Pebble on the TLS listener")
        assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700
    finally:
        edge.stop()
    assert "/.well-known/acme-challenge/" in edge.stdout()  # Pebble fetched edge's own answer
