"""Conditional 1D temporal U-Net with FiLM conditioning (denoises action chunks).

Residual Conv1d blocks with GroupNorm and Mish; each block is modulated by a FiLM scale and
bias computed from the global condition (observation features + diffusion-step embedding).
"""

from __future__ import annotations

import math

import torch
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
    """Two conv blocks; the first one's output is scaled and shifted by FiLM(cond)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.c_out = c_out

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, T), cond: (B, cond_dim)
        h = self.block1(x)  # (B, C_out, T)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # 2 x (B, C_out, 1)
        h = h * (1 + scale) + bias
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noisy action chunk (B, T, A), timestep (B,), condition (B, C) -> (B, T, A).

    T must be divisible by 2 ** (len(down_dims) - 1).
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
        cond_dim = step_embed_dim + global_cond_dim
        dims = (action_dim, *down_dims)
        pairs = list(zip(dims[:-1], dims[1:]))
        last = len(pairs) - 1

        def res(ci: int, co: int) -> FiLMResBlock:
            return FiLMResBlock(ci, co, cond_dim, kernel_size, n_groups)

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

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, A, T)
        cond = torch.cat([self.step_encoder(timestep), global_cond], dim=-1)  # (B, cond_dim)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2C, T')
            x = upsample(block2(block1(x, cond), cond))
        return self.final(x).transpose(1, 2)  # (B, T, A)
