"""Run a trained checkpoint on a robot: ``python -m runtime.run checkpoint=<dir> robot=franka ...``.

Hydra config ``configs/run.yaml`` with groups ``robot/`` and ``camera/``; ``dry_run=true`` streams the
commands to ``<log_dir>/commands.jsonl`` without moving the arm. ``display=rerun`` shows the run live in the Rerun
viewer, ``display=rerun+save:<file.rrd>`` records it (``runtime.viz``). Ctrl-C, SIGTERM or the e-stop key stop
the robot and end the run; the run's metrics are appended to ``<log_dir>/metrics.jsonl``.

A fault (``runtime.controller`` lists them) stops the robot, is written to the metrics
(``stop_reason``, ``error``) and ends the command with one line on stderr and exit code 1, not a
traceback; so does a failure to start (a driver that does not connect, a checkpoint that does not load).
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.clock import WallClock
from runtime.controller import Controller, ControllerConfig, ControllerError
from runtime.drivers.base import DriverError
from runtime.factory import make_camera, make_robot
from runtime.metrics import RunMetrics
from runtime.realtime import RealtimeConfig, realtime_loop
from runtime.safety import SafetyConfig, SafetyLayer
from runtime.viz import open_display, parse_display

log = logging.getLogger("runtime.run")


@dataclass
class InferenceConfig:
    worker: str = "process"  # process: a child process (no GIL contention with the loop) | thread
    device: str = "cpu"
    num_threads: int = 1  # torch (onnxruntime) threads for inference; leave cores to the loop and the drivers
    num_inference_steps: int | None = None  # None: the checkpoint's
    sampler: str | None = None

    def __post_init__(self) -> None:
        if self.worker not in ("process", "thread"):
            raise ValueError(f"inference.worker must be 'process' or 'thread', got {self.worker!r}")
        if self.num_threads < 0:
            raise ValueError(f"inference.num_threads must be >= 0, got {self.num_threads}")


@dataclass
class RunConfig:
    checkpoint: str = ""
    robot: dict[str, Any] = field(default_factory=lambda: {"type": "fake"})
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)  # obs key -> camera config
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)  # the loop thread's scheduling
    duration_s: float = 60.0
    dry_run: bool = False
    log_dir: str = "runs/robot"
    display: str = "none"  # none | rerun (a live viewer) | rerun+save:<file.rrd> (runtime.viz; the viz extra)

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint is empty: pass checkpoint=<checkpoint or training run folder>")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        parse_display(self.display)


def _worker(cfg: RunConfig, clock: WallClock):
    from runtime.inference import ProcessWorker, ThreadedWorker

    inf = cfg.inference
    overrides = {k: v for k, v in (("num_inference_steps", inf.num_inference_steps), ("sampler", inf.sampler))
                 if v is not None}
    if inf.worker == "process":
        return ProcessWorker(cfg.checkpoint, clock, device=inf.device, num_threads=inf.num_threads, **overrides)
    from policy.loader import load_policy

    return ThreadedWorker(load_policy(cfg.checkpoint, inf.device, inf.num_threads, **overrides), clock)


def run(cfg: RunConfig, stop_event=None) -> RunMetrics:
    """Connect the devices, run the controller for ``duration_s``, stop the robot, write the metrics."""
    from runtime.drivers.dry_run import DryRunRobot

    log_dir = Path(cfg.log_dir)
    clock = WallClock()
    sys.setswitchinterval(0.001)  # a loop thread waiting for the GIL wakes within 1 ms, not 5 ms
    robot = make_robot(cfg.robot, clock.now)
    if cfg.dry_run:
        robot = DryRunRobot(robot, log_dir / "commands.jsonl")
    cameras = {key: make_camera(spec, clock.now) for key, spec in cfg.cameras.items()}
    with ExitStack() as stack:
        display = open_display(cfg.display, f"run {Path(cfg.checkpoint).name}")
        if display is not None:
            stack.callback(display.close)  # closed last: after the robot has stopped
        worker = _worker(cfg, clock)
        stack.callback(worker.close)
        stack.enter_context(robot)
        for cam in cameras.values():
            stack.enter_context(cam)
        ctrl = Controller(robot, cameras, worker, SafetyLayer(cfg.safety, 1.0 / cfg.controller.hz), clock,
                          cfg.controller, stop_event, observers=[display] if display is not None else [])
        try:
            with realtime_loop(cfg.realtime, [getattr(worker, "pid", None)]):
                metrics = ctrl.run(duration_s=cfg.duration_s)
        except ControllerError as e:
            log.error("run stopped: %s", e)
            metrics = ctrl.metrics
        finally:
            ctrl.metrics.write_jsonl(log_dir / "metrics.jsonl", checkpoint=cfg.checkpoint, dry_run=cfg.dry_run)
    return metrics


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="run",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        from runtime.estop import EStop

        cfg = from_dict(RunConfig, OmegaConf.to_container(dcfg, resolve=True))
        with EStop() as estop:
            if sys.stdin.isatty():
                estop.listen_keys(("ESC", "q"))  # the software e-stop key
            try:
                metrics = run(cfg, estop.event)
            except (ControllerError, DriverError, RuntimeError, ValueError, ImportError) as e:  # failed to start
                sys.exit(f"run could not start: {type(e).__name__}: {e}")
        print({k: v for k, v in metrics.summary().items() if v is not None})
        if metrics.stop_reason not in ("completed", "stop_requested"):
            sys.exit(f"run stopped ({metrics.stop_reason}): {metrics.error}")

    _main()


if __name__ == "__main__":
    main()
