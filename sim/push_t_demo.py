"""Scripted Push-T demonstrator, varied the way human demos are, acting at 10 Hz.

It reads the privileged block pose from the env and plans one push at a time, closed loop: candidate
pushes are points on the T's outline with a push direction (the inward normal turned by up to
``angles``); each is rolled out with a quasi-static pushing model (sticking contact, ellipsoidal limit
surface about the centroid) to find how far to push, and scored by the pose error it removes per
second (travel to its start, the push itself and a fixed overhead). One of the near-best is drawn at
random, so rotations are sometimes made from one side of the T and sometimes from the other (the task
is multimodal).
A push is: lift over the block if the low path is blocked (or sometimes anyway), go to the start
point, descend, push at a slow speed, back off. It stops a push early once the block starts moving
away from the goal, and finishes (backs off, lifts and holds: ``done``) once the overlap reaches a
per-episode threshold. Variation, all from its own seeded generator: the near-best choice, heights,
speeds and random speed changes, gaps before the pushes, pauses, detours, gripper yaw and a small
smooth hand tremor.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from policy.config_utils import need
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim.motion import (
    Hand,
    Move,
    Tremor,
    Wait,
    draw,
    hand_target,
    maybe_pause,
    vary_speed,
    wait_tick,
    wrap_angle,
    yaw_of,
)
from sim.push_model import contact_candidates, pose_error, simulate_pushes
from sim.push_t import PushTEnv, point_distance, t_outline, transform

PUSHER_HALF = 0.01  # m, half side of the closed finger pads (a 2 x 2 cm square around the TCP)


@dataclass
class PushDemoConfig:
    """Ranges (lo, hi) are drawn uniformly per episode or push (m, m/s, rad, ticks)."""

    travel_speed: tuple[float, float] = (0.15, 0.22)
    push_speed: tuple[float, float] = (0.05, 0.09)
    fine_push_speed: tuple[float, float] = (0.03, 0.05)  # when the block is within ``fine_error`` of the goal
    fine_error: float = 0.02  # m, pose error (see ``pose_error``)
    accel: float = 1.5  # m/s^2
    push_height: tuple[float, float] = (0.018, 0.026)  # TCP height while pushing (finger tips 1.5 cm lower)
    travel_height: tuple[float, float] = (0.06, 0.08)  # TCP height when passing over the block
    standoff: tuple[float, float] = (0.008, 0.02)  # gap between pusher and block before a push
    retreat: tuple[float, float] = (0.008, 0.02)  # back-off along the push after it
    finish_overlap: tuple[float, float] = (0.93, 0.95)  # stop pushing at this overlap
    max_push: float = 0.1  # longest push considered
    spacing: float = 0.01  # spacing of candidate contact points along the outline
    angles: tuple[float, ...] = (-0.4, 0.0, 0.4)  # push directions relative to the inward normal (rad)
    limit_radius: float = 0.065  # m, c of the ellipsoidal limit surface (moment / force at slip)
    contact_friction: float = 1.0  # pusher-block friction coefficient assumed by the model
    push_overhead: float = 1.0  # s, time of a push beside travelling and pushing (lift, descend, back off)
    choice: float = 0.25  # draw among the pushes whose error reduction per second is within this fraction of the best
    lift_prob: float = 0.25  # lift between pushes even when the low path is free
    detour_prob: float = 0.25  # via point on a lifted move
    detour: float = 0.04
    pause_prob: float = 0.2
    pause_ticks: tuple[int, int] = (1, 3)
    speed_change_prob: float = 0.05  # per tick: the cruise speed is scaled by U(0.6, 1.4)
    tremor: float = 0.001  # m, std of the smooth (AR(1)) position noise (x0.3 while pushing)
    yaw: float = 0.3  # gripper yaw drawn per episode in +-yaw

    def __post_init__(self) -> None:
        for name in ("travel_speed", "push_speed", "fine_push_speed", "push_height", "travel_height", "standoff",
                     "retreat", "finish_overlap", "pause_ticks"):
            lo, hi = getattr(self, name)
            need(lo <= hi, f"demo.{name}: low {lo} must not exceed high {hi}")
        need(self.travel_speed[0] > 0 and self.push_speed[0] > 0 and self.fine_push_speed[0] > 0,
              "demo.travel_speed, push_speed and fine_push_speed must be > 0")
        need(self.accel > 0, f"demo.accel must be > 0, got {self.accel}")
        need(self.push_height[0] >= 0.015, f"demo.push_height must be >= 0.015 m, got {self.push_height}")
        need(self.travel_height[0] >= 0.06, f"demo.travel_height must be >= 0.06 m, got {self.travel_height}")
        need(0 < self.finish_overlap[0] and self.finish_overlap[1] <= 1,
              f"demo.finish_overlap must be in (0, 1], got {self.finish_overlap}")
        need(self.max_push > 0 and self.spacing > 0 and self.limit_radius > 0 and self.contact_friction > 0,
              "demo.max_push, spacing, limit_radius and contact_friction must be > 0")
        for name in ("lift_prob", "detour_prob", "pause_prob", "speed_change_prob"):
            need(0 <= getattr(self, name) <= 1, f"demo.{name} must be in [0, 1], got {getattr(self, name)}")
        need(self.tremor >= 0 and 0 <= self.choice < 1, "demo.tremor must be >= 0 and demo.choice in [0, 1)")
        need(self.push_overhead > 0, f"demo.push_overhead must be > 0, got {self.push_overhead}")


# ---------------------------------------------------------------- demonstrator


class Cue(enum.Enum):
    """Plan steps without arguments: a decision taken when the step is reached."""

    PLAN = "plan"  # choose the next push from where the block is now (or finish)
    FINISH = "finish"  # done if the T covers the goal, else plan again


@dataclass(frozen=True)
class Push:
    """A push from here along ``direction`` (2,) until ``length`` m past the first contact, at ``speed`` m/s."""

    direction: np.ndarray
    length: float
    speed: float


@dataclass(frozen=True)
class Pushing:
    """A push under way toward ``end`` (3,) m at ``speed`` m/s along ``direction`` (2,); ``best`` is the
    smallest pose error (m) reached so far."""

    end: np.ndarray
    speed: float
    direction: np.ndarray
    best: float


Step = Wait | Move | Push | Pushing | Cue


class PushTDemonstrator:
    """``reset(seed)`` after ``env.reset``, then ``act(obs)`` each step; ``done`` once the T covers the
    goal and the hand has backed off (it then holds still). ``plan`` is the list of steps still to execute."""

    def __init__(self, env: Any, cfg: PushDemoConfig | None = None, dt: float | None = None):
        self.env: PushTEnv = env.unwrapped
        self.cfg = cfg or PushDemoConfig()
        self.dt = dt if dt is not None else 1.0 / self.env.cfg.control_hz
        self.rng = np.random.default_rng()
        self.outline = t_outline(self.env.cfg)  # (8, 2) body frame
        self.points, self.normals = contact_candidates(self.outline, self.cfg.spacing)
        # mean squared distance of the T's points from its centroid, from its two rectangles
        r2 = 0.0
        for rect in self.env.rects:
            (x0, y0), (x1, y1) = rect[0], rect[2]
            area = (x1 - x0) * (y1 - y0)
            r2 += area * ((x1**3 - x0**3) / (3 * (x1 - x0)) + (y1**3 - y0**3) / (3 * (y1 - y0)))
        self.radius2 = r2 / self.env.area
        self.plan: list[Step] = []
        self.done = False

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode from the env's current (just reset) state."""
        c = self.cfg
        self.rng = np.random.default_rng(seed)
        pose = self.env.ee_pose()
        yaw = wrap_angle(yaw_of(pose) + self.rng.uniform(-c.yaw, c.yaw))
        self.hand = Hand(pose[LAYOUT.position].copy(), yaw, c.accel, 0.0, self.dt)  # the yaw stays
        self.tremor = Tremor(c.tremor, (1.0, 1.0, 0.3))
        self.finish = self._u(c.finish_overlap)
        self.push_z = self._u(c.push_height)
        self.travel_z = self._u(c.travel_height)
        self.pushes = 0
        self.done = False
        self.plan = [Wait(int(self.rng.integers(1, 4))), Cue.PLAN]

    @property
    def pos(self) -> np.ndarray:
        """(3,) commanded TCP position (m), without the tremor."""
        return self.hand.pos

    def _u(self, lohi: tuple[float, float]) -> float:
        return draw(self.rng, lohi)

    def _move(self, pos, speed: float | None = None) -> None:
        self.plan.append(Move(np.asarray(pos, float), speed or self._u(self.cfg.travel_speed)))

    def _pause(self, prob: float | None = None) -> None:
        maybe_pause(self.rng, self.plan, self.cfg.pause_prob if prob is None else prob, self.cfg.pause_ticks)

    # ---------------------------------------------------------------- planning

    def error(self) -> float:
        """Current pose error (m) of the block, see ``pose_error``."""
        return float(pose_error(self.env.block_pose(), self.env.goal_pose, self.radius2))

    def choose_push(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(start point (2,), direction (2,), push length after contact) of the next push, or None."""
        c, env = self.cfg, self.env
        pose = env.block_pose()
        world_outline = transform(self.outline, pose)
        cs, sn = math.cos(pose[2]), math.sin(pose[2])
        rot = np.array([[cs, -sn], [sn, cs]])
        pts, nrm, dirs = [], [], []
        for a in c.angles:
            ca, sa = math.cos(a), math.sin(a)
            d = -(self.normals @ rot.T) @ np.array([[ca, sa], [-sa, ca]])  # inward normals turned by a
            pts.append(self.points)
            nrm.append(self.normals)
            dirs.append(d)
        pts, nrm, dirs = np.concatenate(pts), np.concatenate(nrm), np.concatenate(dirs)
        contact = pts @ rot.T + pose[:2]
        standoff = self._u(c.standoff)
        start = contact - dirs * (PUSHER_HALF + standoff)
        lo, hi = np.array(env.cfg.workspace_min[:2]) + 0.02, np.array(env.cfg.workspace_max[:2]) - 0.02
        ok = np.all((start >= lo) & (start <= hi), axis=1)
        for i in np.flatnonzero(ok):
            ok[i] = point_distance(start[i], world_outline) > PUSHER_HALF * 1.42 + 0.002
        if not np.any(ok):
            return None
        pts, nrm, dirs, start = pts[ok], nrm[ok], dirs[ok], start[ok]
        best, length = simulate_pushes(pose, pts, nrm, dirs, env.goal_pose, self.radius2, c.limit_radius,
                                       c.contact_friction, c.max_push)
        now = self.error()
        useful = length > 0
        if not np.any(useful):
            return None
        travel = np.linalg.norm(start - self.pos[:2], axis=1)
        seconds = (travel / np.mean(c.travel_speed) + (standoff + length) / np.mean(c.push_speed)
                   + c.push_overhead)
        rate = np.where(useful, (now - best) / seconds, 0.0)  # m of pose error removed per second
        near = np.flatnonzero(rate >= (1 - c.choice) * rate.max())
        i = int(self.rng.choice(near))
        return start[i], dirs[i], float(length[i])

    def _path_blocked(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Would the pusher, moving low from xy ``a`` to ``b``, touch the block?"""
        outline = transform(self.outline, self.env.block_pose())
        n = max(2, int(np.linalg.norm(b - a) / 0.005) + 1)
        return any(point_distance(p, outline) < PUSHER_HALF * 1.42 + 0.003 for p in np.linspace(a, b, n))

    def _plan_push(self) -> None:
        c = self.cfg
        choice = self.choose_push()
        if choice is None:  # nothing useful from here: back off upward and look again
            self._move([self.pos[0], self.pos[1], self.travel_z])
            self.plan.append(Cue.PLAN)
            return
        start, d, length = choice
        low = self.pos[2] < 0.05
        if not low or self._path_blocked(self.pos[:2], start) or self.rng.random() < c.lift_prob:
            if low:
                self._move([self.pos[0], self.pos[1], self.travel_z])
            if self.rng.random() < c.detour_prob:
                mid = 0.5 * (self.pos[:2] + start) + self.rng.uniform(-c.detour, c.detour, 2)
                self._move([mid[0], mid[1], self.travel_z + self.rng.uniform(0, c.detour)])
            self._move([start[0], start[1], self.travel_z])
            self._pause()
            self._move([start[0], start[1], self.push_z])
        else:
            self._move([start[0], start[1], self.push_z], 0.6 * self._u(c.travel_speed))
        self._pause(0.1)
        fine = self.error() < c.fine_error
        speed = self._u(c.fine_push_speed if fine else c.push_speed)
        self.plan.append(Push(d, length, speed))

    def _plan_finish(self, d: np.ndarray | None) -> None:
        c = self.cfg
        back = -d if d is not None else np.zeros(2)
        away = self.pos[:2] + back * self._u(c.retreat)
        self._move([away[0], away[1], self.pos[2]], 0.5 * self._u(c.travel_speed))
        self._move([away[0], away[1], self.travel_z + self.rng.uniform(0.0, 0.04)], 0.6 * self._u(c.travel_speed))
        self.plan.append(Cue.FINISH)

    # ---------------------------------------------------------------- acting

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(10,) float32 absolute target for this tick."""
        pushing = False
        while self.plan:
            step = self.plan[0]
            if isinstance(step, Wait):
                if wait_tick(self.plan):
                    break
            elif isinstance(step, Move):
                if self._step_toward(step):
                    self.plan.pop(0)
                break
            elif isinstance(step, Push):
                self.plan[0:1] = [self._start_push(step)]
            elif isinstance(step, Pushing):
                pushing = True
                if self._pushing(step):
                    break
            elif step is Cue.PLAN:
                self.plan.pop(0)
                if self.env.overlap_at(self.env.block_pose()) >= self.finish:
                    self._plan_finish(None)
                else:
                    self._plan_push()
            elif step is Cue.FINISH:
                self.plan.pop(0)
                if self.env.overlap_at(self.env.block_pose()) >= self.env.cfg.success_overlap:
                    self.done = True
                else:
                    self.plan.append(Cue.PLAN)
        return self._action(pushing or self.done)

    def _start_push(self, push: Push) -> Pushing:
        """The push from here along its direction until its length past the first contact, at its speed."""
        self.pushes += 1
        d = push.direction
        gap = self._contact_gap(self.pos[:2], d)
        end = self.pos[:2] + d * (gap + push.length + 0.002)  # + 2 mm for the lag of the compliant hand
        return Pushing(np.array([end[0], end[1], self.push_z]), push.speed, d, self.error())

    def _contact_gap(self, start: np.ndarray, d: np.ndarray) -> float:
        """Distance (m) the pusher at ``start`` travels along ``d`` before its front touches the block."""
        outline = transform(self.outline, self.env.block_pose())
        for s in np.arange(0.0, 0.06, 0.001):
            if point_distance(start + d * (s + PUSHER_HALF), outline) == 0.0:
                return float(s)
        return 0.06

    def _pushing(self, push: Pushing) -> bool:
        """One tick of a push; False (and the plan moves on) once it is over."""
        env, c = self.env, self.cfg
        err = self.error()
        overlap = env.overlap_at(env.block_pose())
        if overlap >= self.finish:
            self.plan[0:1] = []
            self._plan_finish(push.direction)
            return False
        cruise = vary_speed(self.rng, push.speed, c.push_speed[1], c.travel_speed[1], c.speed_change_prob)
        if err > push.best + 0.002 or self.hand.step_toward(push.end, cruise):
            back = self.pos[:2] - push.direction * self._u(c.retreat)
            self.plan[0:1] = [Move(np.array([back[0], back[1], self.pos[2]]), self._u(c.push_speed))]
            self._pause()
            self.plan.append(Cue.PLAN)
            return False
        self.plan[0] = replace(push, best=min(push.best, err))
        return True

    def _step_toward(self, move: Move) -> bool:
        """Advance the commanded position one tick toward ``move``'s goal; True once there."""
        c = self.cfg
        cruise = vary_speed(self.rng, move.speed, c.push_speed[1], c.travel_speed[1], c.speed_change_prob)
        if cruise != move.speed:
            self.plan[0] = replace(move, speed=cruise)
        return self.hand.step_toward(move.goal, cruise)

    def _action(self, quiet: bool) -> np.ndarray:
        return hand_target(self.hand, self.tremor.step(self.rng, 0.3 if quiet else 1.0), 0.0)
