"""EncryptedUpstreams: one DoT or DoH client per `tls://` / `https://` upstream, behind one `exchange` that the
upstream stage calls as it calls the plain UDP/TCP exchange (query bytes in, reply bytes out, within a timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from filterd.config.schema import EncryptedUpstream, Endpoint
from filterd.upstreams.dot import DotUpstream
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.kept import IDLE_TIMEOUT, AddressLookup
from filterd.upstreams.tls import client_context

if TYPE_CHECKING:
    from filterd.upstreams.doh import DohUpstream


class EncryptedUpstreams:
    def __init__(
        self,
        upstreams: Iterable[Endpoint],
        lookup: AddressLookup,
        ca_file: Path | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        # one per protocol and pool: every connection verified the same way
        dot_context, doh_context = client_context(ca_file), client_context(ca_file, alpn=("h2",))
        self.clients: dict[EncryptedUpstream, DotUpstream | DohUpstream] = {}
        for upstream in upstreams:
            if not isinstance(upstream, EncryptedUpstream) or upstream in self.clients:
                continue
            if upstream.scheme == "tls":
                self.clients[upstream] = DotUpstream(upstream, dot_context, lookup, idle_timeout)
            else:
                from filterd.upstreams.doh import DohUpstream  # (h2: imported only when a DoH upstream is set)

                self.clients[upstream] = DohUpstream(upstream, doh_context, lookup, idle_timeout)

    def __bool__(self) -> bool:
        return bool(self.clients)

    async def exchange(self, upstream: EncryptedUpstream, packet: bytes, question: bytes, timeout: float) -> bytes:
        client = self.clients.get(upstream)
        if client is None:
            raise UpstreamError("network", f"{upstream} is not configured")
        return await client.exchange(packet, question, timeout)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()), return_exceptions=True)
