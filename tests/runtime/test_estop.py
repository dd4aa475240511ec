"""Software e-stop: real signals, handler restore, key parsing, a terminal listener on a pty, and the
policy controller stopping on ``EStop.event``."""

from __future__ import annotations

import os
import pty
import signal
import termios
import threading

import numpy as np
import pytest

from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig
from runtime.drivers.base import DriverError
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.estop import EStop, KeyListener, parse_keys
from runtime.inference import SimulatedLatencyWorker
from runtime.safety import SafetyConfig, SafetyLayer

from .fakes import DT, ScriptedPolicy, Z, x_at


def test_parse_keys():
    assert parse_keys("wA \r\x1b[A\x1b[D\x1bOB") == ["w", "a", "SPACE", "ENTER", "UP", "LEFT", "DOWN"]
    assert parse_keys("\x1b") == ["ESC"]
    assert parse_keys("\x1bq") == ["ESC", "q"]  # alt+q reads as ESC then q: errs on the stopping side
    assert parse_keys("\x1b[15~x\x03") == ["UNKNOWN", "x"]  # F5, then x; control characters dropped


def test_trigger_keeps_the_first_reason():
    e = EStop()
    assert not e.triggered and e.reason is None
    e.trigger("first")
    e.trigger("second")
    assert e.triggered and e.event.is_set() and e.reason == "first"
    assert not EStop().on_key("w") and EStop().on_key("ESC")


def test_a_real_sigterm_triggers_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with EStop() as e:
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        assert e.triggered and e.reason == "signal SIGTERM"  # synchronous in the handler
        assert e.event.wait(5.0)  # the event itself is set from a helper thread (no lock in the handler)
        with pytest.raises(KeyboardInterrupt):  # a second signal forces the way out
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) is not None


def test_handlers_need_the_main_thread():
    errors = []

    def install():
        try:
            EStop().install_signal_handlers()
        except RuntimeError as err:
            errors.append(err)

    t = threading.Thread(target=install)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


def test_key_listener_reads_a_terminal_and_restores_it():
    master, slave = pty.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        got: list[str] = []
        done = threading.Event()

        def on_key(token):
            got.append(token)
            if token == "ESC":
                done.set()

        with KeyListener(on_key, fd=slave):
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: no Enter needed
            os.write(master, b"w \x1b[A")
            os.write(master, b"\x1b")
            assert done.wait(5.0)
        assert got == ["w", "SPACE", "UP", "ESC"]
        assert termios.tcgetattr(slave) == attrs
    finally:
        os.close(master)
        os.close(slave)


def test_estop_listens_for_esc_on_a_terminal():
    master, slave = pty.openpty()
    try:
        e = EStop()
        e.listen_keys(fd=slave)
        os.write(master, b"wa\x1b")
        assert e.event.wait(5.0) and e.reason == "key ESC"
        e.uninstall()
    finally:
        os.close(master)
        os.close(slave)


def test_key_listener_refuses_a_non_terminal():
    r, w = os.pipe()
    try:
        with pytest.raises(DriverError, match="not a terminal"):
            KeyListener(lambda t: None, fd=r).start()
    finally:
        os.close(r)
        os.close(w)


class SignallingRobot(FakeRobot):
    """Sends this process SIGTERM during its ``at``-th write (0-based)."""

    def __init__(self, *a, at: int, estop: EStop, **kw):
        super().__init__(*a, **kw)
        self.at, self.estop = at, estop

    def write(self, target):
        sent = super().write(target)
        if len(self.sent) == self.at + 1:
            os.kill(os.getpid(), signal.SIGTERM)
            self.estop.event.wait(5.0)  # the controller only looks at the event
        return sent


def test_the_policy_controller_stops_on_the_estop_event():
    clock = SimClock()
    with EStop() as estop:
        robot = SignallingRobot(clock.now, start_pose=np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0]), at=12,
                                estop=estop)
        robot.connect()
        cam = FakeCamera(clock.now)
        cam.connect()
        policy = ScriptedPolicy()
        policy.tick_of = lambda: round(clock.now() / DT)
        ctrl = Controller(robot, {"scene_rgb": cam}, SimulatedLatencyWorker(policy, clock, 0.3),
                          SafetyLayer(SafetyConfig(), DT), clock, ControllerConfig(), stop_event=estop.event)
        m = ctrl.run(max_ticks=100)
    assert m.stop_reason == "stop_requested" and robot.stopped
    assert len(robot.sent) == 13 and estop.reason == "signal SIGTERM"
