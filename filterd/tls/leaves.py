"""A certificate for each blocked name a browser asks the block page for (TLS SNI), signed by the local CA.

`mint_leaf` is pure (the CA, the name and the time are arguments); it also makes the DoT/DoH certificate for
`tls: {mode: local-ca}` (several names and addresses: `filterd/transport/certs.py`). `Certificates` is the shell
the HTTPS listener asks before each handshake, with the name read from the ClientHello: `prepare(name, client_ip)`

- refuses (a TLS alert, never a certificate) a handshake without a name, and a name that filterd would not
  block for that client (`blocked(name, client_ip)`: the policy's own decision, the client's group included);
- serves a cached leaf while it has more than `renew_before` left and was signed by the CA that signs now;
- else mints one (EC P-256, SAN = the name only, valid `lifetime`), within a token bucket per client address
  and one for everybody, so a flood of random names costs a bounded amount of CPU; the cache is an LRU of at
  most `cache_size` names, so it costs a bounded amount of memory;

and `server_context(client_ip, prepared=...)` is the connection's TLS context, whose SNI callback switches to
that leaf.

Minting (one signature with the CA's key, the leaf key is shared by every leaf of a process and never written
anywhere but a private 0700 temporary folder) and loading it into a TLS context take about 1.5 ms: a burst of
them on the event loop held DNS answers up (a flood of new names from many addresses: 110 to 210 ms on the test
machine). So the listener reads the name from the ClientHello before the handshake (`filterd/tls/clienthello.py`)
and awaits `prepare(name, client_ip)`, which mints a new leaf in a worker thread (one: the rate limits keep its
queue short, and a second would take a second core from DNS on a Pi) while the event loop goes on answering; the
SNI callback, which OpenSSL calls synchronously inside the handshake, only switches to the leaf so prepared (or
a cached one), and mints nothing. The rate limits still bound the CPU a flood costs (at most 50 new leaves a
second, under 10% of one core), and so the worker's queue: a name being minted is waited for, not minted twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import ipaddress
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from filterd.blocklists.parse import normalize_name
from filterd.pipeline.ratelimit import TokenBuckets
from filterd.tls.ca import BACKDATE, Authority, LocalCa, key_pem, key_usage

#: The `result` label of filterd_blockpage_certificates_total.
MINTED = "minted"  # a new leaf (first use of the name, or a renewal)
CACHED = "cached"  # a leaf from the cache
NOT_BLOCKED = "not_blocked"  # the name is not blocked for this client (or is no host name): a TLS alert
NO_SNI = "no_sni"  # the client named no host (an IP address typed in): a TLS alert
RATELIMITED = "ratelimited"  # a new leaf was needed but the client (or everybody) is over the rate: a TLS alert
ERROR = "error"  # minting failed: a TLS alert, and the error is logged
RESULTS = (MINTED, CACHED, NOT_BLOCKED, NO_SNI, RATELIMITED, ERROR)


@dataclass(frozen=True, slots=True)
class LeafLimits:
    """How long leaves live, how many are kept, and how fast they may be made."""

    #: A leaf's validity: short, so a leaked or stale one is soon worthless.
    lifetime: dt.timedelta = dt.timedelta(days=7)
    #: A cached leaf with less than this left is minted again.
    renew_before: dt.timedelta = dt.timedelta(days=2)
    #: Names whose leaf (and TLS context) are kept in memory; the least recently used go first.
    cache_size: int = 1024
    #: New leaves a second per client address, and at most `client_burst` at once (a page's blocked names).
    client_rate: float = 2.0
    client_burst: float = 30.0
    #: New leaves a second for all clients together, and at most `total_burst` at once: minting costs about 1.3 ms
    #: of CPU each on an x86 core (several times that on a Raspberry Pi), in a worker thread that shares the
    #: interpreter with the event loop, so this bounds what a flood of new names from many addresses costs.
    total_rate: float = 50.0
    total_burst: float = 50.0


def mint_leaf(
    ca: LocalCa,
    key: ec.EllipticCurvePrivateKey,
    name: str | Sequence[str],
    now: dt.datetime,
    lifetime: dt.timedelta,
    *,
    addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    organization: str = "filterd block page",
) -> x509.Certificate:
    """A server certificate (serverAuth) for `name` (or these names) and `addresses` and nothing else, signed by
    `ca`, valid from a little before `now` for `lifetime` (never past the CA's own end)."""
    names = [name] if isinstance(name, str) else list(name)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(a) for a in addresses]
    if not sans:
        raise ValueError("a certificate needs a name or an address")
    public = key.public_key()
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    first = names[0] if names else str(addresses[0])
    if len(first) <= 64:  # X.509's upper bound for a common name; browsers read only the SAN anyway
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, first))
    ca_public = ca.cert.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


class _Mint(NamedTuple):
    """A leaf to be made: the name is blocked for the client, and no usable leaf is cached."""

    name: str
    signer: LocalCa
    now: dt.datetime


#: What minting may fail with: counted as `error`, logged, and the handshake gets an alert.
_MINT_ERRORS = (ValueError, OSError, ssl.SSLError)


@dataclass(frozen=True, slots=True)
class _Leaf:
    cert: x509.Certificate
    context: ssl.SSLContext
    #: The serial of the CA that signed it: after a rotation's switch date, leaves of the old CA are minted again.
    issuer: int


def _tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class Certificates:
    """The leaves of one running block page: see the module's docstring."""

    def __init__(
        self,
        authority: Authority,
        blocked: Callable[[str, str | None], bool],
        count: Callable[[str], None],
        *,
        limits: LeafLimits | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.authority = authority
        self.blocked = blocked
        self.count = count
        self.limits = limits or LeafLimits()
        self.clock = clock
        self.on_error = on_error
        self.cache: collections.OrderedDict[str, _Leaf] = collections.OrderedDict()
        self.per_client = TokenBuckets(self.limits.client_rate, self.limits.client_burst, monotonic, limit=4096)
        self.total = TokenBuckets(self.limits.total_rate, self.limits.total_burst, monotonic, limit=1)
        self.key = ec.generate_private_key(ec.SECP256R1())
        #: The worker that mints for `prepare`, and the names it is minting now (each waited for, never twice).
        self._minter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="filterd-leaves")
        self.minting: dict[str, asyncio.Future[_Leaf]] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="filterd-leaves-")  # 0700: only this user
        self._key_path = Path(self._folder.name) / "leaf.key"
        fd = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem(self.key))
        self._unraisable = sys.unraisablehook
        sys.unraisablehook = self._bad_sni

    def close(self) -> None:
        self._minter.shutdown(wait=False, cancel_futures=True)
        if sys.unraisablehook == self._bad_sni:
            sys.unraisablehook = self._unraisable
        self._folder.cleanup()

    def _bad_sni(self, unraisable: sys.UnraisableHookArgs) -> None:
        """An SNI name that is not ASCII never reaches `on_sni`: Python's ssl fails to decode it, prints the
        traceback to stderr as "Exception ignored" and ends the handshake (the listener refuses such names before
        the handshake, in `prepare`: this is the safety net). One a connection would let anyone
        flood the log; it is not a host name filterd blocks, so it is counted as one and said nowhere."""
        last = unraisable.exc_traceback
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        in_ssl = last is not None and Path(last.tb_frame.f_code.co_filename).name == "ssl.py"
        if in_ssl and unraisable.exc_type is UnicodeDecodeError and isinstance(unraisable.object, bytes):
            self.count(NOT_BLOCKED)
            return
        self._unraisable(unraisable)

    def server_context(
        self,
        client_ip: str | None,
        send_alert: Callable[[int], None] | None = None,
        prepared: tuple[str, ssl.SSLContext] | None = None,
    ) -> ssl.SSLContext:
        """The TLS context for one connection from `client_ip`: it holds no certificate of its own, and its SNI
        callback switches to the leaf for the name asked, `prepared` (the name read from the ClientHello and the
        context `prepare` returned for it) or one in the cache, and never mints; any other name ends the handshake
        with an alert (the same one `prepare` refuses with: OpenSSL read a name the listener did not). `send_alert`,
        if given, is called with the alert's description first: asyncio's TLS transport closes a failed handshake
        without sending what OpenSSL wrote, so the listener sends the alert itself. The listener has counted the
        handshake's result already, so the callback counts nothing."""
        context = _tls_context()

        def on_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> int | None:
            leaf = self._ready(name, client_ip, prepared)
            if leaf is None:
                alert = ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
                if send_alert is not None:
                    send_alert(alert)
                return alert
            sock.context = leaf
            return None

        context.sni_callback = on_sni
        return context

    def _ready(
        self, server_name: str | None, client_ip: str | None, prepared: tuple[str, ssl.SSLContext] | None
    ) -> ssl.SSLContext | None:
        name = normalize_name(server_name) if server_name is not None else None
        if name is None:
            return None
        if prepared is not None and normalize_name(prepared[0]) == name:
            return prepared[1]
        found = self._check(server_name, client_ip)
        return None if isinstance(found, _Mint) else found[0]

    def leaf_for(self, server_name: str | None, client_ip: str | None) -> tuple[ssl.SSLContext | None, str]:
        """The context with the leaf for this SNI name and client, or None; and the metric's result. A new leaf is
        minted here, on the caller's thread (`prepare` mints in the worker)."""
        found = self._check(server_name, client_ip)
        if not isinstance(found, _Mint):
            return found
        if not self._may_mint(client_ip):
            return None, RATELIMITED
        try:
            leaf = self._mint(found.signer, found.name, found.now)
        except _MINT_ERRORS as exc:
            if self.on_error is not None:
                self.on_error(found.name, exc)
            return None, ERROR
        self._store(found.name, leaf)
        return leaf.context, MINTED

    async def prepare(self, server_name: bytes | None, client_ip: str | None) -> tuple[ssl.SSLContext | None, str]:
        """As `leaf_for`, for the name's bytes as the ClientHello carries them, with a new leaf minted in the worker
        thread (the event loop answers DNS meanwhile), and counted. A name that is not ASCII is refused: Python's
        ssl could not give it to the SNI callback."""
        try:
            text = server_name.decode("ascii") if server_name is not None else None
        except UnicodeDecodeError:
            text = ""  # no host name: refused below
        context, result = await self._prepare(text, client_ip)
        self.count(result)
        return context, result

    async def _prepare(self, server_name: str | None, client_ip: str | None) -> tuple[ssl.SSLContext | None, str]:
        found = self._check(server_name, client_ip)
        if not isinstance(found, _Mint):
            return found
        pending = self.minting.get(found.name)
        if pending is None:
            if not self._may_mint(client_ip):
                return None, RATELIMITED
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._minter, self._mint, found.signer, found.name, found.now)
            self.minting[found.name] = pending
            pending.add_done_callback(lambda done: self._minted(found.name, done))
            result = MINTED
        else:
            result = CACHED  # another connection's leaf, a moment later (a browser opens several at once)
        try:
            leaf = await asyncio.shield(pending)  # one connection given up does not cancel the others' leaf
        except _MINT_ERRORS:
            return None, ERROR
        return leaf.context, result

    def _minted(self, name: str, done: asyncio.Future[_Leaf]) -> None:
        """On the event loop, when the worker is done: the leaf goes in the cache, or the error in the log."""
        if self.minting.get(name) is done:
            del self.minting[name]
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            self._store(name, done.result())
        elif isinstance(exc, _MINT_ERRORS) and self.on_error is not None:
            self.on_error(name, exc)

    def _check(self, server_name: str | None, client_ip: str | None) -> tuple[ssl.SSLContext | None, str] | _Mint:
        """The answer without minting (an alert, or a cached leaf), or the leaf to mint."""
        if server_name is None:
            return None, NO_SNI
        name = normalize_name(server_name)
        if name is None or not self.blocked(name, client_ip):  # None: no host name (an IP address, garbage)
            return None, NOT_BLOCKED
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        signer = self.authority.signer(now)
        leaf = self.cache.get(name)
        fresh = leaf is not None and leaf.cert.not_valid_after_utc - now > self.limits.renew_before
        if leaf is not None and fresh and leaf.issuer == signer.cert.serial_number:
            self.cache.move_to_end(name)
            return leaf.context, CACHED
        return _Mint(name, signer, now)

    def _store(self, name: str, leaf: _Leaf) -> None:
        self.cache[name] = leaf
        self.cache.move_to_end(name)
        while len(self.cache) > self.limits.cache_size:
            self.cache.popitem(last=False)

    def _may_mint(self, client_ip: str | None) -> bool:
        key = int(ipaddress.ip_address(client_ip)) if client_ip else 0
        return self.per_client.take(key) is None and self.total.take(0) is None

    def _mint(self, signer: LocalCa, name: str, now: dt.datetime) -> _Leaf:
        cert = mint_leaf(signer, self.key, name, now, self.limits.lifetime)
        context = _tls_context()
        # ssl loads a certificate only from a file: written in the private folder, loaded, removed
        fd, path = tempfile.mkstemp(dir=self._folder.name, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cert.public_bytes(serialization.Encoding.PEM))
            context.load_cert_chain(path, self._key_path)
        finally:
            os.unlink(path)
        return _Leaf(cert, context, signer.cert.serial_number)
