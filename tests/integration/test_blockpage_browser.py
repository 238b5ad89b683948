"""A real browser opens a blocked name and gets the block page, the name resolved through filterd.

Everything runs in a throwaway network namespace: dnsmasq (the upstream) on 127.0.0.1:5353, filterd on
127.0.0.1:53 with the block page on port 80, and headless Chromium, whose /etc/resolv.conf is
/etc/netns/NAME/resolv.conf (`ip netns exec` mounts it) pointing at filterd. No --host-resolver-rules: the
browser's own resolver asks filterd, exactly as on a home network. Needs root, `ip` and `chromium`; skipped
without them, except under CI (CI=true), where a skip would hide a broken setup, so it fails instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import Dnsmasq

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CONTACT = "Ms Patel, Designated Safeguarding Lead (dsl@school.example)"

#: Flags for a quiet, deterministic headless run as root. HTTPS-Upgrades stay on (as for real users): the
#: browser tries https:// first, finds nothing on 443, and falls back to http://.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces it may not get
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=DnsOverHttps",  # resolve with the system's resolver, which is filterd
    "--hide-scrollbars",
]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (`ip netns`)"
    if shutil.which("ip") is None:
        return "needs `ip` (Debian: iproute2)"
    if CHROMIUM is None:
        return "needs Chromium (Debian: chromium)"
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        return "needs dnsmasq (Debian: dnsmasq-base)"
    if shutil.which("certutil") is None:
        return "needs certutil (Debian: libnss3-tools)"
    return None


@dataclass
class Namespace:
    """A network namespace with only loopback up, and the processes started in it."""

    name: str
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def exec(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(self.exec(args), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def chromium(self, *args: str, timeout: float = 60, home: Path | None = None) -> str:
        """Run headless Chromium; `home`: its $HOME, whose ~/.pki/nssdb holds the CAs it trusts besides the system's."""
        profile = self.workdir / f"profile-{secrets.token_hex(4)}"
        assert CHROMIUM is not None
        result = subprocess.run(
            self.exec([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]),
            capture_output=True,
            timeout=timeout,
            check=False,
            env=os.environ | {"HOME": str(home)} if home is not None else None,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        return result.stdout.decode()


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    missing = _missing()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"the browser test cannot run under CI: it {missing}")
        pytest.skip(f"the browser test {missing}")
    name = f"filterd-test-{secrets.token_hex(4)}"
    etc = Path("/etc/netns") / name
    ns = Namespace(name, tmp_path)
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        yield ns
    finally:
        for proc in reversed(ns.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)


def _start(namespace: Namespace, extra: str = "") -> Namespace:
    """dnsmasq and filterd running in the namespace, filterd answering on 127.0.0.1:53, the page on :80."""
    upstream = Dnsmasq(namespace.workdir)
    upstream.port = 5353
    namespace.spawn(upstream.command(), namespace.workdir / "dnsmasq.log")
    config = namespace.workdir / "filterd.yaml"
    config.write_text(f"""
dns:
  listen: ["127.0.0.1:53"]
  upstreams: ["127.0.0.1:5353"]
blocking:
  sinkhole: {{ipv4: 127.0.0.1, ipv6: "::1"}}
blockpage:
  listen: ["127.0.0.1:80", "[::1]:80"]
  contact: "{CONTACT}"
  unblock_url: https://school.example/unblock
{extra}""")
    log = namespace.workdir / "filterd.log"
    filterd = namespace.spawn([sys.executable, "-m", "filterd", "serve", "--config", str(config)], log)
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text(errors="replace"):
        if filterd.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"filterd did not start in the namespace:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return namespace


@pytest.fixture
def network(namespace: Namespace) -> Namespace:
    return _start(namespace)


def test_chromium_shows_the_block_page_for_a_blocked_name(network: Namespace, tmp_path: Path) -> None:
    dom = network.chromium("--dump-dom", "http://omegle.com/")
    for text in [
        "<title>Blocked: omegle.com</title>",
        "This site is blocked",
        '<p class="name">omegle.com</p>',
        "random video chat with strangers",
        "pressured, tricked, or shown things they did not want to see",
        "0800 1111",
        'href="https://www.childline.org.uk/"',
        'href="https://www.ceop.police.uk/Safety-Centre/"',
        "Report Remove",
        'href="tel:999"',
        "For parents, carers and teachers",
        CONTACT,
        'href="https://school.example/unblock"',
        "on the list chat-roulette (category chat-roulette-video)",
    ]:
        assert text in dom, f"{text!r} is not on the page:\n{dom}"


def test_chromium_shows_the_page_for_any_path_and_subdomain(network: Namespace) -> None:
    dom = network.chromium("--dump-dom", "http://www.uhmegle.com/video/start?lang=en")
    assert "<title>Blocked: www.uhmegle.com</title>" in dom
    assert "Details: uhmegle.com is on the list chat-roulette" in dom


@pytest.mark.parametrize(
    ("name", "size"),
    [("blockpage.png", (412, 915)), ("blockpage-full.png", (412, 1600))],
    ids=["phone", "phone-whole-page"],
)
def test_screenshot_on_a_phone_sized_window(
    network: Namespace, tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    """What a child sees first on a phone, and the whole page; docs/blockpage*.png are copies of these."""
    shot = tmp_path / name
    network.chromium(f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", "http://omegle.com/")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000  # a real page, not a blank one
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == size


def test_hsts_preloaded_names_never_reach_http(network: Namespace) -> None:
    """.app is HSTS-preloaded as a whole TLD: the browser goes to https:// itself, which nothing answers,
    so the child sees "can't connect", never a certificate warning and never the page (see the README)."""
    dom = network.chromium("--dump-dom", "http://monkey.app/")
    assert "Blocked: monkey.app" not in dom


# --- the page over HTTPS, on a device that trusts the local CA ----------------------------------------------


@pytest.fixture
def https_network(namespace: Namespace) -> Namespace:
    """As `network`, with `blockpage.https` on 127.0.0.1:443 and [::1]:443 and a CA made by `filterd ca init`."""
    state = namespace.workdir / "state"
    ca_config = namespace.workdir / "ca.yaml"
    ca_config.write_text(f"dns:\n  listen: ['127.0.0.1:53']\nstate_dir: {state}\n")
    subprocess.run(
        [sys.executable, "-m", "filterd", "--config", str(ca_config), "ca", "init", "--name", "Test School filter"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    extra = f"""  https:
    mode: local-ca
    listen: ["127.0.0.1:443", "[::1]:443"]
state_dir: {state}
"""
    return _start(namespace, extra)


def _managed_home(network: Namespace) -> Path:
    """A $HOME whose NSS database (what Chromium on Linux trusts besides the system's CAs) holds the local CA."""
    home = network.workdir / "managed-home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    _run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"])
    ca = network.workdir / "state" / "ca" / "ca.pem"
    _run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "Test School filter", "-i", str(ca)])
    return home


def test_chromium_trusting_the_ca_shows_the_page_over_https(https_network: Namespace) -> None:
    dom = https_network.chromium("--dump-dom", "https://omegle.com/", home=_managed_home(https_network))
    assert "<title>Blocked: omegle.com</title>" in dom, dom[-2000:]
    assert '<p class="name">omegle.com</p>' in dom
    assert "on the list chat-roulette (category chat-roulette-video)" in dom
    assert "Privacy error" not in dom and "NET::ERR_CERT" not in dom  # no interstitial


def test_chromium_without_the_ca_never_shows_the_https_page(https_network: Namespace) -> None:
    """An unmanaged device: the certificate is not trusted, so the browser warns; the page is not shown."""
    netlog = https_network.workdir / "netlog.json"
    home = https_network.workdir / "unmanaged"
    dom = https_network.chromium(f"--log-net-log={netlog}", "--dump-dom", "https://omegle.com/", home=home)
    assert "Blocked: omegle.com" not in dom
    assert '"net_error":-202' in netlog.read_text()  # ERR_CERT_AUTHORITY_INVALID: a certificate it does not trust


def test_https_screenshot_on_a_phone_sized_window(https_network: Namespace, tmp_path: Path) -> None:
    """docs/blockpage-https.png is a copy of this (FILTERD_KEEP_SCREENSHOTS=DIR keeps it): https://omegle.com/ on a
    device that trusts the school's CA. The page's text is checked above; this checks a real page was drawn."""
    shot = tmp_path / "blockpage-https.png"
    home = _managed_home(https_network)
    https_network.chromium(f"--screenshot={shot}", "--window-size=412,915", "https://omegle.com/", home=home)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (412, 915)
    keep = os.environ.get("FILTERD_KEEP_SCREENSHOTS")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
