"""Certificate reload: new handshakes get new files; broken files keep the old certificate."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.ca import ensure_demo_pki, issue_leaf
from edge.ca.authority import Authority
from edge.policy.model import Certificate, Tls
from edge.tls import TlsError, TlsTerminator
from tests.support import guard
from tests.tls.conftest import Pki, s_client

pytestmark = pytest.mark.slow


def served_certificate(port: int, root: Path, server_name: str) -> bytes:
    """DER of the certificate a verifying client gets for ``server_name``."""
    ctx = ssl.create_default_context(cafile=str(root))
    with guard.connect("127.0.0.1", port) as raw, ctx.wrap_socket(raw, server_hostname=server_name) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der
    return der


def file_der(cert_path: str) -> bytes:
    """DER of the leaf (first certificate) in a chain file."""
    leaf = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
    return leaf.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def site(pki: Pki, tmp_path: Path) -> Certificate:
    """A certificate of this test's own, free to be rewritten."""
    leaf = issue_leaf(pki.ca, ["site.test"], cert_path=tmp_path / "site.pem", key_path=tmp_path / "site.key")
    return Certificate(cert=str(leaf.cert_path), key=str(leaf.key_path))


def reissue(ca: Authority, cert: Certificate, names: list[str]) -> None:
    issue_leaf(ca, names, cert_path=cert.cert, key_path=cert.key)


def test_unchanged_files_reload_to_the_same_objects(pki: Pki, site: Certificate) -> None:
    terminator = TlsTerminator(Tls(certificates=(site, pki.exact)))
    before = terminator.certificates
    assert terminator.reload() == []
    assert all(a is b for a, b in zip(before, terminator.certificates, strict=True))


def test_touched_but_identical_files_keep_their_context(pki: Pki, site: Certificate) -> None:
    terminator = TlsTerminator(Tls(certificates=(site,)))
    context = terminator.certificates[0].context
    os.utime(site.cert, ns=(1, 1))
    assert terminator.reload() == []
    assert terminator.certificates[0].context is context


def test_new_handshakes_get_the_new_certificate(pki: Pki, site: Certificate, serve) -> None:
    server = serve(Tls(certificates=(pki.default, site)))
    old = served_certificate(server.port, pki.root, "site.test")
    assert old == file_der(site.cert)
    reissue(pki.ca, site, ["site.test", "new.test"])
    assert server.reload() == []
    new = served_certificate(server.port, pki.root, "site.test")
    assert new != old and new == file_der(site.cert)
    # the SNI index follows the new names too
    assert served_certificate(server.port, pki.root, "new.test") == new


def test_broken_certificate_keeps_the_old_one(
    pki: Pki, site: Certificate, serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Tls(certificates=(pki.default, site)))
    old = served_certificate(server.port, pki.root, "site.test")
    Path(site.cert).write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.ERROR, logger="edge.tls"):
        errors = server.reload()
    assert [e.file for e in errors] == [site.cert]
    assert "not a PEM certificate" in errors[0].reason
    assert site.cert in caplog.text and "keeping the previous certificate" in caplog.text
    assert served_certificate(server.port, pki.root, "site.test") == old
    # fixing the file is picked up by the next reload
    reissue(pki.ca, site, ["site.test"])
    assert server.reload() == []
    assert served_certificate(server.port, pki.root, "site.test") == file_der(site.cert) != old


def test_key_not_matching_keeps_the_old_certificate(pki: Pki, site: Certificate, serve, tmp_path: Path) -> None:
    server = serve(Tls(certificates=(pki.default, site)))
    old = served_certificate(server.port, pki.root, "site.test")
    other = issue_leaf(pki.ca, ["other.test"], cert_path=tmp_path / "o.pem", key_path=tmp_path / "o.key")
    Path(site.key).write_bytes(other.key_path.read_bytes())
    errors = server.reload()
    assert [e.file for e in errors] == [site.key]
    assert "does not match" in errors[0].reason and site.cert in errors[0].reason
    assert served_certificate(server.port, pki.root, "site.test") == old


def test_missing_file_keeps_the_old_certificate(pki: Pki, site: Certificate, serve) -> None:
    server = serve(Tls(certificates=(pki.default, site)))
    old = served_certificate(server.port, pki.root, "site.test")
    os.unlink(site.key)
    errors = server.reload()
    assert [e.file for e in errors] == [site.key] and "No such file" in errors[0].reason
    assert served_certificate(server.port, pki.root, "site.test") == old


def test_broken_certificate_at_start_is_an_error_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(TlsError) as caught:
        TlsTerminator(Tls(certificates=(pki.default, Certificate(cert=str(bad), key=pki.default.key))))
    assert [e.file for e in caught.value.errors] == [str(bad)]
    assert str(bad) in str(caught.value)


def test_encrypted_key_is_reported(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(Path(pki.exact.key).read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsError, match="encrypted"):
        TlsTerminator(Tls(certificates=(Certificate(cert=pki.exact.cert, key=str(locked)),)))


def test_update_adds_certificates_and_client_auth_live(pki: Pki, site: Certificate, serve) -> None:
    server = serve(Tls(certificates=(pki.default,)))
    assert s_client(server.port, servername="a.test").greeted
    assert served_certificate(server.port, pki.root, "default.test")
    errors = server.update(Tls(certificates=(pki.default, site), client_ca=str(pki.root)))
    assert errors == []
    assert not s_client(server.port, servername="site.test").greeted
    with_cert = s_client(server.port, "-cert", pki.client.cert, "-key", pki.client.key, servername="site.test")
    assert with_cert.greeted and "subject=CN = site.test" in with_cert.out, with_cert.out
    # and back: no client certificate needed any more
    assert server.update(Tls(certificates=(pki.default,))) == []
    assert s_client(server.port, servername="a.test").greeted


def test_update_changes_minimum_version_live(pki: Pki, serve) -> None:
    server = serve(pki.tls())
    assert s_client(server.port, "-tls1_2", servername="a.test").greeted
    assert server.update(pki.tls(min_version="1.3")) == []
    assert not s_client(server.port, "-tls1_2", servername="a.test").greeted
    assert s_client(server.port, "-tls1_3", servername="a.test").greeted


def test_update_with_a_broken_client_ca_keeps_requiring_certificates(pki: Pki, serve, tmp_path: Path) -> None:
    server = serve(pki.tls(client_ca=str(pki.root)))
    broken = tmp_path / "ca.pem"
    broken.write_text("nope")
    errors = server.update(pki.tls(client_ca=str(broken)))
    assert [e.file for e in errors] == [str(broken)]
    assert not s_client(server.port, servername="a.test").greeted


def test_update_drops_a_new_broken_certificate_and_serves_the_rest(pki: Pki, tmp_path: Path) -> None:
    terminator = TlsTerminator(Tls(certificates=(pki.default,)))
    missing = Certificate(cert=str(tmp_path / "missing.pem"), key=str(tmp_path / "missing.key"))
    errors = terminator.update(Tls(certificates=(pki.default, missing, pki.exact)))
    assert [e.file for e in errors] == [missing.cert]
    assert [c.source for c in terminator.certificates] == [pki.default, pki.exact]
    selected = terminator.select("a.test")
    assert selected is not None and selected.source == pki.exact


def test_acme_only_listener_without_certificates_refuses_handshakes(pki: Pki, serve, tmp_path: Path) -> None:
    from edge.policy.model import Acme

    acme_only = Tls(acme=Acme(directory="https://127.0.0.1:14000/dir", storage=str(tmp_path)))
    server = serve(acme_only)
    assert not s_client(server.port, servername="a.test").greeted
    assert server.update(dataclasses.replace(acme_only, certificates=(pki.exact,))) == []
    assert s_client(server.port, servername="a.test").greeted


def test_demo_pki_serves_https_with_zero_set_up(tmp_path: Path, serve) -> None:
    cert, key, root = ensure_demo_pki(tmp_path / "demo", ["localhost", "127.0.0.1"])
    server = serve(Tls(certificates=(Certificate(cert=str(cert), key=str(key)),)))
    ctx = ssl.create_default_context(cafile=str(root))
    with guard.connect("127.0.0.1", server.port) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        assert conn.recv(100).startswith(b"hello")
    with guard.connect("127.0.0.1", server.port) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        assert conn.recv(100).startswith(b"hello")


def test_override_answers_one_name_until_cleared(pki: Pki, serve) -> None:
    from edge.tls import TlsSettings, server_context

    server = serve(pki.tls())
    challenge = server_context(TlsSettings(alpn=("acme-tls/1",)), pki.wildcard.cert, pki.wildcard.key)
    server.loop_thread.call(lambda: server.terminator.set_override("A.test", challenge))
    result = s_client(server.port, "-alpn", "acme-tls/1", servername="a.test")
    assert "subject=CN = *.wild.test" in result.out and "hello alpn=acme-tls/1" in result.out, result.out
    assert "subject=CN = default.test" in s_client(server.port, servername="other.test").out
    server.loop_thread.call(lambda: server.terminator.set_override("a.test", None))
    assert "subject=CN = a.test" in s_client(server.port, servername="a.test").out
    assert server.terminator.session_stats()["accept_good"] >= 2
