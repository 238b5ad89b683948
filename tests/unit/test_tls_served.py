"""The DoT/DoH certificate from the local CA (`tls: {mode: local-ca}`): for exactly the configured names and
addresses, made again before it ends, after a rotation's switch date and when the names change (injected clock),
never past the CA's end; and the config's errors, with file and line."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from filterd.config.load import parse_config
from filterd.config.schema import TlsConfig
from filterd.errors import ConfigError
from filterd.tls import ca
from filterd.transport.certs import CertificateError, LocalCaCertificates

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DAY = 86400.0
TLS = TlsConfig(
    mode="local-ca",
    names=("filter.school.example", "dns.school.example"),
    addresses=(ipaddress.ip_address("192.168.1.2"), ipaddress.ip_address("fd00::2")),
)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ca.init(tmp_path / "ca", "Test School filter", NOW)
    return tmp_path / "ca"


def test_the_certificate_names_exactly_the_configured_names_and_addresses(folder: Path) -> None:
    served = LocalCaCertificates(TLS, ca.load(folder), clock=Clock(NOW.timestamp()))
    cert = served.cert
    assert cert is not None
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["filter.school.example", "dns.school.example"]
    assert san.get_values_for_type(x509.IPAddress) == list(TLS.addresses)
    assert len(list(san)) == 4
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=7)
    assert cert.issuer == ca.load(folder).current.cert.subject
    assert served.names == ["filter.school.example", "dns.school.example"]
    assert served.addresses == ["192.168.1.2", "fd00::2"]


def test_it_is_made_again_before_it_ends_and_not_before(folder: Path) -> None:
    clock = Clock(NOW.timestamp())
    served = LocalCaCertificates(TLS, ca.load(folder), clock=clock)
    first = served.cert
    assert first is not None
    clock.now += 4 * DAY  # three days left: good
    assert served.renew() is False and served.cert is first
    clock.now += 1 * DAY + 1  # under two days left: a new one, with a new key
    assert served.renew() is True
    second = served.cert
    assert second is not None and second.serial_number != first.serial_number
    assert second.public_key() != first.public_key()
    assert second.not_valid_after_utc == NOW + dt.timedelta(days=12, seconds=1)
    assert served.renew() is False  # and only once


def test_a_rotation_signs_after_its_switch_date(folder: Path) -> None:
    clock = Clock(NOW.timestamp())
    served = LocalCaCertificates(TLS, ca.load(folder), clock=clock)
    switch = NOW + dt.timedelta(days=3)
    rotated = ca.rotate(folder, "Test School filter 2", switch, NOW)
    assert served.update(TLS, rotated) is False  # before the switch date the old CA still signs
    assert served.cert is not None and served.cert.issuer == rotated.current.cert.subject
    clock.now = switch.timestamp() + 60  # the hourly check after the switch date
    assert served.renew() is True
    assert rotated.next is not None and served.cert.issuer == rotated.next.cert.subject
    assert served.signer is not None and served.signer.cert == rotated.next.cert


def test_new_names_make_a_new_certificate(folder: Path) -> None:
    served = LocalCaCertificates(TLS, ca.load(folder), clock=Clock(NOW.timestamp()))
    other = TlsConfig(mode="local-ca", names=("doh.school.example",))
    assert served.update(other, ca.load(folder)) is True
    assert served.cert is not None
    san = served.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in san] == ["<DNSName(value='doh.school.example')>"]
    assert served.update(other, ca.load(folder)) is False


def test_never_past_the_cas_end_and_an_ended_ca_keeps_the_running_one(folder: Path) -> None:
    authority = ca.load(folder)
    ends = authority.current.cert.not_valid_after_utc
    clock = Clock((ends - dt.timedelta(days=3)).timestamp())
    served = LocalCaCertificates(TLS, authority, clock=clock)
    assert served.cert is not None and served.cert.not_valid_after_utc == ends
    clock.now += 2 * DAY  # one day left, but the CA ends then too: nothing better to make
    assert served.renew() is False
    running = served.cert
    clock.now += 2 * DAY  # the CA has ended: a reload with new names cannot get a certificate
    with pytest.raises(CertificateError, match=r"cannot sign a certificate now .* rotate it"):
        served.update(TlsConfig(mode="local-ca", names=("new.school.example",)), authority)
    assert served.cert is running and served.names == list(TLS.names)  # the running one stays


def test_the_key_is_never_left_on_disk(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    LocalCaCertificates(TLS, ca.load(folder), clock=Clock(NOW.timestamp()))
    assert os.listdir(scratch) == []


BASE = "dns:\n  listen: [127.0.0.1]\n  upstreams: [192.0.2.1]\n  tls_listen: [127.0.0.1]\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, "f.yaml", check_files=False)
    return info.value.problems


def test_config_local_ca() -> None:
    config = parse_config(
        BASE + "tls: {mode: local-ca, names: [Filter.School.Example., filter.school.example], addresses: ['::1']}\n",
        "f.yaml",
    )
    assert config.tls == TlsConfig(
        mode="local-ca", names=("filter.school.example",), addresses=(ipaddress.ip_address("::1"),)
    )
    assert config.tls.local_ca and config.tls.cert is None


def test_config_errors_name_file_and_line() -> None:
    assert _problems("tls:\n  mode: local-ca\n  cert: /etc/cert.pem\n  names: ['*.school.example', 10.0.0.1]\n") == [
        "f.yaml:7: tls.cert: not with mode: local-ca (the local CA makes the certificate): remove it, or remove mode",
        "f.yaml:8: tls.names[0]: '*.school.example' is not a host name (addresses go in tls.addresses; no wildcards)",
        "f.yaml:8: tls.names[1]: '10.0.0.1' is not a host name (addresses go in tls.addresses; no wildcards)",
    ]
    assert _problems("tls:\n  mode: local-ca\n  addresses: [192.168.1.300]\n  names: [ok.example]\n") == [
        "f.yaml:7: tls.addresses[0]: '192.168.1.300' is not an IP address"
    ]
    assert _problems("tls:\n  mode: local-ca\n") == [
        "f.yaml:6: tls.names: is required with mode: local-ca: the names clients use for filterd "
        "(e.g. [filter.school.example]), and/or tls.addresses"
    ]
    assert _problems("tls:\n  mode: local\n") == ["f.yaml:6: tls.mode: 'local' is not one of: files, local-ca"]
    assert _problems("tls:\n  names: [a.example]\n  cert: /x\n  key: /y\n") == [
        "f.yaml:6: tls.names: only with mode: local-ca (a certificate file names its own names and addresses)"
    ]
    assert _problems("tls: {}\n") == [
        "f.yaml:5: tls: needs cert and key (PEM files), or mode: local-ca and the names clients use, "
        "e.g. {mode: local-ca, names: [filter.school.example]}"
    ]
