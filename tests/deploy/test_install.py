"""deploy/install.sh: a dry run lists every action and changes nothing; under a temporary root it really lays
out the tree (a venv with filterd installed from this checkout by pip, as on a Pi), upgrades in place without
touching an edited config, and uninstalls keeping the config and state unless --purge. The steps that change
the real system (useradd, chown, apt-get, systemctl) are what --root skips: they are checked in the dry run."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from filterd.config.load import load_config
from tests.deploy.netlab import IN_CI, ROOT, Lab, lab, require, start_filterd

INSTALL = ROOT / "deploy" / "install.sh"
UNIT = ROOT / "deploy" / "systemd" / "filterd.service"
#: The interpreter this test venv was made from: Python 3.11+, as install.sh requires.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def _system_python() -> str:
    """Debian's /usr/bin/python3 when it can make a venv (as on a Pi), else the test venv's own interpreter."""
    check = "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"
    debian = "/usr/bin/python3"
    if Path(debian).exists() and subprocess.run([debian, "-c", check], capture_output=True).returncode == 0:
        return debian
    return BASE_PYTHON


INSTALL_PYTHON = _system_python()
#: What the installed system holds, relative to its root.
INSTALLED = ["opt/filterd/venv", "etc/filterd/filterd.yaml", "var/lib/filterd", "etc/systemd/system/filterd.service"]


def install(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def actions(output: str) -> list[str]:
    """The actions printed: `+ command` (run, or would run) and `- skipped (--root): command`."""
    return [line for line in output.splitlines() if line.startswith(("+ ", "- skipped"))]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_dry_run_prints_every_action_and_changes_nothing() -> None:
    before = {path: Path("/", path).exists() for path in [*INSTALLED, "usr/local/bin/filterd"]}
    args = ["--lan-address", "192.168.1.50", "--router", "192.168.1.254", "--arch", "arm64", "--python", BASE_PYTHON]
    result = install("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run: printing every action, changing nothing\n")
    assert (
        f"filterd: installing from {ROOT} on arm64: LAN address 192.168.1.50, router 192.168.1.254\n" in result.stdout
    )
    steps = actions(result.stdout)
    expected = [
        "+ useradd --system --user-group --no-create-home --home-dir /var/lib/filterd --shell /usr/sbin/nologin "
        "--comment filterd\\ DNS\\ filter filterd",
        "+ mkdir -p /opt/filterd",
        f"+ {BASE_PYTHON} -m venv /opt/filterd/venv",
        "+ /opt/filterd/venv/bin/python -m pip install --upgrade --no-input --disable-pip-version-check --quiet "
        f"{ROOT}\\[fast\\]",
        "+ mkdir -p /etc/filterd",
        "+ chown root:filterd /etc/filterd",
        "+ chmod 0750 /etc/filterd",
        "+ write /etc/filterd/filterd.yaml (mode 0640): config/production.yaml for 192.168.1.50 (router 192.168.1.254)",
        "+ chown root:filterd /etc/filterd/filterd.yaml",
        "+ mkdir -p /var/lib/filterd",
        "+ chown filterd:filterd /var/lib/filterd",
        "+ chmod 0750 /var/lib/filterd",
        "+ mkdir -p /usr/local/bin /etc/systemd/system",
        "+ ln -sfn /opt/filterd/venv/bin/filterd /usr/local/bin/filterd",
        f"+ install -m 0644 {UNIT} /etc/systemd/system/filterd.service",
        "+ /opt/filterd/venv/bin/filterd config check /etc/filterd/filterd.yaml",
        "+ systemctl daemon-reload",
        "+ systemctl enable filterd",
        "+ systemctl restart filterd",
    ]
    if _user_exists("filterd"):  # a machine with filterd installed: the user is kept, not made again
        expected.pop(0)
    for path, exists in before.items():  # on such a machine the existing files show as kept, not written
        if exists:
            pytest.skip(f"/{path} exists on this machine: the dry run's plan differs from a fresh install's")
    assert steps == expected
    assert result.stdout.endswith("dry run: done, nothing was changed\n")
    assert {path: Path("/", path).exists() for path in before} == before


def test_dry_run_on_32_bit_arm_has_no_uvloop() -> None:
    result = install("--dry-run", "--lan-address", "10.0.0.2", "--router", "10.0.0.1", "--arch", "armhf")
    assert result.returncode == 0, result.stderr
    pip = [line for line in actions(result.stdout) if " -m pip install " in line]
    assert pip == [
        f"+ /opt/filterd/venv/bin/python -m pip install --upgrade --no-input --disable-pip-version-check --quiet {ROOT}"
    ]
    assert "no uvloop on armhf (it has no wheels there): filterd runs on plain asyncio" in result.stdout


def test_dry_run_of_a_released_version_and_a_python_without_venv(tmp_path: Path) -> None:
    """--version installs from the package index; a Python without its venv module gets python3-venv first
    (Debian splits it out)."""
    python = tmp_path / "python3"
    python.write_text('#!/bin/sh\ncase "$2" in *ensurepip*) exit 1 ;; esac\nexit 0\n')  # 3.11+, but no venv
    python.chmod(0o755)
    args = ["--dry-run", "--version", "0.2.0", "--python", str(python), "--arch", "amd64"]
    result = install(*args, "--lan-address", "10.0.0.2", "--router", "10.0.0.1")
    assert result.returncode == 0, result.stderr
    steps = actions(result.stdout)
    assert steps[steps.index("+ apt-get update") + 1] == "+ apt-get install -y python3-venv"
    assert steps.index("+ apt-get install -y python3-venv") < steps.index(f"+ {python} -m venv /opt/filterd/venv")
    pip = "+ /opt/filterd/venv/bin/python -m pip install --upgrade --no-input --disable-pip-version-check --quiet"
    assert f"{pip} filterd\\[fast\\]==0.2.0" in steps
    assert "installing from version 0.2.0 from the package index on amd64" in result.stdout


def _fake_ip(tmp_path: Path, route: str) -> dict[str, str]:
    """PATH with an `ip` that prints `route` for `ip -4 route get`, like iproute2 does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ip"
    fake.write_text(f"#!/bin/sh\n[ \"$1 $2 $3\" = '-4 route get' ] && printf '%s\\n' '{route}'\nexit 0\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_addresses_come_from_the_default_route(tmp_path: Path) -> None:
    env = _fake_ip(tmp_path, "192.0.2.1 via 10.20.30.1 dev eth0 src 10.20.30.40 uid 0")
    result = install("--dry-run", "--arch", "amd64", env=env)
    assert result.returncode == 0, result.stderr
    assert "LAN address 10.20.30.40, router 10.20.30.1" in result.stdout
    # An option wins over what the route says.
    result = install("--dry-run", "--arch", "amd64", "--lan-address", "10.20.30.41", env=env)
    assert "LAN address 10.20.30.41, router 10.20.30.1" in result.stdout


def test_without_a_default_route_it_asks_for_the_address(tmp_path: Path) -> None:
    env = _fake_ip(tmp_path, "RTNETLINK answers: Network is unreachable")
    result = install("--dry-run", env=env)
    assert result.returncode == 1
    assert "cannot tell this machine's LAN address (no default route?): give --lan-address A.B.C.D" in result.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--lan-address", "192.168.1.300", "--router", "192.168.1.1"], "--lan-address 192.168.1.300 is not an IPv4"),
        (["--lan-address", "127.0.0.1", "--router", "192.168.1.1"], "127.0.0.1 is loopback, not a LAN address"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_bad_options_are_refused(args: list[str], error: str) -> None:
    result = install("--dry-run", *args)
    assert result.returncode == 1 and error in result.stderr


def test_dry_run_uninstall_lists_removals_and_removes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for path in INSTALLED:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).mkdir() if "." not in Path(path).name else (root / path).write_text("x\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/filterd").symlink_to("/opt/filterd/venv/bin/filterd")
    result = install("--dry-run", "--root", str(root), "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert actions(result.stdout)[:6] == [
        "- skipped (--root): systemctl disable --now filterd",
        f"+ rm -f {root}/etc/systemd/system/filterd.service",
        "- skipped (--root): systemctl daemon-reload",
        f"+ rm -rf {root}/opt/filterd",
        f"+ rm -f {root}/usr/local/bin/filterd",
        f"+ rm -rf {root}/etc/filterd",
    ]
    assert f"+ rm -rf {root}/var/lib/filterd" in actions(result.stdout)
    assert all((root / path).exists() for path in INSTALLED)


def test_install_upgrade_and_uninstall_under_a_temporary_root(tmp_path: Path) -> None:
    """The real thing, under a temporary root: python3 -m venv, pip install of this checkout (dependencies from
    the package index, as on a Pi), the config filled in and checked by the installed filterd."""
    root = tmp_path / "root"
    args = ["--root", str(root), "--lan-address", "10.0.0.2", "--router", "10.0.0.1", "--python", INSTALL_PYTHON]
    first = install(*args)
    assert first.returncode == 0, first.stdout + first.stderr

    venv_filterd = root / "opt/filterd/venv/bin/filterd"
    version = subprocess.run([str(venv_filterd), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("filterd "), version.stderr
    config = root / "etc/filterd/filterd.yaml"
    text = config.read_text()
    assert text.startswith("# deploy/install.sh filled in: this machine's LAN address 10.0.0.2, the router 10.0.0.1.")
    cfg = load_config(config)
    assert [str(e) for e in cfg.dns.listen] == ["10.0.0.2:53", "127.0.0.1:53"]
    assert [str(e) for e in cfg.dns.upstreams] == ["10.0.0.1:53"]
    assert str(cfg.blocking.sinkhole.ipv4) == "10.0.0.2"
    assert cfg.blockpage is not None and [str(e) for e in cfg.blockpage.listen] == ["10.0.0.2:80"]
    assert "192.168.1.2" in text and "192.168.1.1" in text  # the header still explains the example addresses
    assert f"+ {venv_filterd} config check {config}\n{config}: ok\n" in first.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/filterd").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "var/lib/filterd").stat().st_mode) == 0o750
    assert (root / "etc/systemd/system/filterd.service").read_bytes() == UNIT.read_bytes()
    assert os.readlink(root / "usr/local/bin/filterd") == "/opt/filterd/venv/bin/filterd"
    skipped = {line.split()[3] for line in actions(first.stdout) if line.startswith("- skipped")}
    assert skipped <= {"useradd", "chown", "systemctl"} and {"chown", "systemctl"} <= skipped

    # Again: an upgrade in place, nothing to change in the config or the unit.
    second = install(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"venv {root}/opt/filterd/venv exists: upgrading filterd in it" in second.stdout
    assert f"{config} is up to date" in second.stdout
    assert not (root / "etc/filterd/filterd.yaml.new").exists()

    # An edited config is never overwritten: the shipped one goes beside it.
    edited = text.replace('  # contact: "Sam (07700 900123)"', '  contact: "Mum (07700 900456)"')
    assert edited != text
    config.write_text(edited)
    third = install(*args)
    assert third.returncode == 0, third.stdout + third.stderr
    assert config.read_text() == edited
    assert (root / "etc/filterd/filterd.yaml.new").read_text() == text
    assert f"{config} differs from the shipped config: kept as it is (yours)" in third.stdout

    removed = install("--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "opt/filterd").exists() and not (root / "etc/systemd/system/filterd.service").exists()
    assert not (root / "usr/local/bin/filterd").is_symlink()
    assert config.read_text() == edited and (root / "var/lib/filterd").is_dir()
    assert "kept /etc/filterd (the config) and /var/lib/filterd" in removed.stdout

    purged = install("--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/filterd").exists() and not (root / "var/lib/filterd").exists()


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        if IN_CI:
            pytest.fail("shellcheck is not installed (Debian: shellcheck; scripts/test.sh installs it)")
        pytest.skip("needs shellcheck (Debian: shellcheck)")
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


#: The unit's privileges, with setpriv instead of systemd: a user that is not root, only CAP_NET_BIND_SERVICE
#: (ambient, so the Python process gets it), and no way to gain more (deploy/systemd/filterd.service).
NOBODY = 65534
UNPRIVILEGED = [
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all,+net_bind_service",
    "--ambient-caps=-all,+net_bind_service",
    "--bounding-set=-all,+net_bind_service",
    "--no-new-privs",
]


def test_the_installed_filterd_serves_ports_53_and_80_without_root(tmp_path: Path) -> None:
    """install.sh's tree, run the way the unit runs it: not root, one capability, on the LAN address's ports
    53 and 80 in a network namespace; READY=1 once it answers. (The file system sandbox is systemd's alone.)"""
    require("ip", "dig", "setpriv")
    # Under /tmp with modes the unprivileged user can traverse (pytest's tmp_path is root's, 0700).
    root = Path(tempfile.mkdtemp(prefix="filterd-root-", dir="/tmp"))
    try:
        root.chmod(0o755)
        installed = install(
            "--root", str(root), "--lan-address", "192.168.1.2", "--router", "192.168.1.1", "--python", INSTALL_PYTHON
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        venv_python = root / "opt/filterd/venv/bin/python"
        probe = subprocess.run([*UNPRIVILEGED, str(venv_python), "-c", "import filterd"], capture_output=True)
        if probe.returncode != 0:
            reason = f"the venv's Python cannot run as an unprivileged user here: {probe.stderr.decode()[-300:]}"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        # What the unit and install.sh set up on a real system: the config readable by the service's group,
        # the state directory its own (StateDirectory=); the state under the temporary root here.
        config = root / "etc/filterd/filterd.yaml"
        state = root / "var/lib/filterd"
        config.write_text(config.read_text().replace("state_dir: /var/lib/filterd\n", f"state_dir: {state}\n"))
        for path in (root / "etc/filterd", config):
            os.chown(path, 0, NOBODY)
        os.chown(state, NOBODY, NOBODY)
        with lab(root) as net:
            _serve_unprivileged(net, root, config, state)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve_unprivileged(net: Lab, root: Path, config: Path, state: Path) -> None:
    pi, client = net.ns("pi"), net.ns("cl")
    net.link(pi, "eth0", client, "eth0")
    pi.ip("addr", "add", "192.168.1.2/24", "dev", "eth0")
    client.ip("addr", "add", "192.168.1.10/24", "dev", "eth0")
    filterd = str(root / "opt/filterd/venv/bin/filterd")
    proc = start_filterd(pi, config, command=[*UNPRIVILEGED, filterd, "serve", "--config", str(config)])
    status = Path(f"/proc/{proc.pid}/status").read_text()
    assert f"Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}\n" in status
    assert "CapEff:\t0000000000000400\n" in status  # CAP_NET_BIND_SERVICE (bit 10) and nothing else
    assert client.dig("@192.168.1.2", "omegle.com") == "192.168.1.2"
    assert client.dig("@192.168.1.2", "omegle.com", "+tcp") == "192.168.1.2"
    assert pi.dig("@127.0.0.1", "omegle.com") == "192.168.1.2"  # this machine's own lookups
    fetch = (
        "import urllib.error, urllib.request\n"
        "request = urllib.request.Request('http://192.168.1.2/', headers={'Host': 'omegle.com'})\n"
        "try:\n    urllib.request.urlopen(request, timeout=10)\n"
        "except urllib.error.HTTPError as exc:\n    print(exc.code)\n"
    )
    assert client.python(fetch).strip() == "403"  # the block page, on port 80
    token = state / "admin.token"
    assert token.stat().st_uid == NOBODY and stat.S_IMODE(token.stat().st_mode) == 0o600
