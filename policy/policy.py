"""``Policy``: a trained checkpoint behind the stateless ``ChunkPolicy`` interface (robot units)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from policy import keys
from policy.checkpoint import load_checkpoint
from policy.config import SAMPLERS, PolicyConfig
from policy.guidance import bid_select, rtc_sample, rtc_weights
from policy.model import DiffusionPolicyModel, obs_keys, to_model_inputs
from policy.normalizer import Normalizer
from policy.protocol import ChunkPrefix
from policy.window import check_window, from_network_frame, to_network_frame


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Policy:
    """Observation window (robot units) -> action chunk (robot units). Holds no state between calls."""

    def __init__(self, model: DiffusionPolicyModel, normalizer: Normalizer, cfg: PolicyConfig,
                 device: torch.device | str = "cpu", num_inference_steps: int | None = None,
                 sampler: str | None = None, control_hz: float | None = None):
        """``control_hz``: the control rate of the training demos (Hz, meta.json), None when unknown."""
        self.cfg = cfg
        self.control_hz = control_hz
        self.action_space = cfg.action_space_spec()  # .pad(ee_pose, gripper): the action history's first entries
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.normalizer = normalizer
        self.n_obs_steps = cfg.n_obs_steps
        self.history_steps = cfg.history_steps or None  # Th (None: no action history)
        self.chunk_len = cfg.chunk_len
        self.action_dim = cfg.action_dim
        self.obs_keys = obs_keys(cfg)
        self.last_continuation: dict | None = None  # diagnostics of the last prefix call (predict_chunk)
        o = cfg.objective
        self.num_inference_steps = o.num_inference_steps if num_inference_steps is None else num_inference_steps
        self.sampler = o.sampler if sampler is None else sampler
        allowed = SAMPLERS[o.name]
        if self.sampler not in allowed:
            raise ValueError(f"sampler {self.sampler!r} does not fit objective {o.name!r}; use one of {allowed}")
        limit = o.num_train_timesteps if o.name == "ddpm" else 1000
        if not 1 <= self.num_inference_steps <= limit:
            raise ValueError(f"num_inference_steps must be in [1, {limit}] for objective {o.name!r}, "
                             f"got {self.num_inference_steps}")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto",
                        num_inference_steps: int | None = None, sampler: str | None = None) -> Policy:
        """Load a checkpoint folder (or a run folder's latest checkpoint); never unpickles."""
        dev = resolve_device(device)
        cfg, model, normalizer, meta = load_checkpoint(path, dev)
        hz = meta.get("control_hz")
        return cls(model, normalizer, cfg.policy, dev, num_inference_steps, sampler,
                   None if hz is None else float(hz))

    def _check_window(self, obs: Mapping[str, np.ndarray], batched: bool) -> None:
        check_window(obs, self.cfg, batched)

    @torch.inference_mode()
    def predict_chunks(self, obs_batch: Mapping[str, np.ndarray], generator: torch.Generator | None = None,
                       ) -> np.ndarray:
        """Batch of windows, each key (B, To, ...) -> chunks (B, Tp, A) float32 in robot units."""
        self._check_window(obs_batch, batched=True)
        return self._sample(obs_batch, generator)

    def _sample(self, obs_batch: Mapping[str, np.ndarray], generator: torch.Generator | None) -> np.ndarray:
        batch = {k: np.asarray(obs_batch[k]) for k in self.obs_keys}
        inputs = to_model_inputs(batch, self.cfg, self.normalizer, self.device)
        actions = self.model.sample(inputs, generator, self.num_inference_steps, self.sampler)  # (B, Tp, A)
        out = self.normalizer.unnormalize(keys.ACTION, actions.float()).cpu().numpy().astype(np.float32)
        return from_network_frame(out, batch, self.cfg)  # (B, Tp, A): from the network's frame to absolute

    def predict_chunk(self, obs_window: Mapping[str, np.ndarray], seed: int | None = None,
                      prefix: ChunkPrefix | None = None) -> np.ndarray:
        """One window, each key (To, ...) -> chunk (Tp, A) float32 in robot units.

        ``chunk[i]`` is the target for ``t_obs + i * dt``. ``seed`` makes the sample repeatable.
        ``prefix``: the committed actions (P, A) to continue, robot units (``policy.protocol.ChunkPrefix``):
        ``rtc`` guides the sampling toward them (euler or ddim only), ``bid`` returns the most coherent of
        ``prefix.samples`` samples; either way rows < ``prefix.delay`` equal ``prefix.actions[:delay]``.
        None: plain sampling, unchanged. ``last_continuation`` then holds diagnostics of the call (never
        read by the policy): method, delay, ``max_guidance_weight`` (rtc) or ``bid_index`` (bid).
        """
        self._check_window(obs_window, batched=False)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
        batch = {k: np.asarray(obs_window[k])[None] for k in self.obs_keys}  # (1, To, ...)
        if prefix is None:
            with torch.inference_mode():
                return self._sample(batch, gen)[0]
        with torch.inference_mode(False):  # works even when a caller wraps the call in inference_mode
            return self._continue(batch, gen, prefix)

    def _continue(self, batch: Mapping[str, np.ndarray], gen: torch.Generator | None,
                  prefix: ChunkPrefix) -> np.ndarray:
        """The prefix path of ``predict_chunk``; no inference_mode (RTC's guidance needs autograd). Guidance, BID's
        choice and the blend over the overlap work in the network's frame; the result is mapped back to absolute."""
        absolute = np.asarray(prefix.actions, np.float32)  # (P, A) robot units
        if absolute.ndim != 2 or absolute.shape[0] > self.chunk_len or absolute.shape[1] != self.action_dim:
            raise ValueError(f"prefix.actions must be (P <= {self.chunk_len}, {self.action_dim}), "
                             f"got {absolute.shape}")
        p = to_network_frame(absolute[None], batch, self.cfg)[0]  # (P, A) in the network's frame
        n_rows, d = p.shape[0], prefix.delay
        shape = (self.chunk_len, self.action_dim)
        with torch.no_grad():
            inputs = to_model_inputs(batch, self.cfg, self.normalizer, self.device)
            cond = self.model.condition(inputs)  # (1, FiLM), once for all steps
            target = torch.zeros(shape, device=self.device)  # (Tp, A) normalized, 0 past the prefix
            target[:n_rows] = self.normalizer.normalize(keys.ACTION, torch.from_numpy(p).to(self.device))
        # constant action dimensions: the network never learned them; unnormalize maps them to the constant
        varying = self.normalizer.varying(keys.ACTION)  # (A,) bool
        info: dict = {"method": prefix.method, "delay": d, "prefix_len": n_rows}
        obj, net = self.model.objective, self.model.net
        mask = rtc_weights(d, n_rows, self.chunk_len, prefix.decay, prefix.schedule)  # (Tp,) guidance and blend
        if prefix.method == "rtc":
            w = mask.to(self.device)[:, None] * torch.as_tensor(varying, dtype=torch.float32, device=self.device)
            chunk = rtc_sample(obj, net, cond, shape, self.num_inference_steps, self.sampler, gen, target, w,
                               prefix.max_guidance, info)[0]  # (Tp, A)
        else:
            with torch.no_grad():
                cond_n = cond.repeat(prefix.samples, 1)  # (N, FiLM)
                samples = obj.sample(net, cond_n, shape, self.num_inference_steps, self.sampler, gen)  # (N, Tp, A)
            idx = bid_select(samples, target[:n_rows], d, dims=varying)
            info["bid_index"] = idx
            chunk = samples[idx]
        with torch.no_grad():
            out = self.normalizer.unnormalize(keys.ACTION, chunk.float()).cpu().numpy().astype(np.float32)
        if prefix.method == "rtc":
            # Our policies are nearly deterministic given the observation: the clean estimate hardly depends on
            # the noise, so guidance (a gradient through it) closes little of the gap to the prefix (measured on
            # pick_place: 16 -> 14 mm over the overlap, even with beta = 100). The rest is closed in action space
            # with the same soft mask: rows < d become the committed ones, the overlap fades into the new plan.
            wb = mask.numpy()[:n_rows, None]  # (P, 1)
            out[:n_rows, varying] = (wb * p + (1 - wb) * out[:n_rows])[:, varying]
        out = from_network_frame(out[None], batch, self.cfg)[0]  # (Tp, A) absolute
        out[:d] = absolute[:d]  # the rows that execute before the chunk arrives: exactly the committed ones
        self.last_continuation = info
        return out
