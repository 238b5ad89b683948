"""Test helpers for encrypted DNS: certificates made in the test (`cryptography`), and dnsdist from Debian serving
DoT and DoH on loopback in front of the dnsmasq upstream."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import free_port


@dataclass(frozen=True)
class Pki:
    """A CA and a server certificate it signed (for `names` and 127.0.0.1), as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, names: tuple[str, ...] = ("dns.test",), label: str = "test") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"filterd {label} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    return pki


def client_context(ca: Path) -> ssl.SSLContext:
    """What a client that trusts `ca` uses (dnspython's dns.query.tls/https take it)."""
    return ssl.create_default_context(cafile=str(ca))


def wait_for_tls(port: int, seconds: float = 10.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Dnsdist:
    """dnsdist (Debian) on loopback: plain DNS, DoT and DoH (/dns-query) with `pki`'s certificate, forwarding to
    `backend` (host:port). Security polling is off: it never sends a packet off the machine."""

    def __init__(self, workdir: Path, pki: Pki, backend: str) -> None:
        self.workdir = workdir
        self.pki = pki
        self.backend = backend
        self.dot_port = free_port()
        self.doh_port = free_port()
        self.plain_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("dnsdist") or "/usr/bin/dnsdist"
        conf = self.workdir / "dnsdist.conf"
        conf.write_text(
            f"""
setSecurityPollSuffix('')
setLocal('127.0.0.1:{self.plain_port}')
addTLSLocal('127.0.0.1:{self.dot_port}', '{self.pki.cert}', '{self.pki.key}', {{minTLSVersion='tls1.2'}})
addDOHLocal('127.0.0.1:{self.doh_port}', '{self.pki.cert}', '{self.pki.key}', '/dns-query')
newServer({{address='{self.backend}', healthCheckMode='up'}})
"""
        )
        self.proc = subprocess.Popen(
            [binary, "--supervised", "--disable-syslog", "-C", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_tls(self.dot_port)
            wait_for_tls(self.doh_port)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
