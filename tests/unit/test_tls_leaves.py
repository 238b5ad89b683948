"""Certificates per SNI name: only blocked names get one, it names only them, it is cached and minted again
before it expires or after a rotation's switch date (injected clocks), and floods are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from filterd.tls import ca
from filterd.tls.leaves import (
    CACHED,
    ERROR,
    MINTED,
    NO_SNI,
    NOT_BLOCKED,
    RATELIMITED,
    Certificates,
    LeafLimits,
    mint_leaf,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DAY = 86400.0


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def blocked(name: str, client: str | None) -> bool:
    """Names under blocked.test are blocked, except for the client 10.0.0.9 (a group that allows them)."""
    return name.endswith("blocked.test") and client != "10.0.0.9"


@pytest.fixture
def authority(tmp_path: Path) -> ca.Authority:
    ca.init(tmp_path / "ca", "Test CA", NOW)
    return ca.load(tmp_path / "ca")


def make(authority: ca.Authority, clock: Clock, limits: LeafLimits | None = None) -> tuple[Certificates, Clock]:
    ticks = Clock(0.0)
    certs = Certificates(authority, blocked, lambda _: None, limits=limits, clock=clock, monotonic=ticks)
    return certs, ticks


def test_a_leaf_names_only_its_host_and_serves_only_as_a_server(authority: ca.Authority) -> None:
    root = authority.current
    leaf = mint_leaf(root, root.key, "omegle.com", NOW, dt.timedelta(days=7))
    leaf.verify_directly_issued_by(root.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["omegle.com"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=7)
    assert leaf.not_valid_before_utc < NOW  # a device whose clock is a little behind accepts it
    long_name = ".".join(["a" * 60] * 4)  # longer than a common name may be: the SAN alone names it
    assert (
        mint_leaf(root, root.key, long_name, NOW, dt.timedelta(days=7)).subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME
        )
        == []
    )


def test_only_blocked_names_get_a_certificate(authority: ca.Authority) -> None:
    certs, _ = make(authority, Clock(NOW.timestamp()))
    assert certs.leaf_for(None, "10.0.0.1") == (None, NO_SNI)
    assert certs.leaf_for("example.org", "10.0.0.1") == (None, NOT_BLOCKED)
    assert certs.leaf_for("omegle.blocked.test", "10.0.0.9") == (None, NOT_BLOCKED)  # allowed for this client
    assert certs.leaf_for("192.168.1.2", "10.0.0.1") == (None, NOT_BLOCKED)  # an address is no name
    assert certs.leaf_for("bad name!", "10.0.0.1") == (None, NOT_BLOCKED)
    context, result = certs.leaf_for("OMEGLE.blocked.test.", "10.0.0.1")
    assert result == MINTED and isinstance(context, ssl.SSLContext)
    assert list(certs.cache) == ["omegle.blocked.test"]  # one leaf per canonical name
    assert certs.leaf_for("omegle.blocked.test", "10.0.0.2") == (context, CACHED)


def test_a_leaf_is_minted_again_before_it_expires(authority: ca.Authority) -> None:
    clock = Clock(NOW.timestamp())
    certs, _ = make(authority, clock)
    first, result = certs.leaf_for("a.blocked.test", "10.0.0.1")
    assert result == MINTED
    clock.now += 4.9 * DAY  # 2.1 days left: still served
    assert certs.leaf_for("a.blocked.test", "10.0.0.1") == (first, CACHED)
    clock.now += 0.2 * DAY  # 1.9 days left: less than renew_before
    second, result = certs.leaf_for("a.blocked.test", "10.0.0.1")
    assert result == MINTED and second is not first
    renewed = certs.cache["a.blocked.test"].cert
    assert renewed.not_valid_after_utc == NOW + dt.timedelta(days=5.1 + 7)


def test_after_the_switch_date_leaves_come_from_the_new_ca(authority: ca.Authority, tmp_path: Path) -> None:
    clock = Clock(NOW.timestamp())
    certs, _ = make(authority, clock)
    certs.leaf_for("a.blocked.test", "10.0.0.1")
    switch = NOW + dt.timedelta(days=1)
    certs.authority = ca.rotate(tmp_path / "ca", None, switch, NOW)
    assert certs.leaf_for("a.blocked.test", "10.0.0.1")[1] == CACHED  # the old CA still signs
    clock.now = switch.timestamp()
    assert certs.leaf_for("a.blocked.test", "10.0.0.1")[1] == MINTED
    assert certs.authority.next is not None
    certs.cache["a.blocked.test"].cert.verify_directly_issued_by(certs.authority.next.cert)


def test_new_leaves_are_rate_limited_per_client_and_overall(authority: ca.Authority) -> None:
    limits = LeafLimits(client_rate=1.0, client_burst=3.0, total_rate=2.0, total_burst=5.0)
    certs, ticks = make(authority, Clock(NOW.timestamp()), limits)
    results = [certs.leaf_for(f"n{i}.blocked.test", "10.0.0.1")[1] for i in range(5)]
    assert results == [MINTED, MINTED, MINTED, RATELIMITED, RATELIMITED]
    assert certs.leaf_for("n0.blocked.test", "10.0.0.1")[1] == CACHED  # a cached leaf costs no token
    assert certs.leaf_for("m0.blocked.test", "10.0.0.2")[1] == MINTED  # another client has its own bucket
    assert certs.leaf_for("m1.blocked.test", "10.0.0.2")[1] == MINTED
    assert certs.leaf_for("m2.blocked.test", "10.0.0.3")[1] == RATELIMITED  # but all share 5
    ticks.now += 1.0  # a second later: one more for the first client, within the total's 2 a second
    assert certs.leaf_for("n3.blocked.test", "10.0.0.1")[1] == MINTED
    assert certs.leaf_for("n4.blocked.test", "10.0.0.1")[1] == RATELIMITED


def test_new_names_from_many_clients_at_once_mint_at_most_50(authority: ca.Authority) -> None:
    """The default bound on a burst: each leaf is minted on the event loop, so 200 at once held DNS up ~440 ms."""
    certs, _ = make(authority, Clock(NOW.timestamp()))
    results = [certs.leaf_for(f"n{i}.blocked.test", f"10.1.{i // 100}.{i % 100 + 1}")[1] for i in range(200)]
    assert results.count(MINTED) == 50 and results.count(RATELIMITED) == 150


def test_the_cache_keeps_at_most_cache_size_names(authority: ca.Authority) -> None:
    certs, _ = make(authority, Clock(NOW.timestamp()), LeafLimits(cache_size=3))
    for name in ("a", "b", "c"):
        certs.leaf_for(f"{name}.blocked.test", "10.0.0.1")
    certs.leaf_for("a.blocked.test", "10.0.0.1")  # used again: kept
    certs.leaf_for("d.blocked.test", "10.0.0.1")
    assert list(certs.cache) == ["c.blocked.test", "a.blocked.test", "d.blocked.test"]


def test_the_leaf_key_stays_in_a_private_folder(authority: ca.Authority) -> None:
    certs, _ = make(authority, Clock(NOW.timestamp()))
    folder = certs._key_path.parent
    assert folder.stat().st_mode & 0o777 == 0o700
    assert certs._key_path.stat().st_mode & 0o777 == 0o600
    certs.leaf_for("a.blocked.test", "10.0.0.1")
    assert sorted(p.name for p in folder.iterdir()) == ["leaf.key"]  # each certificate file is removed once loaded
    certs.close()
    assert not folder.exists()


def handshake(context: ssl.SSLContext, name: str) -> None:
    """A TLS handshake in memory, a client naming `name` against the server `context`; raises what the client
    gets (an alert) when the server refuses."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(to_client, to_server, server_hostname=name)
    tls_server = context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            tls_client.do_handshake()
            return
        server_in.write(to_server.read())
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):  # the server's alert goes to the client
            tls_server.do_handshake()
        to_client.write(server_out.read())
    raise AssertionError("no handshake in 10 rounds")


async def test_prepare_mints_in_a_worker_thread_and_counts(authority: ca.Authority) -> None:
    counted: list[str] = []
    threads: list[str] = []
    certs = Certificates(authority, blocked, counted.append, clock=Clock(NOW.timestamp()))
    mint = certs._mint

    def minting(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return mint(*args)

    certs._mint = minting  # type: ignore[method-assign,assignment]
    context, result = await certs.prepare(b"omegle.blocked.test", "10.0.0.1")
    assert result == MINTED and context is not None
    assert threads == ["filterd-leaves_0"]  # not the event loop's thread
    assert await certs.prepare(b"omegle.blocked.test", "10.0.0.1") == (context, CACHED)
    assert await certs.prepare(None, "10.0.0.1") == (None, NO_SNI)
    assert await certs.prepare("\u00e9.blocked.test".encode(), "10.0.0.1") == (None, NOT_BLOCKED)  # not ASCII
    assert counted == [MINTED, CACHED, NO_SNI, NOT_BLOCKED]
    handshake(certs.server_context("10.0.0.1", prepared=("omegle.blocked.test", context)), "omegle.blocked.test")
    certs.close()


async def test_a_name_asked_by_several_connections_at_once_is_minted_once(authority: ca.Authority) -> None:
    limits = LeafLimits(client_burst=1.0)  # one token: a second mint would be rate limited
    certs, _ = make(authority, Clock(NOW.timestamp()), limits)
    results = await asyncio.gather(*(certs.prepare(b"a.blocked.test", "10.0.0.1") for _ in range(3)))
    assert [result for _, result in results] == [MINTED, CACHED, CACHED]
    assert len({id(context) for context, _ in results}) == 1 and list(certs.cache) == ["a.blocked.test"]
    assert certs.minting == {}
    certs.close()


async def test_a_failed_mint_is_an_error_logged_once(authority: ca.Authority) -> None:
    errors: list[str] = []
    certs = Certificates(authority, blocked, lambda _: None, on_error=lambda name, exc: errors.append(name))

    def failing(*args: Any) -> Any:
        raise ValueError("no")

    certs._mint = failing  # type: ignore[method-assign,assignment]
    results = await asyncio.gather(*(certs.prepare(b"a.blocked.test", "10.0.0.1") for _ in range(2)))
    assert results == [(None, ERROR), (None, ERROR)]
    assert errors == ["a.blocked.test"] and certs.cache == {} and certs.minting == {}
    certs.close()


def test_the_sni_callback_never_mints(authority: ca.Authority) -> None:
    """Only the prepared leaf or a cached one: a blocked name nobody prepared gets the alert, and no leaf."""
    certs, _ = make(authority, Clock(NOW.timestamp()))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        handshake(certs.server_context("10.0.0.1"), "a.blocked.test")
    assert certs.cache == {}
    certs.leaf_for("a.blocked.test", "10.0.0.1")
    handshake(certs.server_context("10.0.0.1"), "a.blocked.test")  # a cached leaf is found
    prepared = certs.cache["a.blocked.test"].context
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):  # OpenSSL read another name than the listener
        handshake(certs.server_context("10.0.0.1", prepared=("a.blocked.test", prepared)), "b.blocked.test")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):  # and a cached name stays refused when allowed
        handshake(certs.server_context("10.0.0.9"), "a.blocked.test")
