"""Train a diffusion policy on a zarr replay buffer: ``python -m policy.train train.dataset=... ``.

AdamW with linear warmup and cosine decay, EMA weights (used for validation, inference and saved),
validation loss and the action MSE of sampled chunks every ``val_every`` steps, checkpoints every
``ckpt_every`` steps and at the end, exact resume from ``<out_dir>/checkpoints/latest``. Batches
and noise are drawn from generators seeded by (seed, epoch) and (seed, step), so a resumed run
continues the same sequence as an uninterrupted one. ``train.data=stream`` (``auto``: when the arrays do not fit)
reads the images from the store while training (``policy.data.stream``). Logs: ``<out_dir>/log.jsonl``, and
TensorBoard / Weights & Biases with ``train.loggers`` (``policy.logger``).

``torchrun --nproc_per_node=N -m policy.train ...`` trains with DistributedDataParallel (``policy.distributed``):
``train.batch_size`` is the global batch of a step, split into ``N * train.grad_accum`` equal shards; shard
``k = rank * grad_accum + m`` holds the samples ``ids[k::N * grad_accum]`` of ``batch_ids(step)`` and draws its
crops and noise from a generator seeded by (seed, step, k). Gradients are averaged over the shards, so
N processes compute the same update as one process with ``train.grad_accum=N`` (up to float rounding).
Only rank 0 logs, validates, evaluates and writes checkpoints; the other ranks wait at a barrier meanwhile.

``train.max_minutes`` stops a run on a budget of training time (counted across resumes; wall time of the steps,
or their CPU time with ``train.budget_clock=cpu``); with ``train.steps`` unset the budget alone ends the run
(without one: 3000 steps); the run logs at its start which limit ends it. ``train.eval_every`` > 0 evaluates
the latest checkpoint every that many steps by the ``train.eval_hook`` plug-in (``sim.evaluate``: policy never
imports the simulator); the best (success rate, then mean score) is kept as ``checkpoints/best``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
except ImportError as e:  # the torch-free install (deploy extra) serves exported policies only
    raise ImportError('training (python -m policy.train) needs torch: '
                      'pip install "visuomotor-dp[train]"') from e

from policy import distributed, keys
from policy.action_frame import fit_normalizer
from policy.atomic import existing, recover, swap_in
from policy.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_checked,
    load_train_state,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from policy.config import Config
from policy.config_utils import from_dict, load_plugin
from policy.data import WindowSampler, open_dataset, split_episodes
from policy.data.stream import open_training_data
from policy.distributed import DistInfo
from policy.hardware import keep_freed_memory, native_cpu_bf16
from policy.logger import RunLogger
from policy.model import DiffusionPolicyModel, obs_keys, to_model_inputs
from policy.objectives import masked_mse
from policy.policy import resolve_device
from policy.schedule import batch_ids, ema_update, lr_at, shard_seed
from policy.train_state import (
    VAL_LOSS_SEED_OFFSET,
    VAL_ORDER_STREAM,
    VAL_SAMPLE_SEED_OFFSET,
    dataset_control_hz,
    dataset_fingerprint,
    legacy_optimizer_state,
    optimizer_state,
    restore_optimizer,
)

log = logging.getLogger("policy.train")


class Trainer:
    """State of one training run (not a framework: it exists so the loop reads top to bottom)."""

    def __init__(self, cfg: Config, dist: DistInfo | None = None, device: torch.device | None = None):
        """``dist``/``device``: this process's rank and device (``distributed.setup``); default one process."""
        self.cfg = cfg
        self.dist = dist or DistInfo()
        t, p = cfg.train, cfg.policy
        if not t.dataset:
            raise ValueError("train.dataset is empty: pass train.dataset=<path to the zarr replay buffer>")
        malloc_note = keep_freed_memory()  # before the step's buffers are allocated: no page faults a step
        if self.dist.is_main:
            log.info("%s", malloc_note)
        self.n_shards = self.dist.world_size * t.grad_accum
        if t.batch_size % self.n_shards:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by the number of processes "
                             f"({self.dist.world_size}) times train.grad_accum ({t.grad_accum})")
        self.out = Path(t.out_dir)
        self.ckpt_dir = self.out / "checkpoints" / "latest"
        self.best_dir = self.ckpt_dir.with_name("best")
        has_ckpt = existing(self.ckpt_dir) is not None
        if has_ckpt and not t.resume:
            raise FileExistsError(f"{self.out} already holds a training run; pass train.resume=true to continue "
                                  f"it or choose another train.out_dir (nothing was overwritten)")
        self.device = device if device is not None else resolve_device(t.device)
        # bf16 autocast: on CUDA, and on CPUs with native bf16 (1.3x the steps/s here); float32 elsewhere
        self.amp = t.amp and (self.device.type == "cuda" or (self.device.type == "cpu" and native_cpu_bf16()))
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(t.seed)
        # a run killed between the two renames of a swap left best.old without best: put it back (readers of
        # latest take latest.old as it is until the next save replaces it)
        if t.resume and self.dist.is_main and recover(self.best_dir):
            log.info("recovered %s from best.old (the run was killed while saving it)", self.best_dir)

        rb = open_dataset(t.dataset, t.dataset_map)  # ours, a zarr v2 group or .zarr.zip; keys through the map
        rb.validate(p.dataset_spec())
        if rb.n_episodes < 1:
            raise ValueError(f"dataset {t.dataset} has no committed episodes")
        self.obs_keys = [k for k in obs_keys(p) if k != keys.ACTION_HISTORY]
        train_ids, val_ids = split_episodes(rb.n_episodes, t.val_fraction, t.seed)
        hist = p.history_steps
        space = p.action_space_spec()  # the history pad at episode starts, shared with the runtime
        mk = lambda ids: WindowSampler(rb.episode_ends, ids, p.n_obs_steps, p.chunk_len, hist, space)  # noqa: E731
        self.train_sampler = mk(train_ids)
        self.val_sampler = mk(val_ids) if len(val_ids) else None
        # train.data: every array in memory, or the images streamed from the store (policy.data.stream)
        self.stream, self.arrays, shapes = open_training_data(rb, cfg, self.obs_keys, self.train_sampler,
                                                              self.dist, self.device)
        # action statistics in the network's frame: relative ones over every training window (policy.action_frame)
        self.normalizer = fit_normalizer(self.arrays, self.train_sampler, list(p.lowdim_dims), p.action_frame)
        self.meta = {"dataset": dataset_fingerprint(rb, shapes),
                     "train_episodes": train_ids.tolist(), "val_episodes": val_ids.tolist(),
                     "obs_keys": list(obs_keys(p)), "n_obs_steps": p.n_obs_steps, "chunk_len": p.chunk_len,
                     "action_dim": p.action_dim, "control_hz": dataset_control_hz(rb)}

        # a resumed run takes its weights from the checkpoint: the ImageNet file is for a new run only
        self.model = DiffusionPolicyModel(p, load_pretrained=not (t.resume and has_ckpt)).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # fused: one kernel for all parameters (on CPU 2 ms a step instead of 15 ms for the per-tensor loop)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                       fused=self.device.type in ("cpu", "cuda") or None)
        self.step = 0
        self.train_seconds = 0.0  # time spent in training steps (max_minutes), kept across resumes
        self.best: dict[str, Any] | None = None
        self.eval_fn = load_plugin(t.eval_hook, "train.eval_hook") if t.eval_every > 0 else None
        if t.resume and has_ckpt:
            self._resume()
        self.dim_weight = torch.from_numpy(self.normalizer.varying(keys.ACTION).astype(np.float32)).to(self.device)
        if t.compile:
            self.model.compile()
            self.ema.compile()
        self.loss_fn = distributed.wrap_for_training(self.model, self.dist, self.device)  # (obs, actions, ...) -> loss
        self.logger = RunLogger(self.out, cfg, self.step) if self.dist.is_main else None
        n_params = sum(x.numel() for x in self.model.parameters())
        if self.dist.is_main:
            log.info("dataset %s: %d episodes (%d train, %d val), %d train windows; model %.2f M parameters on %s"
                     "%s", t.dataset, rb.n_episodes, len(train_ids), len(val_ids), len(self.train_sampler),
                     n_params / 1e6, self.device,
                     f" x {self.dist.world_size} processes" if self.dist.enabled else "")
            log.info("precision: %s", "bfloat16 autocast" if self.amp else "float32" + (
                " (train.amp=false)" if not t.amp else " (this CPU has no native bfloat16)"
                if self.device.type == "cpu" else ""))

    def _resume(self) -> None:
        cfg, ema, normalizer, meta = load_checkpoint(self.out, "cpu")
        if cfg.policy != self.cfg.policy:
            raise CheckpointError(f"cannot resume {self.out}: the policy config differs from the checkpoint's "
                                  f"(saved: {cfg.policy}, now: {self.cfg.policy})")
        if meta["dataset"]["episode_ends_actions_sha256"] != self.meta["dataset"]["episode_ends_actions_sha256"]:
            raise CheckpointError(f"cannot resume {self.out}: the dataset differs from the one it was trained on "
                                  f"({meta['dataset']['path']})")
        tensors, state = load_train_state(resolve_checkpoint_dir(self.out))
        load_state_checked(self.ema, ema.state_dict(), "checkpoint EMA weights")
        load_state_checked(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                           "train_state.safetensors")
        try:  # the optimizer's own state_dict, as it was saved (checkpoints of the first format: rebuilt)
            saved = state["optimizer"] if "optimizer" in state else legacy_optimizer_state(
                self.optim, tensors, int(state["optim_step"]))
            restore_optimizer(self.optim, tensors, saved)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"cannot resume {self.out}: the optimizer state does not fit ({e})") from e
        self.normalizer = normalizer
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        best = existing(self.best_dir)  # best.old on ranks > 0 when rank 0 has not put it back yet
        if best is not None and (best / "eval.json").is_file():
            self.best = json.loads((best / "eval.json").read_text())
        if self.dist.is_main:
            log.info("resumed %s at step %d", self.out, self.step)

    def _train_state(self) -> dict[str, Any]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_tensors, optim_json = optimizer_state(self.optim)
        return {"tensors": {**tensors, **optim_tensors},
                "json": {"step": self.step, "train_seconds": self.train_seconds, "optimizer": optim_json}}

    def save(self) -> Path:
        meta = {**self.meta, "step": self.step}
        return save_checkpoint(self.ckpt_dir, self.cfg, self.ema, self.normalizer, meta, self._train_state())

    def _batch(self, sampler: WindowSampler, ids: np.ndarray) -> dict[str, torch.Tensor]:
        if self.stream is not None:  # images read from the store
            raw = self.stream.gather(sampler, ids)
        else:
            raw = sampler.gather(self.arrays, ids, self.obs_keys)  # each (B, To, ...), action (B, Tp, A)
        return to_model_inputs(raw, self.cfg.policy, self.normalizer, self.device)

    def _train_batch(self, k: int, m: int) -> dict[str, torch.Tensor]:
        """Shard ``k`` (micro-batch ``m`` of this process) of this step's global batch, as model inputs."""
        t = self.cfg.train
        if self.stream is not None:  # built ahead by the loader thread, in the block-shuffled order
            raw = self.stream.train_batch(self.step, m)
            return to_model_inputs(raw, self.cfg.policy, self.normalizer, self.device)
        ids = batch_ids(self.step, len(self.train_sampler), t.batch_size, t.seed)  # (batch_size,) global batch
        return self._batch(self.train_sampler, ids[k::self.n_shards])  # (batch_size / n_shards, ...)

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> torch.Tensor:
        """One optimizer step; -> this process's mean loss over its shards (a 0-dim tensor)."""
        t = self.cfg.train
        for group in self.optim.param_groups:
            group["lr"] = lr_at(self.step, self.cfg, self.train_seconds)
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for m in range(t.grad_accum):
            k = self.dist.rank * t.grad_accum + m  # shard index in the global batch
            batch = self._train_batch(k, m)  # (batch_size / n_shards, ...)
            gen = torch.Generator(device=self.device).manual_seed(shard_seed(t.seed, self.step, k))
            # DDP averages the gradients over ranks in the backward of the last micro-batch only
            with distributed.no_sync(self.loss_fn, skip=m < t.grad_accum - 1):
                with self._autocast():
                    loss = self.loss_fn(batch, batch[keys.ACTION], gen, self.dim_weight)
                (loss / t.grad_accum).backward()
            loss_sum += loss.detach().float()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optim.step()
        ema_update(self.ema, self.model, self.step, t.ema_decay)  # identical on every rank: so are the weights
        self.step += 1
        return loss_sum / t.grad_accum

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """EMA model: denoising loss on held-out windows, and MSE of sampled chunks against the demo."""
        t = self.cfg.train
        sampler, split = (self.val_sampler, "val") if self.val_sampler is not None else (self.train_sampler, "train")
        order = np.random.default_rng([t.seed, VAL_ORDER_STREAM]).permutation(len(sampler))
        losses = []
        for i in range(t.val_batches):
            ids = order[i * t.batch_size:(i + 1) * t.batch_size]
            if len(ids) == 0:
                break
            batch = self._batch(sampler, ids)
            gen = torch.Generator(device=self.device).manual_seed(t.seed + VAL_LOSS_SEED_OFFSET + i)
            with self._autocast():
                losses.append(float(self.ema.loss(batch, batch[keys.ACTION], gen, self.dim_weight)))
        ids = order[:t.batch_size]
        batch = self._batch(sampler, ids)
        gen = torch.Generator(device=self.device).manual_seed(t.seed + VAL_SAMPLE_SEED_OFFSET)
        with self._autocast():
            pred = self.ema.sample(batch, gen).float()  # (B, Tp, A) normalized
        target = batch[keys.ACTION]
        pred_robot = self.normalizer.unnormalize(keys.ACTION, pred)
        target_robot = self.normalizer.unnormalize(keys.ACTION, target)
        return {f"{split}_loss": float(np.mean(losses)),
                f"{split}_action_mse_normalized": float(masked_mse(pred, target, self.dim_weight)),
                f"{split}_action_mse": float(((pred_robot - target_robot) ** 2).mean())}

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the latest checkpoint with the eval hook; keep it as ``best`` when it beats the best."""
        t = self.cfg.train
        try:
            res = dict(self.eval_fn(self.ckpt_dir, **t.eval_args))
        except Exception as e:  # noqa: BLE001 - a failed evaluation must not end a training run
            log.exception("step %d: evaluation failed; training goes on", self.step)
            return {"eval_error": repr(e)}
        if "success_rate" not in res:
            raise ValueError(f"train.eval_hook {t.eval_hook} returned no 'success_rate' (keys: {sorted(res)})")
        res["step"] = self.step
        videos = res.get("videos")
        if self.logger is not None and isinstance(videos, (list, tuple)) and videos:
            self.logger.log_videos(self.step, [str(v) for v in videos])
        key = (float(res["success_rate"]), float(res.get("mean_score", 0.0)))
        if self.best is None or key > (float(self.best["success_rate"]), float(self.best.get("mean_score", 0.0))):
            tmp = self.best_dir.with_name("best.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.ckpt_dir, tmp)
            (tmp / "eval.json").write_text(json.dumps(res, indent=1))
            swap_in(tmp, self.best_dir)
            self.best = res
            log.info("step %d: new best checkpoint (success rate %.3f)", self.step, key[0])
        return {f"eval_{k}": v for k, v in res.items() if isinstance(v, (int, float)) and k != "step"}

    def write_log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(self.step, record)

    def _cpu_clock(self) -> float:
        """CPU seconds of this process (all threads) and of its stream loader process (``budget_clock=cpu``)."""
        return time.process_time() + (self.stream.loader_cpu_seconds() if self.stream is not None else 0.0)

    def run(self) -> Path:
        from tqdm import tqdm

        t = self.cfg.train
        budget = t.max_minutes * 60
        max_steps = t.max_steps  # None: only the time budget ends the run
        main = self.dist.is_main
        if main:
            log.info("the run ends %s", t.end_rule())
        # on a time budget the step count is only a cap: show steps and minutes left, not a step ETA
        bar = tqdm(total=None if budget > 0 else max_steps, initial=self.step, disable=not (t.progress and main),
                   dynamic_ncols=True, desc="train", unit="step")
        window_t, window_n, loss_sum, paused = time.perf_counter(), 0, 0.0, 0.0
        clock = self._cpu_clock if t.budget_clock == "cpu" else time.perf_counter
        try:
            while (max_steps is None or self.step < max_steps) and not 0 < budget <= self.train_seconds:
                step_t = clock()
                loss_t = self.train_step()
                self.train_seconds += clock() - step_t
                # every rank: the global-batch loss and rank 0's clock, so that all ranks decide alike
                loss, self.train_seconds = distributed.mean_loss_and_rank0_value(self.dist, loss_t,
                                                                                 self.train_seconds)
                out_of_time = 0 < t.max_minutes * 60 <= self.train_seconds
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss} at step {self.step}; the last checkpoint "
                                             f"in {self.ckpt_dir} is kept (try a lower train.lr)")
                window_n += 1
                loss_sum += loss
                bar.update(1)
                pause_t = time.perf_counter()
                last = self.step == max_steps or out_of_time
                want_val = self.step % t.val_every == 0 or last
                want_eval = self.eval_fn is not None and (self.step % t.eval_every == 0 or last)
                want_save = self.step % t.ckpt_every == 0 or last or want_eval
                if main and want_val:
                    rec = self.validate()
                    self.write_log(rec)
                    log.info("step %d: %s", self.step, ", ".join(f"{k}={v:.5f}" for k, v in rec.items()))
                if main and want_save:
                    self.save()
                if main and want_eval:
                    rec = self.evaluate()
                    self.write_log(rec)
                    log.info("step %d: %s", self.step, ", ".join(f"{k}={v}" for k, v in rec.items()))
                if want_val or want_save or want_eval:
                    distributed.barrier(self.dist)  # the other ranks wait for rank 0
                paused += time.perf_counter() - pause_t  # validation and checkpoints do not count as training
                if self.step % t.log_every == 0 or last:
                    dt = time.perf_counter() - window_t - paused
                    rec = {"loss": loss_sum / window_n, "lr": lr_at(self.step - 1, self.cfg, self.train_seconds),
                           "samples_per_s": window_n * t.batch_size / max(dt, 1e-9)}
                    self.write_log(rec)
                    post = {"loss": f"{rec['loss']:.4f}", "samples_s": f"{rec['samples_per_s']:.0f}"}
                    if budget > 0:
                        post["min_left"] = f"{max(0.0, budget - self.train_seconds) / 60:.1f}"
                    bar.set_postfix(post)
                    window_t, window_n, loss_sum, paused = time.perf_counter(), 0, 0.0, 0.0
                if out_of_time:
                    if main:
                        log.info("step %d: train.max_minutes=%g reached; stopping", self.step, t.max_minutes)
                    break
        finally:
            bar.close()
            if self.stream is not None:
                self.stream.close()
            if self.logger is not None:
                self.logger.close()
        return self.ckpt_dir


def train(cfg: Config) -> Path:
    """Run training to ``cfg.train.max_steps`` or its time budget; returns the latest checkpoint folder.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; they join one process group first.
    """
    info, device = distributed.setup(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        return Trainer(cfg, info, device).run()
    finally:
        distributed.teardown(info)


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="train",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        data = OmegaConf.to_container(dcfg, resolve=True)
        ckpt = train(from_dict(Config, data))
        if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from rank 0
            print(f"checkpoint: {ckpt}")

    _main()


if __name__ == "__main__":
    main()
