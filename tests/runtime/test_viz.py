"""The live view: observers off the loop's critical path, the Rerun recording read back with the SDK."""

from __future__ import annotations

import logging
import sys
import threading
from collections import defaultdict

import numpy as np
import pytest

from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.inference import SimulatedLatencyWorker
from runtime.observer import BackgroundObserver, TickSnapshot
from runtime.safety import SafetyConfig, SafetyLayer
from runtime.viz import Display, DisplayUnavailable, open_display, parse_display

from .fakes import DT, ScriptedPolicy, Z, x_at


def _controller(observers, latency=0.3, cameras=("scene_rgb", "wrist_rgb")):
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0]))
    robot.connect()
    cams = {k: FakeCamera(clock.now, (12, 16)) for k in cameras}
    for cam in cams.values():
        cam.connect()
    policy = ScriptedPolicy()
    worker = SimulatedLatencyWorker(policy, clock, latency)
    ctrl = Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), DT), clock, ControllerConfig(keep_trace=True),
                      observers=observers)
    policy.tick_of = lambda: round(clock.now() / DT)
    return ctrl, robot


def read_rrd(path) -> dict[str, list[tuple[int, dict]]]:
    """entity path -> [(tick, {column: value})] of every logged row, read with the SDK's chunk reader."""
    from rerun.chunk import RrdReader

    rows: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for chunk in RrdReader(path).stream():
        if chunk.is_static or "tick" not in chunk.timeline_names:
            continue
        batch = chunk.to_record_batch()
        columns = [c for c in batch.schema.names if ":" in c]  # Archetype:component
        ticks = batch.column("tick").to_pylist()
        values = {c: batch.column(c).to_pylist() for c in columns}
        for i, tick in enumerate(ticks):
            rows[chunk.entity_path].append((tick, {c: values[c][i] for c in columns}))
    return {k: sorted(v, key=lambda r: r[0]) for k, v in rows.items()}


def test_a_simulated_run_is_recorded_and_reads_back(tmp_path):
    pytest.importorskip("rerun", reason='the viz extra: pip install -e ".[viz]"')
    path = tmp_path / "run.rrd"
    display = open_display(f"rerun+save:{path}", "test run")
    ctrl, robot = _controller([display], latency=1.0)  # slower than half a chunk: underruns
    m = ctrl.run(max_ticks=40)
    display.close()
    assert m.stop_reason == "completed" and robot.stopped and m.underruns > 0
    assert display.failed is None and display.dropped == 0 and display.delivered == 40
    rows = read_rrd(path)
    for entity in ("/cameras/scene_rgb", "/cameras/wrist_rgb", "/world/tcp/measured", "/world/tcp/commanded",
                   "/world/tcp/measured/trail", "/world/chunk", "/world/chunk_previous", "/gripper/measured",
                   "/gripper/commanded", "/timing/tick_jitter_ms", "/timing/inference_latency_ms",
                   "/safety/underrun", "/events"):
        assert entity in rows, f"{entity} missing; logged: {sorted(rows)}"
    assert [t for t, _ in rows["/timing/tick_jitter_ms"]] == list(range(40))  # one row per tick
    assert len(rows["/cameras/scene_rgb"]) == 40
    # the first chunk (observed at tick 0) arrives at tick 10 and is drawn from where it starts
    first_tick, first = rows["/world/chunk"][0]
    assert first_tick == 10 and len(rows["/world/chunk"]) == m.chunks_received
    strip = np.array(first["LineStrips3D:strips"][0])  # (16, 3)
    np.testing.assert_allclose(strip, [[x_at(i), 0, Z] for i in range(16)], atol=1e-6)
    assert [t for t, _ in rows["/timing/inference_latency_ms"]] == [t for t, _ in rows["/world/chunk"]]
    underruns = rows["/safety/underrun"]
    assert underruns[-1][1]["Scalars:scalars"] == [m.underruns]  # the cumulative count
    texts = [r["TextLog:text"][0] for _, r in rows["/events"]]
    assert sum("underrun" in t for t in texts) == m.underruns
    measured = np.array([r["Points3D:positions"][0] for _, r in rows["/world/tcp/measured"]])  # (40, 3)
    np.testing.assert_allclose(measured[:, 2], Z, atol=1e-9)


def test_without_the_sdk_display_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun raises ImportError
    with pytest.raises(DisplayUnavailable, match=r'pip install -e "\.\[viz\]"'):
        open_display("rerun+save:x.rrd", "run")
    assert open_display("none", "run") is None  # no display needs no SDK


def test_an_unwritable_recording_is_refused_before_the_loop(tmp_path):
    pytest.importorskip("rerun", reason='the viz extra: pip install -e ".[viz]"')
    (tmp_path / "file").write_text("")
    with pytest.raises(DisplayUnavailable, match="cannot write the recording"):
        open_display(f"rerun+save:{tmp_path / 'file' / 'run.rrd'}", "run")  # a file where a folder must be


def test_display_settings_are_parsed_or_named():
    assert parse_display("none") == Display() and parse_display(None) == Display()
    assert parse_display("rerun") == Display("rerun")
    assert parse_display("rerun+save:out/a.rrd").save.name == "a.rrd"
    for bad in ("rerun+save:", "rerun+save: ", "viewer", "rerun:x.rrd", "rerun+save"):
        with pytest.raises(ValueError, match="display"):
            parse_display(bad)


def test_a_failing_sink_is_logged_once_and_the_loop_goes_on(caplog):
    calls = []

    def sink(s: TickSnapshot) -> None:
        calls.append(s.tick)
        raise OSError("No space left on device")

    obs = BackgroundObserver(sink, name="broken display")
    ctrl, robot = _controller([obs])
    with caplog.at_level(logging.ERROR, logger="runtime.observer"):
        m = ctrl.run(max_ticks=30)
        obs.close()
    assert m.stop_reason == "completed" and robot.stopped and len(m.trace) == 30
    assert isinstance(obs.failed, OSError) and calls == [0]  # switched off after the first failure
    assert obs.dropped == 30 and obs.delivered == 0
    assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1


def test_a_stalled_sink_never_stalls_the_loop():
    release = threading.Event()

    def sink(s: TickSnapshot) -> None:
        release.wait(10.0)  # a viewer that stopped reading

    obs = BackgroundObserver(sink, name="stalled display", maxsize=4, close_timeout_s=0.5)
    ctrl, robot = _controller([obs])
    m = ctrl.run(max_ticks=50)  # on the simulated clock: would hang here if on_tick waited
    assert m.stop_reason == "completed" and robot.stopped and len(m.trace) == 50
    assert obs.dropped >= 50 - 4 - 1  # the queue holds 4, the thread 1 at most
    release.set()
    obs.close()


def test_snapshots_carry_the_commands_sent_and_the_chunks():
    seen: list[TickSnapshot] = []
    obs = BackgroundObserver(seen.append)
    ctrl, _ = _controller([obs], latency=0.3)
    m = ctrl.run(max_ticks=20)
    obs.close()
    assert [s.tick for s in seen] == list(range(20))
    for s, r in zip(seen, m.trace):
        np.testing.assert_array_equal(s.command, r.command)
        assert set(s.images) == {"scene_rgb", "wrist_rgb"} and s.images["scene_rgb"].shape == (12, 16, 3)
    chunks = [s for s in seen if s.chunk is not None]
    assert [s.tick for s in chunks] == [3, 10, 17] and [s.chunk_obs_tick for s in chunks] == [0, 7, 14]
    assert all(s.inference_latency_s == pytest.approx(0.3) for s in chunks)
