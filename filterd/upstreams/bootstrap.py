"""Where the NAME of a `tls://` or `https://` upstream without a pinned address is looked up: plain resolvers
(`dns.bootstrap`; else the plain upstreams; else /etc/resolv.conf's nameservers), never filterd itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from filterd.blocklists.sources import UpstreamDnsResolver
from filterd.config.resolvconf import default_upstreams
from filterd.config.schema import DnsConfig, EncryptedUpstream, Endpoint
from filterd.upstreams.kept import AddressLookup


def bootstrap_resolvers(dns: DnsConfig, upstreams: Sequence[Endpoint], resolv_conf: Path) -> tuple[Endpoint, ...]:
    if dns.bootstrap:
        return dns.bootstrap
    plain = tuple(ep for ep in upstreams if not isinstance(ep, EncryptedUpstream))
    if plain:
        return plain
    try:
        text = resolv_conf.read_text()
    except OSError:
        return ()
    return tuple(default_upstreams(text, dns.listen)[0])


def bootstrap_lookup(resolvers: Sequence[Endpoint], timeout: float) -> AddressLookup:
    """name -> its IPv4 addresses, else its IPv6 ones; OSError when no resolver answered (or there is none)."""
    resolver = UpstreamDnsResolver(resolvers, timeout) if resolvers else None

    async def lookup(name: str) -> list[str]:
        if resolver is None:
            raise OSError("no plain resolver to look it up: set dns.bootstrap, or pin the address (NAME@ADDRESS)")
        return await resolver.lookup(name, "A") or await resolver.lookup(name, "AAAA")

    return lookup
