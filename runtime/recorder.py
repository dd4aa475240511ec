"""Record teleoperated demonstrations into the crash-safe zarr ``ReplayBuffer``, one episode at a time.

While an episode is recorded its steps are buffered in memory; ``stop_and_keep()`` writes the whole
episode with a single ``ReplayBuffer.add_episode`` (which commits by writing ``meta/episode_ends``
last), ``discard()`` drops it. A crash or Ctrl-C during an episode therefore loses at most that episode
(and, with ``wait=False``, an episode still being written): everything committed before stays intact.

Every step is checked when it is added (shape, dtype, NaN/inf, time going backwards), so a bad frame
is refused with a ``ValueError`` naming the key at the tick it happens, not at the end of a long demo.

Memory: images dominate. Two 96x96x3 uint8 cameras at 10 Hz are 2 * 27.6 kB * 10 = ~0.55 MB/s, about
33 MB per minute of demo; 640x480 frames would be ~18 MB/s. Writing costs ~3 ms per step (Blosc zstd
on the images), ~2 s for a 60 s episode: a real-time loop should keep with ``wait=False`` so a single
background writer thread does it while the loop keeps ticking; ``flush()``/``close()`` wait for it.

Counts are what was committed: ``committed`` lists the episode indices that are on disk, ``failed`` the
errors of episodes that could not be written (a full disk). The writer's queue is bounded: while
``max_queued`` kept episodes are still being written, ``start()`` refuses a new episode
(``RecorderBusy``, logged; ``writer_behind`` says so beforehand). It refuses rather than blocks, so a
control loop that records never stalls on the disk; the episodes already kept are never dropped.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import numpy as np

from policy import keys
from policy.data.replay_buffer import ReplayBuffer

log = logging.getLogger("runtime.recorder")

LOWDIM_SHAPES = {keys.EE_POSE: (keys.EE_POSE_DIM,), keys.GRIPPER: (keys.GRIPPER_DIM,)}


def _lowdim(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float32 copy of ``value`` with the given shape, or ValueError naming ``name``."""
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"recorder: '{name}' is not numeric: {e}") from e
    if a.shape != shape:
        raise ValueError(f"recorder: '{name}' must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"recorder: '{name}' contains NaN or inf: {a}")
    return a.astype(np.float32)


class RecorderBusy(RuntimeError):
    """The background writer is ``max_queued`` episodes behind: no new episode until it catches up."""


class EpisodeRecorder:
    """Buffers one episode of steps in memory and appends it to a ``ReplayBuffer`` on keep.

    Stored keys (``policy.keys``): the image keys (T, H, W, 3) uint8, ``ee_pose`` (T, 9) float32,
    ``gripper`` (T, 1) float32, ``action`` (T, 10) float32 (the command actually sent), ``timestamp``
    (T,) float64 seconds. Not thread-safe: call it from the control loop's thread only.
    """

    def __init__(self, path: str | os.PathLike, image_keys: Sequence[str] = keys.IMAGE_KEYS, max_queued: int = 2):
        """Open (or create) the dataset at ``path`` for appending; refuse one with another key set.

        ``max_queued``: kept episodes that may wait for the background writer before ``start()`` refuses.
        """
        if max_queued < 1:
            raise ValueError(f"recorder: max_queued must be >= 1 (episodes), got {max_queued}")
        self.path = path
        self.max_queued = max_queued
        self.image_keys = tuple(image_keys)
        if len(set(self.image_keys)) != len(self.image_keys):
            raise ValueError(f"recorder: image_keys has duplicates: {self.image_keys}")
        self.keys = (*self.image_keys, keys.EE_POSE, keys.GRIPPER, keys.ACTION, keys.TIMESTAMP)
        self._buffer = ReplayBuffer.open(path, "a")
        if self._buffer.n_episodes > 0 and set(self._buffer.keys) != set(self.keys):
            missing = sorted(set(self._buffer.keys) - set(self.keys))
            extra = sorted(set(self.keys) - set(self._buffer.keys))
            raise ValueError(f"recorder: dataset {path} holds keys {self._buffer.keys}; this recorder would write "
                             f"{sorted(self.keys)} (missing {missing}, extra {extra})")
        self._n_kept = self._buffer.n_episodes  # committed + queued for the writer
        self.committed: list[int] = []  # episode indices this recorder committed to disk, in order
        self.committed_steps = 0  # steps in those episodes
        self.failed: list[str] = []  # why each episode that could not be written failed
        self._error: BaseException | None = None  # the first write error not raised yet
        self._steps: dict[str, list[np.ndarray]] | None = None  # None: not recording
        self._image_shapes: dict[str, tuple[int, ...]] | None = None  # fixed by the first valid step
        self._last_t = -math.inf
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future[int], int]] = []  # (write, steps of its episode), oldest first

    # ---------------------------------------------------------------- state

    @property
    def recording(self) -> bool:
        """True between ``start()`` and ``stop_and_keep()``/``discard()``."""
        return self._steps is not None

    @property
    def n_steps(self) -> int:
        """Steps buffered in the current episode (0 when not recording)."""
        return len(self._steps[keys.ACTION]) if self._steps is not None else 0

    @property
    def n_episodes(self) -> int:
        """Episodes in the dataset, counting kept ones still queued for the background writer."""
        return self._n_kept

    @property
    def n_queued(self) -> int:
        """Kept episodes not written yet (queued or being written)."""
        self._collect()
        return len(self._pending)

    @property
    def writer_behind(self) -> bool:
        """True while ``max_queued`` episodes wait for the writer: ``start()`` would refuse."""
        return self.n_queued >= self.max_queued

    # ---------------------------------------------------------------- recording

    def start(self) -> None:
        """Begin a new episode; RuntimeError if one is already being recorded, ``RecorderBusy`` while the
        writer is ``max_queued`` episodes behind, the write error of an earlier episode if one failed."""
        self._raise_writer_errors()
        if self.recording:
            raise RuntimeError("recorder: start() while an episode is being recorded; keep or discard it first")
        if len(self._pending) >= self.max_queued:
            msg = (f"recorder: the writer is behind ({len(self._pending)} kept episodes still being written to "
                   f"{self.path}); not starting a new episode until it catches up")
            log.warning(msg)
            raise RecorderBusy(msg)
        self._steps = {k: [] for k in self.keys}
        self._last_t = -math.inf

    def add_step(self, obs: Mapping[str, np.ndarray], action_sent: np.ndarray, timestamp: float) -> None:
        """Buffer one step: ``obs`` holds the image keys (H, W, 3) uint8, ``ee_pose`` (9,) and ``gripper``
        (1,); ``action_sent`` (10,) is the command actually sent; ``timestamp`` in seconds, non-decreasing.

        Raises ValueError naming the key for a missing, wrongly shaped, non-uint8 or non-finite entry;
        nothing is buffered then. RuntimeError when not recording.
        """
        if self._steps is None:
            raise RuntimeError("recorder: add_step() while not recording; call start() first")
        step: dict[str, np.ndarray] = {}
        for k in self.image_keys:
            if k not in obs:
                raise ValueError(f"recorder: observation is missing '{k}' (has {sorted(obs)})")
            img = np.asarray(obs[k])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"recorder: '{k}' must be an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
            want = self._image_shapes[k] if self._image_shapes is not None else img.shape
            if img.shape != want:
                raise ValueError(f"recorder: '{k}' frame shape changed from {want} to {img.shape}")
            step[k] = img.copy()  # drivers may reuse their frame buffers
        for k, shape in LOWDIM_SHAPES.items():
            if k not in obs:
                raise ValueError(f"recorder: observation is missing '{k}' (has {sorted(obs)})")
            step[k] = _lowdim(k, obs[k], shape)
        step[keys.ACTION] = _lowdim(keys.ACTION, action_sent, (keys.ACTION_DIM,))
        t = float(timestamp)
        if not math.isfinite(t):
            raise ValueError(f"recorder: '{keys.TIMESTAMP}' must be finite, got {t}")
        if t < self._last_t:
            raise ValueError(f"recorder: '{keys.TIMESTAMP}' went backwards ({self._last_t} -> {t})")
        step[keys.TIMESTAMP] = np.float64(t)
        if self._image_shapes is None:
            self._check_dataset({k: step[k].shape for k in self.image_keys})
        for k, v in step.items():
            self._steps[k].append(v)
        self._last_t = t

    def _check_dataset(self, image_shapes: dict[str, tuple[int, ...]]) -> None:
        """On the first step: the frame shapes must match what the dataset already holds."""
        if self._buffer.n_episodes > 0 and not self._pending:  # no writer running: safe to read metadata
            spec: dict[str, tuple[tuple[int, ...], str]] = {k: (s, "uint8") for k, s in image_shapes.items()}
            spec.update({k: (s, "float32") for k, s in LOWDIM_SHAPES.items()})
            spec[keys.ACTION] = ((keys.ACTION_DIM,), "float32")
            spec[keys.TIMESTAMP] = ((), "float64")
            self._buffer.validate(spec)  # DatasetError (a ValueError) naming the key
        self._image_shapes = image_shapes

    def stop_and_keep(self, wait: bool = True) -> int:
        """End the episode and append it to the dataset; returns its episode index.

        ``wait=True`` returns once it is committed on disk. ``wait=False`` hands it to the background
        writer and returns at once (the index it should get: ``committed`` lists the indices written, as
        they are written; ``failed`` the errors of those that were not); a write error is raised by the next
        ``start()``, ``stop_and_keep()``, ``flush()`` or ``close()``. ValueError for an empty episode
        (which is discarded); RuntimeError when not recording.
        """
        self._raise_writer_errors()
        if self._steps is None:
            raise RuntimeError("recorder: stop_and_keep() while not recording")
        steps, self._steps = self._steps, None
        if not steps[keys.ACTION]:
            raise ValueError("recorder: the episode has no steps; nothing was kept")
        episode = {k: np.stack(v) for k, v in steps.items()}  # (T, ...) per key
        del steps
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder-writer")
        n_steps = len(episode[keys.ACTION])
        self._pending.append((self._writer.submit(self._write, episode), n_steps))
        index = self._n_kept
        self._n_kept += 1
        if wait:
            self.flush()  # re-raises a write error (this one's or an earlier queued one's)
            index = self.committed[-1]
        log.info("kept episode %d (%d steps)%s", index, n_steps, "" if wait else ", writing")
        return index

    def _write(self, episode: dict[str, np.ndarray]) -> int:
        """Writer thread: commit one episode; its index in the dataset."""
        return self._buffer.add_episode(episode)

    def discard(self) -> int:
        """Drop the episode being recorded (if any); returns how many steps were dropped."""
        n = self.n_steps
        if self._steps is not None:
            log.info("discarded an episode of %d steps", n)
        self._steps = None
        return n

    # ---------------------------------------------------------------- writer

    def _collect(self) -> None:
        """Account for finished writes (committed or failed); keep the first error to raise."""
        done, pending = [], []
        for item in self._pending:  # one done() per future: a write finishing meanwhile is not lost
            (done if item[0].done() else pending).append(item)
        self._pending = pending
        for f, n_steps in done:
            err = f.exception()
            if err is None:
                self.committed.append(f.result())
                self.committed_steps += n_steps
                continue
            self._n_kept -= 1  # it never made it into the dataset
            self.failed.append(repr(err))
            log.error("recorder: writing a kept episode (%d steps) to %s failed: %r", n_steps, self.path, err)
            if self._error is None:
                self._error = err

    def _raise_writer_errors(self) -> None:
        """Re-raise the first failed background write (once); account for finished ones."""
        self._collect()
        err, self._error = self._error, None
        if err is not None:
            raise err

    def flush(self) -> None:
        """Wait until every kept episode is written; re-raises the first failed write."""
        wait_futures([f for f, _ in self._pending])
        self._raise_writer_errors()

    def close(self) -> None:
        """Discard an unfinished episode, wait for queued writes and stop the writer thread."""
        self.discard()
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EpisodeRecorder({str(self.path)!r}, n_episodes={self.n_episodes}, recording={self.recording}, "
                f"n_steps={self.n_steps})")
