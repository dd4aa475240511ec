"""Training by streaming images from the zarr store (``train.data=stream``, ``policy.data.stream``)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from policy import distributed, keys
from policy.config import Config, TrainConfig
from policy.config_utils import ConfigError, from_dict
from policy.data import DatasetError, ReplayBuffer, WindowSampler
from policy.data.replay_buffer import ImageLayout
from policy.data.stream import BlockOrder, StreamedData, choose_data_mode, read_block_frames
from policy.data.synthetic import make_synthetic_dataset
from policy.schedule import batch_ids
from policy.train import Trainer, train

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
SMALL_LAYOUT = ImageLayout(chunk=4, shard=16)  # the stream layout's shape, scaled to a tiny dataset
STREAM = dict(data="stream", stream_block=8, stream_pool=2)


def _dataset(path: Path, layout: ImageLayout | None = SMALL_LAYOUT, n_episodes: int = 4, length: int = 12) -> Path:
    rb = make_synthetic_dataset(path / "src.zarr", n_episodes=n_episodes, episode_len=length, image_shape=(32, 32))
    if layout is None:
        return rb.path
    out = ReplayBuffer.create(path / "demos.zarr", layout)
    out.copy_from(rb)
    return out.path


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    out = {k: v.numpy() for k, v in load_file(str(ckpt / "train_state.safetensors")).items()}
    out.update({f"ema.{k}": v.numpy() for k, v in load_file(str(ckpt / "model.safetensors")).items()})
    return out


def _streamed(rb: ReplayBuffer, sampler: WindowSampler, order: BlockOrder, shards=(0,), n_shards=1,
              image_keys=(keys.SCENE_RGB, keys.WRIST_RGB), lowdim_keys=(keys.EE_POSE, keys.GRIPPER),
              loader: str = "thread") -> StreamedData:
    lowdim = rb.load([*lowdim_keys, keys.ACTION])
    return StreamedData(rb, lowdim, image_keys, lowdim_keys, sampler, order, shards, n_shards, prefetch=2,
                        pool=order.pool, pin=False, loader=loader)


def _shm_names() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


@pytest.mark.parametrize("loader", ["process", "thread"])
@pytest.mark.parametrize("layout", [SMALL_LAYOUT, None], ids=["sharded", "one-frame-chunks"])
def test_streamed_batches_equal_the_batches_of_loaded_arrays_for_the_same_ids(tmp_path, layout, loader):
    rb = ReplayBuffer.open(_dataset(tmp_path, layout, n_episodes=5, length=11))
    obs = [keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER]
    sampler = WindowSampler(rb.episode_ends, [0, 2, 3, 4], n_obs_steps=3, chunk_len=4, history_len=2)
    block = read_block_frames(rb, obs[:2], 6)
    assert block == (8 if layout else 6)  # whole chunks of 4 frames; one-frame chunks: as asked
    order = BlockOrder(sampler, block, pool=2, batch_size=8, seed=3)
    shm_before = _shm_names()
    data = _streamed(rb, sampler, order, shards=(1, 3), n_shards=4, loader=loader)  # this "process": shards 1, 3
    loaded = rb.load([*obs, keys.ACTION])
    before = sys.getswitchinterval()
    for step in range(12):  # several epochs (38 windows, 4 steps an epoch)
        ids = order.batch_ids(step)
        for m, k in enumerate((1, 3)):
            got = data.train_batch(step, m)  # from the loader thread or process
            want = sampler.gather(loaded, ids[k::4], obs)
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {step} shard {k} {key}")
    if loader == "thread":  # the training thread gets the GIL back soon while the loader thread runs
        assert sys.getswitchinterval() <= 0.0005
    else:  # the batches came from a child process, which counts its CPU time
        assert len(mp.active_children()) == 1 and sys.getswitchinterval() == before
    data.close()
    assert sys.getswitchinterval() == before
    if loader == "process":
        assert not mp.active_children() and _shm_names() == shm_before  # stopped, its buffers unlinked
        assert data.loader_cpu_seconds() > 0
    # out of sequence (a resumed run, a test stepping by hand): the loader restarts at the step asked for
    for step, m in ((7, 1), (3, 0), (3, 1)):
        got = data.train_batch(step, m)
        want = sampler.gather(loaded, order.batch_ids(step)[(1, 3)[m]::4], obs)
        np.testing.assert_array_equal(got[keys.WRIST_RGB], want[keys.WRIST_RGB], err_msg=f"step {step} m {m}")
    data.close()
    # validation batches (random ids), read directly
    ids = np.random.default_rng(0).permutation(len(sampler))[:16]
    got, want = data.gather(sampler, ids), sampler.gather(loaded, ids, obs)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert data.cache.frames_read < 3 * rb.n_steps  # blocks were read once per pool, not once per frame


def test_an_epoch_reads_each_block_once(tmp_path):
    rb = ReplayBuffer.open(_dataset(tmp_path, n_episodes=6, length=37))
    for n_obs, most in ((1, 1.0), (2, 2.0)):  # 2 frames: a window's first frame may lie in the block before
        sampler = WindowSampler(rb.episode_ends, [0, 1, 3, 4, 5], n_obs_steps=n_obs, chunk_len=4)
        order = BlockOrder(sampler, block=8, pool=3, batch_size=8, seed=1)
        data = _streamed(rb, sampler, order)
        used = []
        for step in range(len(sampler) // 8):  # one epoch (the incomplete last batch dropped)
            used.append(order.batch_ids(step))
            data.gather(sampler, used[-1], data.cache)
        blocks = np.unique(sampler.step_indices()[np.concatenate(used)] // 8)
        frames = sum(min(8, rb.n_steps - 8 * b) for b in blocks)  # the frames of the blocks holding the windows
        assert frames <= data.cache.frames_read <= most * frames + 8, n_obs


def test_block_order_uses_every_window_once_an_epoch_at_a_uniform_place():
    ends = np.cumsum(np.full(40, 50))  # 40 episodes of 50 steps: 2000 windows, blocks of 64 frames
    sampler = WindowSampler(ends, np.arange(40), n_obs_steps=1, chunk_len=8)
    order = BlockOrder(sampler, block=64, pool=4, batch_size=64, seed=0)
    n = len(sampler)
    for epoch in range(3):  # a permutation, like the in-memory epochs
        assert np.array_equal(np.sort(order.epoch_order(epoch)), np.arange(n))
    epochs = np.stack([order.epoch_order(e) for e in range(3)])
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    # a window's place in an epoch is uniform, as in memory: chi-square over which quarter of the epoch each
    # window falls in, pooled over 200 epochs (3 degrees of freedom per window, summed over windows)
    def stat(orders: np.ndarray) -> float:
        quarter = np.empty_like(orders)
        for i, o in enumerate(orders):
            quarter[i, o] = np.arange(n) * 4 // n
        counts = np.stack([(quarter == q).sum(0) for q in range(4)])  # (4, N)
        expect = len(orders) / 4
        return float(((counts - expect) ** 2 / expect).sum())

    dof = 3 * n
    limit = dof + 4 * np.sqrt(2 * dof)  # chi-square(dof) ~ normal(dof, 2 dof): 4 sigma
    streamed = np.stack([order.epoch_order(e) for e in range(200)])
    in_memory = np.stack([batch_ids(e, n, n, 0) for e in range(200)])  # one batch = one epoch
    assert stat(in_memory) < limit  # the reference passes ...
    assert stat(streamed) < limit
    # ... and the test can fail: blocks taken in storage order (pools shuffled within only) put a window at
    # the same place every epoch
    fixed = np.stack([np.argsort(sampler.step_indices() // 256 * n + np.random.default_rng(e).permutation(n))
                      for e in range(200)])
    assert stat(fixed) > limit
    # one batch mixes several blocks and episodes (a pool of 4 blocks of 64 frames: ~4-5 episodes)
    episode = np.searchsorted(ends, sampler.step_indices(), side="right")
    assert np.mean([len(np.unique(episode[order.batch_ids(s)])) for s in range(30)]) >= 4


def test_streamed_run_resumes_exactly_like_an_uninterrupted_one(tmp_path, caplog):
    ds = _dataset(tmp_path)
    with caplog.at_level(logging.INFO, logger="policy.data.stream"):
        straight = train(tiny_config(ds, tmp_path / "a", steps=6, ckpt_every=6, **STREAM))
    assert "data: stream (train.data=stream" in caplog.text
    train(tiny_config(ds, tmp_path / "b", steps=3, ckpt_every=3, **STREAM))
    resumed = train(tiny_config(ds, tmp_path / "b", steps=6, ckpt_every=6, resume=True, **STREAM))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    # the streamed order is not the in-memory one: the same run from memory ends elsewhere
    memory = _weights(train(tiny_config(ds, tmp_path / "m", steps=6, ckpt_every=6, data="memory")))
    assert max(float(np.abs(memory[k] - a[k]).max()) for k in a) > 1e-4


def test_auto_loads_what_fits_and_streams_the_rest():
    mode, why = choose_data_mode("auto", 10 * 2**20, 0.5)
    assert mode == "memory" and "<=" in why and "available" in why
    mode, why = choose_data_mode("auto", 2**60, 0.5)
    assert mode == "stream" and ">" in why
    mode, why = choose_data_mode("auto", 2**60, 0.5, can_stream=False, why_not="a key map")
    assert mode == "memory" and "a key map" in why
    with pytest.raises(ValueError, match="train.data=stream: a key map"):
        choose_data_mode("stream", 1, 0.5, can_stream=False, why_not="a key map")


def test_wrong_data_keys_are_named():
    with pytest.raises(ValueError, match="train.data must be one of"):
        TrainConfig(data="disk")
    with pytest.raises(ValueError, match="train.stream_pool must be >= 1"):
        TrainConfig(stream_pool=0)
    with pytest.raises(ValueError, match="train.data_memory_share must be in"):
        TrainConfig(data_memory_share=1.5)
    with pytest.raises(ValueError, match="train.stream_loader must be one of"):
        TrainConfig(stream_loader="processes")
    with pytest.raises(ConfigError, match="stream_blocks"):
        from_dict(Config, {"train": {"stream_blocks": 8}})


@pytest.mark.parametrize("loader", ["process", "thread"])
def test_a_damaged_chunk_is_named_with_its_key_and_frames(tmp_path, loader):
    ds = _dataset(tmp_path)
    shard = ds / "data" / keys.WRIST_RGB / "c" / "1" / "0" / "0" / "0"  # the shard of frames 16..31
    shard.write_bytes(b"not a shard" * 10)
    cfg = tiny_config(ds, tmp_path / "run", stream_loader=loader, **STREAM)
    with pytest.raises(DatasetError, match=r"cannot read frames \d+\.\.\d+ of data/wrist_rgb"):
        train(cfg)
    assert not mp.active_children()


def test_a_loader_process_that_dies_is_named_not_waited_for(tmp_path):
    import signal

    rb = ReplayBuffer.open(_dataset(tmp_path))
    sampler = WindowSampler(rb.episode_ends, [0, 1, 2, 3], n_obs_steps=2, chunk_len=4)
    order = BlockOrder(sampler, block=8, pool=2, batch_size=4, seed=0)
    data = _streamed(rb, sampler, order, loader="process")
    data.train_batch(0, 0)
    os.kill(data._proc.proc.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    data._proc.proc.join()
    with pytest.raises(RuntimeError, match=r"stream loader process .* exited with code -9 .*out of memory"):
        for step in range(1, 50):  # the batches already handed over may still come; then the error, not a hang
            data.train_batch(step, 0)
    assert not mp.active_children()
    data.close()


def test_the_cpu_budget_counts_the_loader_process(tmp_path):
    ds = _dataset(tmp_path)
    tr = Trainer(tiny_config(ds, tmp_path / "run", steps=3, budget_clock="cpu", stream_loader="process", **STREAM))
    tr.train_step()
    assert tr.stream._proc is not None
    spin = time.process_time()
    while time.process_time() - spin < 0.05:  # this process's CPU time moves; the loader's is added to it
        pass
    child = tr.stream.loader_cpu_seconds()
    assert child > 0 and tr._cpu_clock() >= time.process_time() + child - 0.02
    tr.stream.close()


def test_a_key_mapped_dataset_is_not_streamed_but_loaded_by_auto(tmp_path, caplog):
    from policy.data.interop import KeyMap

    ds = _dataset(tmp_path, layout=None)
    km = KeyMap(keys={k: k for k in (keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER, keys.ACTION)},
                image_size=None)
    with pytest.raises(ValueError, match="train.data=stream: the dataset is read through train.dataset_map"):
        Trainer(tiny_config(ds, tmp_path / "a", dataset_map=km, data="stream"))
    with caplog.at_level(logging.INFO, logger="policy.data.stream"):
        tr = Trainer(tiny_config(ds, tmp_path / "b", dataset_map=km, data="auto"))
    assert tr.stream is None and "train.dataset_map" in caplog.text


def test_convert_rewrites_a_dataset_in_the_stream_layout(tmp_path):
    from policy.data.convert import ConvertConfig, convert

    src = make_synthetic_dataset(tmp_path / "old.zarr", n_episodes=3, episode_len=30, image_shape=(32, 32))
    out = tmp_path / "new.zarr"
    summary = convert(ConvertConfig(src=str(src.path), out=str(out), image_chunk=8, image_shard=32, progress=False))
    assert summary["episodes"] == 3
    new = ReplayBuffer.open(out)
    arr = new.array(keys.SCENE_RGB)
    assert arr.chunks[0] == 8 and arr.shards[0] == 32
    assert len(list((out / "data" / keys.SCENE_RGB).rglob("c/*/*/*/*"))) == 3  # 90 frames: 3 shard files
    np.testing.assert_array_equal(new.episode_ends, src.episode_ends)
    old_arrays, new_arrays = src.load(), new.load()
    for k in old_arrays:
        np.testing.assert_array_equal(new_arrays[k], old_arrays[k], err_msg=k)
    with pytest.raises(ValueError, match="image_shard must be 0 or a multiple of image_chunk"):
        ConvertConfig(src=str(src.path), out=str(out), image_chunk=8, image_shard=12)


# --------------------------------------------------------------------------- two processes

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, cfg: Config, out: str) -> None:
    """One Gloo rank: trains, and records the sample ids it built and the frames it read."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    built: list[list[int]] = []
    read: set[int] = set()
    gather = StreamedData.gather

    def record_gather(self, sampler, ids, cache=None):
        if cache is self.cache:
            built.append([int(i) for i in ids])
        return gather(self, sampler, ids, cache)

    StreamedData.gather = record_gather
    info, device = distributed.setup("cpu", timeout_minutes=2.0)
    try:
        trainer = Trainer(cfg, info, device)
        real_get = trainer.stream.cache._get

        def record_get(b):
            if b not in trainer.stream.cache._blocks:  # read from the store (not a cache hit)
                read.add(int(b))
            return real_get(b)

        trainer.stream.cache._get = record_get
        trainer.run()
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"built": built, "blocks": sorted(read)}))
    finally:
        StreamedData.gather = gather
        distributed.teardown(info)


def test_two_gloo_processes_stream_disjoint_shards_of_each_global_batch(tmp_path):
    ds = _dataset(tmp_path, n_episodes=6, length=20)
    # the thread loader, whose reads this test records in each rank (the process loader builds the same shards:
    # test_streamed_batches_equal_the_batches_of_loaded_arrays_for_the_same_ids)
    common = dict(steps=3, batch_size=8, log_every=1, val_every=3, ckpt_every=3, num_threads=1, **STREAM)
    ref = train(tiny_config(ds, tmp_path / "ref", grad_accum=2, **common))  # 1 process, the same 2 shards
    method = "fork" if sys.platform == "linux" else "spawn"
    mp.start_processes(_rank, args=(_free_port(), tiny_config(ds, tmp_path / "ddp", **common), str(tmp_path)),
                       nprocs=WORLD, join=True, start_method=method)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    tr = Trainer(tiny_config(ds, tmp_path / "probe", **common))
    order, block = tr.stream.order, tr.stream.order.block
    obs_times = tr.train_sampler.indices  # sample ids -> global frame times
    for step in range(3):
        ids = order.batch_ids(step)
        own = [ranks[r]["built"][step] for r in range(WORLD)]
        assert own[0] == ids[0::2].tolist() and own[1] == ids[1::2].tolist()
        assert not set(own[0]) & set(own[1])  # disjoint, and together the global batch
    for r in range(WORLD):  # each rank read from the store just the blocks holding its own shards' frames
        mine = np.concatenate([obs_times(np.array(b))["obs"].reshape(-1) for b in ranks[r]["built"]])
        assert ranks[r]["blocks"] == sorted(set((mine // block).tolist()))
    a, b = _weights(ref), _weights(tmp_path / "ddp" / "checkpoints" / "latest")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 2e-5  # as one process with grad_accum=2


# --------------------------------------------------------------------------- memory capped below the dataset

CAPPED = textwrap.dedent('''
    import logging, resource, sys
    sys.path.insert(0, {repo!r})
    logging.basicConfig(level=logging.INFO)
    from policy.config import EncoderConfig
    from policy.train import train
    from tests.policy.conftest import tiny_config, tiny_policy_config

    def vm_data_bytes():
        return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmData:")) * 1024

    cap = vm_data_bytes() + {margin}  # what this process holds after its imports, and a margin
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    pol = tiny_policy_config(image_shape=(128, 128), encoder=EncoderConfig(channels=(16, 16), stem_stride=4,
                             crop_shape=(120, 120), feature_dim=32, num_keypoints=16))
    train(tiny_config({ds!r}, {out!r}, policy=pol, data={data!r}, steps={steps}, resume={resume},
                      stream_pool=2, val_every=3, ckpt_every=3, num_threads=1, stream_loader={loader!r}))
''')


def test_a_run_with_memory_capped_below_the_dataset_trains_and_resumes(tmp_path):
    from policy.data.replay_buffer import STREAM_LAYOUT
    from policy.data.synthetic import synthetic_episode

    ds = tmp_path / "big.zarr"
    rb = ReplayBuffer.create(ds, STREAM_LAYOUT)
    ep = synthetic_episode(np.random.default_rng(0), 500, (128, 128))
    for _ in range(12):  # 6000 steps of two 128x128 cameras: 590 MB of images (a few MB on disk)
        rb.add_episode(ep)
    image_mb = 2 * rb.n_steps * 128 * 128 * 3 / 2**20
    margin = 350 * 2**20  # below the images, above what a tiny streamed run allocates (~220 MB)
    assert image_mb * 2**20 > 1.5 * margin

    def run(data: str, steps: int, resume: bool, loader: str = "thread") -> subprocess.CompletedProcess:
        code = CAPPED.format(repo=str(REPO), margin=margin, ds=str(ds), out=str(tmp_path / f"run_{data}"),
                             data=data, steps=steps, resume=resume, loader=loader)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)

    loaded = run("memory", 3, False)
    assert loaded.returncode != 0 and "MemoryError" in loaded.stderr, loaded.stderr[-2000:]  # the cap bites
    first = run("auto", 3, False, "process")  # the loader process (it inherits the cap) ...
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data: stream (train.data=auto" in first.stderr and "RLIMIT_DATA" in first.stderr
    second = run("auto", 6, True, "thread")  # ... and the run resumed with the loader thread
    assert second.returncode == 0, second.stderr[-3000:]
    meta = json.loads((tmp_path / "run_auto" / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["step"] == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "run_auto" / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [2, 3, 4, 6]
