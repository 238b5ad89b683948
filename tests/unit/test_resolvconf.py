"""The default upstreams come from /etc/resolv.conf, minus filterd itself; none left is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.app import StartupError, resolve_upstreams
from filterd.config.load import parse_config
from filterd.config.resolvconf import default_upstreams, parse_nameservers
from filterd.config.schema import Endpoint

RESOLV = """# generated
search lan
nameserver 192.168.1.1
nameserver fe80::1%eth0
nameserver 127.0.0.1
options edns0
nameserver not-an-ip
"""


def test_parse_nameservers() -> None:
    assert parse_nameservers(RESOLV) == [
        Endpoint("192.168.1.1", 53),
        Endpoint("fe80::1", 53),
        Endpoint("127.0.0.1", 53),
    ]


@pytest.mark.parametrize(
    ("listen", "kept", "dropped"),
    [
        ([Endpoint("127.0.0.1", 53)], ["192.168.1.1", "fe80::1"], ["127.0.0.1"]),
        ([Endpoint("127.0.0.1", 1053)], ["192.168.1.1", "fe80::1", "127.0.0.1"], []),  # another port: not us
        # a wildcard listen is every local address of its family: 127.0.0.1 here, the router is not
        ([Endpoint("0.0.0.0", 53)], ["192.168.1.1", "fe80::1"], ["127.0.0.1"]),
    ],
)
def test_filterd_itself_is_left_out(listen: list[Endpoint], kept: list[str], dropped: list[str]) -> None:
    usable, own = default_upstreams(RESOLV, listen, is_local=lambda host: host.startswith("127."))
    assert [u.host for u in usable] == kept and [u.host for u in own] == dropped


def test_local_addresses_are_found_by_binding() -> None:
    from filterd.config.resolvconf import is_local_address

    assert is_local_address("127.0.0.1") and not is_local_address("192.0.2.123")


def test_no_upstream_left_is_a_clear_error(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    config = parse_config("dns: {listen: ['127.0.0.1:53']}\n", "f.yaml")
    with pytest.raises(StartupError, match=r"names no nameserver other than filterd itself: set dns\.upstreams"):
        resolve_upstreams(config, resolv)
    with pytest.raises(StartupError, match="cannot be read"):
        resolve_upstreams(config, tmp_path / "missing")
    resolv.write_text("nameserver 192.168.1.1\n")
    assert resolve_upstreams(config, resolv) == (Endpoint("192.168.1.1", 53),)
    explicit = parse_config("dns: {listen: ['127.0.0.1:53'], upstreams: [9.9.9.9]}\n", "f.yaml")
    assert resolve_upstreams(explicit, tmp_path / "missing") == (Endpoint("9.9.9.9", 53),)
