"""Intel RealSense color camera through pyrealsense2 (pip package ``pyrealsense2``; on Debian/Ubuntu it
also needs the system library ``libusb-1.0-0``).

One instance = one camera, chosen by serial number (``list_realsense_serials()`` lists the connected
ones); several cameras are several instances. A background thread waits on the device and keeps only the
newest frame, so ``read()`` never blocks: it returns that frame, or raises ``DriverError`` when no new
frame has arrived for ``frame_timeout_s`` (device unplugged, USB stall) or the thread failed.

Timestamps: ``CameraFrame.timestamp`` is the host ``time.monotonic()`` when the frame reached this process
(the arrival time, as for every driver). ``RealSenseFrame.capture_time`` additionally maps the device's own
frame timestamp onto the same monotonic clock: ``device_time + offset``, where ``offset`` is the smallest
``arrival - device_time`` over the last ``clock_window`` frames (``ClockMapper``). That is the arrival
time the frame would have had with the least transport delay seen, so it is free of USB/scheduling jitter
but still includes the minimum latency; it is always <= ``timestamp``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.drivers.base import Camera, CameraFrame, DriverError

log = logging.getLogger(__name__)


@dataclass
class RealSenseConfig:
    """Settings of one RealSense color stream (sizes in pixels, rates in Hz, times in s)."""

    serial: str  # the camera's serial number, e.g. "123622270136"
    width: int = 640  # output image size; the stream is center-cropped/resized to it
    height: int = 480
    fps: int = 30
    stream_width: int = 640  # the color mode requested from the device
    stream_height: int = 480
    crop_to_aspect: bool = True  # center-crop to the output aspect ratio before resizing (else stretch)
    frame_timeout_s: float = 0.5  # read() raises when the newest frame is older than this
    connect_timeout_s: float = 5.0  # connect() raises when no first frame arrives within this
    exposure_us: float | None = None  # None: auto exposure
    white_balance_k: float | None = None  # None: auto white balance
    clock_window: int = 300  # frames in the device-to-host clock offset estimate (10 s at 30 Hz)

    def __post_init__(self) -> None:
        if not isinstance(self.serial, str) or not self.serial.strip():
            raise ValueError(f"RealSenseConfig.serial must be a non-empty serial number string, got {self.serial!r}")
        for name in ("width", "height", "fps", "stream_width", "stream_height", "clock_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RealSenseConfig.{name} must be a positive integer, got {value!r}")
        if self.fps > 300:
            raise ValueError(f"RealSenseConfig.fps must be <= 300, got {self.fps}")
        for name in ("frame_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"RealSenseConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("exposure_us", "white_balance_k"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:
                raise ValueError(f"RealSenseConfig.{name} must be > 0 or None (auto), got {value}")


@dataclass
class RealSenseFrame(CameraFrame):
    """A CameraFrame (``timestamp`` = host arrival time) plus the device capture time mapped to the host
    monotonic clock (s) and the device's frame counter."""

    capture_time: float = float("nan")
    frame_number: int = -1


def import_pyrealsense2() -> Any:
    """Import pyrealsense2 lazily; a missing package is a DriverError naming what to install."""
    try:
        import pyrealsense2
    except ImportError as exc:
        raise DriverError(f"realsense: pyrealsense2 cannot be imported ({exc}); install it with `pip install "
                          "pyrealsense2` (Debian/Ubuntu also need `apt-get install libusb-1.0-0`)") from exc
    return pyrealsense2


def list_realsense_serials() -> list[str]:
    """Serial numbers of the RealSense devices connected now."""
    rs = import_pyrealsense2()
    return [dev.get_info(rs.camera_info.serial_number) for dev in rs.context().query_devices()]


class ClockMapper:
    """Maps a device clock onto the host clock from (device time, arrival time) pairs of the same frames.

    The offset is the minimum of ``arrival - device`` over the last ``window`` frames: transport delay is
    never negative and usually near its minimum, so the minimum tracks the clock offset plus the smallest
    delay while ignoring late frames; a sliding window follows the slow drift between the two clocks. A
    device clock that goes backwards or jumps by more than ``reset_jump_s`` (device reset) restarts it.
    """

    def __init__(self, window: int = 300, reset_jump_s: float = 2.0):
        self._offsets: deque[float] = deque(maxlen=window)
        self._last_device: float | None = None
        self.reset_jump_s = reset_jump_s

    def update(self, device_s: float, arrival_s: float) -> float:
        """Add one frame (both in s); return its capture time on the host clock (s), <= arrival_s."""
        last = self._last_device
        if last is not None and not 0.0 <= device_s - last <= self.reset_jump_s:
            self._offsets.clear()
        self._last_device = device_s
        self._offsets.append(arrival_s - device_s)
        return device_s + min(self._offsets)


def fit_image(image: np.ndarray, height: int, width: int, crop: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8: optional center crop to the target aspect ratio, then
    an antialiased bilinear resize. Returns a copy (never a view of the device buffer)."""
    h, w = image.shape[:2]
    if crop and h * width != w * height:
        if w * height > h * width:  # too wide: crop columns
            new_w = max(1, round(h * width / height))
            x0 = (w - new_w) // 2
            image = image[:, x0:x0 + new_w]  # (h, new_w, 3)
        else:  # too tall: crop rows
            new_h = max(1, round(w * height / width))
            y0 = (h - new_h) // 2
            image = image[y0:y0 + new_h]  # (new_h, w, 3)
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image).copy()
    from PIL import Image  # pillow ships with torchvision

    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()  # (height, width, 3)


class RealSenseCamera(Camera):
    """One RealSense color stream; ``read()`` returns the newest RealSenseFrame without waiting."""

    reads_in_background = True  # its own thread keeps the newest frame

    def __init__(self, config: RealSenseConfig, now: Callable[[], float] = time.monotonic):
        super().__init__(now)
        self.config = config
        self.name = f"realsense@{config.serial}"
        self._rs: Any = None
        self._pipeline: Any = None
        self._lock = threading.Lock()
        self._frame: RealSenseFrame | None = None
        self._error: str | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock = ClockMapper(config.clock_window)

    def connect(self) -> None:
        """Start the color stream, the reader thread, and wait for the first frame."""
        if self.connected:
            return
        rs = import_pyrealsense2()
        cfg = self.config
        pipeline, rs_config = rs.pipeline(), rs.config()
        rs_config.enable_device(cfg.serial)
        rs_config.enable_stream(rs.stream.color, cfg.stream_width, cfg.stream_height, rs.format.rgb8, cfg.fps)
        try:
            profile = pipeline.start(rs_config)
        except Exception as exc:
            raise DriverError(f"{self.name}: cannot start color {cfg.stream_width}x{cfg.stream_height}@{cfg.fps} "
                              f"({type(exc).__name__}: {exc}); connected serials: {self._serials()}") from exc
        self._rs, self._pipeline = rs, pipeline
        try:
            self._apply_options(profile.get_device().first_color_sensor())
            self._frame, self._error, self._clock = None, None, ClockMapper(cfg.clock_window)
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            deadline = time.monotonic() + cfg.connect_timeout_s
            while self._frame is None and self._error is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if self._error is not None:
                raise DriverError(self._error)
            if self._frame is None:
                raise DriverError(f"{self.name}: no frame within connect_timeout_s={cfg.connect_timeout_s} s")
        except BaseException:
            self._shutdown()
            raise
        self.connected = True

    def close(self) -> None:
        """Stop the reader thread and the stream (idempotent)."""
        self._shutdown()
        self.connected = False

    def read(self) -> RealSenseFrame:
        """The newest frame; DriverError if the reader failed or the newest frame is older than
        frame_timeout_s. Never waits for the device."""
        if not self.connected:
            raise DriverError(f"{self.name}: not connected")
        if self._error is not None:
            raise DriverError(self._error)
        with self._lock:
            frame = self._frame
        age = self.now() - frame.timestamp
        if age > self.config.frame_timeout_s:
            serials = self._serials()
            where = "still connected" if self.config.serial in serials else f"disconnected (connected: {serials})"
            raise DriverError(f"{self.name}: no new frame for {age:.2f} s "
                              f"(frame_timeout_s={self.config.frame_timeout_s}); device {where}")
        return frame

    # ----------------------------------------------------------------- internals
    def _apply_options(self, sensor: Any) -> None:
        rs, cfg = self._rs, self.config
        if cfg.exposure_us is not None:
            sensor.set_option(rs.option.enable_auto_exposure, 0)
            sensor.set_option(rs.option.exposure, float(cfg.exposure_us))
        if cfg.white_balance_k is not None:
            sensor.set_option(rs.option.enable_auto_white_balance, 0)
            sensor.set_option(rs.option.white_balance, float(cfg.white_balance_k))

    def _serials(self) -> list[str] | str:
        try:
            return list_realsense_serials()
        except Exception as exc:  # only used to word an error message
            return f"unknown ({exc})"

    def _loop(self) -> None:
        """Reader thread: wait for frames (releases the GIL), keep the newest one, remember a failure."""
        cfg = self.config
        while not self._halt.is_set():
            try:
                ok, frames = self._pipeline.try_wait_for_frames(100)
                if not ok:
                    continue  # read() judges staleness
                arrival = self.now()
                color = frames.get_color_frame()
                if not color:
                    continue
                image = fit_image(np.asanyarray(color.get_data()), cfg.height, cfg.width, cfg.crop_to_aspect)
                capture = self._clock.update(color.get_timestamp() / 1000.0, arrival)  # device ms -> s
                frame = RealSenseFrame(image, arrival, capture, int(color.get_frame_number()))
            except Exception as exc:
                if not self._halt.is_set():
                    self._error = f"{self.name}: frame reader failed: {type(exc).__name__}: {exc}"
                return
            with self._lock:
                self._frame = frame

    def _shutdown(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # try_wait_for_frames returns within 100 ms
            self._thread = None
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except Exception as exc:
                log.debug("%s: pipeline.stop: %s", self.name, exc)
            self._pipeline = None
