"""The units of a streamed run (``policy.data.stream``): its order of windows by blocks of frames, and the blocks
read from the zarr store.

``BlockOrder``: every epoch shuffles the blocks of ``block`` frames, takes them ``pool`` at a time, shuffles the
windows of each pool together and cuts the epoch into batches of consecutive windows (the in-memory drop-last
rule); a pure function of (seed, epoch). ``BlockCache``: frames read a block at a time (whole storage chunks,
each decoded once per read) into an LRU cache.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from policy.data.replay_buffer import DatasetError, ReplayBuffer
from policy.data.sampler import WindowSampler

STREAM_ORDER_STREAM = 11  # np.random.default_rng([seed, 11, epoch]): the block order of a streamed epoch


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
