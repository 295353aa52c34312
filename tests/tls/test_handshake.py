"""Real handshakes: openssl s_client against a uvloop server using TlsTerminator.context."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import pytest

from edge.tls import TLS12_CIPHERS, TlsSettings, server_context
from tests.support import guard
from tests.tls.conftest import Pki, s_client

pytestmark = pytest.mark.slow


def subject(out: str) -> str:
    match = re.search(r"^subject=CN ?= ?(\S+)", out, re.M)
    assert match, out
    return match.group(1)


def refused(result_out: str) -> bool:
    """Client sent its hello, the server answered with no handshake at all."""
    return "Cipher is (NONE)" in result_out and "hello alpn=" not in result_out


# -- SNI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servername", "expected"),
    [
        ("a.test", "a.test"),
        ("A.Test", "a.test"),
        ("x.wild.test", "*.wild.test"),
        ("a.b.wild.test", "default.test"),
        ("unknown.test", "default.test"),
        (None, "default.test"),
    ],
)
def test_sni_picks_exact_then_wildcard_then_first(pki: Pki, serve, servername: str | None, expected: str) -> None:
    server = serve(pki.tls())
    result = s_client(server.port, "-CAfile", str(pki.root), servername=servername)
    assert result.greeted, result.out
    assert subject(result.out) == expected
    assert "Verify return code: 0 (ok)" in result.out


def test_chain_verifies_for_the_requested_host(pki: Pki, serve) -> None:
    server = serve(pki.tls())
    result = s_client(server.port, "-CAfile", str(pki.root), "-verify_hostname", "a.test", servername="a.test")
    assert "Verification: OK" in result.out and "Verified peername: a.test" in result.out, result.out


# -- ALPN ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "offered", "negotiated"),
    [
        (("h2", "http/1.1"), "h2,http/1.1", "h2"),
        (("h2", "http/1.1"), "http/1.1,h2", "h2"),  # server order decides: h2 preferred
        (("h2", "http/1.1"), "http/1.1", "http/1.1"),
        (("http/1.1",), "h2,http/1.1", "http/1.1"),
        (("http/1.1",), "h2", None),  # no overlap: no ALPN, the connection still works (HTTP/1.1)
    ],
)
def test_alpn(pki: Pki, serve, policy: tuple[str, ...], offered: str, negotiated: str | None) -> None:
    server = serve(pki.tls(alpn=policy))
    result = s_client(server.port, "-alpn", offered, servername="a.test")
    assert f"hello alpn={negotiated} " in result.out, result.out


def test_no_alpn_offered_still_connects(pki: Pki, serve) -> None:
    result = s_client(serve(pki.tls()).port, servername="a.test")
    assert "hello alpn=None version=TLSv1.3" in result.out, result.out


# -- versions and ciphers ------------------------------------------------------------------------


def test_tls13_is_preferred(pki: Pki, serve) -> None:
    result = s_client(serve(pki.tls()).port, servername="a.test")
    assert "New, TLSv1.3" in result.out


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_versions_are_refused(pki: Pki, serve, version: str) -> None:
    # SECLEVEL=0 makes this client willing to speak TLS 1.0/1.1: the refusal is the server's.
    result = s_client(serve(pki.tls()).port, version, "-cipher", "DEFAULT@SECLEVEL=0", servername="a.test")
    assert re.search(r"written [1-9]\d* bytes", result.out), result.out
    assert refused(result.out), result.out


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-SHA",  # CBC, SHA-1 MAC
        "ECDHE-ECDSA-AES256-SHA384",  # CBC
        "ECDHE-ECDSA-AES128-CCM",  # AEAD but not on the list
        "AES128-GCM-SHA256",  # no forward secrecy
        "ECDHE-ECDSA-NULL-SHA",  # no encryption
    ],
)
def test_weak_tls12_ciphers_are_refused(pki: Pki, serve, cipher: str) -> None:
    result = s_client(serve(pki.tls()).port, "-tls1_2", "-cipher", f"{cipher}@SECLEVEL=0", servername="a.test")
    assert re.search(r"written [1-9]\d* bytes", result.out), result.out
    assert refused(result.out), result.out


@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_modern_tls12_ciphers_are_accepted(pki: Pki, serve, cipher: str) -> None:
    result = s_client(serve(pki.tls()).port, "-tls1_2", "-cipher", cipher, servername="a.test")
    assert f"Cipher is {cipher}" in result.out and "version=TLSv1.2" in result.out, result.out


def test_only_aead_with_forward_secrecy_is_configured() -> None:
    ciphers = server_context(TlsSettings()).get_ciphers()
    assert ciphers
    for cipher in ciphers:
        assert cipher["aead"], cipher["name"]
        assert cipher["protocol"] == "TLSv1.3" or cipher["kea"] == "kx-ecdhe", cipher["name"]
    assert set(TLS12_CIPHERS.split(":")) <= {c["name"] for c in ciphers}


def test_min_version_13_refuses_tls12(pki: Pki, serve) -> None:
    server = serve(pki.tls(min_version="1.3"))
    assert refused(s_client(server.port, "-tls1_2", servername="a.test").out)
    assert "version=TLSv1.3" in s_client(server.port, servername="a.test").out


def test_renegotiation_and_compression_are_off() -> None:
    ctx = server_context(TlsSettings())
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION


# -- resumption ----------------------------------------------------------------------------------


@pytest.mark.parametrize("resumption", ["cache", "tickets"])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_resumption(pki: Pki, serve, tmp_path: Path, resumption: str, version: str) -> None:
    server = serve(pki.tls(), resumption=resumption)
    session = tmp_path / "session.pem"
    first = s_client(server.port, version, "-sess_out", str(session), servername="a.test")
    assert "New, TLSv1." in first.out and first.greeted, first.out
    second = s_client(server.port, version, "-sess_in", str(session), servername="a.test")
    assert "Reused, TLSv1." in second.out and second.greeted, second.out


def test_resumed_session_from_another_server_is_a_full_handshake(pki: Pki, serve, tmp_path: Path) -> None:
    session = tmp_path / "session.pem"
    s_client(serve(pki.tls()).port, "-sess_out", str(session), servername="a.test")
    other = s_client(serve(pki.tls()).port, "-sess_in", str(session), servername="a.test")
    assert "New, TLSv1.3" in other.out and other.greeted, other.out


# -- client certificates (mTLS) ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_client_certificate_required_when_client_ca_set(pki: Pki, serve, version: str) -> None:
    server = serve(pki.tls(client_ca=str(pki.root)))
    without = s_client(server.port, version, servername="a.test")
    assert not without.greeted, without.out
    good = s_client(server.port, version, "-cert", pki.client.cert, "-key", pki.client.key, servername="a.test")
    assert good.greeted, good.out


def test_client_certificate_without_client_auth_usage_is_refused(pki: Pki, serve) -> None:
    server = serve(pki.tls(client_ca=str(pki.root)))
    # a.test is a server-only certificate (issued without --client)
    result = s_client(server.port, "-cert", pki.exact.cert, "-key", pki.exact.key, servername="a.test")
    assert not result.greeted, result.out


def test_client_certificate_from_another_ca_is_refused(pki: Pki, serve, tmp_path: Path) -> None:
    from edge.ca import init_ca, issue_leaf

    stranger = issue_leaf(init_ca(tmp_path / "other"), ["client.test"], client=True)
    server = serve(pki.tls(client_ca=str(pki.root)))
    result = s_client(
        server.port, "-cert", str(stranger.cert_path), "-key", str(stranger.key_path), servername="a.test"
    )
    assert not result.greeted, result.out


def test_no_client_certificate_needed_without_client_ca(pki: Pki, serve) -> None:
    assert s_client(serve(pki.tls()).port, servername="a.test").greeted


# -- handshake failures cost one connection ------------------------------------------------------


def test_silent_client_is_dropped_after_the_handshake_timeout(pki: Pki, serve) -> None:
    server = serve(pki.tls(), handshake_timeout=0.3)
    started = time.monotonic()
    with guard.connect("127.0.0.1", server.port, timeout=5) as sock:
        assert sock.recv(1) == b""  # the server closes; we wait for that, not for a clock
    assert time.monotonic() - started < 4
    assert s_client(server.port, servername="a.test").greeted


def test_garbage_instead_of_a_client_hello_costs_one_connection(pki: Pki, serve) -> None:
    server = serve(pki.tls())
    with guard.connect("127.0.0.1", server.port, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        while sock.recv(4096):
            pass
    assert s_client(server.port, servername="a.test").greeted


def test_the_server_context_s_tls_objects_forward_straight_to_openssl(pki: Pki) -> None:
    """uvloop's TLS transport uses what ``wrap_bio`` makes: its read, write and pending are the C
    methods (no Python frame per call) and behave as SSLObject's: a handshake over memory BIOs,
    data both ways, read into a buffer, and SSLWantReadError when nothing is there."""
    server_ctx = server_context(TlsSettings(), pki.exact.cert, pki.exact.key)
    client_ctx = ssl.create_default_context(cafile=str(pki.root))
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="a.test")
    assert type(server.read).__name__ == "builtin_function_or_method"
    for _ in range(10):  # handshake: pass the bytes back and forth until both sides are done
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert server.version() == client.version() == "TLSv1.3"
    assert client.write(b"GET / HTTP/1.1\r\n\r\n") == 18
    s_in.write(c_out.read())
    buffer = bytearray(64)
    assert server.read(64, buffer) == 18 and bytes(buffer[:18]) == b"GET / HTTP/1.1\r\n\r\n"
    assert server.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        server.read(64)
    server.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    c_in.write(s_out.read())
    assert client.read(1024) == b"HTTP/1.1 204 No Content\r\n\r\n"
