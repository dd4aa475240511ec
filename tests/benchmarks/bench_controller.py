"""Controller on the wall clock at 10 Hz: tick jitter, underruns and safety-layer cost.

Two policies behind the same ``ThreadedWorker``: a fake one whose inference takes 0.3 s (sleeping),
and the real network (default CPU config, untrained weights: latency does not depend on training).
Fake robot and cameras, so the figures are those of the runtime itself.

Each policy runs ``--runs`` times without and with the real-time settings of ``runtime.realtime``
(SCHED_FIFO ``--priority``, memory locked, the loop pinned to ``--loop-cpu`` and the inference process
to the other cores; whatever the OS refuses is reported, not fatal). ``--load`` repeats everything with
a training-like load beside it: one busy torch matmul process per core. ``--display`` repeats everything
with the Rerun live view on (``runtime.viz``, recording to a .rrd in a temporary folder: the same sink and
queue as a spawned viewer), keys ending in ``_display``, to show that it costs the loop nothing.

    python tests/benchmarks/bench_controller.py [--quick] [--out FILE.json] [--seconds 20] [--runs 3] [--load]
        [--display] [--only fake_policy|network] [--settings plain,rt]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
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


LOAD_CODE = """
import torch
torch.set_num_threads(1)
a = torch.randn(384, 384)
while True:  # a training-like CPU load: dense matmuls, one core each
    a = torch.tanh(a @ a)
"""


def start_load(n: int) -> list[subprocess.Popen]:
    """Start ``n`` busy torch processes (each on one thread); stop them with ``stop_load``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", LOAD_CODE], env=env) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_once(make_worker, seconds: float, rt=None, display: str = "none") -> dict:
    """One controller run; with ``rt`` (a RealtimeConfig) the loop runs in a thread with those settings and
    an inference child process is pinned to the other cores; ``display`` as ``runtime.run`` takes it."""
    from runtime.clock import WallClock
    from runtime.controller import Controller, ControllerConfig
    from runtime.drivers.fake import FakeCamera, FakeRobot
    from runtime.realtime import configure_realtime, restore_realtime
    from runtime.safety import SafetyConfig, SafetyLayer
    from runtime.viz import open_display

    sys.setswitchinterval(0.001)  # as runtime.run does
    clock = WallClock()
    robot = FakeRobot(clock.now, start_pose=np.array([0.3, 0, 0.3, 1, 0, 0, 0, 1, 0]))
    cams = {k: FakeCamera(clock.now) for k in ("scene_rgb", "wrist_rgb")}
    for d in (robot, *cams.values()):
        d.connect()
    worker = make_worker(clock)
    observer = open_display(display, "bench_controller")
    box: dict = {}

    def loop() -> None:
        report = configure_realtime(rt) if rt is not None else None
        try:
            ctrl = Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), 0.1), clock, ControllerConfig(hz=10.0),
                              observers=[observer] if observer is not None else [])
            box["summary"] = ctrl.run(duration_s=seconds).summary()
        finally:
            if report is not None:
                box["refused"] = report.refused
                restore_realtime(report)

    try:
        proc = getattr(worker, "_proc", None)  # ProcessWorker's child: keep it off the loop's core
        if rt is not None and rt.cpu is not None and proc is not None:
            others = os.sched_getaffinity(0) - {rt.cpu}
            if others:
                os.sched_setaffinity(proc.pid, others)
        thread = threading.Thread(target=loop, name="control loop")
        thread.start()
        thread.join()
        summary = box["summary"]
        summary["realtime_refused"] = "; ".join(box.get("refused", []))
        if observer is not None:
            observer.close()
            summary["display_dropped"] = observer.dropped
            summary["display_sink_ms_per_snapshot"] = 1e3 * observer.sink_s / max(observer.delivered, 1)
        return summary
    finally:
        worker.close()


STATS = ("tick_jitter_ms_p50", "tick_jitter_ms_p99", "tick_jitter_ms_max")


def _options(p) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="run length per policy and run (s)")
    p.add_argument("--runs", type=int, default=3, help="runs per policy and setting")
    p.add_argument("--load", action="store_true", help="also measure with a busy torch process on every core")
    p.add_argument("--priority", type=int, default=70, help="SCHED_FIFO priority of the loop thread")
    p.add_argument("--loop-cpu", type=int, default=(os.cpu_count() or 1) - 1, help="core for the loop thread")
    p.add_argument("--display", action="store_true", help="also measure with the Rerun display on (the viz extra)")
    p.add_argument("--only", default="", help="one policy: fake_policy or network (default both)")
    p.add_argument("--settings", default="plain,rt", help="comma-separated: plain, rt")


def main() -> None:
    args = parse_args(__file__, __doc__.splitlines()[0], _options)
    import torch

    from runtime.inference import ProcessWorker, ThreadedWorker
    from runtime.realtime import RealtimeConfig

    torch.set_num_threads(args.threads)
    seconds, n_runs = (4.0, 1) if args.quick else (args.seconds, args.runs)
    rt_cfg = RealtimeConfig(priority=args.priority, cpu=args.loop_cpu, lock_memory=True)
    results: dict = {"run_seconds": seconds, "runs": n_runs, "hz": 10.0, "realtime_priority": args.priority,
                     "realtime_loop_cpu": args.loop_cpu, "load_processes": os.cpu_count() or 1 if args.load else 0,
                     "display": "rerun+save to a .rrd in a temporary folder (runtime.viz)" if args.display else "none"}
    rows, refused = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = network_checkpoint(Path(tmp))
        policies = {  # the network in a child process is runtime.run's default
            "fake_policy": lambda c: ThreadedWorker(SleepyPolicy(0.3), c),
            "network": lambda c: ProcessWorker(str(ckpt), c, num_threads=1),
        }
        if args.only:
            policies = {args.only: policies[args.only]}
        settings = [(k, v) for k, v in (("plain", None), ("rt", rt_cfg)) if k in args.settings.split(",")]
        displays = ["none", f"rerun+save:{Path(tmp) / 'bench.rrd'}"] if args.display else ["none"]
        for load in ([False, True] if args.load else [False]):
            procs = start_load(os.cpu_count() or 1) if load else []
            try:
                for (setting, rt), name in ((s, n) for s in settings for n in policies):
                    # with and without the display alternately, run by run: both see the same background load
                    by_display = {d: [] for d in displays}
                    for _ in range(n_runs):
                        for d in displays:
                            by_display[d].append(run_once(policies[name], seconds, rt, d))
                    for display, runs in by_display.items():
                        refused.update(r["realtime_refused"] for r in runs if r["realtime_refused"])
                        suffix = "" if display == "none" else "_display"
                        key = f"{name}_{'loaded' if load else 'quiet'}_{setting}{suffix}"
                        if display != "none":
                            results[f"{key}_snapshots_dropped"] = int(sum(r["display_dropped"] for r in runs))
                            results[f"{key}_sink_ms_per_snapshot_mean"] = float(np.mean(
                                [r["display_sink_ms_per_snapshot"] for r in runs]))
                        p99s = [r["tick_jitter_ms_p99"] for r in runs]
                        results[f"{key}_tick_jitter_ms_p50_median"] = float(np.median([r["tick_jitter_ms_p50"]
                                                                                      for r in runs]))
                        results[f"{key}_tick_jitter_ms_p99_median"] = float(np.median(p99s))
                        results[f"{key}_tick_jitter_ms_p99_worst"] = float(max(p99s))
                        results[f"{key}_tick_jitter_ms_max_worst"] = float(max(r["tick_jitter_ms_max"] for r in runs))
                        results[f"{key}_tick_jitter_ms_p99_runs"] = ", ".join(f"{v:.3f}" for v in p99s)
                        results[f"{key}_underruns"] = int(sum(r["underruns"] for r in runs))
                        results[f"{key}_inference_latency_ms_p50_median"] = float(np.median(
                            [r["inference_latency_ms_p50"] for r in runs]))
                        rows.append((key, results[f"{key}_tick_jitter_ms_p50_median"], float(np.median(p99s)),
                                     float(max(p99s)), results[f"{key}_tick_jitter_ms_max_worst"],
                                     results[f"{key}_inference_latency_ms_p50_median"],
                                     results[f"{key}_underruns"]))
                        print(key, "p99 per run (ms):", results[f"{key}_tick_jitter_ms_p99_runs"], flush=True)
            finally:
                stop_load(procs)
    results["realtime_refused"] = "; ".join(sorted(refused)) or "none"
    print_table(f"controller at 10 Hz on the wall clock, {n_runs} x {seconds:.0f} s per policy and setting "
                f"(rt: SCHED_FIFO {args.priority}, mlockall, loop on CPU {args.loop_cpu})",
                ["policy_load_setting", "p50 ms", "p99 ms median", "p99 ms worst", "max ms worst",
                 "inference p50 ms", "underruns"], rows)
    print(f"real-time settings refused: {results['realtime_refused']}")
    print("target (issue 11): tick jitter p99 <= 2 ms with both cores busy, underruns 0")
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
