"""Training throughput and peak memory of the default CPU config, on a synthetic dataset or your demos.

    python tests/benchmarks/bench_train.py [--quick] [--out FILE.json] [--threads N] [--precision auto|float32]
        [--compile] [--dataset DIR.zarr] [--code CHECKOUT] [--steps-short N] [--set KEY=VALUE ...]

Builds a synthetic replay buffer (20 episodes x 50 steps at 96x96; --quick: 4 x 20) in a temporary
folder, then runs ``python -m policy.train`` (configs/train.yaml with policy=cpu_default) in a child
process, so that the peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits) is that of
training alone. Throughput is the median of the ``samples_per_s`` records the trainer writes to
``<out_dir>/log.jsonl``, skipping the first (warm-up) record; validation and the checkpoint run
only at the final step, after its throughput record. Figures go to tests/benchmarks/results/train.json.

``--dataset`` trains on your demos instead (e.g. 100 push_t demos). ``--code`` runs ``policy.train`` from another
checkout (e.g. ``git worktree add /tmp/old <commit>``), to measure today's code against an earlier default on the
same machine: run the two side by side, one thread each, so that both see the same machine. ``--set`` passes a
config override to the child (e.g. ``--set policy.encoder.channels=[16,32]``) to time a candidate config. The
``precision`` figure is the one the child logs (``precision: ...``); a checkout too old to log it is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_POLICY_YAML, REPO, finish, git, machine_info, parse_args, print_table

from policy.data.synthetic import make_synthetic_dataset


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def child_peak_rss_mb(cmd: list[str], env: dict[str, str], cwd: Path = REPO,
                      strict: bool = True) -> tuple[float, float, str]:
    """Run ``cmd`` from ``cwd``; returns (wall seconds, its peak RSS in MiB, its stdout and stderr). Its CPU time
    is the change of ``child_cpu_s()`` across the call.

    ``RUSAGE_CHILDREN.ru_maxrss`` is the largest peak of all waited-for children, so a child's own peak
    can be read only when it beats every earlier one: call this for the bigger processes last. ``strict=False``:
    the largest peak so far when this child's does not beat it (the same training, shorter, ran before).
    """
    before_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"child {' '.join(cmd[1:4])} ... failed with exit code {proc.returncode}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if peak_kib <= before_kib and strict:
        raise SystemExit(f"cannot attribute the peak RSS: an earlier child already reached {before_kib} KiB")
    return wall, peak_kib / 1024, proc.stdout + proc.stderr


def run_training(dataset: Path, out_dir: Path, steps: int, batch_size: int, log_every: int, threads: int,
                 device: str, amp: bool = True, compile_: bool = False, code: Path = REPO,
                 strict: bool = True, overrides: tuple[str, ...] = ()) -> tuple[float, float, str]:
    """Train in a child process (``policy.train`` of the checkout ``code``); returns (wall seconds, peak RSS of the
    child in MiB, the precision it logged or ``"not logged by this checkout"``). ``train.amp`` and ``train.compile``
    are passed only when they differ from the defaults, so that a checkout older than those keys runs too."""
    cmd = [sys.executable, "-m", "policy.train", f"policy={DEFAULT_POLICY_YAML.stem}",
           f"train.dataset={dataset}", f"train.out_dir={out_dir}", f"train.steps={steps}",
           f"train.batch_size={batch_size}", f"train.log_every={log_every}",
           f"train.val_every={steps + 1}", f"train.ckpt_every={steps + 1}",  # only at the final step
           f"train.num_threads={threads}", f"train.device={device}", "train.progress=false"]
    cmd += [] if amp else ["train.amp=false"]
    cmd += ["train.compile=true"] if compile_ else []
    cmd += list(overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(code)}
    print("child:", " ".join(cmd[1:]), f"(from {code})")
    wall, peak_mb, output = child_peak_rss_mb(cmd, env, code, strict)
    found = re.search(r"precision: ([^\n]+)", output)
    return wall, peak_mb, found.group(1).strip() if found else "not logged by this checkout"


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, default=150, help="training steps (default 150; --quick: 30)")
        p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
        p.add_argument("--log-every", type=int, default=25,
                       help="steps per throughput record (default 25; --quick: 10)")
        p.add_argument("--device", default="cpu", help="train.device of the child (default cpu)")
        p.add_argument("--precision", choices=["auto", "float32"], default="auto",
                       help="auto: train.amp=true (bf16 autocast where the CPU has native bf16); float32: amp off")
        p.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile the networks)")
        p.add_argument("--dataset", type=Path, default=None, help="train on this dataset (default: synthetic)")
        p.add_argument("--steps-short", type=int, default=0,
                       help="also train this many steps first: (CPU time of the long run - the short one) / (steps - "
                            "steps-short) is a step's CPU time, without startup and loading, and robust to other jobs")
        p.add_argument("--code", type=Path, default=REPO,
                       help="run policy.train from this checkout (default: this one)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a config override for the training child (repeatable), e.g. "
                            "policy.encoder.channels=[16,32]")

    args = parse_args(__file__, "training throughput and peak RSS of the default CPU config", extra)
    n_episodes, episode_len = (4, 20) if args.quick else (20, 50)
    steps, log_every = (30, 10) if args.quick else (args.steps, args.log_every)
    if steps < 2 * log_every:
        raise SystemExit("--steps must be at least 2 x --log-every (the first record is skipped)")
    if args.steps_short and args.steps_short >= steps:
        raise SystemExit(f"--steps-short ({args.steps_short}) must be fewer than the steps ({steps})")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--set expects KEY=VALUE, got {bad}")
    image_shape = (96, 96)

    code = args.code.resolve()
    if not (code / "policy" / "train.py").is_file():
        raise SystemExit(f"--code {code}: not a checkout of this project (no policy/train.py)")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        dataset, out_dir = Path(tmp) / "demos.zarr", Path(tmp) / "run"
        if args.dataset is None:
            rb = make_synthetic_dataset(dataset, n_episodes=n_episodes, episode_len=episode_len,
                                        image_shape=image_shape, seed=0)
        else:
            from policy.data.replay_buffer import ReplayBuffer

            dataset = args.dataset.resolve()
            rb = ReplayBuffer.open(dataset)
            n_episodes, episode_len = rb.n_episodes, round(rb.n_steps / max(rb.n_episodes, 1))
        dataset_steps, dataset_mb = rb.n_steps, dir_size_mb(dataset)
        raw_mb = sum(a.nbytes for a in rb.load().values()) / 2**20
        print(f"dataset: {n_episodes} episodes x {episode_len} steps at {image_shape[0]}x{image_shape[1]} "
              f"({raw_mb:.1f} MiB in memory, {dataset_mb:.2f} MiB on disk)")
        # the same imports without training: how much of the peak is torch itself (smaller, so first)
        _, baseline_mb, _ = child_peak_rss_mb([sys.executable, "-c", "import torch, policy.train"], dict(os.environ))
        run = dict(batch_size=args.batch_size, log_every=log_every, threads=args.threads, device=args.device,
                   amp=args.precision == "auto", compile_=args.compile, code=code, overrides=tuple(args.overrides))
        short_cpu = None
        if args.steps_short:  # the same run shorter, first (smaller peak): startup, data load, val, ckpt cancel out
            c0 = child_cpu_s()
            run_training(dataset, Path(tmp) / "run_short", args.steps_short, **run)
            short_cpu = child_cpu_s() - c0
        c0 = child_cpu_s()
        wall, peak_mb, precision = run_training(dataset, out_dir, steps, **run, strict=short_cpu is None)
        long_cpu = child_cpu_s() - c0
        records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines() if line]
        if not (out_dir / "checkpoints" / "latest").is_dir():
            raise SystemExit(f"the training child wrote no checkpoint under {out_dir}")

    speed = [r for r in records if "samples_per_s" in r]
    used = speed[1:]  # the first record includes the first steps' allocations and warm-up
    if not used:
        raise SystemExit(f"expected at least 2 samples_per_s records in log.jsonl, got {len(speed)}")
    sps = np.array([r["samples_per_s"] for r in used])
    median = float(np.median(sps))
    final_loss = speed[-1]["loss"]

    starts = [1] + [r["step"] + 1 for r in speed[:-1]]
    rows = [(f"steps {a}-{r['step']}", r["samples_per_s"], 1e3 * args.batch_size / r["samples_per_s"], r["loss"],
             "warm-up, skipped" if i == 0 else "") for i, (a, r) in enumerate(zip(starts, speed, strict=True))]
    print_table(f"training throughput: {DEFAULT_POLICY_YAML.stem}, batch {args.batch_size}, {args.threads} "
                f"threads, device {args.device}",
                ["log window", "samples/s", "ms/step", "loss", ""], rows)
    marginal_ms = None
    if short_cpu is not None:
        marginal_ms = 1e3 * (long_cpu - short_cpu) / (steps - args.steps_short)
    print_table("summary", ["figure", "value"], [
        ("CPU ms per step, all threads (long run - short run, per step)", marginal_ms or float("nan")),
        ("samples/s (median of used records)", median),
        ("ms per step (from the median)", 1e3 * args.batch_size / median),
        ("peak RSS of the training process (MiB)", peak_mb),
        ("for comparison: a process that only imports torch, policy.train", baseline_mb),
        ("child wall time incl. startup, data load, final val + ckpt (s)", wall),
    ])

    results: dict[str, Any] = {
        "train_samples_per_s": median,
        "train_samples_per_s_min": float(sps.min()),
        "train_samples_per_s_max": float(sps.max()),
        "train_step_ms_median": 1e3 * args.batch_size / median,
        "train_peak_rss_mb": peak_mb,
        "train_import_peak_rss_mb": baseline_mb,
        "train_wall_s": wall,
        "train_cpu_s": long_cpu,
        "train_batch_size": args.batch_size,
        "train_steps": steps,
        "train_log_every_steps": log_every,
        "train_records_used": len(used),
        "train_final_loss": float(final_loss),
        "dataset_episodes": n_episodes,
        "dataset_episode_len_steps": episode_len,
        "dataset_steps": dataset_steps,
        "dataset_disk_mb": dataset_mb,
        "dataset_memory_mb": raw_mb,
        "policy_config": DEFAULT_POLICY_YAML.stem,
        "image_shape": f"{image_shape[0]}x{image_shape[1]}",
        "device": args.device,
        "precision": precision,  # as the training child logged it
        "precision_requested": args.precision,
        "overrides": " ".join(args.overrides),
        "compile": args.compile,
        "dataset": str(args.dataset) if args.dataset else "synthetic",
        "code": str(code),
        "code_commit": git("rev-parse", "HEAD", repo=code) or "unknown",
        # after training: machine_info runs git in a child process
        **machine_info(args.threads, args.quick),
    }
    if short_cpu is not None:  # only with --steps-short (the results object holds no nulls)
        results.update(train_short_steps=args.steps_short, train_short_cpu_s=short_cpu,
                       train_step_cpu_ms_marginal=marginal_ms)
    finish(results, args.out)


if __name__ == "__main__":
    main()
