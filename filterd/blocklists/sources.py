"""Fetching list bytes over HTTP: the blocklists package's only network I/O.

A download is conditional (If-None-Match / If-Modified-Since from the stored copy), bounded in time
(`timeout`) and size (`max_bytes`, checked while streaming, so an endless body costs at most that much
memory), and retried with exponential backoff when the failure may be passing (timeouts, resets, HTTP 5xx,
429). The list's host is resolved by asking `dns.upstreams` directly (`UpstreamDnsResolver`): the system
resolver may well be filterd itself, which must not depend on its own answers to fetch its lists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from dnslib import QTYPE, DNSRecord

from filterd import __version__
from filterd.config.schema import Endpoint
from filterd.config.units import format_size
from filterd.dns import wire
from filterd.errors import FilterdError
from filterd.pipeline.upstream import UpstreamError, exchange_tcp, exchange_udp

log = logging.getLogger(__name__)

__all__ = ["Download", "FetchError", "ListFetcher", "RetryPolicy", "UpstreamDnsResolver"]

USER_AGENT = f"filterd/{__version__} (DNS filter; list subscription)"
_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Download:
    """One completed request: `body` is None when the server said the stored copy is current (304)."""

    body: bytes | None
    etag: str | None
    last_modified: str | None

    @property
    def not_modified(self) -> bool:
        return self.body is None


class FetchError(FilterdError):
    """A download that did not give a complete body. `kind`: http, timeout, network, dns, truncated, too_large."""

    def __init__(self, kind: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry = retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries in all; the wait before try n+1 is `first_delay` * 2**(n-1), less up to half (jitter)."""

    attempts: int = 3
    first_delay: float = 30.0

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        base: float = self.first_delay * 2 ** (failed_attempts - 1)
        return base * rng.uniform(0.5, 1.0)


class ListFetcher:
    """Downloads list files over one aiohttp session (created on first use, inside the running loop)."""

    def __init__(self, resolver: AbstractResolver | None = None, *, rng: random.Random | None = None) -> None:
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()

    async def fetch(
        self,
        url: str,
        *,
        timeout: float,
        max_bytes: int,
        etag: str | None = None,
        last_modified: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Download:
        """The body of `url`, or a 304 Download; raises FetchError after the last attempt failed."""
        policy = retry or RetryPolicy()
        failed = 0
        while True:
            try:
                return await self._fetch_once(url, timeout, max_bytes, etag, last_modified)
            except FetchError as exc:
                failed += 1
                if not exc.retry or failed >= policy.attempts:
                    if failed > 1:
                        raise FetchError(exc.kind, f"{exc} ({failed} attempts)", retry=exc.retry) from None
                    raise
                wait = policy.delay(failed, self._rng)
                log.info("%s: %s; trying again in %.1fs", url, exc, wait)
                await asyncio.sleep(wait)

    async def _fetch_once(
        self, url: str, timeout: float, max_bytes: int, etag: str | None, last_modified: str | None
    ) -> Download:
        headers = {"User-Agent": USER_AGENT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        session = self._open_session()
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        try:
            async with session.get(url, headers=headers, timeout=limits) as response:
                if response.status == 304:
                    return Download(
                        None, response.headers.get("ETag", etag), response.headers.get("Last-Modified", last_modified)
                    )
                if response.status != 200:
                    raise FetchError(
                        "http",
                        f"HTTP {response.status} {response.reason or ''}".rstrip(),
                        retry=response.status in _RETRY_STATUS,
                    )
                body = await _read_capped(response, max_bytes)
                return Download(body, response.headers.get("ETag"), response.headers.get("Last-Modified"))
        except TimeoutError:
            raise FetchError("timeout", f"no complete answer within {timeout:g}s", retry=True) from None
        except aiohttp.ClientPayloadError as exc:
            raise FetchError("truncated", f"the body ended early (truncated): {_short(exc)}", retry=True) from None
        except aiohttp.ClientConnectorDNSError as exc:
            raise FetchError("dns", f"cannot resolve the host: {_reason(exc.os_error)}", retry=True) from None
        except aiohttp.TooManyRedirects:
            raise FetchError("http", "too many redirects", retry=False) from None
        except aiohttp.InvalidURL as exc:
            raise FetchError("http", f"invalid URL: {exc}", retry=False) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError("network", _reason(exc), retry=True) from None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=self._resolver, limit_per_host=2, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body, but never more than `max_bytes` of it in memory; a short body is `truncated`."""
    declared = response.content_length
    compressed = bool(response.headers.get("Content-Encoding", "identity") != "identity")
    if declared is not None and not compressed and declared > max_bytes:
        announced = f"the server announces {declared} bytes, over max_bytes ({format_size(max_bytes)})"
        raise FetchError("too_large", announced, retry=False)
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError("too_large", f"the body is over max_bytes ({format_size(max_bytes)})", retry=False)
    if declared is not None and not compressed and len(body) != declared:
        raise FetchError("truncated", f"the body ended early (truncated): {len(body)} of {declared} bytes", retry=True)
    return bytes(body)


def _short(exc: aiohttp.ClientPayloadError) -> str:
    """aiohttp's nested payload message cut down to `N of M bytes` when it says so."""
    m = re.search(r"received (\d+) of (\d+) bytes", str(exc))
    return f"{m.group(1)} of {m.group(2)} bytes" if m else _reason(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class UpstreamDnsResolver(AbstractResolver):
    """aiohttp's resolver for list hosts: A/AAAA asked of `dns.upstreams` in order, never the system resolver.

    An IP literal needs no lookup. NXDOMAIN ends the lookup at once; SERVFAIL, REFUSED, timeouts and
    network errors move on to the next upstream within one `timeout`.
    """

    def __init__(self, upstreams: Sequence[Endpoint], timeout: float = 5.0, exchange: Exchange | None = None) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        #: The running resolver's exchange (it speaks DoT and DoH to encrypted upstreams); None: plain UDP/TCP.
        self.exchange = exchange

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            literal = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            return [_result(host, str(address), port, literal)]
        wanted = {
            socket.AF_INET: [("A", socket.AF_INET)],
            socket.AF_INET6: [("AAAA", socket.AF_INET6)],
        }.get(family, [("A", socket.AF_INET), ("AAAA", socket.AF_INET6)])
        outcomes = await asyncio.gather(*(self.lookup(host, qtype) for qtype, _ in wanted), return_exceptions=True)
        results: list[ResolveResult] = []
        problems: list[str] = []
        for (_, fam), outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, OSError):
                    raise outcome
                problems.append(str(outcome))
            else:
                results += [_result(host, addr, port, fam) for addr in outcome]
        if not results:
            raise OSError(problems[0] if problems else f"{host}: no address (no A or AAAA record)")
        return results

    async def lookup(self, name: str, qtype: str) -> list[str]:
        """The addresses of `name` (`qtype` A or AAAA); [] when it has none; OSError when no upstream answered."""
        request = DNSRecord.question(name.rstrip("."), qtype)
        packet = request.pack()
        question = packet[12:]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[str] = []
        for index, upstream in enumerate(self.upstreams):
            share = (deadline - loop.time()) / (len(self.upstreams) - index)
            if share <= 0.001:
                break
            try:
                if self.exchange is not None:
                    response = await self.exchange(upstream, packet, question, share)
                else:
                    response, _ = await exchange_udp(upstream, packet, question, share)
                    if response[2] & 0x02:  # TC: ask again over TCP
                        response = await exchange_tcp(upstream, packet, question, max(share, 0.5))
            except UpstreamError as exc:
                failures.append(f"{upstream}: {exc}")
                continue
            rcode = response[3] & 0xF
            if rcode == wire.NXDOMAIN:
                raise OSError(f"{name}: no such domain (NXDOMAIN from {upstream})")
            if rcode != wire.NOERROR:
                failures.append(f"{upstream}: rcode {rcode}")
                continue
            try:
                reply = DNSRecord.parse(response)
            except Exception as exc:  # dnslib raises several types for a malformed packet
                failures.append(f"{upstream}: unreadable answer ({exc})")
                continue
            code = getattr(QTYPE, qtype)
            return [str(rr.rdata) for rr in reply.rr if rr.rtype == code]
        raise OSError(f"{name}: no upstream answered ({'; '.join(failures) or 'timeout'})")

    async def close(self) -> None:
        """Nothing to release: every exchange has its own socket."""


Exchange = Callable[[Endpoint, bytes, bytes, float], Awaitable[bytes]]


def _result(hostname: str, address: str, port: int, family: int) -> ResolveResult:
    return {
        "hostname": hostname,
        "host": address,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    }
