"""Typed configs for the policy and its training, mapped from hydra YAML (see ``configs/``).

Each dataclass validates itself in ``__post_init__`` and raises ``ValueError`` naming the field
and the rule; ``policy.config_utils.from_dict`` rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policy import keys
from policy.action_frame import ACTION_FRAMES, frame_rule
from policy.action_space import ACTION_SPACES, ActionSpace, absolute_pad_layout
from policy.config_utils import need
from policy.data.interop import KeyMap

BACKBONES = ("small_cnn", "resnet18")
OBJECTIVES = ("ddpm", "flow")
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "flow": ("euler",)}
FLOW_PREDICTIONS = ("velocity", "sample")
FLOW_TIME_SAMPLING = ("uniform", "beta", "logit_normal", "u_shaped")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOGGERS = ("tensorboard", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
DATA_MODES = ("memory", "stream", "auto")  # train.data (policy.data.stream)
STREAM_LOADERS = ("process", "thread")  # train.stream_loader: where a streamed run builds its batches
DEFAULT_STEPS = 3000  # train.steps when neither it nor train.max_minutes is set


@dataclass
class EncoderConfig:
    """Image encoder, one instance per camera."""

    backbone: str = "small_cnn"  # small_cnn (CPU default) | resnet18 (GroupNorm)
    feature_dim: int = 64  # output features per camera and frame
    num_keypoints: int = 32  # spatial-softmax keypoints
    # small_cnn conv widths (stem, then 3x3 convs). Widths that are multiples of 16 suit the CPU's bf16 kernels:
    # [24, 24] runs no faster than [32, 32] here (oneDNN pads the channels)
    channels: tuple[int, ...] = (16, 32)
    stem_stride: int = 4  # small_cnn: the stem conv (kernel 2*stride) downsamples by this
    crop_shape: tuple[int, int] = (84, 84)  # (H, W): random crop in training, center crop at inference
    pretrained_path: str | None = None  # resnet18 only: local .safetensors/.pth ImageNet weights
    # training only: each image's brightness and contrast scaled by factors drawn in [1 - j, 1 + j] (0: off);
    # for demos whose light varies (a real room), 0.1-0.2 is mild
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        need(0.0 <= self.color_jitter < 1.0, f"encoder.color_jitter must be in [0, 1), got {self.color_jitter}")
        need(self.backbone in BACKBONES, f"encoder.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        need(self.feature_dim >= 1, f"encoder.feature_dim must be >= 1, got {self.feature_dim}")
        need(self.num_keypoints >= 1, f"encoder.num_keypoints must be >= 1, got {self.num_keypoints}")
        need(len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
              f"encoder.channels must be a non-empty list of positive ints, got {self.channels}")
        need(self.stem_stride in (1, 2, 4), f"encoder.stem_stride must be 1, 2 or 4, got {self.stem_stride}")
        need(len(self.crop_shape) == 2 and min(self.crop_shape) >= 8,
              f"encoder.crop_shape must be [H, W] with both >= 8, got {self.crop_shape}")
        need(self.pretrained_path is None or self.backbone == "resnet18",
              "encoder.pretrained_path is only supported for backbone resnet18")


@dataclass
class UNetConfig:
    """Conditional 1D temporal U-Net."""

    down_dims: tuple[int, ...] = (64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64  # sinusoidal diffusion-step embedding width

    def __post_init__(self) -> None:
        need(len(self.down_dims) >= 1, "unet.down_dims must not be empty")
        for d in self.down_dims:
            need(d % self.n_groups == 0, f"unet.down_dims entries must be divisible by unet.n_groups "
                  f"({self.n_groups}), got {self.down_dims}")
        need(self.kernel_size % 2 == 1 and self.kernel_size >= 1,
              f"unet.kernel_size must be odd and >= 1, got {self.kernel_size}")
        need(self.step_embed_dim % 2 == 0 and self.step_embed_dim >= 4,
              f"unet.step_embed_dim must be even and >= 4, got {self.step_embed_dim}")


@dataclass
class ObjectiveConfig:
    """Training objective and its sampler."""

    name: str = "flow"  # ddpm (epsilon prediction) | flow (flow matching, velocity prediction)
    sampler: str = "euler"  # ddpm | ddim for name=ddpm; euler for name=flow
    num_inference_steps: int = 4
    num_train_timesteps: int = 100  # ddpm only
    clip_sample: bool = True  # ddpm: clip the predicted clean sample to [-1, 1]
    # flow only: where training draws t in [0, 1] (0 noise, 1 data): uniform | beta (more weight near the noise
    # end) | logit_normal (sigmoid of N(0, 1): the middle) | u_shaped (arcsine, Beta(0.5, 0.5): both ends)
    flow_time_sampling: str = "uniform"
    flow_prediction: str = "velocity"  # flow only: velocity (data - noise) | sample (the clean chunk, as L1 Flow)
    loss: str = "mse"  # mse | l1 (on the velocity, the clean chunk or the noise, whichever the net predicts)

    def __post_init__(self) -> None:
        need(self.name in OBJECTIVES, f"objective.name must be one of {OBJECTIVES}, got {self.name!r}")
        need(self.sampler in SAMPLERS[self.name],
              f"objective.sampler must be one of {SAMPLERS[self.name]} for objective {self.name!r}, "
              f"got {self.sampler!r}")
        need(self.num_train_timesteps >= 2, "objective.num_train_timesteps must be >= 2")
        limit = self.num_train_timesteps if self.name == "ddpm" else 1000
        need(1 <= self.num_inference_steps <= limit,
              f"objective.num_inference_steps must be in [1, {limit}], got {self.num_inference_steps}")
        need(self.flow_time_sampling in FLOW_TIME_SAMPLING,
              f"objective.flow_time_sampling must be one of {FLOW_TIME_SAMPLING}, got {self.flow_time_sampling!r}")
        need(self.flow_prediction in FLOW_PREDICTIONS,
              f"objective.flow_prediction must be one of {FLOW_PREDICTIONS}, got {self.flow_prediction!r}")
        need(self.loss in ("mse", "l1"), f"objective.loss must be mse or l1, got {self.loss!r}")


@dataclass
class PolicyConfig:
    """What the policy sees and predicts, and its networks."""

    image_keys: tuple[str, ...] = keys.IMAGE_KEYS
    image_shape: tuple[int, int] = (96, 96)  # (H, W) of dataset/camera images
    lowdim_dims: dict[str, int] = field(default_factory=lambda: {keys.EE_POSE: keys.EE_POSE_DIM,
                                                                   keys.GRIPPER: keys.GRIPPER_DIM})
    action_dim: int = keys.ACTION_DIM
    n_obs_steps: int = 1  # To: observation frames (and sent actions) the policy is conditioned on
    chunk_len: int = 16  # Tp: actions per predicted chunk; chunk[i] is for t_obs + i * dt
    use_action_history: bool = True
    action_history_steps: int | None = None  # Th: actions sent before the newest frame that the policy sees;
    # null: n_obs_steps (one per frame). More than To gives a one-frame policy its own recent motion.
    action_space: str = "absolute"  # absolute (target pose + gripper) | delta (deltas, velocities): the
    # action-history pad before the first action (policy.action_space): measured ee_pose + gripper | hold_action
    hold_action: tuple[float, ...] | None = None  # delta only: the action that holds still (A,); null: zeros
    action_frame: str = "absolute"  # absolute | relative: the network's actions (target chunk and action history)
    # in the frame of the current ee_pose (UMI's relative trajectories, policy.action_frame); the policy returns
    # absolute actions either way
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        need(len(self.image_keys) == len(set(self.image_keys)), f"policy.image_keys repeats a key: {self.image_keys}")
        need(len(self.image_keys) > 0 or len(self.lowdim_dims) > 0 or self.use_action_history,
              "policy needs at least one observation: image_keys, lowdim_dims or use_action_history")
        need(len(self.image_shape) == 2 and min(self.image_shape) >= 8,
              f"policy.image_shape must be [H, W] with both >= 8, got {self.image_shape}")
        if self.image_keys:
            ch, cw = self.encoder.crop_shape
            need(ch <= self.image_shape[0] and cw <= self.image_shape[1],
                  f"policy.encoder.crop_shape {self.encoder.crop_shape} must fit in policy.image_shape "
                  f"{self.image_shape}")
        for k, d in self.lowdim_dims.items():
            need(d >= 1, f"policy.lowdim_dims.{k} must be >= 1, got {d}")
        need(self.action_dim >= 1, f"policy.action_dim must be >= 1, got {self.action_dim}")
        need(self.n_obs_steps >= 1, f"policy.n_obs_steps must be >= 1, got {self.n_obs_steps}")
        need(self.action_history_steps is None or self.action_history_steps >= 1,
             f"policy.action_history_steps must be >= 1 or null (n_obs_steps), got {self.action_history_steps}")
        need(self.action_space in ACTION_SPACES,
             f"policy.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        need(self.hold_action is None or (self.action_space == "delta" and len(self.hold_action) == self.action_dim),
             f"policy.hold_action is for action_space delta only, with policy.action_dim ({self.action_dim}) "
             f"numbers; got {self.hold_action} for action_space {self.action_space}")
        need(not (self.use_action_history and self.action_space == "absolute")
             or absolute_pad_layout(self.lowdim_dims, self.action_dim, keys.EE_POSE, keys.GRIPPER) is not None,
             f"policy.action_space absolute pads the action history with the measured pose: policy.lowdim_dims "
             f"needs {keys.EE_POSE} (+ {keys.GRIPPER}) of policy.action_dim ({self.action_dim}) numbers together, "
             f"got {dict(self.lowdim_dims)}; for delta or velocity actions set policy.action_space=delta "
             f"(policy.hold_action: the action that holds still, zeros by default), or "
             f"policy.use_action_history=false")
        need(self.action_frame in ACTION_FRAMES,
             f"policy.action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}")
        if self.action_frame == "relative":
            need(self.action_space == "absolute", "policy.action_frame relative expresses absolute target poses in "
                 f"the frame of the current {keys.EE_POSE}: it needs policy.action_space absolute, got "
                 f"{self.action_space!r}")
            wrong = frame_rule(self.lowdim_dims, self.action_dim)
            need(wrong is None, f"policy.action_frame relative: {wrong}")
        levels = len(self.unet.down_dims) - 1
        need(self.chunk_len >= 2 ** levels and self.chunk_len % (2 ** levels) == 0,
              f"policy.chunk_len must be divisible by 2**(len(unet.down_dims)-1) = {2 ** levels}, "
              f"got {self.chunk_len}")

    @property
    def history_steps(self) -> int:
        """Th: sent actions in a window (0 without the action-history condition)."""
        if not self.use_action_history:
            return 0
        return self.n_obs_steps if self.action_history_steps is None else self.action_history_steps

    def action_space_spec(self) -> ActionSpace:
        """The action space (its history pad) that training and the runtime share."""
        layout = absolute_pad_layout(self.lowdim_dims, self.action_dim, keys.EE_POSE, keys.GRIPPER)
        return ActionSpace(self.action_space, self.action_dim, tuple(self.hold_action or ()), layout is not False)

    def dataset_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-frame shape and dtype that a training dataset must have for each key."""
        spec: dict[str, tuple[tuple[int, ...], str]] = {
            k: ((self.image_shape[0], self.image_shape[1], 3), "uint8") for k in self.image_keys
        }
        spec.update({k: ((d,), "float32") for k, d in self.lowdim_dims.items()})
        spec[keys.ACTION] = ((self.action_dim,), "float32")
        return spec


@dataclass
class TrainConfig:
    """Training run: data, optimization, evaluation cadence, checkpoints, hardware."""

    dataset: str = ""  # path to the zarr replay buffer
    out_dir: str = "runs/default"
    seed: int = 0
    steps: int | None = None  # None: until max_minutes when a budget is set, else DEFAULT_STEPS (max_steps)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.95, 0.999)
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.999  # max EMA decay (warmed up from 0)
    val_fraction: float = 0.05
    val_every: int = 500
    val_batches: int = 4  # batches of validation loss; also the chunks sampled for action MSE
    ckpt_every: int = 1000
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: bool = True  # bfloat16 autocast on CUDA and on CPUs with native bf16 (policy.hardware); else float32
    compile: bool = False  # torch.compile the networks
    resume: bool = False  # continue from out_dir/checkpoints/latest
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    progress: bool = True  # tqdm progress bar
    max_minutes: float = 0.0  # stop after this much training time (validation, checkpoints, evaluation
    # excluded; counted across resumes), the cosine LR decays over it; 0: only the step count ends the run
    budget_clock: str = "wall"  # what max_minutes counts: wall (seconds of training steps) | cpu (process CPU
    # time of training steps, all threads and the stream loader process: CPU-minutes, which other processes on the
    # machine do not eat into)
    eval_every: int = 0  # steps between task evaluations (0: none); the best checkpoint is kept as checkpoints/best
    eval_hook: str = "sim.evaluate:evaluate_in_training"  # "module:function"(checkpoint_dir, **eval_args) -> dict
    eval_args: dict[str, Any] = field(default_factory=dict)  # e.g. {episodes: 10, workers: 2, videos: 1}
    dataset_map: KeyMap = field(default_factory=KeyMap)  # another dataset's keys -> ours, read without a copy
    grad_accum: int = 1  # micro-batches per step and process: batch_size / (processes * grad_accum) samples each
    dist_timeout_minutes: float = 60.0  # multi-process: how long ranks wait for rank 0 (validation, evaluation)
    loggers: tuple[str, ...] = ()  # besides <out_dir>/log.jsonl: tensorboard (<out_dir>/tensorboard) and/or wandb
    wandb_project: str = "visuomotor-dp"
    wandb_entity: str = ""  # "" : the default entity of the W&B login
    wandb_mode: str = "offline"  # offline (<out_dir>/wandb, upload later with `wandb sync`) | online | disabled
    data: str = "auto"  # memory (load every array) | stream (images read from disk, policy.data.stream) | auto:
    # memory when the arrays fit in data_memory_share of the memory available, stream otherwise
    data_memory_share: float = 0.5  # auto: the share of the available memory the loaded arrays may take
    stream_block: int = 64  # stream: frames read at once (rounded up to whole storage chunks)
    stream_pool: int = 32  # stream: blocks whose windows are shuffled together (the cache holds a pool)
    stream_prefetch: int = 4  # stream: batches built ahead by the loader
    stream_loader: str = "thread"  # stream: thread (in this process) | process (a child process builds the images)

    def __post_init__(self) -> None:
        need(self.steps is None or self.steps >= 1, f"train.steps must be >= 1 (or null), got {self.steps}")
        need(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        need(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        need(0.0 <= self.val_fraction < 1.0, f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("val_every", "ckpt_every", "log_every", "val_batches"):
            need(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        need(self.device in DEVICES, f"train.device must be one of {DEVICES}, got {self.device!r}")
        need(self.grad_clip >= 0, f"train.grad_clip must be >= 0, got {self.grad_clip}")
        need(self.max_minutes >= 0, f"train.max_minutes must be >= 0, got {self.max_minutes}")
        need(self.budget_clock in ("wall", "cpu"),
              f"train.budget_clock must be 'wall' or 'cpu', got {self.budget_clock!r}")
        need(self.eval_every >= 0, f"train.eval_every must be >= 0, got {self.eval_every}")
        need(self.eval_every == 0 or self.eval_hook.count(":") == 1,
              f"train.eval_hook must be 'module:function', got {self.eval_hook!r}")
        need(self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
              f"train.grad_accum must be >= 1 and divide train.batch_size ({self.batch_size}), got {self.grad_accum}")
        need(self.dist_timeout_minutes > 0, f"train.dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}")
        unknown = [x for x in self.loggers if x not in LOGGERS]
        need(not unknown and len(set(self.loggers)) == len(self.loggers),
              f"train.loggers must be distinct names out of {LOGGERS}, got {list(self.loggers)}")
        need(self.wandb_mode in WANDB_MODES, f"train.wandb_mode must be one of {WANDB_MODES}, got {self.wandb_mode!r}")
        need(self.data in DATA_MODES, f"train.data must be one of {DATA_MODES}, got {self.data!r}")
        need(0.0 < self.data_memory_share <= 1.0,
             f"train.data_memory_share must be in (0, 1], got {self.data_memory_share}")
        for name in ("stream_block", "stream_pool", "stream_prefetch"):
            need(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        need(self.stream_loader in STREAM_LOADERS,
             f"train.stream_loader must be one of {STREAM_LOADERS}, got {self.stream_loader!r}")

    @property
    def max_steps(self) -> int | None:
        """The step count that ends the run: ``steps``; unset, None on a time budget (only ``max_minutes``
        ends it) and ``DEFAULT_STEPS`` without one."""
        if self.steps is not None:
            return self.steps
        return None if self.max_minutes > 0 else DEFAULT_STEPS

    def end_rule(self) -> str:
        """Which limit ends the run, in words (logged at the start)."""
        budget = f"{self.max_minutes:g} min of training time ({self.budget_clock} clock)"
        if self.max_steps is None:
            return f"after {budget} (train.steps unset)"
        if self.max_minutes > 0:
            return f"at step {self.max_steps} or after {budget}, whichever comes first"
        return f"at step {self.max_steps}" + ("" if self.steps is not None else " (the default; no train.max_minutes)")


@dataclass
class Config:
    """Top-level training config (``configs/train.yaml``)."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
