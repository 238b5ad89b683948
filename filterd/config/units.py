"""Sizes in config values (`65536`, `512KB`, `64MB`), and durations and sizes written back for messages.

Pure functions. Durations are read by `filterd.config.load.parse_duration`."""

from __future__ import annotations

import re

__all__ = ["SIZE_FORMS", "format_duration", "format_size", "parse_size"]

SIZE_FORMS = "a number of bytes, or a number with a unit KB, MB or GB (e.g. 512KB, 64MB; 1 MB = 1024 KB)"

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_size(value: object) -> int:
    """Bytes in `value`: a whole number, or `512KB`, `64MB`, `1GB` (binary multiples; case-insensitive)."""
    if isinstance(value, bool | float):
        raise ValueError(f"{value!r} is not a size: write {SIZE_FORMS}")
    if isinstance(value, int):
        return value
    m = _AMOUNT.fullmatch(str(value).strip())
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: write {SIZE_FORMS}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """The shortest exact form (`1d`, `6h`, `30m`, `90s`, `0.5s`), for messages."""
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """`64 MB`, `512 KB` or `1000 bytes`, for messages."""
    for unit in ("GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
