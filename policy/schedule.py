"""The schedules of a training run: learning rate, EMA decay, the sample ids of each step and the seed of
each shard's crops and noise; pure functions of (config, step), so a resumed run continues exactly."""

from __future__ import annotations

import math

import numpy as np
import torch

from policy.config import Config


def lr_at(step: int, cfg: Config, train_seconds: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``max_steps`` or, with a time budget
    (``max_minutes``), at whichever of the two ends first (``train_seconds``: training time so far); on a
    budget alone (``steps`` unset) over the budget."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = 0.0 if t.max_steps is None else (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    if t.max_minutes > 0:
        progress = max(progress, train_seconds / (t.max_minutes * 60))
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA with warmup: decay = min(max_decay, (1 + step) / (10 + step))."""
    decay = min(max_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        e, m = list(ema.parameters()), list(model.parameters())
        torch._foreach_lerp_(e, m, 1 - decay)


def batch_ids(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Sample ids of a training step: epochs are seeded permutations, batches consecutive slices."""
    per_epoch = max(1, n // batch_size)  # drop the incomplete last batch
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch_size:  # tiny datasets: repeat the permutation to fill a batch
        perm = np.resize(perm, batch_size)
    return perm[pos * batch_size:(pos + 1) * batch_size]


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Seed of the crop/noise generator of one shard of a step's batch (shard 0: the single-process seed)."""
    return seed * 1_000_003 + step + shard * 2**40
