#!/usr/bin/env python3
"""The Python floor: a benchmark reference, not a resolver. The least a Python DNS server on filterd's event loop
does for each UDP query, so that run.py can say how far filterd is from what Python itself allows on this machine.

    python3 bench/floor.py --port 5300 --list blocklist.domains --upstream 127.0.0.1:5301

- Blocked: the question name and each parent, sliced from the packet at its label boundaries, looked up in a
  Python set of the list's names (wire format, lower case): A 0.0.0.0 (NODATA for other types), as dnsmasq's
  `addn-hosts` and unbound's `always_null` answer. The set costs about 100 bytes a name, against the 17 of
  filterd's mapped table.
- Otherwise the reply kept for the question's bytes, with the client's ID: no TTL kept or lowered, no EDNS, no
  group, no rate limit, no log, no metric.
- Otherwise forwarded to the upstream under a new ID, kept when it comes back.

Everything filterd adds is missing here on purpose: access control, client groups, allow and local entries,
schedules, the bypass signals, safe search, the CNAME and rebinding checks, EDNS and EDE, TTLs, serve-stale, the
counting and the query log. The gap between the two is their price. Listens on --addr (127.0.0.1) only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
from typing import Any

#: A 0.0.0.0, TTL 60, its owner the question's name (a pointer to offset 12)
_ANSWER_A = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
_T_A = b"\x00\x01"


def wire_name(text: str) -> bytes | None:
    labels = text.strip().rstrip(".").lower().split(".")
    if not all(0 < len(label) < 64 for label in labels):
        return None
    out = b"".join(bytes((len(label),)) + label.encode("ascii", "replace") for label in labels) + b"\x00"
    return out if len(out) <= 255 else None


def read_names(path: str) -> set[bytes]:
    names: set[bytes] = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if parts and not parts[0].startswith("#"):
                name = wire_name(parts[-1])  # a domains line, or a hosts line's last field
                if name is not None:
                    names.add(name)
    return names


class Floor(asyncio.DatagramProtocol):
    def __init__(self, blocked: set[bytes], upstream: tuple[str, int]) -> None:
        self.blocked = blocked
        self.upstream = upstream
        self.kept: dict[bytes, bytes] = {}
        self.pending: dict[int, tuple[bytes, Any, bytes]] = {}
        self.next_id = 0
        self.transport: Any = None
        self.out: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        n = len(data)
        if n < 17 or data[2] & 0x80:
            return
        i = 12
        starts = []
        while i < n:
            length = data[i]
            if length == 0:
                break
            if length > 63:
                return
            starts.append(i)
            i += length + 1
        else:
            return
        end = i + 5
        if end > n:
            return
        name = data[12 : i + 1].lower()
        blocked = self.blocked
        for start in starts:
            if name[start - 12 :] in blocked:
                answers = b"\x00\x01" if data[i + 1 : i + 3] == _T_A else b"\x00\x00"
                head = data[:2] + bytes((0x80 | (data[2] & 0x01), 0x80)) + b"\x00\x01" + answers + b"\x00\x00\x00\x00"
                self.transport.sendto(head + data[12:end] + (_ANSWER_A if answers == b"\x00\x01" else b""), addr)
                return
        key = data[12:end].lower()
        reply = self.kept.get(key)
        if reply is not None:
            self.transport.sendto(data[:2] + reply[2:], addr)
            return
        self.next_id = qid = (self.next_id + 1) & 0xFFFF
        self.pending[qid] = (data[:2], addr, key)
        self.out.sendto(
            struct.pack("!H", qid) + data[2:4] + b"\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:end], self.upstream
        )


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        waiting = self.floor.pending.pop(struct.unpack_from("!H", data)[0], None)
        if waiting is None:
            return
        qid, client, key = waiting
        self.floor.kept[key] = data
        self.floor.transport.sendto(qid + data[2:], client)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    blocked = read_names(args.list) if args.list else set()
    host, _, port = args.upstream.rpartition(":")
    floor = Floor(blocked, (host, int(port)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.addr, args.port))
    await loop.create_datagram_endpoint(lambda: floor, sock=sock)
    floor.out, _ = await loop.create_datagram_endpoint(lambda: Upstream(floor), remote_addr=None, family=socket.AF_INET)
    print(f"floor: {len(blocked):,} names, on {args.addr}:{args.port}, loop {type(loop).__module__}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--list", help="a domains or hosts file (none: nothing blocked)")
    ap.add_argument("--upstream", required=True, help="HOST:PORT")
    args = ap.parse_args(argv)
    try:
        import uvloop  # the loop filterd runs on wherever uvloop has a wheel
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
