"""The Prometheus endpoint: GET /metrics from the registry filterd built (not the global one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from filterd.workers.merge import Exported, Merged


def metrics_app(
    registry: CollectorRegistry, workers: Callable[[], Awaitable[list[list[Exported]]]] | None = None
) -> web.Application:
    """`workers`: the worker processes' counters (`dns.workers`), added to this process's at each scrape."""

    async def metrics(request: web.Request) -> web.Response:
        parts = await workers() if workers is not None else []
        body = generate_latest(Merged(registry, parts) if parts else registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    return app
