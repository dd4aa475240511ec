"""Teleoperation input devices: a SpaceMouse, a terminal keyboard, and scripted/combined devices for tests.

Every device returns a ``TeleopInput`` per ``read()``: a velocity command in the robot base frame
(translation m/s, rotation rad/s as an axis-angle rate), an optional gripper command, and discrete
events for the recorder and the loop. The teleop loop integrates the velocities into an absolute
end-effector target; each device's config holds its own scaling.

Keyboard bindings (``KeyboardDevice``; a terminal sends key repeats but never key-ups, so a press
keeps moving for ``hold_s``; hold the key down for continuous motion):

    w / s   +x / -x      a / d   +y / -y      r / f   +z / -z            (translation, base frame)
    i / k   +rx / -rx    j / l   +ry / -ry    u / o   +rz / -rz          (rotation about base axes)
    UP / DOWN = i / k    LEFT / RIGHT = u / o                            (arrow keys)
    SPACE   toggle the gripper (open <-> closed)
    c start recording    v stop and keep the episode    x discard it    q quit    ESC e-stop

Events (``TeleopInput.events``): ``start``, ``keep``, ``discard``, ``record_toggle`` (start, or keep
when recording), ``quit``, ``estop``. Gripper commands: ``open``, ``close``, ``toggle`` or None.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.drivers.base import DriverError
from runtime.estop import EStop, KeyListener, parse_keys

log = logging.getLogger("runtime.teleop_devices")

EVENTS = ("start", "keep", "discard", "record_toggle", "quit", "estop")
GRIPPER_COMMANDS = ("open", "close", "toggle")

MOVE_KEYS = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0)}
ROTATE_KEYS = {"i": (0, 1.0), "k": (0, -1.0), "j": (1, 1.0), "l": (1, -1.0), "u": (2, 1.0), "o": (2, -1.0),
               "UP": (0, 1.0), "DOWN": (0, -1.0), "LEFT": (2, 1.0), "RIGHT": (2, -1.0)}
EVENT_KEYS = {"c": "start", "v": "keep", "x": "discard", "q": "quit", "ESC": "estop"}
GRIPPER_KEYS = {"SPACE": "toggle"}


@dataclass
class TeleopInput:
    """One reading: velocities in the robot base frame and what was pressed since the last read."""

    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) m/s
    rotation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) rad/s, axis-angle rate
    gripper: str | None = None  # "open" | "close" | "toggle" | None
    events: tuple[str, ...] = ()  # see EVENTS, in the order they happened

    def __post_init__(self) -> None:
        self.translation = np.asarray(self.translation, dtype=np.float64).reshape(-1)
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(-1)
        if self.translation.shape != (3,) or self.rotation.shape != (3,):
            raise ValueError(f"TeleopInput: translation and rotation must have shape (3,), got "
                             f"{self.translation.shape} and {self.rotation.shape}")
        if self.gripper is not None and self.gripper not in GRIPPER_COMMANDS:
            raise ValueError(f"TeleopInput.gripper must be one of {GRIPPER_COMMANDS} or None, got {self.gripper!r}")
        unknown = [e for e in self.events if e not in EVENTS]
        if unknown:
            raise ValueError(f"TeleopInput.events: unknown {unknown}; known events are {EVENTS}")
        self.events = tuple(self.events)


class TeleopDevice(ABC):
    """An input device: ``connect()/close()``, a context manager, and a non-blocking ``read()``."""

    name: str = "teleop_device"

    def __init__(self) -> None:
        self.connected = False

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def read(self) -> TeleopInput:
        """The current command; never waits for input. DriverError if the device is gone."""

    def __enter__(self) -> TeleopDevice:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge_gripper(commands: Iterable[str]) -> str | None:
    """Several presses in one tick: toggles cancel in pairs; an explicit open/close after them wins."""
    result: str | None = None
    for c in commands:
        if c != "toggle":
            result = c
        elif result is None:
            result = "toggle"
        elif result == "toggle":
            result = None
        else:
            result = "close" if result == "open" else "open"
    return result


# ------------------------------------------------------------------------------------------ keyboard


@dataclass
class KeyboardConfig:
    speed: float = 0.05  # m/s while a move key is held
    rot_speed: float = 0.3  # rad/s while a rotate key is held
    hold_s: float = 0.15  # s a key press keeps moving; keep >= the loop period so a tap moves one tick

    def __post_init__(self) -> None:
        for name in ("speed", "rot_speed", "hold_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"keyboard.{name} must be > 0, got {getattr(self, name)}")


class KeyboardDevice(TeleopDevice):
    """Terminal keys (see the module docstring for the bindings), read by a background thread.

    ``use_terminal=False`` reads no terminal: keys come only from ``feed()`` (tests, GUIs). With an
    ``estop``, ESC triggers it at once from the reader thread, not only at the loop's next read.
    ``now`` is the clock for key hold times (``time.monotonic``; a ``SimClock.now`` in tests).
    """

    name = "keyboard"

    def __init__(self, cfg: KeyboardConfig | None = None, now: Callable[[], float] = time.monotonic,
                 use_terminal: bool = True, estop: EStop | None = None, fd: int | None = None):
        super().__init__()
        self.cfg = cfg or KeyboardConfig()
        self.now = now
        self.use_terminal = use_terminal
        self.estop = estop
        self.fd = fd
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}  # motion key -> time its press stops acting
        self._gripper: list[str] = []
        self._events: list[str] = []
        self._listener: KeyListener | None = None

    def connect(self) -> None:
        if self.use_terminal and self._listener is None:
            self._listener = KeyListener(self._on_key, self.fd).start()
        self.connected = True

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.connected = False

    def feed(self, keys: str) -> None:
        """Inject raw terminal input, e.g. ``"wwa c"`` or ``"\\x1b[A"`` (arrow up); parsed like key presses."""
        for token in parse_keys(keys):
            self._on_key(token)

    def _on_key(self, token: str) -> None:
        if token == "ESC" and self.estop is not None:
            self.estop.trigger("key ESC")
        with self._lock:
            if token in MOVE_KEYS or token in ROTATE_KEYS:
                self._until[token] = self.now() + self.cfg.hold_s
            elif token in GRIPPER_KEYS:
                self._gripper.append(GRIPPER_KEYS[token])
            elif token in EVENT_KEYS:
                self._events.append(EVENT_KEYS[token])

    def read(self) -> TeleopInput:
        if self._listener is not None and not self._listener.running:
            raise DriverError("keyboard: the terminal key listener stopped (end of input or a read error)")
        t = self.now()
        v, w = np.zeros(3), np.zeros(3)
        with self._lock:
            self._until = {k: until for k, until in self._until.items() if until > t}
            for key in self._until:
                if key in MOVE_KEYS:
                    axis, sign = MOVE_KEYS[key]
                    v[axis] += sign
                else:
                    axis, sign = ROTATE_KEYS[key]
                    w[axis] += sign
            gripper, events = _merge_gripper(self._gripper), tuple(self._events)
            self._gripper.clear()
            self._events.clear()
        # opposite keys cancel; arrows and letters for the same axis do not add up
        return TeleopInput(np.clip(v, -1, 1) * self.cfg.speed, np.clip(w, -1, 1) * self.cfg.rot_speed,
                           gripper, events)


# ------------------------------------------------------------------------------------------ spacemouse


_AXES = {"x": 0, "y": 1, "z": 2, "roll": 3, "pitch": 4, "yaw": 5}
BUTTON_ACTIONS = ("none", "gripper_toggle", "gripper_open", "gripper_close", *EVENTS)


def _axis_spec(name: str, field_name: str) -> tuple[int, float]:
    """"-y" -> (index of y, -1.0); ValueError naming the config field for an unknown axis."""
    sign = -1.0 if name.startswith("-") else 1.0
    axis = name.lstrip("+-")
    if axis not in _AXES:
        raise ValueError(f"spacemouse.{field_name}: unknown axis {name!r}; use one of {sorted(_AXES)}, "
                         "optionally with a leading '-'")
    return _AXES[axis], sign


@dataclass
class SpaceMouseConfig:
    max_speed: float = 0.10  # m/s at full deflection
    max_rot_speed: float = 0.6  # rad/s at full deflection
    deadzone: float = 0.1  # fraction of full deflection ignored per axis; the rest rescales to [0, 1]
    # which device axis drives base x, y, z (translation) and rx, ry, rz (rotation); '-' flips it
    translation_axes: tuple[str, str, str] = ("x", "y", "z")
    rotation_axes: tuple[str, str, str] = ("roll", "pitch", "yaw")
    buttons: tuple[str, ...] = ("gripper_toggle", "record_toggle")  # action of button 0, 1, ...
    axis_convention: str | None = "hid_z_up"  # pyspacemouse AxisConvention (>= 2.0); None: library default
    device: str | None = None  # pyspacemouse device name; None: the first one found
    max_reports_per_read: int = 256  # HID reports drained per read(), so the state is never behind

    def __post_init__(self) -> None:
        for name in ("max_speed", "max_rot_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"spacemouse.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.deadzone < 1:
            raise ValueError(f"spacemouse.deadzone must be in [0, 1), got {self.deadzone}")
        for name in ("translation_axes", "rotation_axes"):
            axes = tuple(getattr(self, name))
            if len(axes) != 3:
                raise ValueError(f"spacemouse.{name} must name 3 axes, got {axes}")
            for a in axes:
                _axis_spec(a, name)
        bad = [b for b in self.buttons if b not in BUTTON_ACTIONS]
        if bad:
            raise ValueError(f"spacemouse.buttons: unknown actions {bad}; use {BUTTON_ACTIONS}")
        if self.max_reports_per_read < 1:
            raise ValueError(f"spacemouse.max_reports_per_read must be >= 1, got {self.max_reports_per_read}")


def apply_deadzone(x: np.ndarray, deadzone: float) -> np.ndarray:
    """Zero ``|x| <= deadzone`` and rescale the rest so the output still spans [-1, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return np.sign(x) * np.maximum(np.abs(x) - deadzone, 0.0) / (1.0 - deadzone)


def _open_pyspacemouse(cfg: SpaceMouseConfig) -> Any:
    """Open the device with ``pyspacemouse`` (imported here, so the package needs it only for a SpaceMouse)."""
    try:
        import pyspacemouse
    except (ImportError, OSError) as e:
        raise DriverError(f"spacemouse: cannot import pyspacemouse ({e}); `pip install pyspacemouse` and the "
                          "system hidapi library (e.g. `apt install libhidapi-hidraw0`)") from e
    kwargs: dict[str, Any] = {"device": cfg.device}
    if cfg.axis_convention is not None and hasattr(pyspacemouse, "AxisConvention"):
        kwargs["axis_convention"] = pyspacemouse.AxisConvention(cfg.axis_convention)
    try:
        return pyspacemouse.open(**kwargs)
    except Exception as e:  # noqa: BLE001 - the library raises RuntimeError/ValueError/OSError/HIDException
        raise DriverError(f"spacemouse: no device opened ({e}); is it plugged in, and readable by this user "
                          "(udev rule for /dev/hidraw*)?") from e


class SpaceMouseDevice(TeleopDevice):
    """A 3Dconnexion SpaceMouse through ``pyspacemouse`` (non-blocking HID reads).

    Each ``read()`` drains the pending HID reports, so the state is the newest one; button presses are
    seen on their rising edge and mapped by ``cfg.buttons``. ``opener`` replaces the pyspacemouse
    call in tests: it returns an object with ``read() -> state`` (fields x, y, z, roll, pitch, yaw in
    [-1, 1], ``t``, ``buttons``) and ``close()``.
    """

    name = "spacemouse"

    def __init__(self, cfg: SpaceMouseConfig | None = None, opener: Callable[[], Any] | None = None):
        super().__init__()
        self.cfg = cfg or SpaceMouseConfig()
        self._opener = opener or (lambda: _open_pyspacemouse(self.cfg))
        self._dev: Any = None
        self._buttons: list[int] = []
        self._t_map = [_axis_spec(a, "translation_axes") for a in self.cfg.translation_axes]
        self._r_map = [_axis_spec(a, "rotation_axes") for a in self.cfg.rotation_axes]

    def connect(self) -> None:
        if self._dev is None:
            self._dev = self._opener()
            self._buttons = []
        self.connected = True

    def close(self) -> None:
        if self._dev is not None:
            try:
                self._dev.close()
            except Exception as e:  # noqa: BLE001 - closing must not mask the error that got us here
                log.warning("spacemouse: close failed: %r", e)
            self._dev = None
        self.connected = False

    def _press(self, index: int, gripper: list[str], events: list[str]) -> None:
        action = self.cfg.buttons[index] if index < len(self.cfg.buttons) else "none"
        if action != "none":
            (gripper if action.startswith("gripper_") else events).append(action.removeprefix("gripper_"))

    def read(self) -> TeleopInput:
        if self._dev is None:
            raise DriverError("spacemouse: read() before connect()")
        gripper: list[str] = []
        events: list[str] = []
        try:
            state = None
            for _ in range(self.cfg.max_reports_per_read):
                t_before = getattr(state, "t", None)
                state = self._dev.read()
                buttons = [int(b) for b in getattr(state, "buttons", [])]
                for i, b in enumerate(buttons):
                    if b and not (i < len(self._buttons) and self._buttons[i]):
                        self._press(i, gripper, events)
                self._buttons = buttons
                if getattr(state, "t", None) == t_before:  # no new report: drained
                    break
        except Exception as e:  # noqa: BLE001 - HID errors come in several types; unplugged is one
            raise DriverError(f"spacemouse: read failed ({e!r}); unplugged?") from e
        raw = apply_deadzone([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], self.cfg.deadzone)
        v = np.array([s * raw[i] for i, s in self._t_map]) * self.cfg.max_speed
        w = np.array([s * raw[i] for i, s in self._r_map]) * self.cfg.max_rot_speed
        return TeleopInput(v, w, _merge_gripper(gripper), tuple(events))


# ------------------------------------------------------------------------------------------ test / glue


class ScriptedDevice(TeleopDevice):
    """Replays ``inputs`` one per ``read()``; afterwards neutral input, plus one ``quit`` event if
    ``quit_at_end``. ``reads`` counts the calls."""

    name = "scripted"

    def __init__(self, inputs: Sequence[TeleopInput], quit_at_end: bool = True):
        super().__init__()
        self.inputs = list(inputs)
        self.quit_at_end = quit_at_end
        self.reads = 0

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(self) -> TeleopInput:
        i = self.reads
        self.reads += 1
        if i < len(self.inputs):
            return self.inputs[i]
        return TeleopInput(events=("quit",) if self.quit_at_end and i == len(self.inputs) else ())


class CombinedDevice(TeleopDevice):
    """Several devices as one, e.g. a SpaceMouse for motion and the keyboard for the recorder keys:
    velocities add up, gripper commands and events are merged in device order."""

    name = "combined"

    def __init__(self, *devices: TeleopDevice):
        super().__init__()
        if not devices:
            raise ValueError("CombinedDevice needs at least one device")
        self.devices = devices

    def connect(self) -> None:
        try:
            for d in self.devices:
                d.connect()
        except BaseException:
            self.close()  # closing a device that never connected is harmless
            raise
        self.connected = True

    def close(self) -> None:
        for d in reversed(self.devices):
            try:
                d.close()
            except Exception as e:  # noqa: BLE001 - close the others regardless
                log.warning("%s: close failed: %r", d.name, e)
        self.connected = False

    def read(self) -> TeleopInput:
        inputs = [d.read() for d in self.devices]
        return TeleopInput(sum(i.translation for i in inputs), sum(i.rotation for i in inputs),
                           _merge_gripper(i.gripper for i in inputs if i.gripper is not None),
                           tuple(e for i in inputs for e in i.events))
