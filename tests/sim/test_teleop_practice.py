"""Recording demos as a person would: ``python -m runtime.teleop robot=sim robot.task=...`` in a terminal.

The command runs in a pseudo-terminal (its stdin, stdout and stderr), keys are typed into it, and the
test reads what a person would see: the key map, the status line, the episode kept.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from policy import keys
from policy.data.replay_buffer import ReplayBuffer

REPO = Path(__file__).resolve().parents[2]


class Terminal:
    """A command on a pseudo-terminal: ``type()`` keys, ``wait_for()`` text on the screen."""

    def __init__(self, args: list[str]):
        self.master, slave = pty.openpty()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "300"}
        self.proc = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                                     env=env, close_fds=True)
        os.close(slave)
        self.screen = b""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the command exited and closed the terminal
            return False
        self.screen += data
        return bool(data)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        """The screen once ``text`` is on it; fails with the screen when it does not appear in ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            if time.monotonic() > deadline or not self._read(0.05):
                pytest.fail(f"{text!r} did not appear; screen:\n{self.text()[-3000:]}")
        return self.text()

    def type(self, keys: str, repeat: int = 1, every_s: float = 0.0) -> None:
        for _ in range(repeat):
            os.write(self.master, keys.encode())
            end = time.monotonic() + every_s
            while time.monotonic() < end:
                self._read(0.01)

    def exit_code(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        while self._read(0.05):  # what is left on the screen
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            pytest.fail(f"the command did not exit; screen:\n{self.text()[-3000:]}")
        return self.proc.returncode

    def text(self) -> str:
        return self.screen.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_practice_in_sim_from_a_terminal_keys_move_the_arm_and_an_episode_is_kept(tmp_path):
    out, rrd = tmp_path / "demos.zarr", tmp_path / "teleop.rrd"
    display = [f"display=rerun+save:{rrd}"] if _has_rerun() else []
    term = Terminal(["-m", "runtime.teleop", "robot=sim", "robot.task=push_t", "camera=sim", f"out={out}",
                     "realtime.priority=null", "realtime.lock_memory=false", "keyboard.hold_s=0.3", *display])
    try:
        screen = term.wait_for("idle (next episode 0)")
        assert "teleop with keyboard" in screen and "w/s  +x/-x" in screen and "c: start recording" in screen
        assert "e-stop off" in screen
        term.type("c")
        term.wait_for("REC episode 0")
        term.type("w", repeat=25, every_s=0.08)  # hold w: +x for ~2 s
        term.type("v")
        screen = term.wait_for("kept 1, discarded 0")
        term.type("q")
        assert term.exit_code() == 0, term.text()[-3000:]
        assert "stopped: quit" in term.text()
        assert "\r\x1b[K" in screen  # redrawn in place on a terminal
    finally:
        term.close()
    rb = ReplayBuffer.open(out, "r")
    assert rb.n_episodes == 1
    ep = rb.get_episode(0, [keys.ACTION, keys.SCENE_RGB, keys.WRIST_RGB])
    x = ep[keys.ACTION][:, 0]
    assert x[-1] - x[0] > 0.02  # the keys moved the simulated arm in +x (0.05 m/s)
    assert np.abs(ep[keys.ACTION][:, 1:3] - ep[keys.ACTION][0, 1:3]).max() < 1e-6  # and only in x
    assert ep[keys.SCENE_RGB].std() > 0 and ep[keys.WRIST_RGB].std() > 0  # rendered by the sim, not blank
    if display:  # both cameras were shown live, one frame per tick
        from tests.runtime.test_viz import read_rrd

        rows = read_rrd(rrd)
        assert len(rows["/cameras/scene_rgb"]) == len(rows["/cameras/wrist_rgb"]) >= rb.n_steps
        assert any("REC episode 0" in r["TextDocument:text"][0] for _, r in rows["/status"])


def _has_rerun() -> bool:
    import importlib.util

    return importlib.util.find_spec("rerun") is not None
