"""Tests for policy.data.sampler: edge padding, episode boundaries, the split, gather."""

from __future__ import annotations

import numpy as np
import pytest

from policy.data.sampler import WindowSampler, split_episodes
from policy.keys import ACTION, ACTION_HISTORY, EE_POSE, GRIPPER, SCENE_RGB

ENDS = np.array([3, 8])  # episodes [0, 3) and [3, 8)


def test_hand_computed_windows() -> None:
    sampler = WindowSampler(ENDS, [0, 1], n_obs_steps=2, chunk_len=4)
    assert len(sampler) == 8
    np.testing.assert_array_equal(sampler.step_indices(), np.arange(8))
    idx = sampler.indices(np.arange(8))
    obs = [[0, 0], [0, 1], [1, 2], [3, 3], [3, 4], [4, 5], [5, 6], [6, 7]]
    action = [[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2],
              [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7], [7, 7, 7, 7]]
    history = [[0, 0], [0, 0], [0, 1], [3, 3], [3, 3], [3, 4], [4, 5], [5, 6]]
    np.testing.assert_array_equal(idx["obs"], obs)
    np.testing.assert_array_equal(idx["action"], action)
    np.testing.assert_array_equal(idx["history"], history)
    for v in idx.values():
        assert v.dtype == np.int64


def test_selection_and_history_len() -> None:
    sampler = WindowSampler(ENDS, [1], n_obs_steps=1, chunk_len=2, history_len=3)
    assert len(sampler) == 5
    np.testing.assert_array_equal(sampler.step_indices(), [3, 4, 5, 6, 7])
    idx = sampler.indices(np.array([0, 4, -1]))
    np.testing.assert_array_equal(idx["obs"], [[3], [7], [7]])
    np.testing.assert_array_equal(idx["action"], [[3, 4], [7, 7], [7, 7]])
    np.testing.assert_array_equal(idx["history"], [[3, 3, 3], [4, 5, 6], [4, 5, 6]])
    with pytest.raises(IndexError):
        sampler.indices(np.array([5]))
    empty = WindowSampler(ENDS, [0], n_obs_steps=2, chunk_len=2, history_len=0).indices(np.array([1]))
    assert empty["history"].shape == (1, 0)


def test_windows_never_cross_episode_boundaries() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=20)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    ids = np.sort(rng.choice(20, size=13, replace=False))
    To, Tp, Th = 3, 8, 4
    sampler = WindowSampler(ends, ids, n_obs_steps=To, chunk_len=Tp, history_len=Th)
    assert len(sampler) == lengths[ids].sum()
    t = sampler.step_indices()
    np.testing.assert_array_equal(t, np.concatenate([np.arange(starts[i], ends[i]) for i in ids]))

    idx = sampler.indices(np.arange(len(sampler)))
    episode = np.searchsorted(ends, t, side="right")  # episode of each sample, (N,)
    s, e = starts[episode][:, None], ends[episode][:, None]
    for key, n in (("obs", To), ("action", Tp), ("history", Th)):
        assert idx[key].shape == (len(sampler), n)
        assert ((idx[key] >= s) & (idx[key] < e)).all(), key
        assert (np.diff(idx[key], axis=1) >= 0).all(), key
    np.testing.assert_array_equal(idx["obs"][:, -1], t)
    np.testing.assert_array_equal(idx["action"][:, 0], t)
    np.testing.assert_array_equal(idx["obs"], np.maximum(t[:, None] + np.arange(-To + 1, 1), s))
    np.testing.assert_array_equal(idx["action"], np.minimum(t[:, None] + np.arange(Tp), e - 1))
    np.testing.assert_array_equal(idx["history"], np.maximum(t[:, None] + np.arange(-Th, 0), s))
    assert (idx["history"] < np.maximum(t[:, None], s + 1)).all()  # strictly before t (except at start)


def test_split_episodes() -> None:
    train, val = split_episodes(50, 0.2, seed=3)
    train2, val2 = split_episodes(50, 0.2, seed=3)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    other = [tuple(split_episodes(50, 0.2, seed=s)[1]) for s in range(4, 8)]
    assert any(v != tuple(val) for v in other), "the seed has no effect"

    train, val = split_episodes(5, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 4
    train, val = split_episodes(2, 0.9, seed=0)
    assert len(val) == 1 and len(train) == 1
    train, val = split_episodes(1, 0.5, seed=0)
    np.testing.assert_array_equal(train, [0])
    assert len(val) == 0
    train, val = split_episodes(7, 0.0, seed=0)
    np.testing.assert_array_equal(train, np.arange(7))
    assert len(val) == 0


@pytest.mark.parametrize("n, frac", [(0, 0.1), (5, -0.1), (5, 1.0), (5, float("nan"))])
def test_split_episodes_errors(n: int, frac: float) -> None:
    with pytest.raises(ValueError, match="n_episodes" if n < 1 else "val_fraction"):
        split_episodes(n, frac, seed=0)


def test_gather_shapes_and_values() -> None:
    n = int(ENDS[-1])
    arrays = {
        SCENE_RGB: np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 5, 3), np.uint8),
        EE_POSE: np.arange(n * 9, dtype=np.float32).reshape(n, 9),
        GRIPPER: -np.arange(n, dtype=np.float32)[:, None],
        ACTION: 100 + np.arange(n * 10, dtype=np.float32).reshape(n, 10),
    }
    sampler = WindowSampler(ENDS, [0, 1], n_obs_steps=2, chunk_len=4, history_len=3)
    ids = np.array([0, 3, 7, 2])
    batch = sampler.gather(arrays, ids, obs_keys=[SCENE_RGB, EE_POSE])
    assert set(batch) == {SCENE_RGB, EE_POSE, ACTION, ACTION_HISTORY}
    assert batch[SCENE_RGB].shape == (4, 2, 4, 5, 3)
    assert batch[EE_POSE].shape == (4, 2, 9)
    assert batch[ACTION].shape == (4, 4, 10)
    assert batch[ACTION_HISTORY].shape == (4, 3, 10)
    idx = sampler.indices(ids)
    np.testing.assert_array_equal(batch[SCENE_RGB][:, :, 0, 0, 0], idx["obs"])
    np.testing.assert_array_equal(batch[EE_POSE], arrays[EE_POSE][idx["obs"]])
    np.testing.assert_array_equal(batch[ACTION][:, :, 0], 100 + 10 * idx["action"])
    t = sampler.step_indices()[ids]
    before = t[:, None] + np.arange(-3, 0) < np.array([0, 3, 3, 0])[:, None]  # (B, Th): before the episode start
    np.testing.assert_array_equal(np.where(before, -1, batch[ACTION_HISTORY][:, :, 0]),
                                  np.where(before, -1, 100 + 10 * idx["history"]))
    first = np.array([0, 3, 3, 0])  # the first frame of each sample's episode: its measured pose + gripper pad
    pads = np.concatenate([arrays[EE_POSE][first], arrays[GRIPPER][first]], axis=1)  # (B, 10)
    np.testing.assert_array_equal(batch[ACTION_HISTORY][before], np.broadcast_to(pads[:, None], (4, 3, 10))[before])
    assert before.sum() == 3 + 3 + 0 + 1  # samples at t=0, 3 (episode starts), 7, 2
    np.testing.assert_array_equal(batch[ACTION][2, :, 0], 100 + 10 * np.array([7, 7, 7, 7]))  # end padding

    no_hist = WindowSampler(ENDS, [0], n_obs_steps=1, chunk_len=2, history_len=0)
    assert set(no_hist.gather(arrays, np.array([0]), obs_keys=[EE_POSE])) == {EE_POSE, ACTION}
    with pytest.raises(ValueError, match="'wrist_rgb'"):
        sampler.gather(arrays, ids, obs_keys=["wrist_rgb"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_obs_steps=0, chunk_len=4), "n_obs_steps"),
        (dict(n_obs_steps=2, chunk_len=0), "chunk_len"),
        (dict(n_obs_steps=2, chunk_len=4, history_len=-1), "history_len"),
        (dict(n_obs_steps=2, chunk_len=4, episode_ids=[2]), "episode_ids"),
        (dict(n_obs_steps=2, chunk_len=4, episode_ids=[-1]), "episode_ids"),
        (dict(n_obs_steps=2, chunk_len=4, episode_ids=[]), "episode_ids"),
        (dict(n_obs_steps=2, chunk_len=4, episode_ids=[0, 0]), "episode_ids"),
        (dict(n_obs_steps=2, chunk_len=4, episode_ends=np.array([3, 2])), "episode_ends"),
    ],
)
def test_sampler_argument_errors(kwargs: dict, name: str) -> None:
    args = dict(episode_ends=ENDS, episode_ids=[0, 1]) | kwargs
    with pytest.raises(ValueError, match=name):
        WindowSampler(**args)
