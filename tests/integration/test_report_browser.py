"""The weekly report's HTML page in headless Chromium: it renders (charts included) from a file with no network,
as a safeguarding lead would open and print it. Rows come from a real server's query log."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import pytest

from filterd.querylog.report import build, render_html
from tests.support import Dnsmasq, RunningFilterd

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]  # fmt: skip


def test_the_report_page_renders_in_chromium(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (the README's test command installs it)")
        pytest.skip("needs Chromium (Debian: chromium)")
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          records: {{kids-tablet.lan: 127.0.0.2}}
        state_dir: {tmp_path / "state"}
        querylog: {{retention: 14d}}
        groups:
          - {{name: children, clients: [kids-tablet.lan]}}
    """)
    for name in ["omegle.com", "ome.tv", "chatroulette.com", "use-application-dns.net", "example.org"]:
        q = dns.message.make_query(name, "A")
        dns.query.udp(q, "127.0.0.1", port=server.port, source="127.0.0.2", timeout=3)
    assert server.app is not None and server.app.querylog is not None
    rows = server.app.querylog.rows(limit=None)
    page = tmp_path / "report.html"
    page.write_text(render_html(build(rows, [], rows[-1].time - 3600, rows[0].time + 1)))
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    assert "kids-tablet.lan" in dom and "<svg" in dom and "4 blocked attempts" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--screenshot={shot}", "--window-size=900,1100", page.as_uri()],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
