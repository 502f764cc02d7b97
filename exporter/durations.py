"""Durations: parse "90s", "5m", "1h30m" or plain seconds, and format seconds back."""

from __future__ import annotations

import math
import re

DURATION_FORM = "seconds like 60, or 90s, 5m, 1h, 1h30m, 2d, 500ms"

# Largest unit first: a duration lists each unit at most once, in this order (as Prometheus does).
_UNITS: dict[str, float] = {
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_ORDER = list(_UNITS)
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|w|d|h|m|s)")


class DurationError(ValueError):
    """A value that is not a duration; ``reason`` is the short "what is wrong" phrase."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(f"{value!r} {reason}; expected {DURATION_FORM}")
        self.reason = reason


def parse_duration(value: str | int | float) -> float:
    """Seconds in *value*: a plain number of seconds or a unit string like ``1h30m``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(value, "is not a duration")
    if isinstance(value, int | float):
        return _checked(value, float(value))
    text = value.strip()
    if not text:
        raise DurationError(value, "is empty")
    if text.startswith("-"):
        raise DurationError(value, "is negative")
    if _NUMBER.fullmatch(text):
        return _checked(value, float(text))
    total = 0.0
    position = 0
    last_unit = -1
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise DurationError(value, "is not a duration")
        unit = _ORDER.index(match.group(2))
        if unit <= last_unit:
            raise DurationError(value, "repeats a unit or lists units out of order")
        last_unit = unit
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return _checked(value, total)


def _checked(value: object, seconds: float) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise DurationError(value, "is not a finite duration")
    if seconds < 0:
        raise DurationError(value, "is negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest unit string for *seconds*, to the millisecond: 5400 → "1h30m", 0.5 → "500ms"."""
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    whole, millis = divmod(millis, 1000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if millis:
        parts.append(f"{secs}.{millis:03d}".rstrip("0") + "s")
    elif secs:
        parts.append(f"{secs}s")
    return "".join(parts)
