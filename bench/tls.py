"""TLS for ``--https``: the run's certificate, the clients' TLS settings, and what each proxy negotiates.

Owns three things: the one certificate every proxy serves (issued by edge's internal CA for
``localhost`` and ``127.0.0.1``, ECDSA P-256), the OpenSSL configuration every TLS client of the
run is started with (``OPENSSL_CONF``: TLS 1.3's ``TLS_AES_128_GCM_SHA256`` and the ``X25519``
group only, so all four proxies do the same cryptographic work whatever their own preference
order: Go's and HAProxy's server preference, nginx's and edge's client preference), and the
probes: ``openssl s_client`` for version, cipher, group, signature and ALPN per proxy, and
``curl --http2`` for whether a proxy really answers over HTTP/2.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
from pathlib import Path

from bench.peers import TlsFiles

__all__ = [
    "CIPHERSUITES",
    "GROUPS",
    "client_context",
    "client_env",
    "h2_check",
    "issue",
    "negotiated",
    "write_client_conf",
]

CIPHERSUITES = "TLS_AES_128_GCM_SHA256"
GROUPS = "X25519"
# TLS 1.2 is never negotiated here (all four speak 1.3); the suite a 1.2 fallback would use anyway.
TLS12_CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"

CLIENT_CONF = f"""# OpenSSL settings of every TLS client of the benchmark (wrk, h2load, bench.handshakes, s_client).
openssl_conf = bench_init

[bench_init]
ssl_conf = bench_ssl

[bench_ssl]
system_default = bench_tls

[bench_tls]
MinProtocol = TLSv1.2
CipherString = {TLS12_CIPHER}
Ciphersuites = {CIPHERSUITES}
Groups = {GROUPS}
"""


def issue(directory: Path) -> TlsFiles:
    """The run's certificate for localhost and 127.0.0.1 from edge's internal CA (made in ``directory``)."""
    from edge.ca import ensure_demo_pki  # edge's own package: imported only for --https

    cert, key, root = ensure_demo_pki(directory, ("localhost", "127.0.0.1"))
    pem = directory / "bench.pem"
    pem.write_bytes(Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(key).read_bytes())
    pem.chmod(0o600)
    return TlsFiles(cert=Path(cert), key=Path(key), pem=pem, root=Path(root))


def write_client_conf(path: Path) -> Path:
    path.write_text(CLIENT_CONF)
    return path


def client_env(conf: Path) -> dict[str, str]:
    """Environment additions for a TLS client process of the run."""
    return {"OPENSSL_CONF": str(conf)}


def client_context(root: Path) -> ssl.SSLContext:
    """For the harness's own readiness checks: verify the proxy serves the run's certificate."""
    return ssl.create_default_context(cafile=str(root))


_S_CLIENT = {
    "version": re.compile(r"^New, (\S+), Cipher is (\S+)", re.MULTILINE),
    "group": re.compile(r"^Server Temp Key: ([^,\s]+)", re.MULTILINE),
    "signature": re.compile(r"^Peer signature type: (\S+)", re.MULTILINE),
    "alpn": re.compile(r"^ALPN protocol: (\S+)", re.MULTILINE),
    "verify": re.compile(r"^\s*Verify return code: (\d+) \(([^)]*)\)", re.MULTILINE),
}


def parse_s_client(text: str) -> dict[str, str]:
    """``openssl s_client`` output -> version, cipher, group, signature, alpn, verify (or error)."""
    version = _S_CLIENT["version"].search(text)
    if version is None or version.group(1) == "(NONE),":
        return {"error": "no TLS session: " + " ".join(text.split())[-200:]}
    info = {"version": version.group(1).rstrip(","), "cipher": version.group(2)}
    for key in ("group", "signature", "alpn"):
        match = _S_CLIENT[key].search(text)
        info[key] = match.group(1) if match else ("-" if key == "alpn" else "?")
    verify = _S_CLIENT["verify"].search(text)
    info["verify"] = verify.group(2) if verify else "?"
    return info


def negotiated(host: str, port: int, files: TlsFiles, conf: Path) -> dict[str, str]:
    """What a proxy's TLS listener negotiates with the benchmark clients' settings, via s_client."""
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{host}:{port}",
        "-servername",
        "localhost",
        "-alpn",
        "h2,http/1.1",
        "-CAfile",
        str(files.root),
    ]
    try:
        # errors="replace": s_client echoes the peer's raw bytes (Caddy's HTTP/2 preface)
        done = subprocess.run(argv, input="", capture_output=True, text=True, errors="replace", timeout=10,
                              env=_env(conf), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"openssl s_client: {exc}"}
    return parse_s_client(done.stdout + done.stderr)


def h2_check(host: str, port: int, files: TlsFiles, conf: Path) -> str | None:
    """None when ``curl --http2`` gets ``GET /small`` answered over HTTP/2, else why not."""
    url = f"https://{host}:{port}/small"
    argv = ["curl", "--http2", "-sv", "--max-time", "5", "--cacert", str(files.root), "-o", "/dev/null", url]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=15, env=_env(conf),
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"curl --http2: {exc}"
    log = done.stderr
    if re.search(r"^< HTTP/2 200", log, re.MULTILINE):
        return None
    alpn = re.search(r"ALPN[,:] server (?:accepted|did not agree)[^\n]*", log)
    status = re.search(r"^< (HTTP/\S+ \d+)", log, re.MULTILINE)
    why = alpn.group(0) if alpn else f"curl exited {done.returncode}"
    return f"{why}" + (f"; answered {status.group(1)}" if status else "")


def _env(conf: Path) -> dict[str, str]:
    return {**os.environ, **client_env(conf)}
