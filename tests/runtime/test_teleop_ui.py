"""What the terminal shows while teleoperating: the key map, the status line, the session's status."""

from __future__ import annotations

import io

import numpy as np

from runtime.observer import BackgroundObserver, TickSnapshot
from runtime.teleop_devices import EVENT_KEYS, MOVE_KEYS
from runtime.teleop_ui import CLEAR_LINE, StatusLine, TeleopStatus, key_map

from .test_teleop import move, setup


def test_key_map_lists_every_binding_of_the_device():
    text = key_map("keyboard")
    for key in (*MOVE_KEYS, *EVENT_KEYS, "SPACE"):
        assert key in text, key
    assert "w/s  +x/-x" in text and "c: start recording" in text and "ESC: e-stop" in text
    mouse = key_map("spacemouse")
    assert "button 0: gripper toggle" in mouse and "button 1: record toggle" in mouse
    assert "c: start recording" not in mouse and "no keys" in mouse  # a SpaceMouse alone reads no keys
    assert "c: start recording" in key_map("spacemouse+keyboard")


def _snap(status: TeleopStatus, tick: int = 0) -> TickSnapshot:
    return TickSnapshot(tick, 0.1 * tick, np.zeros(10), np.zeros(10), status=status)


def test_status_line_redraws_in_place_on_a_terminal_and_prints_changes_elsewhere():
    states = [TeleopStatus(), TeleopStatus(recording=True, steps=1), TeleopStatus(recording=True, steps=2),
              TeleopStatus(episode=1, kept=1)]
    tty, plain = io.StringIO(), io.StringIO()
    on_tty, in_pipe = StatusLine(tty, tty=True), StatusLine(plain, tty=False)
    for i, s in enumerate(states):
        on_tty(_snap(s, i))
        in_pipe(_snap(s, i))
    on_tty.close()
    assert tty.getvalue().count(CLEAR_LINE) == 4 and "\n" not in tty.getvalue()[:-1]
    assert tty.getvalue().endswith("kept 1, discarded 0 | e-stop off | last safety: none\n")
    lines = plain.getvalue().splitlines()
    assert len(lines) == 3 and CLEAR_LINE not in plain.getvalue()  # steps 1 -> 2 is no new line
    assert lines[1].startswith("REC episode 0, 1 steps") and lines[2].startswith("idle (next episode 1) | kept 1")


def test_the_loop_reports_recording_steps_kept_and_the_last_intervention(tmp_path):
    inputs = [move(events=("start",)), *[move(v=(0.5, 0, 0))] * 5, move(events=("keep",)),
              move(events=("start",)), move(), move(events=("discard",))]
    seen: list[TickSnapshot] = []
    loop, _, _ = setup(inputs, recorder_path=tmp_path / "d.zarr")
    observer = BackgroundObserver(seen.append)
    loop.observers = (observer,)
    r = loop.run(max_ticks=20)
    observer.close()
    statuses = [s.status for s in seen]
    assert r.stop_reason == "quit" and len(statuses) == r.ticks + 1  # and the final status once more
    assert statuses[0].recording and statuses[0].steps == 1 and statuses[0].episode == 0
    assert statuses[5].steps == 6 and "speed" in statuses[5].last_intervention  # 0.5 m/s > 0.25
    assert not statuses[6].recording and statuses[6].kept == 1 and statuses[6].episode == 1
    assert statuses[9].discarded == 1 and statuses[-1].stopped == "quit"
    assert {tuple(s.images) for s in seen} == {("scene_rgb", "wrist_rgb")}
