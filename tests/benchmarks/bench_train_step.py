"""Where a training step's time goes, and what precision / memory format / compilation do to it.

    python tests/benchmarks/bench_train_step.py [--quick] [--out FILE.json] [--threads 1]
        [--variants float32,bf16,bf16_compile,channels_last,bf16_channels_last] [--steps 30] [--profile]
        [--dataset DIR.zarr] [--glibc-malloc]

Builds the default CPU config's ``Trainer`` on a synthetic dataset (20 episodes x 50 steps at 96x96) and times
the phases of one optimizer step: gathering the batch, the forward pass (encoders + U-Net + loss), the
backward pass, and clip + AdamW + EMA. Times are **CPU time of this process** (``time.thread_time`` of the one
thread that runs torch with ``--threads 1``), so another job on the machine slows the wall clock but barely
the figures; the median over ``--steps`` steps after 8 warm-up steps. ``--profile`` adds torch.profiler's
top operators by input shape for the first variant. ``--dataset`` times steps on a dataset of yours (e.g. 100
push_t demos) instead; ``--glibc-malloc`` leaves glibc's malloc thresholds as they are (training fixes them:
``policy.hardware.keep_freed_memory``), to measure what that fix is worth; the minor page faults a step are
reported either way (``<v>_minor_faults_per_step``).

Figures per variant ``v``: ``<v>_step_cpu_ms``, ``<v>_batch_cpu_ms``, ``<v>_forward_cpu_ms``,
``<v>_backward_cpu_ms``, ``<v>_optimizer_cpu_ms``, ``<v>_samples_per_cpu_s``, ``<v>_speedup_vs_float32``
(and ``<v>_compile_cpu_s`` for compiled variants: the first steps' extra time).
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import DEFAULT_POLICY_YAML, REPO, finish, machine_info, parse_args, print_table

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # compile in this process: its CPU time is counted

from policy import keys  # noqa: E402
from policy.config import Config
from policy.data.synthetic import make_synthetic_dataset
from policy.hardware import native_cpu_bf16
from policy.schedule import batch_ids, ema_update, shard_seed
from policy.train import Trainer

VARIANTS = ("float32", "bf16", "bf16_compile", "channels_last", "bf16_channels_last")


def make_trainer(dataset: Path, out: Path, threads: int) -> Trainer:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from policy.config_utils import from_dict

    overrides = [f"policy={DEFAULT_POLICY_YAML.stem}", f"train.dataset={dataset}", f"train.out_dir={out}",
                 "train.steps=100000", "train.device=cpu", f"train.num_threads={threads}", "train.progress=false"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        dcfg = compose(config_name="train", overrides=overrides)
    return Trainer(from_dict(Config, OmegaConf.to_container(dcfg, resolve=True)))


def time_variant(trainer: Trainer, variant: str, steps: int) -> dict[str, float]:
    model, t = trainer.model, trainer.cfg.train
    if "channels_last" in variant:
        model.to(memory_format=torch.channels_last)
    loss_fn = torch.compile(model.loss) if "compile" in variant else model.loss
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in variant else contextlib.nullcontext

    def step() -> np.ndarray:
        clock = time.thread_time
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ids = batch_ids(trainer.step, len(trainer.train_sampler), t.batch_size, t.seed)
        t0 = clock()
        batch = trainer._batch(trainer.train_sampler, ids)
        t1 = clock()
        gen = torch.Generator().manual_seed(shard_seed(t.seed, trainer.step, 0))
        trainer.optim.zero_grad(set_to_none=True)
        with cast():
            loss = loss_fn(batch, batch[keys.ACTION], gen, trainer.dim_weight)
        t2 = clock()
        loss.backward()
        t3 = clock()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        trainer.optim.step()
        ema_update(trainer.ema, model, trainer.step, t.ema_decay)
        trainer.step += 1
        return np.array([t1 - t0, t2 - t1, t3 - t2, clock() - t3,
                         resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0])

    w0 = time.thread_time()
    for _ in range(8):
        step()
    warm = time.thread_time() - w0
    timed = np.stack([step() for _ in range(steps)])  # (steps, 5): four phases (s), page faults
    faults = float(timed[:, 4].mean())
    times = np.median(timed[:, :4], axis=0) * 1e3  # (4,) ms
    out = {"minor_faults_per_step": faults, "batch_cpu_ms": times[0], "forward_cpu_ms": times[1],
           "backward_cpu_ms": times[2],
           "optimizer_cpu_ms": times[3], "step_cpu_ms": float(times.sum()),
           "samples_per_cpu_s": t.batch_size / times.sum() * 1e3}
    if "compile" in variant:
        out["compile_cpu_s"] = warm - 8 * times.sum() / 1e3
    if "channels_last" in variant:
        model.to(memory_format=torch.contiguous_format)
    return out


def main() -> None:
    def extra(p) -> None:
        p.add_argument("--variants", default=",".join(VARIANTS))
        p.add_argument("--steps", type=int, default=30, help="timed steps per variant (after 8 warm-up steps)")
        p.add_argument("--profile", action="store_true", help="torch.profiler table for the first variant")
        p.add_argument("--dataset", type=Path, default=None, help="time steps on this dataset (default: synthetic)")
        p.add_argument("--glibc-malloc", action="store_true",
                       help="leave glibc's malloc thresholds alone (what training did before keep_freed_memory)")

    args = parse_args(__file__, __doc__.splitlines()[0], extra)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {VARIANTS}")
    steps = 5 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    if args.glibc_malloc:
        import policy.train

        policy.train.keep_freed_memory = lambda: "malloc thresholds left to glibc (--glibc-malloc)"
    results: dict[str, Any] = {"native_cpu_bf16": native_cpu_bf16(), "batch_size": 64, "timed_steps": steps,
                               "malloc": "glibc" if args.glibc_malloc else "kept freed memory",
                               "dataset": str(args.dataset) if args.dataset else "synthetic, 20 x 50 steps"}
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        data = args.dataset or Path(tmp) / "demos.zarr"
        if args.dataset is None:
            make_synthetic_dataset(data, n_episodes=20, episode_len=50, image_shape=(96, 96), seed=0)
        rows = []
        for v in variants:  # a fresh trainer per variant: compiled graphs and memory formats do not leak
            trainer = make_trainer(data, Path(tmp) / f"run_{v}", args.threads)
            r = time_variant(trainer, v, steps)
            results.update({f"{v}_{k}": val for k, val in r.items()})
            rows.append((v, r["batch_cpu_ms"], r["forward_cpu_ms"], r["backward_cpu_ms"], r["optimizer_cpu_ms"],
                         r["step_cpu_ms"], r["samples_per_cpu_s"], r["minor_faults_per_step"]))
            if args.profile and v == variants[0]:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    time_variant(trainer, v, 3)
                print(prof.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=28,
                    max_shapes_column_width=70))
    if "float32_step_cpu_ms" in results:
        for v in variants:
            results[f"{v}_speedup_vs_float32"] = results["float32_step_cpu_ms"] / results[f"{v}_step_cpu_ms"]
    print_table(f"one training step of {DEFAULT_POLICY_YAML.stem}, batch 64, {args.threads} thread(s), "
                "CPU ms (median)", ["variant", "batch", "forward", "backward", "opt+EMA", "step", "samples/CPU-s",
                                      "page faults/step"],
                rows)
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
