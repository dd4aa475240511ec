"""What a person sees in the terminal while teleoperating: the key map at start, one status line after.

``key_map(device, keyboard, spacemouse)`` lists the bindings of ``runtime.teleop_devices`` (built from its
key tables, so it cannot drift from them). ``TeleopStatus`` is the session's state, one line as ``str()``.
``StatusLine`` is an observer sink (``runtime.observer``, so a terminal that stops reading never stalls the
loop): on a terminal it redraws that line in place (carriage return, clear to the end of the line);
anywhere else (a pipe, a log file) it prints a plain line each time the state changes, the step counter
excepted. ``log_above_status()`` makes log records clear the line first, so they never run into it.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass, replace
from typing import TextIO

from runtime.observer import TickSnapshot
from runtime.teleop_devices import EVENT_KEYS, GRIPPER_KEYS, MOVE_KEYS, ROTATE_KEYS, KeyboardConfig, SpaceMouseConfig

CLEAR_LINE = "\r\x1b[K"  # carriage return, erase to the end of the line
EVENT_WORDS = {"start": "start recording", "keep": "stop and keep the episode", "discard": "discard it",
               "quit": "quit", "estop": "e-stop", "record_toggle": "start / keep"}


@dataclass(frozen=True)
class TeleopStatus:
    """The session's state for a person, one line (``str()``): the status line and the live view show it."""

    recording: bool = False
    episode: int = 0  # dataset index of the episode being recorded, or of the next one
    steps: int = 0  # in the episode being recorded
    kept: int = 0  # this session: committed or being written
    discarded: int = 0
    estop: str | None = None  # why the e-stop was triggered, once it was
    last_intervention: str | None = None  # the latest safety / loop intervention, e.g. "speed (tick 120)"
    stopped: str | None = None  # how the session ended (the last status only)

    def __str__(self) -> str:
        state = f"REC episode {self.episode}, {self.steps} steps" if self.recording else \
            f"idle (next episode {self.episode})"
        parts = [state, f"kept {self.kept}, discarded {self.discarded}",
                 f"E-STOP ({self.estop})" if self.estop else "e-stop off",
                 f"last safety: {self.last_intervention or 'none'}"]
        if self.stopped:
            parts.append(f"stopped: {self.stopped}")
        return " | ".join(parts)


def _pairs(table: dict[str, tuple[int, float]], axes: tuple[str, ...]) -> str:
    """"w/s +x/-x  a/d +y/-y ..." from a key -> (axis, sign) table (letters only)."""
    out = []
    for axis, name in enumerate(axes):
        plus = [k for k, (a, s) in table.items() if a == axis and s > 0 and len(k) == 1]
        minus = [k for k, (a, s) in table.items() if a == axis and s < 0 and len(k) == 1]
        out.append(f"{'/'.join(plus + minus):<4} +{name}/-{name}")
    return "   ".join(out)


def key_map(device: str = "keyboard", keyboard: KeyboardConfig | None = None,
            spacemouse: SpaceMouseConfig | None = None) -> str:
    """The bindings of ``device`` (keyboard | spacemouse | spacemouse+keyboard) as lines for the terminal."""
    kb = keyboard or KeyboardConfig()
    lines = [f"teleop with {device}:"]
    if "keyboard" in device:
        lines += ["  keys work while this terminal has the focus; hold a key down for continuous motion",
                  f"  move    {_pairs(MOVE_KEYS, ('x', 'y', 'z'))}   ({kb.speed:g} m/s, robot base frame)",
                  f"  rotate  {_pairs(ROTATE_KEYS, ('rx', 'ry', 'rz'))}   ({kb.rot_speed:g} rad/s; arrows: "
                  "UP/DOWN = i/k, LEFT/RIGHT = u/o)",
                  "  gripper " + ", ".join(f"{k}: {v}" for k, v in GRIPPER_KEYS.items()),
                  "  record  " + "   ".join(f"{k}: {EVENT_WORDS[v]}" for k, v in EVENT_KEYS.items())
                  + "   Ctrl-C: stop"]
    else:
        lines.append("  no keys (device=spacemouse+keyboard adds them); Ctrl-C stops")
    if "spacemouse" in device:
        sm = spacemouse or SpaceMouseConfig()
        buttons = ", ".join(f"button {i}: {a.replace('_', ' ')}" for i, a in enumerate(sm.buttons))
        lines.append(f"  spacemouse  push/tilt to move ({sm.max_speed:g} m/s, {sm.max_rot_speed:g} rad/s at full "
                     f"deflection); {buttons}")
    return "\n".join(lines)


class StatusLine:
    """An observer sink drawing each snapshot's ``status`` on ``stream``: in place on a terminal (``tty``
    None: ``stream.isatty()``), as plain lines on change elsewhere. ``close()`` ends the line."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._last: str | None = None
        self._last_plain: object = None

    def __call__(self, snapshot: TickSnapshot) -> None:
        status = snapshot.status
        if status is None:
            return
        line = str(status)
        if self.tty:
            if line != self._last:  # cut to the terminal's width: a wrapped line could not be redrawn in place
                width = shutil.get_terminal_size((120, 24)).columns
                self.stream.write(CLEAR_LINE + line[:max(20, width - 1)])
                self.stream.flush()
        else:
            key = replace(status, steps=0) if isinstance(status, TeleopStatus) else line
            if key != self._last_plain:
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_plain = key
        self._last = line

    def close(self) -> None:
        if self.tty and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()


class _ClearLineFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return CLEAR_LINE + self.inner.format(record)


def log_above_status(logger: logging.Logger | None = None) -> None:
    """Make the terminal stream handlers of ``logger`` (default: the root) clear the status line before a
    record, so a log line replaces it instead of running into it (the next redraw brings it back)."""
    for handler in (logger or logging.getLogger()).handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream is not None and getattr(stream, "isatty",
                                                                                          lambda: False)():
            if not isinstance(handler.formatter, _ClearLineFormatter):
                handler.setFormatter(_ClearLineFormatter(handler.formatter))
