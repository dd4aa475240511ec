"""The diffusion-policy network: observation encoder + conditional U-Net + objective."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from policy.config import PolicyConfig
from policy.encoders import ObsEncoder
from policy.normalizer import Normalizer
from policy.objectives import make_objective
from policy.unet import ConditionalUnet1D
from policy.window import model_inputs, obs_keys

__all__ = ["DiffusionPolicyModel", "obs_keys", "to_model_inputs"]


class DiffusionPolicyModel(nn.Module):
    """Holds the trainable parts; works in normalized units."""

    def __init__(self, cfg: PolicyConfig, load_pretrained: bool = True):
        """``load_pretrained``: initialise the image encoders from ``encoder.pretrained_path`` (a new model);
        False when the weights come from a checkpoint (the file is then never read)."""
        super().__init__()
        self.cfg = cfg
        self.encoder = ObsEncoder(cfg, load_pretrained)
        u = cfg.unet
        self.net = ConditionalUnet1D(cfg.action_dim, self.encoder.out_dim, u.down_dims, u.kernel_size,
                                     u.n_groups, u.step_embed_dim)
        self.objective = make_objective(cfg.objective)

    def loss(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor,
             generator: torch.Generator | None = None, dim_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized obs window and actions (B, Tp, A) -> scalar training loss (random crops in training mode,
        repeatable with ``generator``; centre crops in eval mode).

        ``dim_weight`` (A,) is 0 for action dimensions the loss ignores (constant in the data).
        """
        cond = self.net.prepare_condition(self.encoder(obs, generator))  # (B, FiLM)
        return self.objective.loss(self.net, actions, cond, generator, dim_weight)

    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
               steps: int | None = None, sampler: str | None = None, noise: torch.Tensor | None = None,
               ) -> torch.Tensor:
        """Normalized obs window -> normalized action chunks (B, Tp, A) (centre crops in eval mode); ``noise``:
        the initial sample (B, Tp, A) (None: drawn from ``generator``)."""
        o = self.cfg.objective
        cond = self.condition(obs)  # (B, FiLM), once for all steps
        shape = (self.cfg.chunk_len, self.cfg.action_dim)
        return self.objective.sample(self.net, cond, shape, steps or o.num_inference_steps,
                                     sampler or o.sampler, generator, noise)


    @torch.no_grad()
    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs window -> the U-Net's observation conditioning (B, FiLM) (centre crops in eval mode)."""
        return self.net.prepare_condition(self.encoder(obs, None))


def to_model_inputs(batch: Mapping[str, np.ndarray | torch.Tensor], cfg: PolicyConfig, normalizer: Normalizer,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Robot-unit batch (B, To, ...) -> tensors on ``device`` the model takes (``policy.window.model_inputs``):
    images stay uint8, the rest normalized; ``action`` (B, Tp, A) too when present."""

    def convert(x: np.ndarray | torch.Tensor, dtype: np.dtype | None) -> torch.Tensor:
        if dtype is None:
            return torch.as_tensor(x).to(device, non_blocking=True)
        return torch.as_tensor(x).to(device, torch.float32)

    return model_inputs(batch, cfg, normalizer, convert)
