"""Training from memory vs streaming from the zarr store (``train.data``), and streaming under a memory cap.

    python tests/benchmarks/bench_data.py [--quick] [--out FILE.json] [--threads N] [--gb G] [--big-gb G]

Writes synthetic datasets (96x96 images from two cameras, episodes of 256 steps, each frame's low 4 bits noise so
that they compress about 2x like camera frames rather than clean renders) under a temporary folder: ``--gb``
(default 2) and ``--big-gb`` (default 4) GiB of images in the streaming layout (image chunks of 64 frames in
shards of 1024, Blosc zstd), and 0.3 GiB as recorded (one frame per chunk file, no shards). Then, with the
default CPU config (batch 64, no validation):

- samples/s: one child process per thread count (1 and ``--threads``) holds three trainers, ``train.data=memory``
  and ``stream`` on the ``--gb`` dataset and ``stream`` on the recorded one, and runs them in turns of
  ``--window`` steps for ``--rounds`` rounds, so that the load of a shared machine drifts over all alike (the
  streamed trainers use the loader thread, which stops at the end of its turn, so each turn starts without
  batches read ahead, and keeps its block cache: a loader process would start cold every turn); the
  median ms/step of each, the CPU time per step of the training thread and of the other threads (the loader and
  zarr's decoding: these do not depend on the machine's load), and the time the training thread waited for a
  batch;
- a process that trains alone (what a user runs), ``--alone-steps`` steps after a warm-up, with 1 and
  ``--threads`` torch threads, in ``--alone-repeats`` alternating rounds (memory, stream with the loader process,
  stream with the loader thread; the median): samples/s, peak RSS (VmHWM) of the training process, the memory
  the loader process holds for itself (private pages at its stop: a forked child's RSS also counts the pages it
  shares with its parent), how busy the cores stay (CPU time of both / wall time / cores);
- ``train.data=auto`` on the ``--big-gb`` dataset with the process's data size capped (``RLIMIT_DATA``, inherited
  by the loader process) at what it holds after its imports plus ``--headroom-mb``, less than half the dataset
  (auto must stream; ``memory`` under the same cap must fail), with its samples/s and peak RSS.

Figures go to tests/benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, finish, load_default_policy_dict, machine_info, parse_args, print_table

from policy import keys
from policy.data.replay_buffer import STREAM_LAYOUT, ImageLayout, ReplayBuffer
from policy.data.synthetic import synthetic_episode

IMAGE = (96, 96)
EPISODE_LEN = 256
STEP_BYTES = 2 * IMAGE[0] * IMAGE[1] * 3  # two cameras
BATCH = 64


def write_dataset(path: Path, gib: float, seed: int = 0, layout: ImageLayout = STREAM_LAYOUT) -> ReplayBuffer:
    """``gib`` GiB of images (two cameras, 96x96, noisy low bits) in episodes of 256 steps."""
    rng = np.random.default_rng(seed)
    base = [synthetic_episode(rng, EPISODE_LEN, IMAGE) for _ in range(8)]
    rb = ReplayBuffer.create(path, layout)
    for i in range(max(2, int(gib * 2**30 / STEP_BYTES / EPISODE_LEN))):
        ep = dict(base[i % len(base)])
        for k in (keys.SCENE_RGB, keys.WRIST_RGB):  # camera-like noise in the low 4 bits
            ep[k] = ep[k] ^ rng.integers(0, 16, ep[k].shape, np.uint8)
        rb.add_episode(ep)
    return rb


def _status_mb(field: str) -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(field + ":")) / 1024


def _trainer(dataset: str, data: str, threads: int, out_dir: str, loader: str = "process"):
    from policy.config import Config, PolicyConfig, TrainConfig
    from policy.config_utils import from_dict
    from policy.train import Trainer

    policy = from_dict(PolicyConfig, load_default_policy_dict())
    train = TrainConfig(dataset=dataset, out_dir=out_dir, data=data, batch_size=BATCH, num_threads=threads,
                        device="cpu", progress=False, steps=100_000, warmup_steps=10, stream_loader=loader)
    return Trainer(Config(policy=policy, train=train))


def _timed(tr, steps: int) -> tuple[float, float, float]:
    """(wall, CPU of this process and its loader process, this thread's CPU) seconds of ``steps`` training steps."""
    def cpu() -> float:
        return time.process_time() + (tr.stream.loader_cpu_seconds() if tr.stream is not None else 0.0)

    c0, m0, t0 = cpu(), time.thread_time(), time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    return time.perf_counter() - t0, cpu() - c0, time.thread_time() - m0


def child_speed(spec: dict[str, Any]) -> dict[str, Any]:
    """Three trainers in one process, in turns of ``window`` steps: {name: figures}."""
    import torch

    torch.set_num_threads(spec["threads"])
    trainers = {name: _trainer(ds, data, spec["threads"], f"{spec['out_dir']}_{name}", "thread")
                for name, (ds, data) in spec["runs"].items()}
    for tr in trainers.values():  # warm-up: allocations, the first pool
        _timed(tr, 3)
        if tr.stream is not None:
            tr.stream.wait_seconds = 0.0
    times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in trainers}
    for _ in range(spec["rounds"]):
        for name, tr in trainers.items():
            times[name].append(_timed(tr, spec["window"]))
            if tr.stream is not None:  # no reading ahead during the others' turns (its next turn starts cold)
                tr.stream.close()
    out = {}
    for name, tr in trainers.items():
        t = np.array(times[name]) / spec["window"]  # (rounds, 3) seconds per step
        n = spec["rounds"] * spec["window"]
        out[name] = {"step_ms": 1e3 * float(np.median(t[:, 0])), "samples_per_s": BATCH / float(np.median(t[:, 0])),
                     "main_cpu_ms_per_step": 1e3 * float(np.median(t[:, 2])),
                     "other_cpu_ms_per_step": max(0.0, 1e3 * float(np.median(t[:, 1] - t[:, 2]))),
                     "wait_ms_per_step": 1e3 * tr.stream.wait_seconds / n if tr.stream is not None else 0.0}
        if tr.stream is not None:
            tr.stream.close()
    return out


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """One trainer alone (under a cap when ``headroom_mb``): peak RSS, samples/s, how busy the cores are."""
    import torch

    if spec["headroom_mb"]:
        cap = int((_status_mb("VmData") + spec["headroom_mb"]) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    threads = spec.get("threads", 1)
    torch.set_num_threads(threads)
    try:
        tr = _trainer(spec["dataset"], spec["data"], threads, spec["out_dir"], spec.get("loader", "process"))
        _timed(tr, 5)
        if tr.stream is not None:
            tr.stream.wait_seconds = 0.0
        wall, cpu, main_cpu = _timed(tr, spec["steps"])
    except MemoryError as e:
        return {"ok": False, "error": f"MemoryError: {e}"}
    n = spec["steps"]
    wait_ms = 1e3 * tr.stream.wait_seconds / n if tr.stream is not None else 0.0
    loader_rss = 0.0
    if tr.stream is not None:
        tr.stream.close()
        loader_rss = tr.stream.loader_private_mb
    return {"ok": True, "mode": "stream" if tr.stream is not None else "memory", "peak_rss_mb": _status_mb("VmHWM"),
            "loader_private_mb": loader_rss, "samples_per_s": n * BATCH / wall,
            "cpu_busy_pct": 100 * cpu / wall / (os.cpu_count() or 1),
            "other_cpu_ms_per_step": max(0.0, 1e3 * (cpu - main_cpu) / n), "wait_ms_per_step": wait_ms,
            "limit_mb": resource.getrlimit(resource.RLIMIT_DATA)[0] / 2**20 if spec["headroom_mb"] else 0.0}


def run_child(kind: str, spec: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, f"--{kind}", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        if "MemoryError" in proc.stderr or "Cannot allocate memory" in proc.stderr:
            return {"ok": False, "error": "out of memory"}
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"child {kind} {spec} failed with exit code {proc.returncode}")
    res = json.loads(lines[-1])
    print(f"  {kind}: {json.dumps(res)}")
    return res


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--speed", "--memory"):
        fn = child_speed if sys.argv[1] == "--speed" else child_memory
        print(json.dumps(fn(json.loads(sys.argv[2]))))
        return

    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gb", type=float, default=2.0, help="GiB of images of the memory-vs-stream dataset")
        p.add_argument("--big-gb", type=float, default=4.0, help="GiB of images of the capped dataset")
        p.add_argument("--headroom-mb", type=float, default=700.0,
                       help="the cap: data size after imports + this (MiB)")
        p.add_argument("--window", type=int, default=10, help="steps per turn (default 10)")
        p.add_argument("--rounds", type=int, default=6, help="turns of each trainer (default 6; the median)")
        p.add_argument("--tmp", default=None, help="folder for the datasets (default: the system temp folder)")
        p.add_argument("--alone-steps", type=int, default=150, help="steps of each run alone (default 150)")
        p.add_argument("--alone-repeats", type=int, default=2, help="rounds of the runs alone (default 2)")

    args = parse_args(__file__, "samples/s and peak RSS of training from memory vs streaming", extra)
    q = args.quick
    gb, big_gb, rec_gb = (0.1, 1.2, 0.05) if q else (args.gb, args.big_gb, 0.3)
    window, rounds, headroom = (2, 2, 500.0) if q else (args.window, args.rounds, args.headroom_mb)
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_", dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        small = write_dataset(Path(tmp) / "small.zarr", gb)
        big = write_dataset(Path(tmp) / "big.zarr", big_gb, 1)
        rec = write_dataset(Path(tmp) / "recorded.zarr", rec_gb, 2, ImageLayout())
        disk = {rb.path: sum(f.stat().st_size for f in rb.path.rglob("*") if f.is_file()) / 2**30
                for rb in (small, big, rec)}
        print(f"datasets written in {time.perf_counter() - t0:.0f} s: {small.n_steps} steps ({gb:g} GiB of images, "
              f"{disk[small.path]:.2f} GiB on disk), {big.n_steps} steps ({big_gb:g} GiB, {disk[big.path]:.2f} GiB "
              f"on disk), {rec.n_steps} steps as recorded ({rec_gb:g} GiB)")
        runs = {"memory": (str(small.path), "memory"), "stream": (str(small.path), "stream"),
                "stream_recorded": (str(rec.path), "stream")}
        labels = {"memory": f"memory, {gb:g} GiB", "stream": f"stream, {gb:g} GiB",
                  "stream_recorded": f"stream, {rec_gb:g} GiB as recorded (a file per frame)"}
        for threads in sorted({1, args.threads}):
            res = run_child("speed", {"runs": runs, "threads": threads, "window": window, "rounds": rounds,
                                      "out_dir": str(Path(tmp) / f"run_t{threads}")}, threads)
            for name, r in res.items():
                rows.append((f"{threads} thread(s), {labels[name]}", r["samples_per_s"], r["step_ms"],
                             r["main_cpu_ms_per_step"], r["other_cpu_ms_per_step"], r["wait_ms_per_step"]))
                results.update({f"t{threads}_{name}_{k}": v for k, v in r.items()})
            results[f"t{threads}_stream_over_memory_pct"] = 100 * res["stream"]["samples_per_s"] / \
                res["memory"]["samples_per_s"]
        mem_rows = []
        spec = {"steps": 4 if q else 24, "headroom_mb": 0, "out_dir": str(Path(tmp) / "run_mem")}
        alone = {"memory": ("memory", "process"), "stream": ("stream", "process"),
                 "stream_thread": ("stream", "thread")}
        alone_labels = {"memory": "memory", "stream": "stream, loader process",
                        "stream_thread": "stream, loader thread"}
        for threads in sorted({1, args.threads}):  # processes that train alone, in alternating rounds
            got: dict[str, list[dict[str, Any]]] = {name: [] for name in alone}
            for _ in range(1 if q else args.alone_repeats):
                for name, (data, loader) in alone.items():
                    got[name].append(run_child("memory", {
                        **spec, "steps": 4 if q else args.alone_steps, "threads": threads, "dataset": str(small.path),
                        "data": data, "loader": loader, "out_dir": str(Path(tmp) / f"run_alone_{name}_t{threads}")},
                        threads))
            for name, rs in got.items():
                med = {k: float(np.median([r[k] for r in rs])) for k in ("samples_per_s", "peak_rss_mb",
                       "loader_private_mb", "cpu_busy_pct", "wait_ms_per_step", "other_cpu_ms_per_step")}
                results.update({f"alone_t{threads}_{name}_{k}": v for k, v in med.items()})
                results.update({f"alone_t{threads}_{name}_samples_per_s_round{i}": r["samples_per_s"]
                                for i, r in enumerate(rs)})
                mem_rows.append((f"{threads} thread(s), {alone_labels[name]}, {gb:g} GiB", med["peak_rss_mb"],
                                 med["loader_private_mb"], med["samples_per_s"], med["cpu_busy_pct"],
                                 med["wait_ms_per_step"], "-"))
            for name in ("stream", "stream_thread"):
                results[f"alone_t{threads}_{name}_over_memory_pct"] = 100 * results[
                    f"alone_t{threads}_{name}_samples_per_s"] / results[f"alone_t{threads}_memory_samples_per_s"]
        capped = {**spec, "dataset": str(big.path), "headroom_mb": headroom}
        loaded = run_child("memory", {**capped, "data": "memory", "out_dir": str(Path(tmp) / "run_cap_memory")})
        cs = run_child("memory", {**capped, "data": "auto", "out_dir": str(Path(tmp) / "run_cap_auto")})
        if not cs["ok"] or cs["mode"] != "stream":
            raise SystemExit(f"train.data=auto under the cap did not stream: {cs}")
        mem_rows.append((f"auto -> stream, {big_gb:g} GiB, data capped at {cs['limit_mb']:.0f} MiB",
                         cs["peak_rss_mb"], cs["loader_private_mb"], cs["samples_per_s"], cs["cpu_busy_pct"],
                         cs["wait_ms_per_step"],
                         "fails" if not loaded["ok"] else "did not fail"))
        results.update({"capped_limit_mb": cs["limit_mb"],
                        "capped_dataset_over_limit_x": big_gb * 1024 / cs["limit_mb"],
                        "capped_memory_mode_fails": not loaded["ok"], "capped_stream_peak_rss_mb": cs["peak_rss_mb"],
                        "capped_stream_loader_private_mb": cs["loader_private_mb"],
                        "capped_stream_samples_per_s": cs["samples_per_s"],
                        "capped_stream_cpu_busy_pct": cs["cpu_busy_pct"],
                        "capped_stream_other_threads_cpu_ms_per_step": cs["other_cpu_ms_per_step"],
                        "capped_stream_wait_ms_per_step": cs["wait_ms_per_step"],
                        "dataset_images_gb": gb, "dataset_disk_gb": disk[small.path], "dataset_steps": small.n_steps,
                        "dataset_big_images_gb": big_gb, "dataset_big_disk_gb": disk[big.path],
                        "dataset_big_steps": big.n_steps, "dataset_recorded_images_gb": rec_gb,
                        "window_steps": window, "rounds": rounds, "alone_steps": args.alone_steps,
                        "alone_repeats": args.alone_repeats, "batch_size": BATCH, "policy_config": "cpu_default",
                        "image_shape": f"{IMAGE[0]}x{IMAGE[1]}", "stream_layout": "chunk 64, shard 1024, zstd",
                        "load_average_1min": os.getloadavg()[0], "machine_shared": True})
    print_table("samples/s, trainers in turns in one process (default CPU config, batch 64)",
                ["run", "samples/s", "ms/step", "train thread CPU ms/step", "other threads CPU ms/step",
                 "waited ms/step"], rows)
    print_table("a process that trains alone (medians of its rounds)",
                ["run", "peak RSS MiB", "loader process private MiB", "samples/s", "CPU busy %", "waited ms/step",
                 "memory under the cap"], mem_rows)
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
