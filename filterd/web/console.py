"""The admin page: what a parent or a school admin opens on a phone instead of a terminal.

Served by the admin listener beside the JSON API (filterd/web/admin.py hands every path outside `/api` to these
routes). Server-rendered HTML (Jinja2, autoescaping on) and one small script for the live log (server-sent
events); every file ships in the package. Every action goes through the same `AdminBackend` methods as the API
and the CLI, so `allow` means one thing wherever it is asked.

Login: `POST /login` with the admin token (form field `token`) sets an HttpOnly, SameSite=Strict session
cookie that expires after `admin.session_ttl`. Every POST needs the session's CSRF token, and a GET never
changes anything. Wrong tokens are limited per client address (filterd/web/session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from filterd.config.load import parse_duration
from filterd.dns.names import is_address
from filterd.logs import ClientEvents, printable
from filterd.querylog.record import Privacy, Record
from filterd.querylog.report import LABELS, render_html
from filterd.querylog.store import QueryLog
from filterd.web.admin import AdminBackend, AdminRequestError
from filterd.web.dashboard import DECISIONS, LogFilter, local_midnight, overview, row_reason
from filterd.web.session import LoginLimiter, Session, Sessions

log = logging.getLogger(__name__)

COOKIE = "filterd_session"
#: Rows the query log page shows.
SHOWN = 300
#: The live log: how often it looks for new rows, and how long one stream lasts (the browser then reconnects).
LIVE_INTERVAL, LIVE_TICKS = 1.0, 1800
SINCE_CHOICES = ("15m", "1h", "24h", "7d", "30d")

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: with it a browser sends `Origin: null` on a POST, and the origin check below needs it
    "Referrer-Policy": "same-origin",
}
#: The weekly report (the `filterd report --html` page: inline styles and SVG, no script), framed by /safeguarding.
_REPORT_HEADERS = _PAGE_HEADERS | {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "SAMEORIGIN",
}
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What `_page` found: the request's session, and (for a POST) its form.
SESSION: web.RequestKey[Session] = web.RequestKey("filterd_session", Session)
FORM: web.RequestKey[Any] = web.RequestKey("filterd_form", object)


class ConsoleBackend(AdminBackend, Protocol):
    """What the page needs beyond the API: the query log itself, and the state of upstreams and groups."""

    querylog: QueryLog | None

    def check(self, name: str, client: str | None = None, *, quote: bool = True) -> dict[str, Any]: ...

    def upstreams_status(self) -> list[dict[str, Any]]: ...

    def groups_status(self) -> list[dict[str, Any]]: ...


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("filterd.web", "templates/console"),
        autoescape=True,  # every template, whatever its name: a device name or a query name is never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"
    env.filters["clock"] = lambda t: time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"
    env.filters["percent"] = lambda share: f"{share * 100:.1f}%"
    env.filters["reason"] = row_reason
    env.globals["urlencode"] = urlencode
    env.globals["is_address"] = is_address  # (not a keyed hash, as a client is under `privacy: hash-clients`)
    env.globals["labels"] = LABELS
    return env


class Console:
    """The page's routes and state (sessions, the login limiter); `routes(app)` adds them to the admin app."""

    def __init__(
        self,
        backend: ConsoleBackend,
        token: str,
        events: ClientEvents,
        *,
        session_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.token = token.encode()
        self.events = events
        self.clock = clock
        self.sessions = Sessions(session_ttl, clock)
        self.limiter = LoginLimiter(clock)
        self.env = _environment()
        self.static = {name: (resources.files("filterd.web") / "static" / name).read_bytes() for name in _STATIC}
        self.stopping = asyncio.Event()

    # --- plumbing ------------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.on_shutdown.append(self._stop_streams)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self._page(self.logout))
        app.router.add_get("/", self._page(self.overview))
        app.router.add_get("/log", self._page(self.querylog))
        app.router.add_get("/log/live", self._page(self.live))
        app.router.add_get("/check", self._page(self.check))
        app.router.add_get("/lists", self._page(self.lists))
        app.router.add_get("/groups", self._page(self.groups))
        app.router.add_get("/safeguarding", self._page(self.safeguarding))
        app.router.add_get("/report", self._page(self.report))
        for action in ("allow", "block", "reset"):
            app.router.add_post(f"/{action}", self._page(self._local(action)))
        app.router.add_post("/lists/update", self._page(self.update_lists))
        for name in _STATIC:
            app.router.add_get(f"/static/{name}", self._static(name))

    async def _stop_streams(self, app: web.Application) -> None:
        self.stopping.set()  # the live logs end now, or the server's shutdown would wait for them

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _page(self, handler: Handler) -> Handler:
        """A page behind the login: without a session, to /login; a POST also needs the CSRF token (and, when
        the browser names it, this page's own origin)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            session = self._session(request)
            if session is None:
                if request.method == "GET" and request.path != "/log/live":
                    raise web.HTTPFound("/login")
                return self._render(request, "login.html", 401, error="Your session has ended: log in again.")
            request[SESSION] = session
            if request.method == "POST":
                form = await request.post()
                given = form.get("csrf")
                if not session.csrf_ok(given if isinstance(given, str) else None) or _foreign(request):
                    self.events.note(
                        "admin_csrf",
                        "admin page: refused %s %s from %s: missing or wrong form token",
                        printable(request.method, 16),
                        printable(request.path),
                        request.remote,
                    )
                    return self._render(
                        request,
                        "error.html",
                        403,
                        message="This form has expired or did not come from this page: nothing was changed. "
                        "Go back, reload the page and try again.",
                    )
                request[FORM] = form
            try:
                return await handler(request)
            except sqlite3.Error as exc:  # a damaged query log file: say so, and what still works without it
                where = self.backend.querylog.path if self.backend.querylog is not None else "the query log"
                log.error("admin page: cannot read the query log %s: %s", where, exc)
                message = (
                    f"The query log ({where}) cannot be read: {exc}. DNS filtering goes on; Check a name and Lists "
                    "still work. Move the file away: filterd starts a new log."
                )
                return self._render(request, "error.html", 503, message=message)

        return guarded

    def _render(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        session: Session | None = request.get(SESSION)
        flash: list[str] = []
        if session is not None:
            flash, session.flash = session.flash, []
        text = self.env.get_template(template).render(
            path=request.path,
            csrf=session.csrf if session is not None else "",
            logged_in=session is not None,
            flash=flash,
            **values,
        )
        return web.Response(text=text, status=status, content_type="text/html", headers=_PAGE_HEADERS)

    def _static(self, name: str) -> Handler:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(
                body=self.static[name],
                content_type=_STATIC[name],
                headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
            )

        return serve

    def _field(self, request: web.Request, key: str) -> str:
        value = request[FORM].get(key, "")
        return value.strip() if isinstance(value, str) else ""

    def _back(self, request: web.Request, default: str) -> web.HTTPSeeOther:
        """After an action, back to the page it came from (a path on this server only)."""
        back = self._field(request, "back")
        # (no control characters: a URL parser drops tabs and newlines, and "/<tab>/evil.example" is "//evil.example")
        ok = back.startswith("/") and not back.startswith(("//", "/\\")) and back.isprintable()
        return web.HTTPSeeOther(back if ok else default)

    # --- login ---------------------------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is not None:
            raise web.HTTPFound("/")
        return self._render(request, "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or ""
        if _foreign(request):  # a form on another site cannot log this browser in (or guess tokens through it)
            return self._render(request, "login.html", 403, error="This login did not come from this page.")
        wait = self.limiter.wait(client)
        if wait > 0:
            response = self._render(
                request, "login.html", 429, error=f"Too many wrong tokens: try again in {int(wait) + 1} seconds."
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await request.post()
        token = form.get("token")
        given = token.strip().encode("utf-8", "surrogateescape") if isinstance(token, str) else b""
        if not given or not hmac.compare_digest(given, self.token):
            self.limiter.failed(client)
            self.events.note("admin_unauthorized", "admin page: refused a login from %s: wrong token", request.remote)
            return self._render(request, "login.html", 401, error="That is not the admin token. Nothing was changed.")
        self.limiter.succeeded(client)
        session = self.sessions.create()
        log.info("admin page: login from %s", request.remote)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(self.sessions.ttl),
            path="/",
            httponly=True,
            samesite="Strict",
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request[SESSION].id)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # --- pages ---------------------------------------------------------------------------------------------

    async def _rows(self, **filters: Any) -> list[Record]:
        querylog = self.backend.querylog
        if querylog is None:
            return []
        return await asyncio.to_thread(querylog.rows, **filters)

    async def overview(self, request: web.Request) -> web.StreamResponse:
        querylog = self.backend.querylog
        since = local_midnight(self.clock())
        totals = await asyncio.to_thread(querylog.totals, since) if querylog is not None else ()
        alerts = await asyncio.to_thread(querylog.alerts, since) if querylog is not None else []
        return self._render(
            request,
            "overview.html",
            title="Overview",
            logging=querylog is not None,
            blocked_only=querylog is not None and querylog.privacy is Privacy.BLOCKED_ONLY,
            today=overview(totals),
            alerts=[_alert(a) for a in alerts if a[7] == "fired"],
            lists=self.backend.lists_status(),
            upstreams=self.backend.upstreams_status(),
        )

    def _filter(self, request: web.Request) -> LogFilter:
        query = request.query
        since = query.get("since", "24h")
        return LogFilter(
            device=query.get("device", "").strip(),
            group=query.get("group", "").strip(),
            decision=query.get("decision", "").strip(),
            category=query.get("category", "").strip(),
            since=since if since in SINCE_CHOICES or since == "all" else "24h",
        )

    async def _log_rows(self, wanted: LogFilter, since: float | None, limit: int) -> list[Record]:
        """The newest `limit` rows that match, every filter applied by SQLite (a device's name through the
        devices table): on a busy network the rows a filter wants may be hours back."""
        device = wanted.device
        by_address = is_address(device)  # (under `privacy: hash-clients` the rows hold the address's keyed hash)
        return await self._rows(
            client=device if by_address else None,
            device=None if by_address else device or None,
            group=wanted.group or None,
            decision=wanted.decision or None,
            category=wanted.category or None,
            since=since,
            limit=limit,
        )

    async def querylog(self, request: web.Request) -> web.StreamResponse:
        wanted = self._filter(request)
        now = self.clock()
        since = None if wanted.since == "all" else now - parse_duration(wanted.since)
        rows = await self._log_rows(wanted, since, SHOWN)
        return self._render(
            request,
            "log.html",
            title="Query log",
            logging=self.backend.querylog is not None,
            rows=rows,
            now=self._now(rows),
            wanted=wanted,
            since_choices=SINCE_CHOICES,
            decisions=DECISIONS,
            groups=[g["name"] for g in self.backend.groups_status()],
            after=now,
            live_query=urlencode({k: v for k, v in request.query.items() if k != "after"}),
            back=request.path_qs,
        )

    async def live(self, request: web.Request) -> web.StreamResponse:
        """New log rows as server-sent events (`event: row`, `data:` one table row of HTML), one a row, oldest
        first; the stream ends after LIVE_TICKS looks (the browser reconnects by itself)."""
        wanted = self._filter(request)
        session: Session = request[SESSION]
        now = self.clock()
        try:
            # a reconnecting browser says where it was (the `id:` of the last row it got)
            after = request.headers.get("Last-Event-ID") or request.query.get("after") or now
            last = min(max(float(after), now - 3600), now) if math.isfinite(float(after)) else now
        except ValueError:
            last = now
        response = web.StreamResponse(headers=_PAGE_HEADERS | {"Content-Type": "text/event-stream"})
        await response.prepare(request)
        seen: set[tuple[Any, ...]] = set()
        back = "/log?" + urlencode({k: v for k, v in request.query.items() if k != "after"})
        row_template = self.env.get_template("row.html")
        for tick in range(LIVE_TICKS):
            if self.stopping.is_set() or self.sessions.get(session.id) is None or _gone(request):
                break
            try:
                rows = [r for r in reversed(await self._log_rows(wanted, last, SHOWN)) if _key(r) not in seen]
            except sqlite3.Error as exc:
                log.error("admin page: the live log ends: cannot read the query log: %s", exc)
                break
            try:
                if rows:
                    last = rows[-1].time
                    seen = {_key(r) for r in rows if r.time == last} | (seen if rows[0].time == last else set())
                    current = self._now(rows)
                    for row in rows:
                        html = row_template.render(row=row, csrf=session.csrf, back=back, now=current)
                        data = "".join(f"data: {line}\n" for line in html.splitlines() if line.strip())
                        await response.write(f"event: row\nid: {last!r}\n{data}\n".encode())
                elif tick % 15 == 0:
                    await response.write(b": still here\n\n")
            except ConnectionResetError:
                break  # the browser left the page (or the phone slept): the end of this stream, not an error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), LIVE_INTERVAL)
        return response

    def _now(self, rows: list[Record]) -> dict[tuple[str, str], dict[str, Any]]:
        """What filterd does now with each row's name for its client (`filterd check`'s answer, without quoting the
        list file), so a row blocked then allowed says so; a client logged as a keyed hash is asked without one."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (row.name, row.client)
            if key in out:
                continue
            client = row.client if is_address(row.client) else None
            try:
                out[key] = self.backend.check(row.name, client, quote=False)
            except AdminRequestError:
                continue  # not a name `check` takes (the log keeps what was asked, e.g. with spaces)
        return out

    async def check(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("name", "").strip()
        client = request.query.get("client", "").strip()
        result: dict[str, Any] | None = None
        error = ""
        if name:
            try:
                result = self.backend.check(name, client or None)
            except AdminRequestError as exc:
                error = str(exc)
        return self._render(
            request,
            "check.html",
            title="Check a name",
            name=name,
            client=client,
            result=result,
            error=error,
            devices=[d for g in self.backend.groups_status() for d in g["devices"]],
            back=request.path_qs,
        )

    async def lists(self, request: web.Request) -> web.StreamResponse:
        rows = self.backend.lists_status()
        return self._render(
            request,
            "lists.html",
            title="Lists",
            lists=[r for r in rows if r["name"] != "local"],
            local=next((r for r in rows if r["name"] == "local"), None),
            now=self.clock(),
        )

    async def groups(self, request: web.Request) -> web.StreamResponse:
        return self._render(request, "groups.html", title="Groups and schedules", groups=self.backend.groups_status())

    async def safeguarding(self, request: web.Request) -> web.StreamResponse:
        querylog = self.backend.querylog
        since = self.clock() - 7 * 86400
        alerts = await asyncio.to_thread(querylog.alerts, since) if querylog is not None else []
        return self._render(
            request,
            "safeguarding.html",
            title="Safeguarding",
            logging=querylog is not None,
            alerts=[_alert(a) for a in reversed(alerts)],
        )

    async def report(self, request: web.Request) -> web.StreamResponse:
        try:
            built = await self.backend.report(7 * 86400)
        except AdminRequestError as exc:
            return self._render(request, "error.html", exc.status, message=str(exc))
        return web.Response(text=render_html(built), content_type="text/html", headers=_REPORT_HEADERS)

    # --- actions (POST only) -------------------------------------------------------------------------------

    def _local(self, action: str) -> Handler:
        done = {
            "allow": "allowed on this filter (with everything under it)",
            "block": "blocked on this filter (with everything under it)",
            "reset": "removed from the local entries",
        }[action]

        async def change(request: web.Request) -> web.StreamResponse:
            session: Session = request[SESSION]
            name = self._field(request, "name")
            try:
                if not name:
                    raise AdminRequestError(400, "give a domain name")
                result = self.backend.local_change(action, name)
            except AdminRequestError as exc:
                session.flash.append(f"{name or 'nothing'}: not {action}ed: {exc}")
            else:
                unchanged = action == "reset" and not result["changed"]
                session.flash.append(f"{result['name']}: {'was not in the local entries' if unchanged else done}")
                log.info("admin page: %s %s (from %s)", action, result["name"], request.remote)
            raise self._back(request, "/lists")

        return change

    async def update_lists(self, request: web.Request) -> web.StreamResponse:
        session: Session = request[SESSION]
        name = self._field(request, "list")
        try:
            results = await self.backend.update_lists([name] if name else [], False)
        except AdminRequestError as exc:
            session.flash.append(f"update: {exc}")
        else:
            session.flash.extend(f"{r['list']}: {r['result']}: {r['message']}" for r in results)
            if not results:
                session.flash.append("no list to update")
        raise self._back(request, "/lists")


def _foreign(request: web.Request) -> bool:
    """A POST whose browser names another origin than this page's (no Origin header: not a browser's cross-site
    form, which always sends one). The host is compared, not the scheme: behind an HTTPS reverse proxy the
    browser's origin is https://HOST while filterd is spoken to in plain HTTP."""
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc.lower() != request.host.lower()


def _gone(request: web.Request) -> bool:
    """The client of a long response has closed its connection (no need to look for rows for it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _key(row: Record) -> tuple[Any, ...]:
    return (row.time, row.client, row.name, row.qtype, row.decision, row.count)


def _alert(row: tuple[Any, ...]) -> dict[str, Any]:
    when, rule, client, mac, device, group, names, result = row
    return {"time": when, "rule": rule, "client": client, "mac": mac, "device": device or client, "group": group,
            "names": str(names).split(), "result": result}  # fmt: skip


__all__ = ["COOKIE", "Console", "ConsoleBackend"]
