"""Build robots and cameras from config dicts: ``{"type": <name>, ...driver settings}``.

Built-in types: ``fake`` (pure-Python fakes), ``franka`` (franky), ``ur`` (ur_rtde) for robots;
``fake`` and ``realsense`` for cameras. Any other driver, a simulated one included, is named by
``factory: "package.module:callable"``; the callable gets the remaining settings and the clock's
``now`` and returns the driver (this is how ``sim`` plugs its robot in without ``runtime``
importing it).

On the wall clock, every camera that does not read in the background itself (``Camera.reads_in_background``)
is wrapped in ``BackgroundCamera``, so a ``read()`` that blocks never stalls the loop; on a simulated clock
cameras render synchronously at the simulated time and are left as they are. A camera config may force
either with ``background: true|false``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from policy.config_utils import from_dict, load_plugin
from runtime.clock import WallClock
from runtime.drivers.background import in_background
from runtime.drivers.base import Camera, Robot

Now = Callable[[], float]


def _split(spec: Mapping[str, Any], what: str) -> tuple[str | None, str | None, dict[str, Any]]:
    params = dict(spec)
    kind, factory = params.pop("type", None), params.pop("factory", None)
    if (kind is None) == (factory is None):
        raise ValueError(f"{what} config needs exactly one of 'type' or 'factory', got {sorted(spec)}")
    return kind, factory, params


def make_robot(spec: Mapping[str, Any], now: Now) -> Robot:
    kind, factory, params = _split(spec, "robot")
    if factory:
        return load_plugin(factory, "robot factory")(params, now)
    if kind == "fake":
        unknown = set(params) - {"start_pose", "tracking"}
        if unknown:
            raise ValueError(f"unknown robot setting(s) {sorted(unknown)} for type fake")
        from runtime.drivers.fake import FakeRobot

        start = params.get("start_pose")
        return FakeRobot(now, None if start is None else np.asarray(start, float), params.get("tracking", 1.0))
    if kind == "franka":
        from runtime.drivers.franka import FrankaConfig, FrankaRobot

        return FrankaRobot(from_dict(FrankaConfig, params, "robot"), now=now)
    if kind == "ur":
        from runtime.drivers.ur import URConfig, URRobot

        return URRobot(from_dict(URConfig, params, "robot"), now=now)
    raise ValueError(f"unknown robot type {kind!r}; built in: fake, franka, ur (or give a factory)")


def is_wall_clock(now: Now) -> bool:
    """Whether ``now`` is the wall clock (``time.monotonic`` or ``WallClock().now``)."""
    return now is time.monotonic or isinstance(getattr(now, "__self__", None), WallClock)


def make_camera(spec: Mapping[str, Any], now: Now) -> Camera:
    """Build a camera; on the wall clock (or with ``background: true``) one that never blocks in ``read()``."""
    params = dict(spec)
    background = params.pop("background", None)
    if background is not None and not isinstance(background, bool):
        raise ValueError(f"camera setting background must be true or false, got {background!r}")
    camera = _make_camera(params, now)
    if background if background is not None else is_wall_clock(now):
        return in_background(camera)
    return camera


def _make_camera(spec: Mapping[str, Any], now: Now) -> Camera:
    kind, factory, params = _split(spec, "camera")
    if factory:
        return load_plugin(factory, "camera factory")(params, now)
    if kind == "fake":
        unknown = set(params) - {"height", "width"}
        if unknown:
            raise ValueError(f"unknown camera setting(s) {sorted(unknown)} for type fake")
        from runtime.drivers.fake import FakeCamera

        return FakeCamera(now, (int(params.get("height", 96)), int(params.get("width", 96))))
    if kind == "realsense":
        from runtime.drivers.realsense import RealSenseCamera, RealSenseConfig

        return RealSenseCamera(from_dict(RealSenseConfig, params, "camera"), now=now)
    raise ValueError(f"unknown camera type {kind!r}; built in: fake, realsense (or give a factory)")
