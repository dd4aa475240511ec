"""Inference workers: a real checkpoint served from a child process, and failures reported, not raised."""

from __future__ import annotations

import time

import numpy as np
import pytest

from policy.data import ReplayBuffer
from policy.data.synthetic import make_synthetic_dataset
from policy.policy import Policy
from policy.train import train
from runtime.clock import SimClock, WallClock
from runtime.inference import ProcessWorker, SimulatedLatencyWorker, ThreadedWorker
from tests.policy.conftest import tiny_config, window_from_episode


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    make_synthetic_dataset(root / "d.zarr", n_episodes=3, episode_len=10, image_shape=(32, 32))
    ckpt = train(tiny_config(root / "d.zarr", root / "run", steps=2))
    ep = ReplayBuffer.open(root / "d.zarr").get_episode(0)
    return ckpt, window_from_episode(ep, 3, 2, ["scene_rgb", "wrist_rgb", "ee_pose", "gripper"])


def _wait(worker, timeout=60.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        res = worker.poll()
        if res is not None:
            return res
        time.sleep(0.005)
    raise TimeoutError("no inference result")


def test_process_worker_serves_chunks_and_reports_bad_requests(checkpoint):
    ckpt, window = checkpoint
    worker = ProcessWorker(str(ckpt), WallClock(), num_threads=1)
    try:
        assert worker.spec.obs_keys == Policy.from_pretrained(ckpt, device="cpu").obs_keys
        worker.submit(window, obs_tick=7)
        assert worker.busy
        with pytest.raises(RuntimeError, match="busy"):
            worker.submit(window, obs_tick=8)
        res = _wait(worker)
        assert res.obs_tick == 7 and res.error is None and res.chunk.shape == (8, 10)
        assert np.all(np.isfinite(res.chunk)) and not worker.busy
        bad = dict(window)
        bad.pop("wrist_rgb")
        worker.submit(bad, obs_tick=9)
        res = _wait(worker)
        assert res.chunk is None and "wrist_rgb" in str(res.error)
    finally:
        worker.close()


def test_process_worker_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(Exception, match="not a checkpoint folder"):
        ProcessWorker(str(tmp_path), WallClock())


def test_simulated_latency_releases_results_on_the_clock(checkpoint):
    ckpt, window = checkpoint
    clock = SimClock()
    worker = SimulatedLatencyWorker(Policy.from_pretrained(ckpt, device="cpu"), clock, latency=0.25)
    worker.submit(window, obs_tick=0)
    clock.advance(0.2)
    assert worker.poll() is None and worker.busy
    clock.advance(0.05)
    res = worker.poll()
    assert res is not None and res.latency_s == 0.25 and res.chunk.shape == (8, 10)
    with pytest.raises(ValueError, match="latency"):
        SimulatedLatencyWorker(Policy.from_pretrained(ckpt, device="cpu"), clock, latency=-1)


def test_threaded_worker_reports_policy_exceptions(checkpoint):
    class Broken:
        n_obs_steps, chunk_len, action_dim, obs_keys = 2, 8, 10, ("ee_pose",)

        def predict_chunk(self, window):
            raise ValueError("broken policy")

    worker = ThreadedWorker(Broken(), WallClock())
    try:
        worker.submit({"ee_pose": np.zeros((2, 9))}, obs_tick=0)
        res = _wait(worker, timeout=10)
        assert res.chunk is None and "broken policy" in str(res.error)
    finally:
        worker.close()
