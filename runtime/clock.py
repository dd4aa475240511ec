"""Clocks: the controller sleeps to absolute deadlines on a clock it is given.

``WallClock`` for real robots (``time.monotonic``), ``SimClock`` for simulation and tests: the same
controller code runs on both.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator


class Clock(ABC):
    """Seconds on a monotonic time line."""

    @abstractmethod
    def now(self) -> float: ...

    @abstractmethod
    def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (or at once if it has passed)."""


class WallClock(Clock):
    """``time.monotonic``; sleeps most of the way, then spins the last ``spin_s`` for a precise wake-up."""

    def __init__(self, spin_s: float = 0.0005):
        self.spin_s = spin_s

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.monotonic() < deadline:
            pass


class SimClock(Clock):
    """Simulated time: ``sleep_until`` jumps forward; nothing ever waits. Thread-safe."""

    def __init__(self, start: float = 0.0):
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def sleep_until(self, deadline: float) -> None:
        with self._lock:
            self._t = max(self._t, float(deadline))

    def advance(self, dt: float) -> None:
        with self._lock:
            self._t += float(dt)


def wait_for_tick(clock: Clock, t0: float, dt: float, tick: int) -> tuple[int, int]:
    """Sleep to the absolute deadline of ``tick`` (``t0 + tick * dt``).

    A loop that fell more than a period behind skips the missed ticks instead of bursting through
    them. Returns (the tick to run now, how many were skipped).
    """
    behind = clock.now() - (t0 + tick * dt)
    skipped = int(behind // dt) if behind > dt else 0
    tick += skipped
    clock.sleep_until(t0 + tick * dt)
    return tick, skipped


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """For the duration of a real-time loop: collect once, then freeze every object that exists (torch,
    the model, the drivers) out of the cyclic GC, so a full collection scans only what the loop allocates.
    With torch imported, an unfrozen full collection pauses the loop for tens of ms."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
