"""Multi-process training: two Gloo processes on the CPU train exactly like one process with grad_accum=2.

``train.batch_size`` is the global batch; rank r of W takes the shard ``ids[r::W]`` with its own crop/noise
generator, and DDP averages the gradients. One process with ``train.grad_accum=W`` computes the same shards
with the same generators, so weights and losses must agree up to float rounding, and every rank must hold
bit-identical weights.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from policy import distributed
from policy.train import Trainer, train

from .conftest import tiny_config

WORLD = 2
STEPS = 4
TOL = 2e-5  # max abs difference of weights between 2 processes and 1 process with grad_accum=2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: list, out: str) -> None:
    """One rank, joined from the torchrun environment variables; runs each (name, config) job in turn."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info, device = distributed.setup("cpu", timeout_minutes=2.0)
    try:
        assert info.enabled and info.rank == rank and info.world_size == WORLD and device.type == "cpu"
        for name, cfg in jobs:
            trainer = Trainer(cfg, info, device)
            trainer.run()
            state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
            state.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
            save_file({k: v.contiguous() for k, v in state.items()}, str(Path(out) / f"{name}_rank{rank}.safetensors"))
    finally:
        distributed.teardown(info)


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    """Raw weights ``model.*`` and EMA weights ``ema.*`` of a checkpoint folder."""
    raw = load_file(str(ckpt / "train_state.safetensors"))
    out = {k: v.numpy() for k, v in raw.items() if k.startswith("model.")}
    out.update({f"ema.{k}": v.numpy() for k, v in load_file(str(ckpt / "model.safetensors")).items()})
    return out


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice (only rank 0 may log): {steps}"
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_dataset):
    common = dict(steps=STEPS, batch_size=8, log_every=1, val_every=2, ckpt_every=2, num_threads=1)
    # references in this process: the same global batches as 1 process x 2 micro-batches
    ref = train(tiny_config(tiny_dataset, tmp_path / "ref", grad_accum=2, **common))
    train(tiny_config(tiny_dataset, tmp_path / "resumed", grad_accum=2, **{**common, "steps": 2}))
    plain = train(tiny_config(tiny_dataset, tmp_path / "plain", **common))  # 1 micro-batch: other crops, noise

    jobs = [("scratch", tiny_config(tiny_dataset, tmp_path / "ddp", **common)),
            ("resumed", tiny_config(tiny_dataset, tmp_path / "resumed", resume=True, **common))]
    # fork on Linux: the ranks inherit the imported modules (a spawned interpreter spends ~10 s on imports);
    # each rank runs 1 thread, so no OpenMP pool is used after the fork
    method = "fork" if sys.platform == "linux" else "spawn"
    mp.start_processes(_worker, args=(_free_port(), jobs, str(tmp_path)), nprocs=WORLD, join=True,
                       start_method=method)

    ref_w = _weights(ref)
    for name, run in (("scratch", tmp_path / "ddp"), ("resumed", tmp_path / "resumed")):
        ranks = [{k: v.numpy() for k, v in load_file(str(tmp_path / f"{name}_rank{r}.safetensors")).items()}
                 for r in range(WORLD)]
        assert _max_diff(ranks[0], ranks[1]) == 0.0, f"{name}: the ranks' weights differ"
        ckpt = run / "checkpoints" / "latest"
        assert json.loads((ckpt / "meta.json").read_text())["step"] == STEPS
        assert _max_diff(ranks[0], _weights(ckpt)) == 0.0  # rank 0 saved what it holds
        assert _max_diff(_weights(ckpt), ref_w) < TOL, f"{name}: 2 processes differ from 1 process"
        losses, ref_losses = _losses(run), _losses(tmp_path / "ref")
        assert sorted(losses) == [1, 2, 3, 4]  # the resumed run: 1, 2 from one process, 3, 4 from two
        np.testing.assert_allclose([losses[s] for s in sorted(losses)], [ref_losses[s] for s in sorted(losses)],
                                   rtol=1e-5, err_msg=name)
    # the comparison can fail: other crops/noise (1 process, 1 micro-batch) end far outside the tolerance
    assert _max_diff(_weights(plain), ref_w) > 100 * TOL


def test_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, tiny_dataset):
    info = distributed.DistInfo(rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"train.batch_size \(8\) must be divisible"):
        Trainer(tiny_config(tiny_dataset, tmp_path / "run"), info, torch.device("cpu"))


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = distributed.setup("cpu", 1.0)
    assert not info.enabled and info.is_main and device.type == "cpu"
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        distributed.setup("cpu", 1.0)
