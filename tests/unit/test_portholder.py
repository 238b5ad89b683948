"""Who holds port 53: /proc/net tables and fd links, parsed from sample text and a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filterd.portholder import (
    TCP_LISTEN,
    BoundSocket,
    Holder,
    describe,
    find_holders,
    in_the_way,
    parse_address,
    parse_proc_net,
    socket_inode,
)

#: /proc/net/udp on a little-endian machine (x86, ARM): systemd-resolved on 127.0.0.53:53 and 127.0.0.54:53,
#: dnsmasq on 0.0.0.0:53, a DHCP client on :68, one line cut short.
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   991        0 16235 2 0000000000000000 0
  124: 3600007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   991        0 16237 2 0000000000000000 0
  125: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   113        0 20001 2 0000000000000000 0
  126: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 15000 2 0000000000000000 0
  127: 00000000:0035
"""

#: /proc/net/tcp6: a listener on [::]:53 (may be dual-stack), one on [fd00::2]:80, a connection from port 53.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0 30001 1 0000000000000000 100 0 0 10 0
   1: 000000FD000000000000000002000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 30002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0035 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 30003 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501 (kernel lines, as they are)


@pytest.mark.parametrize(
    ("text", "byteorder", "expected"),
    [
        ("0100007F:0035", "little", ("127.0.0.1", 53)),
        ("7F000001:0035", "big", ("127.0.0.1", 53)),
        ("0201A8C0:0050", "little", ("192.168.1.2", 80)),
        ("00000000000000000000000000000000:0035", "little", ("::", 53)),
        ("000080FE00000000FF000002FE000003:0035", "little", ("fe80::200:ff:300:fe", 53)),
        ("0000000000000000FFFF00000100007F:0035", "little", ("127.0.0.1", 53)),  # v4-mapped: an IPv4 holder
    ],
)
def test_parse_address(text: str, byteorder: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, byteorder) == expected  # type: ignore[arg-type]


def test_parse_proc_net_reads_every_whole_line() -> None:
    sockets = parse_proc_net(UDP, "udp", "little")
    assert [(s.host, s.port, s.uid, s.inode) for s in sockets] == [
        ("127.0.0.53", 53, 991, 16235),
        ("127.0.0.54", 53, 991, 16237),
        ("0.0.0.0", 53, 113, 20001),
        ("0.0.0.0", 68, 0, 15000),
    ]
    tcp6 = parse_proc_net(TCP6, "tcp", "little")
    assert [(s.host, s.port, s.state) for s in tcp6] == [("::", 53, 10), ("fd00::2", 80, 10), ("127.0.0.1", 53, 1)]


def test_what_is_in_the_way() -> None:
    udp = parse_proc_net(UDP, "udp", "little")
    tcp6 = parse_proc_net(TCP6, "tcp", "little")
    # The exact address first, then the wildcards that also cover it.
    assert [s.inode for s in in_the_way(udp, "127.0.0.53", 53, "udp")] == [16235, 20001]
    assert [s.inode for s in in_the_way(udp, "192.168.1.2", 53, "udp")] == [20001]
    assert in_the_way(udp, "192.168.1.2", 5353, "udp") == []
    assert in_the_way(udp, "127.0.0.53", 53, "tcp") == []  # another protocol
    # TCP: only listeners; [::] may be dual-stack, so it is in the way of IPv4 too.
    assert [s.inode for s in in_the_way(tcp6, "127.0.0.1", 53, "tcp")] == [30001]
    assert [s.inode for s in in_the_way(tcp6, "fd00::2", 80, "tcp")] == [30002]
    assert in_the_way(tcp6, "fd00::3", 80, "tcp") == []
    # An IPv4 wildcard does not hold IPv6.
    v4_any = [BoundSocket("udp", "0.0.0.0", 53, 7, 0, 1)]
    assert in_the_way(v4_any, "fd00::2", 53, "udp") == []
    assert in_the_way(v4_any, "0.0.0.0", 53, "udp") == v4_any


@pytest.mark.parametrize(
    ("link", "inode"),
    [("socket:[16235]", 16235), ("pipe:[5]", None), ("/dev/null", None), ("socket:[]", None)],
)
def test_socket_inode(link: str, inode: int | None) -> None:
    assert socket_inode(link) == inode


def _fake_proc(root: Path, processes: dict[int, tuple[str, list[int]]]) -> Path:
    """A /proc with net/udp and, per pid, comm and fd symlinks to sockets."""
    (root / "net").mkdir(parents=True)
    (root / "net" / "udp").write_text(UDP)
    for pid, (comm, inodes) in processes.items():
        fd = root / str(pid) / "fd"
        fd.mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        os.symlink("/dev/null", fd / "0")
        for number, inode in enumerate(inodes, start=3):
            os.symlink(f"socket:[{inode}]", fd / str(number))
    (root / "self").mkdir()  # not a pid: skipped
    return root


def test_find_holders_follows_inode_to_process(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {1: ("systemd", [15000]), 412: ("systemd-resolved", [16237, 16235])})
    holders = find_holders("127.0.0.53", 53, "udp", proc)
    assert [(h.pid, h.name, h.socket.inode) for h in holders] == [
        (412, "systemd-resolved", 16235),
        (None, None, 20001),  # the wildcard socket: no readable process owns it
    ]
    assert find_holders("127.0.0.1", 5353, "udp", proc) == []


def test_find_holders_without_tcp6_or_proc(tmp_path: Path) -> None:
    assert find_holders("127.0.0.1", 53, "tcp", tmp_path) == []  # no /proc/net/tcp*: nothing known


def test_describe_names_the_holder_and_the_fix() -> None:
    resolved = Holder(BoundSocket("udp", "127.0.0.53", 53, 7, 991, 16235), 412, "systemd-resolved")
    text = describe([resolved], 53)
    assert text.startswith("port 53 on 127.0.0.53 is held by systemd-resolved (pid 412): ")
    assert "DNSStubListener=no" in text and "/etc/systemd/resolved.conf.d/" in text
    assert "systemctl restart systemd-resolved" in text and "/etc/resolv.conf" in text
    assert text.endswith('see deploy/README.md, "Port 53 is taken"')

    dnsmasq = Holder(BoundSocket("tcp", "::", 53, TCP_LISTEN, 113, 30001), 900, "dnsmasq")
    text = describe([dnsmasq], 53)
    assert text.startswith("port 53 on [::] is held by dnsmasq (pid 900): ")
    assert "systemctl disable --now dnsmasq" in text and "port=0" in text

    other = describe([Holder(BoundSocket("udp", "0.0.0.0", 53, 7, 0, 1), 77, "named")], 53)
    assert other.startswith("port 53 on 0.0.0.0 is held by named (pid 77): stop it, or move it to another port")


def test_describe_when_the_process_is_hidden() -> None:
    """Another user's /proc/PID/fd is unreadable without root: say whose program it is, and how to see it."""
    hidden = Holder(BoundSocket("udp", "0.0.0.0", 53, 7, 0, 1))
    text = describe([hidden], 53)
    assert text.startswith("port 53 on 0.0.0.0 is held by another program, of user root (")
    assert "sudo ss -lupnt 'sport = :53'" in text
    assert describe([], 8080).startswith("another program holds this port; `ss -lupnt 'sport = :8080'` shows which")
