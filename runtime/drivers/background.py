"""Background reading for cameras whose ``read()`` may block (the driver contract says it must not).

``BackgroundCamera(inner)`` runs ``inner.read()`` in a daemon thread and keeps the newest frame;
its own ``read()`` returns that frame at once. A camera that stalls therefore never stalls the loop:
the frame it returns keeps its old arrival timestamp, the frame ages, and the controller's staleness
check holds and then stops, exactly as for a camera that stopped delivering frames. ``read()`` raises
``DriverError`` (naming the camera) while no frame has arrived yet, and for good once the reader thread
has died with an error.

Only for the wall clock: on a simulated clock a camera renders on demand at the simulated time, so a
thread that reads ahead would return frames from the wrong time (``runtime.factory`` decides).
"""

from __future__ import annotations

import logging
import threading
import time

from runtime.drivers.base import Camera, CameraFrame, DriverError

log = logging.getLogger(__name__)


class BackgroundCamera(Camera):
    """Wraps a camera: a reader thread calls ``inner.read()`` at up to ``poll_hz`` and keeps the newest frame.

    ``connect()`` connects the inner camera, starts the thread and waits up to ``first_frame_timeout_s``
    for a first frame (``DriverError`` if none). ``close()`` stops and joins the thread (waiting up to
    ``join_timeout_s`` for a read in progress), then closes the inner camera.
    """

    reads_in_background = True

    def __init__(self, inner: Camera, poll_hz: float = 60.0, first_frame_timeout_s: float = 5.0,
                 join_timeout_s: float = 5.0):
        if not poll_hz > 0:
            raise ValueError(f"poll_hz must be > 0, got {poll_hz}")
        if not first_frame_timeout_s > 0 or not join_timeout_s > 0:
            raise ValueError("first_frame_timeout_s and join_timeout_s must be > 0")
        super().__init__(inner.now)
        self.inner = inner
        self.name = inner.name
        self.period_s = 1.0 / poll_hz
        self.first_frame_timeout_s = first_frame_timeout_s
        self.join_timeout_s = join_timeout_s
        self._lock = threading.Lock()
        self._frame: CameraFrame | None = None
        self._error: str | None = None
        self._halt = threading.Event()
        self._first = threading.Event()  # set on the first frame or when the thread ends
        self._thread: threading.Thread | None = None
        self.frames_read = 0  # frames the reader thread received (for tests and diagnostics)

    def connect(self) -> None:
        if self.connected:
            return
        self.inner.connect()
        self._frame, self._error, self.frames_read = None, None, 0
        self._halt.clear()
        self._first.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.name} reader", daemon=True)
        self._thread.start()
        if not self._first.wait(self.first_frame_timeout_s) or self._frame is None:
            reason = self._error or f"no first frame within {self.first_frame_timeout_s:.1f} s"
            self.close()
            raise DriverError(f"{self.name}: {reason}")
        self.connected = True

    def close(self) -> None:
        """Stop and join the reader thread, then close the inner camera (idempotent)."""
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.join_timeout_s)
            if thread.is_alive():  # a read() that never returns: the daemon thread is abandoned
                log.warning("%s: reader thread still blocked in read() after %.1f s; abandoning it",
                            self.name, self.join_timeout_s)
        try:
            self.inner.close()
        finally:
            self.connected = False

    def read(self) -> CameraFrame:
        """The newest frame, without waiting; DriverError if none yet or the reader thread failed."""
        with self._lock:
            frame, error = self._frame, self._error
        if error is not None:
            raise DriverError(f"{self.name}: {error}")
        if frame is None:
            raise DriverError(f"{self.name}: no frame yet")
        return frame

    def _loop(self) -> None:
        """Reader thread: read, keep the newest frame, pace to absolute deadlines, remember a failure."""
        next_t = time.monotonic()
        try:
            while not self._halt.is_set():
                frame = self.inner.read()  # may block; only this thread waits
                with self._lock:
                    self._frame = frame
                    self.frames_read += 1
                self._first.set()
                next_t = max(next_t + self.period_s, time.monotonic())  # late: read again now, no burst
                self._halt.wait(max(0.0, next_t - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported by read() as a DriverError naming the camera
            if not self._halt.is_set():
                with self._lock:
                    self._error = f"reader thread failed: {type(exc).__name__}: {exc}"
                log.error("%s: %s", self.name, self._error)
        finally:
            self._first.set()


def in_background(camera: Camera, **kwargs: float) -> Camera:
    """``camera`` itself if it already reads in the background, else a ``BackgroundCamera`` around it."""
    if getattr(camera, "reads_in_background", False):
        return camera
    return BackgroundCamera(camera, **kwargs)
