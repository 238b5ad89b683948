"""Where IPv6 is off, the embedded default's [::1] listener is skipped with a warning and IPv4 still answers.

Runs filterd in a network namespace this test creates, with IPv6 disabled by sysctl there. Needs root and
`ip`; skipped without them, except under CI (CI=true), where a skip would hide a broken setup."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.deploy.netlab import lab, require

PROBE = (
    "import dns.message, dns.query; "
    "r = dns.query.udp(dns.message.make_query('omegle.com', 'A'), '127.0.0.1', port=1053, timeout=0.5); "
    "print(r.answer[0][0].address)"
)


def test_ipv6_loopback_is_skipped_where_ipv6_is_off(tmp_path: Path) -> None:
    require("ip")
    config = tmp_path / "c.yaml"
    config.write_text("dns:\n  listen: ['127.0.0.1:1053', '[::1]:1053']\n  upstreams: ['127.0.0.1:9']\n")
    with lab(tmp_path) as net:
        host = net.ns("v6off")
        host.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        host.run("sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
        proc = host.spawn([sys.executable, "-m", "filterd", "serve", "-c", str(config)], "filterd.log")
        deadline = time.monotonic() + 20
        while host.run(sys.executable, "-c", PROBE, check=False).stdout.strip() != "127.0.0.1":
            assert proc.poll() is None and time.monotonic() < deadline, "filterd did not answer on IPv4"
            time.sleep(0.2)
    log = (tmp_path / "filterd.log").read_text()
    assert "dns: skipping [::1]:1053: IPv6 is off on this machine" in log
    assert "dns: listening on 127.0.0.1:1053 (udp, tcp)" in log
