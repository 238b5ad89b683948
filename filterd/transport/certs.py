"""The server side's TLS: one context for DoT (ALPN `dot`) and one for DoH (`h2`, `http/1.1`), from the `tls`
section's PEM files, TLS 1.2 or later. `reload` loads the files again into the same contexts, so new connections
get a renewed certificate without a restart; a pair that cannot be loaded leaves the running one in place."""

from __future__ import annotations

import ssl

from filterd.config.schema import TlsConfig
from filterd.errors import FilterdError


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
    except FileNotFoundError as exc:
        raise CertificateError(f"tls: cannot read {exc.filename}: no such file") from None
    except PermissionError as exc:
        raise CertificateError(f"tls: cannot read {exc.filename}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CertificateError(f"tls: {tls.cert} and {tls.key} are not a certificate and its key: {reason}") from None


class ServerCertificates:
    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.dot = _context(["dot"])
        self.doh = _context(["h2", "http/1.1"])
        _load(self.dot, tls)
        _load(self.doh, tls)

    def reload(self, tls: TlsConfig) -> None:
        """Re-read the files (SIGHUP); CertificateError, and the running pair stays, when they are not usable."""
        _load(_context([]), tls)  # try first: a failed load must not leave a live context half changed
        _load(self.dot, tls)
        _load(self.doh, tls)
        self.tls = tls
