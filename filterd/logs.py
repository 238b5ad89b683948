"""Logging to stderr (journald picks it up under systemd); one logger per module, no print().

Every line carries a timestamp, filterd's own and those of asyncio and aiohttp alike: the handler sits on the
root logger. What a client causes (a malformed HTTP request, a reply to a connection it reset, a wrong admin
token) is a `ClientEvents` event: counted in `filterd_client_events_total{event}` and logged at most once an
interval, so a flood of them is one line a minute, not one a packet.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (imported when used: `filterd serve` starts loading the lists before them)
    import asyncio

    from prometheus_client import Counter


log = logging.getLogger("filterd.clients")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class EventKind:
    #: What one of these is, for the line that counts those not logged ("... : 12 more since 10:04:05").
    plural: str
    level: int


#: The `event` label of filterd_client_events_total: a fixed set, never a client address or a name.
CLIENT_EVENTS: dict[str, EventKind] = {
    "http_bad_request": EventKind("malformed HTTP requests (answered 400)", logging.INFO),
    "http_server_error": EventKind("HTTP requests that failed inside filterd (answered 500)", logging.ERROR),
    "admin_unauthorized": EventKind("admin API requests without the right token (answered 401)", logging.WARNING),
    "admin_csrf": EventKind(
        "admin page forms without their CSRF token or from another site (answered 403)", logging.WARNING
    ),
    "write_after_close": EventKind("replies to connections the client had already closed or reset", logging.INFO),
}

#: Seconds between two lines about the same kind of event.
LOG_INTERVAL = 60.0

#: asyncio's line for each write to a connection that is gone, after the fifth (selector and uvloop transports), and
#: its TLS transports' line for the same (DoT, DoH, the HTTPS block page: a client that resets mid-reply).
_ASYNCIO_WRITE_AFTER_CLOSE = frozenset({"socket.send() raised exception.", "SSL connection is closed"})


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """filterd's stderr handler, told apart from others (pytest's) that share the root logger."""


def setup(verbose: bool = False) -> None:
    """Every logger to stderr with a timestamp; filterd's at INFO (DEBUG when verbose), other libraries' at
    WARNING. Calling it again replaces filterd's handler, never another's."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _Handler)] + [handler]
    root.setLevel(logging.WARNING)
    own = logging.getLogger("filterd")
    own.handlers[:] = [h for h in own.handlers if not isinstance(h, _Handler)]
    own.setLevel(logging.DEBUG if verbose else logging.INFO)
    own.propagate = True
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class ClientEvents:
    """Counts events a client causes, and logs each kind at most once every `interval` seconds.

    The first of a kind is logged as it comes; those within the next interval are only counted, and one line
    says how many there were ("... and 1999 more since 10:04:05"), either with the next one logged or, in a
    running event loop, when the interval ends. `flush()` writes the pending counts (at stop).
    """

    def __init__(
        self,
        counter: Counter,
        *,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._counter = counter
        self.interval = interval
        self._clock = clock
        self._log = logger
        #: event -> (monotonic time, wall time) of its last line
        self._last: dict[str, tuple[float, float]] = {}
        self._unlogged: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        for event in CLIENT_EVENTS:
            counter.labels(event=event)  # every label exported from the start, at 0

    def note(self, event: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        """Count one `event` (a CLIENT_EVENTS key); log `message % args` unless this kind was logged within the
        interval."""
        kind = CLIENT_EVENTS[event]
        self._counter.labels(event=event).inc()
        now = self._clock()
        last = self._last.get(event)
        if last is not None and now - last[0] < self.interval:
            self._unlogged[event] = self._unlogged.get(event, 0) + 1
            self._flush_later(event, last[0] + self.interval - now)
            return
        unlogged = self._unlogged.pop(event, 0)
        if unlogged:
            message += " (and %d more since %s)"
            args = (*args, unlogged, _clock_time(last[1] if last else time.time()))
        message += " [filterd_client_events_total{event=%s}; logged at most once every %gs]"
        args = (*args, event, self.interval)
        self._last[event] = (now, time.time())
        self._log.log(kind.level, message, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Log how many of each kind went unlogged since its last line; cancel the pending timers."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for event in list(self._unlogged):
            self._flush(event)

    def _flush_later(self, event: str, delay: float) -> None:
        if event in self._timers:
            return
        try:
            import asyncio

            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the count goes out with the next line of this kind, or at flush()
        self._timers[event] = loop.call_later(max(delay, 0.0), self._flush, event)

    def _flush(self, event: str) -> None:
        self._timers.pop(event, None)
        unlogged = self._unlogged.pop(event, 0)
        if not unlogged:
            return
        last = self._last.get(event)
        since = _clock_time(last[1] if last else time.time())
        self._last[event] = (self._clock(), time.time())
        self._log.log(
            CLIENT_EVENTS[event].level,
            "%d more %s since %s [filterd_client_events_total{event=%s}]",
            unlogged,
            CLIENT_EVENTS[event].plural,
            since,
            event,
        )

    def asyncio_filter(self) -> logging.Filter:
        """A filter for the `asyncio` logger: its line for every write to a connection the client has closed or
        reset becomes a `write_after_close` event. Add it while serving, remove it at stop."""
        return _AsyncioWriteAfterClose(self)


class _AsyncioWriteAfterClose(logging.Filter):
    def __init__(self, events: ClientEvents) -> None:
        super().__init__()
        self.events = events

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _ASYNCIO_WRITE_AFTER_CLOSE:
            return True
        self.events.note("write_after_close", "a reply to a connection the client had closed or reset was dropped")
        return False


def _clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def printable(text: str, limit: int = 100) -> str:
    """Client-supplied text made safe for one log line: its first line, control characters as `?`, bounded."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    cleaned = "".join(c if c.isprintable() else "?" for c in first[:limit])
    return cleaned + ("..." if len(first) > limit else "")
