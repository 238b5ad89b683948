"""The issue's "done when": a school sets Chrome's secure-DNS template to filterd and stays filtered.

Headless Chromium in a throwaway network namespace (the helpers of `test_blockpage_browser.py`), with the two
managed policies the deploy guide gives (`DnsOverHttpsMode: secure`, `DnsOverHttpsTemplates`), installed only for
that namespace (`ip netns exec` mounts /etc/netns/NAME/chromium over /etc/chromium), and the certificate's CA in
its NSS database. A blocked name shows the block page, and filterd saw its lookups over DNS over HTTPS, not UDP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_blockpage_browser import CHROMIUM, CHROMIUM_FLAGS, Namespace, _run
from tests.integration.test_blockpage_browser import namespace as namespace  # the fixture
from tests.support import Dnsmasq
from tests.support_tls import make_pki

NAME = "filter.school.test"


def test_chrome_with_the_secure_dns_policy_stays_filtered(namespace: Namespace) -> None:
    work = namespace.workdir
    pki = make_pki(work / "pki", (NAME,))
    policies = Path("/etc/netns") / namespace.name / "chromium" / "policies" / "managed"
    policies.mkdir(parents=True)
    if Path("/etc/chromium").is_dir():  # keep what the bind mount hides (master_preferences)
        shutil.copytree("/etc/chromium", policies.parents[1], dirs_exist_ok=True)
    template = f"https://{NAME}:8443/dns-query"
    (policies / "filterd.json").write_text(
        json.dumps({"DnsOverHttpsMode": "secure", "DnsOverHttpsTemplates": template})
    )
    upstream = Dnsmasq(work)
    upstream.port = 5353
    namespace.spawn(upstream.command(), work / "dnsmasq.log")
    config = work / "filterd.yaml"
    config.write_text(f"""
dns:
  listen: ["127.0.0.1:53"]
  upstreams: ["127.0.0.1:5353"]
  https_listen: ["127.0.0.1:8443"]
  records: {{{NAME}: 127.0.0.1}}
tls: {{cert: {pki.cert}, key: {pki.key}}}
blocking:
  sinkhole: {{ipv4: 127.0.0.1, ipv6: "::1"}}
blockpage:
  listen: ["127.0.0.1:80"]
metrics:
  listen: 127.0.0.1:9153
""")
    log = work / "filterd.log"
    filterd = namespace.spawn([sys.executable, "-m", "filterd", "serve", "--config", str(config)], log)
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text(errors="replace"):
        assert filterd.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    home = work / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    _run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"])
    _run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "school CA", "-i", str(pki.ca)])
    assert CHROMIUM is not None
    flags = [flag for flag in CHROMIUM_FLAGS if "DnsOverHttps" not in flag]  # that test turns DoH off; here it is on
    result = subprocess.run(
        namespace.exec([CHROMIUM, *flags, f"--user-data-dir={work / 'profile'}", "--dump-dom", "http://omegle.com/"]),
        capture_output=True,
        timeout=90,
        check=False,
        env=os.environ | {"HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert "<title>Blocked: omegle.com</title>" in result.stdout.decode(), result.stdout.decode()[-2000:]
    metrics = subprocess.run(
        namespace.exec(
            [
                sys.executable,
                "-c",
                f"import urllib.request as u; print(u.urlopen({'http://127.0.0.1:9153/metrics'!r}).read().decode())",
            ]
        ),
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout.decode()
    blocked = [
        line
        for line in metrics.splitlines()
        if line.startswith("filterd_queries_total{") and 'decision="blocked"' in line
    ]
    assert any('protocol="https"' in line for line in blocked), blocked  # the browser asked over DoH
    assert not any('protocol="udp"' in line for line in blocked), blocked  # and never in clear text
