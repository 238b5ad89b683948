"""Which upstreams are alive: remembered failures and latency, and probes that bring a dead one back.

An upstream that times out (or is unreachable) twice in a row is marked down and tried only after the live
ones, so queries stop waiting it out; a probe (`. NS`) runs with backoff until it answers again. SERVFAIL
and REFUSED do not count: the upstream is alive, only that name failed. `filterd_upstream_up{upstream}`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from filterd.config.schema import Endpoint
from filterd.metrics import Metrics
from filterd.tasks import cancel

log = logging.getLogger(__name__)

DOWN_AFTER = 2  # consecutive timeouts or network errors
PROBE_FIRST = 0.5  # seconds until the first probe of a down upstream; doubles up to PROBE_MAX
PROBE_MAX = 15.0
PROBE_TIMEOUT = 1.0
_ROOT_NS_QUERY = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01"


@dataclass(slots=True)
class _State:
    failures: int = 0
    up: bool = True
    latency: float = 0.0  # exponentially weighted, seconds
    probe_in: float = PROBE_FIRST


class UpstreamHealth:
    def __init__(self, upstreams: Sequence[Endpoint], metrics: Metrics) -> None:
        self.states = {ep: _State() for ep in upstreams}
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: How a probe is sent (the resolver's own exchange: DoT and DoH upstreams are probed over TLS); None: UDP.
        self.probe: Callable[[Endpoint, bytes, bytes, float], Awaitable[object]] | None = None
        for ep in upstreams:
            metrics.upstream_up.labels(upstream=str(ep)).set(1)

    def order(self, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        """Live upstreams first, in the configured order; down ones last (if all are down, all are tried)."""
        states = self.states
        return sorted(candidates, key=lambda ep: not states[ep].up)

    def is_up(self, upstream: Endpoint) -> bool:
        return self.states[upstream].up

    def succeeded(self, upstream: Endpoint, seconds: float) -> None:
        state = self.states[upstream]
        state.failures = 0
        state.latency = seconds if state.latency == 0 else 0.8 * state.latency + 0.2 * seconds
        if not state.up:
            self._mark(upstream, up=True)

    def failed(self, upstream: Endpoint, kind: str) -> None:
        if kind not in ("timeout", "network", "tls"):
            return
        state = self.states[upstream]
        state.failures += 1
        if state.up and state.failures >= DOWN_AFTER:
            self._mark(upstream, up=False)

    def _mark(self, upstream: Endpoint, *, up: bool) -> None:
        state = self.states[upstream]
        state.up = up
        state.probe_in = PROBE_FIRST
        self.metrics.upstream_up.labels(upstream=str(upstream)).set(1 if up else 0)
        if up:
            log.info("upstream %s is answering again", upstream)
        else:
            log.warning(
                "upstream %s is down (%d failures in a row); probing it until it answers", upstream, state.failures
            )
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def stop(self) -> None:
        await cancel([self._task])
        self._task = None

    async def _probe_loop(self) -> None:
        from filterd.pipeline.upstream import UpstreamError, exchange_udp

        while True:
            down = [ep for ep, st in self.states.items() if not st.up]
            if not down:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = min(self.states[ep].probe_in for ep in down)
            await asyncio.sleep(wait)
            for ep in down:
                state = self.states[ep]
                if state.up:
                    continue
                try:
                    packet = struct.pack("!H", secrets.randbits(16)) + _ROOT_NS_QUERY[2:]
                    if self.probe is not None:
                        await self.probe(ep, packet, b"\x00\x00\x02\x00\x01", PROBE_TIMEOUT)
                    else:
                        await exchange_udp(ep, packet, b"\x00\x00\x02\x00\x01", PROBE_TIMEOUT)
                except UpstreamError:
                    state.probe_in = min(state.probe_in * 2, PROBE_MAX)
                    continue
                state.failures = 0
                self._mark(ep, up=True)
