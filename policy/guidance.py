"""Continuing a committed prefix: real-time chunking (RTC) and bidirectional decoding (BID).

- RTC (Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies"): guided sampling that
  inpaints the prefix. At every step, estimate the clean chunk, weigh its error against the prefix with a
  soft mask W (1 on the first d rows; over the overlap d..P-1 either exp(-decay * (i - d + 1)) or the paper's
  linear ramp (P - i) / (P - d + 1); 0 after), and add
  the vector-Jacobian product of the estimate w.r.t. the noisy chunk, times the clipped guidance weight
  g = min(beta, (1 - t) / t * (t**2 + (1 - t)**2) / (1 - t)**2), to the velocity.
- BID (Liu et al., ICLR 2025): sample N chunks as one batch and keep the one closest to the prefix, by a
  distance weighted toward its start (backward coherence only; no weaker-checkpoint contrast).

Everything here works in normalized action units; ``Policy`` normalizes the prefix and unnormalizes the
result. ``net_fn(x (B, Tp, A), timestep (B,), cond (B, C)) -> (B, Tp, A)`` is the objective's network
(velocity for flow, noise for ddpm), with the timestep on the objective's embedding scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from policy.objectives import DDPMObjective, FlowObjective, randn
from policy.protocol import RTC_SCHEDULES

NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BID_DECAY = 0.9  # BID's weight per row after the delay: rho ** (i - d + 1)


def rtc_weights(delay: int, prefix_len: int, chunk_len: int, decay: float, schedule: str = "exp") -> torch.Tensor:
    """RTC's soft mask W: (Tp,) float32, 1 on rows < d, 0 on rows >= P, and over the overlap d <= i < P:

    - ``exp``: exp(-decay * (i - d + 1)): the overlap's first row already weighs exp(-decay) (0.61 at 0.5);
    - ``linear``: (P - i) / (P - d + 1), the paper's (and its kinetix code's) linear ramp from the last fixed
      row down to 0 at P: the switch from the committed actions to the new plan is spread evenly over the
      overlap, 1 / (P - d + 1) of the gap per row (``decay`` unused).
    """
    if not 0 <= delay <= prefix_len <= chunk_len:
        raise ValueError(f"need 0 <= delay <= prefix_len <= chunk_len, got {delay}, {prefix_len}, {chunk_len}")
    if schedule not in RTC_SCHEDULES:
        raise ValueError(f"rtc schedule must be one of {RTC_SCHEDULES}, got {schedule!r}")
    i = torch.arange(chunk_len, dtype=torch.float32)
    if schedule == "linear":
        w = (prefix_len - i) / (prefix_len - delay + 1)
    else:
        w = torch.exp(-decay * (i - delay + 1))
    w = torch.where(i < delay, torch.ones_like(w), w)
    return torch.where(i < prefix_len, w, torch.zeros_like(w))


def guidance_weight(t: float, beta: float) -> float:
    """The paper's clipped guidance weight at flow time t in [0, 1) (0 noise, 1 data); beta at t = 0."""
    if beta <= 0:
        return 0.0
    if t <= 0:
        return beta
    return min(beta, (1 - t) / t * (t ** 2 + (1 - t) ** 2) / (1 - t) ** 2)


def _vjp(estimate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
         target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(network output, VJP of the clean estimate w.r.t. x applied to W * (target - estimate)), (B, Tp, A)."""
    with torch.enable_grad():  # not under torch.inference_mode: its tensors cannot be saved for backward
        xg = x.detach().clone().requires_grad_(True)
        clean, out = estimate(xg)
        err = weights * (target - clean)  # (B, Tp, A)
        (corr,) = torch.autograd.grad(clean, xg, err)
    return out.detach(), corr


def guided_flow_sample(net_fn: NetFn, x: torch.Tensor, cond: torch.Tensor, steps: int, target: torch.Tensor,
                       weights: torch.Tensor, beta: float, time_scale: float = 1.0, clip: bool = False,
                       info: dict | None = None) -> torch.Tensor:
    """RTC for flow matching (Euler from t = 0 noise to t = 1 data, ``x_t = t * data + (1 - t) * noise``).

    x: the initial noise (B, Tp, A); target: the normalized prefix padded to (Tp, A); weights: W broadcastable
    to (B, Tp, A) (0 on dimensions to leave alone). Clean estimate x1 = x_t + (1 - t) * v. A step whose
    guidance weight is 0 (beta = 0) is computed exactly as ``FlowObjective.sample`` does it.
    ``info["max_guidance_weight"]``: the largest g applied.
    """
    b = cond.shape[0]
    dt = 1.0 / steps
    g_max = 0.0
    guide = bool(torch.any(weights != 0))
    for i in range(steps):
        t = torch.full((b,), i * dt * time_scale, device=cond.device)
        tau = i * dt
        g = guidance_weight(tau, beta) if guide else 0.0
        if g == 0:
            with torch.no_grad():
                x = x + dt * net_fn(x, t, cond)
            continue

        def estimate(xg: torch.Tensor, t=t, tau=tau) -> tuple[torch.Tensor, torch.Tensor]:
            v = net_fn(xg, t, cond)  # (B, Tp, A)
            return xg + (1 - tau) * v, v

        v, corr = _vjp(estimate, x, target, weights)
        x = x + dt * (v + g * corr)
        g_max = max(g_max, g)
    if info is not None:
        info["max_guidance_weight"] = g_max
    return x.clamp(-1, 1) if clip else x


def guided_ddim_sample(net_fn: NetFn, x: torch.Tensor, cond: torch.Tensor, timesteps: list[int],
                       alphas_cumprod: list[float], target: torch.Tensor, weights: torch.Tensor, beta: float,
                       clip: bool = False, info: dict | None = None) -> torch.Tensor:
    """RTC for epsilon-prediction DDIM (eta = 0) through its clean estimate x0 = (x - sqrt(1 - ab) eps) / sqrt(ab).

    A heuristic transfer of the flow rule (RTC is derived for flow): DDIM is Euler on the flow ODE in the
    variable x / s, s = sqrt(ab) + sqrt(1 - ab), at flow time tau = sqrt(ab) / s; there the VJP of x0 w.r.t.
    x / s is s times ours, and a velocity change of g * corr moves the next x / s' by (tau' - tau) * g * corr.
    So each step is plain DDIM plus s' * (tau' - tau) * g * s * corr. With ``clip`` the clipped x0 is used
    (its gradient is 0 where it clips). Steps with g = 0 are computed exactly as ``DDPMObjective.sample``.
    timesteps: descending training steps; alphas_cumprod: (N,) floats; x, target, weights as for flow.
    """
    b = cond.shape[0]
    g_max = 0.0
    guide = bool(torch.any(weights != 0))
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab, ab_prev = alphas_cumprod[t], (alphas_cumprod[t_prev] if t_prev >= 0 else 1.0)
        s, s_prev = math.sqrt(ab) + math.sqrt(1 - ab), math.sqrt(ab_prev) + math.sqrt(1 - ab_prev)
        tau, tau_prev = math.sqrt(ab) / s, math.sqrt(ab_prev) / s_prev
        g = guidance_weight(tau, beta) if guide else 0.0
        tt = torch.full((b,), float(t), device=cond.device)

        def clean(xg: torch.Tensor, eps: torch.Tensor, ab=ab) -> torch.Tensor:
            x0 = (xg - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            return x0.clamp(-1, 1) if clip else x0

        def estimate(xg: torch.Tensor, tt=tt, clean=clean) -> tuple[torch.Tensor, torch.Tensor]:
            eps = net_fn(xg, tt, cond)  # (B, Tp, A)
            return clean(xg, eps), eps

        if g == 0:
            with torch.no_grad():
                eps = net_fn(x, tt, cond)
        else:
            eps, corr = _vjp(estimate, x, target, weights)
        with torch.no_grad():
            x0 = clean(x, eps)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # consistent with the clipped x0
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
            if g != 0:
                x = x + s_prev * (tau_prev - tau) * g * s * corr
                g_max = max(g_max, g)
    if info is not None:
        info["max_guidance_weight"] = g_max
    return x


def rtc_sample(objective: DDPMObjective | FlowObjective, net_fn: NetFn, cond: torch.Tensor,
               shape: tuple[int, int], steps: int, sampler: str, generator: torch.Generator | None,
               target: torch.Tensor, weights: torch.Tensor, beta: float, info: dict | None = None) -> torch.Tensor:
    """cond (B, C) -> normalized chunks (B, Tp, A) guided toward ``target``; the noise is drawn exactly as the
    objective's own ``sample`` draws it (same generator, same seed -> same start).

    Raises ValueError for DDPM ancestral sampling (RTC needs a deterministic sampler: euler or ddim).
    """
    x = randn((cond.shape[0], *shape), generator, cond.device)  # (B, Tp, A)
    if isinstance(objective, FlowObjective):
        return guided_flow_sample(objective.velocity_fn(net_fn), x, cond, steps, target, weights, beta,
                                  objective.time_scale, objective.cfg.clip_sample, info)
    if sampler != "ddim":
        raise ValueError(f"rtc needs the euler (flow) or ddim sampler, not {sampler!r}; "
                         "load the policy with sampler='ddim' or use method 'bid'")
    return guided_ddim_sample(net_fn, x, cond, objective.timesteps(steps), objective.alphas_cumprod.tolist(),
                              target, weights, beta, objective.cfg.clip_sample, info)


def bid_row_weights(delay: int, prefix_len: int, rho: float = BID_DECAY) -> np.ndarray:
    """BID's row weights (P,): 1 on rows < d, rho ** (i - d + 1) on the overlap d..P-1."""
    i = np.arange(prefix_len)
    return np.where(i < delay, 1.0, float(rho) ** (i - delay + 1))


def bid_costs(samples: np.ndarray | torch.Tensor, prefix: np.ndarray | torch.Tensor, delay: int,
              rho: float = BID_DECAY, dims: np.ndarray | None = None) -> np.ndarray:
    """(N,) weighted distance of each sample (N, Tp, A) to the prefix (P, A): sum_i w_i * ||s_i - p_i||.

    ``dims``: (A,) bool, the action dimensions to compare (None: all).
    """
    s = np.asarray(torch.as_tensor(samples).detach().cpu(), np.float64)
    p = np.asarray(torch.as_tensor(prefix).detach().cpu(), np.float64)
    n_rows = len(p)
    if dims is not None:
        s, p = s[..., dims], p[..., dims]
    dist = np.linalg.norm(s[:, :n_rows] - p[None], axis=-1)  # (N, P)
    return dist @ bid_row_weights(delay, n_rows, rho)


def bid_select(samples: np.ndarray | torch.Tensor, prefix: np.ndarray | torch.Tensor, delay: int,
               rho: float = BID_DECAY, dims: np.ndarray | None = None) -> int:
    """Index of the sample (N, Tp, A) most coherent with the prefix (P, A) (lowest ``bid_costs``; the first
    on ties, so an empty prefix picks sample 0)."""
    return int(np.argmin(bid_costs(samples, prefix, delay, rho, dims)))
