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
import multiprocessing as mp
import os
import queue
import resource
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from policy.config import DATA_MODES, STREAM_LOADERS
from policy.data.replay_buffer import DatasetError, ReplayBuffer
from policy.data.sampler import WindowSampler

log = logging.getLogger("policy.data.stream")

STREAM_ORDER_STREAM = 11  # np.random.default_rng([seed, 11, epoch]): the block order of a streamed epoch
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


# ------------------------------------------------------------------ the order of a streamed run


class BlockOrder:
    """Sample ids of each step of a streamed run: block-shuffled epochs (see the module docstring)."""

    def __init__(self, sampler: WindowSampler, block: int, pool: int, batch_size: int, seed: int) -> None:
        """``block``: frames per block (the read unit); ``pool``: blocks whose windows are shuffled together."""
        if block < 1 or pool < 1:
            raise ValueError(f"block ({block}) and pool ({pool}) must be >= 1")
        self.n = len(sampler)
        self.block, self.pool, self.batch_size, self.seed = block, pool, batch_size, seed
        # a window belongs to the block of its newest observation frame t
        block_of = sampler.step_indices() // block  # (N,)
        _, self.block_index = np.unique(block_of, return_inverse=True)  # (N,) dense block number of each window
        self.n_blocks = int(self.block_index.max()) + 1
        self._epoch: int | None = None
        self._order = np.zeros(0, np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(N,) a permutation of the window ids: blocks shuffled, pools of blocks shuffled within."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, STREAM_ORDER_STREAM, epoch])
            rank = rng.permutation(self.n_blocks)  # (n_blocks,) the place of each block in this epoch
            pool_of = rank[self.block_index] // self.pool  # (N,) pool of each window
            self._order = np.lexsort((rng.random(self.n), pool_of))  # by pool, shuffled within
            self._epoch = epoch
        return self._order

    def batch_ids(self, step: int) -> np.ndarray:
        """(batch_size,) sample ids of a step: consecutive slices of the epoch order (incomplete last dropped)."""
        per_epoch = max(1, self.n // self.batch_size)
        epoch, pos = divmod(step, per_epoch)
        order = self.epoch_order(epoch)
        if self.n < self.batch_size:  # tiny datasets: repeat the order to fill a batch
            order = np.resize(order, self.batch_size)
        return order[pos * self.batch_size:(pos + 1) * self.batch_size]


# ------------------------------------------------------------------ reading the images


class BlockCache:
    """Image frames read from zarr a block at a time (whole chunks, each decoded once per read), LRU-cached."""

    def __init__(self, rb: ReplayBuffer, keys: Sequence[str], block: int, capacity: int) -> None:
        """``capacity``: blocks kept (per key); the oldest used is dropped past it."""
        self.rb, self.keys, self.block, self.capacity = rb, list(keys), block, capacity
        self.arrays = {k: rb.array(k) for k in self.keys}
        self.n_steps = rb.n_steps
        self._blocks: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.blocks_read = 0  # counters for the benchmark: blocks read and frames decoded
        self.frames_read = 0

    def _get(self, b: int) -> dict[str, np.ndarray]:
        hit = self._blocks.get(b)
        if hit is not None:
            self._blocks.move_to_end(b)
            return hit
        lo, hi = b * self.block, min((b + 1) * self.block, self.n_steps)
        got = {}
        for k, arr in self.arrays.items():
            try:
                got[k] = np.asarray(arr[lo:hi])  # (hi - lo, H, W, 3)
            except Exception as e:  # noqa: BLE001 - any codec or store error: name what could not be read
                raise DatasetError(f"dataset {self.rb.path}: cannot read frames {lo}..{hi - 1} of data/{k} "
                                   f"({type(e).__name__}: {e}); the store is damaged or incomplete") from e
        self.blocks_read += 1
        self.frames_read += hi - lo
        self._blocks[b] = got
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return got

    def frames(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Frames at global times ``idx`` (any shape) -> {key: (*idx.shape, H, W, 3)}; each block fetched once."""
        flat = idx.reshape(-1)
        out = {k: np.empty((len(flat), *a.shape[1:]), a.dtype) for k, a in self.arrays.items()}
        blocks = flat // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            got = self._get(int(b))
            for k in self.keys:
                out[k][sel] = got[k][flat[sel] - b * self.block]
        return {k: v.reshape(*idx.shape, *v.shape[1:]) for k, v in out.items()}


def read_block_frames(rb: ReplayBuffer, keys: Sequence[str], requested: int) -> int:
    """Frames per block: ``requested`` rounded up to a whole number of every image array's time chunks."""
    unit = 1
    for k in keys:
        unit = math.lcm(unit, int(rb.array(k).chunks[0]))
    return max(1, math.ceil(requested / unit)) * unit


def stream_check(rb: Any) -> tuple[bool, str]:
    """(can the dataset be streamed, why not): a ``ReplayBuffer`` read as it is stored (no key map)."""
    if not isinstance(rb, ReplayBuffer):
        return False, ("the dataset is read through train.dataset_map (a key map), which maps whole episodes; "
                       "copy it into our format with `python -m policy.data.convert src=... out=...` to stream it")
    return True, ""


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


class StreamedData:
    """Batches of a streamed run: low-dim arrays and actions from memory, images from the store."""

    def __init__(self, rb: ReplayBuffer, lowdim: Mapping[str, np.ndarray], image_keys: Sequence[str],
                 lowdim_keys: Sequence[str], train_sampler: WindowSampler, order: BlockOrder,
                 shards: Sequence[int], n_shards: int, prefetch: int, pool: int, pin: bool,
                 loader: str = "process") -> None:
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
        self._queue: Any = None
        self._thread: threading.Thread | None = None
        self._stop: Any = threading.Event()
        self._proc: Any = None  # the loader process
        self._free: Any = None  # its queue of free slots
        self._slots: _Slots | None = None
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
            self._start_process(step)
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

    def _start_process(self, step: int) -> None:
        arrays = self.cache.arrays
        b = -(-self.order.batch_size // self.n_shards)  # the largest micro-batch
        To = self.sampler.n_obs_steps
        shapes = {k: (b, To, *a.shape[1:]) for k, a in arrays.items()}
        dtypes = {k: a.dtype for k, a in arrays.items()}
        n = self.prefetch + 1  # the batches read ahead, and the one being copied out
        self._slots = _Slots(shapes, dtypes, n)
        # fork on Linux: the child starts at once and shares the sampler's arrays (zarr resets its IO loop in a
        # forked child); spawn elsewhere (fork is unsafe on macOS)
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        self._free, self._queue, self._stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        for i in range(n):
            self._free.put(i)
        spec = (shapes, dtypes, n, self._slots.names)
        self._proc = ctx.Process(target=_loader_main, name="stream-loader", daemon=True, args=(
            str(self.rb.path), self.image_keys, self.sampler, self.order, self.shards, self.n_shards,
            self.cache.capacity, step, spec, self._free, self._queue, self._stop, os.getpid()))
        self._proc.start()

    def _from_process(self) -> tuple[int, int, dict[str, Any]]:
        """The next (step, micro-batch, batch) from the loader process: its images, low-dim arrays gathered here."""
        while True:
            try:
                got_step, got_m, slot, b = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    code = self._proc.exitcode
                    why = " (killed by a signal: out of memory?)" if code is not None and code < 0 else ""
                    self.close()
                    raise RuntimeError(f"the stream loader process (train.stream_loader=process) exited with code "
                                       f"{code}{why} without handing over a batch; train.stream_loader=thread "
                                       f"reads in this process instead") from None
        if got_step is None:  # an error in the loader: raise it here, with its traceback
            name, message, tb = b
            self.close()
            err = DatasetError if name == "DatasetError" else RuntimeError
            raise err(f"{message}" if err is DatasetError else f"stream loader process: {name}: {message}") \
                from RuntimeError(f"in the loader process:\n{tb}")
        ids = self.order.batch_ids(got_step)[self.shards[got_m]::self.n_shards]
        raw = self.sampler.gather(self.lowdim, ids, self.lowdim_keys)
        assert self._slots is not None
        raw.update((k, self._slots.view(slot, k, b).copy()) for k in self.image_keys)
        self._free.put(slot)
        return got_step, got_m, self._pinned(raw)

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
            got_step, got_m, item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if got_step is None:
            raise item
        self._next = (step, m + 1) if m + 1 < len(self.shards) else (step + 1, 0)
        return item

    def loader_cpu_seconds(self) -> float:
        """CPU seconds the loader processes of this run have used (0.0 for the thread loader, whose CPU time is
        this process's)."""
        live = _proc_cpu_seconds(self._proc.pid) if self._proc is not None and self._proc.is_alive() else 0.0
        return self._loader_cpu + live

    def close(self) -> None:
        """Stop the loader (a thread finishes the batch it is building; a process is stopped, or killed after 5 s)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            sys.setswitchinterval(self._switch_interval)
        if self._proc is not None:
            pid = self._proc.pid
            self._loader_cpu += _proc_cpu_seconds(pid)
            self.loader_private_mb = max(self.loader_private_mb, _proc_private_mb(pid))
            self._stop.set()
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            for q in (self._queue, self._free):
                q.cancel_join_thread()
                q.close()
            self._proc = self._queue = self._free = None
        if self._slots is not None:
            self._slots.close()
            self._slots = None
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
