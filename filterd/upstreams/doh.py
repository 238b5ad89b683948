"""DNS over HTTPS to one upstream (RFC 8484): POST application/dns-message over HTTP/2 on httpx, whose pool keeps
the connection (many streams on it) until `idle_timeout` and reconnects when it is lost.

httpx[http2] because it is the one well-kept asyncio HTTP/2 client: aiohttp's client speaks HTTP/1.1 only,
aioquic's HTTP stack is HTTP/3 (QUIC) only; `bench/encrypted.py` measures what it costs per query.

filterd connects to the pinned address, or to the one `dns.bootstrap` gave for NAME, never through the system
resolver; TLS is verified for NAME (the SNI and the Host header carry it). Never clear text.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx

from filterd.config.schema import EncryptedUpstream
from filterd.dns import wire
from filterd.upstreams.dot import AddressLookup
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.tls import describe

MEDIA_TYPE = "application/dns-message"
IDLE_TIMEOUT = 30.0
ADDRESS_TTL = 300.0  # seconds a bootstrap answer for NAME is used
MAX_CONNECTIONS = 4  # HTTP/2 multiplexes: one is the norm, a few allow for a connection being replaced


class DohUpstream:
    def __init__(
        self,
        upstream: EncryptedUpstream,
        context: ssl.SSLContext,
        lookup: AddressLookup,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.lookup = lookup
        self.client = httpx.AsyncClient(
            http2=True,
            verify=context,
            trust_env=False,  # no proxy from the environment: DNS goes straight to the upstream
            follow_redirects=False,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=idle_timeout),
        )
        default_port = upstream.port == 443
        self.host_header = upstream.server_name if default_port else f"{upstream.server_name}:{upstream.port}"
        self._address: tuple[str, float] | None = None

    async def exchange(self, packet: bytes, question: bytes, timeout: float) -> bytes:
        up = self.upstream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        address = up.host or await self._lookup(timeout)
        host = f"[{address}]" if ":" in address else address
        try:
            response = await self.client.post(
                f"https://{host}:{up.port}{up.path}",
                content=b"\x00\x00" + packet[2:],  # ID 0 (RFC 8484 4.1): HTTP caches see one query as one
                headers={"host": self.host_header, "content-type": MEDIA_TYPE, "accept": MEDIA_TYPE},
                timeout=max(deadline - loop.time(), 0.01),
                extensions={"sni_hostname": up.server_name},
            )
        except httpx.TimeoutException:
            raise UpstreamError("timeout", "no HTTPS answer in time") from None
        except httpx.HTTPError as exc:
            self._address = None  # ask the bootstrap again next time
            cause = _ssl_cause(exc)
            if cause is not None:
                raise UpstreamError("tls", describe(cause)) from None
            raise UpstreamError("network", f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise UpstreamError("network", f"HTTP {response.status_code} from {up}")
        if response.headers.get("content-type", "").split(";")[0].strip().lower() != MEDIA_TYPE:
            raise UpstreamError("mismatch", f"content type {response.headers.get('content-type')!r}")
        data = response.content
        header = wire.response_header(data)
        if header is None or not header[1] & wire.QR or not wire.question_matches(data, question):
            raise UpstreamError("mismatch", "the reply is not an answer to the question asked")
        return packet[:2] + data[2:]

    async def _lookup(self, timeout: float) -> str:
        now = time.monotonic()
        if self._address is not None and self._address[1] > now:
            return self._address[0]
        name = self.upstream.server_name
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.lookup(name)
        except TimeoutError:
            raise UpstreamError("timeout", f"cannot look up {name} (dns.bootstrap) in time") from None
        except OSError as exc:
            raise UpstreamError("network", f"cannot look up {name} (dns.bootstrap): {exc}") from None
        if not addresses:
            raise UpstreamError("network", f"{name} has no address (dns.bootstrap)")
        self._address = (addresses[0], now + ADDRESS_TTL)
        return addresses[0]

    async def close(self) -> None:
        await self.client.aclose()


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the ssl one
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
