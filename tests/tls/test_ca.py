"""edge's internal CA: the root, leaves, ensure_leaf, and the `edge ca` CLI checked by openssl."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from edge.ca import BadName, CaError, ensure_demo_pki, ensure_leaf, init_ca, issue_leaf, load_ca
from edge.ca.authority import normalize_name
from edge.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def openssl_verify(root: Path, leaf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), *extra, str(leaf)], capture_output=True, text=True, check=False
    )


# -- root ----------------------------------------------------------------------------------------


def test_init_creates_a_p256_root_with_private_key_files(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    root = ca.certificate
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"
    assert root.subject.rfc4514_string().startswith("O=edge internal CA,CN=edge internal CA ")
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert mode(tmp_path / "ca" / "root.key") == 0o600
    assert mode(tmp_path / "ca") == 0o700
    der = x509.load_der_x509_certificate((tmp_path / "ca" / "root.crt").read_bytes())
    assert der == root
    assert load_ca(tmp_path / "ca").certificate == root


def test_init_refuses_to_overwrite_a_root(tmp_path: Path) -> None:
    init_ca(tmp_path)
    before = (tmp_path / "root.pem").read_bytes()
    with pytest.raises(CaError, match="already holds a CA"):
        init_ca(tmp_path)
    assert (tmp_path / "root.pem").read_bytes() == before


def test_keys_are_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        ca = init_ca(tmp_path / "ca")
        leaf = issue_leaf(ca, ["a.test"])
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca" / "root.key") == 0o600
    assert mode(leaf.key_path) == 0o600


def test_missing_ca_is_a_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="edge ca init"):
        load_ca(tmp_path)


# -- leaves --------------------------------------------------------------------------------------


def test_leaf_has_sans_usages_and_a_short_life(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    leaf = issue_leaf(ca, ["NAS.home.lan", "192.168.1.10", "fd00::10", "*.home.lan"])
    assert leaf.cert_path == tmp_path / "nas.home.lan.pem" and leaf.key_path == tmp_path / "nas.home.lan.key"
    assert mode(leaf.key_path) == 0o600
    cert, root = chain(leaf.cert_path)
    assert root == ca.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["nas.home.lan", "*.home.lan"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.10", "fd00::10"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, hours=2)
    cert.verify_directly_issued_by(ca.certificate)


def test_client_leaf_adds_client_auth(tmp_path: Path) -> None:
    leaf = issue_leaf(init_ca(tmp_path), ["client.test"], client=True, days=7)
    cert = chain(leaf.cert_path)[0]
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=7, hours=2)


@pytest.mark.parametrize("days", [0, 826, -1])
def test_days_outside_what_devices_accept_are_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(BadName, match="825"):
        issue_leaf(init_ca(tmp_path), ["a.test"], days=days)


@pytest.mark.parametrize("name", ["", "a..b", "-a.test", "a-.test", "*.test", "a.*.test", "x" * 64 + ".test", "a b"])
def test_names_no_client_could_match_are_refused(name: str) -> None:
    with pytest.raises(BadName):
        normalize_name(name)


@given(st.text(max_size=30))
def test_a_name_normalizes_or_raises_bad_name(name: str) -> None:
    try:
        normal = normalize_name(name)
    except BadName:
        return
    assert normalize_name(normal) == normal


# -- ensure_leaf ---------------------------------------------------------------------------------


def test_ensure_leaf_creates_then_leaves_alone(tmp_path: Path) -> None:
    cert, key = tmp_path / "site" / "cloud.pem", tmp_path / "site" / "cloud.key"
    first = ensure_leaf(tmp_path / "ca", ["cloud.lan"], cert, key)
    content = cert.read_bytes(), key.read_bytes()
    second = ensure_leaf(tmp_path / "ca", ["cloud.lan"], cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == content
    assert first.not_after == second.not_after and second.names == ("cloud.lan",)
    assert first.issued and not second.issued


def test_ensure_leaf_reissues_near_expiry_for_other_names_or_another_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "cloud.pem", tmp_path / "cloud.key"
    leaf = ensure_leaf(tmp_path / "ca", ["cloud.lan"], cert, key)

    def reissued(**kwargs) -> bool:
        before = cert.read_bytes()
        ensure_leaf(kwargs.pop("ca", tmp_path / "ca"), kwargs.pop("names", ["cloud.lan"]), cert, key, **kwargs)
        return cert.read_bytes() != before

    assert not reissued(now=leaf.not_after - dt.timedelta(days=11))
    assert reissued(now=leaf.not_after - dt.timedelta(days=9))  # last third of 30 days
    assert reissued(names=["cloud.lan", "10.0.0.5"])
    assert reissued(ca=tmp_path / "other-ca")
    key.write_text("broken")
    assert reissued(ca=tmp_path / "other-ca")


def test_demo_pki_gives_cert_key_and_root(tmp_path: Path) -> None:
    cert, key, root = ensure_demo_pki(tmp_path / "demo")
    assert (cert.name, key.name, root.name) == ("localhost.pem", "localhost.key", "root.pem")
    assert openssl_verify(root, cert, "-verify_hostname", "localhost").returncode == 0
    assert openssl_verify(root, cert, "-verify_ip", "127.0.0.1").returncode == 0
    assert ensure_demo_pki(tmp_path / "demo") == (cert, key, root)


def test_name_constraints_limit_what_the_root_signs(tmp_path: Path) -> None:
    ca = init_ca(tmp_path, permitted=["home.lan"])
    with pytest.raises(BadName, match="permitted"):
        issue_leaf(ca, ["evil.example.com"])
    leaf = issue_leaf(ca, ["nas.home.lan", "192.168.1.10"])
    assert openssl_verify(ca.root_path, leaf.cert_path, "-verify_hostname", "nas.home.lan").returncode == 0


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_round_trip_verifies_with_openssl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca_dir)]) == 0
    assert main(["ca", "issue", "--dir", str(ca_dir), "nas.home.lan,192.168.1.10", "*.apps.lan"]) == 0
    assert (
        main(["ca", "issue", "--dir", str(ca_dir), "--client", "--days", "90", "--out", str(tmp_path), "laptop"]) == 0
    )
    out = capsys.readouterr().out
    assert "nas.home.lan.pem" in out and "_wildcard.apps.lan.pem" in out
    root = ca_dir / "root.pem"
    nas, wild, laptop = ca_dir / "nas.home.lan.pem", ca_dir / "_wildcard.apps.lan.pem", tmp_path / "laptop.pem"
    for args in (
        (nas, "-purpose", "sslserver", "-verify_hostname", "nas.home.lan"),
        (nas, "-purpose", "sslserver", "-verify_ip", "192.168.1.10"),
        (wild, "-purpose", "sslserver", "-verify_hostname", "photos.apps.lan"),
        (laptop, "-purpose", "sslclient"),
    ):
        result = openssl_verify(root, *args)
        assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr
    # wrong host, wrong purpose and deeper names are refused
    assert openssl_verify(root, nas, "-verify_hostname", "other.home.lan").returncode != 0
    assert openssl_verify(root, nas, "-purpose", "sslclient").returncode != 0
    assert openssl_verify(root, wild, "-verify_hostname", "a.b.apps.lan").returncode != 0
    assert mode(ca_dir / "nas.home.lan.key") == 0o600


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = str(tmp_path / "ca")
    assert main(["ca", "issue", "--dir", ca_dir, "a.test"]) == 1  # no CA yet
    assert main(["ca", "init", "--dir", ca_dir]) == 0
    assert main(["ca", "init", "--dir", ca_dir]) == 1  # never overwrite a root
    assert main(["ca", "issue", "--dir", ca_dir, "bad..name"]) == 2
    assert main(["ca", "issue", "--dir", ca_dir, "--days", "1000", "a.test"]) == 2
    assert main(["ca", "issue", "--dir", ca_dir, "ok.test", "bad..name"]) == 2
    assert not (tmp_path / "ca" / "ok.test.pem").exists()  # nothing written when any name is bad
    err = capsys.readouterr().err
    assert "edge ca init --dir" in err and "bad..name" in err


def test_cli_is_reachable_as_a_program(tmp_path: Path) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edge", "ca", "init", "--dir", str(tmp_path / "ca")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "root.pem" in result.stdout


# -- internal certificates of a listener ---------------------------------------------------------


def test_ensure_internal_creates_the_demo_ca_and_leaf_on_request(tmp_path: Path) -> None:
    from edge.ca import ensure_internal
    from edge.policy.model import Certificate, Tls

    demo = tmp_path / "demo-ca"
    own = Certificate(cert=str(tmp_path / "own.pem"), key=str(tmp_path / "own.key"))  # not in a CA dir
    tls = Tls(certificates=(Certificate(cert=str(demo / "localhost.pem"), key=str(demo / "localhost.key")), own))
    assert ensure_internal(tls) == ([], [])  # nothing is created unasked
    leaves, errors = ensure_internal(tls, create_ca=True)
    assert errors == [] and [leaf.names for leaf in leaves] == [("localhost", "127.0.0.1", "::1")]
    assert openssl_verify(demo / "root.pem", demo / "localhost.pem", "-verify_ip", "::1").returncode == 0
    assert not (tmp_path / "own.pem").exists() and not (tmp_path / "root.pem").exists()


def test_ensure_internal_renews_in_existing_ca_dirs_keeping_names(tmp_path: Path) -> None:
    from edge.ca import ensure_internal
    from edge.policy.model import Certificate, Tls

    ca = init_ca(tmp_path)
    leaf = issue_leaf(ca, ["nas.lan", "10.0.0.2"])
    tls = Tls(
        certificates=(
            Certificate(cert=str(leaf.cert_path), key=str(leaf.key_path)),
            Certificate(cert=str(tmp_path / "_wildcard.apps.lan.pem"), key=str(tmp_path / "_wildcard.apps.lan.key")),
        )
    )
    before = leaf.cert_path.read_bytes()
    leaves, errors = ensure_internal(tls)
    assert errors == [] and leaf.cert_path.read_bytes() == before  # current: untouched
    assert leaves[1].names == ("*.apps.lan",)
    leaves, _ = ensure_internal(tls, now=leaf.not_after - dt.timedelta(days=1))
    assert leaf.cert_path.read_bytes() != before and leaves[0].names == ("nas.lan", "10.0.0.2")
