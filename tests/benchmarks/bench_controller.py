"""Controller on the wall clock at 10 Hz: tick jitter, underruns and safety-layer cost.

Two policies behind the same ``ThreadedWorker``: a fake one whose inference takes 0.3 s (sleeping),
and the real network (default CPU config, untrained weights: latency does not depend on training).
Fake robot and cameras, so the figures are those of the runtime itself.

    python tests/benchmarks/bench_controller.py [--quick] [--out FILE.json] [--seconds 60]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, load_default_policy_dict, machine_info, parse_args, print_table  # noqa: E402


class SleepyPolicy:
    """A ChunkPolicy that takes ``latency_s`` (sleeping, like waiting for a GPU) and holds the start pose."""

    n_obs_steps, chunk_len, action_dim = 2, 16, 10
    obs_keys = ("scene_rgb", "wrist_rgb", "ee_pose", "gripper", "action_history")

    def __init__(self, latency_s: float):
        self.latency_s = latency_s

    def predict_chunk(self, window):
        time.sleep(self.latency_s)
        last = window["action_history"][-1].astype(np.float64)
        chunk = np.repeat(last[None], self.chunk_len, axis=0)
        chunk[:, 0] += 0.001 * np.arange(self.chunk_len)  # a slow drift in x
        return chunk


def network_checkpoint(tmp: Path) -> Path:
    """An untrained default-CPU-config checkpoint (latency does not depend on the weights)."""
    from policy.checkpoint import save_checkpoint
    from policy.config import Config, PolicyConfig
    from policy.config_utils import from_dict
    from policy.data.synthetic import make_synthetic_dataset
    from policy.model import DiffusionPolicyModel
    from policy.normalizer import Normalizer

    cfg = from_dict(PolicyConfig, load_default_policy_dict())
    arrays = make_synthetic_dataset(tmp / "d.zarr", n_episodes=2, episode_len=20).load(["ee_pose", "gripper", "action"])
    return save_checkpoint(tmp / "ckpt", Config(policy=cfg), DiffusionPolicyModel(cfg), Normalizer.fit(arrays), {})


def run_once(make_worker, seconds: float) -> dict:
    from runtime.clock import WallClock
    from runtime.controller import Controller, ControllerConfig
    from runtime.drivers.fake import FakeCamera, FakeRobot
    from runtime.safety import SafetyConfig, SafetyLayer

    sys.setswitchinterval(0.001)  # as runtime.run does
    clock = WallClock()
    robot = FakeRobot(clock.now, start_pose=np.array([0.3, 0, 0.3, 1, 0, 0, 0, 1, 0]))
    cams = {k: FakeCamera(clock.now) for k in ("scene_rgb", "wrist_rgb")}
    for d in (robot, *cams.values()):
        d.connect()
    worker = make_worker(clock)
    try:
        ctrl = Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), 0.1), clock, ControllerConfig(hz=10.0))
        return ctrl.run(duration_s=seconds).summary()
    finally:
        worker.close()


def main() -> None:
    args = parse_args(__file__, __doc__.splitlines()[0],
                      lambda p: p.add_argument("--seconds", type=float, default=60.0, help="run length per policy"))
    import torch

    from policy.policy import Policy
    from runtime.inference import ProcessWorker, ThreadedWorker

    torch.set_num_threads(args.threads)
    seconds = 8.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = network_checkpoint(Path(tmp))
        net = Policy.from_pretrained(ckpt, device="cpu")
        runs = {  # the network in a child process is runtime.run's default; in a thread for comparison
            "fake_policy": run_once(lambda c: ThreadedWorker(SleepyPolicy(0.3), c), seconds),
            "network": run_once(lambda c: ProcessWorker(str(ckpt), c, num_threads=1), seconds),  # runtime.run default
            "network_thread": run_once(lambda c: ThreadedWorker(net, c), seconds),
        }
    results: dict = {"run_seconds": seconds, "hz": 10.0}
    rows = []
    for name, s in runs.items():
        for k in ("tick_jitter_ms_p50", "tick_jitter_ms_p99", "tick_jitter_ms_max", "inference_latency_ms_p50",
                  "underruns", "dropped_stale_actions", "safety_us_per_action", "ticks", "chunks_received"):
            results[f"{name}_{k}"] = s[k]
        rows.append((name, s["tick_jitter_ms_p50"], s["tick_jitter_ms_p99"], s["tick_jitter_ms_max"],
                     s["inference_latency_ms_p50"], s["underruns"], s["safety_us_per_action"], s["ticks"]))
    print_table(f"controller at 10 Hz on the wall clock, {seconds:.0f} s per policy, torch threads {args.threads}",
                ["policy", "jitter p50 ms", "jitter p99 ms", "jitter max ms", "inference p50 ms", "underruns",
                 "safety us/action", "ticks"], rows)
    print("targets (issue): tick jitter p99 <= 2 ms, underruns 0, safety <= 50 us per action")
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
