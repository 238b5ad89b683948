"""The admin API: JSON over HTTP on `admin.listen` (loopback by default), every request with the token.

The CLI (`filterd lists show`, `check`, `block`, `reload`, ...) is a thin client of this API. Without the
token (`Authorization: Bearer ...`) a request gets 401 and nothing changes. The running server implements
`AdminBackend`; this module only speaks HTTP.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from filterd.config.load import parse_duration
from filterd.logs import ClientEvents, printable
from filterd.querylog.report import Report, render_html, render_text
from filterd.web.blockpage import Limits
from filterd.web.runner import HANDLER_ARGS

log = logging.getLogger(__name__)

#: Seconds an admin connection may sit idle (before its first request, or between requests).
IDLE = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminBackend(Protocol):
    def status(self) -> dict[str, Any]: ...

    def lists_status(self) -> list[dict[str, Any]]: ...

    async def update_lists(self, names: list[str], force: bool) -> list[dict[str, Any]]: ...

    def check(self, name: str, client: str | None = None) -> dict[str, Any]: ...

    def local_change(self, action: str, name: str) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...

    async def log_rows(
        self, client: str | None, group: str | None, blocked: bool, since: float | None, limit: int
    ) -> list[dict[str, Any]]: ...

    async def log_delete(self, client: str) -> dict[str, Any]: ...

    async def report(self, since: float) -> Report: ...

    async def suggest(self, since: float) -> list[dict[str, Any]]: ...


class AdminRequestError(Exception):
    """A request the API refuses, with the HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2) + "\n", status=status, content_type="application/json")


def admin_app(
    backend: AdminBackend,
    token: str,
    events: ClientEvents,
    *,
    pages: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The API over `backend`; a request without `token` is a client event (`admin_unauthorized`). `pages` adds
    the admin page's routes (filterd/web/console.py): every path outside /api is theirs, behind their own login."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if pages is not None and request.path != "/api" and not request.path.startswith("/api/"):
            return await handler(request)
        # The header's own bytes (aiohttp decodes them as UTF-8 with surrogateescape): any byte compares, none raises.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            events.note(
                "admin_unauthorized",
                "admin: refused %s %s from %s: missing or wrong token",
                printable(request.method, 16),
                printable(request.path),
                request.remote,
            )
            return _json({"error": "missing or wrong admin token"}, 401)
        try:
            return await handler(request)
        except AdminRequestError as exc:
            return _json({"error": str(exc)}, exc.status)

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise AdminRequestError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise AdminRequestError(400, "the request body must be a JSON object")
        return data

    def name_of(data: dict[str, Any]) -> str:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise AdminRequestError(400, 'give a domain name: {"name": "example.com"}')
        return name.strip()

    async def status(request: web.Request) -> web.Response:
        return _json(backend.status())

    async def lists(request: web.Request) -> web.Response:
        return _json(backend.lists_status())

    async def update(request: web.Request) -> web.Response:
        data = await body(request)
        names = data.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AdminRequestError(400, "names must be a list of list names")
        return _json(await backend.update_lists(names, bool(data.get("force", False))))

    async def check(request: web.Request) -> web.Response:
        query = dict(request.query)
        return _json(backend.check(name_of(query), query.get("client") or None))

    def local(action: str) -> Handler:
        async def change(request: web.Request) -> web.Response:
            return _json(backend.local_change(action, name_of(await body(request))))

        return change

    async def reload(request: web.Request) -> web.Response:
        result = await backend.reload()
        return _json(result, 200 if result.get("ok") else 400)

    def since_of(query: dict[str, str], default: str | None) -> float | None:
        text = query.get("since") or default
        if text is None:
            return None
        try:
            return float(parse_duration(text))
        except ValueError as exc:
            raise AdminRequestError(400, f"since: {exc}") from None

    async def querylog(request: web.Request) -> web.Response:
        query = dict(request.query)
        since = since_of(query, None)
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            raise AdminRequestError(400, "limit must be a number") from None
        rows = await backend.log_rows(
            query.get("client") or None,
            query.get("group") or None,
            query.get("blocked", "") in ("1", "true", "yes"),
            since,
            max(1, min(limit, 100_000)),
        )
        return _json(rows)

    async def querylog_delete(request: web.Request) -> web.Response:
        data = await body(request)
        client = data.get("client")
        if not isinstance(client, str) or not client.strip():
            raise AdminRequestError(400, 'give a client: {"client": "192.168.1.50"}')
        return _json(await backend.log_delete(client.strip()))

    async def report(request: web.Request) -> web.Response:
        query = dict(request.query)
        since = since_of(query, "7d")
        assert since is not None
        built = await backend.report(since)
        if query.get("format") == "html":
            return web.Response(text=render_html(built), content_type="text/html")
        return web.Response(text=render_text(built), content_type="text/plain")

    async def suggestions(request: web.Request) -> web.Response:
        since = since_of(dict(request.query), "7d")
        assert since is not None
        return _json(await backend.suggest(since))

    app = web.Application(middlewares=[authorize], client_max_size=64 * 1024)
    # The block page's bounds on lines, headers and lingering; a connection that sends nothing (or never finishes
    # its headers) is closed after IDLE seconds: the page may be on the LAN for a phone (`admin.allow_remote`).
    # A live log is a response in progress, not an idle connection.
    app[HANDLER_ARGS] = Limits(idle=IDLE).handler_args()
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/lists", lists)
    app.router.add_post("/api/lists/update", update)
    app.router.add_get("/api/check", check)
    for action in ("block", "allow", "reset"):
        app.router.add_post(f"/api/{action}", local(action))
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/api/log", querylog)
    app.router.add_post("/api/log/delete", querylog_delete)
    app.router.add_get("/api/report", report)
    app.router.add_get("/api/suggest", suggestions)
    if pages is not None:
        pages(app)
    return app
