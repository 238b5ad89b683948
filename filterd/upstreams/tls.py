"""The client TLS context for encrypted upstreams: verification always on, TLS 1.2 or later."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path | None = None, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Verified for the upstream's name against the system store, or only `ca_file` when given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def describe(exc: BaseException) -> str:
    """A TLS failure in one line: the verification error when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    return f"TLS: {getattr(exc, 'reason', None) or exc}"
