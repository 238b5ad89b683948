"""The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt, section 2.2): pure parsing and building.

A load balancer in front of filterd (dnsdist's `newServer{..., useProxyProtocol=true}`) puts this binary header
before each UDP query and at the start of each TCP connection, so filterd learns the real client's address:

    12 bytes  signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
     1 byte   version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
     1 byte   address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (1 STREAM, 2 DGRAM)
     2 bytes  length of what follows (big endian): the addresses, then TLVs (skipped)
    INET: source and destination address (4 bytes each), source and destination port (2 bytes each);
    INET6: the same with 16-byte addresses.

Every length is checked against the bytes at hand before it is read; anything else raises `ProxyError`.
LOCAL (a proxy's own health check: `ProxyHeader.local`) and the families that carry no IP address leave the client
unknown (`ProxyHeader.source` is None): the caller uses the connection's own peer, as the specification says.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The fixed part: signature, version/command, family/transport, length.
FIXED = 16
#: Most a header may say follows the fixed part (the length field's range).
MAX_BODY = 0xFFFF

_LOCAL, _PROXY = 0x0, 0x1
_INET, _INET6 = 0x1, 0x2
_STREAM, _DGRAM = 0x1, 0x2
_INET_ADDRESSES = struct.Struct("!4s4sHH")
_INET6_ADDRESSES = struct.Struct("!16s16sHH")


class ProxyError(ValueError):
    """Not a valid PROXY protocol v2 header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    #: Bytes the header takes: the DNS message starts here (UDP), or the stream's first query does (TCP).
    length: int
    #: The client's address as text, or None: LOCAL, or a family without an IP address (use the peer's).
    source: str | None = None
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0
    #: A LOCAL header: the proxy's own query (dnsdist's health check), no client's.
    local: bool = False


def body_length(fixed: bytes) -> int:
    """How many bytes follow the 16-byte fixed part (for a stream: read exactly that many next)."""
    if len(fixed) < FIXED:
        raise ProxyError(f"{len(fixed)} bytes, shorter than the {FIXED}-byte header")
    if not fixed.startswith(SIGNATURE):
        raise ProxyError("no PROXY v2 signature")
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != 2:
        raise ProxyError(f"version {version}, not 2")
    if command not in (_LOCAL, _PROXY):
        raise ProxyError(f"unknown command {command}")
    return int.from_bytes(fixed[14:16], "big")


def parse(data: bytes) -> ProxyHeader:
    """The header at the start of `data` (which may go on: the DNS message); ProxyError if there is none."""
    body = body_length(data)
    end = FIXED + body
    if len(data) < end:
        raise ProxyError(f"the header says {body} bytes follow, {len(data) - FIXED} do")
    if data[12] & 0x0F == _LOCAL:
        return ProxyHeader(end, local=True)
    family, transport = data[13] >> 4, data[13] & 0x0F
    if transport not in (0, _STREAM, _DGRAM):
        raise ProxyError(f"unknown transport {transport}")
    if family == _INET:
        addresses, size = _INET_ADDRESSES, 4
    elif family == _INET6:
        addresses, size = _INET6_ADDRESSES, 16
    elif family in (0, 3):  # UNSPEC, UNIX: no IP address to take
        return ProxyHeader(end)
    else:
        raise ProxyError(f"unknown address family {family}")
    if body < addresses.size:
        raise ProxyError(f"{body} bytes cannot hold the addresses ({addresses.size} needed)")
    src, dst, sport, dport = addresses.unpack_from(data, FIXED)
    source = ipaddress.IPv4Address(src) if size == 4 else ipaddress.IPv6Address(src)
    destination = ipaddress.IPv4Address(dst) if size == 4 else ipaddress.IPv6Address(dst)
    return ProxyHeader(end, str(source), sport, str(destination), dport)


def build(
    source: str | None,
    source_port: int = 0,
    destination: str | None = None,
    destination_port: int = 0,
    *,
    stream: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    """A header for these addresses (source None: a LOCAL header). For tests and for a proxy written in Python."""
    if source is None:
        return SIGNATURE + bytes((0x20 | _LOCAL, 0)) + len(tlvs).to_bytes(2, "big") + tlvs
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(destination if destination is not None else ("::" if src.version == 6 else "0.0.0.0"))
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    family, addresses = (_INET, _INET_ADDRESSES) if src.version == 4 else (_INET6, _INET6_ADDRESSES)
    body = addresses.pack(src.packed, dst.packed, source_port, destination_port) + tlvs
    if len(body) > MAX_BODY:
        raise ValueError("TLVs too long")
    kind = (family << 4) | (_STREAM if stream else _DGRAM)
    return SIGNATURE + bytes((0x20 | _PROXY, kind)) + len(body).to_bytes(2, "big") + body
