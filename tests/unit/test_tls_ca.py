"""The local CA: what it is (a P-256 root, pathlen 0, 10 years), where it lives (0700 folder, 0600 key), that it is
never overwritten, and how a rotation hands over on its date."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from filterd.tls import ca

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_root_is_a_p256_ca_that_signs_only_leaves_for_ten_years() -> None:
    root = ca.make_ca("Example School filter", NOW)
    cert = root.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Example School filter"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    assert cert.not_valid_before_utc <= NOW
    cert.verify_directly_issued_by(cert)  # self-signed, and the signature holds


def test_init_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "ca"
    made = ca.init(folder, "Test CA", NOW)
    assert mode(folder) == 0o700
    assert mode(folder / "ca.key") == 0o600
    assert mode(folder / "ca.pem") == 0o644
    assert ca.load(folder).current.pem == made.pem
    before = (folder / "ca.key").read_bytes()
    with pytest.raises(ca.CaError, match="refusing to overwrite"):
        ca.init(folder, "Another", NOW)
    assert (folder / "ca.key").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["ca.key", "ca.pem"]  # no temporary file left


def test_a_key_others_can_read_or_the_wrong_key_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    ca.init(folder, "Test CA", NOW)
    os.chmod(folder / "ca.key", 0o644)
    with pytest.raises(ca.CaError, match=r"ca\.key has mode 0644: others may read the CA's key"):
        ca.load(folder)
    os.chmod(folder / "ca.key", 0o440)  # a Kubernetes Secret volume's file under fsGroup (deploy/README.md)
    with pytest.raises(ca.CaError, match=r"ca\.key has mode 0440"):
        ca.load(folder)
    os.chmod(folder / "ca.key", 0o600)
    (folder / "ca.key").write_bytes(ca.key_pem(ca.make_ca("Other", NOW).key))
    with pytest.raises(ca.CaError, match=r"ca\.key is not the key of .*ca\.pem"):
        ca.load(folder)


def test_no_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ca.CaError, match=r"no local CA in .*: create one with `filterd ca init`"):
        ca.load(tmp_path / "ca")


def test_a_folder_this_user_may_not_enter_is_said_not_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`filterd ca export` by an admin's own account: the 0700 folder is the filterd user's. Not "no local CA:
    create one" (nor a traceback): who may read it. (Simulated: the tests run as root, who may enter anything.)"""
    folder = tmp_path / "ca"
    ca.init(folder, "Test CA", NOW)
    real_stat = Path.stat

    def stat(self: Path, **kwargs: bool) -> os.stat_result:
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    for action in (lambda: ca.load(folder), lambda: ca.init(folder, "Again", NOW)):
        with pytest.raises(ca.CaError, match=r"ca: permission denied: run this as the filterd user or root"):
            action()


def test_rotation_signs_with_the_old_ca_until_its_date_then_the_new(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    old = ca.init(folder, "Test CA", NOW)
    switch = NOW + dt.timedelta(days=30)
    authority = ca.rotate(folder, None, switch, NOW)
    assert authority.next is not None and authority.switch_at == switch
    assert authority.current.pem == old.pem
    assert authority.newest.pem == authority.next.pem  # what `ca export` prints: the one devices need next
    assert authority.signer(switch - dt.timedelta(seconds=1)).pem == old.pem
    assert authority.signer(switch).pem == authority.next.pem
    assert authority.next.cert.subject == old.cert.subject  # same name by default: devices show one "Test CA"
    assert mode(folder / "next.key") == 0o600
    with pytest.raises(ca.CaError, match="a rotation is pending"):
        ca.rotate(folder, None, switch + dt.timedelta(days=30), NOW + dt.timedelta(days=1))


def test_the_next_rotation_retires_the_old_ca(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    old = ca.init(folder, "Test CA", NOW)
    first = ca.rotate(folder, "Test CA 2027", NOW + dt.timedelta(days=30), NOW)
    later = NOW + dt.timedelta(days=40)
    second = ca.rotate(folder, None, later + dt.timedelta(days=30), later)
    assert first.next is not None and second.current.pem == first.next.pem
    assert second.next is not None and second.next.pem not in (old.pem, first.next.pem)
    retired = list((folder / "retired").iterdir())
    assert sorted(p.suffix for p in retired) == [".key", ".pem"]
    assert any(p.read_bytes() == old.pem for p in retired)


def test_a_switch_date_in_the_past_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    ca.init(folder, "Test CA", NOW)
    with pytest.raises(ca.CaError, match="not in the future"):
        ca.rotate(folder, None, NOW - dt.timedelta(days=1), NOW)
    assert not (folder / "next.pem").exists()


def test_a_switch_date_after_the_current_ca_ends_is_refused(tmp_path: Path) -> None:
    """Until the switch the old CA signs, and its leaves end when it does: a later date leaves a gap."""
    folder = tmp_path / "ca"
    ca.init(folder, "Test CA", NOW)
    with pytest.raises(ca.CaError, match=r"is after the CA in use ends \(2036-11-28\): pick one before"):
        ca.rotate(folder, None, NOW + dt.timedelta(days=3650), NOW)
    assert not (folder / "next.pem").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user (`sudo filterd ca init`)")
def test_run_as_root_the_ca_belongs_to_the_state_dirs_owner(tmp_path: Path) -> None:
    """`sudo filterd ca init`: the service user (who owns state_dir) must read the key; root keeps nothing."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4343)
    ca.init(state / "ca", "Test CA", NOW)
    ca.rotate(state / "ca", None, NOW + dt.timedelta(days=30), NOW)
    for path in [state / "ca", *(state / "ca").iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343), path
