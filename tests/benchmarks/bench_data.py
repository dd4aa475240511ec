"""Training from memory vs streaming from the zarr store (``train.data``), and streaming under a memory cap.

    python tests/benchmarks/bench_data.py [--quick] [--out FILE.json] [--threads N] [--gb G] [--big-gb G]

Writes two synthetic datasets in the streaming layout (image chunks of 64 frames in shards of 1024, Blosc zstd)
under a temporary folder: ``--gb`` (default 2) and ``--big-gb`` (default 4) GiB of 96x96 images from two
cameras, each frame's low 4 bits noise so that they compress about 2x, like camera frames rather than clean
renders. Each measurement is a child process that builds a ``Trainer`` of the default CPU config (batch 64,
``--threads`` torch threads), runs a few warm-up steps, then times ``--steps`` training steps (no validation):

- samples/s of ``train.data=memory`` and ``train.data=stream`` on the ``--gb`` dataset, interleaved
  ``--reps`` times (memory, stream, memory, stream, ...) and the median run of each mode taken, with 1 and
  ``--threads`` threads (1 and 2 by default; pass ``--threads 1`` when the cores are busy with other work);
- ``train.data=auto`` on the ``--big-gb`` dataset with the process's data size capped (``RLIMIT_DATA``) at what
  it holds after its imports plus ``--headroom-mb``, less than half the dataset: auto must stream; and the same
  cap with ``train.data=memory``, which must fail.

Each child reports its peak RSS (VmHWM), its CPU time over the wall time (how busy the cores stay), the time
the training thread waited for the loader, and the CPU time per step of the training thread and of the other
threads (the loader and zarr's decoding): these two do not depend on what else runs on the machine.
Figures go to tests/benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, finish, load_default_policy_dict, machine_info, parse_args, print_table

from policy import keys
from policy.data.replay_buffer import STREAM_LAYOUT, ReplayBuffer
from policy.data.synthetic import synthetic_episode

IMAGE = (96, 96)
EPISODE_LEN = 256
STEP_BYTES = 2 * IMAGE[0] * IMAGE[1] * 3  # two cameras


def write_dataset(path: Path, gib: float, seed: int = 0) -> ReplayBuffer:
    """``gib`` GiB of images (two cameras, 96x96) in episodes of 256 steps, in the streaming layout."""
    rng = np.random.default_rng(seed)
    base = [synthetic_episode(rng, EPISODE_LEN, IMAGE) for _ in range(8)]
    rb = ReplayBuffer.create(path, STREAM_LAYOUT)
    n_episodes = max(2, int(gib * 2**30 / STEP_BYTES / EPISODE_LEN))
    for i in range(n_episodes):
        ep = dict(base[i % len(base)])
        for k in (keys.SCENE_RGB, keys.WRIST_RGB):  # camera-like noise in the low 4 bits
            ep[k] = ep[k] ^ rng.integers(0, 16, ep[k].shape, np.uint8)
        rb.add_episode(ep)
    return rb


def _status_mb(field: str) -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(field + ":")) / 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (run in its own process): see the module docstring."""
    import torch

    from policy.config import Config, PolicyConfig, TrainConfig
    from policy.config_utils import from_dict
    from policy.train import Trainer

    if spec["headroom_mb"]:
        cap = int((_status_mb("VmData") + spec["headroom_mb"]) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    torch.set_num_threads(spec["threads"])
    policy = from_dict(PolicyConfig, load_default_policy_dict())
    train = TrainConfig(dataset=spec["dataset"], out_dir=spec["out_dir"], data=spec["data"], batch_size=64,
                        num_threads=spec["threads"], device="cpu", progress=False, steps=10_000, warmup_steps=10)
    t0 = time.perf_counter()
    try:
        tr = Trainer(Config(policy=policy, train=train))
    except MemoryError as e:
        return {"ok": False, "error": f"MemoryError {e}"}
    init_s = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        tr.train_step()
    stream = tr.stream
    if stream is not None:
        stream.wait_seconds = 0.0
    c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    for _ in range(spec["steps"]):
        tr.train_step()
    wall, cpu, main_cpu = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
    n = spec["steps"]
    out = {"ok": True, "mode": "stream" if stream is not None else "memory", "init_s": init_s,
           "samples_per_s": n * 64 / wall, "step_ms": 1e3 * wall / n, "cpu_busy_pct": 100 * cpu / wall / os.cpu_count(),
           # CPU per step of the training thread (batch assembly in memory mode included), and of the other
           # threads (with 1 torch thread: the stream loader, zarr's decoding): load-independent costs
           "main_cpu_ms_per_step": 1e3 * main_cpu / n, "other_cpu_ms_per_step": 1e3 * (cpu - main_cpu) / n,
           "peak_rss_mb": _status_mb("VmHWM"), "limit_mb": resource.getrlimit(resource.RLIMIT_DATA)[0] / 2**20
           if spec["headroom_mb"] else 0.0}
    if stream is not None:
        done = (n + spec["warmup"]) * 64  # samples trained on (the loader read a few batches more, ahead)
        out.update(wait_ms_per_step=1e3 * stream.wait_seconds / n, frames_decoded_per_sample=
                   stream.cache.frames_read / done, blocks_read_per_step=stream.cache.blocks_read * 64 / done)
        stream.close()
    return out


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        if "MemoryError" in proc.stderr or "Cannot allocate memory" in proc.stderr:
            print(f"  {spec['data']:6s} {Path(spec['dataset']).name}: out of memory under the cap")
            return {"ok": False, "error": "out of memory"}
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"child {spec} failed with exit code {proc.returncode}")
    res = json.loads(lines[-1])
    print(f"  {spec['data']:6s} threads={spec['threads']} {Path(spec['dataset']).name}: "
          + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    return res


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return

    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gb", type=float, default=2.0, help="GiB of images of the memory-vs-stream dataset")
        p.add_argument("--big-gb", type=float, default=4.0, help="GiB of images of the capped dataset")
        p.add_argument("--headroom-mb", type=float, default=700.0,
                       help="the cap: data size after imports + this (MiB)")
        p.add_argument("--steps", type=int, default=64, help="timed training steps per child (default 64)")
        p.add_argument("--reps", type=int, default=3, help="interleaved runs of each mode (default 3; the median)")
        p.add_argument("--tmp", default=None, help="folder for the datasets (default: the system temp folder)")

    args = parse_args(__file__, "samples/s and peak RSS of training from memory vs streaming", extra)
    gb, big_gb, steps, warmup = (0.1, 1.2, 4, 2) if args.quick else (args.gb, args.big_gb, args.steps, 4)
    headroom = 500.0 if args.quick else args.headroom_mb
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_data_", dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        small, big = write_dataset(Path(tmp) / "small.zarr", gb), write_dataset(Path(tmp) / "big.zarr", big_gb, 1)
        disk = {p: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) / 2**30
                for p in (small.path, big.path)}
        print(f"datasets written in {time.perf_counter() - t0:.0f} s: {small.n_steps} steps ({gb:g} GiB of images, "
              f"{disk[small.path]:.2f} GiB on disk), {big.n_steps} steps ({big_gb:g} GiB, {disk[big.path]:.2f} GiB)")
        spec = dict(dataset=str(small.path), out_dir=str(Path(tmp) / "run"), steps=steps, warmup=warmup,
                    headroom_mb=0)
        rows = []
        for threads in sorted({1, args.threads}):
            runs: dict[str, list[dict[str, Any]]] = {"memory": [], "stream": []}
            for _ in range(args.reps):  # interleaved: the machine's load drifts
                for data in ("memory", "stream"):
                    runs[data].append(run_child({**spec, "data": data, "threads": threads}))
            # the median run by samples/s of each mode
            best = {d: sorted(r, key=lambda x: x["samples_per_s"])[len(r) // 2] for d, r in runs.items()}
            m, s = best["memory"], best["stream"]
            pre = f"t{threads}_"
            for d, r in best.items():
                results.update({f"{pre}{d}_samples_per_s": r["samples_per_s"], f"{pre}{d}_step_ms": r["step_ms"],
                                f"{pre}{d}_peak_rss_mb": r["peak_rss_mb"], f"{pre}{d}_cpu_busy_pct": r["cpu_busy_pct"],
                                f"{pre}{d}_init_s": r["init_s"],
                                f"{pre}{d}_main_thread_cpu_ms_per_step": r["main_cpu_ms_per_step"],
                                f"{pre}{d}_other_threads_cpu_ms_per_step": r["other_cpu_ms_per_step"]})
            results.update({f"{pre}stream_over_memory_pct": 100 * s["samples_per_s"] / m["samples_per_s"],
                            f"{pre}stream_wait_ms_per_step": s["wait_ms_per_step"],
                            f"{pre}stream_frames_decoded_per_sample": s["frames_decoded_per_sample"],
                            f"{pre}reps": args.reps})
            for d, r in best.items():
                rows.append((f"{threads} thread(s), {d}, {gb:g} GiB", r["samples_per_s"], r["step_ms"],
                             r["main_cpu_ms_per_step"], r["other_cpu_ms_per_step"], r["peak_rss_mb"],
                             r["cpu_busy_pct"], r.get("wait_ms_per_step", 0.0)))
        capped = {**spec, "dataset": str(big.path), "headroom_mb": headroom, "threads": 1}
        loaded = run_child({**capped, "data": "memory"})
        cs = run_child({**capped, "data": "auto"})
        if not cs["ok"] or cs["mode"] != "stream":
            raise SystemExit(f"train.data=auto under the cap did not stream: {cs}")
        rows.append((f"1 thread, auto -> stream, {big_gb:g} GiB, capped at {cs['limit_mb']:.0f} MiB",
                     cs["samples_per_s"], cs["step_ms"], cs["main_cpu_ms_per_step"], cs["other_cpu_ms_per_step"],
                     cs["peak_rss_mb"], cs["cpu_busy_pct"], cs["wait_ms_per_step"]))
        results.update({"capped_limit_mb": cs["limit_mb"],
                        "capped_dataset_over_limit_x": big_gb * 1024 / cs["limit_mb"],
                        "capped_memory_mode_fails": not loaded["ok"],
                        "capped_stream_samples_per_s": cs["samples_per_s"],
                        "capped_stream_peak_rss_mb": cs["peak_rss_mb"],
                        "capped_stream_cpu_busy_pct": cs["cpu_busy_pct"],
                        "capped_stream_wait_ms_per_step": cs["wait_ms_per_step"],
                        "capped_stream_other_threads_cpu_ms_per_step": cs["other_cpu_ms_per_step"],
                        "dataset_small_images_gb": gb, "dataset_small_disk_gb": disk[small.path],
                        "dataset_small_steps": small.n_steps, "dataset_big_images_gb": big_gb,
                        "dataset_big_disk_gb": disk[big.path], "dataset_big_steps": big.n_steps,
                        "timed_steps": steps, "batch_size": 64, "policy_config": "cpu_default",
                        "image_shape": f"{IMAGE[0]}x{IMAGE[1]}", "stream_layout": "chunk 64, shard 1024, zstd",
                        "machine_shared": True})
    print_table("training from memory vs streaming (default CPU config, batch 64; the machine was shared)",
                ["run", "samples/s", "ms/step", "train thread CPU ms/step", "other threads CPU ms/step",
                 "peak RSS MiB", "CPU busy %", "waited ms/step"], rows)
    verdict = "fails" if not loaded["ok"] else "did not fail"
    ratio = results["capped_dataset_over_limit_x"]
    print(f"capped run: data limited to {cs['limit_mb']:.0f} MiB (dataset {ratio:.1f}x that); "
          f"train.data=memory under the same cap: {verdict}")
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
