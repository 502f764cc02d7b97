"""Clocks for the simulated world: a manual one for tests and a scaled one for demos."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that says what time it is in the simulated world."""

    def now(self) -> datetime: ...


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class ManualClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: datetime) -> None:
        self._now = _aware(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def __call__(self) -> datetime:
        return self.now()

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = _aware(moment)

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"


class ScaledClock:
    """Simulated time that runs ``speed`` times faster than real time from ``start``."""

    def __init__(
        self, start: datetime, speed: float, ticks: Callable[[], float] = time.monotonic
    ) -> None:
        """``ticks``: the real time it follows (seconds, any origin)."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = _aware(start)
        self.speed = speed
        self._ticks = ticks
        self._origin = ticks()

    def now(self) -> datetime:
        elapsed = (self._ticks() - self._origin) * self.speed
        return self.start + timedelta(seconds=elapsed)

    def __call__(self) -> datetime:
        return self.now()

    def __repr__(self) -> str:
        return f"ScaledClock(start={self.start.isoformat()}, speed={self.speed})"
