"""The server side's TLS: one context for DoT (ALPN `dot`) and one for DoH (`h2`, `http/1.1`), from the `tls`
section's PEM files, TLS 1.2 or later. `reload` loads the files again into the same contexts, so new connections
get a renewed certificate without a restart; a pair that cannot be loaded leaves the running one in place."""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path

from filterd.config.schema import TlsConfig
from filterd.errors import FilterdError

log = logging.getLogger(__name__)


class CertificateError(FilterdError):
    """The `tls` certificate or key cannot be used."""


def _context(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    return context


def _load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except FileNotFoundError as exc:  # OpenSSL's error names no file: say which
        missing = exc.filename or (tls.cert if not tls.cert.exists() else tls.key)
        raise CertificateError(f"tls: cannot read {missing}: no such file") from None
    except PermissionError as exc:
        raise CertificateError(f"tls: cannot read {exc.filename or tls.key}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CertificateError(f"tls: {tls.cert} and {tls.key} are not a certificate and its key: {reason}") from None


def check_pair(tls: TlsConfig) -> None:
    """CertificateError unless the `tls` files are a certificate and its key (`filterd config check`)."""
    _load(_context([]), tls)


def certificate_names(path: Path) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the (first) certificate in a PEM file is for: its subjectAltName."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def _warn_if_readable(key: Path) -> None:
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("tls.key %s has mode %04o: other users can read the private key; chmod 0600 it", key, mode)


class ServerCertificates:
    def __init__(self, tls: TlsConfig) -> None:
        _warn_if_readable(tls.key)
        self.tls = tls
        self.dot = _context(["dot"])
        self.doh = _context(["h2", "http/1.1"])
        _load(self.dot, tls)
        _load(self.doh, tls)
        self.names, self.addresses = _names(tls)

    def reload(self, tls: TlsConfig) -> None:
        """Re-read the files (SIGHUP); CertificateError, and the running pair stays, when they are not usable."""
        _load(_context([]), tls)  # try first: a failed load must not leave a live context half changed
        _warn_if_readable(tls.key)
        _load(self.dot, tls)
        _load(self.doh, tls)
        self.tls = tls
        self.names, self.addresses = _names(tls)


def _names(tls: TlsConfig) -> tuple[list[str], list[str]]:
    try:
        return certificate_names(tls.cert)
    except (OSError, ValueError):  # loaded by OpenSSL already: a PEM quirk cryptography rejects costs only DDR
        return [], []
