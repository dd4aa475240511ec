"""Per-run metrics of the controller, summarized and written as one JSON line at the end of a run.

Chunk joins: ``JumpMeter`` measures, tick by tick, the jump between consecutive targets taken from the
action buffer (the policy's targets the controller hands to the safety layer, before its limits), split
into chunk switches (the two targets come from different chunks) and steps within a chunk; pairs next to
a hold (start-up, underrun, stale observations) or across a skipped tick are left out. ``limit_interventions``
counts the ticks' speed and acceleration limits of the safety layer (``runtime.safety.RATE_LIMITS``).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.rotation import DegenerateRotation, mat3_mul_t, mat3_to_axis_angle, rot6d_to_mat3
from runtime.safety import RATE_LIMITS

JUMP_SERIES = ("switch_jump_m", "switch_jump_rad", "within_jump_m", "within_jump_rad")


def _mean_p95(values: list[float], name: str) -> dict[str, float | None]:
    if not values:
        return {f"{name}_mean": None, f"{name}_p95": None}
    a = np.asarray(values)
    return {f"{name}_mean": float(a.mean()), f"{name}_p95": float(np.percentile(a, 95))}


def _pcts(values: list[float], name: str, scale: float = 1000.0, unit: str = "ms") -> dict[str, float | None]:
    if not values:
        return {f"{name}_{unit}_p50": None, f"{name}_{unit}_p99": None, f"{name}_{unit}_max": None}
    a = np.asarray(values) * scale
    return {f"{name}_{unit}_p50": float(np.percentile(a, 50)), f"{name}_{unit}_p99": float(np.percentile(a, 99)),
            f"{name}_{unit}_max": float(a.max())}


@dataclass
class TickRecord:
    """What one tick did: the command sent, and where it came from."""

    tick: int
    time: float
    command: np.ndarray
    source: str  # "chunk" | "hold" | "startup"
    chunk_obs_tick: int | None  # which chunk (by its observation tick) the action came from
    target: np.ndarray | None = None  # (A,) the buffer's target before the safety layer; None on a hold


@dataclass
class RunMetrics:
    tick_jitter_s: list[float] = field(default_factory=list)  # actual tick start - deadline
    inference_latency_s: list[float] = field(default_factory=list)
    safety_s: list[float] = field(default_factory=list)  # time spent in the safety layer per action
    inference_failures: int = 0
    underruns: int = 0
    startup_hold_ticks: int = 0
    dropped_stale_actions: int = 0
    overruns: int = 0  # ticks skipped because the loop fell more than a period behind
    chunks_received: int = 0
    interventions: Counter[str] = field(default_factory=Counter)
    stop_reason: str = "running"
    error: str | None = None
    trace: list[TickRecord] = field(default_factory=list)
    # jumps between consecutive buffer targets (JumpMeter): at chunk switches and within a chunk, m and rad
    switch_jump_m: list[float] = field(default_factory=list)
    switch_jump_rad: list[float] = field(default_factory=list)
    within_jump_m: list[float] = field(default_factory=list)
    within_jump_rad: list[float] = field(default_factory=list)

    def jump_summary(self) -> dict[str, Any]:
        """Mean and p95 of each jump series, the number of chunk switches, the safety layer's rate limits."""
        out: dict[str, Any] = {"chunk_switches": len(self.switch_jump_m)}
        for name in JUMP_SERIES:
            out.update(_mean_p95(getattr(self, name), name))
        out["limit_interventions"] = sum(self.interventions[r] for r in RATE_LIMITS)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "ticks": len(self.tick_jitter_s),
            **_pcts(self.tick_jitter_s, "tick_jitter"),
            **_pcts(self.inference_latency_s, "inference_latency"),
            "safety_us_per_action": float(np.mean(self.safety_s) * 1e6) if self.safety_s else None,
            "chunks_received": self.chunks_received,
            "inference_failures": self.inference_failures,
            "underruns": self.underruns,
            "startup_hold_ticks": self.startup_hold_ticks,
            "dropped_stale_actions": self.dropped_stale_actions,
            "overruns": self.overruns,
            "interventions": dict(self.interventions),
            **self.jump_summary(),
            "stop_reason": self.stop_reason,
            "error": self.error,
        }

    def write_jsonl(self, path: str | Path, **extra: Any) -> None:
        """Append this run's summary as one JSON line."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(json.dumps({"time": time.time(), **extra, **self.summary()}) + "\n")


class JumpMeter:
    """Feeds ``RunMetrics``' jump series one tick at a time (see the module docstring)."""

    def __init__(self, metrics: RunMetrics):
        self.metrics = metrics
        self._prev: tuple[int, list[float], tuple, int] | None = None  # tick, position, rotation, chunk

    def add(self, tick: int, target: np.ndarray | None, chunk_obs_tick: int | None) -> None:
        """The target (A,) taken from the buffer at ``tick`` and its chunk; None for a hold."""
        if target is None or chunk_obs_tick is None:
            self._prev = None
            return
        values = target.tolist()
        if len(values) < LAYOUT.dim:  # a mapped env's own action (e.g. a 2-D push target): all position
            pos, rot = values, None
        else:
            try:
                rot = rot6d_to_mat3(values[LAYOUT.rotation])
            except DegenerateRotation:
                self._prev = None
                return
            pos = values[LAYOUT.position]
        prev, self._prev = self._prev, (tick, pos, rot, chunk_obs_tick)
        if prev is None or prev[0] != tick - 1:
            return
        step = math.dist(pos, prev[1])
        angle = 0.0 if rot is None else math.hypot(*mat3_to_axis_angle(mat3_mul_t(rot, prev[2])))
        if not (math.isfinite(step) and math.isfinite(angle)):
            return
        m = self.metrics
        if chunk_obs_tick != prev[3]:
            m.switch_jump_m.append(step)
            m.switch_jump_rad.append(angle)
        else:
            m.within_jump_m.append(step)
            m.within_jump_rad.append(angle)


def jumps_from_trace(trace: list[TickRecord]) -> RunMetrics:
    """The jump series of a recorded trace (records with a ``target``), in a fresh ``RunMetrics``."""
    m = RunMetrics()
    meter = JumpMeter(m)
    for r in trace:
        meter.add(r.tick, r.target if r.source == "chunk" else None, r.chunk_obs_tick)
    return m
