"""bench_learning.py end to end at toy size: its figures are flat and reach both the shared file and --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_learning_quick_writes_flat_figures(tmp_path):
    shared, out = tmp_path / "shared.json", tmp_path / "out.json"
    shared.write_text(json.dumps({"earlier_figure": 1.0}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tests" / "benchmarks" / "bench_learning.py"), "--quick", "--threads", "1",
           "--tasks", "pick_place", "--work", str(tmp_path / "work"), "--tag", "toy",
           "--set", "policy.encoder.channels=[8,8]", "--results", str(shared), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert all(isinstance(v, (int, float, str, bool)) for v in figures.values()), figures
    # the default collection is DART: its noise is reported as one flat figure
    assert figures["pick_place_toy_demos_action_noise_m"] == "0.005,0.005,0.002"
    assert figures["pick_place_toy_steps_0.05min"] >= 1 and figures["pick_place_toy_eval_episodes_0.05min"] == 2
    merged = json.loads(shared.read_text())
    assert merged["earlier_figure"] == 1.0 and merged["pick_place_toy_overrides"] == "policy.encoder.channels=[8,8]"


def test_committed_learning_results_are_flat():
    # figures merged by hand must keep the benchmark's flat contract too (a list once reached this file that way)
    from tests.benchmarks._common import check_flat  # raises TypeError naming the first figure that is not flat

    check_flat(json.loads((REPO / "tests" / "benchmarks" / "results" / "learning.json").read_text()))
