"""Per-run metrics of the controller, summarized and written as one JSON line at the end of a run."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
            "stop_reason": self.stop_reason,
            "error": self.error,
        }

    def write_jsonl(self, path: str | Path, **extra: Any) -> None:
        """Append this run's summary as one JSON line."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(json.dumps({"time": time.time(), **extra, **self.summary()}) + "\n")
