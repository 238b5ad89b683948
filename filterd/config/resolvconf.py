"""The default upstreams: the nameservers of /etc/resolv.conf, minus filterd itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from filterd.config.schema import Endpoint


def parse_nameservers(text: str) -> list[Endpoint]:
    out: list[Endpoint] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.ip_address(parts[1].partition("%")[0])
            except ValueError:
                continue
            out.append(Endpoint(str(address), 53))
    return out


def is_self(upstream: Endpoint, listen: Sequence[Endpoint]) -> bool:
    """An upstream that is one of our own listeners (a wildcard listen counts as every local address)."""
    for ep in listen:
        if ep.port != upstream.port:
            continue
        if ep.host == upstream.host or ep.is_wildcard:
            return True
    return False


def default_upstreams(resolv_conf: str, listen: Sequence[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
    """(usable upstreams, the ones left out because they are filterd itself)."""
    found = parse_nameservers(resolv_conf)
    return [u for u in found if not is_self(u, listen)], [u for u in found if is_self(u, listen)]
