"""Where IPv6 is off, the embedded default's [::1] listener is skipped with a warning and IPv4 still answers.

Runs filterd in a network namespace this test creates, with IPv6 disabled by sysctl there. Needs root and
`ip`; skipped without them, except under CI (CI=true), where a skip would hide a broken setup."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def test_ipv6_loopback_is_skipped_where_ipv6_is_off(tmp_path: Path) -> None:
    reason = None if os.geteuid() == 0 else "needs root for `ip netns`"
    if reason is None and shutil.which("ip") is None:
        reason = "needs `ip` (Debian: iproute2)"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"cannot run under CI: it {reason}")
        pytest.skip(reason)
    name = f"filterd-v6off-{secrets.token_hex(3)}"
    config = tmp_path / "c.yaml"
    config.write_text("dns:\n  listen: ['127.0.0.1:1053', '[::1]:1053']\n  upstreams: ['127.0.0.1:9']\n")
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    proc = None
    try:
        ns = ["ip", "netns", "exec", name]
        subprocess.run([*ns, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run([*ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True, timeout=10)
        subprocess.run([*ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"], check=True, timeout=10)
        proc = subprocess.Popen(
            [*ns, sys.executable, "-m", "filterd", "serve", "-c", str(config)], stderr=subprocess.PIPE, text=True
        )
        probe = [
            *ns,
            sys.executable,
            "-c",
            "import dns.message, dns.query, sys; "
            "r = dns.query.udp(dns.message.make_query('omegle.com', 'A'), '127.0.0.1', port=1053, timeout=0.5); "
            "print(r.answer[0][0].address)",
        ]
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(probe, capture_output=True, text=True, timeout=10).stdout.strip()
            if out == "127.0.0.1":
                break
            assert proc.poll() is None and time.monotonic() < deadline, "filterd did not answer on IPv4"
            time.sleep(0.2)
    finally:
        if proc is not None:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        subprocess.run(["ip", "netns", "del", name], timeout=10)
    assert "dns: skipping [::1]:1053: IPv6 is off on this machine" in err
    assert "dns: listening on 127.0.0.1:1053 (udp, tcp)" in err
