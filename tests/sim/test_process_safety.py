"""Rendering and training share a process (evaluation during training): that must not crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sim
from sim.pick_place import PickPlaceEnv
env = PickPlaceEnv()
env.reset(seed=0)
import torch
torch.optim.AdamW([torch.zeros(2, requires_grad=True)])  # imports triton when it is installed
env.step(env.action_space.sample())
print("ok")
"""


def test_render_then_build_an_optimizer_in_one_process():
    # Without sim/__init__ loading triton before Mesa's llvmpipe, this segfaults (two LLVMs in one process).
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
