"""Training from a dataset bigger than memory: images read from the zarr store while the model trains.

``train.data`` picks how a run holds its data: ``memory`` loads every array (``ReplayBuffer.load``),
``stream`` keeps only the low-dim arrays and actions in memory (the normalizer is fitted on them as before)
and reads the images from disk, ``auto`` loads when the arrays fit in ``train.data_memory_share`` of the
memory this process may still use (``available_memory``), and streams otherwise.

Sampling. In memory, every epoch is a seeded permutation of all training windows (``schedule.batch_ids``),
so each batch draws from the whole dataset. Reading random frames from zarr costs ~1-3 ms a frame (per-chunk
overhead), so a streamed run orders its windows by blocks instead (``BlockOrder``): the image time axis is cut
into blocks of ``train.stream_block`` frames (whole storage chunks, each decoded once per read); every epoch
shuffles the blocks, takes them ``train.stream_pool`` at a time, shuffles the windows of each pool together
and cuts the epoch into batches of consecutive windows with the same drop-last rule as in memory. So, as in
memory: every window is used exactly once per epoch, an epoch has as many steps, and a window's place in an
epoch is uniform; what differs is that one batch draws from the ``stream_pool`` blocks of its pool (e.g.
32 blocks of 64 frames: ~2000 windows out of many episodes) rather than from the whole dataset. The order is
a pure function of (seed, epoch), so a resumed run continues the same sequence, and ``StreamedData`` builds
exactly the batch that ``WindowSampler.gather`` builds from loaded arrays for the same sample ids.

Loading. A loader builds the images of the coming steps ahead (``train.stream_prefetch`` batches), reading whole
blocks into an LRU cache that holds a pool (plus a few blocks for the frames of multi-frame windows that lie in
the block before). ``train.stream_loader=thread`` (the default) runs it in a thread of the training process; while
it runs, Python's GIL switch interval is 0.5 ms instead of 5 ms, so that the training thread, back from a torch
op, does not wait long for the loader to hand the GIL back. ``train.stream_loader=process`` runs it in a child
process instead (forked on Linux, spawned elsewhere; it imports numpy and zarr, not torch) that writes each
batch's images into one of ``stream_prefetch + 1`` shared-memory slots and passes the slot's number through a
queue; the training process copies them out, hands the slot back and gathers the low-dim arrays and actions
itself (from memory, ~0.1 ms). Reading and decoding then take no GIL from the training thread, at ~190 MB of
memory for the child; on the default CPU config both run at 95-100 % of in-memory samples/s
(``tests/benchmarks/bench_data.py``). The process stops with the run, when the training process dies (it watches
its parent) and on an error, which the training process raises with the loader's traceback; a loader that dies
(killed for memory, say) is named, never waited for. ``train.budget_clock=cpu`` counts its CPU time too.
Batches are pinned when training on CUDA.
Under torchrun, every rank computes the same order and builds only its own shards ``ids[k::n_shards]`` of
each global batch, so it reads only the blocks that hold its shards' frames.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from policy.config import DATA_MODES, STREAM_LOADERS
from policy.data.blocks import BlockCache, BlockOrder, read_block_frames
from policy.data.loader_process import LoaderProcess
from policy.data.replay_buffer import ReplayBuffer
from policy.data.sampler import WindowSampler

__all__ = ["BlockCache", "BlockOrder", "StreamedData", "available_memory", "choose_data_mode", "dataset_bytes",
           "open_training_data", "read_block_frames", "stream_check"]

log = logging.getLogger("policy.data.stream")

# Python's GIL switch interval while the loader thread runs: after a torch op (which releases the GIL) the training
# thread waits up to this long for the loader to hand the GIL back; the default 5 ms cost ~5-10 ms a step here
LOADER_SWITCH_INTERVAL_S = 0.0005


# ------------------------------------------------------------------ memory or stream


def _proc_status_kb(field: str) -> int | None:
    """A ``kB`` figure of /proc/self/status (VmData, VmSize, VmRSS), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def available_memory() -> tuple[int | None, str]:
    """(bytes this process may still allocate, where the figure comes from); None when nothing says.

    The least of: the system's MemAvailable, the cgroup's memory.max less its current use, and the soft
    RLIMIT_DATA / RLIMIT_AS less this process's current data / address-space size.
    """
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read())
            found.append((int(limit) - used, "cgroup memory.max"))
    except (OSError, ValueError):
        pass
    for rlim, field, name in ((resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA"), (resource.RLIMIT_AS, "VmSize",
                                                                                  "RLIMIT_AS")):
        soft = resource.getrlimit(rlim)[0]
        used = _proc_status_kb(field)
        if soft != resource.RLIM_INFINITY and used is not None:
            found.append((soft - used * 1024, name))
    if not found:
        return None, "no memory figure found"
    return min(found)


def choose_data_mode(mode: str, need_bytes: int, share: float, can_stream: bool = True,
                     why_not: str = "") -> tuple[str, str]:
    """``train.data`` -> ("memory" | "stream", the reason, for the log).

    ``need_bytes``: what ``memory`` would load; ``can_stream`` False (with ``why_not``) when the dataset
    cannot be streamed (then ``auto`` loads it, and ``stream`` is refused).
    """
    if mode not in DATA_MODES:
        raise ValueError(f"train.data must be one of {DATA_MODES}, got {mode!r}")
    gb = need_bytes / 2**30
    if mode == "stream" and not can_stream:
        raise ValueError(f"train.data=stream: {why_not}")
    if mode != "auto":
        return mode, f"train.data={mode} ({gb:.2f} GB of arrays)"
    if not can_stream:
        return "memory", f"train.data=auto: {why_not}, so its {gb:.2f} GB are loaded"
    avail, source = available_memory()
    if avail is None:
        return "memory", f"train.data=auto: {source}, loading the {gb:.2f} GB of arrays"
    fits = need_bytes <= share * avail
    rel = "<=" if fits else ">"
    return ("memory" if fits else "stream"), (
        f"train.data=auto: the arrays ({gb:.2f} GB) {rel} train.data_memory_share={share:g} x "
        f"{avail / 2**30:.2f} GB available ({source})")


def dataset_bytes(rb: Any, keys: Sequence[str]) -> int:
    """Bytes that ``rb.load(keys)`` would take (from the frame shapes, nothing is read)."""
    specs = rb.frame_specs
    return sum(rb.n_steps * math.prod(specs[k][0]) * np.dtype(specs[k][1]).itemsize for k in keys)


def stream_check(rb: Any) -> tuple[bool, str]:
    """(can the dataset be streamed, why not): a ``ReplayBuffer`` read as it is stored (no key map)."""
    if not isinstance(rb, ReplayBuffer):
        return False, ("the dataset is read through train.dataset_map (a key map), which maps whole episodes; "
                       "copy it into our format with `python -m policy.data.convert src=... out=...` to stream it")
    return True, ""


class StreamedData:
    """Batches of a streamed run: low-dim arrays and actions from memory, images from the store."""

    def __init__(self, rb: ReplayBuffer, lowdim: Mapping[str, np.ndarray], image_keys: Sequence[str],
                 lowdim_keys: Sequence[str], train_sampler: WindowSampler, order: BlockOrder,
                 shards: Sequence[int], n_shards: int, prefetch: int, pool: int, pin: bool,
                 loader: str = "thread") -> None:
        """``lowdim``: loaded arrays (low-dim obs keys and ``action``); ``shards``: this process's shard
        indices k of a global batch (it builds ``ids[k::n_shards]`` of each), in micro-batch order;
        ``loader``: "process" or "thread" (``train.stream_loader``)."""
        if loader not in STREAM_LOADERS:
            raise ValueError(f"loader must be one of {STREAM_LOADERS}, got {loader!r}")
        self.rb, self.lowdim, self.image_keys, self.lowdim_keys = rb, lowdim, list(image_keys), list(lowdim_keys)
        self.sampler, self.order, self.shards, self.n_shards = train_sampler, order, list(shards), n_shards
        self.prefetch, self.pin, self.loader = prefetch, pin, loader
        # a pool, and a few blocks before it (frames of multi-frame windows that start in the previous block)
        self.cache = BlockCache(rb, self.image_keys, order.block, capacity=pool + 4)
        self._val_cache = BlockCache(rb, self.image_keys, order.block, capacity=8)
        self._queue: queue.Queue | None = None  # the thread loader's batches
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._proc: LoaderProcess | None = None
        self._next: tuple[int, int] | None = None  # (step, micro-batch) the queue holds next
        self._switch_interval = sys.getswitchinterval()
        self.wait_seconds = 0.0  # time the training thread waited for a batch (the loader fell behind)
        self._loader_cpu = 0.0  # CPU seconds of loader processes that have stopped
        self.loader_private_mb = 0.0  # the most memory a loader process held for itself (seen at its stop)

    def block_bytes(self) -> int:
        """Bytes of one cached block (all image keys)."""
        return sum(self.order.block * math.prod(a.shape[1:]) for a in self.cache.arrays.values())

    def gather(self, sampler: WindowSampler, ids: np.ndarray, cache: BlockCache | None = None) -> dict[str, Any]:
        """What ``sampler.gather(loaded arrays, ids, obs keys)`` gives: {k: (B, To, ...), action: (B, Tp, A)}."""
        raw = sampler.gather(self.lowdim, ids, self.lowdim_keys)
        obs_idx = sampler.indices(ids)["obs"]  # (B, To) global times of the observation frames
        raw.update((cache or self._val_cache).frames(obs_idx))  # each (B, To, H, W, 3)
        return raw

    def _pinned(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        if not self.pin:
            return raw
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)).pin_memory() for k, v in raw.items()}

    def _produce(self, step: int, q: queue.Queue, stop: threading.Event) -> None:
        """Worker thread: the batches of steps ``step, step + 1, ...`` (this process's shards) into ``q``."""
        try:
            while not stop.is_set():
                ids = self.order.batch_ids(step)  # (batch_size,) the global batch
                for m, k in enumerate(self.shards):
                    item = (step, m, self._pinned(self.gather(self.sampler, ids[k::self.n_shards], self.cache)))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                step += 1
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            q.put((None, None, e))

    def start(self, step: int) -> None:
        """(Re)start the loader at ``step``, micro-batch 0."""
        self.close()
        if self.loader == "process":
            self._proc = LoaderProcess(str(self.rb.path), self.cache.arrays, self.sampler, self.order, self.shards,
                                       self.n_shards, self.cache.capacity, self.prefetch, step)
        else:
            # while the loader runs, the training thread gets the GIL back within 0.5 ms of asking instead of 5 ms
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, LOADER_SWITCH_INTERVAL_S))
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=max(1, self.prefetch))
            self._thread = threading.Thread(target=self._produce, args=(step, self._queue, self._stop),
                                            name="stream-loader", daemon=True)
            self._thread.start()
        self._next = (step, 0)

    def _from_process(self) -> tuple[int, int, dict[str, Any]]:
        """The next (step, micro-batch, batch) from the loader process: its images, low-dim arrays gathered here."""
        assert self._proc is not None
        try:
            step, m, images = self._proc.get()
        except BaseException:
            self.close()
            raise
        raw = self.sampler.gather(self.lowdim, self.order.batch_ids(step)[self.shards[m]::self.n_shards],
                                  self.lowdim_keys)
        raw.update(images)
        return step, m, self._pinned(raw)

    def train_batch(self, step: int, m: int) -> dict[str, Any]:
        """Micro-batch ``m`` of step ``step`` for this process: {k: (B / n_shards, To, ...), ...}."""
        if self._next != (step, m):  # first call, or out of sequence (e.g. a test calling steps by hand)
            self.start(step)
            if m:
                for skip in range(m):
                    self.train_batch(step, skip)
        t0 = time.perf_counter()
        if self.loader == "process":
            got_step, got_m, item = self._from_process()
        else:
            got_step, got_m, item = self._queue.get()  # type: ignore[union-attr]
        self.wait_seconds += time.perf_counter() - t0
        if got_step is None:
            raise item
        self._next = (step, m + 1) if m + 1 < len(self.shards) else (step + 1, 0)
        return item

    def loader_cpu_seconds(self) -> float:
        """CPU seconds the loader processes of this run have used (0.0 for the thread loader, whose CPU time is
        this process's)."""
        return self._loader_cpu + (self._proc.cpu_seconds() if self._proc is not None else 0.0)

    def close(self) -> None:
        """Stop the loader (a thread finishes the batch it is building; a process is stopped, or killed after 5 s)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            sys.setswitchinterval(self._switch_interval)
        if self._proc is not None:
            self._loader_cpu += self._proc.cpu_seconds()
            self.loader_private_mb = max(self.loader_private_mb, self._proc.private_mb())
            self._proc.close()
            self._proc = None
        self._next = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def open_training_data(rb: Any, cfg: Any, obs_keys: Sequence[str], train_sampler: WindowSampler, dist: Any,
                       device: Any) -> tuple[StreamedData | None, dict[str, np.ndarray], dict[str, Any]]:
    """``train.data`` for a run: -> (the streamed data or None, the arrays held in memory, every key's array
    for the dataset fingerprint: {key: an array with .shape}).

    ``cfg``: the run's ``Config``; ``obs_keys``: observation keys without the action history; ``dist``: the
    process's ``DistInfo`` (its shards of each global batch); ``device``: pinned batches on CUDA.
    """
    t, p = cfg.train, cfg.policy
    image_keys = [k for k in obs_keys if k in p.image_keys]
    lowdim_keys = [k for k in obs_keys if k not in p.image_keys]
    all_keys = [*obs_keys, "action"]
    can, why_not = stream_check(rb)
    if can and not image_keys:
        can, why_not = False, "the policy sees no images, so there is nothing to stream"
    # processes on one node each load their own copy: auto weighs what they load together
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.enabled else 1
    mode, reason = choose_data_mode(t.data, local * dataset_bytes(rb, all_keys), t.data_memory_share, can, why_not)
    if local > 1:
        reason += f", for {local} processes on this node"
    if dist.enabled and t.data == "auto":  # every rank must sample alike: stream when any rank would
        import torch
        import torch.distributed

        flag = torch.tensor([int(mode == "stream")], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and mode == "memory":
            mode, reason = "stream", reason + "; another rank streams, so this one does too"
    if dist.is_main:
        log.info("data: %s (%s)", mode, reason)
    if mode == "memory":
        arrays = rb.load(all_keys)
        return None, arrays, arrays
    lowdim = rb.load([*lowdim_keys, "action"])  # small: the images stay on disk
    block = read_block_frames(rb, image_keys, t.stream_block)
    if block > 4 * t.stream_block and dist.is_main:
        log.warning("data: the store's image chunks make blocks of %d frames (train.stream_block=%d); rewrite it "
                    "with `python -m policy.data.convert src=%s out=<new> image_chunk=64 image_shard=1024`",
                    block, t.stream_block, rb.path)
    order = BlockOrder(train_sampler, block, t.stream_pool, t.batch_size, t.seed)
    n_shards = dist.world_size * t.grad_accum
    shards = [dist.rank * t.grad_accum + m for m in range(t.grad_accum)]
    data = StreamedData(rb, lowdim, image_keys, lowdim_keys, train_sampler, order, shards, n_shards,
                        t.stream_prefetch, t.stream_pool, pin=getattr(device, "type", "cpu") == "cuda",
                        loader=t.stream_loader)
    if dist.is_main:
        log.info("data: streaming %s from %s in blocks of %d frames, %d blocks per pool (%d windows), read by a "
                 "loader %s; the block cache holds up to %.0f MB", ", ".join(image_keys), rb.path, block,
                 t.stream_pool, min(len(train_sampler), block * t.stream_pool), t.stream_loader,
                 data.cache.capacity * data.block_bytes() / 2**20)
    return data, lowdim, {**lowdim, **{k: rb.array(k) for k in image_keys}}
