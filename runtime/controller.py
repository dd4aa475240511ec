"""The real-time controller: read -> buffer -> safety -> write, paced by a clock at 10 Hz.

Each tick reads the robot and the newest camera frames, takes the action due now from the
timestamped buffer, passes it through the safety layer and writes it to the robot. When half of the
current chunk has been executed (``controller.replan_after`` actions when set), the newest observation
window goes to the inference worker and the loop keeps executing; the chunk that comes back replaces the
buffer from now on, without the entries whose time has passed. The loop never waits for inference.
``robot.stop()`` runs in ``finally:``.
How chunks are joined is ``controller.execution`` (``runtime.execution``): ``naive`` replaces,
``rtc``/``bid`` also send the committed actions with each request (a ``ChunkPrefix``) for the policy
to continue, ``ensemble`` averages the overlapping chunks (ACT). ``observers`` (``runtime.observer``, e.g. the
Rerun display of ``runtime.viz``) get a snapshot of every tick after the write; they only queue it.

Every fault ends the run with ``robot.stop()`` called, ``metrics.stop_reason``/``metrics.error`` naming
the cause, and a ``ControllerError`` for the caller: a driver error, observations stale for too long,
``max_inference_failures`` failed inferences in a row, a dead inference process, no answer within
``inference_timeout_s``, ``max_rejected_actions`` rejected actions in a row (NaN, degenerate rotation),
an arm that starts outside the workspace box, and any other exception raised inside the loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from policy import keys
from policy.config_utils import need
from policy.protocol import RTC_SCHEDULES, ChunkPrefix
from runtime.buffer import ActionBuffer
from runtime.clock import Clock, frozen_gc, wait_for_tick
from runtime.drivers.base import Camera, Robot, RobotState
from runtime.execution import EXECUTIONS, DelayEstimator, EnsembleBuffer, build_prefix, make_buffer
from runtime.inference import InferenceResult, InferenceWorker, WorkerDied
from runtime.loop import LoopFault, ObservationReader, guarded_run, target_from_state
from runtime.metrics import JumpMeter, RunMetrics, TickRecord
from runtime.observer import LoopObserver, TickSnapshot
from runtime.safety import REJECTED, OutsideWorkspace, SafetyLayer, SafetyResult

__all__ = ["Controller", "ControllerConfig", "ControllerError", "target_from_state"]

log = logging.getLogger("runtime.controller")


class ControllerError(LoopFault):
    """The run stopped because of a fault (driver, inference, stale observations, ...)."""


@dataclass
class ControllerConfig:
    hz: float = 10.0  # control rate, Hz
    replan: str = "half"  # half: request a chunk when half of the current one is executed | continuous
    replan_after: int = 0  # replan=half: actions of a chunk executed before the next is requested (LeRobot's
    # n_action_steps); 0: half the chunk. On a push_t policy 4, 6, 8, 12 and 14 of 16 gave 60-65 % (300 seeds each,
    # within the intervals; 8 is the default) (README, "Learning per CPU-minute")
    max_inference_failures: int = 3  # consecutive failed inferences before the run stops
    max_rejected_actions: int = 10  # consecutive rejected actions (NaN, degenerate rotation) before it stops
    inference_timeout_s: float = 5.0  # s on the controller's clock: a request unanswered this long stops the run
    keep_trace: bool = False  # record every tick's command (tests, evaluation)
    allow_rate_mismatch: bool = False  # run a checkpoint at another rate than its demos' (chunk timing shifts)
    execution: str = "naive"  # how chunks are joined: naive | rtc | bid | ensemble (runtime.execution) | auto (rtc
    # if the policy takes a prefix, else naive); naive by measurement: on seven push_t policies trained on the
    # default (DART) demos rtc lost 5 points (900 paired episodes, McNemar z = 3.2) and tied elsewhere; rtc keeps
    # the switch jumps at the within-chunk steps with a third of the safety interventions (README, "Joining chunks")
    rtc_max_guidance: float = 5.0  # rtc: clip of the guidance weight (beta); 0: plain sampling
    rtc_schedule: str = "exp"  # rtc: the soft mask over the overlap after the d fixed entries: exp (rtc_decay) |
    # linear (the paper's ramp (P - i) / (P - d + 1): smoother switches, but it follows a new plan late; README)
    rtc_decay: float = 0.5  # rtc, exp schedule: weight exp(-decay * (i - d + 1)) after the d fixed entries
    bid_samples: int = 16  # bid: candidate chunks sampled as one batch
    ensemble_decay: float = 0.01  # ensemble: ACT's m, weights exp(-m * i), i = 0 the oldest chunk
    latency_quantile: float = 0.9  # rtc/bid: d from this quantile of the recent inference delays
    latency_window: int = 20  # rtc/bid: recent requests in that estimate
    latency_initial_s: float = 0.0  # rtc/bid: the guess of inference latency (s) before any request is answered

    def __post_init__(self) -> None:
        need(0 < self.hz <= 1000, f"controller.hz must be in (0, 1000] Hz, got {self.hz!r}")
        need(self.replan in ("half", "continuous"),
             f"controller.replan must be 'half' or 'continuous', got {self.replan!r}")
        need(self.replan_after >= 0,
             f"controller.replan_after must be >= 0 (0: half the chunk), got {self.replan_after!r}")
        need(self.max_inference_failures >= 1,
             f"controller.max_inference_failures must be >= 1 (requests), got {self.max_inference_failures}")
        need(self.max_rejected_actions >= 1,
             f"controller.max_rejected_actions must be >= 1 (ticks), got {self.max_rejected_actions}")
        need(0 < self.inference_timeout_s <= 600,
             f"controller.inference_timeout_s must be in (0, 600] s, got {self.inference_timeout_s!r}")
        need(self.execution in (*EXECUTIONS, "auto"),
             f"controller.execution must be one of auto, {', '.join(EXECUTIONS)}, got {self.execution!r}")
        need(0 <= self.rtc_max_guidance <= 1e3,
             f"controller.rtc_max_guidance must be in [0, 1000], got {self.rtc_max_guidance!r}")
        need(self.rtc_schedule in RTC_SCHEDULES,
             f"controller.rtc_schedule must be one of {', '.join(RTC_SCHEDULES)}, got {self.rtc_schedule!r}")
        need(0 <= self.rtc_decay <= 100,
             f"controller.rtc_decay must be in [0, 100] (per entry), got {self.rtc_decay!r}")
        need(1 <= self.bid_samples <= 1024, f"controller.bid_samples must be in [1, 1024], got {self.bid_samples!r}")
        need(-10 <= self.ensemble_decay <= 10,
             f"controller.ensemble_decay must be in [-10, 10] (per chunk; > 0: older chunks weigh more), "
             f"got {self.ensemble_decay!r}")
        need(0 < self.latency_quantile <= 1,
             f"controller.latency_quantile must be in (0, 1], got {self.latency_quantile!r}")
        need(1 <= self.latency_window <= 10_000,
             f"controller.latency_window must be in [1, 10000] (requests), got {self.latency_window!r}")
        need(0 <= self.latency_initial_s <= 60,
             f"controller.latency_initial_s must be in [0, 60] s, got {self.latency_initial_s!r}")


def check_rate(control_hz: float | None, cfg: ControllerConfig, tolerance: float = 0.02) -> None:
    """Refuse to run a checkpoint at another control rate than its demos' (``control_hz``, None: unknown):
    ``chunk[i]`` is meant for ``t_obs + i / control_hz``. ``controller.allow_rate_mismatch`` overrides."""
    if control_hz is None or abs(cfg.hz - control_hz) <= tolerance * control_hz:
        return
    if cfg.allow_rate_mismatch:
        log.warning("the checkpoint's demos ran at %g Hz, the controller runs at %g Hz (allowed by "
                    "controller.allow_rate_mismatch)", control_hz, cfg.hz)
        return
    raise ValueError(f"controller.hz is {cfg.hz:g} Hz but the checkpoint was trained on demos at {control_hz:g} Hz: "
                     f"its chunks would play {cfg.hz / control_hz:.2g}x too fast; set controller.hz={control_hz:g}, "
                     "or controller.allow_rate_mismatch=true to run it anyway")


class Controller:
    """Runs a policy (through its inference worker) on a robot; the same code on the wall clock and on a
    simulated clock."""

    def __init__(self, robot: Robot, cameras: Mapping[str, Camera], worker: InferenceWorker, safety: SafetyLayer,
                 clock: Clock, cfg: ControllerConfig | None = None, stop_event: threading.Event | None = None,
                 observers: Sequence[LoopObserver] = ()):
        self.robot, self.cameras, self.worker = robot, dict(cameras), worker
        self.observers = tuple(observers)  # each gets a TickSnapshot per tick (runtime.observer); never waited on
        self.policy = policy = worker.spec  # what the policy needs: obs keys, To, chunk length
        self.safety, self.clock = safety, clock
        self.cfg = cfg or ControllerConfig()
        self.dt = 1.0 / self.cfg.hz
        if abs(self.safety.dt - self.dt) > 1e-9:
            raise ValueError(f"safety layer dt {self.safety.dt} differs from the controller period {self.dt}")
        self.stop_event = stop_event or threading.Event()
        missing = [k for k in policy.obs_keys if k not in self.cameras and k not in
                   (keys.EE_POSE, keys.GRIPPER, keys.ACTION_HISTORY)]
        if missing:
            raise ValueError(f"the policy needs observations {missing}; no camera is configured for them "
                             f"(cameras: {sorted(self.cameras)})")
        check_rate(policy.control_hz, self.cfg)
        if self.cfg.replan_after >= policy.chunk_len:
            raise ValueError(f"controller.replan_after={self.cfg.replan_after} must be below the policy's chunk length "
                             f"{policy.chunk_len} (0: half the chunk)")
        self._replan_at = self.cfg.replan_after or policy.chunk_len // 2  # executed actions before a request
        execution = self.cfg.execution
        if execution == "auto":  # rtc where the policy can continue a prefix, naive otherwise
            execution = "rtc" if worker.accepts_prefix else "naive"
            log.info("controller.execution=auto: %s (%s)", execution, worker.name)
        self.execution = execution  # naive | rtc | bid | ensemble
        if execution in ("rtc", "bid") and not worker.accepts_prefix:
            why = worker.no_prefix_reason or "its predict_chunk takes no prefix"
            raise ValueError(f"controller.execution={execution} needs a policy whose predict_chunk takes a prefix "
                             f"(predict_chunk(window, prefix=...)); {worker.name} does not ({why}): use "
                             "controller.execution=naive or ensemble with it")
        self.buffer: ActionBuffer | EnsembleBuffer = make_buffer(execution, policy.chunk_len, policy.action_dim,
                                                                 self.cfg.ensemble_decay)
        self.delays = DelayEstimator(self.cfg.latency_window, self.cfg.latency_quantile, self.cfg.latency_initial_s,
                                     self.dt)
        self.metrics = RunMetrics()
        self._jumps = JumpMeter(self.metrics)
        self._target: np.ndarray | None = None  # the buffer's target of this tick (before safety), None: a hold
        self.reader = ObservationReader(robot, self.cameras)
        self._obs: deque[dict[str, np.ndarray]] = deque(maxlen=policy.n_obs_steps)
        self._history: deque[np.ndarray] = deque(maxlen=policy.history_steps)
        self._failures = 0  # failed inferences in a row
        self._rejected = 0  # rejected actions in a row
        self._submitted: tuple[float, int] | None = None  # (clock time, obs tick) of the request in flight
        self._arrived: InferenceResult | None = None  # the answer whose chunk arrived this tick (observers)

    # ---------------------------------------------------------------- observation

    def _read(self, now: float) -> tuple[RobotState, dict[str, float]]:
        state, ages = self.reader.read(now)
        obs = self.reader.observation(state)
        if len(self._obs) == 0:  # pad the window at the start by repeating the first frame
            self._obs.extend([obs] * self._obs.maxlen)
        self._obs.append(obs)
        return state, ages

    def window(self, history: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The observation window: To frames, oldest first, and ``history``, the actions sent before them."""
        out = {}
        for key in self.policy.obs_keys:
            if key == keys.ACTION_HISTORY:
                out[key] = np.stack(history).astype(np.float32)  # (To, A)
            else:
                out[key] = np.stack([o[key] for o in self._obs])  # (To, ...)
        return out

    # ---------------------------------------------------------------- loop

    def _receive(self, tick: int, now: float) -> None:
        result = self.worker.poll()
        if result is None:
            if self._submitted is not None and now - self._submitted[0] > self.cfg.inference_timeout_s:
                self.metrics.inference_failures += 1
                raise ControllerError(f"inference did not answer within controller.inference_timeout_s="
                                      f"{self.cfg.inference_timeout_s} s (request of tick {self._submitted[1]}, "
                                      f"{now - self._submitted[0]:.2f} s ago); stopped")
            return
        self._submitted = None
        self.metrics.inference_latency_s.append(result.latency_s)
        if result.error is not None or result.chunk is None:
            self._failures += 1
            self.metrics.inference_failures += 1
            log.error("inference failed (%d in a row): %r", self._failures, result.error)
            if isinstance(result.error, WorkerDied):  # nothing left to retry with
                raise ControllerError(f"inference failed: {result.error}")
            if self._failures >= self.cfg.max_inference_failures:
                raise ControllerError(f"inference failed {self._failures} times in a row; last error: "
                                      f"{result.error!r}")
            return
        self._failures = 0
        self.metrics.chunks_received += 1
        self._arrived = result
        self.delays.add(result.obs_tick, tick)
        self.metrics.dropped_stale_actions += self.buffer.insert_chunk(result.chunk, result.obs_tick, tick)

    def _command(self, tick: int, ages: dict[str, float], now: float) -> tuple[SafetyResult, str, int | None]:
        """(safety result, source of the command, obs tick of the chunk it came from)."""
        self._target = None
        res = self.safety.check_staleness(ages, now)
        if res is not None:
            return res, "hold", None
        entry = self.buffer.pop(tick)
        if entry is None:
            if self.metrics.chunks_received == 0:
                self.metrics.startup_hold_ticks += 1
                return self.safety.hold(), "startup", None
            self.metrics.underruns += 1
            log.warning("tick %d: action buffer ran dry (underrun); holding the last safe target", tick)
            return self.safety.hold("underrun"), "hold", None
        action, chunk_tick = entry
        self._target = action
        t0 = time.perf_counter()
        res = self.safety.check(action)
        self.metrics.safety_s.append(time.perf_counter() - t0)
        if REJECTED.isdisjoint(res.reasons):
            self._rejected = 0
        else:
            self._rejected += 1
            if self._rejected >= self.cfg.max_rejected_actions:
                self.metrics.interventions.update(res.reasons)
                raise ControllerError(f"{self._rejected} actions in a row were rejected ({', '.join(res.reasons)}; "
                                      f"controller.max_rejected_actions={self.cfg.max_rejected_actions}): the "
                                      f"policy produces no usable actions; stopped")
        return res, "chunk", chunk_tick

    def prefix(self, tick: int) -> ChunkPrefix | None:
        """The ``ChunkPrefix`` for a request from ``tick`` (rtc/bid), None for naive/ensemble or when nothing is
        committed (before the first chunk, after an underrun)."""
        c = self.cfg
        if self.execution not in ("rtc", "bid"):
            return None
        return build_prefix(self.buffer, tick, self.delays.ticks(), self.execution, c.rtc_max_guidance, c.rtc_decay,
                            c.bid_samples, self.policy.chunk_len, c.rtc_schedule)

    def _request(self, history: list[np.ndarray], tick: int, now: float) -> None:
        prefix = self.prefix(tick)
        if prefix is None:  # a worker written before prefixes existed keeps working
            self.worker.submit(self.window(history), tick)
        else:
            self.worker.submit(self.window(history), tick, prefix=prefix)
        self._submitted = (now, tick)

    def _want_chunk(self, tick: int) -> bool:
        if self.worker.busy:
            return False
        if self.cfg.replan == "continuous" or self._failures > 0 or self.buffer.chunk_tick is None:
            return True
        # replan_after (default half) of the current chunk's entries executed: no more than the rest are left
        return self.buffer.remaining(tick + 1) <= self.policy.chunk_len - self._replan_at

    def run(self, max_ticks: int | None = None, duration_s: float | None = None) -> RunMetrics:
        """Run until ``max_ticks``/``duration_s``, the stop event, or a fault; the robot is stopped at the end.

        Every fault (see the module docstring) raises ``ControllerError`` after the robot has been stopped;
        ``self.metrics`` names it (``stop_reason`` ``fault`` or ``driver_error``, ``error``).
        """
        if max_ticks is None and duration_s is None:
            raise ValueError("run() needs max_ticks or duration_s")
        n_ticks = max_ticks if max_ticks is not None else math.ceil(duration_s * self.cfg.hz)
        with guarded_run(self.robot, self.metrics, ControllerError, "the controller"), frozen_gc():
            self._loop(n_ticks)
        return self.metrics

    def _start(self) -> RobotState:
        """The measured state the run starts from; refuses an arm outside the workspace box."""
        state = self.reader.read_robot()
        current = target_from_state(state)
        try:
            reasons = self.safety.reset(current) or []  # a sim BoxSafety returns None
        except OutsideWorkspace as e:
            self.metrics.interventions["start_outside_workspace"] += 1
            raise ControllerError(str(e)) from e
        self.metrics.interventions.update(reasons)
        return state

    def _observe(self, tick: int, t: float, jitter: float, state: RobotState, sent: np.ndarray,
                 reasons: list[str]) -> None:
        """Hand this tick to the observers (each only queues it: ``runtime.observer``)."""
        arrived, self._arrived = self._arrived, None
        snap = TickSnapshot(tick, t, target_from_state(state), sent,
                            {key: frame.image for key, frame in self.reader.frames.items()}, jitter, tuple(reasons))
        if arrived is not None:
            snap.chunk, snap.chunk_obs_tick = arrived.chunk, arrived.obs_tick
            snap.inference_latency_s = arrived.latency_s
        for observer in self.observers:
            observer.on_tick(snap)

    def _loop(self, n_ticks: int) -> None:
        """The ticks themselves; ``run`` handles faults and always stops the robot."""
        m = self.metrics
        start = self._start()
        # before the first action is sent, the history holds the policy's pad (training pads the same way)
        pad = self.policy.action_space.pad(start.ee_pose, start.gripper).astype(np.float64)
        self._history.extend([pad] * self._history.maxlen)
        t0 = self.clock.now()
        tick = 0
        while tick < n_ticks:
            if self.stop_event.is_set():
                m.stop_reason = "stop_requested"
                break
            deadline = t0 + tick * self.dt
            now = self.clock.now()
            m.tick_jitter_s.append(now - deadline)
            state, ages = self._read(now)
            history_before = list(self._history)
            self._receive(tick, now)
            res, source, chunk_tick = self._command(tick, ages, now)
            m.interventions.update(res.reasons)
            if res.stop:
                raise ControllerError(f"observations stale for too long ({res.reasons}); stopped")
            sent = np.asarray(self.robot.write(res.command), dtype=np.float64)
            self._history.append(sent)
            self._jumps.add(tick, self._target, chunk_tick)
            if self.cfg.keep_trace:
                m.trace.append(TickRecord(tick, now, sent, source, chunk_tick, self._target))
            if self.observers:
                self._observe(tick, now - t0, now - deadline, state, sent, res.reasons)
            if self._want_chunk(tick):
                self._request(history_before, tick, now)
            tick, skipped = wait_for_tick(self.clock, t0, self.dt, tick + 1)
            m.overruns += skipped
        else:
            m.stop_reason = "completed"
