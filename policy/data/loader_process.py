"""The stream loader in a child process (``train.stream_loader=process``; ``policy.data.stream``).

The child (forked on Linux, spawned elsewhere; it imports numpy and zarr, not torch) opens the store itself,
reads blocks into its own ``BlockCache`` and writes the images of each micro-batch of this training process's
shards, in the run's order, into one of ``prefetch + 1`` shared-memory slots; it passes ``(step, micro-batch,
slot, batch size)`` through a queue and takes the next free slot from another. The training process copies the
images out and hands the slot back. An error in the child comes back with its traceback and is raised in
training (a ``DatasetError`` stays one); a child that dies is named, never waited for; the child stops when
told, or when its parent is gone.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from policy.data.blocks import BlockCache, BlockOrder
from policy.data.replay_buffer import DatasetError, ReplayBuffer
from policy.data.sampler import WindowSampler


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc), 0.0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _proc_private_mb(pid: int) -> float:
    """Memory a live process holds for itself (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup: a forked
    child's RSS also counts the pages it still shares with its parent) in MiB, 0.0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(x.split()[1]) for x in f if x.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024
    except (OSError, ValueError):
        return 0.0


class _Slots:
    """``n`` shared-memory buffers, each holding the images of one micro-batch: {key: (b, To, H, W, C) uint8}."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, Any], n: int,
                 names: Sequence[str] | None = None) -> None:
        """``shapes``: the largest micro-batch's shape per key; ``names``: attach to existing buffers (the loader)."""
        from multiprocessing import shared_memory

        self.shapes, self.dtypes = dict(shapes), {k: np.dtype(v) for k, v in dtypes.items()}
        self.offsets, size = {}, 0
        for k, shape in self.shapes.items():
            self.offsets[k] = size
            size += math.prod(shape) * self.dtypes[k].itemsize
        self.owner = names is None
        if names is None:
            self.shm = [shared_memory.SharedMemory(create=True, size=max(1, size)) for _ in range(n)]
        else:  # the loader attaches; the training process owns (and unlinks) the buffers. Both share one resource
            # tracker (forked or spawned), which unlinks whatever is left if the training process dies
            self.shm = [shared_memory.SharedMemory(name=x) for x in names]
        self.names = [m.name for m in self.shm]

    def view(self, slot: int, key: str, b: int) -> np.ndarray:
        """(b, ...) the first ``b`` samples of ``key`` in buffer ``slot`` (no copy)."""
        shape = self.shapes[key]
        full = np.ndarray(shape, self.dtypes[key], buffer=self.shm[slot].buf, offset=self.offsets[key])
        return full[:b]

    def close(self) -> None:
        for m in self.shm:
            try:
                m.close()
                if self.owner:
                    m.unlink()
            except (OSError, BufferError):
                pass
        self.shm = []


def _loader_main(path: str, image_keys: list[str], sampler: WindowSampler, order: BlockOrder, shards: list[int],
                 n_shards: int, capacity: int, step: int, slot_spec: tuple, free_q: Any, ready_q: Any, stop: Any,
                 parent: int) -> None:
    """The loader process: the images of this process's shards of steps ``step, step + 1, ...`` into free slots;
    ``(step, m, slot, b)`` on ``ready_q`` for each, ``(None, None, None, (name, message, traceback))`` on an
    error. Returns when ``stop`` is set or the training process ``parent`` is gone."""
    slots = None
    try:
        slots = _Slots(*slot_spec)
        cache = BlockCache(ReplayBuffer.open(path), image_keys, order.block, capacity)
        while not stop.is_set():
            ids = order.batch_ids(step)  # (batch_size,) the global batch
            for m, k in enumerate(shards):
                frames = cache.frames(sampler.indices(ids[k::n_shards])["obs"])  # {key: (b, To, H, W, C)}
                while True:  # a free slot, or stop
                    if stop.is_set() or os.getppid() != parent:
                        return
                    try:
                        slot = free_q.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                b = 0
                for key, v in frames.items():
                    b = len(v)
                    slots.view(slot, key, b)[...] = v
                ready_q.put((step, m, slot, b))
            step += 1
    except BaseException as e:  # noqa: BLE001 - handed to the training process, which raises it
        ready_q.put((None, None, None, (type(e).__name__, str(e), traceback.format_exc())))
    finally:
        if slots is not None:
            slots.close()


class LoaderProcess:
    """A running loader process: ``get()`` the images of the next micro-batch, ``close()`` it."""

    def __init__(self, path: str, arrays: Mapping[str, Any], sampler: WindowSampler, order: BlockOrder,
                 shards: Sequence[int], n_shards: int, capacity: int, prefetch: int, step: int) -> None:
        """Start at ``step``, micro-batch 0. ``arrays``: {image key: its zarr array (shape, dtype)};
        ``capacity``: blocks the child's cache holds; ``prefetch``: micro-batches it builds ahead."""
        b = -(-order.batch_size // n_shards)  # the largest micro-batch
        shapes = {k: (b, sampler.n_obs_steps, *a.shape[1:]) for k, a in arrays.items()}
        dtypes = {k: a.dtype for k, a in arrays.items()}
        n = prefetch + 1  # the micro-batches read ahead, and the one being copied out
        self.slots = _Slots(shapes, dtypes, n)
        # fork on Linux: the child starts at once and shares the sampler's arrays (zarr resets its IO loop in a
        # forked child); spawn elsewhere (fork is unsafe on macOS)
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        self._free, self._ready, self._stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        for i in range(n):
            self._free.put(i)
        self.proc = ctx.Process(target=_loader_main, name="stream-loader", daemon=True, args=(
            path, list(arrays), sampler, order, list(shards), n_shards, capacity, step,
            (shapes, dtypes, n, self.slots.names), self._free, self._ready, self._stop, os.getpid()))
        self.proc.start()

    def get(self) -> tuple[int, int, dict[str, np.ndarray]]:
        """(step, micro-batch, {image key: (b, To, H, W, C)}) next in line; raises the child's error, or a
        RuntimeError when it died without handing one over."""
        while True:
            try:
                step, m, slot, b = self._ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.proc.is_alive():
                    code = self.proc.exitcode
                    why = " (killed by a signal: out of memory?)" if code is not None and code < 0 else ""
                    raise RuntimeError(f"the stream loader process (train.stream_loader=process) exited with code "
                                       f"{code}{why} without handing over a batch; train.stream_loader=thread "
                                       f"reads in this process instead") from None
        if step is None:  # an error in the loader: raise it here, with its traceback
            name, message, tb = b
            cause = RuntimeError(f"in the loader process:\n{tb}")
            if name == "DatasetError":
                raise DatasetError(message) from cause
            raise RuntimeError(f"stream loader process: {name}: {message}") from cause
        images = {k: self.slots.view(slot, k, b).copy() for k in self.slots.shapes}
        self._free.put(slot)
        return step, m, images

    def cpu_seconds(self) -> float:
        """CPU seconds the child has used so far (0.0 once it has exited)."""
        return _proc_cpu_seconds(self.proc.pid) if self.proc.is_alive() else 0.0

    def private_mb(self) -> float:
        """Memory the child holds for itself now (MiB)."""
        return _proc_private_mb(self.proc.pid) if self.proc.is_alive() else 0.0

    def close(self) -> None:
        """Stop the child (killed after 5 s) and free the shared memory."""
        self._stop.set()
        self.proc.join(timeout=5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        for q in (self._ready, self._free):
            q.cancel_join_thread()
            q.close()
        self.slots.close()
