"""EpisodeRecorder: round trip through the ReplayBuffer, discard, refused steps, and crash safety with a
real SIGKILL/SIGINT of a child process that is recording."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from policy import keys
from policy.data.replay_buffer import ReplayBuffer
from runtime.recorder import EpisodeRecorder

REPO = pathlib.Path(__file__).resolve().parents[2]


def step(ep: int, i: int, hw: tuple[int, int] = (8, 6)) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """A deterministic step: every array encodes (episode, step)."""
    obs = {
        keys.SCENE_RGB: np.full((*hw, 3), (ep * 16 + i) % 256, np.uint8),
        keys.WRIST_RGB: np.full((*hw, 3), (ep * 16 + i + 1) % 256, np.uint8),
        keys.EE_POSE: np.array([ep, i, 0.3, 1, 0, 0, 0, 1, 0], np.float64),
        keys.GRIPPER: np.array([0.01 * i]),
    }
    action = np.array([ep, i, 0.3, 1, 0, 0, 0, 1, 0, 0.04])
    return obs, action, 100.0 + ep + 0.1 * i


def record(rec: EpisodeRecorder, ep: int, n: int, hw: tuple[int, int] = (8, 6)) -> None:
    for i in range(n):
        rec.add_step(*step(ep, i, hw))


def check_episode(buf: ReplayBuffer, index: int, ep: int, n: int, hw: tuple[int, int] = (8, 6)) -> None:
    got = buf.get_episode(index)
    for i in range(n):
        obs, action, t = step(ep, i, hw)
        for k in (keys.SCENE_RGB, keys.WRIST_RGB):
            np.testing.assert_array_equal(got[k][i], obs[k])
        np.testing.assert_array_equal(got[keys.EE_POSE][i], obs[keys.EE_POSE].astype(np.float32))
        np.testing.assert_array_equal(got[keys.GRIPPER][i], obs[keys.GRIPPER].astype(np.float32))
        np.testing.assert_array_equal(got[keys.ACTION][i], action.astype(np.float32))
        assert got[keys.TIMESTAMP][i] == t
    assert len(got[keys.ACTION]) == n


def test_round_trip_through_the_replay_buffer(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeRecorder(path) as rec:
        for ep, n in ((0, 5), (1, 3)):
            rec.start()
            assert rec.recording
            record(rec, ep, n)
            assert rec.n_steps == n
            assert rec.stop_and_keep() == ep
            assert not rec.recording
        assert rec.n_episodes == 2
    buf = ReplayBuffer.open(path, "r")
    assert buf.keys == sorted([keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER, keys.ACTION,
                               keys.TIMESTAMP])
    assert buf.episode_ends.tolist() == [5, 8]
    buf.validate({keys.SCENE_RGB: ((8, 6, 3), "uint8"), keys.EE_POSE: ((9,), "float32"),
                  keys.GRIPPER: ((1,), "float32"), keys.ACTION: ((10,), "float32"), keys.TIMESTAMP: ((), "float64")})
    check_episode(buf, 0, 0, 5)
    check_episode(buf, 1, 1, 3)
    with EpisodeRecorder(path) as rec:  # appending to an existing dataset continues its numbering
        assert rec.n_episodes == 2
        rec.start()
        record(rec, 2, 4)
        assert rec.stop_and_keep(wait=False) == 2  # written by the background writer
        rec.flush()
    check_episode(ReplayBuffer.open(path, "r"), 2, 2, 4)


def test_discard_leaves_nothing(tmp_path):
    path = tmp_path / "demos.zarr"
    rec = EpisodeRecorder(path)
    rec.start()
    record(rec, 0, 4)
    assert rec.discard() == 4 and not rec.recording and rec.n_episodes == 0
    rec.start()
    record(rec, 1, 2)
    rec.stop_and_keep()
    rec.start()
    record(rec, 2, 3)
    rec.close()  # an unfinished episode is discarded on close
    buf = ReplayBuffer.open(path, "r")
    assert buf.n_episodes == 1 and buf.n_steps == 2
    check_episode(buf, 0, 1, 2)


@pytest.mark.parametrize("key, bad", [
    (keys.EE_POSE, np.array([0, 0, np.nan, 1, 0, 0, 0, 1, 0])),
    (keys.GRIPPER, np.array([np.inf])),
    (keys.GRIPPER, np.array([0.01, 0.02])),
    (keys.SCENE_RGB, np.zeros((8, 6, 3), np.float32)),
    (keys.WRIST_RGB, np.zeros((8, 6), np.uint8)),
    (keys.SCENE_RGB, np.zeros((6, 8, 3), np.uint8)),  # frame shape changed mid-episode
    (keys.ACTION, np.full(10, np.nan)),
    (keys.ACTION, np.zeros(9)),
])
def test_bad_steps_are_refused_naming_the_key(tmp_path, key, bad):
    rec = EpisodeRecorder(tmp_path / "demos.zarr")
    rec.start()
    record(rec, 0, 2)
    obs, action, t = step(0, 2)
    if key == keys.ACTION:
        action = bad
    else:
        obs[key] = bad
    with pytest.raises(ValueError, match=f"'{key}'"):
        rec.add_step(obs, action, t)
    assert rec.n_steps == 2  # nothing of the bad step was buffered
    rec.add_step(*step(0, 2))
    assert rec.stop_and_keep() == 0


def test_missing_key_time_going_backwards_and_misuse_are_refused(tmp_path):
    rec = EpisodeRecorder(tmp_path / "demos.zarr")
    with pytest.raises(RuntimeError, match="not recording"):
        rec.add_step(*step(0, 0))
    with pytest.raises(RuntimeError, match="not recording"):
        rec.stop_and_keep()
    rec.start()
    with pytest.raises(RuntimeError, match="being recorded"):
        rec.start()
    obs, action, t = step(0, 0)
    del obs[keys.WRIST_RGB]
    with pytest.raises(ValueError, match="'wrist_rgb'"):
        rec.add_step(obs, action, t)
    rec.add_step(*step(0, 1))
    obs, action, _ = step(0, 2)
    with pytest.raises(ValueError, match="'timestamp' went backwards"):
        rec.add_step(obs, action, 50.0)
    with pytest.raises(ValueError, match="'timestamp' must be finite"):
        rec.add_step(obs, action, float("nan"))
    rec.discard()
    rec.start()
    with pytest.raises(ValueError, match="no steps"):
        rec.stop_and_keep()
    assert not rec.recording and rec.n_episodes == 0


def test_a_dataset_with_other_frames_or_keys_is_refused_early(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeRecorder(path) as rec:
        rec.start()
        record(rec, 0, 2)
        rec.stop_and_keep()
    rec = EpisodeRecorder(path)
    rec.start()
    obs, action, t = step(0, 0, hw=(4, 4))
    with pytest.raises(ValueError, match="scene_rgb"):  # at the first step, not at the end of the demo
        rec.add_step(obs, action, t)
    with pytest.raises(ValueError, match="keys"):
        EpisodeRecorder(path, image_keys=(keys.SCENE_RGB,))


# ------------------------------------------------------------------ crash safety (real child processes)

CHILD = textwrap.dedent("""
    import signal
    import sys
    # a fresh Ctrl-C state: a child inherits the parent's blocked-signal mask (in one full pytest run SIGINT
    # never reached the child); this test is about the recorder, not about the state pytest is in
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tests.runtime.test_recorder import record
    from runtime.recorder import EpisodeRecorder

    path, mode = sys.argv[1], sys.argv[2]
    rec = EpisodeRecorder(path)
    if mode == "mid_episode":  # two kept episodes, then record a third forever
        for ep, n in ((0, 5), (1, 3)):
            rec.start()
            record(rec, ep, n)
            rec.stop_and_keep()
        rec.start()
        print("READY", flush=True)
        i = 0
        while True:
            record(rec, 2, 1)
            i += 1
    else:  # keep episodes of 96x96 frames back to back, so a kill lands while one is being written
        ep = 0
        while True:
            rec.start()
            record(rec, ep, 30 + ep % 3, (96, 96))
            rec.stop_and_keep()
            print("KEPT", ep, flush=True)
            ep += 1
""")


def _spawn(path: pathlib.Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, prefix: str, count: int = 1) -> None:
    seen = 0
    for line in proc.stdout:
        if line.startswith(prefix):
            seen += 1
            if seen == count:
                return
    raise AssertionError(f"child exited before printing {prefix!r}: {proc.stderr.read()}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_mid_episode_keeps_the_earlier_episodes(tmp_path, sig):
    path = tmp_path / "demos.zarr"
    proc = _spawn(path, "mid_episode")
    try:
        _wait_for(proc, "READY")
        proc.send_signal(sig)
        assert proc.wait(timeout=180) != 0
    finally:
        proc.kill()
        proc.wait()
    buf = ReplayBuffer.open(path, "r")
    assert buf.n_episodes == 2 and buf.episode_ends.tolist() == [5, 8]
    check_episode(buf, 0, 0, 5)
    check_episode(buf, 1, 1, 3)
    with EpisodeRecorder(path) as rec:  # and recording goes on where it stopped
        rec.start()
        record(rec, 7, 2)
        assert rec.stop_and_keep() == 2
    check_episode(ReplayBuffer.open(path, "r"), 2, 7, 2)


def test_killed_while_writing_an_episode_keeps_every_committed_one(tmp_path):
    path = tmp_path / "demos.zarr"
    proc = _spawn(path, "churn")
    try:
        _wait_for(proc, "KEPT", count=3)
        time.sleep(0.05)  # only moves where the kill lands: most often inside the next write (~0.1 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=180)
    finally:
        proc.kill()
        proc.wait()
    buf = ReplayBuffer.open(path, "r")
    n = buf.n_episodes
    assert n >= 3
    for ep in range(n):
        check_episode(buf, ep, ep, 30 + ep % 3, (96, 96))
    with EpisodeRecorder(path) as rec:  # leftovers of the interrupted write are trimmed on the next keep
        rec.start()
        record(rec, 9, 4, (96, 96))
        assert rec.stop_and_keep() == n
    buf = ReplayBuffer.open(path, "r")
    assert buf.n_episodes == n + 1
    check_episode(buf, n, 9, 4, (96, 96))
