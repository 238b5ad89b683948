"""Who holds a port: the answer to "Address already in use", read from /proc (Linux).

`/proc/net/{udp,tcp,udp6,tcp6}` list every socket of this network namespace with its local address, state,
owner and inode; `/proc/PID/fd/*` are symlinks `socket:[INODE]`, which lead from the inode to the process.
Another user's /proc/PID/fd cannot be read without root, so the process may stay unknown: the owner (uid)
still is. The parsing is pure (text in, values out) and tested on sample text; only `find_holders` reads.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Protocol = Literal["udp", "tcp"]

#: /proc/net/tcp state of a listening socket; an unconnected bound UDP socket is 07 (CLOSE), and any UDP
#: socket bound to the port holds it, so UDP is matched in every state.
TCP_LISTEN = 0x0A

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """One line of /proc/net/{udp,tcp}[6]."""

    protocol: Protocol
    host: str
    port: int
    state: int
    uid: int
    inode: int


@dataclass(frozen=True, slots=True)
class Holder:
    """A socket in the way, and what is known of its process: pid and name, or only the owner's uid."""

    socket: BoundSocket
    pid: int | None = None
    name: str | None = None

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.socket.uid).pw_name
        except KeyError:
            return str(self.socket.uid)


def parse_address(text: str, byteorder: Literal["little", "big"] = sys.byteorder) -> tuple[str, int]:
    """`0100007F:0035` -> ("127.0.0.1", 53). The kernel prints each 32-bit word in host byte order."""
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    words = b"".join(int.from_bytes(raw[i : i + 4], byteorder).to_bytes(4, "big") for i in range(0, len(raw), 4))
    address = ipaddress.IPv4Address(words) if len(words) == 4 else ipaddress.IPv6Address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(hex_port, 16)


def parse_proc_net(
    text: str, protocol: Protocol, byteorder: Literal["little", "big"] = sys.byteorder
) -> list[BoundSocket]:
    """Every socket in one /proc/net table; malformed lines are skipped."""
    sockets = []
    for line in text.splitlines()[1:]:  # the first line is the column header
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            host, port = parse_address(fields[1], byteorder)
            state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
        except ValueError:
            continue
        sockets.append(BoundSocket(protocol, host, port, state, uid, inode))
    return sockets


def in_the_way(sockets: list[BoundSocket], host: str, port: int, protocol: Protocol) -> list[BoundSocket]:
    """The sockets that make binding (host, port) fail: the same port and protocol, bound to this address or
    to a wildcard (an IPv6 wildcard may be dual-stack and hold IPv4 too), listening if TCP; a wildcard `host`
    meets every socket of its family. Exact matches first."""
    wanted = ipaddress.ip_address(host)
    exact, wildcard = [], []
    for sock in sockets:
        if sock.protocol != protocol or sock.port != port or (protocol == "tcp" and sock.state != TCP_LISTEN):
            continue
        bound = ipaddress.ip_address(sock.host)
        if bound == wanted:
            exact.append(sock)
        elif bound.is_unspecified and (bound.version == wanted.version or bound.version == 6):
            wildcard.append(sock)
        elif wanted.is_unspecified and bound.version == wanted.version:
            exact.append(sock)
    return exact + wildcard


def socket_inode(link: str) -> int | None:
    """The inode of an fd symlink's target `socket:[12345]`, or None for any other file."""
    match = _SOCKET_LINK.fullmatch(link)
    return int(match.group(1)) if match else None


def find_holders(host: str, port: int, protocol: Protocol, proc: Path = Path("/proc")) -> list[Holder]:
    """The sockets holding (host, port) in this network namespace, each with its process where /proc shows it."""
    tables = [f"{protocol}", f"{protocol}6"]
    sockets: list[BoundSocket] = []
    for table in tables:
        try:
            sockets += parse_proc_net((proc / "net" / table).read_text(), protocol)
        except OSError:
            continue  # no IPv6 here, or no /proc
    blocking = in_the_way(sockets, host, port, protocol)
    if not blocking:
        return []
    owners = _processes_of({sock.inode for sock in blocking}, proc)
    holders = []
    for sock in blocking:
        pid = owners.get(sock.inode)
        holders.append(Holder(sock, pid, _command_name(pid, proc) if pid is not None else None))
    return holders


def _processes_of(inodes: set[int], proc: Path) -> dict[int, int]:
    """inode -> pid for the sockets among `inodes` whose process's fds this user may read."""
    found: dict[int, int] = {}
    try:
        pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    except OSError:
        return found
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # another user's process, or it exited
        for fd in fds:
            try:
                inode = socket_inode(os.readlink(fd_dir / fd))
            except OSError:
                continue
            if inode in inodes and inode not in found:
                found[inode] = pid
        if len(found) == len(inodes):
            break
    return found


def _command_name(pid: int, proc: Path) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().strip() or None
    except OSError:
        return None


#: What to do about the usual holders of port 53, by process name (/proc/PID/comm).
_ADVICE = {
    "systemd-resolved": (
        "turn its stub listener off (DNSStubListener=no in a file in /etc/systemd/resolved.conf.d/, then "
        "`systemctl restart systemd-resolved`) and point /etc/resolv.conf at filterd or the router"
    ),
    "dnsmasq": (
        "stop it (`systemctl disable --now dnsmasq`) or, if it serves DHCP here, turn only its DNS off with "
        "port=0 in its config"
    ),
}

#: Where the deployment guide explains freeing the port.
GUIDE = 'deploy/README.md, "Port 53 is taken"'


def describe(holders: list[Holder], port: int) -> str:
    """What holds the port and what to do, for the "Address already in use" message."""
    if not holders:
        return f"another program holds this port; `ss -lupnt 'sport = :{port}'` shows which (see {GUIDE})"
    first = holders[0]
    where = f"port {port} on {_host(first.socket.host)}"
    if first.name is not None:
        who = f"{first.name} (pid {first.pid})"
    else:
        who = f"another program, of user {first.user} (`sudo ss -lupnt 'sport = :{port}'` shows which)"
    advice = _ADVICE.get(first.name or "", "stop it, or move it to another port")
    return f"{where} is held by {who}: {advice}; see {GUIDE}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
