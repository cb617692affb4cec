"""Enterprise egress for the upstream client: HTTP proxies (CONNECT tunnels, absolute-form
requests, HTTPS_PROXY/NO_PROXY), private CAs, mTLS, verify_tls, and TLS errors that say why.

The pure parts (NO_PROXY matching, proxy choice, messages, config validation) are tables.
The rest runs for real on loopback: a throwaway PKI made at test time (with the
`cryptography` package when it is installed, else the openssl command), asyncio TLS
servers signed by it, and an asyncio CONNECT proxy that records what it saw. The proxy
connects every name to 127.0.0.1, as a corporate proxy resolves names the client never
looks up itself: so `api.egress.test` reaches a local server only through it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import orjson
import pytest

from proxy.config import ConfigError, load_text
from proxy.errors import UpstreamError
from proxy.providers.base import UpstreamRequest
from proxy.providers.http import (
    ConnectError,
    HttpPool,
    Proxy,
    ProxyFailed,
    TlsError,
    bypasses_proxy,
    choose_proxy,
    tls_context,
    tls_failure,
)
from proxy.providers.openai import OpenAIAdapter
from proxy.snapshot import ProviderSpec, SnapshotHolder, snapshot_from_text
from support import REPO, chat_body, completion, dead_port

UPSTREAM_NAME = "api.egress.test"  # in the server certificate; resolved by the test proxy only
SERVER_NAMES = (UPSTREAM_NAME, "localhost")  # no IP address: 127.0.0.1 is a mismatch
PROXY_USER, PROXY_PASSWORD = "alice", "s3cret@pw"  # the @ travels percent-encoded in URLs
PROXY_USERINFO = "alice:s3cret%40pw"


# ---------------------------------------------------------------- NO_PROXY, as curl and httpx read it

NO_PROXY_CASES = [
    # host, port, NO_PROXY, bypassed
    ("api.example.com", 443, "", False),
    ("api.example.com", 443, "*", True),
    ("api.example.com", 443, "example.com", True),  # a domain covers its subdomains
    ("example.com", 443, "example.com", True),
    ("api.example.com", 443, ".example.com", True),  # a leading dot means the same
    ("example.com", 443, ".example.com", True),
    ("api.example.com", 443, "*.example.com", True),
    ("notexample.com", 443, "example.com", False),  # a suffix only at a dot
    ("example.com.evil.net", 443, "example.com", False),
    ("api.example.com", 443, "api.example.com", True),
    ("other.example.com", 443, "api.example.com", False),
    ("API.Example.COM", 443, "api.example.com", True),  # case-insensitive both ways
    ("api.example.com", 443, "API.EXAMPLE.COM", True),
    ("api.example.com.", 443, "example.com", True),  # a trailing dot is the same name
    ("api.example.com", 443, "foo.net, example.com ,bar.org", True),  # spaces around entries
    ("api.example.com", 443, "foo.net example.com", True),  # spaces alone separate too
    ("api.example.com", 443, "foo.net,,bar.org,", False),
    ("api.example.com", 443, "example.com:443", True),  # host:port: that port only
    ("api.example.com", 8443, "example.com:443", False),
    ("api.example.com", 8443, "example.com:8443", True),
    ("10.1.2.3", 443, "10.1.2.3", True),  # an IP address: that address
    ("10.1.2.4", 443, "10.1.2.3", False),
    ("10.1.2.3", 443, "10.0.0.0/8", True),  # a CIDR block
    ("11.1.2.3", 443, "10.0.0.0/8", False),
    ("10.1.2.3", 443, "10.1.2.3:443", True),
    ("10.1.2.3", 80, "10.1.2.3:443", False),
    ("10.1.2.3", 443, "1.2.3", False),  # not a domain suffix of an address
    ("2001:db8::1", 443, "2001:db8::1", True),  # IPv6, bare
    ("2001:db8::1", 443, "[2001:db8::1]", True),  # ... bracketed
    ("[2001:db8::1]", 443, "2001:db8:0:0:0:0:0:1", True),  # ... any spelling
    ("2001:db8::1", 443, "[2001:db8::1]:443", True),
    ("2001:db8::1", 80, "[2001:db8::1]:443", False),
    ("2001:db8::1", 443, "2001:db8::/32", True),
    ("2001:db9::1", 443, "2001:db8::/32", False),
    ("example.com", 443, "10.0.0.0/8", False),  # a name never matches an address entry
    ("intranet", 443, "intranet", True),  # a single-label name
    ("intranet.corp", 443, "intranet", False),
]


@pytest.mark.parametrize("host, port, no_proxy, bypassed", NO_PROXY_CASES)
def test_no_proxy(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypassed


# ---------------------------------------------------------------- which proxy a pool uses

CORP = "http://proxy.corp:3128"
OTHER = "http://other.corp:8080"

CHOICES = [
    # base_url, provider setting, environment, the proxy chosen (None: direct), its source
    ("https://api.x.com/v1", None, {}, None, None),
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": CORP}, CORP, "HTTPS_PROXY"),
    ("https://api.x.com/v1", None, {"https_proxy": CORP}, CORP, "https_proxy"),
    ("https://api.x.com/v1", None, {"https_proxy": CORP, "HTTPS_PROXY": OTHER}, CORP, "https_proxy"),  # lower case first
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": "  "}, None, None),  # blank is unset
    ("https://api.x.com/v1", None, {"HTTP_PROXY": CORP}, None, None),  # https origins read HTTPS_PROXY only
    ("http://api.x.com/v1", None, {"HTTP_PROXY": CORP}, CORP, "HTTP_PROXY"),
    ("http://api.x.com/v1", None, {"http_proxy": CORP, "HTTPS_PROXY": OTHER}, CORP, "http_proxy"),
    ("http://api.x.com/v1", None, {"HTTPS_PROXY": CORP}, None, None),
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": "proxy.corp:3128"}, CORP, "HTTPS_PROXY"),  # bare host:port: http
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": CORP, "NO_PROXY": "x.com"}, None, None),
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": CORP, "no_proxy": ".x.com"}, None, None),
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": CORP, "no_proxy": "y.com", "NO_PROXY": "x.com"}, CORP,
     "HTTPS_PROXY"),  # lower case first here too
    ("https://api.x.com:8443/v1", None, {"HTTPS_PROXY": CORP, "NO_PROXY": "api.x.com:443"}, CORP, "HTTPS_PROXY"),
    ("https://api.x.com/v1", None, {"HTTPS_PROXY": CORP, "NO_PROXY": "api.x.com:443"}, None, None),  # default port
    # this machine never goes through a proxy from the environment
    ("http://localhost:8000/v1", None, {"HTTP_PROXY": CORP}, None, None),
    ("http://127.0.0.1:8000/v1", None, {"HTTP_PROXY": CORP}, None, None),
    ("http://127.9.9.9:8000/v1", None, {"HTTP_PROXY": CORP}, None, None),
    ("http://[::1]:8000/v1", None, {"HTTP_PROXY": CORP}, None, None),
    ("https://vllm.localhost/v1", None, {"HTTPS_PROXY": CORP}, None, None),
    # the provider's own setting wins over the environment, NO_PROXY included
    ("https://api.x.com/v1", OTHER, {"HTTPS_PROXY": CORP}, OTHER, "providers.corp.proxy"),
    ("https://api.x.com/v1", OTHER, {"HTTPS_PROXY": CORP, "NO_PROXY": "*"}, OTHER, "providers.corp.proxy"),
    ("https://api.x.com/v1", OTHER, {}, OTHER, "providers.corp.proxy"),
    ("http://localhost:8000/v1", OTHER, {}, OTHER, "providers.corp.proxy"),  # asked for: even to this machine
    ("https://api.x.com/v1", "none", {"HTTPS_PROXY": CORP}, None, None),
]


@pytest.mark.parametrize("base_url, setting, env, chosen, source", CHOICES)
def test_choose_proxy(base_url: str, setting: str | None, env: dict[str, str], chosen: str | None,
                      source: str | None) -> None:
    proxy = choose_proxy(base_url, setting, env, provider="corp")
    assert (None if proxy is None else str(proxy)) == chosen
    assert (None if proxy is None else proxy.source) == source


def test_an_unusable_proxy_in_the_environment_names_the_variable_not_the_password() -> None:
    with pytest.raises(ProxyFailed) as info:
        choose_proxy("https://api.x.com/v1", None, {"HTTPS_PROXY": "socks5://u:hunter2@proxy.corp:1080"})
    assert "HTTPS_PROXY" in str(info.value) and "only http://" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value, ConnectError)  # a connection failure: retries and fallbacks apply


def test_proxy_url_credentials_become_basic_auth_and_are_never_shown() -> None:
    proxy = Proxy.from_url(f"http://{PROXY_USERINFO}@proxy.corp:3128", "providers.corp.proxy")
    assert (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert proxy.authorization == "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert str(proxy) == "http://proxy.corp:3128"
    assert PROXY_PASSWORD not in repr(proxy) and "s3cret" not in repr(proxy)
    assert proxy.authorization not in repr(proxy)
    assert Proxy.from_url("http://proxy.corp").port == 80
    assert Proxy.from_url("http://user@proxy.corp:1").authorization == "Basic " + base64.b64encode(b"user:").decode()
    assert str(Proxy.from_url("http://[fd00::1]:3128")) == "http://[fd00::1]:3128"


@pytest.mark.parametrize("url", ["https://proxy.corp:3128", "socks5://proxy.corp:1080", "http://:3128",
                                 "http://proxy.corp:99999", "http://proxy.corp:3128/path"])
def test_unusable_proxy_urls(url: str) -> None:
    with pytest.raises(ValueError):
        Proxy.from_url(url)


# ---------------------------------------------------------------- TLS messages, table-driven


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_code, exc.verify_message, exc.reason = code, message, "CERTIFICATE_VERIFY_FAILED"
    return exc


def alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] alert")
    exc.reason = reason
    return exc


TLS_MESSAGES = [
    (verify_error(20, "unable to get local issuer certificate"),
     "TLS: the certificate of api.x.com is not trusted (unable to get local issuer certificate: its CA is not in "
     "the trust store; set providers.corp.ca_bundle"),
    (verify_error(18, "self-signed certificate"), "is not trusted (self-signed certificate: its CA is not"),
    (verify_error(19, "self-signed certificate in certificate chain"), "providers.corp.ca_bundle"),
    (verify_error(62, "hostname mismatch"), "TLS: hostname mismatch: the certificate is for a.example, not api.x.com"),
    (verify_error(64, "IP address mismatch"), "hostname mismatch: the certificate is for a.example, not api.x.com"),
    (verify_error(10, "certificate has expired"), "TLS: the certificate of api.x.com has expired"),
    (verify_error(9, "certificate is not yet valid"), "is not valid yet (is this machine's clock right?)"),
    (verify_error(23, "certificate revoked"), "was revoked"),
    (verify_error(26, "unsupported certificate purpose"), "was refused (unsupported certificate purpose)"),
    (alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
     "TLS: the server api.x.com refused the client certificate (it requires one and none was sent; set "
     "providers.corp.client_cert"),
    (alert("TLSV1_ALERT_UNKNOWN_CA"), "refused the client certificate (it does not trust the CA that signed it"),
    (alert("SSLV3_ALERT_BAD_CERTIFICATE"), "refused the client certificate (bad certificate"),
    (alert("SSLV3_ALERT_HANDSHAKE_FAILURE"), "ended the handshake"),
    (alert("WRONG_VERSION_NUMBER"), "did not answer in TLS"),
    (alert("SOMETHING_ELSE"), "TLS handshake with api.x.com failed: SOMETHING_ELSE"),
]


@pytest.mark.parametrize("exc, expected", TLS_MESSAGES, ids=[m[1][:40] for m in TLS_MESSAGES])
def test_tls_failure_messages(exc: ssl.SSLError, expected: str) -> None:
    error = tls_failure(exc, "api.x.com", "corp", names=("a.example",))
    assert isinstance(error, TlsError) and isinstance(error, ConnectError)  # still the connection kind
    assert expected in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" not in str(error)


def test_a_mismatch_without_known_names_still_says_which_name() -> None:
    assert str(tls_failure(verify_error(62, "x"), "b.example")) == (
        "TLS: hostname mismatch: the certificate is for other names, not b.example")


# ---------------------------------------------------------------- a throwaway PKI


@dataclass
class Pki:
    folder: Path
    ca: Path  # the private CA providers are told to trust
    server_cert: Path  # for SERVER_NAMES, signed by ca
    server_key: Path
    client_cert: Path  # signed by ca
    client_key: Path
    client_combined: Path  # the client certificate and its key in one file
    rogue_client_cert: Path  # signed by a CA nobody trusts
    rogue_client_key: Path
    expired_cert: Path | None  # for SERVER_NAMES, past its end (only with `cryptography`)
    expired_key: Path | None


def _pki_with_cryptography(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def issue(cn: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None, *,
              names: tuple[str, ...] = (), usage: x509.ObjectIdentifier | None = None,
              days: tuple[int, int] = (-1, 2)) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        signer_key, signer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(signer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + timedelta(days=days[0])).not_valid_after(now + timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                                  critical=False))
        if issuer is None:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return key, builder.sign(signer_key, hashes.SHA256())

    ca = issue("Switchyard Test CA", None)
    ca_path, _ = write("ca", *ca)
    server = write("server", *issue(UPSTREAM_NAME, ca, names=SERVER_NAMES, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    client = write("client", *issue("switchyard-client", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    rogue = write("rogue-client", *issue("rogue", issue("Rogue CA", None), usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    expired = write("expired", *issue(UPSTREAM_NAME, ca, names=SERVER_NAMES, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                                      days=(-10, -1)))
    return _pki(folder, ca_path, server, client, rogue, expired)


def _pki_with_openssl(folder: Path) -> Pki:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    def issue(stem: str, cn: str, ca: str | None, extensions: str) -> tuple[Path, Path]:
        (folder / f"{stem}.ext").write_text(extensions + "\nsubjectKeyIdentifier=hash\n")
        new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{stem}.key"]
        if ca is None:
            run("req", "-x509", *new_key, "-out", f"{stem}.pem", "-days", "2", "-subj", f"/CN={cn}",
                "-extensions", "v3", "-config", _openssl_config(folder, stem, extensions))
        else:
            run("req", *new_key, "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
            run("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{stem}.pem", "-days", "2", "-extfile", f"{stem}.ext")
        return folder / f"{stem}.pem", folder / f"{stem}.key"

    ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    leaf = "basicConstraints=critical,CA:FALSE\nauthorityKeyIdentifier=keyid\nextendedKeyUsage="
    ca_path, _ = issue("ca", "Switchyard Test CA", None, ca_ext)
    issue("rogue-ca", "Rogue CA", None, ca_ext)
    server = issue("server", UPSTREAM_NAME, "ca",
                   leaf + "serverAuth\nsubjectAltName=" + ",".join(f"DNS:{n}" for n in SERVER_NAMES))
    client = issue("client", "switchyard-client", "ca", leaf + "clientAuth")
    rogue = issue("rogue-client", "rogue", "rogue-ca", leaf + "clientAuth")
    return _pki(folder, ca_path, server, client, rogue, None)


def _openssl_config(folder: Path, stem: str, extensions: str) -> str:
    path = folder / f"{stem}.cnf"
    path.write_text(f"[req]\ndistinguished_name=dn\n[dn]\n[v3]\n{extensions}\nsubjectKeyIdentifier=hash\n")
    return str(path)


def _pki(folder: Path, ca: Path, server: tuple[Path, Path], client: tuple[Path, Path],
         rogue: tuple[Path, Path], expired: tuple[Path, Path] | None) -> Pki:
    combined = folder / "client-combined.pem"
    combined.write_bytes(client[0].read_bytes() + client[1].read_bytes())
    return Pki(folder, ca, *server, *client, combined, *rogue,
               *(expired if expired is not None else (None, None)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _pki_with_openssl(folder)
    return _pki_with_cryptography(folder)


def server_tls(pki: Pki, *, cert: Path | None = None, key: Path | None = None,
               client_certificates: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert or pki.server_cert, key or pki.server_key)
    if client_certificates:  # mTLS: a client certificate signed by our CA, or no handshake
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=pki.ca)
    return context


# ---------------------------------------------------------------- loopback peers


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


class Upstream:
    """A keep-alive HTTP/1.1 server (TLS when given a context) answering every request with
    an OpenAI chat completion; `seen` has each request's line and headers.

    Plain blocking sockets, a thread per connection: unlike an asyncio server, a refused
    handshake sends its alert (as nginx or Envoy do), and that alert is what the client
    must explain."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.seen: list[Seen] = []
        self.refused: list[str] = []  # handshakes the server refused, and why
        self._stop = threading.Event()

    async def __aenter__(self) -> Upstream:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="egress-upstream", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5)
        self._listener.close()

    def url(self, host: str = UPSTREAM_NAME) -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                # a second handle on the connection keeps it open past a refused handshake: closing at
                # once, with the client's first request unread, would reset it and lose the alert
                raw = conn.dup()
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except ssl.SSLError as exc:
                    self.refused.append(exc.reason or str(exc))
                    _linger(raw)
                    return
                raw.close()
            stream = conn.makefile("rb")
            while (head := _read_head_blocking(stream)) is not None:
                stream.read(int(head.headers.get("content-length", "0")))
                self.seen.append(head)
                body = orjson.dumps(completion("through the tunnel"))
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
        except OSError:  # the client went away (ssl.SSLError included)
            pass
        finally:
            conn.close()


def _linger(sock: socket.socket) -> None:
    """Close as nginx does: stop sending, read what the client still sends, then close."""
    try:
        sock.settimeout(2)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def _read_head_blocking(stream: BinaryIO) -> Seen | None:
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line)
    return _parse_head(b"".join(lines)) if lines else None


def _parse_head(head: bytes) -> Seen:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Seen(method, target, headers)


async def read_head(reader: asyncio.StreamReader) -> Seen | None:
    try:
        return _parse_head(await reader.readuntil(b"\r\n\r\n"))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class ConnectProxy:
    """An HTTP proxy: CONNECT tunnels, and absolute-form requests forwarded on (the first of
    each connection recorded, its Proxy-Authorization removed; the rest piped). Every name
    is connected to 127.0.0.1. `credentials` ("user:password") makes it demand Basic auth
    (407 without); `refuse` answers every request with that status."""

    def __init__(self, credentials: str | None = None, refuse: int | None = None) -> None:
        self.expected = None if credentials is None else "Basic " + base64.b64encode(credentials.encode()).decode()
        self.refuse = refuse
        self.seen: list[Seen] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port: int = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def url(self, userinfo: str | None = PROXY_USERINFO) -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            seen = await read_head(reader)
            if seen is None:
                return
            self.seen.append(seen)
            if self.refuse is not None:
                return await self._answer(writer, f"{self.refuse} Refused")
            if self.expected is not None and seen.headers.get("proxy-authorization") != self.expected:
                return await self._answer(writer, "407 Proxy Authentication Required",
                                          'proxy-authenticate: Basic realm="corp"\r\n')
            if seen.method == "CONNECT":
                _, port = seen.target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(seen.target)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", url.port or 80)
                fields = "".join(f"{k}: {v}\r\n" for k, v in seen.headers.items() if k != "proxy-authorization")
                up_writer.write(f"{seen.method} {seen.target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1"))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()
            if up_writer is not None:  # the pipes close it too, unless cancelled before they began
                up_writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, status: str, extra: str = "") -> None:
        body = b"no entry"
        writer.write(f"HTTP/1.1 {status}\r\n{extra}content-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def post(pool: HttpPool) -> tuple[int, bytes]:
    response = await pool.request("POST", "/v1/chat/completions", [("content-type", "application/json")], b"{}")
    try:
        return response.status, await response.read()
    finally:
        response.close()


@contextlib.asynccontextmanager
async def pool_for(base_url: str, **options: object) -> AsyncIterator[HttpPool]:
    pool = HttpPool(base_url, connect_timeout_s=5, **options)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.aclose()


# ---------------------------------------------------------------- through a proxy, for real


@pytest.mark.integration  # certificates from a PKI made at test time (openssl when cryptography is absent)
async def test_https_through_a_connect_tunnel_with_basic_auth(pki: Pki) -> None:
    async with Upstream(server_tls(pki)) as upstream, ConnectProxy(f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        options = {"ssl_context": tls_context(ca_bundle=str(pki.ca)), "proxy": Proxy.from_url(proxy.url(), "test")}
        async with pool_for(upstream.url(), **options) as pool:
            for _ in range(2):
                status, body = await post(pool)
                assert status == 200 and b"through the tunnel" in body
            assert pool.open_connections == 1  # the tunnel is kept alive like any connection
        [connect] = proxy.seen
        assert connect.method == "CONNECT" and connect.target == f"{UPSTREAM_NAME}:{upstream.port}"
        assert connect.headers["host"] == f"{UPSTREAM_NAME}:{upstream.port}"
        assert connect.headers["proxy-authorization"] == "Basic " + base64.b64encode(
            f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        # TLS ran end to end inside the tunnel: the origin saw ordinary requests, no proxy credentials
        assert [(s.method, s.target) for s in upstream.seen] == [("POST", "/v1/chat/completions")] * 2
        assert all(s.headers["host"] == f"{UPSTREAM_NAME}:{upstream.port}" for s in upstream.seen)
        assert all("proxy-authorization" not in s.headers for s in upstream.seen)


@pytest.mark.integration
async def test_http_through_a_proxy_uses_the_absolute_form() -> None:
    async with Upstream() as upstream, ConnectProxy(f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        async with pool_for(upstream.url(), proxy=Proxy.from_url(proxy.url())) as pool:
            assert (await post(pool))[0] == 200
            assert (await post(pool))[0] == 200
        [request] = proxy.seen  # one connection to the proxy, kept alive for the second request
        assert request.method == "POST"
        assert request.target == f"http://{UPSTREAM_NAME}:{upstream.port}/v1/chat/completions"
        assert request.headers["host"] == f"{UPSTREAM_NAME}:{upstream.port}"
        assert request.headers["proxy-authorization"].startswith("Basic ")
        assert len(upstream.seen) == 2


@pytest.mark.integration
async def test_the_environment_proxy_and_the_provider_setting(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Upstream(server_tls(pki)) as upstream, ConnectProxy() as proxy:
        def adapter(**spec: object) -> OpenAIAdapter:
            return OpenAIAdapter(make_spec(upstream.url(), ca_bundle=str(pki.ca), **spec))

        monkeypatch.setenv("HTTPS_PROXY", proxy.url(None))
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_env = adapter()
        assert (await via_env.send(chat_request())).status == 200
        assert [s.method for s in proxy.seen] == ["CONNECT"]
        assert via_env._pool().proxy is not None and via_env._pool().proxy.source == "HTTPS_PROXY"  # type: ignore[union-attr]
        # the pool keeps what it chose: later changes to the environment are not read per request
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{dead_port()}")
        assert (await via_env.send(chat_request())).status == 200
        await via_env.aclose()

        # the provider's proxy wins over the (now dead) environment's
        named = adapter(proxy=proxy.url(None))
        assert (await named.send(chat_request())).status == 200
        assert named._pool().proxy is not None and named._pool().proxy.source == "providers.corp.proxy"  # type: ignore[union-attr]
        await named.aclose()

        # NO_PROXY, and the provider's "none", go direct (no request is made: the name only the proxy resolves)
        monkeypatch.setenv("NO_PROXY", "localhost, .egress.test")
        assert adapter()._pool().proxy is None
        monkeypatch.delenv("NO_PROXY")
        assert adapter(proxy="none")._pool().proxy is None
        assert adapter()._pool().proxy is not None


@pytest.mark.integration
@pytest.mark.parametrize("status, hint", [
    (407, "did not accept the user and password in test"),
    (403, "its policy does not allow this destination"),
    (502, f"it could not reach {UPSTREAM_NAME}"),
])
async def test_a_proxy_refusing_the_tunnel_is_a_clear_connect_error(pki: Pki, status: int, hint: str) -> None:
    async with ConnectProxy(f"{PROXY_USER}:other-password", refuse=None if status == 407 else status) as proxy:
        target = f"https://{UPSTREAM_NAME}:8443/v1"
        async with pool_for(target, proxy=Proxy.from_url(proxy.url(), "test")) as pool:
            with pytest.raises(ProxyFailed) as info:
                await post(pool)
        message = str(info.value)
        assert message.startswith(f"the proxy http://127.0.0.1:{proxy.port} (test) refused the tunnel to "
                                  f"{UPSTREAM_NAME}:8443: {status} ")
        assert hint in message
        assert PROXY_PASSWORD not in message and "s3cret" not in message and "alice" not in message


@pytest.mark.integration
async def test_a_proxy_that_wants_credentials_and_got_none_says_where_to_put_them() -> None:
    async with ConnectProxy("u:p") as proxy:
        async with pool_for(f"https://{UPSTREAM_NAME}/v1", proxy=Proxy.from_url(proxy.url(None), "HTTPS_PROXY")) as pool:
            with pytest.raises(ProxyFailed, match=r"407 .*it wants credentials: http://user:password@host:port in "
                                                  r"HTTPS_PROXY"):
                await post(pool)


async def test_a_proxy_that_does_not_answer_is_named() -> None:
    port = dead_port()
    async with pool_for(f"https://{UPSTREAM_NAME}/v1", proxy=Proxy.from_url(f"http://u:hunter2@127.0.0.1:{port}",
                                                                           "providers.corp.proxy")) as pool:
        with pytest.raises(ProxyFailed) as info:
            await post(pool)
    assert str(info.value) == (f"could not connect to the proxy http://127.0.0.1:{port} (providers.corp.proxy): "
                               "Connection refused")


@pytest.mark.integration
async def test_adapter_failures_keep_the_connection_kind_and_never_show_proxy_credentials(
        caplog: pytest.LogCaptureFixture) -> None:
    async with ConnectProxy(f"{PROXY_USER}:right") as proxy:
        adapter = OpenAIAdapter(make_spec(f"https://{UPSTREAM_NAME}/v1", proxy=proxy.url()))
        with pytest.raises(UpstreamError) as info:
            await adapter.send(chat_request())
        await adapter.aclose()
    assert info.value.kind == "connection"  # retry_on: connect, and fallbacks, apply
    assert info.value.message.startswith(f"provider corp unreachable: the proxy http://127.0.0.1:{proxy.port} "
                                         "(providers.corp.proxy) refused the tunnel")
    assert "s3cret" not in info.value.message and "s3cret" not in caplog.text


# ---------------------------------------------------------------- private CAs, mTLS, verify_tls


@pytest.mark.integration
async def test_a_private_ca_is_trusted_besides_the_system_bundle(pki: Pki) -> None:
    context = tls_context(ca_bundle=str(pki.ca))
    # the system's CAs are still loaded: ours came on top, they were not replaced
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert context.cert_store_stats()["x509_ca"] == system + 1
    if system:
        assert len(context.get_ca_certs()) > 1
    async with Upstream(server_tls(pki)) as upstream:
        async with pool_for(upstream.url("localhost"), ssl_context=context) as pool:
            assert (await post(pool))[0] == 200
    assert tls_context() is tls_context()  # no setting: the one shared default context


@pytest.mark.integration
async def test_an_unknown_ca_says_so_and_names_the_setting(pki: Pki) -> None:
    async with Upstream(server_tls(pki)) as upstream:
        async with pool_for(upstream.url("localhost"), provider="corp") as pool:
            with pytest.raises(TlsError) as info:
                await post(pool)
    assert str(info.value) == ("TLS: the certificate of localhost is not trusted (unable to get local issuer "
                               "certificate: its CA is not in the trust store; set providers.corp.ca_bundle to a PEM "
                               "file with that CA)")


@pytest.mark.integration
async def test_a_hostname_mismatch_names_what_the_certificate_is_for(pki: Pki) -> None:
    async with Upstream(server_tls(pki)) as upstream, ConnectProxy() as proxy:
        context = tls_context(ca_bundle=str(pki.ca))
        # a name the certificate does not carry, reached through the proxy
        wrong = f"https://wrong.egress.test:{upstream.port}/v1"
        async with pool_for(wrong, ssl_context=context, proxy=Proxy.from_url(proxy.url(None))) as pool:
            with pytest.raises(TlsError) as info:
                await post(pool)
        assert str(info.value) == ("TLS: hostname mismatch: the certificate is for api.egress.test, localhost, "
                                   "not wrong.egress.test")
        # an address the certificate does not carry, direct
        async with pool_for(upstream.url("127.0.0.1"), ssl_context=context) as pool:
            with pytest.raises(TlsError) as info:
                await post(pool)
        assert str(info.value) == "TLS: hostname mismatch: the certificate is for api.egress.test, localhost, not 127.0.0.1"
        assert upstream.seen == []


@pytest.mark.integration
async def test_an_expired_certificate_says_expired(pki: Pki) -> None:
    if pki.expired_cert is None:
        pytest.skip("an expired certificate needs the cryptography package")
    async with Upstream(server_tls(pki, cert=pki.expired_cert, key=pki.expired_key)) as upstream:
        async with pool_for(upstream.url("localhost"), ssl_context=tls_context(ca_bundle=str(pki.ca))) as pool:
            with pytest.raises(TlsError, match="^TLS: the certificate of localhost has expired$"):
                await post(pool)


@pytest.mark.integration
async def test_mtls_with_a_client_certificate(pki: Pki) -> None:
    async with Upstream(server_tls(pki, client_certificates=True)) as upstream, ConnectProxy() as proxy:
        for cert, key in [(pki.client_cert, pki.client_key), (pki.client_combined, None)]:
            context = tls_context(ca_bundle=str(pki.ca), client_cert=str(cert), client_key=key and str(key))
            async with pool_for(upstream.url("localhost"), ssl_context=context) as pool:
                assert (await post(pool))[0] == 200
            # and through a tunnel
            async with pool_for(upstream.url(), ssl_context=context, proxy=Proxy.from_url(proxy.url(None))) as pool:
                assert (await post(pool))[0] == 200
        assert len(upstream.seen) == 4


@pytest.mark.integration
@pytest.mark.parametrize("client", ["none", "rogue"])
async def test_mtls_refused_says_the_server_refused_the_client_certificate(pki: Pki, client: str) -> None:
    async with Upstream(server_tls(pki, client_certificates=True)) as upstream:
        certificate = {} if client == "none" else {"client_cert": str(pki.rogue_client_cert),
                                                  "client_key": str(pki.rogue_client_key)}
        context = tls_context(ca_bundle=str(pki.ca), **certificate)
        async with pool_for(upstream.url("localhost"), ssl_context=context, provider="corp") as pool:
            with pytest.raises(TlsError) as info:
                await post(pool)
    message = str(info.value)
    assert message.startswith("TLS: the server localhost refused the client certificate (")
    assert "set providers.corp.client_cert" in message
    if client == "none":
        assert "it requires one and none was sent" in message
    else:
        assert "it does not trust the CA that signed it" in message
    assert upstream.seen == []


@pytest.mark.integration
async def test_verify_tls_false_accepts_an_untrusted_certificate(pki: Pki) -> None:
    async with Upstream(server_tls(pki)) as upstream:
        async with pool_for(upstream.url("127.0.0.1"), ssl_context=tls_context(verify=False)) as pool:
            assert (await post(pool))[0] == 200  # unknown CA and the wrong name, both let through


@pytest.mark.integration
async def test_adapter_builds_its_tls_context_once(pki: Pki) -> None:
    async with Upstream(server_tls(pki)) as upstream:
        adapter = OpenAIAdapter(make_spec(upstream.url("localhost"), ca_bundle=str(pki.ca)))
        assert (await adapter.send(chat_request())).status == 200
        context = adapter._tls
        await adapter.aclose()  # a retired adapter that gets a late request opens a new pool ...
        assert (await adapter.send(chat_request())).status == 200
        assert adapter._tls is context  # ... with the same context
        await adapter.aclose()


# ---------------------------------------------------------------- config


def provider_yaml(**fields: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"""
providers:
  corp:
    type: openai
    base_url: https://api.corp.example/v1
{lines}routes: [{{name: r, to: corp/m}}]
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_text(text, {})
    return info.value.problems


def test_tls_files_that_do_not_exist_or_parse_are_config_errors_with_the_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert problems(provider_yaml(ca_bundle=str(missing))) == [
        ("providers.corp.ca_bundle", f"{missing}: no such file")]
    assert problems(provider_yaml(ca_bundle=str(garbage))) == [
        ("providers.corp.ca_bundle", f"{garbage} has no PEM certificate in it")]
    assert problems(provider_yaml(ca_bundle=str(tmp_path))) == [
        ("providers.corp.ca_bundle", f"{tmp_path}: a directory, not a file")]
    assert problems(provider_yaml(client_cert=str(missing))) == [
        ("providers.corp.client_cert", f"{missing}: no such file")]
    assert problems(provider_yaml(client_cert=str(pki.client_cert), client_key=str(missing))) == [
        ("providers.corp.client_key", f"{missing}: no such file")]
    assert problems(provider_yaml(client_cert=str(pki.client_cert), client_key=str(garbage))) == [
        ("providers.corp.client_key", f"{garbage} has no PEM private key in it")]
    assert problems(provider_yaml(client_cert=str(pki.client_cert), client_key=str(pki.server_key))) == [
        ("providers.corp.client_key", f"{pki.server_key} is not the key of client_cert {pki.client_cert}")]
    [(where, reason)] = problems(provider_yaml(client_cert=str(pki.client_cert)))
    assert where == "providers.corp.client_key" and "holds no private key" in reason
    assert problems(provider_yaml(client_key=str(pki.client_key))) == [
        ("providers.corp.client_key", "client_key needs client_cert")]


@pytest.mark.integration  # openssl encrypts the key, in a process of its own
def test_an_encrypted_client_key_is_refused_not_prompted_for(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.client_key), "-out", str(encrypted), "-aes256",
                    "-passout", "pass:secret"], check=True, capture_output=True)
    [(where, reason)] = problems(provider_yaml(client_cert=str(pki.client_cert), client_key=str(encrypted)))
    assert where == "providers.corp.client_key" and "is encrypted" in reason


def test_good_tls_settings_and_the_proxy_reach_the_provider_spec(pki: Pki) -> None:
    snapshot = snapshot_from_text(provider_yaml(
        ca_bundle=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key),
        proxy=f'"http://{PROXY_USERINFO}@proxy.corp:3128"'), env={})
    spec = snapshot.providers["corp"]
    assert (spec.ca_bundle, spec.client_cert, spec.client_key, spec.verify_tls) == (
        str(pki.ca), str(pki.client_cert), str(pki.client_key), True)
    assert spec.proxy == f"http://{PROXY_USERINFO}@proxy.corp:3128" and spec.tls_files
    assert snapshot.warnings == ()
    # the JSON form (what /admin/config shows) never holds the proxy's password
    shown = snapshot.config.model_dump(mode="json")["providers"]["corp"]["proxy"]
    assert shown == "http://alice:<redacted>@proxy.corp:3128"
    plain = snapshot_from_text(provider_yaml(), env={}).providers["corp"]
    assert (plain.proxy, plain.ca_bundle, plain.verify_tls, plain.tls_files) == (None, None, True, "")


def test_a_renewed_certificate_at_the_same_path_makes_a_new_spec(pki: Pki, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki.ca.read_bytes())
    before = snapshot_from_text(provider_yaml(ca_bundle=str(bundle)), env={}).providers["corp"]
    bundle.write_bytes(pki.ca.read_bytes() + pki.server_cert.read_bytes())
    after = snapshot_from_text(provider_yaml(ca_bundle=str(bundle)), env={}).providers["corp"]
    assert before != after  # so ProviderPool.sync builds a new adapter, with a new TLS context


@pytest.mark.parametrize("written, stored", [
    ("none", "none"), ("None", "none"), ("off", "none"), ("false", "none"), ("direct", "none"),
    ("null", None), ('"http://proxy.corp:3128"', "http://proxy.corp:3128"),
])
def test_proxy_setting_spellings(written: str, stored: str | None) -> None:
    assert snapshot_from_text(provider_yaml(proxy=written), env={}).providers["corp"].proxy == stored


@pytest.mark.parametrize("url, reason", [
    ("https://proxy.corp:3128", "must be an http:// proxy URL"),
    ("socks5://proxy.corp:1080", "must be an http:// proxy URL"),
    ("proxy.corp:3128", "must be an http:// proxy URL"),
    ("http://:3128", "names no host"),
    ("http://proxy.corp:http", "the port is not a number"),
    ("http://proxy.corp:3128/x", "with no path"),
])
def test_unusable_proxy_settings(url: str, reason: str) -> None:
    [(where, said)] = problems(provider_yaml(proxy=f'"{url.replace("proxy.corp", "u:hunter2@proxy.corp")}"'))
    assert where == "providers.corp.proxy" and reason in said and "hunter2" not in said


def test_egress_settings_do_not_apply_where_they_mean_nothing(pki: Pki) -> None:
    [(where, reason)] = problems("providers: {m: {type: mock, proxy: none}}\nroutes: [{name: r, to: m/x}]")
    assert where == "providers.m" and "do not apply to type: mock" in reason
    text = provider_yaml(ca_bundle=str(pki.ca), verify_tls="false").replace("https://api", "http://api")
    [(where, reason)] = problems(text)
    assert where == "providers.corp" and reason == "ca_bundle, verify_tls: TLS settings need an https:// base_url"


def test_verify_tls_false_is_a_config_warning() -> None:
    snapshot = snapshot_from_text(provider_yaml(verify_tls="false"), env={})
    assert snapshot.providers["corp"].verify_tls is False
    [warning] = snapshot.warnings
    assert warning.startswith("provider corp has verify_tls: false: its certificate is not checked")


def test_a_reload_with_a_bad_tls_file_is_refused(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(provider_yaml(ca_bundle=str(pki.ca)))
    holder = SnapshotHolder(str(path), env={})
    assert holder.load() == "ok"
    path.write_text(provider_yaml(ca_bundle=str(tmp_path / "gone.pem")))
    assert holder.load() == "error"
    assert holder.last_failure is not None
    assert holder.last_failure.problems == (("providers.corp.ca_bundle", f"{tmp_path / 'gone.pem'}: no such file"),)
    assert holder.current.providers["corp"].ca_bundle == str(pki.ca)  # still serving the good one


@pytest.mark.integration  # the CLI in a process of its own
def test_switchyard_check_warns_about_verify_tls_false(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(provider_yaml(verify_tls="false"))
    done = subprocess.run([sys.executable, "-m", "proxy", "check", str(path)], capture_output=True, text=True,
                          cwd=REPO, env=os.environ.copy(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "warning: provider corp has verify_tls: false" in done.stdout


# ---------------------------------------------------------------- end to end


TEAM_KEY = "sk-egress-team"


@pytest.mark.integration
async def test_a_chat_completion_reaches_an_https_upstream_through_the_proxy(
        pki: Pki, app_client: Callable[..., object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with Upstream(server_tls(pki, client_certificates=True)) as upstream, \
            ConnectProxy(f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        config = f"""
providers:
  corp:
    type: openai
    base_url: "{upstream.url()}"
    api_key: sk-corp
    proxy: "{proxy.url()}"
    ca_bundle: "{pki.ca}"
    client_cert: "{pki.client_combined}"
  locked:  # the same proxy with the wrong password
    type: openai
    base_url: "{upstream.url()}"
    api_key: sk-corp
    proxy: "http://{PROXY_USER}:hunter2@127.0.0.1:{proxy.port}"
    ca_bundle: "{pki.ca}"
teams:
  t: {{keys: ["{TEAM_KEY}"]}}
routes:
  - {{name: corp, match: {{model: corp-model}}, to: corp/upstream-model}}
  - {{name: locked, match: {{model: locked}}, to: locked/upstream-model}}
resilience: {{retries: 0}}
"""
        client = await app_client(config)  # type: ignore[operator]
        auth = {"Authorization": f"Bearer {TEAM_KEY}"}
        response = await client.post("/v1/chat/completions", json=chat_body("corp-model"), headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "through the tunnel"
        assert response.headers["x-switchyard-provider"] == "corp"
        assert [(s.method, s.target) for s in proxy.seen] == [("CONNECT", f"{UPSTREAM_NAME}:{upstream.port}")]
        assert upstream.seen[0].target == "/v1/chat/completions"
        assert upstream.seen[0].headers["authorization"] == "Bearer sk-corp"

        refused = await client.post("/v1/chat/completions", json=chat_body("locked"), headers=auth)
        assert refused.status_code == 502
        message = refused.json()["error"]["message"]
        assert "refused the tunnel" in message and "407" in message
        assert "hunter2" not in refused.text and "hunter2" not in caplog.text


# ---------------------------------------------------------------- helpers


def make_spec(base_url: str, **overrides: object) -> ProviderSpec:
    values: dict[str, object] = dict(
        name="corp", type="openai", base_url=base_url, api_key="sk-corp", headers=(), timeout_s=10.0,
        connect_timeout_s=5.0, max_connections=4, max_keepalive=4, latency_ms=0.0, chunk_interval_ms=0.0,
    )
    values.update(overrides)
    return ProviderSpec(**values)  # type: ignore[arg-type]


def chat_request() -> UpstreamRequest:
    return UpstreamRequest("chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                           False, "req_egress", [])
