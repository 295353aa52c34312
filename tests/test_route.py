"""Routing: exact host, then one-label wildcard, then any host; longest prefix; case and port ignored."""

import pytest

from edge.route import Router, normalize_host


@pytest.fixture
def router():
    return Router(
        [
            ("cloud.example.com", "/", "cloud"),
            ("cloud.example.com", "/api", "cloud-api"),
            ("cloud.example.com", "/api/v2", "cloud-api-v2"),
            ("*.example.com", "/", "wild"),
            (None, "/static", "any-static"),
            (None, "/", "any"),
            ("only.example.org", "/admin", "admin"),
        ]
    )


@pytest.mark.parametrize(
    ("host", "path", "target"),
    [
        ("cloud.example.com", "/", "cloud"),
        ("cloud.example.com", "/index.php", "cloud"),
        ("cloud.example.com", "/api", "cloud-api"),
        ("cloud.example.com", "/api/v2/x", "cloud-api-v2"),
        ("cloud.example.com", "/apix", "cloud-api"),  # plain string prefix, like Traefik PathPrefix
        ("photos.example.com", "/", "wild"),
        ("a.b.example.com", "/", "any"),  # a wildcard covers exactly one label
        ("example.com", "/", "any"),
        ("other.net", "/static/app.js", "any-static"),
        ("only.example.org", "/admin/x", "admin"),
        ("only.example.org", "/", "any"),  # no match in the host bucket: fall through
    ],
)
def test_match(router, host, path, target):
    assert router.match(host, path) == target


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"Cloud.Example.COM", "cloud.example.com"),
        (b"cloud.example.com:8443", "cloud.example.com"),
        (b"[::1]:8080", "[::1]"),
        (b"[2001:db8::1]", "[2001:db8::1]"),
        ("example.com.", "example.com"),
    ],
)
def test_normalize_host(raw, host):
    assert normalize_host(raw) == host


def test_no_route():
    router = Router([("a.example", "/x", 1)])
    assert router.match("a.example", "/") is None
    assert router.match("b.example", "/x") is None


def test_first_definition_wins_for_same_host_and_prefix():
    router = Router([("a", "/", "first"), ("a", "/", "second")])
    assert router.match("a", "/") == "first"
