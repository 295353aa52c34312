"""ACME storage and the TLS-ALPN-01 certificate, without a CA; the manager's failure path
against a CA that does not answer."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edge.acme import AcmeManager, HostState, Storage, StorageError, stored_certificates
from edge.acme.challenge import ID_PE_ACME_IDENTIFIER, validation_certificate
from edge.acme.storage import key_pem, new_key
from edge.ca import init_ca, issue_leaf
from edge.policy.model import Acme, Tls
from tests.acme.conftest import mode
from tests.support.procs import free_port

NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def wide_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _chain_for(tmp_path: Path, host: str) -> tuple[bytes, bytes]:
    ca = init_ca(tmp_path / "ca")
    leaf = issue_leaf(ca, [host], cert_path=tmp_path / "leaf.pem", key_path=tmp_path / "leaf.key")
    return leaf.cert_path.read_bytes(), leaf.key_path.read_bytes()


def test_files_and_directories_are_owner_only_whatever_the_umask(tmp_path: Path, wide_umask: None) -> None:
    storage = Storage(tmp_path / "acme")
    key = storage.account_key()
    assert storage.account_key().private_numbers() == key.private_numbers()  # created once
    chain, leaf_key = _chain_for(tmp_path, "a.example.org")
    stored = storage.save("a.example.org", chain, leaf_key, "https://ca.example/dir", NOW)
    assert mode(storage.root) == mode(storage.root / "certs") == 0o700
    for path in (storage.root / "account.key", stored.cert_path, stored.key_path,
                 stored.cert_path.with_suffix(".json")):
        assert mode(path) == 0o600, path
    assert stored.directory == "https://ca.example/dir"
    assert storage.load("a.example.org") == stored


def test_a_restored_wider_key_file_is_tightened(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "acme")
    storage.account_key()
    os.chmod(storage.root / "account.key", 0o644)
    storage.account_key()
    assert mode(storage.root / "account.key") == 0o600


def test_mismatched_or_foreign_certificates_are_not_loaded(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "acme")
    chain, _ = _chain_for(tmp_path, "a.example.org")
    with pytest.raises(StorageError):
        storage.save("a.example.org", chain, key_pem(new_key()), "https://ca.example/dir", NOW)
    assert storage.load("a.example.org") is None
    with pytest.raises(StorageError):
        storage.cert_paths("../../etc/passwd")
    tls = Tls(acme=Acme(directory="https://ca.example/dir", storage=str(storage.root)))
    assert stored_certificates(tls, ["a.example.org"]) == ()


def test_a_foreign_account_key_is_refused_with_its_path(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "acme")
    storage.ensure()
    (storage.root / "account.key").write_text("not a key")
    with pytest.raises(StorageError, match=r"account\.key"):
        storage.account_key()


def test_tls_alpn01_certificate_follows_rfc_8737() -> None:
    key_authorization = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
    cert, key = validation_certificate("www.example.org", key_authorization, NOW)
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    digest = hashes.Hash(hashes.SHA256())
    digest.update(key_authorization.encode())
    assert ext.value.value == b"\x04\x20" + digest.finalize()  # DER OCTET STRING of the SHA-256
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.org"]
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    cert.public_bytes(serialization.Encoding.PEM)


def test_an_unreachable_ca_fails_the_host_and_schedules_a_retry(tmp_path: Path) -> None:
    """The CA refuses connections: no exception escapes, the host is FAILED with a reason."""
    tls = Tls(acme=Acme(directory=f"https://127.0.0.1:{free_port()}/dir", storage=str(tmp_path / "acme")))
    answers: dict[str, bytes] = {}

    async def scenario():
        manager = AcmeManager("websecure", tls, ["down.example.org"], answers)
        await manager.start()
        try:
            return await asyncio.wait_for(
                manager.wait_until(lambda s: s.host("down.example.org").state is HostState.FAILED), 20)
        finally:
            await manager.stop()

    status = asyncio.run(scenario())
    host = status.host("down.example.org")
    assert host.failures == 1 and "account at" in (host.error or "")
    assert answers == {}
    assert mode(tmp_path / "acme") == 0o700
