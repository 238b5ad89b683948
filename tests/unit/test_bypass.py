"""BypassStage.decide (pure) and the `bypass_protection` key: which names are signals, and a new user's default."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from filterd.config.load import load_embedded, parse_config
from filterd.dns import wire
from filterd.errors import ConfigError
from filterd.pipeline.bypass import BypassStage, own_names

ROOT = Path(__file__).resolve().parents[2]
STAGE = BypassStage(10, ["filter.lan"])
A, AAAA, SVCB, HTTPS, TXT = wire.T_A, wire.T_AAAA, wire.T_SVCB, wire.T_HTTPS, wire.T_TXT


@pytest.mark.parametrize(
    ("qname", "qtype", "signal"),
    [
        ("use-application-dns.net", A, "use-application-dns.net"),
        ("use-application-dns.net", HTTPS, "use-application-dns.net"),
        ("x.y.use-application-dns.net", AAAA, "use-application-dns.net"),
        ("mask.icloud.com", A, "mask.icloud.com"),
        ("mask-h2.icloud.com", AAAA, "mask-h2.icloud.com"),
        ("_dns.resolver.arpa", SVCB, "resolver.arpa"),
        ("_dns.resolver.arpa", TXT, "resolver.arpa"),
        ("resolver.arpa", A, "resolver.arpa"),
        ("_dns.filter.lan", SVCB, "_dns.filter.lan"),
        ("_dns.filter.lan", HTTPS, "_dns.filter.lan"),
        ("_853._dns.filter.lan", SVCB, "_dns.filter.lan"),
        # not signals
        ("_dns.filter.lan", A, None),
        ("x._dns.filter.lan", SVCB, None),
        ("_dns.other.lan", SVCB, None),
        ("_x._dns.filter.lan", SVCB, None),
        ("icloud.com", A, None),
        ("www.icloud.com", A, None),
        ("mask-api.icloud.com", A, None),
        ("notmask.icloud.com", A, None),
        ("application-dns.net", A, None),
        ("use-application-dns.net.example.com", A, None),
        ("arpa", SVCB, None),
        ("", A, None),
    ],
)
def test_decide(qname: str, qtype: int, signal: str | None) -> None:
    found = STAGE.decide(qname, qtype)
    assert (found.name if found is not None else None) == signal


def test_nxdomain_for_the_canary_and_relay_nodata_for_ddr() -> None:
    rcodes = {s.name: s.rcode for s in STAGE.signals()}
    assert rcodes["use-application-dns.net"] == rcodes["mask.icloud.com"] == wire.NXDOMAIN
    assert rcodes["resolver.arpa"] == rcodes["_dns.filter.lan"] == wire.NOERROR


def test_explain_finds_ddr_names_whatever_the_type() -> None:
    found = STAGE.explain("_dns.filter.lan")
    assert found is not None and "RFC 9462" in found.why and "filter.lan" in found.why


def test_own_names_are_the_records_of_the_listen_addresses() -> None:
    v4, v6, other = (ipaddress.ip_address(a) for a in ("192.168.1.2", "fd00::2", "192.168.1.3"))
    records = {"filter.lan": [v4], "pi.lan": [other, v6], "printer.lan": [other]}
    assert own_names(records, ["192.168.1.2", "127.0.0.1", "fd00::2"]) == ["filter.lan", "pi.lan"]
    assert own_names(records, ["127.0.0.1"]) == []


def _parse(text: str) -> bool:
    return parse_config(textwrap.dedent(text), "f.yaml", base_dir=ROOT).bypass_protection


def test_on_for_a_new_user() -> None:
    assert load_embedded().bypass_protection is True
    assert _parse("dns:\n  listen: [127.0.0.1]\n") is True


def test_can_be_turned_off() -> None:
    assert _parse("dns:\n  listen: [127.0.0.1]\nbypass_protection: false\n") is False
    assert _parse("dns:\n  listen: [127.0.0.1]\nbypass_protection: true\n") is True


@pytest.mark.parametrize("value", ["sometimes", "0", "''", "[]", ""])
def test_a_non_boolean_names_file_line_and_key(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"dns:\n  listen: [127.0.0.1]\n\nbypass_protection: {value}\n", "f.yaml", base_dir=ROOT)
    [problem] = info.value.problems
    assert problem.startswith("f.yaml:4: bypass_protection: must be true or false, not ")
