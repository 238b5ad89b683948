#!/usr/bin/env python3
"""The container's health check (Docker HEALTHCHECK, Kubernetes readiness): ask filterd `localhost. A` over UDP
and exit 0 only for a NOERROR answer with the same ID. filterd answers that name itself (no upstream, no list),
so a failure means filterd itself does not answer DNS. Standard library only. Usage: filterd-healthcheck [HOST [PORT]]
"""

from __future__ import annotations

import os
import socket
import sys


def probe(host: str = "127.0.0.1", port: int = 53, timeout: float = 3.0) -> str | None:
    """None when filterd answered; else what went wrong."""
    ident = os.urandom(2)
    # header: ID, RD, one question; then localhost. A IN
    query = ident + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x09localhost\x00\x00\x01\x00\x01"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (host, port))
            reply = sock.recv(4096)
        except OSError as exc:
            return f"no answer from {host}:{port}: {exc}"
    if len(reply) < 12 or reply[:2] != ident or not reply[2] & 0x80:
        return f"not a reply to the probe from {host}:{port}"
    if reply[3] & 0x0F != 0 or int.from_bytes(reply[6:8], "big") == 0:
        return f"{host}:{port} answered rcode {reply[3] & 0x0F} with {int.from_bytes(reply[6:8], 'big')} records"
    return None


if __name__ == "__main__":
    problem = probe(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 53)
    if problem is not None:
        print(f"filterd-healthcheck: {problem}", file=sys.stderr)
    sys.exit(0 if problem is None else 1)
