"""Issue 13, runtime side: what the controller commits with each request (rtc/bid), temporal ensembling,
and the jump metrics at chunk switches; on fakes and the simulated clock."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from policy import keys
from policy.config_utils import ConfigError, from_dict
from policy.keys import ACTION_LAYOUT as LAYOUT
from policy.protocol import ChunkPrefix, PolicySpec
from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig
from runtime.drivers.fake import IDENTITY_6D, FakeCamera, FakeRobot
from runtime.execution import DelayEstimator, EnsembleBuffer
from runtime.inference import ChildProcessWorker, SimulatedLatencyWorker, ThreadedWorker
from runtime.metrics import RunMetrics, TickRecord, jumps_from_trace
from runtime.safety import SafetyConfig, SafetyLayer

from .fakes import DT, ScriptedPolicy, Z, x_at

START = np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0])


class PrefixPolicy(ScriptedPolicy):
    """The scripted trajectory, recording every prefix it is given (None for a request without one)."""

    def __init__(self):
        super().__init__()
        self.prefixes: list[ChunkPrefix | None] = []

    def predict_chunk(self, window, prefix=None):
        self.prefixes.append(prefix)
        return super().predict_chunk(window)


def _controller(policy, latency, **cfg):
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=START)
    robot.connect()
    cam = FakeCamera(clock.now)
    cam.connect()
    policy.tick_of = lambda: round(clock.now() / DT)
    worker = SimulatedLatencyWorker(policy, clock, latency)
    ctrl = Controller(robot, {keys.SCENE_RGB: cam}, worker, SafetyLayer(SafetyConfig(), DT), clock,
                      ControllerConfig(keep_trace=True, **cfg))
    return ctrl


# ------------------------------------------------------------------ the committed prefix and its delay

@pytest.mark.parametrize("latency, d", [(0.0, 1), (0.1, 1), (0.25, 3), (0.5, 5)])
@pytest.mark.parametrize("execution", ["rtc", "bid"])
def test_the_prefix_holds_exactly_the_entries_that_execute_before_arrival(latency, d, execution):
    policy = PrefixPolicy()
    ctrl = _controller(policy, latency, execution=execution, bid_samples=8, rtc_max_guidance=3.0, rtc_decay=0.25,
                       rtc_schedule="linear")
    m = ctrl.run(max_ticks=60)
    assert m.stop_reason == "completed" and m.underruns == 0
    assert policy.prefixes[0] is None  # start-up: nothing committed yet
    first_use = {}  # obs tick of a chunk -> the tick it was first executed
    targets = {r.tick: r.target for r in m.trace}
    for r in m.trace:
        if r.source == "chunk":
            first_use.setdefault(r.chunk_obs_tick, r.tick)
    assert len(policy.prefixes) >= 5
    for k_prev, k, prefix in zip(policy.obs_ticks, policy.obs_ticks[1:], policy.prefixes[1:]):
        assert prefix is not None and prefix.method == execution
        assert (prefix.max_guidance, prefix.decay, prefix.samples, prefix.schedule) == (3.0, 0.25, 8, "linear")
        assert prefix.delay == d
        if k in first_use:  # the new chunk took over exactly d ticks after its observation
            assert first_use[k] - k == d
            # the d committed entries are the targets that executed at ticks k .. k + d - 1
            np.testing.assert_array_equal(prefix.actions[:d], np.stack([targets[k + i] for i in range(d)]))
        # the rest of the current chunk from the observation tick on, row i for tick k + i
        assert len(prefix.actions) == k_prev + policy.chunk_len - k
        np.testing.assert_allclose(prefix.actions[:, 0], [x_at(k + i) for i in range(len(prefix.actions))])
        assert prefix.actions.shape[1] == LAYOUT.dim
    assert ctrl.delays.ticks() == d


def test_before_any_answer_the_delay_is_the_initial_guess_and_then_a_quantile_of_the_measured_delays():
    est = DelayEstimator(window=4, quantile=0.9, initial_s=0.25, dt=DT)
    assert est.ticks() == 3 and DelayEstimator(4, 0.9, 0.0, DT).ticks() == 1
    for obs, arrival in [(0, 1), (5, 6), (9, 10), (12, 17)]:
        est.add(obs, arrival)
    assert est.ticks() == math.ceil(np.quantile([1, 1, 1, 5], 0.9))  # 3.8 -> 4
    for obs in range(4):  # the window forgets the slow one
        est.add(20 + obs, 22 + obs)
    assert est.ticks() == 2 and est.measured == 4


def test_continuous_replanning_with_rtc_keeps_following_the_trajectory():
    policy = PrefixPolicy()
    ctrl = _controller(policy, 0.2, execution="rtc", replan="continuous")
    m = ctrl.run(max_ticks=40)
    assert m.underruns == 0 and all(p.delay == 2 for p in policy.prefixes[2:])
    xs = np.array([r.command[0] for r in m.trace])
    np.testing.assert_allclose(xs[2:], [x_at(t) for t in range(2, 40)], atol=1e-9)


# ------------------------------------------------------------------ a policy without a prefix argument

def test_a_policy_without_a_prefix_works_with_naive_and_is_refused_for_rtc_at_start():
    m = _controller(ScriptedPolicy(), 0.3, execution="naive").run(max_ticks=30)
    assert m.stop_reason == "completed" and m.chunks_received >= 3
    for execution in ("rtc", "bid"):
        with pytest.raises(ValueError, match=rf"controller.execution={execution} needs a policy whose "
                                             r"predict_chunk takes a prefix.*ScriptedPolicy does not"):
            _controller(ScriptedPolicy(), 0.3, execution=execution)
    policy = PrefixPolicy()  # naive sends no prefix even to a policy that takes one
    _controller(policy, 0.3, execution="naive").run(max_ticks=30)
    assert policy.prefixes and all(p is None for p in policy.prefixes)


def test_auto_execution_is_rtc_for_a_policy_that_takes_a_prefix_and_naive_otherwise():
    ctrl = _controller(ScriptedPolicy(), 0.3, execution="auto")
    assert ctrl.execution == "naive"
    assert ctrl.run(max_ticks=30).stop_reason == "completed"
    policy = PrefixPolicy()
    ctrl = _controller(policy, 0.3, execution="auto")
    assert ctrl.execution == "rtc"
    ctrl.run(max_ticks=30)
    sent = [p for p in policy.prefixes if p is not None]
    assert sent and all(p.method == "rtc" for p in sent)


@pytest.mark.parametrize("field, value", [("execution", "smooth"), ("rtc_max_guidance", -1.0), ("rtc_decay", -0.1),
                                          ("rtc_schedule", "cosine"),
                                          ("bid_samples", 0), ("latency_quantile", 0.0), ("latency_window", 0),
                                          ("latency_initial_s", -0.1), ("ensemble_decay", float("nan"))])
def test_bad_execution_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"controller.{field}"):
        from_dict(ControllerConfig, {field: value}, "controller")


# ------------------------------------------------------------------ temporal ensembling

def _chunk(xs, rot6d, width):
    xs = np.asarray(xs, float)
    position = np.stack([xs, np.zeros_like(xs), np.full_like(xs, Z)], axis=-1)  # (L, 3)
    return LAYOUT.join(position, np.broadcast_to(rot6d, (len(xs), 6)), width)  # (L, 10)


def test_ensembling_averages_overlapping_chunks_with_acts_weights():
    m = 0.5
    buf = EnsembleBuffer(chunk_len=4, action_dim=LAYOUT.dim, decay=m)
    rot_z90 = np.array([0, 1, 0, -1, 0, 0])  # 90 degrees about z: x -> y, y -> -x
    assert buf.insert_chunk(_chunk([0, 1, 2, 3], IDENTITY_6D, 0.02), obs_tick=0, now_tick=1) == 1  # tick 0 passed
    assert buf.pop(1)[0][0] == 1.0 and buf.pop(2)[0][0] == 2.0
    assert buf.insert_chunk(_chunk([10, 11, 12, 13], rot_z90, 0.06), obs_tick=2, now_tick=3) == 1
    assert buf.remaining(3) == 3
    w = math.exp(-m)  # the newer chunk's weight at tick 3; the older one's is exp(0) = 1
    action, chunk = buf.pop(3)
    assert chunk == 2  # the newest chunk in the average
    assert action[0] == pytest.approx((3 + 11 * w) / (1 + w))
    assert action[LAYOUT.width] == pytest.approx((0.02 + 0.06 * w) / (1 + w))
    theta = math.atan2(w, 1.0)  # mean of the first columns (1, 0, 0) and (0, 1, 0), weights 1 and w
    np.testing.assert_allclose(action[LAYOUT.rotation],
                               [math.cos(theta), math.sin(theta), 0, -math.sin(theta), math.cos(theta), 0], atol=1e-12)
    action, chunk = buf.pop(4)
    assert chunk == 2 and action[0] == 12.0 and buf.pop(4) is None  # only the newer chunk covers tick 4
    np.testing.assert_allclose(action[LAYOUT.rotation], rot_z90, atol=1e-12)


def test_ensembling_three_chunks_weighs_by_age():
    buf = EnsembleBuffer(chunk_len=4, action_dim=LAYOUT.dim, decay=1.0)
    for k, x in enumerate([1.0, 2.0, 4.0]):
        buf.insert_chunk(_chunk([x] * 4, IDENTITY_6D, 0.04), obs_tick=k, now_tick=k + 1)
        if k < 2:
            buf.pop(k + 1)
    w = np.exp(-np.arange(3.0))  # oldest first
    assert buf.pop(3)[0][0] == pytest.approx(float(w @ [1.0, 2.0, 4.0] / w.sum()))


def test_ensembling_in_the_controller_follows_agreeing_chunks_exactly():
    policy = ScriptedPolicy()  # every chunk lies on one absolute trajectory: any average of them is it
    m = _controller(policy, 0.3, execution="ensemble", replan="continuous").run(max_ticks=40)
    assert m.underruns == 0 and m.chunks_received > 10
    xs = np.array([r.command[0] for r in m.trace])
    np.testing.assert_allclose(xs[3:], [x_at(t) for t in range(3, 40)], atol=1e-9)


# ------------------------------------------------------------------ jump metrics

def _rot_z(angle):
    return [math.cos(angle), math.sin(angle), 0, -math.sin(angle), math.cos(angle), 0]


def test_jump_metrics_split_chunk_switches_from_steps_within_a_chunk():
    def rec(tick, x, chunk, angle=0.0, source="chunk"):
        target = None if source != "chunk" else LAYOUT.join([x, 0, Z], _rot_z(angle), 0.04)
        return TickRecord(tick, tick * DT, np.zeros(10), source, chunk if source == "chunk" else None, target)

    trace = [rec(0, 0.0, None, source="startup"),
             rec(1, 0.30, 0), rec(2, 0.31, 0), rec(3, 0.32, 0),  # within: 0.01, 0.01
             rec(4, 0.37, 3, angle=0.1),  # a switch: 0.05 m, 0.1 rad
             rec(5, 0.38, 3, angle=0.1),  # within: 0.01
             rec(6, 0.0, None, source="hold"),  # an underrun: no pair with it
             rec(7, 0.50, 3, angle=0.1),
             rec(9, 0.70, 7, angle=0.1),  # tick 8 skipped: no pair across it
             rec(10, 0.72, 9, angle=-0.2)]  # a switch: 0.02 m, 0.3 rad
    m = jumps_from_trace(trace)
    np.testing.assert_allclose(m.switch_jump_m, [0.05, 0.02], atol=1e-12)
    np.testing.assert_allclose(m.switch_jump_rad, [0.1, 0.3], atol=1e-9)
    np.testing.assert_allclose(m.within_jump_m, [0.01, 0.01, 0.01], atol=1e-12)
    np.testing.assert_allclose(m.within_jump_rad, [0, 0, 0], atol=1e-7)
    m.interventions.update({"speed": 3, "accel": 2, "rot_speed": 1, "workspace": 5})
    s = m.summary()
    assert s["chunk_switches"] == 2 and s["limit_interventions"] == 6
    assert s["switch_jump_m_mean"] == pytest.approx(0.035)
    assert s["switch_jump_m_p95"] == pytest.approx(np.percentile([0.05, 0.02], 95))
    assert s["switch_jump_rad_p95"] == pytest.approx(np.percentile([0.1, 0.3], 95))
    assert s["within_jump_m_mean"] == pytest.approx(0.01) and s["within_jump_rad_mean"] == pytest.approx(0, abs=1e-7)
    assert RunMetrics().summary()["switch_jump_m_p95"] is None


def test_the_controller_measures_jumps_online_as_on_its_trace():
    m = _controller(ScriptedPolicy(), 0.3, execution="naive").run(max_ticks=50)
    again = jumps_from_trace(m.trace)
    assert m.switch_jump_m == again.switch_jump_m and m.within_jump_m == again.within_jump_m
    assert len(m.switch_jump_m) == m.chunks_received - 1  # every chunk after the first is one switch
    np.testing.assert_allclose(m.within_jump_m + m.switch_jump_m, 0.002, atol=1e-9)  # one trajectory throughout


# ------------------------------------------------------------------ through every worker

class EchoPolicy:
    """Returns the prefix it got as the chunk's first rows and its delay in the last row's gripper width."""

    n_obs_steps, chunk_len, action_dim, obs_keys = 2, 16, 10, ("ee_pose",)

    def predict_chunk(self, window, prefix=None):
        chunk = np.zeros((self.chunk_len, self.action_dim))
        if prefix is not None:
            chunk[: len(prefix.actions)] = prefix.actions
            chunk[-1, LAYOUT.width] = prefix.delay + (1000 if prefix.method == "bid" else 0) + prefix.samples / 100
        return chunk


def load_echo_policy() -> EchoPolicy:  # runs in the spawned child, which imports it by name
    return EchoPolicy()


def _wait(worker, clock=None):
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end:
        if clock is not None:
            clock.advance(1.0)
        res = worker.poll()
        if res is not None:
            return res
        time.sleep(0.01)
    raise AssertionError("no answer")


def test_the_prefix_reaches_predict_chunk_through_every_worker():
    prefix = ChunkPrefix(np.arange(50.0).reshape(5, 10), 2, "bid", samples=4)
    window = {"ee_pose": np.zeros((2, 9))}
    spec = PolicySpec(2, 16, 10, ("ee_pose",))
    clock = SimClock()
    workers = [ChildProcessWorker(spec, clock, load_echo_policy, "an echo policy", start_timeout_s=120),
               ThreadedWorker(EchoPolicy(), clock), SimulatedLatencyWorker(EchoPolicy(), clock, 0.1)]
    try:
        for worker in workers:
            assert worker.accepts_prefix
            worker.submit(window, 3, prefix=prefix)
            res = _wait(worker, clock)
            assert res.error is None and res.obs_tick == 3
            np.testing.assert_array_equal(res.chunk[:5], prefix.actions)
            assert res.chunk[-1, LAYOUT.width] == pytest.approx(1002.04)
            worker.submit(window, 4)  # and without one, as before
            assert _wait(worker, clock).chunk[-1, LAYOUT.width] == 0
    finally:
        for worker in workers:
            worker.close()
    plain = ThreadedWorker(ScriptedPolicy(), clock)
    try:
        assert not plain.accepts_prefix and plain.name == "ScriptedPolicy"
    finally:
        plain.close()
