"""The deployment guide's home network, run for real in network namespaces: a client, the filterd machine
(192.168.1.2, config/production.yaml as shipped), the router (192.168.1.1) and "the internet" with a public
resolver (198.51.100.53, 2001:db8:53::53), all on veth cables. Checks what deploy/README.md promises:

- deploy/firewall/filterd-redirect.nft, loaded on the router as shipped, sends every client's DNS to filterd,
  whichever server the client asked, and the answer is accepted (the hairpin NAT), while filterd's own
  queries still reach its upstream; DNS-over-TLS and IPv6 DNS to the internet are refused;
- deploy/dnsmasq/filterd-dhcp.conf, run on the filterd machine beside filterd, hands out filterd as the
  only DNS server and leaves port 53 to it.

Needs root, iproute2, nftables, dnsmasq and dig; skipped without them, saying why, except under CI.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.netlab import (
    DNSMASQ,
    ROOT,
    Lab,
    addresses_in,
    dnsmasq_dns,
    lab,
    production_config,
    require,
    start_filterd,
    wait_for,
)

FIREWALL = ROOT / "deploy" / "firewall" / "filterd-redirect.nft"
DHCP_CONF = ROOT / "deploy" / "dnsmasq" / "filterd-dhcp.conf"
FILTERD = "192.168.1.2"
ROUTER = "192.168.1.1"
PUBLIC = "198.51.100.53"
PUBLIC6 = "2001:db8:53::53"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Lab]:
    require("ip", "nft", "dnsmasq", "dig")
    with lab(tmp_path) as net:
        yield net


def test_router_firewall_sends_all_dns_to_filterd(home: Lab, tmp_path: Path) -> None:
    switch, client, pi, router, internet = (home.ns(role) for role in ("sw", "cl", "pi", "rt", "wan"))
    # The LAN: one switch (a bridge in its own namespace, so LAN-to-LAN traffic never passes the router's
    # firewall, as on a real home network), the client, the filterd machine and the router's LAN port.
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    for node, port in ((client, "sw-cl"), (pi, "sw-pi"), (router, "sw-rt")):
        home.link(switch, port, node, "br-lan" if node is router else "eth0")
        switch.ip("link", "set", port, "master", "br0")
    home.link(router, "wan", internet, "eth0")
    client.ip("addr", "add", "192.168.1.10/24", "dev", "eth0")
    client.ip("addr", "add", "fd00:1::10/64", "dev", "eth0", "nodad")
    client.ip("route", "add", "default", "via", ROUTER)
    client.ip("-6", "route", "add", "default", "via", "fd00:1::1")
    pi.ip("addr", "add", f"{FILTERD}/24", "dev", "eth0")
    pi.ip("route", "add", "default", "via", ROUTER)
    router.ip("addr", "add", f"{ROUTER}/24", "dev", "br-lan")
    router.ip("addr", "add", "fd00:1::1/64", "dev", "br-lan", "nodad")
    router.ip("addr", "add", "198.51.100.1/24", "dev", "wan")
    router.ip("addr", "add", "2001:db8:53::1/64", "dev", "wan", "nodad")
    router.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    internet.ip("addr", "add", f"{PUBLIC}/24", "dev", "eth0")
    internet.ip("addr", "add", f"{PUBLIC6}/64", "dev", "eth0", "nodad")
    internet.ip("route", "add", "default", "via", "198.51.100.1")
    internet.ip("-6", "route", "add", "default", "via", "2001:db8:53::1")

    # The router's own DNS (filterd's upstream in config/production.yaml) and a public resolver on the
    # internet (port 53, and 5353 to show the rest of the path works): neither filters.
    router.spawn(dnsmasq_dns([ROUTER], {"example.org": "192.0.2.10", "omegle.com": "192.0.2.66"}), "router-dns.log")
    public = {"example.org": "203.0.113.10", "omegle.com": "203.0.113.66"}
    internet.spawn(dnsmasq_dns([PUBLIC, PUBLIC6], public), "public-dns.log")
    internet.spawn(dnsmasq_dns([PUBLIC, PUBLIC6], public, port=5353), "public-dns-5353.log")
    dot = "import socket, time\ns = socket.create_server(('198.51.100.53', 853))\ntime.sleep(300)\n"
    internet.spawn([sys.executable, "-c", dot], "dot.log")
    wait_for(lambda: internet.dig(f"@{PUBLIC}", "omegle.com") == "203.0.113.66", "the public resolver")
    wait_for(lambda: router.dig(f"@{ROUTER}", "example.org") == "192.0.2.10", "the router's DNS")

    # Before the firewall: the client asks the public resolver and gets the unfiltered answer.
    assert client.dig(f"@{PUBLIC}", "omegle.com") == "203.0.113.66"

    start_filterd(pi, production_config(tmp_path))
    for _ in range(2):  # loading it again replaces it (the file deletes its own table first)
        router.run("nft", "-f", str(FIREWALL))
    ruleset = router.run("nft", "list", "table", "inet", "filterd_redirect").stdout
    assert ruleset.count("dnat ip to 192.168.1.2") == 2, ruleset

    # Whatever server the client asks, filterd answers, and the client accepts the answer (the masquerade:
    # without it filterd would reply from 192.168.1.2 to a question sent to 198.51.100.53, and dig waits).
    assert client.dig(f"@{PUBLIC}", "omegle.com") == FILTERD  # blocked: the sinkhole, this machine
    assert client.dig(f"@{PUBLIC}", "omegle.com", "+tcp") == FILTERD
    assert client.dig(f"@{ROUTER}", "omegle.com") == FILTERD  # the router's own DNS too
    assert client.dig(f"@{FILTERD}", "omegle.com") == FILTERD  # and filterd asked directly
    # A name filterd forwards: it reaches its upstream (the router), so its own queries are not redirected
    # back to itself (that would loop into SERVFAIL).
    assert client.dig(f"@{PUBLIC}", "example.org") == "192.0.2.10"
    # Only port 53 is redirected: the path to the internet works.
    assert client.dig(f"@{PUBLIC}", "-p", "5353", "omegle.com") == "203.0.113.66"
    assert client.dig(f"@{PUBLIC6}", "-p", "5353", "omegle.com") == "203.0.113.66"

    # IPv6 DNS to the internet cannot be redirected to filterd's IPv4 address: refused at once.
    assert addresses_in(client.dig(f"@{PUBLIC6}", "omegle.com")) == []
    assert router.dig(f"@{PUBLIC6}", "omegle.com") == "203.0.113.66"  # the server is there for the router

    # DNS-over-TLS: refused for the LAN, while the server listens (the router itself, not forwarded, connects).
    connect = "import socket\ntry:\n    socket.create_connection(('198.51.100.53', 853), timeout=5).close()\n"
    connect += "    print('connected')\nexcept OSError as exc:\n    print(type(exc).__name__)\n"
    assert router.python(connect).strip() == "connected"
    assert client.python(connect).strip() == "ConnectionRefusedError"

    # The block page, on the sinkhole address, port 80, for a browser on the LAN.
    fetch = textwrap.dedent("""
        import urllib.error, urllib.request
        request = urllib.request.Request("http://192.168.1.2/", headers={"Host": "omegle.com"})
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            print(exc.code, "<title>Blocked: omegle.com</title>" in exc.read().decode())
    """)
    assert client.python(fetch).strip() == "403 True"


#: A DHCP client in a few lines: one DISCOVER (broadcast flag set, so the OFFER is broadcast back), and the
#: OFFER's address and options 3 (router) and 6 (DNS servers), as JSON. Retries until the server is up.
DHCP_DISCOVER = textwrap.dedent("""
    import json, os, socket, time
    xid = os.urandom(4)
    mac = bytes.fromhex("020000000010")
    discover = (bytes([1, 1, 6, 0]) + xid + b"\\0\\0" + b"\\x80\\0" + bytes(16) + mac + bytes(10) + bytes(192)
                + bytes([99, 130, 83, 99, 53, 1, 1, 55, 2, 3, 6, 255]))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    s.bind(("0.0.0.0", 68))
    s.settimeout(1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s.sendto(discover, ("255.255.255.255", 67))
        try:
            reply = s.recv(2048)
        except TimeoutError:
            continue
        if reply[4:8] != xid:
            continue
        options, i = {}, 240
        while i < len(reply) and reply[i] != 255:
            if reply[i] == 0:
                i += 1
                continue
            options[reply[i]] = reply[i + 2 : i + 2 + reply[i + 1]]
            i += 2 + reply[i + 1]
        quads = lambda b: [socket.inet_ntoa(b[j : j + 4]) for j in range(0, len(b), 4)]
        print(json.dumps({"type": options[53][0], "address": socket.inet_ntoa(reply[16:20]),
                          "router": quads(options.get(3, b"")), "dns": quads(options.get(6, b""))}))
        break
""")


def test_dnsmasq_dhcp_on_the_filterd_machine(home: Lab, tmp_path: Path) -> None:
    """The fallback for a router that cannot hand out another DNS server: DHCP from dnsmasq on the filterd
    machine, with the shipped config. It leaves port 53 to filterd, and a new device asks only filterd."""
    pi, client = home.ns("pi"), home.ns("cl")
    home.link(pi, "eth0", client, "eth0")
    pi.ip("addr", "add", f"{FILTERD}/24", "dev", "eth0")
    client.ip("link", "set", "eth0", "address", "02:00:00:00:00:10")
    assert DNSMASQ is not None
    check = pi.run(DNSMASQ, "--test", f"--conf-file={DHCP_CONF}")
    assert "syntax check OK" in check.stdout + check.stderr
    dhcp = [DNSMASQ, "--keep-in-foreground", f"--conf-file={DHCP_CONF}", f"--dhcp-leasefile={tmp_path / 'leases'}"]
    pi.spawn([*dhcp, "--pid-file", "--user=root", "--log-facility=-", "--log-dhcp"], "dhcp.log")
    start_filterd(pi, production_config(tmp_path))  # after dnsmasq: port 53 was left free for it

    offer = json.loads(client.python(DHCP_DISCOVER, timeout=40))
    assert offer["type"] == 2  # DHCPOFFER
    assert offer["dns"] == [FILTERD] and offer["router"] == [ROUTER]
    last = int(offer["address"].rsplit(".", 1)[1])
    assert offer["address"].startswith("192.168.1.") and 100 <= last <= 199

    client.ip("addr", "add", f"{offer['address']}/24", "dev", "eth0")
    assert client.dig(f"@{offer['dns'][0]}", "omegle.com") == FILTERD
