"""Training objectives and their samplers behind one interface.

- ``DDPMObjective``: epsilon prediction, squared-cosine noise schedule, sampled with DDPM
  (ancestral, strided when fewer steps than training steps) or DDIM (deterministic, eta = 0).
- ``FlowObjective``: flow matching on the linear path ``x_t = t * x_data + (1 - t) * noise``
  with velocity or clean-chunk prediction, sampled with Euler from t = 0 (noise) to t = 1 (data).

Both work in normalized action units; the loss skips action dimensions that are constant in the
training data (``dim_weight``), since the normalizer maps their predictions back to the constant.
 ``net(x, timestep, cond)`` takes a timestep on the
scale [0, num_train_timesteps) so both feed the same sinusoidal embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policy.config import ObjectiveConfig


def squared_cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """The squared-cosine ("squaredcos_cap_v2") schedule: (n,) float64 betas."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float64)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, dim_weight: torch.Tensor | None) -> torch.Tensor:
    """MSE over (B, T, A), counting only the action dimensions with weight 1 in ``dim_weight`` (A,)."""
    if dim_weight is None:
        return F.mse_loss(pred, target)
    sq = (pred - target) ** 2 * dim_weight  # (B, T, A)
    return sq.sum() / (dim_weight.sum().clamp(min=1) * pred.shape[0] * pred.shape[1])


def masked_l1(pred: torch.Tensor, target: torch.Tensor, dim_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error over (B, T, A), counting only the action dimensions with weight 1 in ``dim_weight``."""
    if dim_weight is None:
        return F.l1_loss(pred, target)
    ab = (pred - target).abs() * dim_weight  # (B, T, A)
    return ab.sum() / (dim_weight.sum().clamp(min=1) * pred.shape[0] * pred.shape[1])


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


class DDPMObjective:
    """Epsilon-prediction diffusion; ``sample`` runs DDPM or DDIM."""

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg
        self.n_train = cfg.num_train_timesteps
        betas = squared_cosine_betas(self.n_train)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # (N,) float64

    def loss(self, net: nn.Module, actions: torch.Tensor, cond: torch.Tensor,
             generator: torch.Generator | None = None, dim_weight: torch.Tensor | None = None) -> torch.Tensor:
        """actions (B, T, A) normalized, cond (B, C) -> scalar MSE on the predicted noise."""
        b = actions.shape[0]
        t = (_rand((b,), generator, actions.device) * self.n_train).long().clamp_(max=self.n_train - 1)
        noise = randn(tuple(actions.shape), generator, actions.device)
        ab = self.alphas_cumprod.to(actions.device)[t].float()[:, None, None]  # (B, 1, 1)
        noisy = ab.sqrt() * actions + (1 - ab).sqrt() * noise
        pred = net(noisy, t.float(), cond).float()  # float: under bf16 autocast the loss stays float32
        return (masked_l1 if self.cfg.loss == "l1" else masked_mse)(pred, noise, dim_weight)

    def timesteps(self, steps: int) -> list[int]:
        """Descending training timesteps visited by a sampler with ``steps`` steps.

        "Trailing" spacing: the first step always starts at the noisiest timestep (4 steps with 100
        training steps visit 99, 74, 49, 24), which samples better with few steps than "leading"
        spacing (75, 50, 25, 0).
        """
        if not 1 <= steps <= self.n_train:
            raise ValueError(f"DDPM sampling steps must be in [1, {self.n_train}], got {steps}")
        return [round(self.n_train - i * self.n_train / steps) - 1 for i in range(steps)]

    @torch.no_grad()
    def sample(self, net: nn.Module, cond: torch.Tensor, shape: tuple[int, int], steps: int, sampler: str,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """cond (B, C) -> actions (B, T, A) normalized, for ``shape`` = (T, A); ``noise``: the initial sample
        (B, T, A) (None: drawn from ``generator``; DDIM is then deterministic, as ``policy.export`` needs)."""
        b = cond.shape[0]
        x = randn((b, *shape), generator, cond.device) if noise is None else noise
        ab_all = self.alphas_cumprod.tolist()
        ts = self.timesteps(steps)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab, ab_prev = ab_all[t], (ab_all[t_prev] if t_prev >= 0 else 1.0)
            eps = net(x, torch.full((b,), float(t), device=cond.device), cond)
            x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            if self.cfg.clip_sample:
                x0 = x0.clamp(-1, 1)
            if sampler == "ddim":
                eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # consistent with the clipped x0
                x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
            else:  # ddpm: posterior q(x_prev | x_t, x0)
                beta = 1 - ab / ab_prev
                c0 = math.sqrt(ab_prev) * beta / (1 - ab)
                ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
                x = mean = c0 * x0 + ct * x
                if t_prev >= 0:
                    var = max((1 - ab_prev) / (1 - ab) * beta, 1e-20)
                    x = mean + math.sqrt(var) * randn(tuple(x.shape), generator, x.device)
        return x


class FlowObjective:
    """Flow matching on the linear path; the net predicts the velocity (``flow_prediction=velocity``) or the clean
    chunk (``sample``, as L1 Flow, arXiv 2511.17898); ``sample`` integrates with Euler either way (with a clean
    prediction the velocity is ``(x1_hat - x_t) / (1 - t)``, so the last step lands on the prediction)."""

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg
        self.time_scale = float(cfg.num_train_timesteps)  # t in [0, 1] -> embedding scale
        self.predicts_sample = cfg.flow_prediction == "sample"

    def _sample_t(self, b: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(b,) training times in [0, 1) (0: noise, 1: data), drawn by ``flow_time_sampling``."""
        how = self.cfg.flow_time_sampling
        if how == "logit_normal":  # sigmoid(N(0, 1)): most weight in the middle (SD3's choice for images)
            return torch.sigmoid(randn((b,), generator, device)).clamp(max=0.999)
        u = _rand((b,), generator, device)
        if how == "beta":
            # Beta(1.5, 1) via inverse CDF (u ** (1 / 1.5)), flipped: more weight near t = 0 (noise).
            return (1 - u.pow(1 / 1.5)) * 0.999
        if how == "u_shaped":  # arcsine = Beta(0.5, 0.5) by inverse CDF: weight at both ends (Dense-Jump FM)
            return torch.sin(u * (math.pi / 2)).pow(2).clamp(max=0.999)
        return u

    def loss(self, net: nn.Module, actions: torch.Tensor, cond: torch.Tensor,
             generator: torch.Generator | None = None, dim_weight: torch.Tensor | None = None) -> torch.Tensor:
        """actions (B, T, A) normalized, cond (B, C) -> scalar loss (``objective.loss``) on what the net predicts."""
        b = actions.shape[0]
        t = self._sample_t(b, generator, actions.device)
        noise = randn(tuple(actions.shape), generator, actions.device)
        tt = t[:, None, None]  # (B, 1, 1)
        x_t = tt * actions + (1 - tt) * noise
        target = actions if self.predicts_sample else actions - noise
        pred = net(x_t, t * self.time_scale, cond).float()  # float: under bf16 autocast the loss stays float32
        return (masked_l1 if self.cfg.loss == "l1" else masked_mse)(pred, target, dim_weight)

    def velocity(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The net's output at x_t -> the velocity; ``t`` (B,) in [0, 1) on the path (not the embedding scale)."""
        if not self.predicts_sample:
            return out
        return (out - x) / (1 - t)[:, None, None]

    def velocity_fn(self, net_fn):
        """``net_fn(x, timestep, cond)`` -> the same signature returning the velocity (timestep on the embedding
        scale); the identity for velocity prediction."""
        if not self.predicts_sample:
            return net_fn
        return lambda x, ts, cond: self.velocity(net_fn(x, ts, cond), x, ts / self.time_scale)

    @torch.no_grad()
    def sample(self, net: nn.Module, cond: torch.Tensor, shape: tuple[int, int], steps: int, sampler: str,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """cond (B, C) -> actions (B, T, A) normalized; ``noise``: the initial sample (B, T, A) (None: drawn)."""
        b = cond.shape[0]
        x = randn((b, *shape), generator, cond.device) if noise is None else noise
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((b,), i * dt * self.time_scale, device=cond.device)
            x = x + dt * self.velocity(net(x, t, cond), x, t / self.time_scale)  # as velocity_fn does
        return x.clamp(-1, 1) if self.cfg.clip_sample else x


def make_objective(cfg: ObjectiveConfig) -> DDPMObjective | FlowObjective:
    return DDPMObjective(cfg) if cfg.name == "ddpm" else FlowObjective(cfg)
