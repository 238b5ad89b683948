"""DNS over UDP on a wildcard address (`0.0.0.0:53`, `[::]:53`): each reply leaves from the address its query came to.

A socket bound to the wildcard address sends from whatever address the routing table picks, and a client drops
a reply that does not come from the server it asked (a Pi whose LAN address came from DHCP has several, and a
second address for the sinkhole is common). So the socket asks the kernel for each datagram's destination
(IP_PKTINFO, IPV6_RECVPKTINFO) and sends the reply with that address as its source (sendmsg with the same
control message). asyncio's datagram transports do not pass control messages through, so this server reads the
socket itself (`loop.add_reader`), a batch of datagrams per wake-up, and otherwise behaves as `UdpServer`:
synchronous answers at once, the rest as bounded tasks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from filterd.transport.udp import BATCH, SocketUdpServer

log = logging.getLogger(__name__)

#: Linux's IP_PKTINFO (Python 3.11 does not name it); IPv6's constants are in the socket module.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask for each datagram's destination address (raises OSError where the kernel cannot)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def reply_control(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The control message that makes a reply leave from the address the query came to (pure)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, _, destination = _IN_PKTINFO.unpack_from(data)
            return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, destination, b"\0" * 4))]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            destination, ifindex = _IN6_PKTINFO.unpack_from(data)
            return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(destination, ifindex))]
    return []


class WildcardUdpServer(SocketUdpServer):
    """One wildcard UDP socket served with destination-address replies."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        enable_pktinfo(self.sock)
        super().start(loop)

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, ancdata, _, addr = self.sock.recvmsg(65535, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                log.debug("udp: %s", exc)
                continue
            self.received(data, addr, (reply_control(ancdata), addr))

    def _send(self, reply: bytes, dest: tuple[list[tuple[int, int, bytes]], tuple[Any, ...]]) -> None:
        if self._closed:
            return
        control, addr = dest
        try:
            self.sock.sendmsg([reply], control, 0, addr)
        except (BlockingIOError, InterruptedError):
            self.overloaded += 1  # the socket buffer is full: drop, as a loaded resolver does (the client retries)
        except OSError as exc:
            log.debug("udp: sending to %s: %s", addr[0], exc)
