"""Conditional 1D temporal U-Net with FiLM conditioning (denoises action chunks).

Residual Conv1d blocks with GroupNorm and Mish; each block is modulated by a FiLM scale and
bias computed from the global condition (observation features + diffusion-step embedding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Timestep (B,) float -> (B, dim) sinusoidal features."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the first one's output is scaled and shifted by a FiLM (scale, bias) pair.

    The FiLM parameters come from the U-Net, which computes those of all blocks in two matmuls.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.c_out = c_out

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, T), film: (B, 2 * C_out)
        scale, bias = film.unsqueeze(-1).chunk(2, dim=1)  # 2 x (B, C_out, 1)
        h = self.block1(x) * (1 + scale) + bias  # (B, C_out, T)
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noisy action chunk (B, T, A), timestep (B,), condition -> (B, T, A).

    T must be divisible by 2 ** (len(down_dims) - 1). The FiLM input of every block is
    ``Mish([step_embedding, global_cond])``; because Mish is elementwise, the FiLM linear map splits
    into a step part and an observation part. ``prepare_condition`` computes the observation part
    of all blocks once, so a sampler pays only for the step part at each denoising step.
    """

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...] = (64, 128, 256),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 64):
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        dims = (action_dim, *down_dims)
        pairs = list(zip(dims[:-1], dims[1:]))
        last = len(pairs) - 1

        def res(ci: int, co: int) -> FiLMResBlock:
            return FiLMResBlock(ci, co, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (ci, co) in enumerate(pairs):
            sample = nn.Conv1d(co, co, 3, stride=2, padding=1) if i < last else nn.Identity()
            self.down.append(nn.ModuleList([res(ci, co), res(co, co), sample]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up = nn.ModuleList()
        for i, (ci, co) in enumerate(reversed(pairs[1:])):
            sample = nn.ConvTranspose1d(ci, ci, 4, stride=2, padding=1) if i < last else nn.Identity()
            self.up.append(nn.ModuleList([res(2 * co, ci), res(ci, ci), sample]))
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )
        self._film_sizes = [2 * m.c_out for m in self.modules() if isinstance(m, FiLMResBlock)]
        self.film_step = nn.Linear(step_embed_dim, sum(self._film_sizes))
        self.film_obs = nn.Linear(global_cond_dim, sum(self._film_sizes), bias=False)

    def prepare_condition(self, global_cond: torch.Tensor) -> torch.Tensor:
        """(B, C) observation features -> (B, sum of FiLM sizes): their share of every block's FiLM."""
        return self.film_obs(F.mish(global_cond))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` is the output of ``prepare_condition``."""
        film = self.film_step(F.mish(self.step_encoder(timestep))) + cond  # (B, sum of FiLM sizes)
        films = iter(film.split(self._film_sizes, dim=1))
        x = x.transpose(1, 2)  # (B, A, T)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, next(films)), next(films))
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, next(films))
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2C, T')
            x = upsample(block2(block1(x, next(films)), next(films)))
        return self.final(x).transpose(1, 2)  # (B, T, A)
