"""deploy/ as a whole: every file in it is checked by some test (a new file without one fails here), the guide
deploy/README.md says what the files say and its snippets are valid, and config/production.yaml is a config
for a network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from filterd.config.load import load_config, parse_config
from filterd.portholder import BoundSocket, Holder, describe
from tests.deploy.netlab import ROOT

DEPLOY = ROOT / "deploy"
GUIDE = DEPLOY / "README.md"
PRODUCTION = ROOT / "config" / "production.yaml"


def _blocks(language: str) -> list[str]:
    """The fenced code blocks of the guide in one language, dedented (some sit in a list item)."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in found]


def test_every_file_in_deploy_is_checked_by_a_test() -> None:
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    files = sorted(p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*") if p.is_file())
    assert "deploy/install.sh" in files and "deploy/README.md" in files
    unchecked = [name for name in files if name not in sources]
    assert unchecked == [], f"no test names these files in deploy/ (add a test that checks them): {unchecked}"


def test_the_guide_is_linked_from_the_readme_and_its_files_exist() -> None:
    assert "(deploy/README.md)" in (ROOT / "README.md").read_text()
    guide = GUIDE.read_text()
    for path in sorted(set(re.findall(r"`((?:deploy|config)/[\w./-]+)`", guide))):
        assert (ROOT / path).exists(), f"the guide names {path}, which does not exist"
    for heading in ("## Port 53 is taken", "## What was tested here", "## The firewall", "### IPv6"):
        assert heading in guide


def test_the_guide_shows_the_shipped_files_as_they_are() -> None:
    """The firewall and the dnsmasq config are printed in full, for a router or Pi without the checkout."""
    assert _blocks("nft") == [(DEPLOY / "firewall" / "filterd-redirect.nft").read_text()]
    assert _blocks("conf") == [(DEPLOY / "dnsmasq" / "filterd-dhcp.conf").read_text()]


def test_the_guides_shell_snippets_parse() -> None:
    blocks = _blocks("sh")
    assert len(blocks) >= 8
    for block in blocks:
        result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{result.stderr}\n{block}"
    text = "\n".join(blocks)
    assert "uci add_list dhcp.lan.dhcp_option='6,192.168.1.2'" in text  # OpenWrt's DHCP option 6
    assert "DNSStubListener=no" in text and "/etc/systemd/resolved.conf.d/" in text
    assert "sudo ss -lupn 'sport = :53'" in text


def test_the_guides_configs_load() -> None:
    """Every YAML snippet is a whole config filterd accepts; the school's forwards its AD zones to the DCs."""
    blocks = _blocks("yaml")
    assert len(blocks) == 4
    # the encrypted DNS block names certificate files this machine has not got: checked but for the files
    configs = [
        parse_config(block, f"deploy/README.md yaml block {i}", check_files=i < 3) for i, block in enumerate(blocks)
    ]
    encrypted = configs[3]
    assert [str(e) for e in encrypted.dns.tls_listen] == ["192.168.1.2:853"]
    assert [str(e) for e in encrypted.dns.https_listen] == ["192.168.1.2:8443"]
    assert encrypted.tls is not None and encrypted.tls.key.name == "privkey.pem"
    zones = dict(configs[0].dns.forward_zones)
    dcs = ["10.0.0.10:53", "10.0.0.11:53"]
    assert [str(e) for e in zones["school.example"]] == dcs
    assert [str(e) for e in zones["_msdcs.school.example"]] == dcs
    assert [lst.url for lst in configs[1].lists if lst.url] == ["https://intranet.school.example/filterd/blocks.txt"]
    assert [str(net) for net in configs[2].dns.proxy_protocol] == ["192.168.1.5/32"]  # behind dnsdist


def test_the_dhcp_examples_hand_out_both_instances() -> None:
    (kea,) = _blocks("json")
    subnet = json.loads(kea)["Dhcp4"]["subnet4"][0]
    options = {option["name"]: option["data"] for option in subnet["option-data"]}
    assert options["domain-name-servers"] == "10.0.0.53, 10.0.0.54"
    (powershell,) = _blocks("powershell")
    assert "Set-DhcpServerv4OptionValue -ScopeId 10.0.0.0 -DnsServer 10.0.0.53, 10.0.0.54" in powershell


def test_the_guide_quotes_filterds_own_port_53_message() -> None:
    """The log line the guide shows is what filterd says (portholder.describe) for dnsmasq on the port."""
    (console,) = _blocks("console")
    shown = " ".join(line.strip() for line in console.splitlines()[1:])
    dnsmasq = Holder(BoundSocket("udp", "0.0.0.0", 53, 7, 0, 1), 612, "dnsmasq")
    expected = f"... dns (udp): cannot listen on 192.168.1.2:53: Address already in use: {describe([dnsmasq], 53)}"
    assert shown == expected


def test_production_config_passes_config_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "filterd", "config", "check", str(PRODUCTION)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == f"{PRODUCTION}: ok", result.stderr


def test_production_config_serves_a_network() -> None:
    cfg = load_config(PRODUCTION)
    # DNS on the LAN address and loopback, port 53; blocked names point at the LAN address, where the page is.
    assert [str(e) for e in cfg.dns.listen] == ["192.168.1.2:53", "127.0.0.1:53"]
    assert cfg.dns.upstreams, "explicit upstreams: this machine's own resolv.conf will name filterd itself"
    assert str(cfg.blocking.sinkhole.ipv4) == "192.168.1.2"
    assert str(cfg.blocking.sinkhole.ipv6) in ("::",) and not cfg.blocking.sinkhole.ipv6.is_loopback
    assert cfg.blockpage is not None and [str(e) for e in cfg.blockpage.listen] == ["192.168.1.2:80"]
    # Metrics and the admin API on loopback only.
    assert cfg.metrics is not None and cfg.metrics.listen.host == "127.0.0.1"
    assert cfg.admin is not None and str(cfg.admin.listen) == "127.0.0.1:8053"
    assert str(cfg.state_dir) == "/var/lib/filterd"
    assert [lst.builtin for lst in cfg.lists] == ["chat-roulette", "doh-bypass"]


@pytest.mark.parametrize("example", ["192.168.1.2", "192.168.1.1"])
def test_production_config_header_documents_the_example_addresses(example: str) -> None:
    """install.sh replaces these two; the header says so, and they appear outside comments."""
    text = PRODUCTION.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    body = "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    assert example in header and example in body
    assert f"EXAMPLE_{'LAN' if example.endswith('.2') else 'ROUTER'}={example}\n" in (DEPLOY / "install.sh").read_text()


def _filterd_commands(text: str) -> list[str]:
    """Each `filterd ...` command line in shell blocks and backticked spans (with sudo, or run by docker compose
    exec or kubectl exec): its arguments up to a comment, a pipe or a redirection."""
    spans = re.findall(r"`([^`\n]+)`", text) + [line for block in _blocks("sh") for line in block.splitlines()]
    found = []
    for span in spans:
        for match in re.finditer(r"(?:^|sudo |exec filterd |\$ )filterd ((?:[^\s#|>&;`]+ ?)+)", span.strip()):
            found.append(match.group(1).strip())
    return found


def test_the_filterd_commands_in_the_guide_and_the_container_config_exist() -> None:
    """A command the guide tells an admin to run (in the container too) is one the CLI has."""
    from filterd.cli import build_parser

    texts = GUIDE.read_text() + "\n" + (DEPLOY / "docker" / "filterd.yaml").read_text()
    commands = _filterd_commands(texts)
    assert any(c.startswith("lists show") for c in commands), commands  # the CLI inside the container
    parser = build_parser()
    for command in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([*command.split(), "--help"])
        assert done.value.code == 0, f"`filterd {command}`: not a filterd command"
