"""ScheduleClock: opens and closes the groups' schedules as the wall clock passes their windows.

It ticks at every whole minute (windows are in minutes) and at start; each tick works out which schedules are
open (pure: schedule.py) and applies that to every group. When a group's rules change, `on_change` runs (the
cache is cleared: an answer cached before bedtime must not be served after it). The clock is injected, so tests
move time across midnight, weekends and daylight-saving changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import tzinfo
from zoneinfo import ZoneInfo

from filterd.config.schema import ScheduleConfig
from filterd.groups.model import Group
from filterd.groups.schedule import active_schedules, seconds_to_next_minute
from filterd.tasks import cancel

log = logging.getLogger(__name__)


class ScheduleClock:
    def __init__(
        self,
        groups: Iterable[Group],
        schedules: Iterable[ScheduleConfig],
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.groups = tuple(groups)
        self.schedules = tuple(schedules)
        self.zones: dict[str, tzinfo | None] = {
            s.name: ZoneInfo(s.timezone) if s.timezone else None for s in self.schedules
        }
        self.on_change = on_change
        self.clock = clock
        self.active: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> bool:
        """Apply the schedules open now; True (and on_change called) when any group's rules changed."""
        active = frozenset(active_schedules(self.schedules, self.clock(), self.zones))
        changed = [g for g in self.groups if g.set_active(active)]
        if active != self.active:
            opened, closed = sorted(active - self.active), sorted(self.active - active)
            if opened:
                log.info("schedules: %s now open", ", ".join(opened))
            if closed:
                log.info("schedules: %s now closed", ", ".join(closed))
            self.active = active
        if changed:
            self.on_change()
        return bool(changed)

    def start(self) -> None:
        if self.schedules and self._task is None:
            self._task = asyncio.create_task(self._run(), name="filterd-schedules")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(seconds_to_next_minute(self.clock()) + 0.01)
            try:
                self.tick()
            except Exception:
                log.exception("schedules: tick failed")

    async def stop(self) -> None:
        await cancel([self._task])
        self._task = None
