"""Who is who on the network, for client groups that name MAC addresses or host names: read in the background
(every `interval` seconds), never on the query path.

- MAC addresses from the kernel's neighbour table: `/proc/net/arp` (IPv4) and `ip -6 neigh` (IPv6), so a phone
  keeps its group when it rotates its IPv6 privacy address; and from DHCP leases.
- Names from `dns.records`, DHCP lease files (dnsmasq's `dnsmasq.leases`, Kea's `kea-leases4.csv` and
  `kea-leases6.csv`) and reverse (PTR) lookups of the clients seen, asked of the upstreams.

The parsers are pure; `DirectoryRefresher` is the I/O shell that hands each new snapshot to the client stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ipaddress
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from filterd.groups.model import Directory, Group, normalize_mac
from filterd.tasks import cancel

log = logging.getLogger(__name__)

ARP_TABLE = Path("/proc/net/arp")
_INCOMPLETE = "00:00:00:00:00:00"
#: At most this many reverse lookups per refresh (the clients seen most recently first).
_REVERSE_PER_ROUND = 64


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().partition("%")[0]))
    except ValueError:
        return None


def parse_proc_arp(text: str) -> dict[str, str]:
    """`/proc/net/arp` -> {IPv4 address: MAC}; incomplete entries (flags 0x0, MAC 00:..:00) are left out."""
    out: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[2] == "0x0":
            continue
        ip, mac = _ip(parts[0]), normalize_mac(parts[3])
        if ip is not None and mac is not None and mac != _INCOMPLETE:
            out[ip] = mac
    return out


def parse_ip_neigh(text: str) -> dict[str, str]:
    """`ip neigh` output -> {address: MAC} (`ADDR dev IF lladdr MAC STATE`; FAILED and INCOMPLETE left out)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or "lladdr" not in parts or parts[-1] in {"FAILED", "INCOMPLETE"}:
            continue
        at = parts.index("lladdr")
        ip = _ip(parts[0])
        mac = normalize_mac(parts[at + 1]) if at + 1 < len(parts) else None
        if ip is not None and mac is not None:
            out[ip] = mac
    return out


def parse_dnsmasq_leases(text: str) -> list[tuple[str, str | None, str | None]]:
    """dnsmasq's lease file -> [(address, MAC, hostname)]: `EXPIRY MAC IP HOSTNAME CLIENT-ID` per line; IPv6
    lines (after `duid ...`) have an IAID where the MAC is."""
    out: list[tuple[str, str | None, str | None]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        ip = _ip(parts[2])
        if ip is None:
            continue
        name = parts[3].lower() if parts[3] != "*" else None
        out.append((ip, normalize_mac(parts[1]), name))
    return out


def parse_kea_leases(text: str) -> list[tuple[str, str | None, str | None]]:
    """Kea's memfile CSV (leases4 or leases6) -> [(address, MAC, hostname)]; expired-state rows skipped."""
    out: list[tuple[str, str | None, str | None]] = []
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        ip = _ip(row.get("address") or "")
        if ip is None or (row.get("state") or "0").strip() not in {"0", ""}:
            continue
        name = (row.get("hostname") or "").strip().lower().rstrip(".") or None
        out.append((ip, normalize_mac(row.get("hwaddr") or ""), name))
    return out


def parse_leases(text: str) -> list[tuple[str, str | None, str | None]]:
    """Either format, told apart by Kea's CSV header."""
    return parse_kea_leases(text) if text.startswith("address,") else parse_dnsmasq_leases(text)


def short_names(name: str) -> set[str]:
    """A name and its first label: `tablet.lan` answers to `tablet.lan` and `tablet`."""
    name = name.lower().rstrip(".")
    return {name, name.split(".", 1)[0]} if name else set()


def build_directory(
    neighbours: Mapping[str, str],
    records: Iterable[tuple[str, Iterable[object]]],
    leases: Iterable[tuple[str, str | None, str | None]],
    reverse: Mapping[str, str],
) -> Directory:
    """One snapshot from every source: MACs from the neighbour table (leases fill gaps), names from records,
    leases and reverse lookups."""
    macs = dict(neighbours)
    names: dict[str, set[str]] = {}
    for name, addresses in records:
        for address in addresses:
            names.setdefault(str(address), set()).update(short_names(name))
    for ip, mac, leased in leases:
        if mac is not None:
            macs.setdefault(ip, mac)
        if leased:
            names.setdefault(ip, set()).update(short_names(leased))
    for ip, name in reverse.items():
        names.setdefault(ip, set()).update(short_names(name))
    return Directory(macs=macs, names={ip: frozenset(n) for ip, n in names.items()})


class DirectoryRefresher:
    """Re-reads the sources every `interval` seconds and hands the snapshot to `apply` (the client stage)."""

    def __init__(
        self,
        groups: Iterable[Group],
        apply: Callable[[Directory], None],
        seen: Callable[[], Iterable[str]],
        *,
        records: Iterable[tuple[str, Iterable[object]]] = (),
        lease_files: Iterable[Path] = (),
        reverse: Callable[[str], Awaitable[list[str]]] | None = None,
        interval: float = 30.0,
        arp_table: Path = ARP_TABLE,
        ip_command: str | None = "ip",
    ) -> None:
        groups = tuple(groups)
        self.wants_macs = any(g.macs for g in groups)
        self.wants_names = any(g.names for g in groups)
        self.apply = apply
        self.seen = seen
        self.records = tuple(records)
        self.lease_files = tuple(lease_files)
        self.reverse = reverse
        self.interval = interval
        self.arp_table = arp_table
        self.ip_command = shutil.which(ip_command) if ip_command else None
        self._reverse: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last = 0.0

    def poke(self) -> None:
        """A client not seen before: look again soon (at most once a second), so a new device gets its group
        within a second instead of at the next round."""
        self._wake.set()

    def initial(self) -> Directory:
        """What is known without waiting (dns.records and the lease files), for the first queries after start."""
        return build_directory({}, self.records, self._read_leases() if self.lease_files else [], {})

    @property
    def needed(self) -> bool:
        return self.wants_macs or self.wants_names

    async def refresh(self) -> Directory:
        neighbours = await self._neighbours() if self.wants_macs else {}
        leases = await asyncio.to_thread(self._read_leases)
        if self.wants_names and self.reverse is not None:
            await self._reverse_lookups({ip for ip, _, _ in leases} | {str(a) for _, v in self.records for a in v})
        directory = build_directory(neighbours, self.records, leases, self._reverse)
        self.apply(directory)
        return directory

    async def _neighbours(self) -> dict[str, str]:
        table: dict[str, str] = {}
        with contextlib.suppress(OSError):
            table.update(parse_proc_arp(await asyncio.to_thread(self.arp_table.read_text)))
        if self.ip_command is not None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.ip_command,
                    "-6",
                    "neigh",
                    "show",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 5)
                table.update(parse_ip_neigh(out.decode("utf-8", "replace")))
            except (OSError, TimeoutError) as exc:
                log.debug("groups: ip -6 neigh failed: %s", exc)
        return table

    def _read_leases(self) -> list[tuple[str, str | None, str | None]]:
        out: list[tuple[str, str | None, str | None]] = []
        for path in self.lease_files:
            try:
                out += parse_leases(path.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                log.warning("groups: cannot read the DHCP leases %s: %s", path, exc.strerror or exc)
        return out

    async def _reverse_lookups(self, named: set[str]) -> None:
        assert self.reverse is not None
        todo = [ip for ip in self.seen() if ip not in named and ip not in self._reverse][:_REVERSE_PER_ROUND]
        for ip in todo:
            try:
                names = await self.reverse(ipaddress.ip_address(ip).reverse_pointer)
            except (OSError, ValueError):
                continue
            if names:
                self._reverse[ip] = names[0].rstrip(".").lower()

    def start(self) -> None:
        if self.needed and self._task is None:
            self._task = asyncio.create_task(self._run(), name="filterd-client-directory")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            self._last = loop.time()
            try:
                await self.refresh()
            except Exception:  # keep the last snapshot; try again next round
                log.exception("groups: refreshing the client directory failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            await asyncio.sleep(max(0.0, self._last + 1.0 - loop.time()))  # at most one refresh a second

    async def stop(self) -> None:
        await cancel([self._task])
        self._task = None
