"""``python -m runtime.teleop out=<demos.zarr>``: record demos by teleoperation (hydra: configs/teleop.yaml).

At start it prints the key map (``runtime.teleop_ui``); while it runs, one status line (recording or idle,
episode, steps, kept/discarded, e-stop, the last safety intervention) is redrawn in place on a terminal, or
printed as plain lines on change elsewhere. ``display=rerun`` shows both cameras and the arm live in the
Rerun viewer, ``display=rerun+save:<file.rrd>`` records the session (``runtime.viz``). Practice in
simulation: ``robot=sim robot.task=<task> camera=sim``.

The command line only: the loop is ``runtime.teleop_loop``, which never imports this module (so
``python -m runtime.teleop`` loads each module once). A fault ends the session with a one-line message
on stderr and exit code 1; the kept episodes that were committed stay in the dataset.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.clock import WallClock
from runtime.drivers.base import DriverError
from runtime.estop import EStop
from runtime.realtime import RealtimeConfig
from runtime.recorder import EpisodeRecorder
from runtime.safety import SafetyConfig
from runtime.teleop_devices import TeleopDevice
from runtime.teleop_loop import TeleopConfig, TeleopError, run_teleop
from runtime.viz import DisplayUnavailable, open_display, parse_display


@dataclass
class TeleopRunConfig:
    """``configs/teleop.yaml``: record demos with ``python -m runtime.teleop out=<demos.zarr>``."""

    out: str = ""  # the zarr replay buffer episodes are appended to (created if missing)
    device: str = "keyboard"  # keyboard | spacemouse | spacemouse+keyboard (mouse moves, keys record)
    keyboard: Any = None  # KeyboardConfig settings
    spacemouse: Any = None  # SpaceMouseConfig settings
    robot: dict[str, Any] = field(default_factory=lambda: {"type": "fake"})
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)  # the loop thread's scheduling
    duration_s: float | None = None  # None: until quit / e-stop
    max_queued_episodes: int = 2  # kept episodes waiting for the writer before a new recording is refused
    display: str = "none"  # none | rerun (a live viewer) | rerun+save:<file.rrd> (runtime.viz; the viz extra)
    status_line: bool = True  # print the key map and the session's status line

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out is empty: pass out=<path of the zarr dataset to record into>")
        if self.device not in ("keyboard", "spacemouse", "spacemouse+keyboard"):
            raise ValueError(f"device must be keyboard, spacemouse or spacemouse+keyboard, got {self.device!r}")
        if self.max_queued_episodes < 1:
            raise ValueError(f"max_queued_episodes must be >= 1 (episodes), got {self.max_queued_episodes}")
        parse_display(self.display)


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict
    from runtime.factory import make_camera, make_robot
    from runtime.observer import BackgroundObserver, LoopObserver
    from runtime.teleop_devices import (
        CombinedDevice,
        KeyboardConfig,
        KeyboardDevice,
        SpaceMouseConfig,
        SpaceMouseDevice,
    )
    from runtime.teleop_ui import StatusLine, key_map, log_above_status

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="teleop",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        cfg = from_dict(TeleopRunConfig, OmegaConf.to_container(dcfg, resolve=True))
        clock, estop = WallClock(), EStop()
        kb_cfg = from_dict(KeyboardConfig, cfg.keyboard or {}, "keyboard")
        sm_cfg = from_dict(SpaceMouseConfig, cfg.spacemouse or {}, "spacemouse")
        devices: list[TeleopDevice] = []
        if "spacemouse" in cfg.device:
            devices.append(SpaceMouseDevice(sm_cfg))
        if "keyboard" in cfg.device:
            devices.append(KeyboardDevice(kb_cfg, clock.now, estop=estop))
        device = devices[0] if len(devices) == 1 else CombinedDevice(*devices)
        observers: list[LoopObserver] = []
        try:
            display = open_display(cfg.display, f"teleop {Path(cfg.out).name}")
        except DisplayUnavailable as e:
            sys.exit(f"teleop could not start: {e}")
        if display is not None:
            observers.append(display)
        if cfg.status_line:
            print(key_map(cfg.device, kb_cfg, sm_cfg), flush=True)
            status = StatusLine()
            if status.tty:
                log_above_status()
            observers.append(BackgroundObserver(status, name="status line", on_close=status.close))
        recorder = EpisodeRecorder(cfg.out, tuple(cfg.cameras), max_queued=cfg.max_queued_episodes)
        try:
            result = run_teleop(make_robot(cfg.robot, clock.now),
                                {k: make_camera(v, clock.now) for k, v in cfg.cameras.items()}, device,
                                recorder, cfg.teleop, cfg.safety, clock, estop, duration_s=cfg.duration_s,
                                realtime=cfg.realtime, observers=observers)
        except TeleopError as e:
            sys.exit(f"teleop stopped: {e} (committed episodes: {recorder.committed})")
        except (DriverError, RuntimeError, ValueError) as e:  # a device that does not connect: nothing moved
            sys.exit(f"teleop could not start: {type(e).__name__}: {e}")
        print(result.summary())

    _main()


if __name__ == "__main__":
    main()

