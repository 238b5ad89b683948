"""The default upstreams: the nameservers of /etc/resolv.conf, minus filterd itself."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

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


def is_local_address(host: str) -> bool:
    """Whether this machine has the address (binding to it succeeds; nothing is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


#: Docker's embedded DNS, the nameserver of a container on a user-defined network (compose's): the container's own
#: firewall sends its port 53 on to Docker's resolver, so a wildcard listen on port 53 never receives it.
DOCKER_DNS = "127.0.0.11"


def is_self(upstream: Endpoint, listen: Sequence[Endpoint], is_local: Callable[[str], bool] = is_local_address) -> bool:
    """An upstream that is one of our own listeners (a wildcard listen counts as every local address but Docker's
    embedded DNS)."""
    for ep in listen:
        if ep.port != upstream.port:
            continue
        if ep.host == upstream.host:
            return True
        same_family = (":" in ep.host) == (":" in upstream.host)
        if ep.is_wildcard and same_family and upstream.host != DOCKER_DNS and is_local(upstream.host):
            return True
    return False


def default_upstreams(
    resolv_conf: str, listen: Sequence[Endpoint], is_local: Callable[[str], bool] = is_local_address
) -> tuple[list[Endpoint], list[Endpoint]]:
    """(usable upstreams, the ones left out because they are filterd itself)."""
    found = parse_nameservers(resolv_conf)
    own = [u for u in found if is_self(u, listen, is_local)]
    return [u for u in found if u not in own], own
