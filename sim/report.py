"""The report of a simulated evaluation: success rate with a 95 % Wilson interval, mean score and episode
lengths, the one-paragraph summary printed at the end, and the episode videos."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from policy import keys


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval of a success rate ``successes / n``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, its Wilson interval, mean score and lengths of episode records."""
    n = len(records)
    ok = sum(bool(r["success"]) for r in records)
    lo, hi = wilson_interval(ok, n)
    lengths = [int(r["steps"]) for r in records]
    return {"n_episodes": n, "successes": ok, "success_rate": ok / n if n else 0.0,
            "success_rate_ci95": [round(lo, 4), round(hi, 4)],
            "mean_score": round(float(np.mean([r["score"] for r in records])), 4) if n else 0.0,
            "mean_length": round(float(np.mean(lengths)), 2) if n else 0.0,
            "mean_length_success": round(float(np.mean([r["steps"] for r in records if r["success"]])), 2)
            if ok else None, "underruns": sum(r["underruns"] for r in records),
            "faults": sum(r["error"] is not None for r in records)}


def format_summary(s: dict[str, Any]) -> str:
    lo, hi = s["success_rate_ci95"]
    lines = [f"task {s['task']}: success {s['successes']}/{s['n_episodes']} = {s['success_rate']:.0%} "
             f"(95% CI {lo:.0%}-{hi:.0%}), mean score {s['mean_score']:.3f}, mean length {s['mean_length']:.1f} "
             f"steps, {s['seconds']:.0f} s"]
    if s["videos"]:
        lines.append("videos: " + ", ".join(s["videos"]))
    lines.append(f"results: {s['out']}/eval.json")
    return "\n".join(lines)


def side_by_side(obs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The camera images of ``obs`` side by side (H, n*W, 3) (scene | wrist); None without any."""
    views = [obs[k] for k in keys.IMAGE_KEYS if k in obs]
    return np.concatenate(views, axis=1) if views else None


def write_video(path: Path, frames: np.ndarray, fps: float, scale: int = 2) -> Path:
    """Write (T, H, W, 3) uint8 frames to an H.264 mp4 (pixels repeated ``scale`` times)."""
    import imageio.v3 as iio

    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    iio.imwrite(tmp, frames, fps=fps, codec="libx264", macro_block_size=1)
    tmp.replace(path)
    return path
