"""A group by MAC address against the kernel's real neighbour table: a client in its own network namespace,
behind a veth cable, queries filterd in another; filterd finds the client's MAC (IPv4 ARP and IPv6 neighbour
entries, as the kernel learnt them) and answers by the client's group, on both its addresses."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.netlab import DNSMASQ, lab, require, start_filterd, wait_for

MAC = "aa:bb:cc:dd:ee:01"
OTHER_MAC = "aa:bb:cc:dd:ee:02"


def test_a_client_is_grouped_by_its_mac_on_ipv4_and_ipv6(tmp_path: Path) -> None:
    require("ip", "dig", "dnsmasq")
    assert DNSMASQ is not None
    with lab(tmp_path) as net:
        filt, kid, other = net.ns("filter"), net.ns("kid"), net.ns("other")
        filt.ip("link", "add", "br0", "type", "bridge")
        filt.ip("link", "set", "br0", "up")
        filt.ip("addr", "add", "10.99.0.2/24", "dev", "br0")
        filt.ip("addr", "add", "fd99::2/64", "dev", "br0", "nodad")
        for client, port, mac, last in [(kid, "p1", MAC, "20"), (other, "p2", OTHER_MAC, "30")]:
            net.link(filt, port, client, "eth0")
            filt.ip("link", "set", port, "master", "br0")
            client.ip("link", "set", "eth0", "down")
            client.ip("link", "set", "eth0", "address", mac)
            client.ip("link", "set", "eth0", "up")
            client.ip("addr", "add", f"10.99.0.{last}/24", "dev", "eth0")
            client.ip("addr", "add", f"fd99::{last}/64", "dev", "eth0", "nodad")
        filt.spawn(
            [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             "--bind-interfaces", "--listen-address=127.0.0.1", "--port=5300", "--pid-file", "--user=root",
             "--log-facility=-", "--host-record=games.example,192.0.2.7"],
            "dnsmasq.log",
        )  # fmt: skip
        config = tmp_path / "filterd.yaml"
        config.write_text(f"""
dns:
  listen: ["10.99.0.2:53", "[fd99::2]:53"]
  upstreams: ["127.0.0.1:5300"]
  allow_clients: [10.99.0.0/24, "fd99::/64"]
state_dir: {tmp_path / "state"}
groups:
  - name: kid
    clients: ["{MAC.upper()}"]
    block: [games.example]
""")
        start_filterd(filt, config)

        def kid_blocked(server: str) -> bool:
            return kid.dig(f"@{server}", "games.example") == "127.0.0.1"

        # the first query teaches the kernel the kid's MAC; filterd looks at the table again within a second
        wait_for(lambda: kid_blocked("10.99.0.2"), "the kid's IPv4 queries to get the kid's group", timeout=20)
        wait_for(lambda: kid_blocked("fd99::2"), "the kid's IPv6 queries to get the kid's group", timeout=20)
        assert other.dig("@10.99.0.2", "games.example") == "192.0.2.7"  # another device: no group
        assert other.dig("@fd99::2", "games.example") == "192.0.2.7"
        # a new (privacy) IPv6 address of the same device: still the kid
        kid.ip("addr", "add", "fd99::abcd/64", "dev", "eth0", "nodad")
        wait_for(lambda: kid.dig("@fd99::2", "-b", "fd99::abcd", "games.example") == "127.0.0.1",
                 "the kid's new IPv6 address to get the kid's group", timeout=20)  # fmt: skip
