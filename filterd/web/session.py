"""The admin page's logins: server-side sessions with a CSRF token each, and a limit on wrong tokens. Pure: no
I/O; the clock is passed in, so a test can move it.

A session lives in memory only: a restart logs everyone out, which is what an admin expects of a page that can
unblock sites. Its id is the cookie's value (HttpOnly, SameSite=Strict, set by filterd/web/console.py); its
CSRF token goes into every form, and a POST without it changes nothing.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    #: One-line results of the last action ("omegle.com: allowed"), shown once on the next page.
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Logged-in browsers. At most `limit` at once: a new login ends the oldest (a phone, a laptop and a few
    forgotten tabs fit; a script that logs in in a loop cannot fill the memory)."""

    def __init__(self, ttl: float, clock: Callable[[], float], limit: int = 32) -> None:
        self.ttl = ttl
        self.clock = clock
        self.limit = limit
        self._live: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> Session:
        self._expire()
        while len(self._live) >= self.limit:
            self._live.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock() + self.ttl)
        self._live[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id; None for an unknown or expired one (which is forgotten)."""
        if not session_id:
            return None
        session = self._live.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._live[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._live)

    def _expire(self) -> None:
        now = self.clock()
        for key in [key for key, s in self._live.items() if s.expires <= now]:
            del self._live[key]


class LoginLimiter:
    """Wrong tokens per client address: after `attempts` within `window` seconds, that address may not try
    again (not even with the right token) until the window of its first failure has passed. At most `tracked`
    addresses are remembered (the oldest forgotten first)."""

    def __init__(
        self, clock: Callable[[], float], attempts: int = 5, window: float = 300.0, tracked: int = 1024
    ) -> None:
        self.clock = clock
        self.attempts = attempts
        self.window = window
        self.tracked = tracked
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds before `client` may try again; 0 when it may try now."""
        times = self._recent(client)
        if len(times) < self.attempts:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    def failed(self, client: str) -> None:
        times = self._recent(client)
        times.append(self.clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.tracked:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> list[float]:
        now = self.clock()
        times = [t for t in self._failures.get(client, []) if t > now - self.window]
        if not times:
            self._failures.pop(client, None)
        return times
