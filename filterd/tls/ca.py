"""The local CA that managed devices trust, so the block page can answer `https://` for a blocked name.

Layout of `state_dir/ca/` (the folder 0700, keys 0600, owned by the state_dir's owner: the service user):

- `ca.pem`, `ca.key`: the CA in use;
- after `filterd ca rotate`: `next.pem`, `next.key` and `next.switch` (an ISO date): the new CA, which devices
  are given meanwhile and which signs from that date on; until then the old one still signs, so devices that
  have not got the new one yet keep seeing the page. The rotation after that retires the old files to `retired/`.

Building certificates (`make_ca`) is pure: the clock and the name are arguments. The rest reads and writes the
folder: every file is written whole to a temporary file and renamed into place, a key with mode 0600 from its
creation, and nothing that exists is ever overwritten.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from filterd.errors import FilterdError

#: A root lives long: it is installed once per device, by hand or by policy.
CA_LIFETIME = dt.timedelta(days=3650)
#: Days a rotation keeps the old CA signing by default, for the new one to reach every device.
ROTATE_DAYS = 30
#: Certificates are valid from a little before they are made: devices whose clock is slightly behind accept them.
BACKDATE = dt.timedelta(hours=1)

_UTC = dt.UTC


class CaError(FilterdError):
    """The local CA cannot be created, read or rotated; the message says which file and what to do."""


@dataclass(frozen=True, slots=True)
class LocalCa:
    """One CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as device settings show it (`AB:CD:...`)."""
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()


@dataclass(frozen=True, slots=True)
class Authority:
    """The CA in use, and the one a pending rotation switches to at `switch_at`."""

    current: LocalCa
    next: LocalCa | None = None
    switch_at: dt.datetime | None = None

    def signer(self, now: dt.datetime) -> LocalCa:
        """The CA that signs a certificate made at `now`."""
        if self.next is not None and self.switch_at is not None and now >= self.switch_at:
            return self.next
        return self.current

    @property
    def newest(self) -> LocalCa:
        """The CA to install on devices: after a rotation, the new one."""
        return self.next or self.current


def default_name() -> str:
    return f"filterd block page CA ({socket.gethostname()})"


def make_ca(name: str, now: dt.datetime) -> LocalCa:
    """A self-signed root: EC P-256, valid 10 years, `pathlen:0` (it signs only leaves), no name constraints (the
    names it signs are whatever the lists block), a random serial."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name[:64]), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "filterd")]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return LocalCa(cert, key)


def key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures (ECDHE handshakes), and for the CA certificates and CRLs too."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- the folder ---------------------------------------------------------------------------------------------


def ca_dir(state_dir: Path) -> Path:
    return state_dir / "ca"


def load(folder: Path) -> Authority:
    """The CA in `folder` (and a pending rotation's), checked: each key matches its certificate."""
    if not _exists(folder / "ca.pem"):
        raise CaError(f"no local CA in {folder}: create one with `filterd ca init` (then install it on devices)")
    current = _read(folder, "ca")
    if not _exists(folder / "next.pem"):
        return Authority(current)
    switch = _read_switch(folder / "next.switch")
    return Authority(current, _read(folder, "next"), switch)


def init(folder: Path, name: str, now: dt.datetime) -> LocalCa:
    """Create the CA; refuses when one exists (devices trust it: replacing it would break them all)."""
    if _exists(folder / "ca.pem") or _exists(folder / "ca.key"):
        raise CaError(
            f"a local CA exists already in {folder}: refusing to overwrite it (every device that trusts it would "
            "break); `filterd ca export` prints it, `filterd ca rotate` replaces it gradually"
        )
    _make_folder(folder)
    ca = make_ca(name, now)
    _write(folder, "ca", ca)
    _own_like_state_dir(folder)
    return ca


def rotate(folder: Path, name: str | None, switch_at: dt.datetime, now: dt.datetime) -> Authority:
    """Make the next CA, which signs from `switch_at`; the old one signs until then. A pending rotation is
    refused; one whose date has passed is completed first (the old CA's files go to `retired/`)."""
    if switch_at <= now:
        raise CaError(f"the switch date {switch_at:%Y-%m-%d} is not in the future")
    authority = load(folder)
    ends = authority.current.cert.not_valid_after_utc
    if switch_at >= ends:  # the old CA would stop signing (its leaves end with it) before the new one starts
        raise CaError(
            f"the switch date {switch_at:%Y-%m-%d} is after the CA in use ends ({ends:%Y-%m-%d}): pick one before"
        )
    if authority.next is not None:
        assert authority.switch_at is not None
        if now < authority.switch_at:
            raise CaError(
                f"a rotation is pending in {folder}: the new CA signs from {authority.switch_at:%Y-%m-%d %H:%M} UTC; "
                "install it on devices (`filterd ca export`) and rotate again after that date"
            )
        _complete(folder, authority)
    ca = make_ca(name or _common_name(authority.current.cert), now)
    (folder / "next.switch").unlink(missing_ok=True)  # no switch date without its CA: written last
    _write(folder, "next", ca)
    _atomic(folder / "next.switch", switch_at.isoformat().encode() + b"\n", 0o644)
    _own_like_state_dir(folder)
    return load(folder)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else default_name()


def _complete(folder: Path, authority: Authority) -> None:
    retired = folder / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    stamp = f"{authority.current.cert.serial_number:x}"[:16]
    for kind in ("pem", "key"):
        os.replace(folder / f"ca.{kind}", retired / f"ca-{stamp}.{kind}")
        os.replace(folder / f"next.{kind}", folder / f"ca.{kind}")
    (folder / "next.switch").unlink()


def _exists(path: Path) -> bool:
    """Path.exists(), but a folder this user may not enter (state_dir/ca is 0700, the filterd user's) is said."""
    try:
        return path.exists()
    except PermissionError:
        raise CaError(
            f"{path.parent}: permission denied: run this as the filterd user or root (`sudo -u filterd filterd ca ...`)"
        ) from None


def _read(folder: Path, stem: str) -> LocalCa:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CaError(f"{exc.filename}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CaError(f"{cert_path} or {key_path}: not a PEM certificate and key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CaError(f"{key_path} is not the key of {cert_path}")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CaError(f"{key_path} has mode {mode:04o}: others may read the CA's key; `chmod 600 {key_path}`")
    return LocalCa(cert, key)


def _read_switch(path: Path) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise CaError(f"{path}: not a date: {exc}") from None
    return when if when.tzinfo else when.replace(tzinfo=_UTC)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise CaError(f"{folder}: cannot create it: {exc.strerror or exc}") from None


def _write(folder: Path, stem: str, ca: LocalCa) -> None:
    """Key first, then the certificate: a certificate on disk always has its key beside it."""
    _atomic(folder / f"{stem}.key", key_pem(ca.key), 0o600)
    _atomic(folder / f"{stem}.pem", ca.pem, 0o644)


def _atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600 from the start
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CaError(f"{path}: cannot write it: {exc.strerror or exc}") from None


def _own_like_state_dir(folder: Path) -> None:
    """Run as root (`sudo filterd ca init`): the folder and its files go to the state_dir's owner, the service
    user, who must read the key (and nobody else may)."""
    if os.geteuid() != 0:
        return
    info = folder.parent.stat()
    for path in [folder, *folder.rglob("*")]:
        shutil.chown(path, info.st_uid, info.st_gid)
