"""aiohttp as filterd's web servers (the block page, metrics, the admin API) serve it.

aiohttp answers a request it cannot parse before any middleware sees it: with the offending request line
echoed in the body, a `Server: Python/3.x aiohttp/3.x` banner, and a 19-line traceback in the log for each
one. `HttpRunner` answers such a request (and one that fails inside a handler) with the bare status, calls
every server `filterd`, and makes each a client event: counted, and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from filterd.logs import ClientEvents, printable

#: The `Server` header of every response: no version, no library.
SERVER = "filterd"

#: An app's aiohttp connection settings (`keepalive_timeout`, `max_line_size`, ...), read by HttpRunner.
HANDLER_ARGS: web.AppKey[dict[str, Any]] = web.AppKey("filterd_handler_args", dict)


class HttpRunner(web.AppRunner):
    """An AppRunner (no access log, no signal handlers) whose connections follow filterd's rules above;
    `name` ("blockpage", "admin", "metrics") starts its log lines."""

    def __init__(self, app: web.Application, name: str, events: ClientEvents) -> None:
        super().__init__(app, access_log=None, handle_signals=False)
        app.on_response_prepare.append(_name_the_server)
        self.name = name
        self.events = events

    async def _make_server(self) -> web.Server:
        # aiohttp has no public way to choose the connection class; AppRunner's own hook is the narrowest one.
        # The server it made gives the app's handler and request factory (public attributes), then is dropped.
        made = await super()._make_server()  # runs the app's startup hooks and freezes it, as AppRunner does
        handler_args = self.app.get(HANDLER_ARGS) or {}
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            loop=asyncio.get_running_loop(),
            runner=self,
            handler_args=handler_args,
        )


async def _name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER


class _Server(web.Server):
    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        loop: asyncio.AbstractEventLoop,
        runner: HttpRunner,
        handler_args: dict[str, Any],
    ) -> None:
        handler_args = handler_args | {"access_log": None}
        super().__init__(handler, request_factory=request_factory, loop=loop, **handler_args)
        self.loop = loop
        self.runner = runner
        self.handler_args = handler_args

    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, self.runner, loop=self.loop, **self.handler_args)


class _RequestHandler(web.RequestHandler):
    def __init__(self, manager: web.Server, runner: HttpRunner, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.runner = runner

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (400, ...) or that raised in a handler (500): one client event,
        and a response that says only the status (aiohttp's own echoes the request and names its version)."""
        name, events = self.runner.name, self.runner.events
        if status >= 500:
            events.note(
                "http_server_error",
                "%s: a request from %s failed (answered %d): %s",
                name,
                request.remote,
                status,
                printable(repr(exc)),
                exc_info=exc,
            )
        else:
            reason = exc.message if isinstance(exc, HttpProcessingError) else (message or repr(exc))
            events.note(
                "http_bad_request",
                "%s: a malformed HTTP request from %s (answered %d): %s",
                name,
                request.remote,
                status,
                printable(reason).rstrip(": "),
            )
        if request.writer.output_size > 0:  # as aiohttp: a response has begun, so only closing is left
            raise ConnectionError("the response had begun; the connection is closed instead")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(
            status=status,
            text=f"{status} {phrase}\n",
            headers={hdrs.SERVER: SERVER, hdrs.CACHE_CONTROL: "no-store"},
        )
        response.force_close()
        return response
