"""Weekly windows: "mon-thu,sun 21:00-07:00" parsed, and whether one is open at a given local time.

Pure functions. Times are wall-clock times in the schedule's zone, so a window opens at 21:00 local time on
both sides of a daylight-saving change; a window that crosses midnight belongs to the day it starts on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo

from filterd.config.schema import ScheduleConfig, Window

__all__ = ["DAY_NAMES", "active_schedules", "is_open", "parse_window"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ALIASES = {"daily": range(7), "weekdays": range(5), "weekends": range(5, 7), "weekend": range(5, 7)}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


def _minutes(text: str) -> int:
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a time HH:MM")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time from 00:00 to 24:00")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        part = part.strip().lower()
        if part in _ALIASES:
            days.update(_ALIASES[part])
            continue
        first, sep, last = part.partition("-")
        if first[:3] not in DAY_NAMES or (sep and last[:3] not in DAY_NAMES):
            raise ValueError(f"{part!r} is not a day (mon ... sun, a range like mon-fri, daily, weekdays, weekends)")
        start = DAY_NAMES.index(first[:3])
        end = DAY_NAMES.index(last[:3]) if sep else start
        day = start
        while True:  # a range may wrap: fri-mon is fri, sat, sun, mon
            days.add(day)
            if day == end:
                break
            day = (day + 1) % 7
    return frozenset(days)


def parse_window(text: str) -> Window:
    """`"mon-thu,sun 21:00-07:00"` (days optional: every day) -> Window; ValueError says what is wrong."""
    parts = text.split()
    if len(parts) == 1:
        days, span = frozenset(range(7)), parts[0]
    elif len(parts) == 2:
        days, span = _days(parts[0]), parts[1]
    else:
        raise ValueError(f"{text!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'mon-fri 08:30-15:30')")
    start_text, sep, end_text = span.partition("-")
    if not sep:
        raise ValueError(f"{span!r} is not a time span HH:MM-HH:MM")
    start, end = _minutes(start_text), _minutes(end_text)
    if start == end:
        raise ValueError(f"{span!r} starts and ends at the same time")
    return Window(days, start, end, text)


def is_open(window: Window, when: datetime) -> bool:
    """Whether `window` is open at local time `when` (aware or naive: its wall-clock time is used)."""
    minute = when.hour * 60 + when.minute
    day = when.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    # crosses midnight: open from `start` on a listed day until `end` on the day after
    return (day in window.days and minute >= window.start) or ((day - 1) % 7 in window.days and minute < window.end)


def local_time(epoch: float, zone: tzinfo | None) -> datetime:
    """The wall-clock time at `epoch` in `zone` (None: the system's zone)."""
    if zone is None:
        return datetime.fromtimestamp(epoch).astimezone()
    return datetime.fromtimestamp(epoch, zone)


def active_schedules(schedules: Iterable[ScheduleConfig], epoch: float, zones: dict[str, tzinfo | None]) -> set[str]:
    """The names of the schedules with a window open at `epoch` (seconds since 1970)."""
    out = set()
    for schedule in schedules:
        when = local_time(epoch, zones.get(schedule.name))
        if any(is_open(window, when) for window in schedule.when):
            out.add(schedule.name)
    return out


def seconds_to_next_minute(epoch: float) -> float:
    """How long until the next whole minute: windows open and close on minutes."""
    now = datetime.fromtimestamp(epoch)
    following = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return max(0.05, (following - now).total_seconds())
