"""AlertEngine: counts a device's blocked attempts per rule and says when a rule fires (pure, clock injected).

A rule watches categories (or list names): `attempts` blocked attempts by one device within `within` seconds
fire it, optionally only inside its `when` windows. A browser retrying one page must not look like five
attempts, so a device's attempts at one name count at most once a minute. After a rule fires for a device, it
stays quiet for that device for `quiet` seconds (the attempts are still counted, and a later alert says how many
there were). Memory is bounded: per device and rule only the attempts inside the window are kept, and devices
not seen for a day are forgotten.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from zoneinfo import ZoneInfo

from filterd.config.schema import AlertRule, SafeguardingConfig
from filterd.groups.schedule import is_open, local_time

_SAME_NAME = 60.0  # one attempt at one name per minute
_FORGET = 86400.0
_MAX_DEVICES = 50_000


@dataclass(frozen=True, slots=True)
class Attempt:
    time: float
    name: str
    category: str
    list: str


@dataclass(frozen=True, slots=True)
class Alert:
    rule: AlertRule
    client: str
    group: str
    attempts: tuple[Attempt, ...]
    time: float
    #: attempts since the last alert for this device and rule that were not reported (quiet period)
    suppressed: int = 0

    @property
    def names(self) -> list[str]:
        return sorted({a.name for a in self.attempts})


@dataclass
class _State:
    attempts: collections.deque[Attempt] = field(default_factory=collections.deque)
    last_alert: float = float("-inf")
    quieted: int = 0
    seen: float = 0.0


class AlertEngine:
    def __init__(self, config: SafeguardingConfig, clock: Callable[[], float] = time.time) -> None:
        self.rules = config.alerts
        self.quiet = config.quiet
        self.clock = clock
        self.zones: dict[str, tzinfo | None] = {
            r.name: ZoneInfo(r.timezone) if r.timezone else None for r in self.rules
        }
        self._states: dict[tuple[str, str], _State] = {}
        self._last_name: dict[tuple[str, str], float] = {}
        self._watched = {c for r in self.rules for c in r.categories}
        self.quieted = 0  # alerts held back by the quiet period

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def watches(self, category: str, list_name: str) -> bool:
        return category in self._watched or list_name in self._watched

    def observe(self, client: str, group: str, name: str, category: str, list_name: str) -> list[Alert]:
        """A blocked answer to `client`; returns the alerts it fires (usually none)."""
        if not self.watches(category, list_name):
            return []
        now = self.clock()
        last = self._last_name.get((client, name))
        if last is not None and now - last < _SAME_NAME:
            return []  # the same page again: a retry, not a new attempt
        self._last_name[(client, name)] = now
        if len(self._last_name) > _MAX_DEVICES:
            self._forget(now)
        fired = []
        attempt = Attempt(now, name, category, list_name)
        for rule in self.rules:
            if category not in rule.categories and list_name not in rule.categories:
                continue
            if rule.when and not any(is_open(w, local_time(now, self.zones[rule.name])) for w in rule.when):
                continue
            state = self._states.setdefault((client, rule.name), _State())
            state.seen = now
            state.attempts.append(attempt)
            while state.attempts and now - state.attempts[0].time > rule.within:
                state.attempts.popleft()
            if len(state.attempts) < rule.attempts:
                continue
            if now - state.last_alert < self.quiet:
                state.quieted += 1
                self.quieted += 1
                continue
            fired.append(Alert(rule, client, group, tuple(state.attempts), now, state.quieted))
            state.last_alert, state.quieted = now, 0
            state.attempts.clear()
        return fired

    def _forget(self, now: float) -> None:
        self._last_name = {k: t for k, t in self._last_name.items() if now - t < _SAME_NAME}
        self._states = {k: s for k, s in self._states.items() if now - s.seen < _FORGET}
