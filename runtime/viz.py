"""A live view of a loop in the Rerun viewer: ``display=rerun | rerun+save:<file.rrd> | none``.

``open_display(display, name)`` returns a ``BackgroundObserver`` (``runtime.observer``) whose sink is a
``RerunSink``, or None for ``none``. ``rerun`` spawns a viewer (or connects to one already running),
``rerun+save:<file.rrd>`` writes a recording to open later with ``rerun <file.rrd>``. The Rerun SDK is
imported only here, and only when a display is asked for: ``pip install -e ".[viz]"``.

What is logged, on the timeline ``tick`` (and ``time``, s since the loop started):

- ``cameras/<key>``: every camera image (``scene_rgb``, ``wrist_rgb``);
- ``world/tcp/measured`` and ``world/tcp/commanded``: the TCP positions as 3-D points, with their last
  ``trail`` positions as a line strip under ``.../trail``;
- ``world/chunk``: each received chunk's positions as a 3-D line strip from where it starts (the plan),
  and ``world/chunk_previous``, the chunk it replaced, so one sees how the next chunk continues it;
- ``gripper/measured``, ``gripper/commanded``: widths (m);
- ``safety/<reason>``: interventions by reason (cumulative counts; ``safety/underrun`` among them) and a
  ``events`` text log line for each;
- ``timing/tick_jitter_ms``, ``timing/inference_latency_ms``;
- ``status``: a loop's status line (teleop: recording, episode, steps) as a text document, when it changes.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.observer import BackgroundObserver, TickSnapshot

log = logging.getLogger("runtime.viz")

APP_ID = "visuomotor-dp"
EXTRA_HINT = 'pip install -e ".[viz]"'


class DisplayUnavailable(RuntimeError):
    """``display=rerun...`` was asked for but cannot be given (no SDK, no viewer)."""


@dataclass(frozen=True)
class Display:
    """A parsed ``display`` setting: ``kind`` none | rerun, and the file of ``rerun+save:<file.rrd>``."""

    kind: str = "none"
    save: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def parse_display(spec: str | None) -> Display:
    """``none`` (or empty/None), ``rerun``, ``rerun+save:<file.rrd>``; ValueError naming ``display`` otherwise."""
    text = "none" if spec is None else str(spec).strip()
    if text in ("", "none"):
        return Display()
    if text == "rerun":
        return Display("rerun")
    head, sep, path = text.partition(":")
    if head == "rerun+save" and sep:
        if not path.strip():
            raise ValueError("display=rerun+save: needs a file, e.g. display=rerun+save:run.rrd")
        return Display("rerun", Path(path.strip()))
    raise ValueError(f"display must be none, rerun or rerun+save:<file.rrd>, got {spec!r}")


def import_rerun() -> Any:
    """The ``rerun`` module, or ``DisplayUnavailable`` naming the extra to install."""
    try:
        import rerun
    except ImportError as e:
        raise DisplayUnavailable(f"display=rerun needs the Rerun SDK (rerun-sdk), which is not installed: "
                                 f"{EXTRA_HINT} ({e})") from e
    return rerun


def _position(vec: np.ndarray) -> np.ndarray:
    """(..., 3) positions of actions (..., A); a mapped env's short action (e.g. a 2-D push target) is all
    position, padded with zeros."""
    vec = np.asarray(vec, dtype=np.float64)
    if vec.shape[-1] >= LAYOUT.dim:
        return vec[..., LAYOUT.position]
    pad = np.zeros((*vec.shape[:-1], max(0, 3 - vec.shape[-1])))
    return np.concatenate([vec[..., :3], pad], axis=-1)


def _width(vec: np.ndarray) -> float | None:
    vec = np.asarray(vec)
    return float(vec[LAYOUT.width]) if vec.shape[-1] >= LAYOUT.dim else None


class RerunSink:
    """Logs ``TickSnapshot``s to a Rerun recording of its own (``RecordingStream``); called from the
    observer's thread only. ``trail``: positions kept behind each TCP point."""

    def __init__(self, display: Display, recording_name: str, trail: int = 50):
        if not display.enabled:
            raise ValueError("RerunSink needs display=rerun or rerun+save:<file.rrd>")
        if trail < 2:
            raise ValueError(f"trail must be >= 2 positions, got {trail}")
        rr = import_rerun()
        self.rr = rr
        self.rec = rr.RecordingStream(APP_ID, recording_id=str(uuid.uuid4()))
        if display.save is not None:
            try:
                display.save.parent.mkdir(parents=True, exist_ok=True)
                self.rec.save(str(display.save))
            except (OSError, RuntimeError) as e:  # an unwritable folder, a missing mount
                raise DisplayUnavailable(f"display=rerun+save:{display.save}: cannot write the recording ({e})") from e
            self.where = str(display.save)
        else:
            try:
                self.rec.spawn()  # starts a viewer, or connects to the one already listening
            except Exception as e:  # noqa: BLE001 - a missing viewer binary, a port in use
                raise DisplayUnavailable(f"display=rerun: the Rerun viewer did not start ({e}); try "
                                         "display=rerun+save:<file.rrd> and open it with `rerun <file.rrd>`") from e
            self.where = "the Rerun viewer"
        self.rec.send_recording_name(recording_name)
        self._warm_up(recording_name)
        self.trails = {"measured": deque(maxlen=trail), "commanded": deque(maxlen=trail)}
        self.counts: Counter[str] = Counter()
        self.chunk: np.ndarray | None = None  # (T, 3) positions of the latest chunk
        self.status: str | None = None

    def _warm_up(self, recording_name: str) -> None:
        """Pay the SDK's first-use costs (lazy imports, arrow types: ~25 ms) here, before the loop starts, not
        on the sink's thread while it runs; and log what the recording is, once (static)."""
        rr = self.rr
        tiny = np.zeros((2, 2, 3), np.uint8)
        for archetype in (rr.Image(tiny), rr.Points3D([[0.0, 0.0, 0.0]], colors=[(0, 0, 0)], radii=0.01),
                          rr.LineStrips3D([np.zeros((2, 3))], colors=[(0, 0, 0)], radii=0.01), rr.Scalars(0.0),
                          rr.TextLog("", level=rr.TextLogLevel.INFO), rr.TextDocument("")):
            del archetype
        self.rec.log("description", rr.TextDocument(f"{recording_name}\n\n{__doc__}"), static=True)

    def __call__(self, s: TickSnapshot) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("tick", sequence=s.tick)
        rec.set_time("time", duration=s.time)
        for key, image in s.images.items():
            rec.log(f"cameras/{key}", rr.Image(image))
        for name, vec, colour in (("measured", s.measured, (80, 160, 255)), ("commanded", s.command, (255, 140, 0))):
            pos = _position(vec)
            trail = self.trails[name]
            trail.append(pos)
            rec.log(f"world/tcp/{name}", rr.Points3D([pos], colors=[colour], radii=0.006))
            if len(trail) >= 2:
                rec.log(f"world/tcp/{name}/trail", rr.LineStrips3D([np.stack(trail)], colors=[colour], radii=0.002))
            width = _width(vec)
            if width is not None:
                rec.log(f"gripper/{name}", rr.Scalars(width))
        if s.chunk is not None:
            positions = _position(s.chunk)  # (T, 3)
            if self.chunk is not None:
                rec.log("world/chunk_previous", rr.LineStrips3D([self.chunk], colors=[(120, 120, 120)], radii=0.002))
            rec.log("world/chunk", rr.LineStrips3D([positions], colors=[(0, 220, 120)], radii=0.003))
            self.chunk = positions
        if s.inference_latency_s is not None:
            rec.log("timing/inference_latency_ms", rr.Scalars(s.inference_latency_s * 1e3))
        rec.log("timing/tick_jitter_ms", rr.Scalars(s.jitter_s * 1e3))
        self.counts.update(s.reasons)
        for reason in dict.fromkeys(s.reasons):
            warn = reason == "underrun" or reason.startswith("stale")
            level = rr.TextLogLevel.WARN if warn else rr.TextLogLevel.INFO
            rec.log("events", rr.TextLog(f"tick {s.tick}: {reason}", level=level))
        for reason, n in self.counts.items():  # every tick, so each series is continuous
            rec.log(f"safety/{reason}", rr.Scalars(n))
        status = None if s.status is None else str(s.status)
        if status is not None and status != self.status:  # a document: the viewer shows the state at the cursor
            rec.log("status", rr.TextDocument(status))
            self.status = status

    def close(self) -> None:
        """Flush what the SDK still holds (bounded) and end the recording."""
        self.rec.flush(timeout_sec=5.0)
        self.rec.disconnect()


def spawn_viewer() -> None:
    """Start a Rerun viewer (or find the one listening) without a recording: several processes then connect
    their own recordings to it (``sim.evaluate``). ``DisplayUnavailable`` when it cannot start."""
    rr = import_rerun()
    try:
        rr.spawn(connect=False)
    except Exception as e:  # noqa: BLE001 - a missing viewer binary, a port in use
        raise DisplayUnavailable(f"display=rerun: the Rerun viewer did not start ({e}); try "
                                 "display=rerun+save:<file.rrd> and open it with `rerun <file.rrd>`") from e


def open_display(display: str | Display | None, recording_name: str, maxsize: int = 64,
                 close_timeout_s: float = 10.0) -> BackgroundObserver | None:
    """The observer for ``display`` (None for ``none``): a ``RerunSink`` behind a ``BackgroundObserver``.
    ``DisplayUnavailable`` (no SDK, no viewer) and ``ValueError`` (a bad setting) before anything moves."""
    spec = display if isinstance(display, Display) else parse_display(display)
    if not spec.enabled:
        return None
    sink = RerunSink(spec, recording_name)
    log.info("display: logging to %s (recording %r)", sink.where, recording_name)
    return BackgroundObserver(sink, name="rerun display", maxsize=maxsize, close_timeout_s=close_timeout_s,
                              on_close=sink.close)
