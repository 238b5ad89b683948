"""How many DNS queries, how fast, does a browser send to load a heavy page? The figure behind the default rate
limit (`ratelimit` in docs/config.md, the sizing in docs/pipeline.md).

In a throwaway network namespace (only loopback, nothing leaves it): dnsmasq answers every name under `test`
with 127.0.0.1, filterd (rate limiting off, cache on) forwards to it, a static HTTP server on 127.0.0.1:80 serves
a page that loads one image from each of HOSTS distinct host names, and headless Chromium (its own resolver,
DoH off, background networking on, as a user's) opens it from a cold start, REPS times with a fresh profile
each. filterd's `filterd_queries_total` is polled every 10 ms: total queries per load, per type, and the
most queries in any 1 s. Needs root, `ip`, `chromium`, `dnsmasq`. Usage:

    sudo python3 bench/browser_burst.py [--hosts 100] [--reps 3] [--filterd .venv/bin/filterd]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _poll(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("filterd_queries_total{"):
            labels, value = line.rsplit(" ", 1)
            qtype = labels.split('qtype="', 1)[1].split('"', 1)[0]
            out[qtype] = out.get(qtype, 0.0) + float(value)
    return out


def inner(args: argparse.Namespace) -> None:
    """Runs inside the namespace."""
    work = Path(args.work)
    hosts = [f"h{i}.site{i % 7}.test" for i in range(args.hosts)]
    page = "".join(f'<img src="http://{h}/i{i}.png" width=1 height=1>' for i, h in enumerate(hosts))
    (work / "www").mkdir()
    (work / "www" / "page.html").write_text(f"<!doctype html><title>heavy</title><body>{page}</body>")
    config = work / "filterd.yaml"
    config.write_text(
        # a forward zone: its LAN addresses are exempt from rebinding protection
        "dns:\n  listen: ['127.0.0.1:53']\n  upstreams: ['127.0.0.1:5353']\n"
        "  forward_zones: {test: '127.0.0.1:5353'}\nratelimit: false\n"
        f"metrics:\n  listen: 127.0.0.1:9153\nstate_dir: {work / 'state'}\n"
    )
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    procs = [
        subprocess.Popen(
            [
                dnsmasq,
                "-k",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--port=5353",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--address=/test/127.0.0.1",
                "--user=root",
                *args.dnsmasq_extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen([args.filterd, "serve", "--config", str(config)], stderr=subprocess.DEVNULL),
        subprocess.Popen(
            [sys.executable, "-m", "http.server", "80", "--bind", "127.0.0.1", "--directory", str(work / "www")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _poll(9153)
                break
            time.sleep(0.1)
        results = [_load(work, rep) for rep in range(args.reps)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    print(json.dumps({"hosts": args.hosts, "loads": results}, indent=1))


def _load(work: Path, rep: int) -> dict[str, object]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    before = _poll(9153)
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-features=DnsOverHttps",
            f"--user-data-dir={work / f'profile{rep}'}",
            "--dump-dom",
            "http://www.site.test/page.html",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while browser.poll() is None and time.monotonic() - started < 60:
        samples.append((time.monotonic() - started, sum(_poll(9153).values()) - sum(before.values())))
        time.sleep(0.01)
    if browser.poll() is None:
        browser.kill()
    time.sleep(1)
    after = _poll(9153)
    by_type = {t: after[t] - before.get(t, 0.0) for t in after if after[t] - before.get(t, 0.0)}
    peak = 0.0
    for t0, n0 in samples:
        window = [n for t, n in samples if t0 <= t <= t0 + 1.0]
        peak = max(peak, window[-1] - n0)
    first = next((t for t, n in samples if n > 0), 0.0)
    last = next((t for t, n in samples if n == samples[-1][1]), 0.0) if samples else 0.0
    return {"queries": sum(by_type.values()), "by_type": by_type, "max_in_1s": peak, "seconds": round(last - first, 2)}


@contextlib.contextmanager
def _namespace() -> Iterator[tuple[str, Path]]:
    name = f"fdburst-{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        with tempfile.TemporaryDirectory(prefix="filterd-burst-") as work:
            yield name, Path(work)
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--filterd", default=str(ROOT / ".venv" / "bin" / "filterd"))
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dnsmasq-extra", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (a network namespace)")
    with _namespace() as (name, work):
        command = [sys.executable, __file__, "--inner", "--work", str(work), "--hosts", str(args.hosts)]
        command += ["--reps", str(args.reps), "--filterd", str(Path(args.filterd).resolve())]
        command += [f"--dnsmasq-extra={x}" for x in args.dnsmasq_extra]
        subprocess.run(["ip", "netns", "exec", name, *command], check=True, timeout=600)


if __name__ == "__main__":
    main()
