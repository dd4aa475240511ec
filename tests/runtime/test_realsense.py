"""RealSenseCamera: clock mapping and image fitting, the reader thread against a fake pyrealsense2, and
hardware tests (marked ``hardware``; they run only when pyrealsense2 finds a connected camera)."""

from __future__ import annotations

import os
import sys
import threading
import time
import types

import numpy as np
import pytest

from runtime.drivers.base import DriverError
from runtime.drivers.realsense import (
    ClockMapper,
    RealSenseCamera,
    RealSenseConfig,
    fit_image,
    list_realsense_serials,
)

WAIT_S = 10.0  # hang guard


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# ------------------------------------------------------------------ clock mapping
def test_clock_mapper_recovers_offset_plus_minimum_latency():
    rng = np.random.default_rng(0)
    mapper = ClockMapper(window=100)
    offset, min_latency = 1234.5, 0.004  # host = device + offset; frames arrive 4-30 ms after capture
    errors = []
    for i in range(300):
        device = 10.0 + i / 30
        latency = min_latency if i % 10 == 0 else min_latency + rng.exponential(0.008)
        arrival = device + offset + latency
        capture = mapper.update(device, arrival)
        assert capture <= arrival + 1e-12
        if i >= 10:  # once a minimum-latency frame has been seen
            errors.append(capture - (device + offset))
    np.testing.assert_allclose(errors, min_latency, atol=1e-9)  # jitter removed, min latency kept


def test_clock_mapper_follows_drift_and_resets_on_device_clock_jump():
    mapper = ClockMapper(window=30)
    drift = 1e-4  # 100 ppm: the device clock runs slow
    for i in range(600):
        device = i / 30
        host = 50.0 + device * (1 + drift)
        capture = mapper.update(device, host + 0.002)
    assert capture == pytest.approx(host + 0.002, abs=30 / 30 * drift + 1e-9)  # error <= window * drift
    capture = mapper.update(0.0, 200.0)  # device reset: its clock starts again from 0
    assert capture == pytest.approx(200.0)
    assert mapper.update(1 / 30, 200.0 + 1 / 30 + 0.01) == pytest.approx(200.0 + 1 / 30)


# ------------------------------------------------------------------ image fitting
def test_fit_image_center_crops_then_resizes():
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, 80:560] = 200  # the centered 480x480 square is bright, the side bands dark
    out = fit_image(image, 96, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert out.min() == 200  # the dark bands were cropped away, not squeezed in
    stretched = fit_image(image, 96, 96, crop=False)
    assert stretched[:, 0].max() == 0 and stretched[:, 48].min() == 200


def test_fit_image_tall_and_identity():
    image = np.random.default_rng(0).integers(0, 255, (300, 100, 3), dtype=np.uint8)
    out = fit_image(image, 100, 100)
    np.testing.assert_array_equal(out, image[100:200])  # crop only, no resize needed
    same = fit_image(image, 300, 100)
    np.testing.assert_array_equal(same, image)
    assert not np.shares_memory(same, image)


def test_fit_image_downscale_averages():
    image = np.zeros((4, 4, 3), np.uint8)
    image[::2, ::2] = 255  # a fine checkerboard-like pattern
    out = fit_image(image, 2, 2)
    assert 30 < out.mean() < 100  # averaged (about 64), not point-sampled to 0 or 255


@pytest.mark.parametrize("field, kwargs", [
    ("serial", {"serial": ""}),
    ("width", {"width": 0}),
    ("fps", {"fps": -30}),
    ("fps", {"fps": 30.5}),
    ("stream_height", {"stream_height": True}),
    ("frame_timeout_s", {"frame_timeout_s": 0.0}),
    ("exposure_us", {"exposure_us": -5.0}),
])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        RealSenseConfig(**{"serial": "123456789", **kwargs})


# ------------------------------------------------------------------ driver against a fake pyrealsense2
class FakeColorFrame:
    def __init__(self, image: np.ndarray, device_ms: float, number: int):
        self.image, self.device_ms, self.number = image, device_ms, number

    def __bool__(self):
        return True

    def get_data(self):
        return self.image

    def get_timestamp(self):
        return self.device_ms

    def get_frame_number(self):
        return self.number


class FakeRealSense:
    """A fake pyrealsense2 module: one camera that produces frames every 10 ms until told otherwise."""

    def __init__(self, monkeypatch, serials=("111",), size=(480, 640)):
        self.serials = list(serials)
        self.size = size
        self.producing = True
        self.gate = threading.Event()  # cleared: try_wait_for_frames blocks until it is set
        self.gate.set()
        self.fail_with: Exception | None = None
        self.started: list[tuple] = []
        self.stopped = 0
        self.options: list[tuple] = []
        self.count = 0
        fake = self

        class Pipeline:
            def start(self, config):
                if config.serial not in fake.serials:
                    raise RuntimeError("No device connected")
                fake.started.append((config.serial, *config.stream))
                sensor = types.SimpleNamespace(set_option=lambda opt, value: fake.options.append((opt, value)))
                device = types.SimpleNamespace(first_color_sensor=lambda: sensor)
                return types.SimpleNamespace(get_device=lambda: device)

            def try_wait_for_frames(self, timeout_ms):
                fake.gate.wait()
                if fake.fail_with is not None:
                    raise fake.fail_with
                if not fake.producing:
                    time.sleep(timeout_ms / 1000)
                    return False, None
                time.sleep(0.01)
                fake.count += 1
                h, w = fake.size
                image = np.full((h, w, 3), fake.count % 256, np.uint8)
                color = FakeColorFrame(image, 5000.0 + 10.0 * fake.count, fake.count)
                return True, types.SimpleNamespace(get_color_frame=lambda: color)

            def stop(self):
                fake.stopped += 1

        class Config:
            def enable_device(self, serial):
                self.serial = serial

            def enable_stream(self, stream, width, height, fmt, fps):
                self.stream = (stream, width, height, fmt, fps)

        devices = [types.SimpleNamespace(get_info=lambda key, s=s: s) for s in self.serials]
        module = types.SimpleNamespace(
            pipeline=Pipeline, config=Config,
            context=lambda: types.SimpleNamespace(query_devices=lambda: [d for d in devices
                                                                         if d.get_info(0) in fake.serials]),
            camera_info=types.SimpleNamespace(serial_number=0),
            stream=types.SimpleNamespace(color="color"), format=types.SimpleNamespace(rgb8="rgb8"),
            option=types.SimpleNamespace(enable_auto_exposure="ae", exposure="exposure",
                                         enable_auto_white_balance="awb", white_balance="wb"),
        )
        monkeypatch.setitem(sys.modules, "pyrealsense2", module)


@pytest.fixture
def realsense_fake(monkeypatch):
    return FakeRealSense(monkeypatch, serials=["111", "222"])


@pytest.fixture
def realsense_camera(realsense_fake):
    camera = RealSenseCamera(RealSenseConfig(serial="111", width=96, height=96, frame_timeout_s=0.3))
    camera.connect()
    try:
        yield camera
    finally:
        camera.close()


def test_missing_package_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    with pytest.raises(DriverError, match="pip install pyrealsense2"):
        RealSenseCamera(RealSenseConfig(serial="111")).connect()


def test_lists_serials(realsense_fake):
    assert list_realsense_serials() == ["111", "222"]


def test_read_returns_newest_fitted_frame(realsense_fake, realsense_camera):
    assert realsense_fake.started == [("111", "color", 640, 480, "rgb8", 30)]
    first = realsense_camera.read()
    assert first.image.shape == (96, 96, 3) and first.image.dtype == np.uint8
    assert first.capture_time <= first.timestamp <= time.monotonic()
    wait_for(lambda: realsense_camera.read().frame_number > first.frame_number + 3, "newer frames")
    newest = realsense_camera.read()
    assert newest.timestamp > first.timestamp
    # device clock advances 10 ms per frame; the mapped capture times keep that spacing
    assert newest.capture_time - first.capture_time == pytest.approx(
        0.01 * (newest.frame_number - first.frame_number), abs=0.05)


def test_read_does_not_wait_for_the_device(realsense_fake, realsense_camera):
    realsense_fake.gate.clear()  # the reader thread now hangs inside try_wait_for_frames
    time.sleep(0.05)
    frames = []
    reader = threading.Thread(target=lambda: frames.extend([realsense_camera.read(), realsense_camera.read()]),
                              daemon=True)
    reader.start()
    reader.join(WAIT_S)
    realsense_fake.gate.set()
    assert not reader.is_alive(), "read() blocked on the device"
    assert frames[0] is frames[1]  # the same newest frame, no new one was waited for


def test_stale_frames_raise_and_name_the_serial(realsense_fake, realsense_camera):
    realsense_fake.producing = False
    with pytest.raises(DriverError, match=r"realsense@111.*no new frame.*still connected"):
        wait_for(lambda: realsense_camera.read() is None, "a DriverError")


def test_unplugged_device_is_reported(realsense_fake, realsense_camera):
    realsense_fake.producing = False
    realsense_fake.serials.remove("111")
    with pytest.raises(DriverError, match=r"realsense@111.*disconnected"):
        wait_for(lambda: realsense_camera.read() is None, "a DriverError")


def test_reader_failure_raises(realsense_fake, realsense_camera):
    realsense_fake.fail_with = RuntimeError("Frame didn't arrive within 100")
    with pytest.raises(DriverError, match=r"realsense@111.*Frame didn't arrive"):
        wait_for(lambda: realsense_camera.read() is None, "a DriverError")


def test_unknown_serial_lists_connected(realsense_fake):
    with pytest.raises(DriverError, match=r"realsense@999.*'111', '222'"):
        RealSenseCamera(RealSenseConfig(serial="999")).connect()


def test_no_first_frame_times_out(realsense_fake):
    realsense_fake.producing = False
    camera = RealSenseCamera(RealSenseConfig(serial="222", connect_timeout_s=0.3))
    with pytest.raises(DriverError, match="no frame within"):
        camera.connect()
    assert realsense_fake.stopped == 1 and not camera.connected


def test_manual_exposure_is_applied_and_close_is_idempotent(realsense_fake):
    camera = RealSenseCamera(RealSenseConfig(serial="222", exposure_us=150.0, white_balance_k=4500.0))
    camera.connect()
    camera.close()
    camera.close()
    assert realsense_fake.options == [("ae", 0), ("exposure", 150.0), ("awb", 0), ("wb", 4500.0)]
    assert realsense_fake.stopped == 1
    assert not any(t.name == "realsense@222" for t in threading.enumerate())
    with pytest.raises(DriverError, match="not connected"):
        camera.read()


# ------------------------------------------------------------------ real hardware
def _connected_serial() -> str | None:
    if os.environ.get("REALSENSE_SERIAL"):
        return os.environ["REALSENSE_SERIAL"]
    try:
        serials = list_realsense_serials()
    except DriverError:
        return None
    return serials[0] if serials else None


@pytest.mark.hardware
def test_hardware_stream():
    serial = _connected_serial()
    if serial is None:
        pytest.skip("no RealSense camera found by pyrealsense2 (or REALSENSE_SERIAL unset)")
    camera = RealSenseCamera(RealSenseConfig(serial=serial, width=224, height=224))
    camera.connect()
    try:
        first = camera.read()
        assert first.image.shape == (224, 224, 3) and first.image.dtype == np.uint8
        assert first.capture_time <= first.timestamp
        wait_for(lambda: camera.read().frame_number > first.frame_number, "a second frame")
        assert camera.read().timestamp > first.timestamp
    finally:
        camera.close()
