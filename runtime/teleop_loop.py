"""The teleoperation loop: read robot + cameras + device -> integrate a target -> safety -> write -> record.

Like the policy controller (``runtime.controller``), each tick at ``hz`` reads the robot and the newest
frames, turns the device's velocity command into an absolute end-effector target, passes it through the
``SafetyLayer``, writes it, and while recording records the observation with the command actually sent.
Ticks sleep to absolute deadlines ``t0 + (i+1)*dt``; stale observations hold and then stop.

The target is integrated from the *last command sent*, not an internal setpoint: what the safety layer clips
is not wound up, so moving back off a wall responds at once. Rotations compose: ``R <- exp(w*dt) @ R``.

Device events: ``start``, ``keep`` (written in the background: the loop never stalls on it), ``discard``,
``record_toggle``; ``quit`` ends the session, ``estop`` stops at once; an unfinished episode is discarded,
``robot.stop()`` runs in ``finally:``. A ``start`` while the recorder's writer is behind is refused (logged,
counted as ``recorder_behind``); the result's episode counts are what was committed to disk. An arm that
starts outside the workspace box is refused (``TeleopError`` naming the axis and the box), never pulled into
it. Reads and session endings are the controller's (``runtime.loop``). ``run_teleop(...)`` (CLI:
``runtime/teleop.py``) connects everything, installs the e-stop signal handlers and runs the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.clock import Clock, WallClock, wait_for_tick
from runtime.drivers.base import Camera, DriverError, Robot, RobotState
from runtime.estop import EStop
from runtime.loop import LoopFault, ObservationReader, guarded_run, target_from_state
from runtime.observer import LoopObserver, TickSnapshot
from runtime.realtime import RealtimeConfig, realtime_loop
from runtime.recorder import EpisodeRecorder
from runtime.rotation import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from runtime.safety import OutsideWorkspace, SafetyConfig, SafetyLayer, SafetyResult
from runtime.teleop_devices import TeleopDevice, TeleopInput
from runtime.teleop_ui import TeleopStatus

log = logging.getLogger("runtime.teleop")


class TeleopError(LoopFault):
    """The session stopped because of a fault (robot or device driver, stale observations, ...)."""


@dataclass
class TeleopConfig:
    hz: float = 10.0  # loop rate; the recorded dataset has one step per tick
    gripper_open: float = 0.08  # m, width commanded by "open" (and by a toggle from closed)
    gripper_closed: float = 0.0  # m, width commanded by "close"
    keep_in_background: bool = True  # write kept episodes from a writer thread (a 60 s demo takes ~2 s)
    max_device_errors: int = 3  # consecutive failed device reads (zero input, held) before the run stops

    def __post_init__(self) -> None:
        if not self.hz > 0:
            raise ValueError(f"teleop.hz must be > 0, got {self.hz}")
        if not 0 <= self.gripper_closed < self.gripper_open:
            raise ValueError(f"teleop.gripper_closed/open must satisfy 0 <= closed < open, got "
                             f"{self.gripper_closed}, {self.gripper_open}")
        if self.max_device_errors < 1:
            raise ValueError(f"teleop.max_device_errors must be >= 1, got {self.max_device_errors}")


@dataclass
class TeleopResult:
    """What a session did. ``interventions`` counts every safety and loop intervention by reason."""

    ticks: int = 0
    overruns: int = 0  # ticks skipped because the loop fell more than a period behind
    episodes_kept: list[int] = field(default_factory=list)  # dataset episode indices committed to disk
    episodes_writing: int = 0  # kept, not on disk yet (0 once run() has returned)
    episodes_failed: int = 0  # kept, but writing them failed (e.g. a full disk)
    episodes_discarded: int = 0
    steps_recorded: int = 0  # in the committed episodes
    interventions: Counter[str] = field(default_factory=Counter)
    stop_reason: str = "running"  # quit|estop|stop_requested|completed|fault|driver_error|interrupted
    stop_detail: str | None = None  # e.g. the e-stop reason "signal SIGTERM"
    error: str | None = None
    trace: list[np.ndarray] = field(default_factory=list)  # every command sent, when keep_trace

    def summary(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "overruns": self.overruns, "episodes_kept": len(self.episodes_kept),
                "episodes_writing": self.episodes_writing, "episodes_failed": self.episodes_failed,
                "episodes_discarded": self.episodes_discarded, "steps_recorded": self.steps_recorded,
                "interventions": dict(self.interventions), "stop_reason": self.stop_reason,
                "stop_detail": self.stop_detail, "error": self.error}


def integrate_target(sent: np.ndarray, inp: TeleopInput, dt: float, gripper: float) -> np.ndarray:
    """Next absolute target (10,) from the last command ``sent`` (10,), velocities held for ``dt`` s,
    and the gripper width ``gripper`` (m). Rotation composes in the base frame: exp(w*dt) @ R."""
    target = np.asarray(sent, dtype=np.float64).copy()
    target[LAYOUT.position] += inp.translation * dt
    rot = rot6d_to_matrix(target[LAYOUT.rotation])  # (3, 3)
    target[LAYOUT.rotation] = matrix_to_rot6d(axis_angle_to_matrix(inp.rotation * dt) @ rot)
    target[LAYOUT.width] = gripper
    return target


class TeleopLoop:
    """Drives ``robot`` from ``device`` at ``cfg.hz`` and records demos; same code on wall and sim clocks.

    ``cameras`` maps observation keys (``scene_rgb``, ``wrist_rgb``) to cameras; the recorder's image
    keys must all have one. ``stop_event`` is a ``threading.Event`` or an ``EStop`` (whose signal
    handlers are then seen at the very next tick). ``recorder`` None: drive without recording.
    ``observers`` (``runtime.observer``: the status line, the Rerun display) get a snapshot of every tick,
    its ``status`` a ``TeleopStatus``, and one more with the final status when the session ends.
    """

    def __init__(self, robot: Robot, cameras: Mapping[str, Camera], device: TeleopDevice, safety: SafetyLayer,
                 clock: Clock, recorder: EpisodeRecorder | None = None, cfg: TeleopConfig | None = None,
                 stop_event: threading.Event | EStop | None = None, keep_trace: bool = False,
                 observers: Sequence[LoopObserver] = ()):
        self.observers = tuple(observers)
        self.robot, self.cameras, self.device, self.safety, self.clock = robot, dict(cameras), device, safety, clock
        self.recorder = recorder
        self.cfg = cfg or TeleopConfig()
        self.dt = 1.0 / self.cfg.hz
        if abs(self.safety.dt - self.dt) > 1e-9:
            raise ValueError(f"safety layer dt {self.safety.dt} differs from the teleop period {self.dt}")
        if recorder is not None:
            missing = [k for k in recorder.image_keys if k not in self.cameras]
            if missing:
                raise ValueError(f"the recorder records {missing} but no camera is configured for them "
                                 f"(cameras: {sorted(self.cameras)})")
        self.estop = stop_event if isinstance(stop_event, EStop) else None
        self.stop_event = stop_event.event if isinstance(stop_event, EStop) else (stop_event or threading.Event())
        self.keep_trace = keep_trace
        self.result = TeleopResult()
        self.reader = ObservationReader(robot, self.cameras)
        self._sent: np.ndarray | None = None  # (10,) last command sent
        self._gripper = self.cfg.gripper_open  # m, gripper width target
        self._device_errors = 0
        self._last_intervention: str | None = None
        self._last_snapshot: TickSnapshot | None = None

    # ---------------------------------------------------------------- one tick

    def _note(self, reason: str) -> None:
        self.result.interventions[reason] += 1

    def _read_device(self) -> TeleopInput:
        """The device input; zero motion on a failed read, a TeleopError after too many in a row."""
        try:
            inp = self.device.read()
        except DriverError as e:
            self._device_errors += 1
            self._note("device_error")
            log.error("teleop device %s: %s (%d in a row)", self.device.name, e, self._device_errors)
            if self._device_errors >= self.cfg.max_device_errors:
                raise TeleopError(f"teleop device failed {self._device_errors} times in a row: {e}") from e
            return TeleopInput()
        self._device_errors = 0
        return inp

    def _events(self, events: tuple[str, ...]) -> str | None:
        """Apply recorder and session events; returns a stop reason for ``quit``/``estop``."""
        rec = self.recorder
        for ev in events:
            if ev == "quit":
                return "quit"
            if ev == "estop":
                if self.estop is not None:
                    self.estop.trigger("device estop")
                self.stop_event.set()
                return "estop"
            if rec is None:
                log.info("event %r ignored: no recorder", ev)
                continue
            if ev == "record_toggle":
                ev = "keep" if rec.recording else "start"
            if ev == "start":
                if rec.recording:
                    log.info("already recording (%d steps); keep or discard first", rec.n_steps)
                elif rec.writer_behind:
                    self._note("recorder_behind")
                    log.warning("not recording: the recorder is still writing %d kept episodes; start again "
                                "when it has caught up", rec.n_queued)
                else:
                    rec.start()
                    log.info("recording episode %d", rec.n_episodes)
            elif ev == "keep":
                self._keep()
            elif ev == "discard" and rec.recording:
                rec.discard()
                self.result.episodes_discarded += 1
        return None

    def _keep(self) -> None:
        rec = self.recorder
        if rec is None or not rec.recording:
            log.info("keep ignored: not recording")
            return
        n = rec.n_steps
        if n == 0:
            rec.discard()
            self.result.episodes_discarded += 1
            log.warning("keep: the episode has no steps; discarded")
            return
        rec.stop_and_keep(wait=not self.cfg.keep_in_background)
        self._sync_recorder()

    def _sync_recorder(self) -> None:
        """Episode counts from the recorder: committed, still being written, failed."""
        rec, r = self.recorder, self.result
        if rec is None:
            return
        r.episodes_writing = rec.n_queued
        r.episodes_kept, r.steps_recorded, r.episodes_failed = list(rec.committed), rec.committed_steps, len(rec.failed)

    def _apply_gripper(self, command: str | None) -> None:
        """Update the gripper width target (m); a toggle goes to the width it is farther from."""
        is_open = self._gripper > 0.5 * (self.cfg.gripper_open + self.cfg.gripper_closed)
        if command == "open" or (command == "toggle" and not is_open):
            self._gripper = self.cfg.gripper_open
        elif command in ("close", "toggle"):
            self._gripper = self.cfg.gripper_closed

    def _command(self, inp: TeleopInput, ages: dict[str, float], now: float) -> SafetyResult:
        """Hold on stale observations, otherwise the integrated target through the safety layer."""
        res = self.safety.check_staleness(ages, now)
        if res is not None:
            return res
        return self.safety.check(integrate_target(self._sent, inp, self.dt, self._gripper))

    def _record(self, obs: dict[str, np.ndarray], sent: np.ndarray, now: float) -> None:
        rec = self.recorder
        if rec is None or not rec.recording:
            return
        try:
            rec.add_step(obs, sent, now)
        except ValueError as e:  # a bad frame spoils the demo: drop it, keep teleoperating
            rec.discard()
            self.result.episodes_discarded += 1
            self._note("bad_step_discarded")
            log.error("recording a step failed (%s); the episode was discarded", e)

    # ---------------------------------------------------------------- loop

    def _stop_requested(self) -> bool:
        return self.stop_event.is_set() or (self.estop is not None and self.estop.triggered)

    def run(self, max_ticks: int | None = None, duration_s: float | None = None) -> TeleopResult:
        """Run until ``quit``, the stop event, ``max_ticks``/``duration_s`` (None: no limit), or a fault.

        Faults (robot driver errors, a failing device, observations stale for too long, an arm outside the
        workspace box, a failed episode write, any other exception) raise ``TeleopError`` after the robot
        has been stopped; ``self.result`` names the cause and counts what was committed.
        """
        n_ticks = max_ticks if max_ticks is not None else (
            math.ceil(duration_s * self.cfg.hz) if duration_s is not None else None)
        r = self.result
        try:
            with guarded_run(self.robot, r, TeleopError, "teleop"):
                self._loop(n_ticks)
        finally:
            if self.recorder is not None and self.recorder.recording:
                n = self.recorder.discard()
                r.episodes_discarded += 1
                log.warning("discarded the unfinished episode (%d steps) at the end of the session", n)
            self._finish_recording()
            self._observe_end()
        log.info("teleop finished: %s", r.summary())
        return r

    def _finish_recording(self) -> None:
        """Wait for the kept episodes; a failed write is a fault (unless one is being raised already)."""
        rec, r = self.recorder, self.result
        if rec is None:
            return
        try:
            rec.flush()  # kept episodes are on disk when run() returns
        except Exception as e:
            if r.error is None and r.stop_reason != "interrupted":  # not already ending with a fault
                r.stop_reason, r.error = "fault", f"recorder: {e!r}"
                raise TeleopError(f"recorder: writing a kept episode failed: {e!r}") from e
            log.error("recorder: writing a kept episode failed: %r", e)
        finally:
            self._sync_recorder()

    def status(self, stopped: str | None = None) -> TeleopStatus:
        """The session's state now (``TeleopStatus``)."""
        rec, r = self.recorder, self.result
        return TeleopStatus(rec is not None and rec.recording, rec.n_episodes if rec is not None else 0,
                            rec.n_steps if rec is not None else 0, len(r.episodes_kept) + r.episodes_writing,
                            r.episodes_discarded, self.estop.reason if self.estop is not None and
                            self.estop.triggered else None, self._last_intervention, stopped)

    def _observe(self, tick: int, t: float, jitter: float, state: RobotState, sent: np.ndarray,
                 reasons: list[str]) -> None:
        """Hand this tick to the observers (each only queues it: ``runtime.observer``)."""
        if reasons:
            self._last_intervention = f"{', '.join(reasons)} (tick {tick})"
        snap = TickSnapshot(tick, t, target_from_state(state), sent,
                            {key: frame.image for key, frame in self.reader.frames.items()}, jitter, tuple(reasons),
                            status=self.status())
        self._last_snapshot = snap
        for observer in self.observers:
            observer.on_tick(snap)

    def _observe_end(self) -> None:
        """The last tick again, with the final status (how the session ended)."""
        if self.observers and self._last_snapshot is not None:
            r = self.result
            end = replace(self._last_snapshot, chunk=None, reasons=(),
                          status=self.status(r.stop_reason + (f" ({r.stop_detail or r.error})"
                                                              if r.stop_detail or r.error else "")))
            for observer in self.observers:
                observer.on_tick(end)

    def _start(self) -> None:
        """Start from the measured pose; an arm outside the workspace box is refused, never moved."""
        start = self.reader.read_robot()
        self._sent = target_from_state(start)
        self._gripper = float(np.clip(self._sent[LAYOUT.width], self.cfg.gripper_closed, self.cfg.gripper_open))
        try:
            self.result.interventions.update(self.safety.reset(self._sent) or [])
        except OutsideWorkspace as e:
            self._note("start_outside_workspace")
            raise TeleopError(str(e)) from e

    def _loop(self, n_ticks: int | None) -> None:
        """The ticks themselves; ``run`` handles faults, stops the robot and finishes the recording."""
        r = self.result
        self._start()
        t0 = self.clock.now()
        tick = 0
        while n_ticks is None or tick < n_ticks:
            if self._stop_requested():
                r.stop_reason = "stop_requested"
                r.stop_detail = self.estop.reason if self.estop is not None else None
                return
            now = self.clock.now()
            state, ages = self.reader.read(now)
            obs = self.reader.observation(state)
            inp = self._read_device()
            stop = self._events(inp.events)
            if stop is not None:
                r.stop_reason = stop
                r.stop_detail = self.estop.reason if self.estop is not None and stop == "estop" else None
                return
            self._apply_gripper(inp.gripper)
            res = self._command(inp, ages, now)
            r.interventions.update(res.reasons)
            if res.stop:
                raise TeleopError(f"observations stale for too long ({res.reasons}); stopped")
            sent = np.asarray(self.robot.write(res.command), dtype=np.float64)
            self._sent = sent
            r.ticks += 1
            if self.keep_trace:
                r.trace.append(sent.copy())
            self._record(obs, sent, now)
            if self.observers:
                self._observe(tick, now - t0, now - (t0 + tick * self.dt), state, sent, res.reasons)
            tick, skipped = wait_for_tick(self.clock, t0, self.dt, tick + 1)
            r.overruns += skipped
        r.stop_reason = "completed"


def run_teleop(robot: Robot, cameras: Mapping[str, Camera], device: TeleopDevice,
               recorder: EpisodeRecorder | None, cfg: TeleopConfig | None = None,
               safety_cfg: SafetyConfig | None = None, clock: Clock | None = None, estop: EStop | None = None,
               max_ticks: int | None = None, duration_s: float | None = None,
               realtime: RealtimeConfig | None = None, observers: Sequence[LoopObserver] = ()) -> TeleopResult:
    """Connect the device, cameras and robot, install SIGINT/SIGTERM e-stop handlers (main thread only),
    run a ``TeleopLoop`` (with the ``realtime`` settings on its thread) until quit or e-stop, then close
    everything (robot first) and the recorder.

    A keyboard device given the same ``estop`` makes ESC stop at once. ``observers`` are closed last, after the
    robot. Returns the session's counts.
    """
    cfg = cfg or TeleopConfig()
    clock = clock or WallClock()
    estop = estop or EStop()
    # closes in reverse: cameras, robot (stopped already by the loop), device, recorder, handlers, observers
    with contextlib.ExitStack() as stack:
        for observer in observers:
            stack.callback(observer.close)
        if threading.current_thread() is threading.main_thread():
            stack.enter_context(estop)
        stack.callback(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(0.001)  # the loop waits <= 1 ms for the GIL held by the episode writer thread
        if recorder is not None:
            stack.callback(recorder.close)
        stack.enter_context(device)
        stack.enter_context(robot)  # before the cameras, as in runtime.run: a simulated camera renders the robot's env
        for cam in cameras.values():
            stack.enter_context(cam)
        loop = TeleopLoop(robot, cameras, device, SafetyLayer(safety_cfg or SafetyConfig(), 1.0 / cfg.hz), clock,
                          recorder, cfg, stop_event=estop, observers=observers)
        with realtime_loop(realtime or RealtimeConfig()):
            return loop.run(max_ticks=max_ticks, duration_s=duration_s)
