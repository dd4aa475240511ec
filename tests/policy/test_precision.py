"""Training precision: bf16 autocast on CPUs with native bf16 (detected, never assumed), float32 elsewhere."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policy import hardware, keys
from policy.train import Trainer

from .conftest import tiny_config

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw {extra}
bogomips\t: 4000.00
"""


def test_cpu_flags_are_read_from_cpuinfo():
    assert "avx512_bf16" in hardware.cpu_flags(CPUINFO.format(extra="avx512_bf16"))
    assert "avx512_bf16" not in hardware.cpu_flags(CPUINFO.format(extra=""))
    assert hardware.cpu_flags("no flags here") == frozenset()


@pytest.mark.parametrize("extra,native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("", False)])
def test_native_bf16_needs_one_of_its_flags(monkeypatch, extra, native):
    read = hardware.cpu_flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: read(CPUINFO.format(extra=extra)))
    hardware.native_cpu_bf16.cache_clear()
    try:
        assert hardware.native_cpu_bf16() is native
    finally:
        hardware.native_cpu_bf16.cache_clear()


@pytest.mark.parametrize("native,amp,expected", [(True, True, True), (False, True, False), (True, False, False)])
def test_trainer_uses_bf16_only_where_the_cpu_has_it(monkeypatch, tiny_dataset, tmp_path, native, amp, expected):
    import policy.train as train_mod

    monkeypatch.setattr(train_mod, "native_cpu_bf16", lambda: native)
    trainer = Trainer(tiny_config(tiny_dataset, tmp_path / "run", amp=amp))
    assert trainer.amp is expected
    loss = trainer.train_step()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bf16_loss_and_gradients_are_close_to_float32(tiny_dataset, tmp_path):
    """The same batch, noise and crops: bf16 autocast changes the loss by < 3 % and keeps the gradient's
    direction (cosine > 0.99), so that learning per step is the same and only the speed differs."""
    trainer = Trainer(tiny_config(tiny_dataset, tmp_path / "run", amp=False))
    model = trainer.model.train()
    batch = trainer._batch(trainer.train_sampler, np.arange(8))

    def loss_and_grad(bf16: bool) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch, batch[keys.ACTION], torch.Generator().manual_seed(3), trainer.dim_weight)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    l32, g32 = loss_and_grad(False)
    l16, g16 = loss_and_grad(True)
    assert l16 != l32  # autocast did act
    assert abs(l16 - l32) / l32 < 0.03, (l16, l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


# --------------------------------------------------------------------------- malloc thresholds

FAULTS = '''
import ctypes, json, resource, sys
import numpy as np
sys.path.insert(0, {repo!r})
libc = ctypes.CDLL(None)
libc.mallopt(-3, 128 * 1024)  # glibc's starting mmap threshold, as in a process that never freed a large block
libc.mallopt(-1, 128 * 1024)
if {tune}:
    from policy.hardware import keep_freed_memory
    print(keep_freed_memory(), file=sys.stderr)
def step():  # 24 blocks of 1 MB (a step's activations), written, then freed
    blocks = [np.ones(2**17) for _ in range(24)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
'''


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_freed_memory_takes_the_page_faults_out_of_repeated_large_allocations():
    import subprocess

    def faults(tune: bool, env: dict | None = None) -> tuple[int, str]:
        code = FAULTS.format(repo=str(Path(__file__).resolve().parents[2]), tune=tune)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **(env or {})})
        assert run.returncode == 0, run.stderr
        return int(run.stdout.strip().splitlines()[-1]), run.stderr

    pages = 24 * 2**20 // 4096  # 6144 pages of 4 KiB a step
    untuned, _ = faults(False)
    assert untuned > 5 * pages  # each allocation mapped afresh: the test can fail
    tuned, note = faults(True)
    assert tuned < pages and "MiB of freed memory kept" in note
    # a user's own thresholds (glibc's environment variables) are left as they are
    _, note = faults(True, {"MALLOC_TRIM_THRESHOLD_": str(2**20)})
    assert "left as set in the environment" in note
