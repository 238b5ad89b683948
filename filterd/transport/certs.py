"""The server side's TLS: one context for DoT (ALPN `dot`) and one for DoH (`h2`, `http/1.1`), TLS 1.2 or later,
with the certificate of the `tls` section:

- `ServerCertificates` (`tls: {cert, key}`): the PEM files. `reload` loads them again into the same contexts, so
  new connections get a renewed certificate without a restart; a pair that cannot be loaded leaves the running
  one in place.
- `LocalCaCertificates` (`tls: {mode: local-ca, names, addresses}`): a certificate for those names and addresses
  that filterd makes itself, signed by the local CA of `state_dir/ca` (`filterd/tls/ca.py`, the one the HTTPS
  block page uses; minted by `filterd/tls/leaves.py`). It lives a week (never past the CA's end) and `renew`,
  which the app calls every hour and at each reload, makes a new one into the same contexts when less than two
  days are left, when the CA that signs changes (a rotation's switch date) or when the names change. Its key is
  new each time and only in memory: written for OpenSSL to a private 0700 folder, loaded, and removed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from filterd.config.schema import TlsConfig
from filterd.errors import FilterdError
from filterd.tls.ca import Authority, LocalCa, key_pem
from filterd.tls.leaves import LeafLimits, mint_leaf

log = logging.getLogger(__name__)


class CertificateError(FilterdError):
    """The `tls` certificate or key cannot be used."""


def _context(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    return context


def _files(tls: TlsConfig) -> tuple[Path, Path]:
    if tls.cert is None or tls.key is None:  # the loader never makes one (mode local-ca has neither)
        raise CertificateError("tls: no cert and key files (mode local-ca makes its own certificate)")
    return tls.cert, tls.key


def _load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    cert, key = _files(tls)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:  # OpenSSL's error names no file: say which
        missing = exc.filename or (cert if not cert.exists() else key)
        raise CertificateError(f"tls: cannot read {missing}: no such file") from None
    except PermissionError as exc:
        raise CertificateError(f"tls: cannot read {exc.filename or key}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CertificateError(f"tls: {cert} and {key} are not a certificate and its key: {reason}") from None


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
    """The `tls` files' certificate (mode `files`)."""

    def __init__(self, tls: TlsConfig) -> None:
        _warn_if_readable(_files(tls)[1])
        self.tls = tls
        self.dot = _context(["dot"])
        self.doh = _context(["h2", "http/1.1"])
        _load(self.dot, tls)
        _load(self.doh, tls)
        self.names, self.addresses = _names(tls)

    def reload(self, tls: TlsConfig) -> None:
        """Re-read the files (SIGHUP); CertificateError, and the running pair stays, when they are not usable."""
        _load(_context([]), tls)  # try first: a failed load must not leave a live context half changed
        _warn_if_readable(_files(tls)[1])
        _load(self.dot, tls)
        _load(self.doh, tls)
        self.tls = tls
        self.names, self.addresses = _names(tls)


def _names(tls: TlsConfig) -> tuple[list[str], list[str]]:
    try:
        return certificate_names(_files(tls)[0])
    except (OSError, ValueError):  # loaded by OpenSSL already: a PEM quirk cryptography rejects costs only DDR
        return [], []


class LocalCaCertificates:
    """A certificate the local CA signs for `tls.names` and `tls.addresses` (mode `local-ca`): see the module's
    docstring. `clock` is the wall clock (injected by tests)."""

    def __init__(
        self,
        tls: TlsConfig,
        authority: Authority,
        *,
        clock: Callable[[], float] = time.time,
        limits: LeafLimits | None = None,
    ) -> None:
        self.tls = tls
        self.authority = authority
        self.clock = clock
        self.limits = limits or LeafLimits()
        self.dot = _context(["dot"])
        self.doh = _context(["h2", "http/1.1"])
        #: The certificate served now, and the CA that signed it.
        self.cert: x509.Certificate | None = None
        self.signer: LocalCa | None = None
        self._made_for: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.renew()

    @property
    def names(self) -> list[str]:
        """The DNS names the certificate is for (DDR designates the first)."""
        return list(self.tls.names)

    @property
    def addresses(self) -> list[str]:
        return [str(a) for a in self.tls.addresses]

    def due(self, now: dt.datetime) -> str | None:
        """Why the certificate must be made again at `now` (for the log), or None while it is good."""
        if self.cert is None or self.signer is None:
            return "none yet"
        if self._made_for != (tuple(self.names), tuple(self.addresses)):
            return "tls.names or tls.addresses changed"
        signer = self.authority.signer(now)
        if signer.cert != self.signer.cert:
            return f"the local CA {signer.fingerprint} signs now"
        ends = self.cert.not_valid_after_utc
        # a certificate cut short by the CA's own end is not made again and again: only a longer one helps
        if ends - now <= self.limits.renew_before and ends < signer.cert.not_valid_after_utc:
            return f"it ends {ends:%Y-%m-%d %H:%M} UTC"
        return None

    def renew(self) -> bool:
        """Make and load a new certificate if `due`; whether it did. CertificateError, and the running one stays,
        when the CA cannot sign (it has ended)."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        reason = self.due(now)
        if reason is None:
            return False
        signer = self.authority.signer(now)
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            cert = mint_leaf(
                signer,
                key,
                self.tls.names,
                now,
                self.limits.lifetime,
                addresses=self.tls.addresses,
                organization="filterd DNS",
            )
        except ValueError as exc:  # the CA ended: the leaf's end would be before its start
            raise CertificateError(
                f"tls: the local CA {signer.fingerprint} cannot sign a certificate now ({exc}): it ends "
                f"{signer.cert.not_valid_after_utc:%Y-%m-%d}; rotate it (`filterd ca rotate`)"
            ) from None
        self._install(cert, key)
        if self.cert is not None:
            log.info("tls: a new certificate from the local CA (%s), valid until %s", reason, _until(cert))
        self.cert, self.signer = cert, signer
        self._made_for = (tuple(self.names), tuple(self.addresses))
        if cert.not_valid_after_utc - now <= self.limits.renew_before:
            log.warning(
                "tls: the local CA ends %s, and the certificate with it: rotate the CA (`filterd ca rotate`)",
                _until(cert),
            )
        return True

    def update(self, tls: TlsConfig, authority: Authority) -> bool:
        """A reload: the config's names and the CA read again (a rotation); a new certificate when `due`."""
        old = (self.tls, self.authority)
        self.tls, self.authority = tls, authority
        try:
            return self.renew()
        except CertificateError:
            self.tls, self.authority = old
            raise

    def _install(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Into both contexts: ssl loads a certificate and key only from files, so they are written to a private
        folder (0700, the key 0600 from its creation), loaded and removed; a load that fails changes nothing."""
        with tempfile.TemporaryDirectory(prefix="filterd-tls-") as folder:
            cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key_pem(key))
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            try:
                _context([]).load_cert_chain(cert_path, key_path)  # first: the live contexts change together
                self.dot.load_cert_chain(cert_path, key_path)
                self.doh.load_cert_chain(cert_path, key_path)
            except (ssl.SSLError, OSError) as exc:
                raise CertificateError(f"tls: cannot load the certificate the local CA made: {exc}") from None


ServedCertificates = ServerCertificates | LocalCaCertificates


def _until(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
