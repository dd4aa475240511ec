"""Watching a loop from outside it: one snapshot per tick, handed over without ever stalling the loop.

The policy controller (``runtime.controller``) and the teleop loop (``runtime.teleop_loop``) call
``on_tick(snapshot)`` on each of their observers once per tick, after the command was written to the
robot. A ``TickSnapshot`` holds references, not copies: drivers return fresh arrays on every read and
nothing mutates them afterwards.

``BackgroundObserver`` is the only observer the loops are given: ``on_tick`` puts the snapshot into a
bounded queue without waiting (a full queue drops it and counts the drop) and a daemon thread hands
each snapshot to a *sink* (``runtime.viz.RerunSink``, the teleop status line). A sink that raises is
logged once and switched off; after that its snapshots are dropped. So a closed viewer, a full disk
under a recording, or a terminal that stopped reading never reach the robot: the loop pays one
``put_nowait`` per tick. ``close()`` lets the thread drain what is queued for at most ``close_timeout_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("runtime.observer")

_STOP = object()  # the queue's end marker


@dataclass
class TickSnapshot:
    """What one tick saw and did, in robot units (m, robot base frame)."""

    tick: int
    time: float  # s since the loop's first tick, on the loop's clock
    measured: np.ndarray  # (10,) measured ee_pose (9: position + 6D rotation) and gripper width (1)
    command: np.ndarray  # (A,) the command actually sent (A = 10 for our arms)
    images: Mapping[str, np.ndarray] = field(default_factory=dict)  # obs key -> (H, W, 3) uint8, newest frame
    jitter_s: float = 0.0  # s, tick start - its deadline
    reasons: tuple[str, ...] = ()  # safety / loop interventions this tick; an underrun is "underrun"
    chunk: np.ndarray | None = None  # (T, A) a chunk received this tick, chunk[i] meant for t_obs + i * dt
    chunk_obs_tick: int | None = None  # the observation tick that chunk was predicted from
    inference_latency_s: float | None = None  # s, of the answer received this tick
    status: Any = None  # a loop's own state for its sinks, e.g. ``TeleopStatus`` (runtime.teleop_loop)


class LoopObserver(Protocol):
    """What a loop calls: ``on_tick`` must neither block nor raise; ``close`` after the loop has ended."""

    def on_tick(self, snapshot: TickSnapshot) -> None: ...

    def close(self) -> None: ...


Sink = Callable[[TickSnapshot], None]


class BackgroundObserver:
    """Hands snapshots to ``sink`` from a daemon thread through a queue of ``maxsize`` snapshots.

    ``dropped`` counts the snapshots that found the queue full or the sink switched off; ``failed`` is
    the sink's error once it raised. ``on_close`` (optional) runs on the thread after the last snapshot,
    e.g. to flush a recording; it is bounded by ``close_timeout_s`` like the drain.
    """

    def __init__(self, sink: Sink, name: str = "observer", maxsize: int = 64, close_timeout_s: float = 5.0,
                 on_close: Callable[[], None] | None = None):
        if maxsize < 1:
            raise ValueError(f"{name}: maxsize must be >= 1 (snapshots), got {maxsize}")
        if not close_timeout_s > 0:
            raise ValueError(f"{name}: close_timeout_s must be > 0 s, got {close_timeout_s}")
        self.sink, self.name, self.on_close = sink, name, on_close
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        self.delivered = 0
        self.sink_s = 0.0  # s spent in the sink, on its thread (a cost the loop does not pay)
        self.failed: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._closed = False
        self._warned_full = False
        self._thread = threading.Thread(target=self._drain, name=f"{name}-sink", daemon=True)
        self._thread.start()

    def on_tick(self, snapshot: TickSnapshot) -> None:
        """Queue ``snapshot`` for the sink; never waits, never raises."""
        try:
            if self.failed is not None or self._closed:
                self.dropped += 1
                return
            self._queue.put_nowait(snapshot)
        except queue.Full:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning("%s: the sink is behind; dropping snapshots (counted) so the loop never waits",
                            self.name)
        except Exception as e:  # noqa: BLE001 - an observer must never stop the loop
            self.dropped += 1
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.failed is None:
            self.failed = e
            log.error("%s stopped: %s: %s; the loop goes on without it", self.name, type(e).__name__, e)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self.failed is not None:
                self.dropped += 1
                continue
            try:
                t0 = time.perf_counter()
                self.sink(item)
                self.sink_s += time.perf_counter() - t0
                self.delivered += 1
            except Exception as e:  # noqa: BLE001 - a viewer fault is logged once, never raised
                self.dropped += 1
                self._fail(e)
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception as e:  # noqa: BLE001
                log.error("%s: closing failed: %s: %s", self.name, type(e).__name__, e)

    def close(self) -> None:
        """Drain the queue and run ``on_close`` on the thread, waiting at most ``close_timeout_s``; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=self.close_timeout_s)
        except queue.Full:
            log.error("%s: the sink did not drain within %g s; left behind", self.name, self.close_timeout_s)
            return
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            log.error("%s: the sink did not finish within %g s; left behind", self.name, self.close_timeout_s)
        if self.dropped:
            log.info("%s: %d snapshots dropped, %d delivered", self.name, self.dropped, self.delivered)

    def __enter__(self) -> BackgroundObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
