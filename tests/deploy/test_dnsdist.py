"""deploy/dnsdist/dnsdist.conf for real: Debian's dnsdist, running the shipped file (its three settings pointed at
loopback), in front of two filterd instances. Clients on 127.0.0.50 (the group kids) and 127.0.0.60 ask dnsdist;
filterd sees them, not dnsdist (PROXY protocol v2), and answers by their group; one instance is stopped, and once
dnsdist has marked it down every query is still answered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.deploy.netlab import ROOT, require
from tests.support import Dnsmasq, RunningFilterd, addresses, free_port

CONF = ROOT / "deploy" / "dnsdist" / "dnsdist.conf"
KIDS = "127.0.0.50"
OTHER = "127.0.0.60"
API_KEY = "filterd-test"


def test_the_shipped_config_passes_dnsdists_check() -> None:
    require("dnsdist")
    result = subprocess.run(["dnsdist", "--check-config", "-C", str(CONF)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    code = "\n".join(line.split("--", 1)[0] for line in CONF.read_text().splitlines())  # without the comments
    assert "useProxyProtocol = true" in code
    assert "newPacketCache" not in code and "setCache" not in code  # caching is filterd's, per client group


def loopback_conf(listen: str, backends: list[str], api_port: int) -> str:
    """The shipped file with its listen address and backends on loopback, plus dnsdist's API to watch its health
    checks (test only: the shipped file opens no web server)."""
    text = CONF.read_text()
    text, n = re.subn(r"^local listen = .*$", f'local listen = {{ "{listen}" }}', text, count=1, flags=re.M)
    assert n == 1
    quoted = ", ".join(f'"{b}"' for b in backends)
    text, n = re.subn(r"^local backends = .*$", f"local backends = {{ {quoted} }}", text, count=1, flags=re.M)
    assert n == 1
    # no security poll: dnsdist would ask the system's resolver (off this machine) about its own version
    test_only = f'webserver("127.0.0.1:{api_port}")\nsetWebserverConfig({{apiKey="{API_KEY}", password="x"}})\n'
    return text + "\n" + test_only + 'setSecurityPollSuffix("")\n'


@pytest.fixture
def dnsdist_pair(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> Iterator[tuple[int, int, list[RunningFilterd]]]:
    require("dnsdist")
    instances = []
    for i in range(2):
        instances.append(
            start_filterd(f"""
                dns:
                  listen: ["127.0.0.1:0"]
                  upstreams: ["{dnsmasq.address}"]
                  proxy_protocol: [127.0.0.1/32]   # dnsdist
                metrics:
                  listen: 127.0.0.1:0
                state_dir: {tmp_path / f"state{i}"}
                groups:
                  - name: kids
                    clients: [{KIDS}]
                    block: [www.example.org]
            """)
        )
    port, api_port = free_port(), free_port()
    conf = tmp_path / "dnsdist.conf"
    conf.write_text(loopback_conf(f"127.0.0.1:{port}", [f"127.0.0.1:{s.port}" for s in instances], api_port))
    log = (tmp_path / "dnsdist.log").open("wb")
    proc = subprocess.Popen(
        [shutil.which("dnsdist") or "dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait(lambda: states(api_port) == ["up", "up"], "dnsdist to see both filterd instances up", proc)
        yield port, api_port, instances
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def states(api_port: int) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/api/v1/servers/localhost", headers={"X-API-Key": API_KEY}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            servers = json.load(response)["servers"]
    except OSError:
        return []
    return [s["state"].lower() for s in sorted(servers, key=lambda s: s["name"])]


def wait(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dnsdist exited ({proc.returncode}) while waiting for {what}"
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ask(port: int, name: str, source: str, *, tcp: bool = False) -> list[str]:
    q = dns.message.make_query(name, "A", use_edns=0)
    send = dns.query.tcp if tcp else dns.query.udp
    reply = send(q, "127.0.0.1", port=port, source=source, timeout=2)
    assert reply.rcode() == 0, f"{name} from {source}: {dns.rcode.to_text(reply.rcode())}"
    return addresses(reply)


def check_answers(port: int, rounds: int) -> None:
    """A blocked and an allowed name, for a client in the group and one in none, over UDP and TCP."""
    for i in range(rounds):
        tcp = i % 4 == 3
        assert ask(port, "www.example.org", KIDS, tcp=tcp) == ["127.0.0.1"]  # blocked for kids: the sinkhole
        assert ask(port, "www.example.org", OTHER, tcp=tcp) == ["192.0.2.11"]  # forwarded for everyone else
        assert ask(port, "video.omegle.com", OTHER, tcp=tcp) == ["127.0.0.1"]  # the built-in list, for everyone


def test_through_dnsdist_filterd_sees_the_client_and_survives_losing_an_instance(
    dnsdist_pair: tuple[int, int, list[RunningFilterd]], tmp_path: Path
) -> None:
    port, api_port, (first, second) = dnsdist_pair
    check_answers(port, rounds=12)

    def total(metric: str, **labels: str) -> float:
        return sum(
            s.metric(metric, protocol=p, **labels) if metric == "filterd_queries_total" else s.metric(metric, **labels)
            for s in (first, second)
            for p in (("udp", "tcp") if metric == "filterd_queries_total" else ("",))
        )

    # the group saw the real client: 12 blocked for kids (and nothing counted as dnsdist's own address)
    assert total("filterd_queries_total", group="kids", decision="blocked") == 12
    assert total("filterd_proxy_protocol_total", result="accepted") >= 36
    assert total("filterd_proxy_protocol_total", result="invalid") == 0  # health checks carry a header too
    served = [s.metric("filterd_proxy_protocol_total", result="accepted") for s in (first, second)]
    assert all(n > 0 for n in served), f"dnsdist used one instance only: {served}"

    first.stop()
    first.app = None  # stopped: the fixture's teardown has nothing left to stop
    deadline = time.monotonic() + 15
    while states(api_port) != ["down", "up"]:
        assert time.monotonic() < deadline, f"dnsdist did not mark the stopped instance down: {states(api_port)}"
        time.sleep(0.1)
    check_answers(port, rounds=20)  # every query answered, none failed
    assert states(api_port) == ["down", "up"]
    log = (tmp_path / "dnsdist.log").read_text()
    assert "security" not in log.lower(), f"dnsdist polled for security updates (a query off this machine): {log}"
